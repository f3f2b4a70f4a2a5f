//! hermet-bench: a seeded IM workload ([`workload`]) and benchmark scenarios on `dual_write`.
//!
//! [`run`] creates a scratch database `hermet_bench_<random>` on the server of the given admin
//! URL, migrates it, populates it with the workload, runs the measured phase `runs` times on it,
//! and drops the database at the end, also on error or Ctrl-C.
//!
//! [`cdc`] (`hermet-bench cdc`) is different: it measures the CDC relay (a child `hermet serve
//! --role cdc` process) draining a WAL backlog into Kafka next to `pg_recvlogical`.

pub mod auth;
pub mod cache;
pub mod cdc;
pub mod fanout;
pub mod modes;
pub mod peers;
pub mod rebuild;
mod report;
mod scenarios;
pub mod send_http;
pub mod stages;
pub mod web;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_core::projection::ProjectionConfig;
use hermet_core::rows::FanoutConfig;
use hermet_core::validate::Limits;
use hermet_store::{Store, StoreConfig, StoreError, SyncMode};
use serde::Serialize;
use tokio_postgres::NoTls;

pub use report::{Latency, Params, Report, RunStats, SetupStats};
use scenarios::{Ctx, Load, Source};
use workload::{OpMix, Plan, PopulateOptions, WorkloadSpec};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid workload: {0}")]
    InvalidSpec(String),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("database url: {0}")]
    Url(String),
    /// Creating, migrating or dropping the scratch database failed.
    #[error("{what}: {source}")]
    Admin {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    /// A store command of the setup phase failed.
    #[error("setup, {what}: {source}")]
    Setup {
        what: &'static str,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Scenario(String),
    #[error("interrupted")]
    Interrupted,
    #[error("worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("internal: {0}")]
    Internal(String),
    /// Running a child process (the relay, `pg_recvlogical`) or reading `/proc` failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A query of a measured phase failed.
    #[error("{what}: {source}")]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] hermet_kafka::KafkaError),
}

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Message-send throughput and latency.
    Send,
    /// Conversation-list read latency, optionally under background writes.
    List,
    /// CDC relay: rows/s from a WAL backlog to Kafka (acknowledged), next to `pg_recvlogical`
    /// draining the same backlog; the relay's peak RSS.
    Cdc,
    /// Sync lag of `dual_write`, `async` and `cdc` at a fixed offered send rate, and the Kafka
    /// projectors' apply throughput on a backlog.
    Modes,
    /// Conversation-list latency with the Redis cache off and on, alternating rounds.
    Cache,
    /// Online rebuild and full audit throughput on a read side of a million rows or more
    /// (seeded set-based; `--users`, `--mean-friends`, `--groups` size it).
    Rebuild,
    /// hermet's CDC relay side by side with Debezium's PostgreSQL connector on Kafka Connect
    /// (bench/peers/debezium): backlog drain, commit → Kafka latency at fixed loads, RSS, CPU,
    /// correctness and a kill -9 of each.
    Peers,
    /// Group fan-out through the HTTP API of child `hermet serve` processes, per sync mode and
    /// group size: send latency at a fixed rate, time until a member's conversation list shows
    /// the message, view rows written per message, and the uncached conversation-list latency of
    /// a member of many large groups.
    Fanout,
    /// Bearer-token verification per request, in process: HS256 (`TokenKeys`) against
    /// identity-provider tokens (`JwksVerifier`) signed with RS256, ES256 and EdDSA; then the
    /// same kinds through `GET /v1/me` of an in-process API, next to `GET /healthz`.
    Auth,
    /// Message sends through the HTTP API of a child `hermet serve` (`cdc`) next to pgbench
    /// running the same write-side statements (the store's own SQL, one pipeline per send), with
    /// the pipeline running and alone: sends/s, p50/p99 and their ratios.
    SendHttp,
    /// The web client's weight and first render in headless Chromium under emulated networks
    /// (loopback, slow 4G, slow 3G): bytes transferred, first contentful paint, list drawn.
    Web,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Send => "send",
            Scenario::List => "list",
            Scenario::Cdc => "cdc",
            Scenario::Modes => "modes",
            Scenario::Cache => "cache",
            Scenario::Rebuild => "rebuild",
            Scenario::Peers => "peers",
            Scenario::Fanout => "fanout",
            Scenario::Auth => "auth",
            Scenario::SendHttp => "send-http",
            Scenario::Web => "web",
        })
    }
}

