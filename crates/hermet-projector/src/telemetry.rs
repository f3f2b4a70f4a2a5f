//! The metrics of the projectors, the outbox worker and the push notifier (see
//! `hermet_core::telemetry` for the contract).
//!
//! `hermet_sync_lag_seconds` carries `view` (`conversation`, `contact`: the view brought up to
//! date) and `mode` (`async`: the outbox worker, which applies both views in one transaction and
//! so records each batch's lag once per view; `cdc`: the consumer groups, one view each), so
//! `sum by (le, view)` reads the same whichever sync mode runs.

use std::time::Duration;

use hermet_core::telemetry::{Metric, Unit};

/// Public for `hermet-bench modes --stage-metrics`, which keeps this series.
pub const SYNC_LAG: Metric = Metric::histogram(
    "hermet_sync_lag_seconds",
    "Write-side commit to view applied, per view (conversation, contact) and mode (async: outbox worker, cdc: consumer groups).",
)
.unit(Unit::Seconds)
.labels(&["view", "mode"]);
const UPDATE_FAILURES: Metric = Metric::counter(
    "hermet_view_update_failures_total",
    "Failed attempts to apply a batch to the views.",
)
.labels(&["projector"]);
const CONSUMER_LAG: Metric = Metric::gauge(
    "hermet_consumer_lag_messages",
    "Records between a projector's position and the partition's end, by group, topic, partition.",
)
.labels(&["group", "topic", "partition"]);
const ROWS: Metric = Metric::counter(
    "hermet_projector_rows_total",
    "View rows computed by a projector.",
)
.labels(&["projector"]);
const DEAD_LETTERS: Metric = Metric::counter(
    "hermet_projector_dead_letters_total",
    "Records a projector sent to the dead-letter topic.",
)
.labels(&["projector"]);
/// Public for `hermet-bench modes --stage-metrics`, which keeps this series.
pub const BATCH: Metric = Metric::histogram(
    "hermet_projector_batch_seconds",
    "Time to apply one projector batch.",
)
.unit(Unit::Seconds)
.labels(&["projector"]);
const VISIBILITY_WAITS: Metric = Metric::counter(
    "hermet_projector_visibility_waits_total",
    "Projector batches that waited for their transactions to become visible to new snapshots.",
)
.labels(&["projector"]);
const VISIBILITY_TIMEOUTS: Metric = Metric::counter(
    "hermet_projector_visibility_timeouts_total",
    "Transactions still invisible after projector.visibility_wait_ms (their records were dead-lettered).",
)
.labels(&["projector"]);
const VISIBILITY_WAIT: Metric = Metric::histogram(
    "hermet_projector_visibility_wait_seconds",
    "How long a projector batch waited for its transactions to become visible.",
)
.unit(Unit::Seconds)
.labels(&["projector"]);
const VISIBILITY_WAITING: Metric = Metric::gauge(
    "hermet_projector_visibility_waiting_transactions",
    "Transactions a projector batch is waiting on to become visible, now.",
)
.labels(&["projector"]);
const WITHOUT_TXID: Metric = Metric::counter(
    "hermet_projector_changes_without_txid_total",
    "Streamed change events without source.txId, applied without the visibility wait.",
);
const PUSH_NOTIFIED: Metric = Metric::counter(
    "hermet_push_notified_total",
    "Changes the push notifier turned into events.",
)
.starts_at_zero();
const PUSH_FAILURES: Metric =
    Metric::counter("hermet_push_failures_total", "Push notifier failures.").starts_at_zero();
const PUSH_LAG: Metric = Metric::histogram(
    "hermet_push_lag_seconds",
    "Write-side commit to push event sent.",
)
.unit(Unit::Seconds);

/// Every series of this crate.
pub const METRICS: &[Metric] = &[
    SYNC_LAG,
    UPDATE_FAILURES,
    CONSUMER_LAG,
    ROWS,
    DEAD_LETTERS,
    BATCH,
    VISIBILITY_WAITS,
    VISIBILITY_TIMEOUTS,
    VISIBILITY_WAIT,
    VISIBILITY_WAITING,
    WITHOUT_TXID,
    PUSH_NOTIFIED,
    PUSH_FAILURES,
    PUSH_LAG,
];

/// The `projector` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projector<'a> {
    /// A Kafka consumer group, by its group id.
    Group(&'a str),
    /// The `async` mode worker.
    Outbox,
    /// The push notifiers (their group ids are per process, so they share one label).
    PushNotifier,
    /// `hermet admin dlq replay`.
    DlqReplay,
}

impl<'a> Projector<'a> {
    pub fn as_str(self) -> &'a str {
        match self {
            Projector::Group(group) => group,
            Projector::Outbox => "outbox",
            Projector::PushNotifier => "push-notifier",
            Projector::DlqReplay => "dlq-replay",
        }
    }
}

/// The view a sync lag is of (label `view` of `hermet_sync_lag_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagView {
    Conversation,
    Contact,
}

impl LagView {
    pub const ALL: [LagView; 2] = [LagView::Conversation, LagView::Contact];

    pub fn as_str(self) -> &'static str {
        match self {
            LagView::Conversation => "conversation",
            LagView::Contact => "contact",
        }
    }
}

/// The sync mode that applied a change (label `mode` of `hermet_sync_lag_seconds`; the
/// values of `sync.mode`). `dual_write` has no lag: the view is written by the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagMode {
    /// The outbox worker.
    Async,
    /// The consumer groups.
    Cdc,
}

impl LagMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LagMode::Async => "async",
            LagMode::Cdc => "cdc",
        }
    }
}

