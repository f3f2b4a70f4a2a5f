//! The write-side half of the eventually consistent modes, and their progress markers.
//!
//! - `async`: [`enqueue`] writes a command's row changes to `hermet_outbox` in the command's
//!   transaction; [`take_outbox`]/[`finish_outbox`] let a worker claim rows (`FOR UPDATE SKIP
//!   LOCKED`, so workers never wait on each other), apply them and delete them in one transaction;
//!   a row that keeps failing is set aside in `hermet_outbox_dead` ([`crate::dead_letters`]).
//! - `cdc`: [`advance_watermarks`] records, in the projector's apply transaction, how far each
//!   partition has been applied; in that same transaction the projector marks the records it
//!   moved past without applying them outstanding (`hermet_projector_dead_letters`, see
//!   [`crate::dead_letters`]).
//! - [`covers`]: whether a view has applied everything up to an LSN (read-your-writes).
//!
//! The contract of [`covers`]: it never says a write is applied while one of its changes is
//! pending, set aside or dead-lettered. Dead letters are why a position alone is not enough: the
//! partition moves on past a record it could not apply, and so does the watermark.

use deadpool_postgres::Transaction;
use hermet_core::change::RowChange;
use hermet_core::Lsn;

use crate::{now_ms, StoreError, SyncMode};

/// Queues a command's changes for the outbox worker (same transaction as the command).
pub async fn enqueue(tx: &Transaction<'_>, changes: &[RowChange]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_value(changes).map_err(|e| StoreError::Decode(e.to_string()))?;
    let stmt = tx
        .prepare_cached("INSERT INTO hermet_outbox (changes, created_at) VALUES ($1, $2)")
        .await?;
    tx.execute(&stmt, &[&json, &now_ms()]).await?;
    Ok(())
}

/// An outbox row claimed by a worker.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub changes: Vec<RowChange>,
    pub created_at: i64,
}

/// Claims up to `limit` outbox rows, oldest first, skipping rows other workers hold. A row
/// whose JSON does not decode comes back with `Err`, to be set aside.
pub async fn take_outbox(
    tx: &Transaction<'_>,
    limit: i64,
) -> Result<Vec<(i64, Result<OutboxRow, String>)>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, changes, created_at FROM hermet_outbox
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let rows = tx.query(&stmt, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let json: serde_json::Value = r.get(1);
            let created_at: i64 = r.get(2);
            let row = serde_json::from_value::<Vec<RowChange>>(json)
                .map(|changes| OutboxRow {
                    id,
                    changes,
                    created_at,
                })
                .map_err(|e| format!("undecodable outbox row: {e}"));
            (id, row)
        })
        .collect())
}

/// Deletes applied outbox rows.
pub async fn finish_outbox(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached("DELETE FROM hermet_outbox WHERE id = ANY($1)")
        .await?;
    tx.execute(&stmt, &[&ids]).await?;
    Ok(())
}

/// Progress of one partition in one apply.
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    pub applied_lsn: i64,
    pub next_offset: i64,
    pub commit_ts_ms: Option<i64>,
}

/// Records partition progress; never moves an LSN or offset backwards. Dead letters of the same
/// batch are marked first ([`crate::dead_letters::record_dead_letters`]).
pub async fn advance_watermarks(
    tx: &Transaction<'_>,
    projector: &str,
    progress: &[PartitionProgress],
) -> Result<(), StoreError> {
    if progress.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = progress.iter().map(|p| p.topic.as_str()).collect();
    let parts: Vec<i32> = progress.iter().map(|p| p.partition).collect();
    let lsns: Vec<i64> = progress.iter().map(|p| p.applied_lsn).collect();
    let offsets: Vec<i64> = progress.iter().map(|p| p.next_offset).collect();
    let ts: Vec<Option<i64>> = progress.iter().map(|p| p.commit_ts_ms).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO hermet_projector_watermarks AS w
                 (projector, topic, partition, applied_lsn, next_offset, commit_ts_ms, updated_at)
             SELECT $1, u.* , $7 FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[]) AS u
             ON CONFLICT (projector, topic, partition) DO UPDATE SET
                 applied_lsn  = GREATEST(w.applied_lsn, excluded.applied_lsn),
                 next_offset  = GREATEST(w.next_offset, excluded.next_offset),
                 commit_ts_ms = GREATEST(w.commit_ts_ms, excluded.commit_ts_ms),
                 updated_at   = excluded.updated_at",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&projector, &topics, &parts, &lsns, &offsets, &ts, &now_ms()],
    )
    .await?;
    Ok(())
}

/// What a projector's coverage is judged on: its name (`hermet_projector_watermarks.projector`)
/// and, in `cdc`, the topics it consumes and their partitions in all. Only those topics count,
/// so rows left by a topic the projector no longer reads cannot make a write look applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub projector: String,
    pub topics: Vec<String>,
    /// Partitions of `topics` together: every one must have reported before anything is covered.
    pub partitions: i64,
}

impl Coverage {
    /// `projector` over `topics` of `partitions_per_topic` partitions each.
    pub fn new(projector: String, topics: Vec<String>, partitions_per_topic: i32) -> Coverage {
        Coverage {
            projector,
            partitions: topics.len() as i64 * i64::from(partitions_per_topic),
            topics,
        }
    }
}