/// Where to run: the admin URL of a PostgreSQL server (any database the role can connect to and
/// create databases from) and the default read-side shard count; for `cdc` also the Kafka
/// brokers and the `hermet` binary that runs the relay.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    pub database_url: String,
    /// Used when [`BenchOptions::shards`] is not given.
    pub shards: u32,
    /// `cdc`: the brokers the relay produces to.
    pub kafka_brokers: String,
    /// `cdc`, `peers`, `fanout`, `send-http`: the `hermet` binary whose `serve` they run
    /// [default: `hermet` next to the running executable, in the same target directory].
    pub hermet_bin: Option<PathBuf>,
    /// `cache`: the Redis of the list cache.
    pub redis_url: String,
}

impl BenchEnv {
    pub fn new(database_url: impl Into<String>) -> Self {
        BenchEnv {
            database_url: database_url.into(),
            shards: 256,
            kafka_brokers: "127.0.0.1:59092".to_owned(),
            hermet_bin: None,
            redis_url: "redis://127.0.0.1:56379".to_owned(),
        }
    }
}

/// Options of `hermet-bench <scenario>` (flatten into a clap command).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BenchOptions {
    /// Users of the workload.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Seed of the workload and of the operation streams.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Mean friend count per user (heavy-tailed).
    #[arg(long, default_value_t = 20.0)]
    pub mean_friends: f64,
    /// Groups [default: users / 10].
    #[arg(long)]
    pub groups: Option<usize>,
    /// Length of each measured run, in seconds (`5` or `5s`).
    #[arg(long, visible_alias = "duration", default_value_t = 20, value_parser = parse_secs)]
    pub duration_secs: u64,
    /// Unmeasured load before the first run (connections, caches).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Measured workers [default: 8 senders for `send`, 16 readers for `list`; `auth`: 1
    /// verifier in process, 8 connections through HTTP; `send-http`: 16 HTTP connections and
    /// pgbench clients].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// `list`: background writers running the workload's write mix (0: none).
    #[arg(long, default_value_t = 0)]
    pub writers: usize,
    /// Operation mix of the background writers (`list` ignores its `list` weight).
    #[arg(long, default_value_t = OpMix::default())]
    pub mix: OpMix,
    /// `list`: conversations per page.
    #[arg(long, default_value_t = 50)]
    pub page_size: i64,
    /// Read-side shards of the scratch database [default: the configured count, 256].
    #[arg(long)]
    pub shards: Option<u32>,
    /// Measured runs on the same populated database; the report adds their median (`peers`:
    /// rounds, also as `--rounds`).
    #[arg(long, visible_alias = "rounds", default_value_t = 3)]
    pub runs: usize,
    /// Commands in flight while populating.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch database (its name is printed) instead of dropping it.
    #[arg(long)]
    pub keep_database: bool,
    /// `cdc`: row changes in each round's WAL backlog.
    #[arg(long, default_value_t = 500_000)]
    pub rows: u64,
    /// `cdc`: row changes per backlog transaction.
    #[arg(long, default_value_t = 10_000)]
    pub txn_rows: u64,
    /// `cdc`, `modes`: partitions of each topic the relay creates [default: the relay's,
    /// `cdc.partitions`].
    #[arg(long, default_value_t = hermet_cdc::relay::DEFAULT_PARTITIONS)]
    pub partitions: i32,
    /// `modes`: the relay's watermark-marker interval in milliseconds [default: the relay's,
    /// `cdc.watermark_ms`].
    #[arg(long)]
    pub watermark_ms: Option<u64>,
    /// `modes`: how long a projector group waits to fill a batch, in milliseconds (0: apply what
    /// has arrived) [default: the projector's, `projector.batch_wait_ms`].
    #[arg(long)]
    pub batch_wait_ms: Option<u64>,
    /// `modes`: most records a projector group applies in one transaction [default: the
    /// projector's, `projector.batch_max`].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=hermet_projector::consumer::MAX_BATCH_MAX as u64))]
    pub batch_max: Option<u64>,
    /// `modes`: record the sync pipeline's own latency metrics (relay commit → Kafka ack, commit
    /// → view applied, batch apply time) during each measured phase and print their p50/p99
    /// after it. Off by default: with it, those metric calls do real work.
    #[arg(long)]
    pub stage_metrics: bool,
    /// `cdc`: the pg_recvlogical binary [default: the newest
    /// /usr/lib/postgresql/*/bin/pg_recvlogical, else the one on PATH].
    #[arg(long)]
    pub pg_recvlogical: Option<PathBuf>,
    /// `modes`, `fanout`: offered message sends per second [default: `modes` 1000, `fanout`
    /// 100].
    #[arg(long)]
    pub rate: Option<f64>,
    /// `cache`: total reads per second offered by the readers, each on its own fixed schedule
    /// (a read delayed by the reader's previous one is timed from its scheduled start); 0: closed
    /// loop, every reader as fast as it goes.
    #[arg(long, default_value_t = 0.0)]
    pub read_rate: f64,
    /// `cache`, `modes`: PostgreSQL connections of the measured pool [default: `cache`, the
    /// list reads' pool of a deployment (`database.read_pool_size`, 8); `modes`, one per
    /// worker, plus a few].
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// `modes`, `fanout`: the sync modes to run, comma-separated (`dual_write`, `async`, `cdc`).
    #[arg(long = "modes", value_delimiter = ',', default_values_t = ["dual_write".to_owned(), "async".to_owned(), "cdc".to_owned()])]
    pub sync_modes: Vec<String>,
    /// `modes`: messages in the backlog the projectors' throughput is measured on (0: skip).
    #[arg(long, default_value_t = 20_000)]
    pub backlog: u64,
    /// `peers`: offered loads (row changes per second) at which commit → Kafka latency is
    /// measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [200.0, 2000.0])]
    pub rates: Vec<f64>,
    /// `peers`: seconds of each offered load.
    #[arg(long, default_value_t = 10)]
    pub live_secs: u64,
    /// `peers`: seconds each peer is watched with nothing written, once caught up (its idle
    /// CPU); 0 leaves the idle measurement out.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// `peers`: changes per second while each peer is killed (SIGKILL) and restarted.
    #[arg(long, default_value_t = 1000.0)]
    pub crash_rate: f64,
    /// `peers`: seconds of the crash load (the kill comes halfway).
    #[arg(long, default_value_t = 10)]
    pub crash_secs: u64,
    /// `peers`: the Debezium script [default: bench/peers/debezium/debezium.sh above the
    /// working directory or the executable].
    #[arg(long)]
    pub debezium_script: Option<PathBuf>,
    /// `peers`: extra Debezium connector properties, `k=v,k=v` (e.g. `poll.interval.ms=10`);
    /// none by default: the seed's config.
    #[arg(long)]
    pub debezium_config: Option<String>,
    /// `fanout`: group sizes, comma-separated (members, the owner included).
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 1_000, 10_000, 100_000])]
    pub sizes: Vec<usize>,
    /// `fanout.read_threshold`: of the servers `fanout` starts (`HERMET_FANOUT__READ_THRESHOLD`),
    /// and of the in-process stores of `send` and `modes`; `unset`: the default. A very large
    /// value keeps every group in write diffusion (hermet before hybrid fan-out).
    #[arg(long, default_value_t = fanout::Threshold::Unset)]
    pub read_threshold: fanout::Threshold,
    /// `fanout`: members of a group whose conversation lists are polled for each message.
    #[arg(long, default_value_t = 2)]
    pub watchers: usize,
    /// `fanout`: pause between two conversation-list polls of a watcher, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// `fanout`: members of each of the list user's large groups (0: the largest of `--sizes`).
    #[arg(long, default_value_t = 10_000)]
    pub list_group_size: usize,
    /// `fanout`: the list user's large groups.
    #[arg(long, default_value_t = 20)]
    pub list_groups: usize,
    /// `fanout`: the list user's small conversations (half single chats, half groups of 5).
    #[arg(long, default_value_t = 200)]
    pub list_small: usize,
    /// `fanout`: timed first-page reads of the list user's conversation list (cache off).
    #[arg(long, default_value_t = 500)]
    pub list_reads: usize,
    /// `fanout`: groups larger than this get all but their last 1,000 members set-based in SQL
    /// (then the read side is rebuilt, or in `cdc` projected from the WAL); smaller ones are
    /// built through `POST /v1/groups/{id}/members`, 1,000 ids per call.
    #[arg(long, default_value_t = 10_000)]
    pub sql_above: usize,
    /// `fanout`: run the measured server with the Redis list cache off (on by default, as
    /// deployed; the list user's reads always go to a second API process without the cache).
    #[arg(long)]
    pub no_cache: bool,
    /// `send-http`: single chats (two users each) the sends go into.
    #[arg(long, default_value_t = 200)]
    pub chats: usize,
}

