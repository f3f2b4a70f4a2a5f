//! `hermet-bench auth`, HTTP part: what each kind of bearer token costs a whole request.
//!
//! The API runs in the bench process (`hermet_api::router` served as `hermet serve` does, rate
//! limits off, open sign-up) on a scratch database of its own, trusting the run's identity
//! provider (the key-set file of the in-process part, `create_users` on). One user signs up
//! (`POST /v1/users`: the HS256 token it returns); a second is created by its first provider
//! token and is the one every provider token (RS256, ES256, EdDSA, same `sub`) reaches. Then,
//! per kind, `--concurrency` keep-alive connections [default 8] request `GET /v1/me` (the
//! bearer check, the auth-state check from the in-process cache, one primary-key read) in a
//! closed loop for `--duration-secs`; the baseline is `GET /healthz` on the same client (no
//! token, no database). Kinds in turn within a round, `--runs` rounds, so noise hits all alike.
//! Reported per kind and round: requests/s, p50, p99, p99.9; then per kind the medians, the
//! process time per request (1 / requests/s: client and server share the process and the
//! cores) and how it compares with HS256.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_api::jwks::JwksVerifier;
use hermet_api::{ApiConfig, AppState};
use hermet_store::{Store, SyncMode};
use hermet_testkit::idp::{self, Signer};
use serde::Serialize;
use serde_json::json;

use super::{first_seen, TOKEN_TTL_SECS};
use crate::report::{histogram, median, quantile_ms};
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

/// The kind the others are compared with.
const HS256: &str = "HS256 (minted)";
const BASELINE: &str = "no token (/healthz)";
/// Subject of the provider's user.
const SUB: &str = "bench-user";

/// One kind of one round.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRow {
    pub run: usize,
    pub kind: &'static str,
    /// Answered 200.
    pub requests: u64,
    /// Anything else (a status other than 200, a transport error).
    pub errors: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// A kind's medians over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSummary {
    pub kind: &'static str,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Process time per request: 1 / requests/s, in µs.
    pub us_per_request: f64,
    /// requests/s over HS256's (`None` without an HS256 row).
    pub vs_hs256: Option<f64>,
    /// `us_per_request` minus HS256's.
    pub extra_us_vs_hs256: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub connections: usize,
    pub duration_secs: u64,
    pub rows: Vec<HttpRow>,
    pub summary: Vec<HttpSummary>,
}

/// Per kind (in the order of the rows), the medians of its rounds and the comparison with
/// HS256's medians.
pub(crate) fn summarize(rows: &[HttpRow]) -> Vec<HttpSummary> {
    let mut out: Vec<HttpSummary> = first_seen(rows.iter().map(|r| r.kind))
        .into_iter()
        .map(|kind| {
            let m = |get: &dyn Fn(&HttpRow) -> f64| {
                median(rows.iter().filter(|r| r.kind == kind).map(get).collect())
            };
            let per_s = m(&|r| r.per_s);
            HttpSummary {
                kind,
                per_s,
                p50_ms: m(&|r| r.p50_ms),
                p99_ms: m(&|r| r.p99_ms),
                us_per_request: if per_s > 0.0 { 1e6 / per_s } else { 0.0 },
                vs_hs256: None,
                extra_us_vs_hs256: None,
            }
        })
        .collect();
    if let Some(hs) = out.iter().find(|s| s.kind == HS256).cloned() {
        for s in &mut out {
            if hs.per_s > 0.0 && s.per_s > 0.0 {
                s.vs_hs256 = Some(s.per_s / hs.per_s);
                s.extra_us_vs_hs256 = Some(s.us_per_request - hs.us_per_request);
            }
        }
    }
    out
}

impl fmt::Display for HttpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "auth: through HTTP (GET /v1/me), {} keep-alive connection(s), {} s per kind and round\n",
            self.connections, self.duration_secs
        );
        out.push_str(
            "| round | kind | requests/s | p50 ms | p99 ms | p99.9 ms | errors |\n\
             |---|---|--:|--:|--:|--:|--:|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                r.run, r.kind, r.per_s, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
            );
        }
        out.push_str(
            "\n| kind (median) | requests/s | p50 ms | p99 ms | µs/request | requests/s vs HS256 | µs/request vs HS256 |\n\
             |---|--:|--:|--:|--:|--:|--:|\n",
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.3} | {:.3} | {:.1} | {} | {} |",
                s.kind,
                s.per_s,
                s.p50_ms,
                s.p99_ms,
                s.us_per_request,
                s.vs_hs256.map_or(String::new(), |v| format!("{v:.2}×")),
                s.extra_us_vs_hs256
                    .map_or(String::new(), |v| format!("{v:+.1}")),
            );
        }
        f.write_str(&out)
    }
}

