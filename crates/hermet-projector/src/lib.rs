//! hermet-projector: what keeps the read side converged in the eventually consistent modes.
//!
//! - [`debezium`]: Debezium envelopes (as the CDC relay writes them) back into the row changes
//!   the dual-write path produces, so every mode runs the same projection;
//! - [`consumer`]: the Kafka consumer groups (`conversation-view-updater`,
//!   `contact-view-updater`): batch, apply in one transaction with the partition watermarks,
//!   then commit offsets; retry transient failures; dead-letter what keeps failing;
//! - [`outbox`]: the `async` mode worker draining `hermet_outbox`;
//! - [`dlq`]: listing and replaying dead letters;
//! - [`replay`]: moving a consumer group back, and group lag;
//! - [`visibility`]: the gate every WAL-fed reader passes before it looks up the write side
//!   (a transaction the relay shipped may not be visible yet);
//! - [`push`]: the push notifier, one per API process, telling connected users what changed
//!   (live only, at most once: it is the exception to the contract below).
//!
//! Contract shared by all: at-least-once delivery into an idempotent, order-independent
//! projection. Progress (offset, outbox row) moves only after the effect committed, so a crash
//! anywhere replays a little and loses nothing.

pub mod consumer;
pub mod debezium;
pub mod dlq;
pub mod outbox;
pub mod push;
pub mod replay;
pub mod visibility;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] hermet_store::StoreError),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] deadpool_postgres::tokio_postgres::Error),
    #[error(transparent)]
    Kafka(#[from] hermet_kafka::KafkaError),
    #[error("kafka: {0}")]
    Rd(#[from] hermet_kafka::rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}

/// Whether an error is about reaching a dependency (retry without end) rather than about the
/// data (retry a few times, then dead-letter).
pub fn is_transient(e: &hermet_store::StoreError) -> bool {
    matches!(
        e,
        hermet_store::StoreError::Unavailable(_) | hermet_store::StoreError::Retry(_)
    )
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
