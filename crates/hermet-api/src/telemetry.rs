//! The metrics of the HTTP API, read-your-writes waits and WebSocket push (see
//! `hermet_core::telemetry` for the contract).

use std::time::Duration;

use hermet_core::telemetry::{Metric, Unit};

use crate::rate_limit::Bucket;

const HTTP_REQUESTS: Metric = Metric::histogram(
    "hermet_http_request_duration_seconds",
    "HTTP request duration by route template, method and status.",
)
.unit(Unit::Seconds)
.labels(&["route", "method", "status"]);
const STALE_READS: Metric = Metric::counter(
    "hermet_stale_reads_total",
    "Reads with X-Hermet-Min-Lsn answered stale because the wait ran out.",
)
.starts_at_zero();
const READ_WAITERS: Metric = Metric::gauge(
    "hermet_read_waiters",
    "Reads with X-Hermet-Min-Lsn waiting for the view now.",
);
const READ_WAITS_REFUSED: Metric = Metric::counter(
    "hermet_read_waits_refused_total",
    "Reads with X-Hermet-Min-Lsn answered stale at once: max_read_waiters were waiting.",
);
const PUSH_CONNECTIONS: Metric = Metric::gauge(
    "hermet_push_connections",
    "Open WebSocket push connections.",
)
.starts_at_zero();
const PUSH_EVENTS: Metric =
    Metric::counter("hermet_push_events_total", "Push events sent to sockets.").starts_at_zero();
const PUSH_SLOW_DROPS: Metric = Metric::counter(
    "hermet_push_slow_drops_total",
    "Push connections dropped for not keeping up.",
)
.starts_at_zero();

const RATE_LIMITED: Metric = Metric::counter(
    "hermet_rate_limited_total",
    "Requests answered 429 by a rate limit, by limit (send, write, signup, auth_failure).",
)
.labels(&["limit"]);
const AUTH_FAILURES: Metric = Metric::counter(
    "hermet_auth_failures_total",
    "Requests whose bearer token was refused (answered 401, or 429 once rate limited).",
)
.starts_at_zero();

/// Every series of this crate.
pub const METRICS: &[Metric] = &[
    HTTP_REQUESTS,
    STALE_READS,
    READ_WAITERS,
    READ_WAITS_REFUSED,
    PUSH_CONNECTIONS,
    PUSH_EVENTS,
    PUSH_SLOW_DROPS,
    RATE_LIMITED,
    AUTH_FAILURES,
];

/// A request to `route` (its template, e.g. `/v1/conversations`) answered `status` after
/// `elapsed`.
pub fn request(route: String, method: &str, status: u16, elapsed: Duration) {
    metrics::histogram!(HTTP_REQUESTS.name,
        "route" => route, "method" => method.to_owned(), "status" => status.to_string())
    .record(elapsed.as_secs_f64());
}

/// A read with `X-Hermet-Min-Lsn` started waiting.
pub fn read_wait_started() {
    metrics::gauge!(READ_WAITERS.name).increment(1.0);
}

/// A read with `X-Hermet-Min-Lsn` stopped waiting (however it ended).
pub fn read_wait_ended() {
    metrics::gauge!(READ_WAITERS.name).decrement(1.0);
}

/// A read answered stale because the wait ran out; `refused`: at once, because too many reads
/// were waiting.
pub fn stale_read(refused: bool) {
    if refused {
        metrics::counter!(READ_WAITS_REFUSED.name).increment(1);
    }
    metrics::counter!(STALE_READS.name).increment(1);
}

/// A push connection opened.
pub fn push_connected() {
    metrics::gauge!(PUSH_CONNECTIONS.name).increment(1.0);
}

/// `n` push connections closed.
pub fn push_disconnected(n: usize) {
    metrics::gauge!(PUSH_CONNECTIONS.name).decrement(n as f64);
}

/// `n` push events queued to sockets.
pub fn push_events(n: usize) {
    metrics::counter!(PUSH_EVENTS.name).increment(n as u64);
}

/// A push connection dropped for not keeping up.
pub fn push_slow_drop() {
    metrics::counter!(PUSH_SLOW_DROPS.name).increment(1);
}

/// Creates `hermet_rate_limited_total` at 0 for every limit, so a rate of it reads 0 rather
/// than nothing before the first refusal.
pub fn rate_limits_registered() {
    for bucket in Bucket::ALL {
        metrics::counter!(RATE_LIMITED.name, "limit" => bucket.as_str()).increment(0);
    }
}

/// A request refused by the `bucket` limit.
pub fn rate_limited(bucket: Bucket) {
    metrics::counter!(RATE_LIMITED.name, "limit" => bucket.as_str()).increment(1);
}

/// A bearer token was refused.
pub fn auth_failure() {
    metrics::counter!(AUTH_FAILURES.name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermet_core::telemetry;

    #[test]
    fn functions_record_what_is_declared() {
        let problems = telemetry::check(METRICS, || {
            telemetry::register(METRICS);
            request("/v1/users".to_owned(), "GET", 200, Duration::from_millis(1));
            read_wait_started();
            read_wait_ended();
            stale_read(true);
            push_connected();
            push_disconnected(1);
            push_events(1);
            push_slow_drop();
            rate_limits_registered();
            rate_limited(Bucket::Send);
            auth_failure();
        });
        assert!(problems.is_empty(), "{problems:?}");
    }
}
