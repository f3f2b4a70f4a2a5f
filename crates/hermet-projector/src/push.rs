//! The push notifier (`push-notifier`): reads the change topics and tells the users connected to
//! THIS process what concerns them, through a [`PushSink`] (the API's connection hub).
//!
//! Consumer scheme — every API process runs its own notifier, and each must see every change,
//! because the users it serves may be anywhere in the data:
//! - **its own group id** per process, `push-notifier-<host>-<pid>-<nonce>` ([`process_group_id`]),
//!   so no two processes ever share (split) partitions;
//! - **every partition, assigned manually** rather than by a group rebalance: a group of one would
//!   get all partitions anyway, and manual assignment lets the notifier place each partition at
//!   its end at a known moment ([`PushNotifier::start`]): anything written after `start` returns
//!   is delivered. Partitions that appear later (the relay creating its topics, more partitions)
//!   are picked up every [`PushConfig::refresh`] from the records written since the notifier
//!   started;
//! - **live only, no offset commits**: a (re)started notifier begins at the end. Push is a hint
//!   with at-most-once delivery; a client that missed events (disconnected, dropped as too slow,
//!   notifier restarted) re-reads its lists, which the projectors keep converged.
//!
//! Per batch (up to `batch_max` records or `batch_wait`): decode the envelopes (watermark markers
//! and tombstones carry nothing), [`plan`] who is concerned, ask the sink who is connected here
//! before looking anything up, wait (at most [`PushConfig::visibility_wait`]) until the batch's
//! transactions are visible ([`crate::visibility`]: otherwise a member added by the very
//! transaction being told about is not found yet), then resolve channel members and profile watchers with one query per
//! kind ([`hermet_store::audience`]), and publish each event once per user ([`notify`]). A failed
//! look-up loses that batch's pushes (logged and counted), never the notifier.
//!
//! Channel members are resolved as an **intersection** with the users connected here
//! ([`PushSink::connected_users`], [`audience::connected_members`]), never by listing a channel's
//! members: a message into a 100,000-member group (read diffusion) costs this process one probe
//! per connected user, and nothing when nobody is connected (the statement is skipped).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use hermet_core::change::RowChange;
use hermet_core::push::{plan, PushEvent, PushSink};
use hermet_core::rows::{ChannelId, UserId};
use hermet_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use hermet_kafka::rdkafka::message::{BorrowedMessage, Headers, Message};
use hermet_kafka::rdkafka::{Offset, TopicPartitionList};
use hermet_kafka::{DropOffRuntime, WATERMARK_HEADER};
use hermet_store::{audience, StoreError};

use crate::debezium::{self, Decoded};
use crate::telemetry::{self, Projector};
use crate::visibility;
use crate::{now_ms, ProjectorError};

/// Settings of a notifier.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub brokers: String,
    /// This process's own group id (see the module docs).
    pub group: String,
    /// The data topics of the five write-side tables.
    pub topics: Vec<String>,
    pub batch_max: usize,
    pub batch_wait: Duration,
    /// How often the topics are looked up again for partitions not yet assigned.
    pub refresh: Duration,
    /// Longest a batch waits for its transactions to become visible before its look-ups run
    /// anyway (push is at most once; a late look-up only risks missing a new member).
    pub visibility_wait: Duration,
}

impl PushConfig {
    /// Defaults: a fresh [`process_group_id`], batches of up to 500 records or 5 ms, topics
    /// looked up again every 10 s, look-ups wait up to 2 s for their transactions.
    pub fn new(brokers: impl Into<String>, topics: Vec<String>) -> Self {
        PushConfig {
            brokers: brokers.into(),
            group: process_group_id(),
            topics,
            batch_max: 500,
            batch_wait: Duration::from_millis(5),
            refresh: Duration::from_secs(10),
            visibility_wait: Duration::from_secs(2),
        }
    }
}

/// `push-notifier-<host>-<pid>-<nonce>`: unique per process (and per call, so two notifiers in
/// one process, as in tests, do not collide either).
pub fn process_group_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "push-notifier-{host}-{}-{:08x}{seq}",
        std::process::id(),
        nanos
    )
}

/// What one poll gathered.
#[derive(Default)]
struct Batch {
    changes: Vec<RowChange>,
    /// The oldest commit time among the changes.
    oldest_ts: Option<i64>,
    /// The transactions of the changes.
    xids: BTreeSet<u32>,
}

/// A push notifier: [`new`](Self::new), [`start`](Self::start), then [`run`](Self::run) (or all
/// three with [`run_push`]).
pub struct PushNotifier {
    cfg: PushConfig,
    pool: Pool,
    sink: Arc<dyn PushSink>,
    consumer: Arc<DropOffRuntime<StreamConsumer>>,
    assigned: BTreeSet<(String, i32)>,
    /// When `start` ran: partitions found later begin at their first record from then on.
    started_ms: i64,
}

