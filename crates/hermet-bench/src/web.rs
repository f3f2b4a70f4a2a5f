//! `hermet-bench web`: what the web client costs a person on a phone with a slow link — the bytes
//! the browser downloads and how long until the page shows something and then the conversation
//! list.
//!
//! 1. A scratch database, migrated, and the API in process (`dual_write`: the page's own cost is
//!    measured, not the read side's lag) on the same router `hermet serve` uses, so the files,
//!    their gzip and their cache headers are as deployed.
//! 2. One user with `--chats` single chats (default 200), each with one message, made through
//!    the API: the signed-in page has a full list to fetch and draw.
//! 3. The files as served: bytes raw and gzipped.
//! 4. Per network profile and run (`--runs`), a fresh headless Chromium (empty cache, through
//!    ChromeDriver; `hermet_testkit::browser`) with the profile's round-trip time and throughput
//!    emulated: the token is stored on a page without assets (`/healthz`), then `/` is opened
//!    twice — the first visit (cold cache) and a return (the files revalidated by `ETag`). For
//!    each, once no new request has started for a second: bytes transferred (document, files and
//!    API calls; the WebSocket is not counted), the first contentful paint (the client's loading
//!    text), and when the list was painted (the client's `hermet-list-rendered` performance
//!    mark, set in the frame after the list is drawn). The CPU is not slowed: a phone's slower
//!    script run adds to these times.
//!
//! The report gives each figure's median over the runs.

use std::fmt::{self, Write as _};
use std::time::Duration;

use hermet_api::{ApiConfig, AppState};
use hermet_store::{Store, SyncMode};
use hermet_testkit::browser::{Driver, Page};
use serde::Serialize;
use serde_json::{json, Value};

use crate::report::median;
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

/// A network as the browser emulates it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Profile {
    pub name: &'static str,
    /// Added to every round trip, in ms.
    pub rtt_ms: u64,
    /// Bytes per second down and up (0: not limited).
    pub down_bps: u64,
    pub up_bps: u64,
}

/// Unthrottled loopback; a slow 4G link (the round trip and throughput Lighthouse's simulated
/// mobile profile assumes); a slow 3G link.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "loopback",
        rtt_ms: 0,
        down_bps: 0,
        up_bps: 0,
    },
    Profile {
        name: "slow 4G (150 ms, 1.6 Mbit/s)",
        rtt_ms: 150,
        down_bps: 1_600_000 / 8,
        up_bps: 750_000 / 8,
    },
    Profile {
        name: "slow 3G (400 ms, 400 kbit/s)",
        rtt_ms: 400,
        down_bps: 400_000 / 8,
        up_bps: 400_000 / 8,
    },
];

/// One file as served.
#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub path: &'static str,
    pub bytes: usize,
    pub gzip_bytes: usize,
}

/// One page load.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub profile: &'static str,
    /// `first visit` (cold cache) or `return` (cached files revalidated).
    pub visit: &'static str,
    pub run: usize,
    pub requests: u64,
    pub transfer_bytes: u64,
    pub fcp_ms: f64,
    /// The list drawn (`None`: the client set no mark).
    pub list_ms: Option<f64>,
}

/// A profile's and visit's medians.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub profile: &'static str,
    pub visit: &'static str,
    pub requests: f64,
    pub transfer_bytes: f64,
    pub fcp_ms: f64,
    pub list_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebReport {
    pub chats: usize,
    pub assets: Vec<Asset>,
    pub loads: Vec<Load>,
    pub summary: Vec<Summary>,
}

const ASSETS: [&str; 4] = ["/", "/base.js", "/app.js", "/app.css"];

/// What one page load cost, read from the page's performance entries.
const MEASURE: &str = "
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const list = performance.getEntriesByName('hermet-list-rendered')[0];
    return {
        requests: 1 + res.length,
        transfer: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
        fcp: fcp ? fcp.startTime : null,
        list: list ? list.startTime : null,
    };";

pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<WebReport, BenchError> {
    if opts.chats == 0 || opts.runs == 0 {
        return Err(BenchError::InvalidOptions(
            "web: --chats and --runs must be at least 1".into(),
        ));
    }
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!("bench web: scratch database {name}");
    let r = tokio::select! {
        r = run_in(env, opts, &url) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    if opts.keep_database {
        eprintln!("bench web: kept database {name}");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench web: could not drop {name}: {e}");
    }
    r
}

async fn run_in(env: &BenchEnv, opts: &BenchOptions, url: &str) -> Result<WebReport, BenchError> {
    {
        let mut client = admin_connect(url).await?;
        hermet_store::migrate::migrate(&mut client, opts.shards.unwrap_or(env.shards)).await?;
    }
    let pool = hermet_store::connect_pool(url, 8)?;
    let store = Store::new(
        pool,
        crate::store_config(SyncMode::DualWrite, Default::default()),
    )
    .with_listen_url(url)?;
    let cfg = ApiConfig {
        jwt_secret: crate::fanout::server::random_secret(),
        open_signup: true,
        ..ApiConfig::default()
    };
    let app = hermet_api::router(AppState::new(store, cfg, None));
    let serving = crate::InProcess::serve(app, "web").await?;
    let base = serving.base.clone();
    let http = reqwest::Client::new();

    eprintln!("bench web: {} chats", opts.chats);
    let token = populate(&http, &base, opts.chats).await?;
    let assets = assets(&http, &base).await?;

    let driver = Driver::start().await;
    let mut loads = Vec::new();
    for run in 1..=opts.runs {
        for profile in PROFILES {
            let page = driver.page(412, 915).await;
            // The token goes in on a same-origin page that loads no files, so the first visit
            // of `/` starts with an empty cache.
            page.goto(&format!("{base}/healthz")).await;
            page.js(
                "localStorage.setItem('hermet.token', arguments[0]);",
                vec![json!(token)],
            )
            .await;
            if profile.rtt_ms > 0 {
                page.throttle(
                    Duration::from_millis(profile.rtt_ms),
                    profile.down_bps,
                    profile.up_bps,
                )
                .await;
            }
            for visit in ["first visit", "return"] {
                let load = measure(&page, &base, profile, visit, run).await?;
                eprintln!(
                    "bench web: run {run}, {}, {visit}: {} B, FCP {:.0} ms, list {}",
                    profile.name,
                    load.transfer_bytes,
                    load.fcp_ms,
                    load.list_ms.map_or("-".into(), |v| format!("{v:.0} ms"))
                );
                loads.push(load);
            }
            page.close().await;
        }
    }
    let summary = summarize(&loads);
    Ok(WebReport {
        chats: opts.chats,
        assets,
        loads,
        summary,
    })
}

/// A user with `chats` single chats, one message each; returns the user's token.
async fn populate(http: &reqwest::Client, base: &str, chats: usize) -> Result<String, BenchError> {
    let me = crate::api_call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/users"),
        None,
        Some(json!({"nickname": "Pat"})),
    )
    .await?;
    let token = field_str(&me, "token")?;
    for i in 0..chats {
        let peer = crate::api_call(
            http,
            reqwest::Method::POST,
            &format!("{base}/v1/users"),
            None,
            Some(json!({"nickname": format!("friend {i}")})),
        )
        .await?;
        let peer_id = peer["id"].as_i64().ok_or_else(|| unexpected(&peer))?;
        let peer_token = field_str(&peer, "token")?;
        let friends = crate::api_call(
            http,
            reqwest::Method::POST,
            &format!("{base}/v1/friends"),
            Some(&token),
            Some(json!({"friend_id": peer_id})),
        )
        .await?;
        let channel = friends["channel_id"]
            .as_i64()
            .ok_or_else(|| unexpected(&friends))?;
        crate::api_call(
            http,
            reqwest::Method::POST,
            &format!("{base}/v1/channels/{channel}/messages"),
            Some(&peer_token),
            Some(
                json!({"content": format!("hello from friend {i}, a message of ordinary length")}),
            ),
        )
        .await?;
    }
    Ok(token)
}

fn field_str(v: &Value, field: &str) -> Result<String, BenchError> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| unexpected(v))
}

fn unexpected(v: &Value) -> BenchError {
    BenchError::Scenario(format!("unexpected answer {v}"))
}

