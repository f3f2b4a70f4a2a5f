//! `hermet-bench send-http`: message sends through hermet's HTTP API next to pgbench running the
//! same write-side statements, in one sitting, on one database, in `cdc`.
//!
//! 1. A scratch database, migrated. `hermet serve` (all roles, `cdc`, rate limits off, the
//!    background audit off, the list cache as deployed unless `--no-cache`) starts on it with a
//!    slot, publication, topics and consumer groups of the run.
//! 2. `--chats` single chats through the store (`cdc`, in process), sequentially: users `u0 +
//!    2k` and `u0 + 2k + 1` become friends, which opens channel `c0 + k`. The benchmark checks
//!    that arithmetic (pgbench picks a chat by it, so the measured transaction has no look-up)
//!    and fails if it does not hold. It then waits until the projectors cover the set-up.
//! 3. Each round (`--runs`), with the pipeline running, the HTTP load and the pgbench load, one
//!    after the other (their order alternates between rounds):
//!    - HTTP: `--concurrency` workers, each with its own keep-alive connection, send
//!      `POST /v1/channels/{id}/messages` as one side (random) of a random chat, with that user's
//!      bearer token (signed with the secret the server was given), back to back for
//!      `--duration-secs` after `--warmup-secs`. Any answer but 201 fails the run.
//!    - pgbench: `-n -M prepared -c C -j min(C, 2)`, a `--warmup-secs` run, then a `-T D -l` run
//!      of the script of the `pgbench` submodule: the statements of one `cdc` send (the call of
//!      the send function, the LSN query) in one pipeline, as the store sends them. Latency
//!      percentiles come from pgbench's per-transaction log.
//!
//!    Between the two the benchmark waits until the projectors covered the first load, so each
//!    starts on a drained pipeline.
//!
//!    Then `hermet serve` is stopped (SIGTERM) and pgbench runs alone the same way. The next
//!    round starts the server again and waits until the projectors caught up with what pgbench
//!    wrote meanwhile.
//!
//!    Every measured load counts the rows of `messages` before and after: the rows added must
//!    equal the sends counted (the run fails otherwise).
//!
//! At the end (also on error or Ctrl-C) the server is stopped, and the slot, the topics, the
//! temporary directory of the pgbench script and the database are dropped.

mod pgbench;
mod report;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermet_api::TokenKeys;
use hermet_core::validate::{Avatar, Name};
use hermet_projector::consumer::GROUPS;
use hermet_store::sync::Coverage;
use hermet_store::{Store, SyncMode};
use hyper::header::HeaderValue;
use rand::{Rng, SeedableRng};

use crate::cdc::db_err;
use crate::fanout::server::{random_secret, Server, ServerSpec};
use crate::report::histogram;
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions, Scenario};
use pgbench::{Layout, Pgbench, PgbenchRun};
pub use report::{RoundRow, SendHttpReport, SideStats};

/// The content of every send (HTTP and pgbench).
const CONTENT: &str = "hermet-bench send-http: a short message of typical length";
/// Longest wait for the projectors to cover the set-up or a backlog.
const CATCH_UP: Duration = Duration::from_secs(600);

/// Runs `hermet-bench send-http` (progress on stderr) and returns its report.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<SendHttpReport, BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidOptions(format!("send-http: {m}")));
    if opts.chats == 0 {
        return bad("--chats must be at least 1");
    }
    let bin = crate::cdc::hermet_binary(env)?;
    let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let dir = std::env::temp_dir().join(format!("hermet_bench_{tag}"));
    let (name, url) = crate::create_named_database(env, format!("hermet_bench_{tag}")).await?;
    eprintln!("bench send-http: scratch database {name}");
    let r = tokio::select! {
        r = run_in(env, opts, &url, &tag, &bin, &dir) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    if let Err(e) = crate::cdc::drop_all_slots(&env.database_url, &name).await {
        eprintln!("bench send-http: dropping slots: {e}");
    }
    let mut topics = Vec::new();
    let template = crate::cdc::topic_template(&tag, 1);
    topics.extend(crate::cdc::TABLES.map(|t| template.replace("{table}", t)));
    topics.push(format!("hermet_bench_{tag}_dlq"));
    if let Err(e) = crate::cdc::delete_topic_names(&env.kafka_brokers, &topics).await {
        eprintln!("bench send-http: deleting topics: {e}");
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("bench send-http: removing {}: {e}", dir.display());
        }
    }
    if opts.keep_database {
        eprintln!("bench send-http: kept database {name}");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench send-http: could not drop {name}: {e}");
    }
    r
}

