//! The visibility gate: a WAL-fed reader waits until the transactions of its batch are visible
//! before it looks anything up (see `hermet_store::visibility` for why a shipped transaction can
//! still be invisible).
//!
//! Contract:
//! - [`wait_visible`] returns [`Gate::Open`] once every transaction id given is visible to new
//!   snapshots; a look-up started after that sees all of their changes, on any connection.
//! - It polls: one query when nothing is pending (the common case: no sleep at all), then with a
//!   backoff from 1 ms to 20 ms. It gives up after `bound` and returns [`Gate::TimedOut`] with the
//!   ids still running; the caller decides (the consumer groups dead-letter those records with the
//!   reason; the push notifier, at most once anyway, goes on).
//! - A database error is returned as is; the caller retries as it retries its apply.
//! - It is cancel-safe: it changes nothing, so dropping it (shutdown) loses nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use hermet_store::{visibility, StoreError};

use crate::telemetry::{self, Projector};

/// Default bound of a wait (`projector.visibility_wait_ms`): long enough for a synchronous
/// standby's round trip or a descheduled backend many times over, short enough that a stuck
/// transaction does not hold its partitions for long.
pub const DEFAULT_VISIBILITY_WAIT: Duration = Duration::from_secs(30);

/// Longest bound accepted: the consumer is not polled while its batch waits, and librdkafka
/// drops a member that has not polled for `max.poll.interval.ms` (300 s by default).
pub const MAX_VISIBILITY_WAIT: Duration = Duration::from_secs(240);

const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// What a wait ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every transaction is visible; `waited` is how long that took when it was not at once.
    Open { waited: Option<Duration> },
    /// After the bound, these transactions were still running for new snapshots.
    TimedOut { running: BTreeSet<u32> },
}

/// Waits until every transaction in `xids` is visible, for at most `bound`, and reports the
/// wait as `projector`'s (see [`record`]); while it waits,
/// `hermet_projector_visibility_waiting_transactions` says on how many transactions.
pub async fn wait_visible(
    pool: &Pool,
    projector: Projector<'_>,
    xids: &BTreeSet<u32>,
    bound: Duration,
) -> Result<Gate, StoreError> {
    let waiting = Waiting(telemetry::visibility_waiting(projector));
    let gate = poll(pool, xids, bound, &waiting.0).await;
    drop(waiting);
    if let Ok(g) = &gate {
        record(projector, g);
    }
    gate
}

/// The waiting gauge, back at 0 however the wait ends (also when it is cancelled).
struct Waiting(metrics::Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

async fn poll(
    pool: &Pool,
    xids: &BTreeSet<u32>,
    bound: Duration,
    waiting: &metrics::Gauge,
) -> Result<Gate, StoreError> {
    if xids.is_empty() {
        return Ok(Gate::Open { waited: None });
    }
    let started = Instant::now();
    let client = pool.get().await?;
    let mut pending: Vec<u32> = xids.iter().copied().collect();
    let mut backoff = FIRST_BACKOFF;
    let mut slept = false;
    loop {
        pending = visibility::invisible(&client, &pending).await?;
        if pending.is_empty() {
            let waited = slept.then(|| started.elapsed());
            return Ok(Gate::Open { waited });
        }
        let elapsed = started.elapsed();
        if elapsed >= bound {
            return Ok(Gate::TimedOut {
                running: pending.into_iter().collect(),
            });
        }
        waiting.set(pending.len() as f64);
        tokio::time::sleep(backoff.min(bound - elapsed)).await;
        slept = true;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts a gate's outcome for `projector`: `hermet_projector_visibility_waits_total` and
/// `_wait_seconds` when a batch had to wait, `hermet_projector_visibility_timeouts_total` per
/// transaction given up on.
fn record(projector: Projector<'_>, gate: &Gate) {
    match gate {
        Gate::Open { waited: None } => {}
        Gate::Open {
            waited: Some(waited),
        } => {
            tracing::debug!(
                projector = projector.as_str(),
                waited_ms = waited.as_millis() as u64,
                "waited for the batch's transactions to become visible"
            );
            telemetry::visibility_waited(projector, *waited);
        }
        Gate::TimedOut { running } => {
            tracing::error!(projector = projector.as_str(), transactions = ?running,
                "committed transactions still not visible after the bound; their records go to the dead letters");
            telemetry::visibility_timed_out(projector, running.len());
        }
    }
}