/// Whether the view maintained by `cov.projector` has applied every write up to `lsn`:
/// `lsn <= covered_upto(cov)`.
pub async fn covers(
    client: &deadpool_postgres::Client,
    mode: SyncMode,
    cov: &Coverage,
    lsn: Lsn,
) -> Result<bool, StoreError> {
    Ok(covered(client, mode, cov)
        .await?
        .is_some_and(|upto| upto >= lsn))
}

/// The newest LSN up to which every write is applied for all of `projectors`, so one call
/// answers [`covers`] for any number of LSNs (pollers that track many). `None`: not even the
/// oldest write is known to be covered.
pub async fn covered_upto(
    client: &deadpool_postgres::Client,
    mode: SyncMode,
    projectors: &[Coverage],
) -> Result<Option<Lsn>, StoreError> {
    let mut upto = Lsn(u64::MAX);
    for p in projectors {
        match covered(client, mode, p).await? {
            Some(l) => upto = upto.min(l),
            None => return Ok(None),
        }
    }
    Ok(Some(upto))
}

/// Forgets `projector`'s progress on topics outside `topics` (ones it read under an earlier
/// configuration), so status reports show only the partitions that count.
pub async fn retire_watermarks(
    client: &deadpool_postgres::Client,
    projector: &str,
    topics: &[String],
) -> Result<u64, StoreError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM hermet_projector_watermarks WHERE projector = $1 AND topic <> ALL($2)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&projector, &topics]).await?)
}

/// The position every one of a projector's partitions has moved past (`$1` projector, `$2`
/// topics, `$3` partitions − 1): the `partitions`-th highest applied LSN among its topics.
const PASSED: &str = "SELECT applied_lsn FROM hermet_projector_watermarks
                       WHERE projector = $1 AND topic = ANY($2)
                       ORDER BY applied_lsn DESC OFFSET $3 LIMIT 1";

/// How far `cov.projector`'s partitions have moved in `cdc`, whether they applied each record
/// or dead-lettered it: progress for operators and tests, *not* read-your-writes (that is
/// [`covers`]). `None` while fewer than `cov.partitions` partitions reported.
pub async fn passed_upto(
    client: &deadpool_postgres::Client,
    cov: &Coverage,
) -> Result<Option<Lsn>, StoreError> {
    if cov.partitions <= 0 {
        return Ok(Some(Lsn(u64::MAX)));
    }
    let stmt = client.prepare_cached(PASSED).await?;
    let row = client
        .query_opt(&stmt, &[&cov.projector, &cov.topics, &(cov.partitions - 1)])
        .await?;
    Ok(row.map(|r| Lsn(r.get::<_, i64>(0).max(0) as u64)))
}

/// The coverage rule, in one place: the newest LSN `cov.projector`'s view has applied every
/// write up to.
///
/// - `dual_write`: everything (views change in the write's own transaction);
/// - `async`: just before the oldest outbox row still pending or set aside
///   (`hermet_outbox_dead`): `wal_lsn` is a lower bound of its commit, and a write's LSN is past
///   its commit, so a read for a write that is not applied yet always waits;
/// - `cdc`: every one of the projector's `partitions` has applied an event or a watermark
///   marker at or past it (markers come from the relay, so a quiet partition catches up too):
///   the `partitions`-th highest applied position among its topics; `None` while fewer
///   partitions reported. And never past the oldest record the projector dead-lettered and
///   nobody applied since (`hermet_projector_dead_letters`): its partition moved on, but the
///   write it belongs to is not applied until `dlq replay` applies it. Dead letters count
///   whatever topic they came from: one cannot make a write look applied.
///
/// One statement either way: readers poll it while they wait.
async fn covered(
    client: &deadpool_postgres::Client,
    mode: SyncMode,
    cov: &Coverage,
) -> Result<Option<Lsn>, StoreError> {
    match mode {
        SyncMode::DualWrite => Ok(Some(Lsn(u64::MAX))),
        SyncMode::Async => {
            let stmt = client
                .prepare_cached(
                    "SELECT (LEAST((SELECT min(wal_lsn) FROM hermet_outbox),
                                   (SELECT min(COALESCE(wal_lsn, '0/0')) FROM hermet_outbox_dead))
                             - '0/0'::pg_lsn)::bigint",
                )
                .await?;
            let oldest: Option<i64> = client.query_one(&stmt, &[]).await?.get(0);
            Ok(Some(Lsn(oldest.map_or(u64::MAX, |l| l.max(0) as u64))))
        }
        SyncMode::Cdc => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT ({PASSED}),
                            (SELECT min(lsn) FROM hermet_projector_dead_letters
                              WHERE projector = $1)"
                ))
                .await?;
            let row = client
                .query_one(
                    &stmt,
                    &[&cov.projector, &cov.topics, &(cov.partitions - 1).max(0)],
                )
                .await?;
            let (applied, dead): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
            let applied = if cov.partitions <= 0 {
                Some(Lsn(u64::MAX))
            } else {
                applied.map(|l| Lsn(l.max(0) as u64))
            };
            // Just before the dead letter: its change is at that LSN, its commit at or after it.
            let dead = dead.map(|l| Lsn((l.max(0) as u64).saturating_sub(1)));
            Ok(match (applied, dead) {
                (Some(a), Some(d)) => Some(a.min(d)),
                (a, None) => a,
                (None, Some(_)) => None,
            })
        }
    }
}