/// Runs the HTTP part in a scratch database (dropped afterwards unless `--keep-database`);
/// `source` is the key set of `signers` (RS256, ES256, EdDSA).
pub(super) async fn run(
    env: &BenchEnv,
    opts: &BenchOptions,
    signers: &[Signer; 3],
    source: &str,
) -> Result<HttpReport, BenchError> {
    let connections = opts.concurrency.unwrap_or(8);
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!("bench auth: scratch database {name}");
    let r = tokio::select! {
        r = run_in(env, opts, &url, connections, signers, source) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    if opts.keep_database {
        eprintln!("bench auth: kept database {name}");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench auth: could not drop {name}: {e}");
    }
    r
}

/// A token kind: the path it requests and the bearer token, if any.
struct Kind {
    name: &'static str,
    url: String,
    token: Option<String>,
}

async fn run_in(
    env: &BenchEnv,
    opts: &BenchOptions,
    url: &str,
    connections: usize,
    signers: &[Signer; 3],
    source: &str,
) -> Result<HttpReport, BenchError> {
    {
        let mut client = admin_connect(url).await?;
        hermet_store::migrate::migrate(&mut client, opts.shards.unwrap_or(env.shards)).await?;
    }
    let pool = hermet_store::connect_pool(url, connections + 2)?;
    // With the LISTEN connection, as deployed: the auth-state cache is fed by it.
    let store = Store::new(
        pool.clone(),
        crate::store_config(SyncMode::DualWrite, Default::default()),
    )
    .with_listen_url(url)?;
    let mut jwks = idp::config(source);
    jwks.create_users = true;
    let verifier = JwksVerifier::new(&jwks)
        .await
        .map_err(|e| BenchError::Scenario(format!("loading the key set: {e}")))?;
    let cfg = ApiConfig {
        // A secret of the run: the tokens it signs live only as long as the run.
        jwt_secret: format!(
            "{:016x}{:016x}{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>(),
            rand::random::<u64>(),
            rand::random::<u64>()
        ),
        open_signup: true,
        identity_provider: Some(Arc::new(verifier)),
        ..ApiConfig::default()
    };
    let app = hermet_api::router(AppState::new(store, cfg, None));
    let serving = crate::InProcess::serve(app, "auth").await?;
    let base = serving.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .map_err(|e| BenchError::Scenario(format!("http client: {e}")))?;

    let me = format!("{base}/v1/me");
    let signup = crate::api_call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/v1/users"),
        None,
        Some(json!({"nickname": "bench-hs256"})),
    )
    .await?;
    let hs_token = signup["token"]
        .as_str()
        .ok_or_else(|| BenchError::Scenario(format!("sign-up answered {signup}")))?
        .to_owned();
    let mut kinds = vec![
        Kind {
            name: BASELINE,
            url: format!("{base}/healthz"),
            token: None,
        },
        Kind {
            name: HS256,
            url: me.clone(),
            token: Some(hs_token),
        },
    ];
    // The first provider token creates the user; every kind must reach that one.
    let mut provider_user = None;
    for (s, name) in signers.iter().zip(["RS256", "ES256", "EdDSA"]) {
        let token = s.sign(&idp::claims_valid_for(SUB, TOKEN_TTL_SECS));
        let body = crate::api_call(&http, reqwest::Method::GET, &me, Some(&token), None).await?;
        let id = body["id"].as_i64();
        if id.is_none() || (provider_user.is_some() && provider_user != id) {
            return Err(BenchError::Scenario(format!(
                "{name}: /v1/me answered {body}, expected user {provider_user:?}"
            )));
        }
        provider_user = id;
        kinds.push(Kind {
            name,
            url: me.clone(),
            token: Some(token),
        });
    }

    eprintln!("bench auth: HTTP warm-up");
    let warmup = Duration::from_millis((opts.warmup_secs * 1000 / kinds.len() as u64).max(300));
    for kind in &kinds {
        measure(&http, kind, connections, warmup).await?;
    }
    let mut rows = Vec::new();
    for run in 1..=opts.runs {
        for kind in &kinds {
            let mut row = measure(
                &http,
                kind,
                connections,
                Duration::from_secs(opts.duration_secs),
            )
            .await?;
            row.run = run;
            eprintln!(
                "bench auth: round {run}, {}: {:.0} requests/s, p99 {:.3} ms, {} errors",
                kind.name, row.per_s, row.p99_ms, row.errors
            );
            rows.push(row);
        }
    }
    pool.close();
    Ok(HttpReport {
        connections,
        duration_secs: opts.duration_secs,
        summary: summarize(&rows),
        rows,
    })
}

