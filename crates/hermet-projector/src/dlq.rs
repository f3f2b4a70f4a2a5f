//! Dead letters: list them, and put them back through the projection once the cause is fixed.
//!
//! Kafka projectors dead-letter to a topic ([`publish`]: headers say which group, topic,
//! partition, offset, error and attempt count); the outbox worker sets rows aside in
//! `hermet_outbox_dead` (`hermet_store::dead_letters`, which also keeps the marks below).
//! Replaying is safe at any time: the projection recomputes rows from current state, so an old
//! event can only confirm what is there or fill in what is missing.
//!
//! Until a dead letter is replayed, reads asking for their own writes answer stale for every
//! write at or past it (`hermet_store::sync::covers`): the projector recorded it as outstanding
//! (`hermet_projector_dead_letters`, by group, source topic, partition and offset) when it moved
//! past it, and [`replay`] forgets it in the transaction that applies it. Set-aside outbox rows
//! count the same way until [`replay_outbox`] puts them back and the worker applies them.

use std::time::Duration;

use deadpool_postgres::Pool;
use hermet_core::cache::ListCache;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use hermet_kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use hermet_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use hermet_kafka::rdkafka::{Offset, TopicPartitionList};
use hermet_store::{dead_letters, project};

use crate::debezium::{self, Decoded};
use crate::telemetry::Projector;
use crate::visibility::{self, Gate};
use crate::ProjectorError;

/// How long a replay waits for a dead letter's transaction to become visible.
const REPLAY_VISIBILITY_WAIT: Duration = Duration::from_secs(5);

/// Group used by `dlq replay`, so each dead letter is replayed once.
pub const REPLAY_GROUP: &str = "hermet-dlq-replayer";

/// Headers of a dead letter: the group that gave up on the record, where the record came from,
/// why and after how many attempts. Written by [`publish`], read by [`list`] and [`replay`].
const GROUP: &str = "hermet-dlq-group";
const TOPIC: &str = "hermet-dlq-topic";
const PARTITION: &str = "hermet-dlq-partition";
const OFFSET: &str = "hermet-dlq-offset";
const ERROR: &str = "hermet-dlq-error";
const ATTEMPTS: &str = "hermet-dlq-attempts";

/// Sends record `m`, which consumer group `group` could not apply, to the dead-letter topic
/// with its key, value and the headers that say where it came from.
pub(crate) async fn publish(
    producer: &FutureProducer,
    dlq_topic: &str,
    group: &str,
    m: &OwnedMessage,
    error: &str,
    attempts: u32,
) -> Result<(), ProjectorError> {
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let attempts = attempts.to_string();
    let headers = [
        (ERROR, error),
        (ATTEMPTS, &attempts),
        (GROUP, group),
        (TOPIC, m.topic()),
        (PARTITION, &partition),
        (OFFSET, &offset),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    if let Some(v) = m.payload() {
        rec = rec.payload(v);
    }
    producer
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| ProjectorError::Rd(e))?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub dlq_offset: i64,
    pub dlq_partition: i32,
    pub group: String,
    pub topic: String,
    pub partition: String,
    pub offset: String,
    pub error: String,
    pub attempts: String,
}