/// `--duration-secs`: whole seconds, optionally with an `s` suffix.
fn parse_secs(s: &str) -> Result<u64, String> {
    s.trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 20 or 20s)"))
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            users: 10_000,
            seed: 42,
            mean_friends: 20.0,
            groups: None,
            duration_secs: 20,
            warmup_secs: 2,
            concurrency: None,
            writers: 0,
            mix: OpMix::default(),
            page_size: 50,
            shards: None,
            runs: 3,
            setup_concurrency: 8,
            json: false,
            keep_database: false,
            rows: 500_000,
            txn_rows: 10_000,
            partitions: hermet_cdc::relay::DEFAULT_PARTITIONS,
            watermark_ms: None,
            batch_wait_ms: None,
            batch_max: None,
            stage_metrics: false,
            pool_size: None,
            read_rate: 0.0,
            sync_modes: vec!["dual_write".into(), "async".into(), "cdc".into()],
            pg_recvlogical: None,
            rate: None,
            backlog: 20_000,
            rates: vec![200.0, 2000.0],
            live_secs: 10,
            idle_secs: 60,
            crash_rate: 1000.0,
            crash_secs: 10,
            debezium_script: None,
            debezium_config: None,
            sizes: vec![10, 1_000, 10_000, 100_000],
            read_threshold: fanout::Threshold::Unset,
            watchers: 2,
            poll_ms: 10,
            list_group_size: 10_000,
            list_groups: 20,
            list_small: 200,
            list_reads: 500,
            sql_above: 10_000,
            no_cache: false,
            chats: 200,
        }
    }
}

