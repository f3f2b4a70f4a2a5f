//! Kafka consumer groups that keep a read model converged.
//!
//! Each group ([`GROUPS`]) reads the write-side topics its view depends on
//! ([`ReadModels::reads_table`]: the contact group only users and friendships) and maintains its own
//! view through the shared projection. One step:
//!
//! 1. poll up to `batch_max` records or until `batch_wait` passes;
//! 2. decode them into row changes (watermark markers and tombstones carry no change);
//! 3. wait until every transaction of the batch is visible to new snapshots ([`visibility`]):
//!    the relay may ship a transaction that has committed but is still running for other
//!    sessions (a synchronous standby's wait, a descheduled backend), and a look-up then would
//!    build rows from the state before the change. Records of a transaction still invisible after
//!    `visibility_wait` are dead-lettered with that reason, never applied from older state;
//! 4. in ONE PostgreSQL transaction: apply all changes (the projection coalesces repeated
//!    updates of a row into one recomputation), mark the batch's dead letters outstanding and
//!    advance the partition watermarks;
//! 5. after that commit, commit the Kafka offsets.
//!
//! Offsets are committed to Kafka after the effect, not stored with it: a crash between 4 and 5
//! re-delivers a batch, which the idempotent projection absorbs; keeping offsets in Kafka lets
//! standard tooling (lag, resets, `hermet admin replay`) work on the groups.
//!
//! Failures are classified by SQLSTATE ([`crate::classify`]). One that is not the data's fault
//! (a database that cannot be reached, a lost race, anything unknown) is retried with backoff
//! for as long as it takes: the partition must not move on past a change that is fine. A failure
//! for the data (a data exception, a constraint, a trigger's `RAISE`, a row that does not decode)
//! is retried `max_attempts` times; then the batch is bisected ([`crate::Bisect`]: a piece once,
//! a single record `max_attempts` times), and each record that fails alone goes to the
//! dead-letter topic with its error and attempt count. The partition then moves on, and the
//! transaction that moves its watermark also marks those records outstanding
//! (`hermet_projector_dead_letters`): until `dlq replay` applies them, reads asking for a write
//! at or past the oldest one answer stale (`hermet_store::sync::covers`). Records whose
//! transaction stays invisible (step 3) and undecodable records are dead-lettered the same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use hermet_core::cache::ListCache;
use hermet_core::change::RowChange;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_kafka::rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use hermet_kafka::rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use hermet_kafka::rdkafka::message::{Headers, Message, OwnedMessage};
use hermet_kafka::rdkafka::producer::FutureProducer;
use hermet_kafka::rdkafka::statistics::Statistics;
use hermet_kafka::rdkafka::{ClientConfig, ClientContext};
use hermet_kafka::rdkafka::{Offset, TopicPartitionList};
use hermet_kafka::{DropOffRuntime, WATERMARK_HEADER};
use hermet_store::dead_letters::{record_dead_letters, DeadLetterMark};
use hermet_store::sync::{advance_watermarks, PartitionProgress};
use hermet_store::{project, StoreError};

use crate::debezium::{self, Decoded};
use crate::telemetry::{self, LagMode, LagView, Projector};
use crate::visibility::{self, Gate};
use crate::{classify, now_ms, Bisect, Failure, ProjectorError};

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub brokers: String,
    /// The consumer group, also the projector's name in `hermet_projector_watermarks`.
    pub group: String,
    pub topics: Vec<String>,
    pub read_models: ReadModels,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub max_attempts: u32,
    pub dlq_topic: String,
    pub projection: ProjectionConfig,
    /// Invalidated for the owners of every batch, after the batch commits.
    pub cache: Arc<dyn ListCache>,
    /// How long a batch waits for its transactions to become visible (see the module docs).
    pub visibility_wait: Duration,
}

/// The consumer groups, before `projector.group_prefix`, and the read models each maintains.
pub const GROUPS: [(&str, ReadModels); 2] = [
    ("conversation-view-updater", ReadModels::CONVERSATIONS),
    ("contact-view-updater", ReadModels::CONTACTS),
];

