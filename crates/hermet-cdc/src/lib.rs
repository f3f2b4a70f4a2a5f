//! hermet-cdc: hermet's CDC relay (design §4, "CDC relay"). The decoding and event building are
//! pure; [`relay`] does the I/O: replication connection, Kafka producer, LSN bookkeeping.
//!
//! - [`pgoutput`]: a decoder (and a test encoder) for the messages of PostgreSQL's `pgoutput`
//!   logical replication plugin, protocol version 1, plus a [`pgoutput::RelationCache`] that
//!   resolves the relation ids the row messages refer to;
//! - [`envelope`]: Debezium-compatible change events built from decoded rows (Kafka key and value
//!   JSON, transaction boundary events) and the topic router.
//!
//! The data path of the relay is: replication stream → [`pgoutput::decode_bytes`] →
//! [`pgoutput::RelationCache`] → [`envelope::change_records`] → [`envelope::TopicRouter`] → Kafka.

pub mod envelope;
pub mod pgoutput;
pub mod relay;
pub mod telemetry;

pub use hermet_core::Lsn;
