//! hermet-core: the domain of hermet with no I/O.
//!
//! - [`rows`]: the write-side rows (`users`, `channels`, `channel_members`, `friendships`,
//!   `messages`) as typed values;
//! - [`change`]: a write-side change described as a row change, the common language of all three
//!   sync modes (dual-write builds them from `RETURNING`, the outbox stores them, CDC decodes them
//!   from Debezium envelopes);
//! - [`projection`]: which view rows a batch of changes affects, and how a view row is built from
//!   the current write-side state;
//! - [`views`]: the read-side rows and the operations a view store applies;
//! - [`validate`]: input parsed into types that cannot hold invalid values;
//! - [`lsn`]: PostgreSQL log sequence numbers;
//! - [`push`]: the events of WebSocket push, who receives them, and the port they go through.
//! - [`cache`]: the conversation-list cache port and its race-free read-through rule;
//! - [`telemetry`]: how every crate declares its metrics (one list per crate, typed labels).
//!
//! The convergence contract (docs/design.md §2) is kept by construction: every view row is recomputed from
//! current write-side state, and every group of view columns carries the write-side version it was
//! computed from, so a store that keeps the newer group on conflict is idempotent and
//! order-independent.

pub mod cache;
pub mod change;
pub mod lsn;
pub mod projection;
pub mod push;
pub mod rows;
pub mod telemetry;
pub mod validate;
pub mod views;

pub use lsn::Lsn;