async fn run_in(
    env: &BenchEnv,
    opts: &BenchOptions,
    url: &str,
    tag: &str,
    bin: &Path,
    dir: &Path,
) -> Result<SendHttpReport, BenchError> {
    let load_before = load_average();
    let shards = opts.shards.unwrap_or(env.shards);
    let concurrency = opts.concurrency_for(Scenario::SendHttp);
    let server_version: String = {
        let mut client = admin_connect(url).await?;
        hermet_store::migrate::migrate(&mut client, shards).await?;
        client
            .query_one(
                "SELECT 'PostgreSQL ' || current_setting('server_version')",
                &[],
            )
            .await
            .map_err(db_err("read the server version"))?
            .get(0)
    };
    let secret = random_secret();
    let spec = ServerSpec {
        bin,
        env,
        url,
        mode: SyncMode::Cdc,
        tag,
        shards,
        max_members: hermet_core::validate::Limits::default().max_group_members,
        threshold: opts.read_threshold,
        partitions: opts.partitions,
        secret: &secret,
    };
    let cache = !opts.no_cache;
    let pool = hermet_store::connect_pool(url, 4)?;
    let mut server = Some(Server::start(&spec, "all", cache).await?);
    let r = async {
        let store = Store::new(
            pool.clone(),
            crate::store_config(SyncMode::Cdc, opts.read_threshold.config()),
        );
        let t = Instant::now();
        let layout = seed(&store, opts.chats).await?;
        let waited = catch_up(&pool, tag, opts.partitions, &mut server).await?;
        eprintln!(
            "bench send-http: {} chats in {:.1} s, projected {:.1} s later",
            opts.chats,
            t.elapsed().as_secs_f64() - waited,
            waited
        );
        let pg = Pgbench::new(
            pgbench::find(),
            dir.to_path_buf(),
            url,
            concurrency,
            CONTENT,
            &layout,
        )?;
        let keys = TokenKeys::new(secret.as_bytes(), 7 * 24 * 3600);
        let auth = (0..2 * layout.chats as i64)
            .map(|i| {
                let token = keys
                    .issue(layout.first_user + i)
                    .map_err(|e| BenchError::Internal(format!("sign a token: {e:?}")))?;
                HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|e| BenchError::Internal(format!("a token as a header: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sender = HttpLoad {
            layout,
            auth: Arc::new(auth),
            concurrency,
        };
        let mut rounds = Vec::new();
        for i in 1..=opts.runs {
            if server.is_none() {
                server = Some(Server::start(&spec, "all", cache).await?);
                let waited = catch_up(&pool, tag, opts.partitions, &mut server).await?;
                eprintln!("bench send-http: round {i}: projectors caught up in {waited:.1} s");
            }
            let base = server.as_ref().map(|s| s.base.clone()).unwrap_or_default();
            let seed = opts.seed.wrapping_add(i as u64);
            let http_first = i % 2 == 1;
            // The second load starts on a drained pipeline too, not on the first one's backlog.
            let (http, pipelined) = if http_first {
                let h = sender.measure(&pool, &base, opts, seed).await?;
                drained(&pool, tag, opts.partitions, &mut server, i, "HTTP").await?;
                (h, measure_pgbench(&pg, &pool, opts, i, "pipeline").await?)
            } else {
                let p = measure_pgbench(&pg, &pool, opts, i, "pipeline").await?;
                drained(&pool, tag, opts.partitions, &mut server, i, "pgbench").await?;
                (sender.measure(&pool, &base, opts, seed).await?, p)
            };
            if let Some(s) = server.as_mut() {
                s.check()?;
            }
            if let Some(s) = server.take() {
                s.stop().await?;
            }
            let alone = measure_pgbench(&pg, &pool, opts, i, "alone").await?;
            let row = RoundRow::new(
                i.to_string(),
                if http_first { "HTTP" } else { "pgbench" },
                http,
                pipelined,
                alone,
            );
            eprintln!(
                "bench send-http: round {i}/{}: HTTP {:.0}/s (p99 {:.2} ms), pgbench with the \
                 pipeline {:.0}/s (p99 {:.2} ms), alone {:.0}/s (p99 {:.2} ms)",
                opts.runs,
                row.http.per_s,
                row.http.p99_ms,
                row.pgbench_pipeline.per_s,
                row.pgbench_pipeline.p99_ms,
                row.pgbench_alone.per_s,
                row.pgbench_alone.p99_ms
            );
            rounds.push(row);
        }
        Ok(SendHttpReport {
            chats: opts.chats,
            concurrency,
            pgbench_jobs: concurrency.min(2),
            duration_secs: opts.duration_secs,
            warmup_secs: opts.warmup_secs,
            runs: opts.runs,
            shards,
            cache,
            hermet_bin: bin.display().to_string(),
            pgbench: pg.version().await?,
            server_version,
            load_before,
            median: RoundRow::median_of(&rounds),
            rounds,
        })
    }
    .await;
    if let Some(s) = server {
        if let Err(e) = s.stop().await {
            eprintln!("bench send-http: stopping the server: {e}");
        }
    }
    pool.close();
    r
}

/// Creates the chats sequentially and checks the arithmetic the pgbench script relies on.
async fn seed(store: &Store, chats: usize) -> Result<Layout, BenchError> {
    let limits = store.config().limits;
    let setup = |what: &'static str| move |source| BenchError::Setup { what, source };
    let mut users = Vec::with_capacity(2 * chats);
    for i in 0..2 * chats {
        let name = Name::parse("nickname", &format!("sender {i}"), &limits)
            .map_err(|e| BenchError::Internal(format!("nickname: {e}")))?;
        let avatar =
            Avatar::parse("", &limits).map_err(|e| BenchError::Internal(format!("avatar: {e}")))?;
        let u = store
            .create_user(&name, &avatar)
            .await
            .map_err(setup("create user"))?;
        users.push(u.value.id);
    }
    let mut channels = Vec::with_capacity(chats);
    for k in 0..chats {
        let ch = store
            .add_friend(users[2 * k], users[2 * k + 1])
            .await
            .map_err(setup("add friend"))?;
        channels.push(ch.value);
    }
    let layout = Layout {
        chats,
        first_channel: channels[0],
        first_user: users[0],
    };
    let users_ok = users
        .iter()
        .enumerate()
        .all(|(i, &u)| u == layout.first_user + i as i64);
    let channels_ok = channels
        .iter()
        .enumerate()
        .all(|(k, &c)| c == layout.first_channel + k as i64);
    if !users_ok || !channels_ok {
        return Err(BenchError::Scenario(format!(
            "the set-up's ids are not consecutive (users {:?}.., channels {:?}..): the pgbench \
             script picks chat k as channel c0 + k between users u0 + 2k and u0 + 2k + 1",
            &users[..users.len().min(6)],
            &channels[..channels.len().min(3)]
        )));
    }
    Ok(layout)
}

/// Waits until every projector group covers the current LSN; returns the seconds waited.
async fn catch_up(
    pool: &deadpool_postgres::Pool,
    tag: &str,
    partitions: i32,
    server: &mut Option<Server>,
) -> Result<f64, BenchError> {
    let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
    let lsn: String = conn
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(db_err("read the current LSN"))?
        .get(0);
    let lsn: hermet_core::Lsn = lsn
        .parse()
        .map_err(|e| BenchError::Internal(format!("LSN {lsn}: {e:?}")))?;
    let template = crate::cdc::topic_template(tag, 1);
    let groups: Vec<Coverage> = GROUPS
        .iter()
        .map(|(g, models)| {
            let topics = crate::cdc::TABLES
                .iter()
                .filter(|t| models.reads_table(t))
                .map(|t| template.replace("{table}", t))
                .collect();
            Coverage::new(format!("hb_{tag}_{g}"), topics, partitions)
        })
        .collect();
    let started = Instant::now();
    loop {
        let mut all = true;
        for g in &groups {
            all &= hermet_store::sync::covers(&conn, SyncMode::Cdc, g, lsn).await?;
        }
        if all {
            return Ok(started.elapsed().as_secs_f64());
        }
        if let Some(s) = server.as_mut() {
            s.check()?;
        }
        if started.elapsed() > CATCH_UP {
            return Err(BenchError::Scenario(format!(
                "the projectors did not cover {lsn} within {} s",
                CATCH_UP.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`catch_up`] after the load `what` of round `round`, reported on stderr.
async fn drained(
    pool: &deadpool_postgres::Pool,
    tag: &str,
    partitions: i32,
    server: &mut Option<Server>,
    round: usize,
    what: &str,
) -> Result<(), BenchError> {
    let waited = catch_up(pool, tag, partitions, server).await?;
    eprintln!(
        "bench send-http: round {round}: projectors drained the {what} load {waited:.1} s after it"
    );
    Ok(())
}

/// The rows of `messages`.
async fn messages(pool: &deadpool_postgres::Pool) -> Result<i64, BenchError> {
    let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
    Ok(conn
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .map_err(db_err("count the messages"))?
        .get(0))
}

/// A warm-up run, then a logged run; the rows it added must be its transactions.
async fn measure_pgbench(
    pg: &Pgbench,
    pool: &deadpool_postgres::Pool,
    opts: &BenchOptions,
    round: usize,
    what: &str,
) -> Result<SideStats, BenchError> {
    if opts.warmup_secs > 0 {
        pg.run(opts.warmup_secs, None, now_ms()).await?;
    }
    let before = messages(pool).await?;
    let PgbenchRun {
        tps,
        transactions,
        failed,
        hist,
    } = pg
        .run(
            opts.duration_secs,
            Some(&format!("round{round}_{what}")),
            now_ms(),
        )
        .await?;
    let rows = messages(pool).await? - before;
    if failed > 0 || i64::try_from(transactions).ok() != Some(rows) {
        return Err(BenchError::Scenario(format!(
            "pgbench ({what}, round {round}): {transactions} transactions ({failed} failed) \
             added {rows} messages"
        )));
    }
    let hist = match hist {
        Some(h) => h,
        None => histogram()?,
    };
    Ok(SideStats::new(tps, transactions, rows, failed, &hist))
}

/// The HTTP load: workers with a connection each.
struct HttpLoad {
    layout: Layout,
    /// `Authorization` values (`Bearer …`) of users `first_user..first_user + 2 * chats`.
    auth: Arc<Vec<HeaderValue>>,
    concurrency: usize,
}

/// What the workers of one HTTP load counted.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl HttpLoad {
    /// A warm-up, then the measured load; the rows it added must be its 201s.
    async fn measure(
        &self,
        pool: &deadpool_postgres::Pool,
        base: &str,
        opts: &BenchOptions,
        seed: u64,
    ) -> Result<SideStats, BenchError> {
        if opts.warmup_secs > 0 {
            self.load(base, opts.warmup_secs, seed ^ 0x5741_524d)
                .await?;
        }
        let before = messages(pool).await?;
        let (tally, hist, secs) = self.load(base, opts.duration_secs, seed).await?;
        let rows = messages(pool).await? - before;
        let ok = tally.ok.load(Ordering::Relaxed);
        let errors = tally.errors.load(Ordering::Relaxed);
        if errors > 0 || i64::try_from(ok).ok() != Some(rows) {
            let samples = tally
                .samples
                .lock()
                .map(|s| s.join("\n"))
                .unwrap_or_default();
            return Err(BenchError::Scenario(format!(
                "HTTP: {ok} sends answered 201, {errors} failed, {rows} messages added:\n{samples}"
            )));
        }
        Ok(SideStats::new(ok as f64 / secs, ok, rows, errors, &hist))
    }

    /// `concurrency` workers send back to back for `secs`; the tally, the latencies (µs) and
    /// the seconds until the last worker finished.
    async fn load(
        &self,
        base: &str,
        secs: u64,
        seed: u64,
    ) -> Result<(Arc<Tally>, Histogram<u64>, f64), BenchError> {
        let tally = Arc::new(Tally::default());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let mut workers = Vec::with_capacity(self.concurrency);
        let addr = base
            .strip_prefix("http://")
            .ok_or_else(|| BenchError::Internal(format!("not an http:// address: {base}")))?
            .to_owned();
        let body = bytes::Bytes::from(serde_json::to_vec(
            &serde_json::json!({ "content": CONTENT }),
        )?);
        for w in 0..self.concurrency {
            let tally = Arc::clone(&tally);
            let auth = Arc::clone(&self.auth);
            let (chats, ch0) = (self.layout.chats, self.layout.first_channel);
            let (addr, body) = (addr.clone(), body.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            workers.push(tokio::spawn(async move {
                let mut hist = histogram()?;
                // One HTTP/1.1 connection per worker, as pgbench's clients, and no client pool
                // or redirect layer: the load generator shares the cores with what it measures.
                let mut conn = Http1::connect(&addr).await?;
                while Instant::now() < deadline {
                    let k = rng.gen_range(0..chats);
                    let side = rng.gen_range(0..2);
                    let path = format!("/v1/channels/{}/messages", ch0 + k as i64);
                    let t = Instant::now();
                    let failure = conn
                        .post(&path, &auth[2 * k + side], body.clone())
                        .await
                        .err();
                    match failure {
                        None => {
                            hist.saturating_record(micros(t.elapsed()));
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(msg) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut s) = tally.samples.lock() {
                                if s.len() < 10 {
                                    s.push(msg);
                                }
                            }
                            if conn.is_closed() {
                                break;
                            }
                        }
                    }
                }
                Ok::<_, BenchError>(hist)
            }));
        }
        let mut hist = histogram()?;
        for w in workers {
            hist.add(w.await??)
                .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
        }
        Ok((tally, hist, started.elapsed().as_secs_f64()))
    }
}

/// One HTTP/1.1 keep-alive connection to the API, sending one request at a time.
struct Http1 {
    addr: String,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl Http1 {
    async fn connect(addr: &str) -> Result<Self, BenchError> {
        let failed = |e: &dyn std::fmt::Display| BenchError::Scenario(format!("HTTP {addr}: {e}"));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| failed(&e))?;
        tcp.set_nodelay(true).map_err(|e| failed(&e))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| failed(&e))?;
        // Drives the connection; ends when `sender` is dropped or the server closes it.
        tokio::spawn(conn);
        Ok(Http1 {
            addr: addr.to_owned(),
            sender,
        })
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// POSTs a JSON body; `Err` says why it was not answered 201.
    async fn post(
        &mut self,
        path: &str,
        auth: &HeaderValue,
        body: bytes::Bytes,
    ) -> Result<(), String> {
        use http_body_util::BodyExt;
        use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
        let req = hyper::Request::post(path)
            .header(HOST, self.addr.as_str())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))
            .map_err(|e| format!("POST {path}: {e}"))?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status();
        let answer = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("POST {path}: reading the answer: {e}"))?
            .to_bytes();
        if status == hyper::StatusCode::CREATED {
            Ok(())
        } else {
            Err(format!(
                "POST {path}: {status}: {}",
                String::from_utf8_lossy(&answer)
            ))
        }
    }
}

/// Milliseconds since the epoch: the `now` of pgbench's sends, as the store's.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
