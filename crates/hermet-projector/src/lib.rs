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
//!   (live only, at most once: it is the exception to the contract below);
//! - [`telemetry`]: the metrics all of these record.
//!
//! Contract shared by all: at-least-once delivery into an idempotent, order-independent
//! projection. Progress (offset, outbox row) moves only after the effect committed, so a crash
//! anywhere replays a little and loses nothing. A failed apply is classified by SQLSTATE
//! ([`classify`]): only a failure for the data itself may set a record aside, after
//! `max_attempts` tries and a bisection of its batch ([`Bisect`]); anything else is retried
//! until it passes. A record set aside stays outstanding for read-your-writes until it is
//! replayed (`hermet_store::sync::covers`).

pub mod consumer;
pub mod debezium;
pub mod dlq;
pub mod outbox;
pub mod push;
pub mod replay;
pub mod telemetry;
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

/// What a failed apply says about the records it was applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot be reached or refuses connections (SQLSTATE classes 08, 57P, a
    /// closed connection, an exhausted pool).
    Unavailable,
    /// The transaction lost a race (deadlock, serialization failure); running it again works.
    Conflict,
    /// Anything the data cannot be blamed for with certainty: resources (class 53), a
    /// cancelled statement, a lock timeout, an error of ours (class 42), a server error
    /// (class XX), an error without a SQLSTATE. Retried, never dead-lettered: setting aside a
    /// change that is fine would leave its rows wrong until someone replays it.
    Unknown,
    /// The records themselves cannot be applied, and will fail the same way every time: a data
    /// exception (class 22), an integrity constraint violation (class 23), an exception raised
    /// by a trigger (`P0001`), a row the projection cannot decode.
    Poison,
}

/// Classifies a store error by its SQLSTATE (see [`Failure`]). Only [`Failure::Poison`] may
/// dead-letter a record; everything else is retried with backoff for as long as it takes.
pub fn classify(e: &hermet_store::StoreError) -> Failure {
    use hermet_store::StoreError as E;
    match e {
        E::Unavailable(_) => Failure::Unavailable,
        E::Retry(_) => Failure::Conflict,
        E::Decode(_) | E::Invalid(_) => Failure::Poison,
        E::Db(db) => classify_sqlstate(db.code().map(|c| c.code())),
        E::NotFound { .. }
        | E::Forbidden { .. }
        | E::Conflict { .. }
        | E::Config(_)
        | E::Migration { .. } => Failure::Unknown,
    }
}

/// Classifies a database error by its SQLSTATE (`None`: the error has none, as a protocol or
/// client-side error). Only the data's own faults are [`Failure::Poison`]: class 22 (data
/// exception), class 23 (integrity constraint violation), `P0001` (`RAISE EXCEPTION` in a
/// trigger or function).
pub fn classify_sqlstate(code: Option<&str>) -> Failure {
    match code {
        Some(c) if c.starts_with("22") || c.starts_with("23") || c == "P0001" => Failure::Poison,
        Some(c) if c.starts_with("08") || c.starts_with("57P") => Failure::Unavailable,
        Some("40001" | "40P01") => Failure::Conflict,
        _ => Failure::Unknown,
    }
}

/// Whether a failed apply should be retried rather than counted against the records: every
/// failure but [`Failure::Poison`].
pub fn is_transient(e: &hermet_store::StoreError) -> bool {
    classify(e) != Failure::Poison
}

/// Finds the records of a failing batch that fail on their own, by bisection, so a poison record
/// costs O(log n) failed applies instead of one per record of the batch.
///
/// The batch `0..n` is known to fail (with the error given to [`Bisect::new`]). The caller asks
/// for the next range to try ([`Bisect::next_range`], left to right, so records are applied in batch
/// order), applies it, and reports a failure with [`Bisect::failed`]: a failing range of more
/// than one record is split in two, a failing single record is poison. A range that applies
/// needs no report. With one poison record among n, that is at most 2·log2(n) applies, of which
/// log2(n) fail. Transient failures are the caller's: it retries or gives up the whole batch.
#[derive(Debug)]
pub struct Bisect {
    /// Ranges still to try, the next one last.
    todo: Vec<std::ops::Range<usize>>,
    poison: Vec<(usize, hermet_store::StoreError)>,
}