/// The read models of the group named `group`, with or without its `projector.group_prefix`.
pub fn group_read_models(group: &str) -> Option<ReadModels> {
    GROUPS
        .iter()
        .find(|(name, _)| group.ends_with(name))
        .map(|(_, models)| *models)
}

/// Default of [`GroupConfig::batch_max`]. A group that keeps up applies far fewer per batch (what
/// arrives within `batch_wait`); one that fell behind catches up faster with big batches, which
/// coalesce repeated updates of a row and pay each touched shard's set-up once (BENCHMARKS.md,
/// "Projector batches of up to 5,000 records").
pub const DEFAULT_BATCH_MAX: usize = 5000;

/// Largest [`GroupConfig::batch_max`] accepted: a batch is held in memory.
pub const MAX_BATCH_MAX: usize = 1_000_000;

/// Default of [`GroupConfig::batch_wait`].
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(10);

/// One record of a batch: the Kafka message and what it says.
struct Item {
    msg: OwnedMessage,
    record: Record,
}

/// What a record of a change topic says: a relay watermark marker, what the Debezium decoder
/// made of it (a change or nothing to apply), or why it could not be decoded.
// Built once per record and kept in its batch: boxing the change would only add an allocation
// (as for `debezium::Decoded`).
#[allow(clippy::large_enum_variant)]
enum Record {
    /// A relay watermark marker: every event of its partition up to `lsn` came before it.
    Marker { lsn: u64 },
    /// A change event as decoded ([`Decoded::Change`], or [`Decoded::Skip`] for a tombstone).
    Decoded(Decoded),
    /// A record that cannot even be decoded, and why.
    Poison(String),
}

impl Item {
    fn change(&self) -> Option<&RowChange> {
        match &self.record {
            Record::Decoded(Decoded::Change { change, .. }) => Some(change),
            _ => None,
        }
    }

    /// The position the record proves its partition applied up to, if it says one.
    fn lsn(&self) -> Option<u64> {
        match self.record {
            Record::Marker { lsn } | Record::Decoded(Decoded::Change { lsn, .. }) => Some(lsn),
            Record::Decoded(Decoded::Skip) | Record::Poison(_) => None,
        }
    }

    fn commit_ts_ms(&self) -> Option<i64> {
        match self.record {
            Record::Decoded(Decoded::Change { commit_ts_ms, .. }) => Some(commit_ts_ms),
            _ => None,
        }
    }

    /// The transaction of the record's change, when it carries a change that names one.
    fn change_xid(&self) -> Option<u32> {
        match self.record {
            Record::Decoded(Decoded::Change { xid, .. }) => xid,
            _ => None,
        }
    }
}

fn marker_lsn(msg: &OwnedMessage) -> Option<u64> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == WATERMARK_HEADER)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

fn item(msg: OwnedMessage) -> Item {
    let record = match marker_lsn(&msg) {
        Some(lsn) => Record::Marker { lsn },
        None => match debezium::decode(msg.payload()) {
            Ok(decoded) => Record::Decoded(decoded),
            Err(e) => Record::Poison(e.to_string()),
        },
    };
    Item { msg, record }
}

pub fn consumer(brokers: &str, group: &str) -> Result<StreamConsumer, ProjectorError> {
    Ok(group_client_config(brokers, group).create()?)
}

/// Reports `hermet_consumer_lag_messages` (records between the group's position and the
/// partition's end, by group, topic and partition) from librdkafka's periodic statistics, which
/// cost no extra broker round trips.
struct LagContext {
    group: String,
    /// Whether the wait for the change topics has been reported.
    told_waiting: AtomicBool,
}

