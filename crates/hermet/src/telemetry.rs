//! Metrics set-up: the Prometheus recorder with histogram buckets (so lag and latency quantiles
//! can be aggregated across processes with `histogram_quantile`), every crate's series
//! registered through its `telemetry::register` (README "Observability" lists them all), the
//! series this binary records itself, and the database pool sampler.

use std::time::Duration;

use anyhow::Context;
use hermet_core::telemetry::{self, Metric, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: 1 ms to 60 s, dense where the targets are (p99 ≤ 5 ms reads, ≤ 100 ms lag).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const CONSISTENCY_RATE: Metric = Metric::gauge(
    "hermet_consistency_rate",
    "Share of audited view rows equal to a rebuild from the write side (1 = all).",
);
const AUDIT_FINDINGS: Metric = Metric::counter(
    "hermet_audit_findings_total",
    "Mismatches found by the background audit.",
)
.starts_at_zero();
const AUDIT_REPAIRED: Metric = Metric::counter(
    "hermet_audit_repaired_total",
    "Findings the background audit repaired (at most audit.max_repairs per pass).",
)
.starts_at_zero();
const AUDIT_REPAIR_FAILURES: Metric = Metric::counter(
    "hermet_audit_repair_failures_total",
    "Background audit passes whose repair failed (rolled back; retried on the next pass).",
)
.starts_at_zero();
const CDC_ERRORS: Metric = Metric::counter(
    "hermet_cdc_errors_total",
    "Relay failures (the relay is started again after each).",
)
.starts_at_zero();
const SLOT_RETAINED_WAL: Metric = Metric::gauge(
    "hermet_cdc_slot_retained_wal_bytes",
    "WAL the server keeps for a replication slot of this database (from its restart_lsn).",
)
.unit(Unit::Bytes)
.labels(&["slot"]);
const SLOT_ACTIVE: Metric = Metric::gauge(
    "hermet_cdc_slot_active",
    "1 while something streams from the replication slot, 0 while nothing does.",
)
.labels(&["slot"]);
const POOL_CONNECTIONS: Metric = Metric::gauge(
    "hermet_db_pool_connections",
    "Database pool connections by pool (commands, reads) and state (in_use, idle), and each pool's maximum (max).",
)
.labels(&["pool", "state"]);
const POOL_WAITING: Metric = Metric::gauge(
    "hermet_db_pool_waiting",
    "Tasks waiting for a database connection (saturation).",
)
.labels(&["pool"]);

/// The series this binary records itself.
const METRICS: &[Metric] = &[
    CONSISTENCY_RATE,
    AUDIT_FINDINGS,
    AUDIT_REPAIRED,
    AUDIT_REPAIR_FAILURES,
    CDC_ERRORS,
    SLOT_RETAINED_WAL,
    SLOT_ACTIVE,
    POOL_CONNECTIONS,
    POOL_WAITING,
];

/// Every series hermet exports, per crate.
fn all() -> [&'static [Metric]; 6] {
    [
        METRICS,
        hermet_store::telemetry::METRICS,
        hermet_redis::telemetry::METRICS,
        hermet_cdc::telemetry::METRICS,
        hermet_projector::telemetry::METRICS,
        hermet_api::telemetry::METRICS,
    ]
}

pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    for metrics in all() {
        telemetry::register(metrics);
    }
    Ok(handle)
}

/// The relay failed and is started again.
pub fn relay_failed() {
    metrics::counter!(CDC_ERRORS.name).increment(1);
}

/// A background audit pass: its consistency rate and how many findings it had.
pub fn audited(rate: f64, findings: usize) {
    metrics::gauge!(CONSISTENCY_RATE.name).set(rate);
    metrics::counter!(AUDIT_FINDINGS.name).increment(findings as u64);
}

/// The background audit repaired `findings` findings.
pub fn audit_repaired(findings: usize) {
    metrics::counter!(AUDIT_REPAIRED.name).increment(findings as u64);
}

/// A background audit pass's repair failed.
pub fn audit_repair_failed() {
    metrics::counter!(AUDIT_REPAIR_FAILURES.name).increment(1);
}

