//! Helpers shared by the tests that run `hermet` as child processes (`cdc.rs`,
//! `projector_process.rs`, `recovery.rs`, `audit_repair.rs`, `admin_output.rs`): a child process
//! with its log, the bounded wait ([`eventually`]) while a process must stay up, readiness and
//! `/metrics` samples of a serving process, a pipeline's names (slot, publication, topics,
//! groups) with its processes, and the clean-up that drops them.
//!
//! Each test binary uses a different subset, hence `dead_code` and unused re-exports are
//! allowed here.
#![allow(dead_code, unused_imports)]

use std::fmt::Display;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hermet_core::projection::ProjectionConfig;
use hermet_core::validate::Limits;
use hermet_core::Lsn;
use hermet_store::{Store, StoreConfig, SyncMode};
pub use hermet_testkit::pipeline::{brokers, cleanup_blocking, connect, snapshot_done, wal_lsn};
use hermet_testkit::signal::Signal;
use hermet_testkit::workload;
pub use hermet_testkit::{eventually, Probe, TestDb, TEST_SECRET, TEST_SHARDS};

pub use hermet_testkit::cdc::{PARTITIONS, PREVIEW, TABLES};
/// Bound of every wait (a restarted projector waits for the killed member's session to end).
pub const WAIT: Duration = Duration::from_secs(180);
pub use hermet_projector::consumer::GROUPS;

pub use hermet_testkit::pipeline::SERIAL;

pub fn store_cfg() -> StoreConfig {
    hermet_testkit::cdc::store_config(SyncMode::Cdc)
}

/// Random commands of every scenario, until `stop` (or for `rounds` sequences of 50).
pub async fn load(
    store: Store,
    base: workload::World,
    task: u64,
    stop: Arc<AtomicBool>,
    rounds: Option<u64>,
) -> workload::World {
    let mut w = base;
    w.concurrent = true;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|r| round < r) {
        let cmds = workload::generate(workload::seed() ^ (task << 32) ^ round, 50);
        for c in &cmds {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = workload::exec(&store, &mut w, c).await {
                panic!("load task {task}: {e}");
            }
        }
        round += 1;
    }
    w
}

/// A `hermet` process whose output goes to a log file.
pub struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(what: &str, args: &[&str], env: &[(String, String)], log: PathBuf) -> Proc {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hermet"));
        cmd.args(args)
            .env_remove("HERMET_CONFIG")
            .env("RUST_LOG", "info")
            // The tests create users and send fast from one address.
            .env("HERMET_RATE_LIMITS__ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            what: what.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The full log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn tail(&self) -> String {
        tail_of(&self.what, &self.log)
    }

    /// `what`, then the log's tail as it is when this is formatted: the `what` of an
    /// [`eventually`] whose probe holds the process (the log is read only if the wait fails).
    pub fn noting<W: Display>(&self, what: W) -> Noting<W> {
        Noting {
            what,
            name: self.what.clone(),
            log: self.log.clone(),
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("started");
        child.try_wait().expect("try_wait")
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status})\n{}", self.what, self.tail());
        }
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself, for at most `bound`.
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let what = self.noting(format!("{} exits", self.what));
        eventually(what, bound, async || self.exited()).await
    }

    /// SIGTERM; the process must exit cleanly.
    pub async fn stop(&mut self) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return;
        };
        hermet_testkit::signal::process(pid, Signal::Term).expect("SIGTERM");
        let what = self.noting(format!("{} exits on SIGTERM", self.what));
        let exited = hermet_testkit::within(WAIT, async || self.exited()).await;
        let Ok(status) = exited else {
            self.kill();
            panic!("not within {WAIT:?}: {what}");
        };
        self.child = None;
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM\n{}",
            self.what,
            self.tail()
        );
    }
}

/// See [`Proc::noting`].
pub struct Noting<W> {
    what: W,
    name: String,
    log: PathBuf,
}

impl<W: Display> Display for Noting<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.what, tail_of(&self.name, &self.log))
    }
}