impl Bisect {
    /// Bisects a batch of `n` records that failed as a whole with `whole`.
    pub fn new(n: usize, whole: hermet_store::StoreError) -> Bisect {
        let mut b = Bisect {
            todo: Vec::new(),
            poison: Vec::new(),
        };
        b.failed(0..n, whole);
        b
    }

    /// The next range to apply, if any is left.
    pub fn next_range(&mut self) -> Option<std::ops::Range<usize>> {
        self.todo.pop()
    }

    /// `range` (from [`Bisect::next_range`], or the whole batch) failed with `e`.
    pub fn failed(&mut self, range: std::ops::Range<usize>, e: hermet_store::StoreError) {
        match range.len() {
            0 => {}
            1 => self.poison.push((range.start, e)),
            len => {
                let mid = range.start + len / 2;
                self.todo.push(mid..range.end);
                self.todo.push(range.start..mid);
            }
        }
    }

    /// The records that failed alone, with their errors, in batch order.
    pub fn poison(mut self) -> Vec<(usize, hermet_store::StoreError)> {
        self.poison.sort_by_key(|(i, _)| *i);
        self.poison
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_store::StoreError;

    #[test]
    fn only_the_datas_own_faults_are_poison() {
        for code in [
            "22012", "22P02", "22001", "23505", "23503", "23514", "P0001",
        ] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Poison, "{code}");
        }
        for code in ["08006", "08001", "57P01", "57P03"] {
            assert_eq!(
                classify_sqlstate(Some(code)),
                Failure::Unavailable,
                "{code}"
            );
        }
        for code in ["40001", "40P01"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Conflict, "{code}");
        }
        // Resources, a cancelled statement, a lock timeout, our own SQL, the server's
        // internals, other PL/pgSQL conditions, and no SQLSTATE at all: not the data's fault.
        for code in [
            Some("53100"),
            Some("53300"),
            Some("57014"),
            Some("55P03"),
            Some("42P01"),
            Some("42703"),
            Some("XX000"),
            Some("P0002"),
            Some("40003"),
            None,
        ] {
            assert_eq!(classify_sqlstate(code), Failure::Unknown, "{code:?}");
        }
    }

    #[test]
    fn unknown_errors_are_retried_and_decode_errors_are_poison() {
        assert!(is_transient(&StoreError::Unavailable("pool".into())));
        assert!(is_transient(&StoreError::Config("x".into())));
        assert!(!is_transient(&StoreError::Decode("column 3".into())));
    }

    fn poison_among(n: usize, poison: &[usize]) -> (Vec<usize>, usize, usize) {
        let mut b = Bisect::new(n, StoreError::Decode("whole".into()));
        let (mut tries, mut failures) = (0, 0);
        while let Some(r) = b.next_range() {
            tries += 1;
            if poison.iter().any(|p| r.contains(p)) {
                failures += 1;
                b.failed(r, StoreError::Decode("piece".into()));
            }
        }
        let found = b.poison().into_iter().map(|(i, _)| i).collect();
        (found, tries, failures)
    }

    #[test]
    fn bisection_finds_each_poison_record_in_logarithmic_tries() {
        let (found, tries, failures) = poison_among(64, &[40]);
        assert_eq!(found, vec![40]);
        assert!(
            failures <= 6,
            "{failures} failed applies for one poison in 64"
        );
        assert!(tries <= 12, "{tries} applies for one poison in 64");
        let (found, _, _) = poison_among(5000, &[0, 17, 4999]);
        assert_eq!(found, vec![0, 17, 4999]);
        let (found, tries, _) = poison_among(1, &[0]);
        assert_eq!(
            (found, tries),
            (vec![0], 0),
            "a single record that failed is poison"
        );
        let (found, _, _) = poison_among(7, &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(found, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn bisection_applies_ranges_in_batch_order() {
        let mut b = Bisect::new(8, StoreError::Decode("whole".into()));
        let mut seen = Vec::new();
        while let Some(r) = b.next_range() {
            if r.contains(&5) {
                b.failed(r.clone(), StoreError::Decode("piece".into()));
            } else {
                seen.push(r);
            }
        }
        assert_eq!(seen, vec![0..4, 4..5, 6..8]);
    }
}
