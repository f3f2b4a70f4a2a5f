//! The dead letters: what a projector could not apply and moved past, kept until `hermet admin
//! dlq replay` applies it. This module owns both tables that hold them: no other hermet code writes
//! them, and besides it only [`crate::sync::covers`] reads them (it counts them as not applied).
//!
//! - `hermet_outbox_dead`: outbox rows set aside by the `async` worker. [`bury_outbox`] moves a
//!   row there (keeping its `wal_lsn`), [`list_buried_outbox`] and [`count_buried_outbox`]
//!   report them, [`unbury_outbox`] puts them all back into the outbox for the worker.
//! - `hermet_projector_dead_letters`: the Kafka records a consumer group sent to the dead-letter
//!   topic, by group, source topic, partition and offset (the topic holds the records
//!   themselves). [`record_dead_letters`] marks them in the transaction that moves the
//!   partition's watermark past them; [`clear_dead_letter`] forgets one in the transaction that
//!   replays it.
//!
//! The contract: a dead letter is in its table from the moment its partition (or the outbox)
//! moves past it until the transaction that applies it, so reads asking for their own writes
//! never take it for applied (`crate::sync::covers`).

use deadpool_postgres::{GenericClient, Transaction};

use crate::{now_ms, StoreError};

/// Moves an outbox row that keeps failing out of the way, keeping it (and its `wal_lsn`, which
/// reads keep waiting for) for replay.
pub async fn bury_outbox(
    tx: &Transaction<'_>,
    id: i64,
    error: &str,
    attempts: i32,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "WITH gone AS (DELETE FROM hermet_outbox WHERE id = $1 RETURNING id, changes, wal_lsn)
             INSERT INTO hermet_outbox_dead (id, changes, error, attempts, failed_at, wal_lsn)
             SELECT id, changes, $2, $3, $4, wal_lsn FROM gone
             ON CONFLICT (id) DO UPDATE SET error = excluded.error,
                 attempts = hermet_outbox_dead.attempts + excluded.attempts,
                 failed_at = excluded.failed_at,
                 wal_lsn = LEAST(hermet_outbox_dead.wal_lsn, excluded.wal_lsn)",
        )
        .await?;
    tx.execute(&stmt, &[&id, &error, &attempts, &now_ms()])
        .await?;
    Ok(())
}

/// Puts every set-aside outbox row back into the outbox (`hermet admin dlq replay`); returns
/// how many. A row keeps its `wal_lsn` (one set aside before it was kept counts as older than
/// any write), so reads go on waiting for it until a worker applies it.
pub async fn unbury_outbox(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let stmt = tx
        .prepare_cached(
            "WITH back AS (DELETE FROM hermet_outbox_dead RETURNING changes, failed_at, wal_lsn)
             INSERT INTO hermet_outbox (changes, created_at, wal_lsn)
             SELECT changes, failed_at, COALESCE(wal_lsn, '0/0') FROM back",
        )
        .await?;
    Ok(tx.execute(&stmt, &[]).await?)
}

/// An outbox row set aside, as `hermet admin dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuriedOutboxRow {
    pub id: i64,
    pub attempts: i32,
    pub error: String,
}

/// Every outbox row set aside, oldest first.
pub async fn list_buried_outbox(
    client: &impl GenericClient,
) -> Result<Vec<BuriedOutboxRow>, StoreError> {
    let rows = client
        .query(
            "SELECT id, attempts, error FROM hermet_outbox_dead ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| BuriedOutboxRow {
            id: r.get(0),
            attempts: r.get(1),
            error: r.get(2),
        })
        .collect())
}

/// How many outbox rows are set aside.
pub async fn count_buried_outbox(client: &impl GenericClient) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT count(*) FROM hermet_outbox_dead", &[])
        .await?;
    Ok(row.get(0))
}

/// A record a projector moves past without applying it (it went to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMark {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// A lower bound of the commit LSN of the record's transaction: the change's own LSN.
    /// `None` when the record says nothing (it could not be decoded): the partition's applied
    /// LSN before this batch is taken, which every later commit in the partition is past.
    pub lsn: Option<i64>,
    pub error: String,
}

/// Records dead-lettered records as outstanding (see [`crate::sync::covers`]). Call it in the transaction
/// that advances the partitions' watermarks past them, *before* [`crate::sync::advance_watermarks`] (a record
/// without an LSN takes the watermark as it was before the batch).
pub async fn record_dead_letters(
    tx: &Transaction<'_>,
    projector: &str,
    letters: &[DeadLetterMark],
) -> Result<(), StoreError> {
    if letters.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = letters.iter().map(|l| l.topic.as_str()).collect();
    let parts: Vec<i32> = letters.iter().map(|l| l.partition).collect();
    let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
    let lsns: Vec<Option<i64>> = letters.iter().map(|l| l.lsn).collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO hermet_projector_dead_letters AS d
                 (projector, topic, partition, source_offset, lsn, error, dead_at)
             SELECT $1, u.topic, u.partition, u.source_offset,
                    COALESCE(u.lsn, w.applied_lsn, 0), u.error, $7
               FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::text[])
                    AS u(topic, partition, source_offset, lsn, error)
               LEFT JOIN hermet_projector_watermarks w
                      ON w.projector = $1 AND w.topic = u.topic AND w.partition = u.partition
             ON CONFLICT (projector, topic, partition, source_offset) DO UPDATE SET
                 lsn = LEAST(d.lsn, excluded.lsn),
                 error = excluded.error,
                 dead_at = excluded.dead_at",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &projector,
            &topics,
            &parts,
            &offsets,
            &lsns,
            &errors,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

/// Forgets the outstanding dead letter of `projector` at `topic`/`partition`/`offset`; call it
/// in the transaction that applies the record. Returns whether there was one.
pub async fn clear_dead_letter(
    tx: &Transaction<'_>,
    projector: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<bool, StoreError> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM hermet_projector_dead_letters
              WHERE projector = $1 AND topic = $2 AND partition = $3 AND source_offset = $4",
        )
        .await?;
    Ok(tx
        .execute(&stmt, &[&projector, &topic, &partition, &offset])
        .await?
        > 0)
}