/// A change committed `seconds` before `view` was brought up to date by `mode`.
pub fn sync_lag(view: LagView, mode: LagMode, seconds: f64) {
    metrics::histogram!(SYNC_LAG.name, "view" => view.as_str(), "mode" => mode.as_str())
        .record(seconds);
}

/// Creates a consumer group's series at 0, so a failure rate exists before the first failure
/// and dashboards see 0 before the first wait.
pub fn register_group(group: &str) {
    let p = Projector::Group(group);
    metrics::counter!(UPDATE_FAILURES.name, "projector" => p.as_str().to_owned()).increment(0);
    metrics::counter!(DEAD_LETTERS.name, "projector" => p.as_str().to_owned()).increment(0);
    register_visibility(p);
}

/// Creates the outbox worker's failure counter at 0.
pub fn register_outbox() {
    metrics::counter!(UPDATE_FAILURES.name, "projector" => Projector::Outbox.as_str()).increment(0);
}

/// Creates `projector`'s visibility series at 0.
pub fn register_visibility(projector: Projector<'_>) {
    let p = projector.as_str().to_owned();
    metrics::counter!(VISIBILITY_WAITS.name, "projector" => p.clone()).increment(0);
    metrics::counter!(VISIBILITY_TIMEOUTS.name, "projector" => p.clone()).increment(0);
    metrics::gauge!(VISIBILITY_WAITING.name, "projector" => p).set(0.0);
}

/// A failed attempt to apply a batch, for its data.
pub fn update_failed(projector: Projector<'_>) {
    metrics::counter!(UPDATE_FAILURES.name, "projector" => projector.as_str().to_owned())
        .increment(1);
}

/// A record set aside on the dead-letter topic.
pub fn dead_lettered(projector: Projector<'_>) {
    metrics::counter!(DEAD_LETTERS.name, "projector" => projector.as_str().to_owned()).increment(1);
}

/// A batch applied in `elapsed`.
pub fn batch_applied(projector: Projector<'_>, elapsed: Duration) {
    metrics::histogram!(BATCH.name, "projector" => projector.as_str().to_owned())
        .record(elapsed.as_secs_f64());
}

/// `rows` view rows computed.
pub fn rows_computed(projector: Projector<'_>, rows: usize) {
    metrics::counter!(ROWS.name, "projector" => projector.as_str().to_owned())
        .increment(rows as u64);
}

/// librdkafka's consumer lag of one partition.
pub fn consumer_lag(group: &str, topic: &str, partition: i32, records: i64) {
    metrics::gauge!(CONSUMER_LAG.name, "group" => group.to_owned(),
        "topic" => topic.to_owned(), "partition" => partition.to_string())
    .set(records as f64);
}

/// The gauge of the transactions `projector` is waiting on now.
pub fn visibility_waiting(projector: Projector<'_>) -> metrics::Gauge {
    metrics::gauge!(VISIBILITY_WAITING.name, "projector" => projector.as_str().to_owned())
}

/// A batch of `projector` had to wait `waited` for its transactions to become visible.
pub fn visibility_waited(projector: Projector<'_>, waited: Duration) {
    let p = projector.as_str().to_owned();
    metrics::counter!(VISIBILITY_WAITS.name, "projector" => p.clone()).increment(1);
    metrics::histogram!(VISIBILITY_WAIT.name, "projector" => p).record(waited.as_secs_f64());
}

/// A batch of `projector` waited in vain: `transactions` were still invisible at the bound.
pub fn visibility_timed_out(projector: Projector<'_>, transactions: usize) {
    let p = projector.as_str().to_owned();
    metrics::counter!(VISIBILITY_WAITS.name, "projector" => p.clone()).increment(1);
    metrics::counter!(VISIBILITY_TIMEOUTS.name, "projector" => p).increment(transactions as u64);
}

/// A streamed change without `source.txId`.
pub fn change_without_txid() {
    metrics::counter!(WITHOUT_TXID.name).increment(1);
}

/// The push notifier sent `events` events; the oldest change was committed `lag_seconds` ago.
pub fn pushed(events: usize, lag_seconds: Option<f64>) {
    metrics::counter!(PUSH_NOTIFIED.name).increment(events as u64);
    if let Some(lag) = lag_seconds {
        metrics::histogram!(PUSH_LAG.name).record(lag);
    }
}

/// The push notifier lost a batch.
pub fn push_failed() {
    metrics::counter!(PUSH_FAILURES.name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_core::telemetry;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            telemetry::register(METRICS);
            register_group("g");
            register_outbox();
            sync_lag(LagView::Contact, LagMode::Cdc, 0.1);
            update_failed(Projector::Outbox);
            dead_lettered(Projector::Group("g"));
            batch_applied(Projector::Group("g"), Duration::from_millis(1));
            rows_computed(Projector::Group("g"), 1);
            consumer_lag("g", "t", 0, 1);
            visibility_waiting(Projector::PushNotifier).set(1.0);
            visibility_waited(Projector::Group("g"), Duration::from_millis(1));
            visibility_timed_out(Projector::DlqReplay, 1);
            change_without_txid();
            pushed(1, Some(0.1));
            push_failed();
        });
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn labels_keep_their_exported_values() {
        assert_eq!(
            Projector::Group("conversation-view-updater").as_str(),
            "conversation-view-updater"
        );
        assert_eq!(Projector::Outbox.as_str(), "outbox");
        assert_eq!(Projector::PushNotifier.as_str(), "push-notifier");
        assert_eq!(Projector::DlqReplay.as_str(), "dlq-replay");
    }
}