/// A sample of the replication slot `slot` (a slot that is gone: 0 retained, inactive).
pub fn slot(slot: &str, retained_wal_bytes: f64, active: bool) {
    metrics::gauge!(SLOT_RETAINED_WAL.name, "slot" => slot.to_owned()).set(retained_wal_bytes);
    metrics::gauge!(SLOT_ACTIVE.name, "slot" => slot.to_owned()).set(if active {
        1.0
    } else {
        0.0
    });
}

/// A database pool (label `pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbPool {
    /// Commands and projections (`database.url`).
    Commands,
    /// List reads (`database.read_url`, or the same server).
    Reads,
}

impl DbPool {
    pub fn as_str(self) -> &'static str {
        match self {
            DbPool::Commands => "commands",
            DbPool::Reads => "reads",
        }
    }
}

/// Connections of a pool by state (label `state`), and the pool's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolState {
    InUse,
    Idle,
    Max,
}

impl PoolState {
    fn as_str(self) -> &'static str {
        match self {
            PoolState::InUse => "in_use",
            PoolState::Idle => "idle",
            PoolState::Max => "max",
        }
    }
}

fn pool_sample(pool: DbPool, status: deadpool_postgres::Status) {
    let idle = status.available as f64;
    for (state, value) in [
        (PoolState::InUse, status.size as f64 - idle),
        (PoolState::Idle, idle),
        (PoolState::Max, status.max_size as f64),
    ] {
        metrics::gauge!(POOL_CONNECTIONS.name, "pool" => pool.as_str(), "state" => state.as_str())
            .set(value);
    }
    metrics::gauge!(POOL_WAITING.name, "pool" => pool.as_str()).set(status.waiting as f64);
}

/// Samples `pool` every second until the process ends.
pub async fn sample_pool(pool: deadpool_postgres::Pool, name: DbPool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        pool_sample(name, pool.status());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            telemetry::register(METRICS);
            relay_failed();
            audited(1.0, 0);
            audit_repaired(1);
            audit_repair_failed();
            slot("hermet_slot", 0.0, true);
            pool_sample(
                DbPool::Reads,
                deadpool_postgres::Status {
                    max_size: 4,
                    size: 2,
                    available: 1,
                    waiting: 0,
                },
            );
        });
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// The README's metrics table, per row: the series named, the type of each, the labels column.
    fn readme_rows() -> Vec<(Vec<String>, Vec<String>, String)> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("## Observability")
            .expect("README has an Observability section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        section
            .lines()
            .filter(|l| l.starts_with("| `hermet_"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let names: Vec<String> = cells[1]
                    .split('/')
                    .map(|n| n.trim().trim_matches('`').to_owned())
                    .collect();
                // One type for all, or one per series ("gauge / counter").
                let mut kinds: Vec<String> =
                    cells[2].split('/').map(|k| k.trim().to_owned()).collect();
                if kinds.len() == 1 {
                    kinds = vec![kinds[0].clone(); names.len()];
                }
                (names, kinds, cells[3].to_owned())
            })
            .collect()
    }

    #[test]
    fn readme_lists_every_series_with_its_kind_and_labels() {
        let rows = readme_rows();
        let declared: Vec<&Metric> = all().into_iter().flatten().collect();
        assert!(declared.len() >= 40, "{} series declared", declared.len());
        let mut problems = Vec::new();
        for m in &declared {
            let Some((names, kinds, labels)) = rows
                .iter()
                .find(|(names, _, _)| names.iter().any(|n| n == m.name))
            else {
                problems.push(format!("{} is not in the README's metrics table", m.name));
                continue;
            };
            let at = names.iter().position(|n| n == m.name).unwrap_or(0);
            if kinds.get(at).map(String::as_str) != Some(m.kind.as_str()) {
                problems.push(format!(
                    "{}: the README says {:?}, it is a {}",
                    m.name,
                    kinds.get(at),
                    m.kind.as_str()
                ));
            }
            let documented: Vec<&str> = labels
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .collect();
            for label in m.labels {
                if !documented.contains(label) {
                    problems.push(format!("{}: label `{label}` is not in the README", m.name));
                }
            }
        }
        for (names, _, _) in &rows {
            for n in names {
                if !declared.iter().any(|m| m.name == n) {
                    problems.push(format!("the README lists {n}, which nothing declares"));
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn every_series_is_declared_once() {
        let mut names: Vec<&str> = all().into_iter().flatten().map(|m| m.name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a series is declared by two crates");
    }
}
