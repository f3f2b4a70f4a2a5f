//! The metrics of the CDC relay (see `hermet_core::telemetry` for the contract).

use hermet_core::telemetry::{Metric, Unit};

const SLOT_LAG: Metric = Metric::gauge(
    "hermet_cdc_slot_lag_bytes",
    "WAL bytes between the server's current position and the relay's confirmed position.",
)
.unit(Unit::Bytes);
const CONFIRMED_LSN: Metric = Metric::gauge(
    "hermet_cdc_confirmed_lsn",
    "Last LSN the relay confirmed to PostgreSQL (everything before it is on Kafka).",
);
const EVENTS: Metric = Metric::counter(
    "hermet_cdc_events_total",
    "Row changes the relay put on Kafka.",
)
.labels(&["table"]);
const TRUNCATES_IGNORED: Metric = Metric::counter(
    "hermet_cdc_truncates_ignored_total",
    "TRUNCATE messages the relay skipped.",
)
.starts_at_zero();
/// Public for `hermet-bench modes --stage-metrics`, which keeps this series.
pub const COMMIT_TO_ACK: Metric = Metric::histogram(
    "hermet_cdc_commit_to_ack_seconds",
    "Transaction commit to the relay reading Kafka's acknowledgement of its last change (read at each watermark tick: up to cdc.watermark_ms after Kafka's).",
)
.unit(Unit::Seconds);

/// Every series of this crate.
pub const METRICS: &[Metric] = &[
    SLOT_LAG,
    CONFIRMED_LSN,
    EVENTS,
    TRUNCATES_IGNORED,
    COMMIT_TO_ACK,
];

/// WAL between the server's position and the slot's confirmed one.
pub fn slot_lag(bytes: f64) {
    metrics::gauge!(SLOT_LAG.name).set(bytes);
}

/// Kafka acknowledged everything up to `lsn`, which was confirmed to PostgreSQL.
pub fn confirmed(lsn: hermet_core::Lsn) {
    metrics::gauge!(CONFIRMED_LSN.name).set(lsn.0 as f64);
}

/// A transaction's last change acknowledged `seconds` after its commit.
pub fn commit_to_ack(seconds: f64) {
    metrics::histogram!(COMMIT_TO_ACK.name).record(seconds);
}

/// A TRUNCATE skipped.
pub fn truncate_ignored() {
    metrics::counter!(TRUNCATES_IGNORED.name).increment(1);
}

/// One row change of `table` put on Kafka.
pub fn event_relayed(table: &str) {
    metrics::counter!(EVENTS.name, "table" => table.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_core::telemetry;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            telemetry::register(METRICS);
            slot_lag(1.0);
            confirmed(hermet_core::Lsn(1));
            commit_to_ack(0.1);
            truncate_ignored();
            event_relayed("messages");
        });
        assert!(problems.is_empty(), "{problems:?}");
    }
}
