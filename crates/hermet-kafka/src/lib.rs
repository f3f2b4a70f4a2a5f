//! Kafka adapters shared by the CDC relay and the projectors.
//!
//! - [`producer`]: an idempotent producer (`enable.idempotence=true`, `acks=all`): a record
//!   acknowledged by the broker is durable on every in-sync replica, retries never duplicate or
//!   reorder records within a partition, so per-key order holds.
//! - [`ensure_topics`]: creates missing topics with a partition count. The partition count bounds
//!   consumer parallelism: a consumer group uses at most one member per partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

pub use rdkafka;

/// Header of a watermark marker: a record with neither key nor value (consumers written for
/// Debezium skip it like a tombstone) whose header says "every event of this partition up to
/// this LSN came before me". The relay (`hermet_cdc::relay`) writes it; projectors use it to
/// know that a quiet partition is caught up.
pub const WATERMARK_HEADER: &str = "hermet-watermark";

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[from] RdError),
    #[error("creating topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Base client settings for the brokers.
pub fn client_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id);
    c
}

/// An idempotent, `acks=all` producer tuned for throughput with a short linger.
///
/// The local queue (records not yet acknowledged) is bounded to 8 MiB of keys and values: a
/// full queue makes `send` wait (the relay retries on `QueueFull`) instead of growing the
/// process. Without the bound the relay's peak RSS followed how far Kafka lagged behind it
/// (33–115 MiB draining a backlog); with it, 28–45 MiB at the same throughput (BENCHMARKS.md).
pub fn producer(brokers: &str, client_id: &str) -> Result<FutureProducer, KafkaError> {
    Ok(producer_config(brokers, client_id).create()?)
}

/// The settings of [`producer`], for a producer with a context of its own (the relay's, which
/// counts acknowledgements instead of resolving a future per record).
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = client_config(brokers, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "8192")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "0");
    c
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers, "hermet-admin").create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Topic { topic, code }),
        }
    }
    Ok(())
}

/// Owns a librdkafka client whose drop may block: closing a consumer leaves its group, and with
/// the brokers away librdkafka waits for them. Dropping this hands the client's drop to a thread
/// of its own, so it never stalls an async runtime's worker (with every worker stuck there, a
/// process stops answering, even to SIGTERM) and never holds up the process's exit.
pub struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffRuntime<T> {
    pub fn new(client: T) -> Self {
        DropOffRuntime(Some(client))
    }
}

impl<T: Send + 'static> std::ops::Deref for DropOffRuntime<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.0 {
            Some(c) => c,
            // Only `drop` takes the client out.
            None => unreachable!("client used after drop"),
        }
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // If no thread can be started, the closure (and the client) is dropped right here.
            let _ = std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(client));
        }
    }
}
