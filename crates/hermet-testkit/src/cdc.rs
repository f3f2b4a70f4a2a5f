//! One test's CDC pipeline in the test's own process: the relay and the two consumer groups as
//! tasks, with a slot, publication, topics, dead-letter topic and consumer groups of their own,
//! dropped at the end (from `Drop` too). Tests that use it run one at a time (each binary's own
//! `SERIAL` mutex): slots are cluster-wide.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hermet_cdc::relay::{self, RelayConfig};
use hermet_core::cache::no_cache;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_core::Lsn;
use hermet_projector::consumer::{self, GroupConfig};
use hermet_store::{sync, Store, SyncMode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pipeline::{brokers, cleanup, cleanup_blocking, connect, snapshot_done};
use crate::TestDb;

/// The write-side tables the relay captures.
pub const TABLES: [&str; 5] = hermet_core::rows::WRITE_TABLES;
/// Partitions of each test topic: more than one, so events of one table arrive out of order.
pub const PARTITIONS: i32 = 2;
/// Short, so truncation is exercised on most messages.
pub const PREVIEW: usize = 5;
/// Bound of every wait for the pipeline.
pub const WAIT: Duration = Duration::from_secs(120);
pub const CONVERSATIONS: &str = "conversation-view-updater";
pub const CONTACTS: &str = "contact-view-updater";

/// The read models group `base` maintains.
pub fn read_models_of(base: &str) -> ReadModels {
    consumer::group_read_models(base).expect("a projector group")
}

/// The projection settings of the pipeline's groups (and of the stores tests compare with).
pub fn projection() -> ProjectionConfig {
    ProjectionConfig {
        preview_chars: PREVIEW,
    }
}

/// [`crate::store_config`] with the pipeline's previews: the store of a test of the
/// eventually consistent modes, and the ones it is compared with.
pub fn store_config(mode: SyncMode) -> hermet_store::StoreConfig {
    crate::store_config(mode, PREVIEW)
}

pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A background task with a graceful stop; aborted if dropped while running.
pub struct Task {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Task {
    pub fn spawn<F, Fut>(name: impl Into<String>, run: F) -> Task
    where
        F: FnOnce(Stop) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let stop: Stop = Box::pin(async move {
            let _ = rx.await;
        });
        Task {
            name: name.into(),
            stop: Some(tx),
            handle: Some(tokio::spawn(run(stop))),
        }
    }

    /// Panics with the task's error if it has stopped by itself.
    pub async fn check(&mut self) {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            let r = self.handle.take().expect("handle").await;
            panic!("{} stopped by itself: {r:?}", self.name);
        }
    }

    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            match tokio::time::timeout(WAIT, h).await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("{} did not stop cleanly: {other:?}", self.name),
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// One test's CDC pipeline: slot, publication, topics, dead-letter topic and consumer groups
/// of its own, the relay and the two projectors as tasks. Declare it after the [`TestDb`]
/// so it is dropped first: a database with a slot cannot be dropped.
pub struct Cdc {
    pub url: String,
    pub tag: String,
    pub relay: Option<Task>,
    pub groups: Vec<Task>,
    pub max_attempts: u32,
    pub heartbeat: Duration,
    /// The groups' `visibility_wait` (default: the production default).
    pub visibility_wait: Duration,
}

impl Cdc {
    pub fn new(db: &TestDb) -> Cdc {
        Cdc {
            url: db.url.clone(),
            tag: crate::pipeline::tag(),
            relay: None,
            groups: Vec::new(),
            max_attempts: 3,
            // Short, so a quiet slot's position (and the drain below) moves on quickly.
            heartbeat: Duration::from_millis(200),
            visibility_wait: hermet_projector::visibility::DEFAULT_VISIBILITY_WAIT,
        }
    }

    pub fn slot(&self) -> String {
        format!("m_{}", self.tag)
    }

    pub fn prefix(&self) -> String {
        format!("m{}", self.tag)
    }

    pub fn topics(&self) -> Vec<String> {
        TABLES
            .iter()
            .map(|t| format!("{}.{t}.changed", self.prefix()))
            .collect()
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.prefix())
    }

    /// `projector.group_prefix` of this pipeline.
    pub fn group_prefix(&self) -> String {
        format!("{}-", self.prefix())
    }

    pub fn group(&self, base: &str) -> String {
        format!("{}{base}", self.group_prefix())
    }

    /// The topics a group maintaining `models` reads.
    pub fn group_topics(&self, models: ReadModels) -> Vec<String> {
        let all = self.topics();
        TABLES
            .iter()
            .zip(all)
            .filter(|(t, _)| models.reads_table(t))
            .map(|(_, topic)| topic)
            .collect()
    }

    /// What a read of the view of group `base` waits on.
    pub fn coverage(&self, base: &str) -> sync::Coverage {
        sync::Coverage::new(
            self.group(base),
            self.group_topics(read_models_of(base)),
            PARTITIONS,
        )
    }

    /// Starts the relay and waits for its (empty) initial snapshot, so the topics exist.
    pub async fn start_relay(&mut self) {
        let cfg = RelayConfig {
            database_url: self.url.clone(),
            brokers: brokers(),
            slot: self.slot(),
            publication: format!("mp_{}", self.tag),
            tables: TABLES.map(String::from).to_vec(),
            topic_prefix: self.prefix(),
            topic_template: format!("{}.{{table}}.changed", self.prefix()),
            partitions: PARTITIONS,
            replication_factor: 1,
            heartbeat: self.heartbeat,
            transaction_topic: false,
            max_in_flight: 100_000,
            snapshot_batch: 1000,
            watermark_interval: Duration::from_millis(20),
            linger: relay::DEFAULT_LINGER,
        };
        self.relay = Some(Task::spawn("cdc relay", |stop| async move {
            relay::run(cfg, stop).await.map_err(|e| e.to_string())
        }));
        let client = connect(&self.url).await;
        let slot = self.slot();
        let relay = self.relay.as_mut().expect("relay");
        crate::eventually("a completed relay snapshot", WAIT, async || {
            relay.check().await;
            snapshot_done(&client, &slot).await
        })
        .await;
        hermet_kafka::ensure_topics(&brokers(), &[self.dlq_topic()], 1, 1)
            .await
            .expect("dead-letter topic");
    }

    pub fn group_config(&self, base: &str, models: ReadModels) -> GroupConfig {
        GroupConfig {
            brokers: brokers(),
            group: self.group(base),
            topics: self.group_topics(models),
            read_models: models,
            batch_max: 500,
            batch_wait: Duration::from_millis(10),
            max_attempts: self.max_attempts,
            dlq_topic: self.dlq_topic(),
            projection: projection(),
            cache: no_cache(),
            visibility_wait: self.visibility_wait,
        }
    }

    /// Starts both consumer groups on `pool`.
    pub fn start_groups(&mut self, pool: &deadpool_postgres::Pool) {
        for (base, models) in consumer::GROUPS {
            let (cfg, pool) = (self.group_config(base, models), pool.clone());
            self.groups.push(Task::spawn(base, |stop| async move {
                consumer::run_group(cfg, pool, stop)
                    .await
                    .map_err(|e| e.to_string())
            }));
        }
    }

    pub async fn stop_groups(&mut self) {
        for g in self.groups.drain(..) {
            g.stop().await;
        }
    }

    pub async fn check(&mut self) {
        if let Some(r) = self.relay.as_mut() {
            r.check().await;
        }
        for g in &mut self.groups {
            g.check().await;
        }
    }

    /// Waits until both projectors have applied everything up to `lsn` on every partition.
    pub async fn drain(&mut self, store: &Store, lsn: Lsn) {
        let conn = store.pool().get().await.expect("connection");
        let groups = [self.coverage(CONVERSATIONS), self.coverage(CONTACTS)];
        let what = format!("projectors reach {lsn} ({})", lsn.0);
        crate::eventually(what, WAIT, async || {
            self.check().await;
            let upto = || async {
                sync::covered_upto(&conn, SyncMode::Cdc, &groups)
                    .await
                    .expect("covered_upto")
            };
            // Read before `covers`: watermarks only advance, so a covered `before` implies `all`.
            let before = upto().await;
            let mut all = true;
            for cov in &groups {
                all &= sync::covers(&conn, SyncMode::Cdc, cov, lsn)
                    .await
                    .expect("covers");
            }
            assert!(
                all || before.is_none_or(|u| u < lsn),
                "covered_upto says {before:?} covers {lsn}, covers says no"
            );
            if all {
                let after = upto().await;
                assert!(
                    after.is_some_and(|u| u >= lsn),
                    "covers says {lsn} is applied, covered_upto says {after:?}"
                );
                return Ok(());
            }
            Err(format!("watermarks:\n{}", watermarks(&conn).await))
        })
        .await
    }

    /// The normal end: stop the tasks, drop the slot, the topics and the groups.
    pub async fn finish(mut self) {
        self.stop_groups().await;
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
        let (topics, groups) = self.kafka_names();
        cleanup(&self.url, &self.slot(), &topics, &groups).await;
    }

    pub fn kafka_names(&self) -> (Vec<String>, Vec<String>) {
        let mut topics = self.topics();
        topics.push(self.dlq_topic());
        let groups = vec![self.group(CONVERSATIONS), self.group(CONTACTS)];
        (topics, groups)
    }
}

/// The projectors' watermarks, one line each: what a drain that timed out shows.
async fn watermarks(conn: &tokio_postgres::Client) -> String {
    let marks = conn
        .query(
            "SELECT projector, topic, partition, applied_lsn::text FROM hermet_projector_watermarks
              ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .expect("watermarks");
    marks
        .iter()
        .map(|r| {
            format!(
                "{} {}:{} {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i32>(2),
                r.get::<_, String>(3)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Cdc {
    fn drop(&mut self) {
        // After `finish` this finds nothing left to do.
        self.groups.clear();
        self.relay = None;
        let (topics, groups) = self.kafka_names();
        cleanup_blocking(self.url.clone(), self.slot(), topics, groups);
    }
}