impl ClientContext for LagContext {
    /// A group may start before the relay has ever run and created the change topics; it then
    /// waits for them (`run_group`). librdkafka reports each missing topic as an error every
    /// metadata refresh: say once that the group is waiting, instead of logging errors.
    fn error(&self, error: RdError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
            if !self.told_waiting.swap(true, Ordering::Relaxed) {
                tracing::info!(group = %self.group, %reason,
                    "waiting for the change topics (the relay creates them when it first runs)");
            } else {
                tracing::debug!(group = %self.group, %reason, "change topic not there yet");
            }
        } else {
            tracing::error!(group = %self.group, %error, %reason, "kafka client error");
        }
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1: the internal "unassigned" partition, or a lag not known yet.
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                telemetry::consumer_lag(&self.group, topic, *partition, p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

fn group_consumer(
    brokers: &str,
    group: &str,
) -> Result<StreamConsumer<LagContext>, ProjectorError> {
    Ok(group_client_config(brokers, group)
        .set("statistics.interval.ms", "5000")
        .create_with_context(LagContext {
            group: group.to_owned(),
            told_waiting: AtomicBool::new(false),
        })?)
}

fn group_client_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = hermet_kafka::client_config(brokers, group);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    c
}

/// Runs one consumer group until `shutdown` resolves.
pub async fn run_group(
    cfg: GroupConfig,
    pool: Pool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    let consumer = DropOffRuntime::new(group_consumer(&cfg.brokers, &cfg.group)?);
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dlq = hermet_kafka::producer(&cfg.brokers, &format!("{}-dlq", cfg.group))?;
    tracing::info!(group = %cfg.group, topics = ?cfg.topics, "projector started");
    retire_other_topics(&cfg, &pool).await;
    // Registered at 0, so a failure rate exists before the first failure.
    telemetry::register_group(&cfg.group);
    tokio::pin!(shutdown);
    // The offsets after the last batch applied.
    let mut applied: Option<TopicPartitionList> = None;
    loop {
        let first = tokio::select! {
            _ = &mut shutdown => break,
            m = consumer.recv() => match m {
                Ok(m) => m.detach(),
                // Topics appear when the relay first starts; until then there is nothing to do.
                Err(RdError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        let mut batch = vec![item(first)];
        let deadline = tokio::time::Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => batch.push(item(m?.detach())),
                Err(_) => break,
            }
        }
        // Cancellable: the gate changes nothing, and the batch comes again after a restart.
        let gate = tokio::select! {
            _ = &mut shutdown => break,
            g = gate(&cfg, &pool, &batch) => g,
        };
        process(&cfg, &pool, &dlq, &batch, &gate).await?;
        applied = Some(commit_offsets(&consumer, &batch)?);
    }
    // Batches are committed asynchronously, and the consumer is closed on a thread of its own
    // that the process's exit does not wait for: commit the last one once more, and wait for
    // it, so a restart does not apply it again.
    if let Some(tpl) = applied {
        let group = cfg.group.clone();
        let done = tokio::task::spawn_blocking(move || {
            let r = consumer.commit(&tpl, CommitMode::Sync);
            drop(consumer);
            r
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(group = %group, error = %e, "final offset commit failed"),
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "final offset commit did not finish")
            }
        }
    }
    tracing::info!(group = %cfg.group, "projector stopped");
    Ok(())
}

/// Drops the group's progress rows of topics it no longer reads. Coverage never counts them
/// (`hermet_store::sync::Coverage`), so this only tidies status reports: a failure is logged.
async fn retire_other_topics(cfg: &GroupConfig, pool: &Pool) {
    let done = match pool.get().await {
        Ok(c) => hermet_store::sync::retire_watermarks(&c, &cfg.group, &cfg.topics).await,
        Err(e) => Err(StoreError::from(e)),
    };
    match done {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(group = %cfg.group, partitions = n, "forgot progress on topics no longer read")
        }
        Err(e) => {
            tracing::warn!(group = %cfg.group, error = %e, "could not forget progress on topics no longer read")
        }
    }
}