impl PushNotifier {
    pub fn new(
        cfg: PushConfig,
        pool: Pool,
        sink: Arc<dyn PushSink>,
    ) -> Result<Self, ProjectorError> {
        let consumer: StreamConsumer = hermet_kafka::client_config(&cfg.brokers, &cfg.group)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .create()?;
        Ok(PushNotifier {
            cfg,
            pool,
            sink,
            consumer: Arc::new(DropOffRuntime::new(consumer)),
            assigned: BTreeSet::new(),
            started_ms: now_ms(),
        })
    }

    /// Assigns every partition that exists now at its current end. Once this returns, every
    /// record later written to these partitions reaches the sink (if its users are connected).
    pub async fn start(&mut self) -> Result<(), ProjectorError> {
        self.started_ms = now_ms();
        self.assign_new(true).await
    }

    /// Partitions assigned so far.
    pub fn assigned_partitions(&self) -> usize {
        self.assigned.len()
    }

    /// Consumes and publishes until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectorError> {
        tracing::info!(group = %self.cfg.group, topics = ?self.cfg.topics,
            partitions = self.assigned.len(), "push notifier started");
        tokio::pin!(shutdown);
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + self.cfg.refresh,
            self.cfg.refresh,
        );
        let consumer = self.consumer.clone();
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                _ = refresh.tick() => {
                    if let Err(e) = self.assign_new(false).await {
                        tracing::warn!(error = %e, "push notifier cannot look up its topics");
                    }
                    continue;
                }
                m = consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m,
                // librdkafka retries on its own; a consumer error here is worth a note, not a
                // restart (which would skip to the end).
                Err(e) => {
                    tracing::warn!(error = %e, "push notifier consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut batch = Batch::default();
            self.take(&first, &mut batch);
            drop(first);
            let deadline = tokio::time::Instant::now() + self.cfg.batch_wait;
            for _ in 1..self.cfg.batch_max {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => self.take(&m, &mut batch),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "push notifier consume error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let Batch {
                changes,
                oldest_ts,
                xids,
            } = batch;
            if changes.is_empty() {
                continue;
            }
            let gate = tokio::select! {
                _ = &mut shutdown => break,
                g = visibility::wait_visible(&self.pool, Projector::PushNotifier, &xids,
                    self.cfg.visibility_wait) => g,
            };
            // Timed out: look up anyway (at most once). An error: the look-ups below say it.
            if let Err(e) = gate {
                tracing::debug!(error = %e, "push notifier cannot check visibility");
            }
            match notify(&self.pool, &*self.sink, &changes).await {
                Ok(sent) => {
                    let lag = oldest_ts.map(|ts| (now_ms() - ts).max(0) as f64 / 1000.0);
                    telemetry::pushed(sent, lag);
                }
                Err(e) => {
                    telemetry::push_failed();
                    tracing::warn!(error = %e, changes = changes.len(),
                        "push notifier lost a batch of pushes");
                }
            }
        }
        tracing::info!(group = %self.cfg.group, "push notifier stopped");
        Ok(())
    }

    /// Adds a record's row change to the batch; markers, tombstones and records nobody could be
    /// told about (no one connected) add nothing.
    fn take(&self, m: &BorrowedMessage<'_>, batch: &mut Batch) {
        if !self.sink.any_connected() {
            return;
        }
        let marker = m
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == WATERMARK_HEADER));
        if marker {
            return;
        }
        match debezium::decode(m.payload()) {
            Ok(Decoded::Change {
                change,
                commit_ts_ms,
                xid,
                ..
            }) => {
                batch.changes.push(change);
                batch.xids.extend(xid);
                batch.oldest_ts = Some(
                    batch
                        .oldest_ts
                        .map_or(commit_ts_ms, |o: i64| o.min(commit_ts_ms)),
                );
            }
            Ok(Decoded::Skip) => {}
            // The projectors dead-letter such records; push has nothing to say about them.
            Err(e) => tracing::debug!(topic = m.topic(), partition = m.partition(),
                offset = m.offset(), error = %e, "push notifier skips an undecodable record"),
        }
    }

    /// Assigns the partitions of the topics not assigned yet: at their end on `at_end`, else
    /// from the first record written since [`start`](Self::start). Topics that do not exist yet
    /// are left for the next look-up.
    async fn assign_new(&mut self, at_end: bool) -> Result<(), ProjectorError> {
        let consumer = self.consumer.clone();
        let topics = self.cfg.topics.clone();
        let known = self.assigned.clone();
        let since = self.started_ms;
        // Metadata, watermark and time look-ups are blocking librdkafka calls.
        let tpl = tokio::task::spawn_blocking(move || {
            new_partitions(&consumer, &topics, &known, at_end, since)
        })
        .await
        .map_err(|e| ProjectorError::Other(format!("partition look-up panicked: {e}")))??;
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.incremental_assign(&tpl)?;
        for e in tpl.elements() {
            self.assigned.insert((e.topic().to_owned(), e.partition()));
        }
        tracing::info!(group = %self.cfg.group, added = tpl.count(), total = self.assigned.len(),
            "push notifier assigned partitions");
        Ok(())
    }
}