fn header(m: &OwnedMessage, key: &str) -> String {
    m.headers()
        .and_then(|h| h.iter().find(|x| x.key == key).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn letter(m: &OwnedMessage) -> DeadLetter {
    DeadLetter {
        dlq_offset: m.offset(),
        dlq_partition: m.partition(),
        group: header(m, GROUP),
        topic: header(m, TOPIC),
        partition: header(m, PARTITION),
        offset: header(m, OFFSET),
        error: header(m, ERROR),
        attempts: header(m, ATTEMPTS),
    }
}

/// Reads the dead-letter topic from `group`'s position (or the beginning) up to its end.
fn read_all(
    brokers: &str,
    topic: &str,
    group: &str,
    from_beginning: bool,
) -> Result<(BaseConsumer, Vec<OwnedMessage>), ProjectorError> {
    let consumer: BaseConsumer = hermet_kafka::client_config(brokers, group)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in &parts {
        let (_, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        ends.push((*p, high));
        let start = if from_beginning {
            Offset::Beginning
        } else {
            Offset::Stored
        };
        tpl.add_partition_offset(topic, *p, start)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let position = consumer.position()?;
        let done = ends.iter().all(|(p, high)| {
            match position.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o >= *high,
                _ => *high == 0,
            }
        });
        if done || std::time::Instant::now() > deadline {
            break;
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m?.detach());
        }
    }
    Ok((consumer, out))
}

/// Every dead letter in the topic.
pub fn list(brokers: &str, topic: &str) -> Result<Vec<DeadLetter>, ProjectorError> {
    let group = format!("hermet-dlq-list-{}", crate::now_ms());
    let (_, msgs) = read_all(brokers, topic, &group, true)?;
    Ok(msgs.iter().map(letter).collect())
}

/// The read models a group maintains; groups may carry a `projector.group_prefix`.
fn read_models_of(group: &str) -> ReadModels {
    crate::consumer::group_read_models(group).unwrap_or(ReadModels::ALL)
}

/// Applies every dead letter not replayed yet; stops at the first one that still fails (it
/// stays for the next replay). Returns how many were applied.
pub async fn replay(
    brokers: &str,
    topic: &str,
    pool: &Pool,
    projection: &ProjectionConfig,
    cache: &dyn ListCache,
) -> Result<usize, ProjectorError> {
    let (consumer, msgs) = {
        let (b, t) = (brokers.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || read_all(&b, &t, REPLAY_GROUP, false))
            .await
            .map_err(|e| ProjectorError::Other(e.to_string()))??
    };
    let mut applied = 0;
    for m in &msgs {
        let group = header(m, GROUP);
        let change = match debezium::decode(m.payload()) {
            Ok(Decoded::Change { change, xid, .. }) => {
                // Dead letters include records whose transaction was not visible yet: applying
                // one before it is would look up the state before the change.
                let xids = xid.into_iter().collect();
                if let Gate::TimedOut { running } = visibility::wait_visible(
                    pool,
                    Projector::DlqReplay,
                    &xids,
                    REPLAY_VISIBILITY_WAIT,
                )
                .await?
                {
                    return Err(ProjectorError::Other(format!(
                        "dead letter at offset {}: transaction(s) {running:?} still not visible to new snapshots; replay later",
                        m.offset()
                    )));
                }
                Some(change)
            }
            Ok(Decoded::Skip) => None,
            Err(e) => {
                return Err(ProjectorError::Other(format!(
                    "dead letter at offset {} is still undecodable: {e}",
                    m.offset()
                )))
            }
        };
        let mut conn = pool.get().await?;
        let tx = conn.transaction().await?;
        let done = match change {
            Some(change) => {
                project::apply_changes(&tx, &[change], read_models_of(&group), projection).await?
            }
            None => project::Applied::default(),
        };
        // In the same transaction: reads wait for this record until it is applied, not longer.
        forget(&tx, m).await?;
        tx.commit().await?;
        done.retire_cached(cache).await;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, m.partition(), Offset::Offset(m.offset() + 1))?;
        consumer.commit(&tpl, CommitMode::Sync)?;
        applied += 1;
    }
    Ok(applied)
}

/// Forgets the outstanding mark of dead letter `m` (its headers name the group and the source
/// record). A letter whose headers do not parse was never marked by hermet: nothing to forget.
async fn forget(
    tx: &deadpool_postgres::Transaction<'_>,
    m: &OwnedMessage,
) -> Result<(), ProjectorError> {
    let group = header(m, GROUP);
    let topic = header(m, TOPIC);
    let source = (
        header(m, PARTITION).parse::<i32>(),
        header(m, OFFSET).parse::<i64>(),
    );
    match source {
        (Ok(partition), Ok(offset)) => {
            dead_letters::clear_dead_letter(tx, &group, &topic, partition, offset).await?;
        }
        _ => tracing::warn!(
            dlq_offset = m.offset(),
            group,
            topic,
            "dead letter without a source partition and offset: no outstanding mark to clear"
        ),
    }
    Ok(())
}

/// Puts outbox rows that were set aside back into the outbox; returns how many.
pub async fn replay_outbox(pool: &Pool) -> Result<u64, ProjectorError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let n = dead_letters::unbury_outbox(&tx).await?;
    tx.commit().await?;
    Ok(n)
}