/// Waits until the transactions of the batch's changes are visible ([`visibility`]), for at
/// most `visibility_wait`. A database that cannot answer is waited for, as an apply would be.
async fn gate(cfg: &GroupConfig, pool: &Pool, batch: &[Item]) -> Gate {
    let xids = batch.iter().filter_map(Item::change_xid).collect();
    let mut backoff = Duration::from_millis(50);
    loop {
        match visibility::wait_visible(
            pool,
            Projector::Group(&cfg.group),
            &xids,
            cfg.visibility_wait,
        )
        .await
        {
            Ok(gate) => return gate,
            Err(e) => {
                tracing::warn!(group = %cfg.group, error = %e,
                    "projector cannot check that its transactions are visible; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies a batch (or dead-letters what cannot be applied); returns when every record is
/// either applied or in the dead-letter topic, and the partitions' watermarks have moved past all
/// of them in the same transaction that marks the dead-lettered ones outstanding
/// (`hermet_store::dead_letters::record_dead_letters`: reads asking for their writes answer stale until
/// they are replayed).
async fn process(
    cfg: &GroupConfig,
    pool: &Pool,
    dlq: &FutureProducer,
    batch: &[Item],
    gate: &Gate,
) -> Result<(), ProjectorError> {
    let started = Instant::now();
    let running = match gate {
        Gate::Open { .. } => None,
        Gate::TimedOut { running } => Some(running),
    };
    let invisible = |xid: u32| running.is_some_and(|r| r.contains(&xid));
    let mut letters: Vec<DeadLetterMark> = Vec::new();
    let mut good: Vec<&Item> = Vec::with_capacity(batch.len());
    for (at, i) in batch.iter().enumerate() {
        let reason = match (&i.record, i.change_xid()) {
            (Record::Poison(p), _) => p.clone(),
            (_, Some(xid)) if invisible(xid) => format!(
                "transaction {xid} is committed but was still not visible to new snapshots after \
                 {} ms (projector.visibility_wait_ms); replay this record once it is",
                cfg.visibility_wait.as_millis()
            ),
            _ => {
                good.push(i);
                continue;
            }
        };
        dead_letter(cfg, dlq, i, &reason, 1).await?;
        letters.push(mark(batch, at, reason));
    }
    let progress = progress_of(batch);
    let whole = apply_with_retries(
        cfg,
        pool,
        &good,
        Some((&progress, &letters)),
        cfg.max_attempts,
    )
    .await;
    if let Err(e) = whole {
        tracing::warn!(group = %cfg.group, error = %e, records = good.len(),
            "batch keeps failing; bisecting it to dead-letter the records that fail alone");
        // Pieces are applied without progress: the watermarks move once, below, together with
        // the marks of whatever the bisection dead-letters.
        let mut bisect = Bisect::new(good.len(), e);
        while let Some(range) = bisect.next_range() {
            let tries = if range.len() == 1 {
                cfg.max_attempts
            } else {
                1
            };
            if let Err(e) = apply_with_retries(cfg, pool, &good[range.clone()], None, tries).await {
                bisect.failed(range, e);
            }
        }
        for (at, e) in bisect.poison() {
            let error = e.to_string();
            dead_letter(cfg, dlq, good[at], &error, cfg.max_attempts).await?;
            letters.push(mark(std::slice::from_ref(good[at]), 0, error));
        }
        apply_with_retries(
            cfg,
            pool,
            &[],
            Some((&progress, &letters)),
            cfg.max_attempts,
        )
        .await?;
    }
    telemetry::batch_applied(Projector::Group(&cfg.group), started.elapsed());
    Ok(())
}

/// The outstanding mark of `batch[at]`, dead-lettered with `error`. Its LSN bounds the commit
/// of its transaction from below: the change's own LSN, or for a record that says none (it could
/// not be decoded) the highest LSN before it in its partition, which the relay shipped earlier
/// and so committed earlier (`None`: the partition's watermark before the batch is used).
fn mark(batch: &[Item], at: usize, error: String) -> DeadLetterMark {
    let item = &batch[at];
    let (topic, partition) = (item.msg.topic(), item.msg.partition());
    let lsn = item.lsn().filter(|l| *l > 0).or_else(|| {
        batch[..at]
            .iter()
            .filter(|i| i.msg.topic() == topic && i.msg.partition() == partition)
            .filter_map(Item::lsn)
            .max()
    });
    DeadLetterMark {
        topic: topic.to_owned(),
        partition,
        offset: item.msg.offset(),
        lsn: lsn.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        error,
    }
}

/// How far the batch moves each partition: every record, applied or dead-lettered.
fn progress_of(batch: &[Item]) -> Vec<PartitionProgress> {
    let mut progress: BTreeMap<(String, i32), PartitionProgress> = BTreeMap::new();
    for i in batch {
        let key = (i.msg.topic().to_owned(), i.msg.partition());
        let p = progress.entry(key).or_insert_with(|| PartitionProgress {
            topic: i.msg.topic().to_owned(),
            partition: i.msg.partition(),
            applied_lsn: 0,
            next_offset: 0,
            commit_ts_ms: None,
        });
        p.next_offset = p.next_offset.max(i.msg.offset() + 1);
        if let Some(lsn) = i.lsn() {
            p.applied_lsn = p.applied_lsn.max(i64::try_from(lsn).unwrap_or(i64::MAX));
        }
        if let Some(ts) = i.commit_ts_ms() {
            p.commit_ts_ms = Some(p.commit_ts_ms.map_or(ts, |t| t.max(ts)));
        }
    }
    progress.into_values().collect()
}

/// The batch's progress and the marks of its dead letters, written with its last apply.
type Finish<'a> = (&'a [PartitionProgress], &'a [DeadLetterMark]);

/// Applies the items (and `finish`, if given) in one transaction. A failure that is not the
/// data's ([`crate::classify`]) is retried with backoff without end; a failure for the data gets
/// `tries` tries and then comes back as the error.
async fn apply_with_retries(
    cfg: &GroupConfig,
    pool: &Pool,
    items: &[&Item],
    finish: Option<Finish<'_>>,
    tries: u32,
) -> Result<(), StoreError> {
    let mut attempt = 0u32;
    let mut backoff = Duration::from_millis(50);
    loop {
        match apply_once(cfg, pool, items, finish).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let failure = classify(&e);
                if failure != Failure::Unavailable && failure != Failure::Conflict {
                    telemetry::update_failed(Projector::Group(&cfg.group));
                }
                match failure {
                    Failure::Poison => {
                        attempt += 1;
                        if attempt >= tries {
                            return Err(e);
                        }
                    }
                    Failure::Unavailable => {
                        tracing::warn!(group = %cfg.group, error = %e, "projector waiting for the database")
                    }
                    Failure::Conflict | Failure::Unknown => {
                        tracing::warn!(group = %cfg.group, error = %e, ?failure,
                            "projector batch failed, not for its data; retrying")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn apply_once(
    cfg: &GroupConfig,
    pool: &Pool,
    items: &[&Item],
    finish: Option<Finish<'_>>,
) -> Result<(), StoreError> {
    let changes: Vec<RowChange> = items.iter().filter_map(|i| i.change().cloned()).collect();
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let applied = project::apply_changes(&tx, &changes, cfg.read_models, &cfg.projection).await?;
    if let Some((progress, letters)) = finish {
        // Marks first: a record without an LSN takes the watermark from before this batch.
        record_dead_letters(&tx, &cfg.group, letters).await?;
        advance_watermarks(&tx, &cfg.group, progress).await?;
    }
    tx.commit().await?;
    applied.retire_cached(cfg.cache.as_ref()).await;
    let stats = applied.stats;
    let now = now_ms();
    let view = if cfg.read_models.conversations {
        LagView::Conversation
    } else {
        LagView::Contact
    };
    for i in items {
        if let Some(ts) = i.commit_ts_ms() {
            telemetry::sync_lag(view, LagMode::Cdc, (now - ts).max(0) as f64 / 1000.0);
        }
    }
    telemetry::rows_computed(Projector::Group(&cfg.group), stats.rows);
    Ok(())
}

async fn dead_letter(
    cfg: &GroupConfig,
    dlq: &FutureProducer,
    item: &Item,
    error: &str,
    attempts: u32,
) -> Result<(), ProjectorError> {
    let m = &item.msg;
    tracing::error!(group = %cfg.group, topic = m.topic(), partition = m.partition(),
        offset = m.offset(), error, "dead-lettering a record");
    telemetry::dead_lettered(Projector::Group(&cfg.group));
    crate::dlq::publish(dlq, &cfg.dlq_topic, &cfg.group, m, error, attempts).await
}

/// Commits the offsets after `batch` without waiting; returns them.
fn commit_offsets<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    batch: &[Item],
) -> Result<TopicPartitionList, ProjectorError> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for i in batch {
        let e = next
            .entry((i.msg.topic().to_owned(), i.msg.partition()))
            .or_insert(0);
        *e = (*e).max(i.msg.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        // The effect is committed; a lost offset commit only means a harmless replay.
        tracing::warn!(error = %e, "offset commit failed");
    }
    Ok(tpl)
}