/// Publishes what `changes` mean to the users connected to `sink`; returns the events sent.
/// Channel members are found by intersecting the channels' memberships with
/// [`PushSink::connected_users`] (see the module docs); the batch's transactions must be visible
/// already (the notifier waits for them).
pub async fn notify(
    pool: &Pool,
    sink: &dyn PushSink,
    changes: &[RowChange],
) -> Result<usize, StoreError> {
    let plan = plan(changes);
    let mut sent: HashSet<(UserId, PushEvent)> = HashSet::new();
    let mut publish = |user: UserId, event: &PushEvent| {
        if sink.is_connected(user) && sent.insert((user, event.clone())) {
            sink.publish(user, event);
        }
    };
    for (user, event) in &plan.direct {
        publish(*user, event);
    }
    if plan.to_members.is_empty() && plan.profile_users.is_empty() {
        return Ok(sent.len());
    }
    // Nobody to tell: no look-up at all.
    if !sink.any_connected() {
        return Ok(sent.len());
    }
    let client = pool.get().await?;
    if !plan.to_members.is_empty() {
        let connected = sink.connected_users();
        let mut members: HashMap<ChannelId, Vec<UserId>> = HashMap::new();
        for (channel, user) in
            audience::connected_members(&client, &plan.member_channels(), &connected).await?
        {
            members.entry(channel).or_default().push(user);
        }
        for (channel, event) in &plan.to_members {
            for user in members.get(channel).into_iter().flatten() {
                publish(*user, event);
            }
        }
    }
    if !plan.profile_users.is_empty() {
        let users: Vec<UserId> = plan.profile_users.iter().copied().collect();
        let w = audience::profile_watchers(&client, &users).await?;
        for (_, owner, channel_id) in w.conversations {
            publish(owner, &PushEvent::ConversationChanged { channel_id });
        }
        for (contact_id, owner) in w.contacts {
            publish(owner, &PushEvent::ContactChanged { contact_id });
        }
    }
    Ok(sent.len())
}

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

fn new_partitions(
    consumer: &StreamConsumer,
    topics: &[String],
    known: &BTreeSet<(String, i32)>,
    at_end: bool,
    since_ms: i64,
) -> Result<TopicPartitionList, ProjectorError> {
    // A topic or partition that cannot be looked up now (not created yet, no leader yet right
    // after creation) is left for the next look-up.
    let mut found = TopicPartitionList::new();
    for topic in topics {
        let md = match consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT) {
            Ok(md) => md,
            Err(e) => {
                tracing::debug!(topic, error = %e, "push notifier: topic not available yet");
                continue;
            }
        };
        for t in md.topics() {
            if t.error().is_some() {
                continue;
            }
            for p in t.partitions() {
                if known.contains(&(t.name().to_owned(), p.id())) {
                    continue;
                }
                let start = if at_end {
                    match consumer.fetch_watermarks(t.name(), p.id(), LOOKUP_TIMEOUT) {
                        Ok((_, high)) => Offset::Offset(high),
                        Err(e) => {
                            tracing::debug!(topic = t.name(), partition = p.id(), error = %e,
                                "push notifier: partition not available yet");
                            continue;
                        }
                    }
                } else {
                    Offset::Offset(since_ms)
                };
                found.add_partition_offset(t.name(), p.id(), start)?;
            }
        }
    }
    if !at_end && found.count() > 0 {
        // Offsets given as timestamps become the first offset at or after that time (the end
        // when there is none).
        found = consumer.offsets_for_times(found, LOOKUP_TIMEOUT)?;
    }
    Ok(found)
}

/// Runs a notifier until `shutdown` resolves.
pub async fn run_push(
    cfg: PushConfig,
    pool: Pool,
    sink: Arc<dyn PushSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    let mut n = PushNotifier::new(cfg, pool, sink)?;
    n.start().await?;
    n.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_per_process_and_unique() {
        let (a, b) = (process_group_id(), process_group_id());
        assert!(a.starts_with("push-notifier-"), "{a}");
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert_ne!(a, b);
    }
}