/// The files' sizes as served, plain and with gzip negotiated (the client here never
/// decompresses, so the body read is what went over the wire).
async fn assets(http: &reqwest::Client, base: &str) -> Result<Vec<Asset>, BenchError> {
    let mut out = Vec::new();
    for path in ASSETS {
        let mut sizes = [0usize; 2];
        for (i, enc) in ["identity", "gzip"].into_iter().enumerate() {
            let body = http
                .get(format!("{base}{path}"))
                .header("accept-encoding", enc)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| BenchError::Scenario(format!("{path}: {e}")))?
                .bytes()
                .await
                .map_err(|e| BenchError::Scenario(format!("{path}: {e}")))?;
            sizes[i] = body.len();
        }
        out.push(Asset {
            path,
            bytes: sizes[0],
            gzip_bytes: sizes[1],
        });
    }
    Ok(out)
}

async fn measure(
    page: &Page,
    base: &str,
    profile: Profile,
    visit: &'static str,
    run: usize,
) -> Result<Load, BenchError> {
    page.goto(&format!("{base}/")).await;
    let probe = "return document.querySelectorAll('#conversations li.conversation').length > 0
                        && performance.getEntriesByName('first-contentful-paint').length > 0;";
    hermet_testkit::eventually(
        format!("{}, {visit}: the list is drawn", profile.name),
        Duration::from_secs(120),
        async || page.js(probe, vec![]).await == json!(true),
    )
    .await;
    // The page is measured once its requests have settled (the contacts, the WebSocket's
    // first re-read): no new resource entry for a second.
    let count = "return performance.getEntriesByType('resource').length;";
    let mut last = (u64::MAX, std::time::Instant::now());
    hermet_testkit::eventually(
        format!("{}, {visit}: the page settles", profile.name),
        Duration::from_secs(120),
        async || {
            let n = page.js(count, vec![]).await.as_u64().unwrap_or(0);
            if n != last.0 {
                last = (n, std::time::Instant::now());
            }
            last.1.elapsed() >= Duration::from_secs(1)
        },
    )
    .await;
    let m = page.js(MEASURE, vec![]).await;
    Ok(Load {
        profile: profile.name,
        visit,
        run,
        requests: m["requests"].as_u64().unwrap_or(0),
        transfer_bytes: m["transfer"].as_f64().unwrap_or(0.0) as u64,
        fcp_ms: m["fcp"].as_f64().unwrap_or(f64::NAN),
        list_ms: m["list"].as_f64(),
    })
}

fn summarize(loads: &[Load]) -> Vec<Summary> {
    let mut out = Vec::new();
    for profile in PROFILES {
        for visit in ["first visit", "return"] {
            let these: Vec<&Load> = loads
                .iter()
                .filter(|l| l.profile == profile.name && l.visit == visit)
                .collect();
            if these.is_empty() {
                continue;
            }
            let lists: Vec<f64> = these.iter().filter_map(|l| l.list_ms).collect();
            out.push(Summary {
                profile: profile.name,
                visit,
                requests: median(these.iter().map(|l| l.requests as f64).collect()),
                transfer_bytes: median(these.iter().map(|l| l.transfer_bytes as f64).collect()),
                fcp_ms: median(these.iter().map(|l| l.fcp_ms).collect()),
                list_ms: (lists.len() == these.len()).then(|| median(lists)),
            });
        }
    }
    out
}

impl fmt::Display for WebReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        out.push_str(
            "web: the client's files as served\n\n| file | bytes | gzip bytes |\n|---|--:|--:|\n",
        );
        for a in &self.assets {
            let _ = writeln!(out, "| `{}` | {} | {} |", a.path, a.bytes, a.gzip_bytes);
        }
        let (raw, gz) = self
            .assets
            .iter()
            .fold((0, 0), |(r, g), a| (r + a.bytes, g + a.gzip_bytes));
        let _ = writeln!(out, "| total | {raw} | {gz} |");
        let _ = writeln!(
            out,
            "\nsigned-in page of a user with {} conversations, medians over the runs \
             (bytes transferred include the API calls; first visit = empty cache)\n",
            self.chats
        );
        out.push_str(
            "| network | visit | requests | bytes transferred | first contentful paint ms | list drawn ms |\n\
             |---|---|--:|--:|--:|--:|\n",
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                s.profile,
                s.visit,
                s.requests,
                s.transfer_bytes,
                s.fcp_ms,
                s.list_ms.map_or("no mark".into(), |v| format!("{v:.0}"))
            );
        }
        f.write_str(&out)
    }
}