impl BenchOptions {
    /// The workload these options describe.
    pub fn workload(&self) -> WorkloadSpec {
        let mut spec = WorkloadSpec::new(self.users, self.seed);
        spec.mean_friends = self.mean_friends;
        if let Some(g) = self.groups {
            spec.groups = g;
        }
        spec.mix = self.mix;
        spec
    }

    fn concurrency_for(&self, scenario: Scenario) -> usize {
        self.concurrency.unwrap_or(match scenario {
            Scenario::Send => 8,
            Scenario::List => 16,
            Scenario::Cdc => 1,
            Scenario::Modes => 16,
            Scenario::Cache => 50,
            Scenario::Rebuild => 1,
            Scenario::Peers => 1,
            Scenario::Fanout => 8,
            Scenario::Auth => 1,
            Scenario::SendHttp => 16,
            Scenario::Web => 1,
        })
    }

    /// `--rate`, else the scenario's default.
    fn rate_for(&self, scenario: Scenario) -> f64 {
        self.rate.unwrap_or(match scenario {
            Scenario::Fanout => 100.0,
            _ => 1000.0,
        })
    }

    fn check(&self, scenario: Scenario) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::InvalidOptions(m.to_owned()));
        if self.concurrency_for(scenario) == 0 {
            return bad("--concurrency must be at least 1");
        }
        if self.runs == 0 {
            return bad("--runs must be at least 1");
        }
        if self.duration_secs == 0 {
            return bad("--duration-secs must be at least 1");
        }
        if !(1..=1000).contains(&self.page_size) {
            return bad("--page-size must be between 1 and 1000");
        }
        if self.shards == Some(0) {
            return bad("--shards must be at least 1");
        }
        if scenario == Scenario::Peers {
            if self.rates.is_empty() || self.rates.iter().any(|r| !(1.0..=100_000.0).contains(r)) {
                return bad("--rates must be between 1 and 100000 changes/s");
            }
            if self.live_secs == 0 {
                return bad("--live-secs must be at least 1");
            }
            if self.crash_secs < 2 || !(1.0..=100_000.0).contains(&self.crash_rate) {
                return bad("--crash-secs must be at least 2, --crash-rate between 1 and 100000");
            }
        }
        if matches!(scenario, Scenario::Cdc | Scenario::Peers) {
            if self.rows < 1_000 {
                return bad("--rows must be at least 1000");
            }
            if !(100..=1_000_000).contains(&self.txn_rows) {
                return bad("--txn-rows must be between 100 and 1000000");
            }
            if !(1..=1024).contains(&self.partitions) {
                return bad("--partitions must be between 1 and 1024");
            }
        }
        Ok(())
    }
}

