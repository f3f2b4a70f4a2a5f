//! Whether transactions that logical decoding has already shipped are visible to new snapshots.
//!
//! # Why this exists
//!
//! PostgreSQL makes a commit durable (its commit record flushed to the WAL) *before* the
//! transaction leaves the proc array, which is what makes it visible to snapshots taken by other
//! sessions. Everything between the two — above all the wait for a synchronous standby
//! (`SyncRepWaitForLSN` in `RecordTransactionCommit`: the transaction "still show[s] as running
//! in the procarray"), but also a busy machine descheduling the committing backend — is a window
//! in which a logical-decoding client (our relay) can ship the transaction's changes, and Kafka
//! can deliver them, while a new snapshot still shows the rows as they were before.
//!
//! The projection is state-based: it takes keys from a change and re-reads current write-side
//! state. A look-up in that window builds rows from the state *before* the change it is applying,
//! and once that event is acknowledged nothing ever brings the change back. So a projector that
//! is fed by the WAL must not look anything up before every transaction of its batch is visible.
//!
//! # The check
//!
//! [`invisible`] takes the 32-bit transaction ids the change events carry (pgoutput's `Begin`
//! xid, Debezium's `source.txId`), widens each to a full `xid8` (below), and asks `pg_visible_in_snapshot(xid, pg_current_snapshot())`. A
//! transaction is "visible" once it is no longer running for a new snapshot; once that holds for
//! one snapshot it holds for every later one, on any session, so a caller may check on one
//! connection and then look up on another.
//!
//! Widening: a snapshot's `xmax` is one past the newest *finished* transaction, so a
//! transaction still running (the very case checked here) may have an xid at or above it. Each
//! 32-bit xid is therefore widened to the 64-bit id nearest to `xmax` (within ±2^31), which is
//! right for every transaction younger than 2^31 xids, whichever side of `xmax` it is on, and
//! across an epoch boundary. An id above `xmax` is never visible, which is the truth for a
//! transaction that has not finished. A replay of events more than 2^31 transactions old would be
//! judged to be in the future and waited for until the caller's bound. Ids below 3 (invalid,
//! bootstrap, frozen) are never running and count as visible.
//!
//! The check and the look-ups must reach the same server: the primary (`database.url`), never a
//! replica or a pooler that routes reads to one.
//!
//! The outbox (`async`) and dual-write paths do not need this: the outbox row becomes visible
//! atomically with the write it describes, and dual-write looks up inside the writing
//! transaction.

use crate::StoreError;

/// The first xid a normal transaction can have (`FirstNormalTransactionId`).
const FIRST_NORMAL_XID: u32 = 3;

/// Of `xids` (32-bit transaction ids of committed transactions), those still running for a
/// snapshot taken now. One round trip; an empty answer means every look-up from now on sees all
/// of them.
pub async fn invisible(
    client: &deadpool_postgres::Client,
    xids: &[u32],
) -> Result<Vec<u32>, StoreError> {
    let xids: Vec<i64> = xids
        .iter()
        .filter(|x| **x >= FIRST_NORMAL_XID)
        .map(|x| i64::from(*x))
        .collect();
    if xids.is_empty() {
        return Ok(Vec::new());
    }
    // `nx` is the snapshot's xmax as a 64-bit number (epoch << 32 | xid); `fx` is `x` widened to
    // the 64-bit id nearest to it (see the module docs). `+`/`-` bind tighter than `&`.
    let stmt = client
        .prepare_cached(
            "SELECT x FROM
                 (SELECT s, pg_snapshot_xmax(s)::text::bigint AS nx
                    FROM (SELECT pg_current_snapshot() AS s) AS cur) AS c,
                 UNNEST($1::bigint[]) AS x,
                 LATERAL (SELECT c.nx + (((x - (c.nx & 4294967295)) + 2147483648) & 4294967295)
                                 - 2147483648 AS fx) AS w
              WHERE w.fx >= 3 AND NOT pg_visible_in_snapshot(w.fx::text::xid8, c.s)",
        )
        .await?;
    let rows = client.query(&stmt, &[&xids]).await?;
    Ok(rows
        .iter()
        .map(|r| u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX))
        .collect())
}
