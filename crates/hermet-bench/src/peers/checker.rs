//! The correctness checker both peers' records go through.

#[allow(unused_imports)]
use super::*;

/// A data record read back from a peer's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub table: String,
    /// The record's key as JSON text (`{"id":5}`), the same on both peers.
    pub key: String,
    /// `source.lsn` (kept for diagnostics; see [`check_drain`] for why it is not an identity).
    pub lsn: i64,
    /// The row's version: `after.profile_ver` for `users`, `after.last_seq` for `channels`, else
    /// 0 (the other tables get one insert per key in this benchmark). Every change of a key in
    /// this benchmark moves its version up, so (table, key, version) names one change.
    pub version: i64,
    /// `source.ts_ms`: PostgreSQL's commit time.
    pub commit_ms: i64,
    /// The record's Kafka timestamp (the broker's append time on the benchmark's topics).
    pub kafka_ms: i64,
}

/// The changes a live load committed: per (table, key), the contiguous versions `first..=last`
/// (a message: `0..=0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    pub keys: HashMap<(String, String), (i64, i64)>,
}

impl Expectation {
    pub fn total(&self) -> u64 {
        self.keys
            .values()
            .map(|(a, b)| (b - a + 1).max(0) as u64)
            .sum()
    }
}

/// Checks `events` (in the order read: per partition, so per key, as Kafka keeps them) against
/// what was committed. Events outside the expectation (other loads' changes) are ignored.
/// Returns the check and the latency (ms) of each expected change's first record.
pub fn check_live(expect: &Expectation, events: &[Event]) -> (Check, Vec<i64>) {
    let mut seen: HashMap<(&str, &str), (HashSet<i64>, i64)> = HashMap::new();
    let mut check = Check {
        expected: expect.total(),
        ..Check::default()
    };
    let mut latencies = Vec::new();
    for e in events {
        let Some(&(first, last)) = expect.keys.get(&(e.table.clone(), e.key.clone())) else {
            continue;
        };
        if e.version < first || e.version > last {
            continue;
        }
        let (versions, newest) = seen
            .entry((e.table.as_str(), e.key.as_str()))
            .or_insert_with(|| (HashSet::new(), i64::MIN));
        if !versions.insert(e.version) {
            check.duplicates += 1;
            continue;
        }
        if e.version < *newest {
            check.out_of_order += 1;
        }
        *newest = (*newest).max(e.version);
        latencies.push(e.kafka_ms - e.commit_ms);
    }
    check.found = seen.values().map(|(v, _)| v.len() as u64).sum();
    check.missing = check.expected.saturating_sub(check.found);
    (check, latencies)
}

/// The backlog check: `expected` row changes, no duplicate (table, key, version), versions
/// increasing per key. Returns the check and an order-independent digest of the distinct
/// (table, key, version).
///
/// Not by `source.lsn`: Debezium 3.6 catching up on a backlog stamped every record with one and
/// the same `lsn` here (25,080 records, one value), so that field does not name a change.
pub fn check_drain(expected: u64, events: &[Event]) -> (Check, u64) {
    use std::hash::{Hash, Hasher};
    let mut seen: HashSet<(&str, &str, i64)> = HashSet::with_capacity(events.len());
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    let mut check = Check {
        expected,
        ..Check::default()
    };
    let mut digest = 0u64;
    for e in events {
        if !seen.insert((&e.table, &e.key, e.version)) {
            check.duplicates += 1;
            continue;
        }
        let n = newest
            .entry((e.table.as_str(), e.key.as_str()))
            .or_insert(i64::MIN);
        if e.version < *n {
            check.out_of_order += 1;
        }
        *n = (*n).max(e.version);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&e.table, &e.key, e.version).hash(&mut h);
        digest = digest.wrapping_add(h.finish());
    }
    check.found = (seen.len() as u64).min(expected);
    check.missing = expected.saturating_sub(seen.len() as u64);
    (check, digest)
}

pub(crate) fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}