/// Replaces the database name of a PostgreSQL URL (`postgres://…/db?…`) or key/value
/// connection string (`host=… dbname=…`).
pub fn with_dbname(url: &str, dbname: &str) -> Result<String, BenchError> {
    let out = if let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(**s))
        .map(|s| s.len())
    {
        let rest = &url[scheme_end..];
        let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(path_at);
        let query = tail.find('?').map(|q| &tail[q + 1..]).unwrap_or("");
        // A `dbname` query parameter would override the path: drop it.
        let query: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("dbname="))
            .collect();
        let mut s = format!("{}{authority}/{dbname}", &url[..scheme_end]);
        if !query.is_empty() {
            s.push('?');
            s.push_str(&query.join("&"));
        }
        s
    } else {
        // Later keys override earlier ones.
        format!("{url} dbname={dbname}")
    };
    let parsed: tokio_postgres::Config =
        out.parse().map_err(|e| BenchError::Url(format!("{e}")))?;
    if parsed.get_dbname() != Some(dbname) {
        return Err(BenchError::Url(
            "could not set the database name".to_owned(),
        ));
    }
    Ok(out)
}

async fn admin_connect(url: &str) -> Result<tokio_postgres::Client, BenchError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|source| BenchError::Admin {
            what: "connect to the admin database",
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "bench admin connection ended");
        }
    });
    Ok(client)
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), BenchError> {
    let admin = admin_connect(admin_url).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|source| BenchError::Admin {
            what: "drop the scratch database",
            source,
        })
}

/// The store configuration of the scenarios that run the store in process: `mode` and `fanout`,
/// the rest as deployed by default.
pub(crate) fn store_config(mode: SyncMode, fanout: FanoutConfig) -> StoreConfig {
    StoreConfig {
        sync_mode: mode,
        projection: ProjectionConfig::default(),
        limits: Limits::default(),
        fanout,
    }
}

