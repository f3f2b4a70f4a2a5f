//! The `async` mode worker: drains `hermet_outbox` through the projection.
//!
//! Each step claims the oldest rows with `FOR UPDATE SKIP LOCKED` (so several workers share the
//! queue without waiting on each other), applies their changes, and deletes them, all in one
//! transaction: a crash before commit leaves the rows for the next claim, nothing is lost, and
//! re-applying is harmless.
//!
//! Failures (classified by [`crate::classify`]): a database that is away, a lost race or an
//! error nobody can blame on the data is retried with backoff for as long as it takes; no row is
//! ever set aside for it. A batch that fails because of its data is tried `max_attempts` times;
//! then the next step bisects it ([`crate::Bisect`]) inside its one transaction, each piece under
//! a savepoint: the pieces that apply are kept, and a row that fails alone is moved to
//! `hermet_outbox_dead` (see `hermet admin dlq`), so one poison row costs about
//! `max_attempts + log2(batch)` failed applies, not one batch per row ahead of it. A row set
//! aside keeps its `wal_lsn`: reads asking for a write at or past it answer stale until it is
//! replayed and applied (`hermet_store::sync::covers`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use hermet_core::cache::ListCache;
use hermet_core::change::RowChange;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_store::dead_letters::bury_outbox;
use hermet_store::sync::{finish_outbox, take_outbox, OutboxRow};
use hermet_store::{project, StoreError};

use crate::telemetry::{self, LagMode, LagView, Projector};
use crate::{is_transient, now_ms, Bisect, ProjectorError};

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub batch: i64,
    /// Pause when the outbox is empty.
    pub idle_wait: Duration,
    pub max_attempts: u32,
    pub projection: ProjectionConfig,
    /// Invalidated for the owners of every batch, after the batch commits.
    pub cache: Arc<dyn ListCache>,
}

/// Runs the worker until `shutdown` resolves.
pub async fn run_outbox(
    cfg: OutboxConfig,
    pool: Pool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    tokio::pin!(shutdown);
    telemetry::register_outbox();
    let mut backoff = Duration::from_millis(50);
    // Failed steps of the batch at the head of the queue, for its data.
    let mut failures = 0u32;
    loop {
        let step = drain_once(&cfg, &pool, failures >= cfg.max_attempts).await;
        let pause = match step {
            Ok(0) => {
                failures = 0;
                cfg.idle_wait
            }
            // More may be waiting: go on at once, unless a stop was asked for (under a steady
            // load the queue never empties, and each step commits what it applied).
            Ok(_) => {
                failures = 0;
                backoff = Duration::from_millis(50);
                Duration::ZERO
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "outbox worker waiting for the database");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "outbox batch failed");
                backoff
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            // No timer for no pause: even a zero sleep waits for the timer's next tick.
            () = std::future::ready(()), if pause.is_zero() => {}
            _ = tokio::time::sleep(pause), if !pause.is_zero() => {}
        }
    }
}

/// One claim-apply-delete step; returns how many rows it finished (applied or set aside).
/// With `isolate` (the batch failed `max_attempts` times), a batch that fails again for its data
/// is bisected and the rows that fail alone are set aside; without, that failure is returned.
async fn drain_once(cfg: &OutboxConfig, pool: &Pool, isolate: bool) -> Result<usize, StoreError> {
    let mut conn = pool.get().await?;
    let mut tx = conn.transaction().await?;
    let claimed = take_outbox(&tx, cfg.batch).await?;
    if claimed.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let finished = claimed.len();
    let mut rows: Vec<OutboxRow> = Vec::with_capacity(claimed.len());
    for (id, row) in claimed {
        match row {
            Ok(r) => rows.push(r),
            Err(e) => bury_outbox(&tx, id, &e, 1).await?,
        }
    }
    let mut done = project::Applied::default();
    let mut applied: Vec<&OutboxRow> = Vec::with_capacity(rows.len());
    match apply_piece(cfg, &mut tx, &rows).await {
        Ok(piece) => {
            done = piece;
            applied.extend(&rows);
        }
        Err(e) if is_transient(&e) || !isolate => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, rows = rows.len(),
                "outbox batch keeps failing; bisecting it to set aside the rows that fail alone");
            let mut bisect = Bisect::new(rows.len(), e);
            while let Some(range) = bisect.next_range() {
                match apply_piece(cfg, &mut tx, &rows[range.clone()]).await {
                    Ok(piece) => {
                        done.absorb(piece);
                        applied.extend(&rows[range]);
                    }
                    Err(e) if is_transient(&e) => return Err(e),
                    Err(e) => bisect.failed(range, e),
                }
            }
            for (i, e) in bisect.poison() {
                let id = rows[i].id;
                tracing::error!(id, error = %e, "outbox row set aside");
                bury_outbox(&tx, id, &e.to_string(), cfg.max_attempts as i32).await?;
            }
        }
    }
    let ids: Vec<i64> = applied.iter().map(|r| r.id).collect();
    finish_outbox(&tx, &ids).await?;
    tx.commit().await?;
    done.retire_cached(cfg.cache.as_ref()).await;
    if let Some(oldest) = applied.iter().map(|r| r.created_at).min() {
        let lag = (now_ms() - oldest).max(0) as f64 / 1000.0;
        // One transaction brought both views up to date.
        for view in LagView::ALL {
            telemetry::sync_lag(view, LagMode::Async, lag);
        }
    }
    Ok(finished)
}

/// Applies the changes of `rows` under a savepoint of `tx`: on failure the savepoint is rolled
/// back, so the transaction (and the claim on every row) goes on. Returns the owners whose
/// conversation lists changed. A failure for the data counts in
/// `hermet_view_update_failures_total{projector="outbox"}`.
async fn apply_piece(
    cfg: &OutboxConfig,
    tx: &mut Transaction<'_>,
    rows: &[OutboxRow],
) -> Result<project::Applied, StoreError> {
    let changes: Vec<RowChange> = rows.iter().flat_map(|r| r.changes.clone()).collect();
    let piece = tx.savepoint("outbox_piece").await?;
    match project::apply_changes(&piece, &changes, ReadModels::ALL, &cfg.projection).await {
        Ok(applied) => {
            piece.commit().await?;
            Ok(applied)
        }
        Err(e) => {
            if !is_transient(&e) {
                telemetry::update_failed(Projector::Outbox);
            }
            piece.rollback().await?;
            Err(e)
        }
    }
}
