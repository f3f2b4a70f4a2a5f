//! The `async` mode worker: drains `hermet_outbox` through the projection.
//!
//! Each step claims the oldest rows with `FOR UPDATE SKIP LOCKED` (so several workers share the
//! queue without waiting on each other), applies their changes, and deletes them, all in one
//! transaction: a crash before commit leaves the rows for the next claim, nothing is lost, and
//! re-applying is harmless. A row that keeps failing is moved to `hermet_outbox_dead` (see
//! `hermet admin dlq`), so later rows still apply.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use hermet_core::cache::ListCache;
use hermet_core::change::RowChange;
use hermet_core::projection::{ProjectionConfig, Views};
use hermet_store::sync::{bury_outbox, finish_outbox, take_outbox};
use hermet_store::{project, StoreError};

use crate::{is_transient, now_ms, ProjectorError};

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
    metrics::counter!("hermet_view_update_failures_total", "projector" => "outbox").increment(0);
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let limit = if failures >= cfg.max_attempts {
            1
        } else {
            cfg.batch
        };
        let step = drain_once(&cfg, &pool, limit, failures >= cfg.max_attempts).await;
        let pause = match step {
            Ok(0) => {
                failures = 0;
                cfg.idle_wait
            }
            Ok(_) => {
                failures = 0;
                backoff = Duration::from_millis(50);
                continue;
            }
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "outbox worker waiting for the database");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("hermet_view_update_failures_total", "projector" => "outbox")
                    .increment(1);
                tracing::warn!(error = %e, failures, "outbox batch failed");
                backoff
            }
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One claim-apply-delete step; returns how many rows it finished. With `bury_on_failure`
/// (single rows after repeated batch failures), a row that fails is set aside instead.
async fn drain_once(
    cfg: &OutboxConfig,
    pool: &Pool,
    limit: i64,
    bury_on_failure: bool,
) -> Result<usize, StoreError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let claimed = take_outbox(&tx, limit).await?;
    if claimed.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(claimed.len());
    let mut changes: Vec<RowChange> = Vec::new();
    let mut oldest = i64::MAX;
    for (id, row) in claimed {
        match row {
            Ok(r) => {
                ids.push(id);
                oldest = oldest.min(r.created_at);
                changes.extend(r.changes);
            }
            Err(e) => bury_outbox(&tx, id, &e, 1).await?,
        }
    }
    let applied = project::apply_changes(&tx, &changes, Views::ALL, &cfg.projection).await;
    match applied {
        Ok(applied) => {
            finish_outbox(&tx, &ids).await?;
            tx.commit().await?;
            cfg.cache.invalidate(&applied.conversation_owners).await;
            if oldest != i64::MAX {
                let lag = (now_ms() - oldest).max(0) as f64 / 1000.0;
                metrics::histogram!("hermet_sync_lag_seconds", "view" => "outbox").record(lag);
            }
            Ok(ids.len())
        }
        Err(e) if bury_on_failure && !is_transient(&e) => {
            drop(tx);
            let tx = conn.transaction().await?;
            for id in &ids {
                tracing::error!(id, error = %e, "outbox row set aside");
                bury_outbox(&tx, *id, &e.to_string(), cfg.max_attempts as i32).await?;
            }
            tx.commit().await?;
            Ok(ids.len())
        }
        Err(e) => Err(e),
    }
}