/// The last lines of the log of process `name`, with a header naming it.
fn tail_of(name: &str, log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {name} log {log:?} (tail) ---\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// `what`, then the log tails of several processes (see [`Proc::noting`]).
pub struct NotingAll<W>(pub W, pub Vec<Noting<&'static str>>);

impl<W: Display> Display for NotingAll<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        for n in &self.1 {
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// Free local port for the API (bound, then released).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// [`eventually`] `check` answers, for at most `bound`, while `proc` stays up; a failure shows
/// the process's log.
pub async fn poll_until<T, P: Probe<T>>(
    proc: &mut Proc,
    what: &str,
    bound: Duration,
    mut check: impl AsyncFnMut() -> P,
) -> T {
    let what = proc.noting(what);
    eventually(what, bound, async || {
        proc.assert_running();
        check().await
    })
    .await
}

/// Waits until the `serve` process `proc` answers `/readyz` at `base` (`http://host:port`).
pub async fn wait_ready(proc: &mut Proc, http: &reqwest::Client, base: &str) {
    poll_until(proc, "ready", WAIT, || async move {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    })
    .await
}

/// Sum of every sample of `series` whose labels contain all of `labels`; `None` if absent.
pub fn sample_sum(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        if name != series || !labels.iter().all(|l| name_labels.contains(l)) {
            continue;
        }
        let v: f64 = value.parse().unwrap_or(f64::NAN);
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// A test's names (slot, publication, topics, groups) and its processes. Declare it after
/// the [`TestDb`], so it is dropped (and the slot with it) first.
pub struct Pipeline {
    url: String,
    /// Start of every name (`pp`: projector tests, `rc`: recovery tests).
    kind: &'static str,
    batch_max: u32,
    pub tag: String,
    pub procs: Vec<Proc>,
    starts: usize,
}

impl Pipeline {
    pub fn new(db: &TestDb, kind: &'static str, batch_max: u32) -> Pipeline {
        Pipeline {
            url: db.url.clone(),
            kind,
            batch_max,
            tag: hermet_testkit::pipeline::tag(),
            procs: Vec::new(),
            starts: 0,
        }
    }

    pub fn slot(&self) -> String {
        format!("{}_{}", self.kind, self.tag)
    }

    pub fn prefix(&self) -> String {
        format!("{}{}", self.kind, self.tag)
    }

    pub fn group_prefix(&self) -> String {
        format!("{}-", self.prefix())
    }

    /// The full name of consumer group `g` of this pipeline.
    pub fn group(&self, g: &str) -> String {
        format!("{}{g}", self.group_prefix())
    }

    /// Runs `hermet <args>` to completion with this pipeline's environment.
    pub async fn admin(&self, args: &[&str]) -> Output {
        hermet(args, self.env()).await
    }

    /// Records the groups have not consumed yet, over every partition of the topics.
    pub async fn group_lag(&self, g: &str) -> i64 {
        let (group, topics) = (self.group(g), self.group_topics(g));
        tokio::task::spawn_blocking(move || {
            hermet_projector::replay::group_lag(&brokers(), &group, &topics)
        })
        .await
        .expect("thread")
        .expect("group lag")
        .iter()
        .map(|p| p.lag)
        .sum()
    }

    pub fn topics(&self) -> Vec<String> {
        TABLES
            .iter()
            .map(|t| format!("{}.{t}.changed", self.prefix()))
            .collect()
    }

    /// The topics group `g` (before the prefix) reads.
    pub fn group_topics(&self, g: &str) -> Vec<String> {
        let models = hermet_projector::consumer::group_read_models(g).expect("a projector group");
        TABLES
            .iter()
            .filter(|t| models.reads_table(t))
            .map(|t| format!("{}.{t}.changed", self.prefix()))
            .collect()
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.prefix())
    }

    /// The environment of every process of this pipeline.
    pub fn env(&self) -> Vec<(String, String)> {
        let kv = |k: &str, v: String| (k.to_owned(), v);
        vec![
            kv("HERMET_DATABASE_URL", self.url.clone()),
            kv("HERMET_KAFKA_BROKERS", brokers()),
            kv("HERMET_SHARDS", TEST_SHARDS.to_string()),
            kv("HERMET_SYNC_MODE", "cdc".into()),
            kv("HERMET_READ_SIDE__PREVIEW_CHARS", PREVIEW.to_string()),
            kv("HERMET_CDC__SLOT", self.slot()),
            kv(
                "HERMET_CDC__PUBLICATION",
                format!("{}_pub_{}", self.kind, self.tag),
            ),
            kv("HERMET_CDC__TOPIC_PREFIX", self.prefix()),
            kv(
                "HERMET_CDC__TOPIC_TEMPLATE",
                format!("{}.{{table}}.changed", self.prefix()),
            ),
            kv("HERMET_CDC__PARTITIONS", PARTITIONS.to_string()),
            // A quiet slot (and the drain below) moves on within a fraction of a second.
            kv("HERMET_CDC__HEARTBEAT_MS", "200".into()),
            kv("HERMET_CDC__WATERMARK_MS", "20".into()),
            kv("HERMET_PROJECTOR__GROUP_PREFIX", self.group_prefix()),
            kv("HERMET_PROJECTOR__DLQ_TOPIC", self.dlq_topic()),
            kv("HERMET_PROJECTOR__BATCH_MAX", self.batch_max.to_string()),
            kv("HERMET_JWT_SECRET", TEST_SECRET.into()),
            // The tests create their users with `POST /v1/users`.
            kv("HERMET_AUTH__OPEN_SIGNUP", "true".into()),
            // Its own cache keys in the shared Redis.
            kv("HERMET_REDIS__KEY_PREFIX", self.prefix()),
            kv("HERMET_AUDIT__INTERVAL_SECS", "1".into()),
            kv("HERMET_AUDIT__RECHECK_MS", "200".into()),
        ]
    }

    pub fn start(&mut self, what: &str, args: &[&str], extra: &[(String, String)]) -> usize {
        let log = std::env::temp_dir().join(format!(
            "hermet-{}-test-{}-{what}-{}.log",
            self.kind, self.tag, self.starts
        ));
        self.starts += 1;
        let mut env = self.env();
        env.extend_from_slice(extra);
        self.procs.push(Proc::spawn(what, args, &env, log));
        self.procs.len() - 1
    }

    /// Waits until the relay recorded its initial snapshot as complete (the topics exist).
    pub async fn wait_relay(&mut self, relay: usize) {
        let client = connect(&self.url).await;
        let slot = self.slot();
        let proc = &mut self.procs[relay];
        poll_until(proc, "a completed relay snapshot", WAIT, async || {
            snapshot_done(&client, &slot).await.then_some(())
        })
        .await;
        hermet_kafka::ensure_topics(&brokers(), &[self.dlq_topic()], 1, 1)
            .await
            .expect("dead-letter topic");
    }

    /// Waits until both projectors cover `lsn` on every partition; `running` must stay up.
    pub async fn drain(&mut self, store: &Store, lsn: Lsn, running: &[usize]) {
        let conn = store.pool().get().await.expect("connection");
        let coverage: Vec<_> = GROUPS
            .iter()
            .map(|(g, _)| {
                hermet_store::sync::Coverage::new(self.group(g), self.group_topics(g), PARTITIONS)
            })
            .collect();
        let what = format!("the projectors reach {lsn}");
        let notes = running.iter().map(|p| self.procs[*p].noting("")).collect();
        let procs = &mut self.procs;
        eventually(NotingAll(what, notes), WAIT, async || {
            for p in running {
                procs[*p].assert_running();
            }
            let mut all = true;
            for cov in &coverage {
                all &= hermet_store::sync::covers(&conn, SyncMode::Cdc, cov, lsn)
                    .await
                    .expect("covers");
            }
            all
        })
        .await
    }

    pub fn kafka_names(&self) -> (Vec<String>, Vec<String>) {
        let mut topics = self.topics();
        topics.push(self.dlq_topic());
        let groups = GROUPS.iter().map(|(g, _)| self.group(g)).collect();
        (topics, groups)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        let (topics, groups) = self.kafka_names();
        cleanup_blocking(self.url.clone(), self.slot(), topics, groups);
    }
}

/// Runs `hermet <args>` to completion.
pub async fn hermet(args: &[&str], env: Vec<(String, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hermet"));
        cmd.args(&args)
            .env_remove("HERMET_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run hermet")
    })
    .await
    .expect("thread")
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One `/metrics` scrape of the process at `base`.
pub async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200);
    r.text().await.expect("metrics text")
}

/// For tests that time a process's exit themselves (`shutdown.rs`).
impl Proc {
    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}