/// Runs a scenario in its own scratch database and returns the report (progress goes to stderr).
pub async fn run(
    env: &BenchEnv,
    scenario: Scenario,
    opts: &BenchOptions,
) -> Result<Report, BenchError> {
    if matches!(
        scenario,
        Scenario::Cdc
            | Scenario::Modes
            | Scenario::Cache
            | Scenario::Rebuild
            | Scenario::Peers
            | Scenario::Fanout
            | Scenario::Auth
            | Scenario::SendHttp
            | Scenario::Web
    ) {
        return Err(BenchError::InvalidOptions(
            "`cdc`, `modes`, `cache`, `rebuild`, `peers`, `fanout`, `auth`, `send-http` and `web` have \
             their own reports: use run_and_print"
                .to_owned(),
        ));
    }
    opts.check(scenario)?;
    let spec = opts.workload();
    let plan = Plan::generate(&spec)?;
    let shards = opts.shards.unwrap_or(env.shards);

    let (name, url) = create_scratch_database(env).await?;
    eprintln!("bench {scenario}: scratch database {name}");
    let result = tokio::select! {
        r = run_in(&url, scenario, opts, plan, shards) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    if opts.keep_database {
        eprintln!("bench {scenario}: kept database {name}");
        return result;
    }
    match drop_database(&env.database_url, &name).await {
        Ok(()) => result,
        Err(e) => {
            eprintln!("bench {scenario}: could not drop the scratch database {name}: {e}");
            result
        }
    }
}

/// [`run`] (or [`cdc::run`]), then prints the report to stdout (Markdown, or JSON with
/// `--json`).
pub async fn run_and_print(
    env: &BenchEnv,
    scenario: Scenario,
    opts: &BenchOptions,
) -> Result<(), BenchError> {
    match scenario {
        Scenario::Modes => {
            opts.check(scenario)?;
            print_report(&modes::run(env, opts).await?, opts.json)
        }
        Scenario::Cache => print_report(&cache::run(env, opts).await?, opts.json),
        Scenario::Rebuild => print_report(&rebuild::run(env, opts).await?, opts.json),
        Scenario::Peers => print_report(&peers::run(env, opts).await?, opts.json),
        Scenario::Cdc => print_report(&cdc::run(env, opts).await?, opts.json),
        Scenario::Fanout => {
            opts.check(scenario)?;
            print_report(&fanout::run(env, opts).await?, opts.json)
        }
        Scenario::Auth => print_report(&auth::run(env, opts).await?, opts.json),
        Scenario::SendHttp => {
            opts.check(scenario)?;
            print_report(&send_http::run(env, opts).await?, opts.json)
        }
        Scenario::Web => print_report(&web::run(env, opts).await?, opts.json),
        Scenario::Send | Scenario::List => {
            let report = run(env, scenario, opts).await?;
            if opts.json {
                println!("{}", report.to_json()?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
    }
}

/// Prints a scenario's own report: Markdown, or JSON with `--json`.
fn print_report<R: Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> Result<(), BenchError> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// `method url` with an optional bearer token and JSON body; the JSON answer, or an error
/// naming the URL, the status and the body for anything but a 2xx.
pub(crate) async fn api_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, BenchError> {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let fail = |e: reqwest::Error| BenchError::Scenario(format!("{url}: {e}"));
    let resp = req.send().await.map_err(fail)?;
    let status = resp.status();
    let text = resp.text().await.map_err(fail)?;
    if !status.is_success() {
        return Err(BenchError::Scenario(format!("{url}: {status}: {text}")));
    }
    Ok(serde_json::from_str(&text)?)
}

/// An API router serving on a free local port in this process until the [`InProcess`] is
/// dropped (also on error): the scenarios that measure the API without child processes.
pub(crate) struct InProcess {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub(crate) async fn serve(app: axum::Router, what: &'static str) -> Result<Self, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| BenchError::Io {
                what: "binding the API's port".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BenchError::Io {
            what: "the API's address".into(),
            source,
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = hermet_testkit::axum_serve(listener, app).await {
                tracing::error!(error = %e, scenario = what, "the in-process API stopped");
            }
        });
        Ok(InProcess {
            base: format!("http://{addr}"),
            task,
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates a scratch database with a random name on the server of `env`; returns its name and
/// URL. The caller drops it (unless `--keep-database`).
pub(crate) async fn create_scratch_database(
    env: &BenchEnv,
) -> Result<(String, String), BenchError> {
    create_named_database(env, format!("hermet_bench_{:016x}", rand::random::<u64>())).await
}

/// [`create_scratch_database`] with a name of the caller's.
pub(crate) async fn create_named_database(
    env: &BenchEnv,
    name: String,
) -> Result<(String, String), BenchError> {
    let url = with_dbname(&env.database_url, &name)?;
    admin_connect(&env.database_url)
        .await?
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|source| BenchError::Admin {
            what: "create the scratch database",
            source,
        })?;
    Ok((name, url))
}
async fn run_in(
    url: &str,
    scenario: Scenario,
    opts: &BenchOptions,
    plan: Plan,
    shards: u32,
) -> Result<Report, BenchError> {
    {
        let mut client = admin_connect(url).await?;
        hermet_store::migrate::migrate(&mut client, shards).await?;
    }
    let workers = opts.concurrency_for(scenario);
    let background = if scenario == Scenario::List {
        opts.writers
    } else {
        0
    };
    let pool_size = (workers + background).max(opts.setup_concurrency) + 2;
    let pool = hermet_store::connect_pool(url, pool_size)?;
    let store = Store::new(
        pool.clone(),
        store_config(SyncMode::DualWrite, opts.read_threshold.config()),
    );
    let result = measure_all(store, scenario, opts, plan, shards, workers, background).await;
    pool.close();
    result
}

async fn measure_all(
    store: Store,
    scenario: Scenario,
    opts: &BenchOptions,
    plan: Plan,
    shards: u32,
    workers: usize,
    background: usize,
) -> Result<Report, BenchError> {
    let degrees = plan.degrees();
    let setup_started = Instant::now();
    eprintln!(
        "bench {scenario}: populating {} users, {} friendships, {} groups ({} memberships)",
        plan.users(),
        plan.friendships.len(),
        plan.groups.len(),
        plan.memberships()
    );
    let pop = workload::populate_with(
        &store,
        &plan,
        PopulateOptions {
            concurrency: opts.setup_concurrency,
            progress: true,
        },
    )
    .await?;
    eprintln!(
        "bench {scenario}: setup done in {:.1} s",
        setup_started.elapsed().as_secs_f64()
    );
    let setup = SetupStats {
        users: plan.users(),
        friendships: plan.friendships.len(),
        max_friends: degrees.iter().copied().max().unwrap_or(0),
        groups: plan.groups.len(),
        group_memberships: plan.memberships(),
        largest_group: plan.groups.iter().map(|g| g.size()).max().unwrap_or(0),
        users_secs: pop.timings.users_secs,
        friendships_secs: pop.timings.friendships_secs,
        groups_secs: pop.timings.groups_secs,
    };
    let write_mix = OpMix {
        list_conversations: 0,
        ..opts.mix
    };
    let write_mix = if write_mix
        == (OpMix {
            send: 0,
            mark_read: 0,
            update_profile: 0,
            list_conversations: 0,
        }) {
        OpMix::send_only()
    } else {
        write_mix
    };
    let plan = Arc::new(plan);
    let ctx = Arc::new(Ctx::new(
        store,
        Arc::clone(&plan),
        Arc::new(pop),
        opts.page_size,
    ));
    let load = |secs: u64| Load {
        measured: match scenario {
            // `run` refuses `cdc` before getting here.
            Scenario::Send
            | Scenario::Cdc
            | Scenario::Modes
            | Scenario::Cache
            | Scenario::Rebuild
            | Scenario::Peers
            | Scenario::Fanout
            | Scenario::Auth
            | Scenario::SendHttp
            | Scenario::Web => Source::Send,
            Scenario::List => Source::List,
        },
        workers,
        background: Source::Mix(write_mix),
        background_workers: background,
        duration: Duration::from_secs(secs),
    };
    if opts.warmup_secs > 0 {
        eprintln!("bench {scenario}: warm-up {} s", opts.warmup_secs);
        scenarios::measure(
            &ctx,
            load(opts.warmup_secs),
            opts.seed ^ 0x5741_524d,
            "warmup".into(),
        )
        .await?;
    }
    let mut runs = Vec::with_capacity(opts.runs);
    let mut error_samples = Vec::new();
    for i in 1..=opts.runs {
        let (stats, samples) = scenarios::measure(
            &ctx,
            load(opts.duration_secs),
            opts.seed.wrapping_add(i as u64),
            i.to_string(),
        )
        .await?;
        eprintln!(
            "bench {scenario}: run {i}/{}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            opts.runs, stats.ops_per_s, stats.latency_ms.p50, stats.latency_ms.p99, stats.errors
        );
        if stats.ops == 0 {
            return Err(BenchError::Scenario(format!(
                "run {i}: no operation succeeded ({} errors): {}",
                stats.errors,
                samples.first().map_or("", String::as_str)
            )));
        }
        error_samples.extend(samples);
        runs.push(stats);
    }
    error_samples.truncate(10);
    let median = report::median_of(&runs);
    Ok(Report {
        scenario,
        params: Params {
            sync_mode: SyncMode::DualWrite.as_str().to_owned(),
            users: plan.users(),
            seed: opts.seed,
            mean_friends: opts.mean_friends,
            groups: plan.groups.len(),
            shards,
            concurrency: workers,
            writers: background,
            duration_secs: opts.duration_secs,
            warmup_secs: opts.warmup_secs,
            runs: opts.runs,
            page_size: opts.page_size,
            mix: write_mix.to_string(),
        },
        setup,
        runs,
        median,
        error_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_in_urls() {
        let ok = |u: &str| with_dbname(u, "scratch").unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(
            ok("postgres://postgres@127.0.0.1:55432/postgres"),
            "postgres://postgres@127.0.0.1:55432/scratch"
        );
        assert_eq!(ok("postgres://u:p@h:1"), "postgres://u:p@h:1/scratch");
        assert_eq!(
            ok("postgresql://h/db?sslmode=disable&dbname=x"),
            "postgresql://h/scratch?sslmode=disable"
        );
        assert_eq!(
            ok("postgres://h?connect_timeout=5"),
            "postgres://h/scratch?connect_timeout=5"
        );
        assert_eq!(
            ok("host=/tmp user=me dbname=postgres"),
            "host=/tmp user=me dbname=postgres dbname=scratch"
        );
    }

    #[test]
    fn options_defaults_match_clap() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            opts: BenchOptions,
        }
        let cli =
            <Cli as clap::Parser>::try_parse_from(["bench"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.opts, BenchOptions::default());
        let cli = <Cli as clap::Parser>::try_parse_from([
            "bench",
            "--users",
            "5",
            "--mix",
            "send=1",
            "--json",
            "--watermark-ms",
            "10",
            "--batch-wait-ms",
            "0",
            "--batch-max",
            "5000",
            "--stage-metrics",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.opts.users, 5);
        assert_eq!(cli.opts.watermark_ms, Some(10));
        assert_eq!(cli.opts.batch_wait_ms, Some(0));
        assert_eq!(cli.opts.batch_max, Some(5000));
        assert!(
            <Cli as clap::Parser>::try_parse_from(["bench", "--batch-max", "0"]).is_err(),
            "an empty batch is refused"
        );
        assert!(cli.opts.stage_metrics);
        assert_eq!(cli.opts.mix, OpMix::send_only());
        assert!(cli.opts.json);
    }

    /// Against the local PostgreSQL: `HERMET_DATABASE_URL=… cargo test -p hermet-bench -- --ignored`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn small_runs_against_postgres() {
        let Ok(url) = std::env::var("HERMET_DATABASE_URL") else {
            panic!("HERMET_DATABASE_URL is not set");
        };
        let env = BenchEnv {
            shards: 16,
            ..BenchEnv::new(url)
        };
        let opts = BenchOptions {
            users: 300,
            groups: Some(20),
            duration_secs: 1,
            warmup_secs: 0,
            runs: 2,
            writers: 2,
            ..BenchOptions::default()
        };
        for scenario in [Scenario::Send, Scenario::List] {
            let report = run(&env, scenario, &opts)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.runs.len(), 2);
            assert!(report.median.ops > 0);
            println!("{report}");
        }
    }
}
