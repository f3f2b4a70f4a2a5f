//! Helpers shared by the tests that run `hermet` as child processes (`projector_process.rs`,
//! `recovery.rs`, `audit_repair.rs`): a child process with its log, a bounded poll, readiness
//! and `/metrics` samples of a serving process, a pipeline's names (slot, publication, topics,
//! groups) with its processes, and the clean-up that drops them.
//!
//! Each test binary uses a different subset, hence `dead_code` and unused re-exports are
//! allowed here.
#![allow(dead_code, unused_imports)]

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_core::projection::ProjectionConfig;
use hermet_core::validate::Limits;
use hermet_core::Lsn;
use hermet_store::{Store, StoreConfig, SyncMode};
pub use hermet_testkit::pipeline::{brokers, cleanup_blocking, connect, snapshot_done, wal_lsn};
use hermet_testkit::workload;
use hermet_testkit::{TestDb, TEST_SECRET, TEST_SHARDS};

pub use hermet_testkit::cdc::{PARTITIONS, PREVIEW, TABLES};
/// Bound of every wait (a restarted projector waits for the killed member's session to end).
pub const WAIT: Duration = Duration::from_secs(180);
pub use hermet_projector::consumer::GROUPS;

/// Tests with a replication slot run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn store_cfg() -> StoreConfig {
    StoreConfig {
        sync_mode: SyncMode::Cdc,
        projection: ProjectionConfig {
            preview_chars: PREVIEW,
        },
        limits: Limits::default(),
        fanout: hermet_testkit::SMALL_FANOUT,
    }
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

    pub fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} log {:?} (tail) ---\n{}",
            self.what,
            self.log,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("try_wait") {
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

    /// SIGTERM; the process must exit cleanly.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "{} exited with {status} on SIGTERM\n{}",
                    self.what,
                    self.tail()
                );
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("{} ignored SIGTERM\n{}", self.what, self.tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{} log kept: {:?}", self.what, self.log);
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Free local port for the API (bound, then released).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Polls `check` every 100 ms until it gives `Some`, for at most `bound`; `proc` must stay up
/// meanwhile. Panics with `what` and the process's log when time runs out.
pub async fn poll_until<T, F, Fut>(proc: &mut Proc, what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        proc.assert_running();
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {bound:?}\n{}",
            proc.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
            tag: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
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
        let deadline = Instant::now() + WAIT;
        loop {
            self.procs[relay].assert_running();
            let done = snapshot_done(&client, &self.slot()).await;
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no relay snapshot within {WAIT:?}\n{}",
                self.procs[relay].tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hermet_kafka::ensure_topics(&brokers(), &[self.dlq_topic()], 1, 1)
            .await
            .expect("dead-letter topic");
    }

    /// Waits until both projectors cover `lsn` on every partition; `running` must stay up.
    pub async fn drain(&mut self, store: &Store, lsn: Lsn, running: &[usize]) {
        let conn = store.pool().get().await.expect("connection");
        let deadline = Instant::now() + WAIT;
        loop {
            for p in running {
                self.procs[*p].assert_running();
            }
            let mut all = true;
            for (g, _) in GROUPS {
                let cov = hermet_store::sync::Coverage::new(
                    self.group(g),
                    self.group_topics(g),
                    PARTITIONS,
                );
                all &= hermet_store::sync::covers(&conn, SyncMode::Cdc, &cov, lsn)
                    .await
                    .expect("covers");
            }
            if all {
                return;
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = running.iter().map(|p| self.procs[*p].tail()).collect();
                panic!(
                    "the projectors did not reach {lsn} within {WAIT:?}\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
