//! Metrics set-up: the Prometheus recorder with histogram buckets (so lag and latency quantiles
//! can be aggregated across processes with `histogram_quantile`), a help text for every series
//! hermet exports (README "Metrics" lists them), and the database pool sampler.

use std::time::Duration;

use anyhow::Context;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: 1 ms to 60 s, dense where the targets are (p99 ≤ 5 ms reads, ≤ 100 ms lag).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    // Series that only move on trouble exist from the start, so dashboards and alerts see 0
    // rather than "no data".
    for counter in [
        "hermet_cache_fallbacks_total",
        "hermet_stale_reads_total",
        "hermet_audit_findings_total",
        "hermet_audit_repaired_total",
        "hermet_audit_repair_failures_total",
        "hermet_cdc_errors_total",
        "hermet_cdc_truncates_ignored_total",
        "hermet_push_events_total",
        "hermet_push_notified_total",
        "hermet_push_failures_total",
        "hermet_push_slow_drops_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!("hermet_push_connections").increment(0.0);
    Ok(handle)
}

fn describe() {
    describe_histogram!(
        "hermet_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration by route template, method and status."
    );
    describe_histogram!(
        "hermet_sync_lag_seconds",
        Unit::Seconds,
        "Write-side commit to view applied, per view (conversation, contact, outbox)."
    );
    describe_gauge!(
        "hermet_consistency_rate",
        "Share of audited view rows equal to a rebuild from the write side (1 = all)."
    );
    describe_counter!(
        "hermet_view_updates_total",
        "View rows written by projections."
    );
    describe_counter!(
        "hermet_view_update_failures_total",
        "Failed attempts to apply a batch to the views."
    );
    describe_counter!(
        "hermet_audit_findings_total",
        "Mismatches found by the background audit."
    );
    describe_counter!(
        "hermet_audit_repaired_total",
        "Findings the background audit repaired (at most audit.max_repairs per pass)."
    );
    describe_counter!(
        "hermet_audit_repair_failures_total",
        "Background audit passes whose repair failed (rolled back; retried on the next pass)."
    );
    describe_counter!(
        "hermet_stale_reads_total",
        "Reads with X-Hermet-Min-Lsn answered stale because the wait ran out."
    );
    describe_gauge!(
        "hermet_cdc_slot_lag_bytes",
        Unit::Bytes,
        "WAL bytes between the server's current position and the relay's confirmed position."
    );
    describe_gauge!(
        "hermet_cdc_confirmed_lsn",
        "Last LSN the relay confirmed to PostgreSQL (everything before it is on Kafka)."
    );
    describe_counter!(
        "hermet_cdc_events_total",
        "Row changes the relay put on Kafka."
    );
    describe_counter!("hermet_cdc_errors_total", "Relay errors, by kind.");
    describe_counter!(
        "hermet_cdc_truncates_ignored_total",
        "TRUNCATE messages the relay skipped."
    );
    describe_histogram!(
        "hermet_cdc_commit_to_ack_seconds",
        Unit::Seconds,
        "Transaction commit to Kafka acknowledgement of its last change."
    );
    describe_gauge!(
        "hermet_consumer_lag_messages",
        "Records between a projector's position and the partition's end, by group, topic, partition."
    );
    describe_counter!(
        "hermet_projector_rows_total",
        "View rows computed by a projector."
    );
    describe_counter!(
        "hermet_projector_dead_letters_total",
        "Records a projector sent to the dead-letter topic."
    );
    describe_histogram!(
        "hermet_projector_batch_seconds",
        Unit::Seconds,
        "Time to apply one projector batch."
    );
    describe_counter!(
        "hermet_projector_visibility_waits_total",
        "Projector batches that waited for their transactions to become visible to new snapshots."
    );
    describe_counter!(
        "hermet_projector_visibility_timeouts_total",
        "Transactions still invisible after projector.visibility_wait_ms (their records were dead-lettered)."
    );
    describe_histogram!(
        "hermet_projector_visibility_wait_seconds",
        Unit::Seconds,
        "How long a projector batch waited for its transactions to become visible."
    );
    describe_gauge!(
        "hermet_read_waiters",
        "Reads with X-Hermet-Min-Lsn waiting for the view now."
    );
    describe_counter!(
        "hermet_read_waits_refused_total",
        "Reads with X-Hermet-Min-Lsn answered stale at once: max_read_waiters were waiting."
    );
    describe_gauge!(
        "hermet_cdc_slot_retained_wal_bytes",
        Unit::Bytes,
        "WAL the server keeps for a replication slot of this database (from its restart_lsn)."
    );
    describe_gauge!(
        "hermet_cdc_slot_active",
        "1 while something streams from the replication slot, 0 while nothing does."
    );
    describe_counter!(
        "hermet_projector_changes_without_txid_total",
        "Streamed change events without source.txId, applied without the visibility wait."
    );
    describe_gauge!(
        "hermet_projector_visibility_waiting_transactions",
        "Transactions a projector batch is waiting on to become visible, now."
    );
    describe_counter!(
        "hermet_cache_requests_total",
        "Conversation-list cache look-ups, by result (hit: a page under the owner's current version, before the check of its read-diffusion channel versions; miss)."
    );
    describe_counter!(
        "hermet_cache_stores_total",
        "Pages offered to the cache, by result (stored, stale: refused by the version check)."
    );
    describe_counter!(
        "hermet_cache_invalidations_total",
        "Owners whose cached pages were invalidated."
    );
    describe_counter!(
        "hermet_cache_channel_invalidations_total",
        "Read-diffusion channels whose cache versions were invalidated (each retires the cached pages recorded against it)."
    );
    describe_counter!(
        "hermet_cache_fallbacks_total",
        "Reads served from PostgreSQL because Redis was unreachable or untrusted."
    );
    describe_counter!(
        "hermet_cache_errors_total",
        "Failed Redis calls, by operation (lookup, store, channel_versions, invalidate, invalidate_channels, invalidate_all, epoch)."
    );
    describe_gauge!(
        "hermet_db_pool_connections",
        "Database pool connections by pool (commands, reads) and state (in_use, idle), and each pool's maximum (max)."
    );
    describe_gauge!(
        "hermet_db_pool_waiting",
        "Tasks waiting for a database connection (saturation)."
    );
    describe_gauge!(
        "hermet_push_connections",
        "Open WebSocket push connections."
    );
    describe_counter!("hermet_push_events_total", "Push events sent to sockets.");
    describe_counter!(
        "hermet_push_notified_total",
        "Changes the push notifier turned into events."
    );
    describe_counter!("hermet_push_failures_total", "Push notifier failures.");
    describe_counter!(
        "hermet_push_slow_drops_total",
        "Push connections dropped for not keeping up."
    );
    describe_histogram!(
        "hermet_push_lag_seconds",
        Unit::Seconds,
        "Write-side commit to push event sent."
    );
}

/// Samples a pool (`name`: `commands` or `reads`) every second until the process ends.
pub async fn sample_pool(pool: deadpool_postgres::Pool, name: &'static str) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let s = pool.status();
        let idle = s.available as f64;
        metrics::gauge!("hermet_db_pool_connections", "pool" => name, "state" => "in_use")
            .set(s.size as f64 - idle);
        metrics::gauge!("hermet_db_pool_connections", "pool" => name, "state" => "idle").set(idle);
        metrics::gauge!("hermet_db_pool_connections", "pool" => name, "state" => "max")
            .set(s.max_size as f64);
        metrics::gauge!("hermet_db_pool_waiting", "pool" => name).set(s.waiting as f64);
    }
}