/// `connections` workers requesting `kind` in a closed loop for `duration`.
async fn measure(
    http: &reqwest::Client,
    kind: &Kind,
    connections: usize,
    duration: Duration,
) -> Result<HttpRow, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (http, url, token) = (http.clone(), kind.url.clone(), kind.token.clone());
        workers.spawn(async move {
            let mut h = histogram()?;
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                let mut req = http.get(&url);
                if let Some(token) = &token {
                    req = req.bearer_auth(token);
                }
                // The body is read: the request is over when the answer is.
                let ok = match req.send().await {
                    Ok(resp) => {
                        resp.status() == reqwest::StatusCode::OK && resp.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    h.saturating_record(t.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
            }
            Ok::<_, BenchError>((h, errors))
        });
    }
    let mut h = histogram()?;
    let mut errors = 0;
    while let Some(r) = workers.join_next().await {
        let (wh, we) = r??;
        h.add(&wh)
            .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
        errors += we;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(HttpRow {
        run: 0,
        kind: kind.name,
        requests: h.len(),
        errors,
        per_s: h.len() as f64 / secs,
        p50_ms: quantile_ms(&h, 0.5),
        p99_ms: quantile_ms(&h, 0.99),
        p999_ms: quantile_ms(&h, 0.999),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: usize, kind: &'static str, per_s: f64, p50_ms: f64) -> HttpRow {
        HttpRow {
            run,
            kind,
            requests: 1,
            errors: 0,
            per_s,
            p50_ms,
            p99_ms: p50_ms * 2.0,
            p999_ms: p50_ms * 3.0,
        }
    }

    #[test]
    fn summary_takes_medians_per_kind_and_compares_with_hs256() {
        let rows = [
            row(1, BASELINE, 20_000.0, 0.1),
            row(1, HS256, 10_000.0, 0.2),
            row(1, "RS256", 5_000.0, 0.4),
            row(2, BASELINE, 40_000.0, 0.1),
            row(2, HS256, 8_000.0, 0.3),
            row(2, "RS256", 4_000.0, 0.5),
            row(3, BASELINE, 30_000.0, 0.1),
            row(3, HS256, 12_000.0, 0.25),
            row(3, "RS256", 1.0, 9.0),
        ];
        let s = summarize(&rows);
        let kinds: Vec<_> = s.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [BASELINE, HS256, "RS256"], "the rows' order");
        assert_eq!(s[0].per_s, 30_000.0);
        assert_eq!(
            (s[1].per_s, s[1].p50_ms, s[1].p99_ms),
            (10_000.0, 0.25, 0.5)
        );
        assert_eq!(
            (s[2].per_s, s[2].p50_ms),
            (4_000.0, 0.5),
            "an outlier round is out"
        );
        assert_eq!(s[1].us_per_request, 100.0);
        assert_eq!(s[2].us_per_request, 250.0);
        assert_eq!(s[1].vs_hs256, Some(1.0));
        assert_eq!(s[2].vs_hs256, Some(0.4));
        assert_eq!(s[2].extra_us_vs_hs256, Some(150.0));
        assert_eq!(s[0].extra_us_vs_hs256.map(|v| v.round()), Some(-67.0));
    }

    #[test]
    fn no_comparison_without_hs256_or_requests() {
        let s = summarize(&[row(1, "RS256", 5_000.0, 0.4)]);
        assert_eq!((s[0].vs_hs256, s[0].extra_us_vs_hs256), (None, None));
        let s = summarize(&[row(1, HS256, 0.0, 0.0), row(1, "RS256", 5.0, 1.0)]);
        assert_eq!(s[0].us_per_request, 0.0, "no division by zero");
        assert_eq!(s[1].vs_hs256, None);
        assert!(summarize(&[]).is_empty());
    }
}
