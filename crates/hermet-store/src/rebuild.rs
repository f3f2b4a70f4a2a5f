//! Online rebuild of the read side from the write side, into shadow tables swapped in atomically.
//!
//! # Steps
//!
//! 1. **Build.** In one `REPEATABLE READ` transaction (snapshot `S0`, whose WAL position
//!    `pg_current_wal_lsn()` is reported), every view row and reverse-index entry is inserted
//!    into `<table>_shadow` — same columns, same hash partitions — from the rebuild oracle
//!    ([`oracle`]) with `INSERT … SELECT`, in owner-id ranges so progress can be shown. The
//!    shadow gets its primary key and indexes after the load (copied from the live table's
//!    catalog), then `ANALYZE`.
//! 2. **Catch up.** Each pass opens a new `REPEATABLE READ` snapshot `Si` and finds the
//!    write-side rows changed after `S(i-1)`: rows whose `xmin` is at or above the `xmin` of
//!    `S(i-1)` (compared by `age()`), as every transaction not visible in `S(i-1)` is. Every view key that depends on such a row is recomputed from the oracle as of `Si`
//!    and written over the shadow's row. Passes repeat until few keys change.
//! 3. **Swap.** One transaction: `LOCK` the live tables `IN EXCLUSIVE MODE` (writers wait,
//!    readers go on), take snapshot `Sf`, do a last catch-up pass from the previous snapshot,
//!    then `ALTER TABLE … RENAME` live → `<table>_retired` and shadow → live, the two views'
//!    partitions likewise (`<table>_<n>` → `<table>_retired_<n>`, `<table>_shadow_<n>` →
//!    `<table>_<n>`: list reads name partitions, see [`crate::shard`]), and commit. Reads wait
//!    only for the renames.
//! 4. **Clean up.** The retired tables are dropped a partition at a time; the reverse indexes'
//!    partitions, and the new constraints and indexes, get the live names back. The clean-up
//!    is idempotent and also runs before a rebuild, so a rebuild killed at any point leaves
//!    nothing that breaks the next.
//!
//! # Contract: writes that land during the rebuild
//!
//! The rebuild never reads the live read side, so it repairs anything wrong there, and it does
//! not depend on the sync mode. Every view row is a function of write-side rows (the oracle);
//! write-side rows are never deleted and messages are insert-only, each insert bumping its
//! channel's `last_seq` in the same transaction. A write `W` that commits
//!
//! - **before `Sf`**: committed in some interval `(S(i-1), Si]` (or before `S0`). Every
//!   write-side row it changed has an `xmin` at or above `S(i-1)`'s `xmin` (its own, or a
//!   later writer's), so pass `i` (the swap's pass when `Si` is `Sf`) recomputes every key
//!   depending on it from `Si`, which contains `W`. The shadow therefore holds, for every key,
//!   the oracle as of a snapshot that includes `W`.
//! - **after `Sf`**: its view changes are applied by the normal projection after the swap, to
//!   the new tables: in `dual_write` the command's own view upsert waits for the `EXCLUSIVE`
//!   lock and, once the rename commits, PostgreSQL resolves the table name again; in `async` and
//!   `cdc` the projection transaction that carries `W` looks up the write side after `W`
//!   is visible (the outbox row becomes visible with `W`; the cdc projectors wait for it,
//!   `hermet_store::visibility`), so it commits after `Sf`, i.e. after the swap (it cannot hold a write lock on the
//!   live tables while we do). Conversely, any transaction that wrote to the old live tables
//!   held its lock until it committed, and `Sf` is taken only once the `EXCLUSIVE` lock is
//!   granted: all of those committed before `Sf`, with look-ups older still.
//!
//! Write-side commands use no savepoints today; the `xmin` test above stays right if they do.
//!
//! Projections are idempotent, state-based and version-guarded, so everything the projection
//! applies after the swap — also events of writes already in the shadow, such as a `cdc`
//! projector lagging behind or replaying — only confirms or advances rows. Hence, once writes stop
//! and the pipeline drains, the read side equals the oracle, in every mode.
//!
//! Only table, partition, constraint and index names are formatted into SQL, and only names built
//! from the fixed table names below or read from the catalog and checked by [`ident`]; index and
//! key definitions are the server's own (`pg_get_indexdef`, `pg_get_constraintdef`).

use std::time::Instant;

use deadpool_postgres::{Client, GenericClient, Pool};
use hermet_core::projection::ReadModel;
use tokio_postgres::IsolationLevel;

use crate::{now_ms, oracle, views, StoreError};

/// An arbitrary constant: the advisory lock that lets one rebuild run at a time.
const REBUILD_LOCK: i64 = 0x6865_726d_6574_7262;

/// The rebuilt tables, in the order the projection writes them (`views::apply_batch`), which is
/// the order they are locked in: the same order cannot deadlock with a projection batch.
const TABLES: [(&str, ReadModel); 5] = [
    ("user_conversation_view", ReadModel::Conversations),
    ("channel_view", ReadModel::Conversations),
    ("user_contact_view", ReadModel::Contacts),
    ("conversation_reverse_index", ReadModel::Conversations),
    ("contact_reverse_index", ReadModel::Contacts),
];

/// Progress of a rebuild, for a progress bar.
pub trait Progress: Send + Sync {
    /// A new phase; `total` rows when it is known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more rows done in the current phase.
    fn rows(&self, n: u64);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn rows(&self, _: u64) {}
}

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub read_models: Vec<ReadModel>,
    /// Conversation preview length, as configured.
    pub preview_chars: i32,
    /// Rows per `INSERT … SELECT` of the build (by owner-id range), roughly.
    pub chunk_rows: u64,
    /// Catch-up passes before the swap at most; they stop earlier once a pass finds at most
    /// `settle_keys` keys.
    pub max_passes: u32,
    pub settle_keys: u64,
    /// How long the swap and each renaming statement of the clean-up wait for their locks
    /// before they give up and try again (while they wait, new readers of that table queue
    /// behind them, so this bounds how long a read can be held up).
    pub lock_timeout_ms: u64,
    /// Attempts of the swap and of each renaming statement.
    pub swap_attempts: u32,
}

impl RebuildOptions {
    pub fn new(read_models: Vec<ReadModel>, preview_chars: i32) -> Self {
        RebuildOptions {
            read_models,
            preview_chars,
            chunk_rows: 100_000,
            max_passes: 5,
            settle_keys: 1_000,
            lock_timeout_ms: 1_000,
            swap_attempts: 20,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub tables: Vec<&'static str>,
    /// `pg_current_wal_lsn()` in the build snapshot.
    pub snapshot_lsn: String,
    pub rows_built: u64,
    pub build_secs: f64,
    pub index_secs: f64,
    /// Keys recomputed by each catch-up pass before the swap.
    pub catch_up_keys: Vec<u64>,
    /// Keys recomputed under the swap's lock.
    pub swap_keys: u64,
    pub swap_ms: f64,
    pub swap_attempts: u32,
    pub total_secs: f64,
}

/// Rebuilds the chosen read models online. Needs two connections from `pool`.
pub async fn rebuild(
    pool: &Pool,
    opts: &RebuildOptions,
    progress: &dyn Progress,
) -> Result<RebuildReport, StoreError> {
    let started = Instant::now();
    let mut client = pool.get().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&REBUILD_LOCK])
        .await?
        .get(0);
    if !locked {
        return Err(StoreError::conflict(
            "rebuild_running",
            "another rebuild is running on this database",
        ));
    }
    // This session only: JIT costs more than it saves on the many mid-sized statements, and
    // the shadow indexes sort in memory.
    client
        .batch_execute("SET jit = off; SET maintenance_work_mem = '256MB'")
        .await?;
    client
        .execute(
            "SELECT set_config('lock_timeout', $1, false)",
            &[&format!("{}ms", opts.lock_timeout_ms)],
        )
        .await?;
    // When the swap or a rename deadlocks with a command, the rebuild should be the one to give
    // way (it retries); the session that waits shortest runs the deadlock check and is the one
    // aborted. Only superusers may set this; without it the default applies.
    if let Err(e) = client.batch_execute("SET deadlock_timeout = '100ms'").await {
        tracing::debug!(error = %e, "deadlock_timeout not lowered");
    }
    let result = run(&mut client, opts, progress, started).await;
    // The lock is the session's: released here, or when the connection ends if this fails.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&REBUILD_LOCK])
        .await;
    let _ = client
        .batch_execute("RESET jit; RESET maintenance_work_mem; RESET lock_timeout")
        .await;
    result
}

async fn run(
    client: &mut Client,
    opts: &RebuildOptions,
    progress: &dyn Progress,
    started: Instant,
) -> Result<RebuildReport, StoreError> {
    let tables: Vec<&'static str> = TABLES
        .iter()
        .filter(|(_, v)| opts.read_models.contains(v))
        .map(|(t, _)| *t)
        .collect();
    if tables.is_empty() {
        return Err(StoreError::Config("no view chosen to rebuild".into()));
    }
    let mut report = RebuildReport {
        tables: tables.clone(),
        ..RebuildReport::default()
    };
    let shards: i32 = match client
        .query_opt("SELECT value FROM hermet_meta WHERE key = 'shards'", &[])
        .await?
    {
        Some(r) => r
            .get::<_, String>(0)
            .parse()
            .map_err(|_| StoreError::Decode("hermet_meta shards is not a number".into()))?,
        None => {
            return Err(StoreError::Config(
                "the read side has no shards: run `hermet migrate` first".into(),
            ))
        }
    };

    progress.phase("preparing shadow tables", None);
    // Leftovers of an interrupted rebuild of any view go first (one rebuild runs at a time).
    for (t, _) in &TABLES {
        cleanup(client, t, opts.swap_attempts).await?;
    }
    for t in &tables {
        create_shadow(client, t, shards).await?;
    }

    // 1. Build from one snapshot.
    let t0 = Instant::now();
    let (mut snapshot, rows) = build(client, &tables, opts, progress, &mut report).await?;
    report.rows_built = rows;
    report.build_secs = t0.elapsed().as_secs_f64();
    tracing::info!(rows, secs = report.build_secs, lsn = %report.snapshot_lsn, "shadow built");

    let t1 = Instant::now();
    progress.phase("indexing shadow tables", Some(tables.len() as u64));
    for t in &tables {
        for ddl in shadow_index_ddl(client, t).await? {
            client.batch_execute(&ddl).await?;
        }
        client
            .batch_execute(&format!("ANALYZE {}", ident(&format!("{t}_shadow"))?))
            .await?;
        progress.rows(1);
    }
    report.index_secs = t1.elapsed().as_secs_f64();

    // 2. Catch up while traffic flows.
    for pass in 0..opts.max_passes {
        progress.phase(&format!("catching up (pass {})", pass + 1), None);
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let next = current_snapshot(&tx).await?;
        let keys = refresh(&tx, &tables, &snapshot, opts.preview_chars).await?;
        tx.commit().await?;
        snapshot = next;
        progress.rows(keys);
        report.catch_up_keys.push(keys);
        tracing::info!(pass, keys, "rebuild caught up");
        if keys <= opts.settle_keys {
            break;
        }
    }

    // 3. Swap under the lock.
    progress.phase("swapping", None);
    let mut attempt = 0;
    let swapped = loop {
        attempt += 1;
        let t2 = Instant::now();
        match swap(client, &tables, &snapshot, opts.preview_chars).await {
            Ok(keys) => break Ok((keys, t2.elapsed().as_secs_f64() * 1000.0)),
            Err(e) if attempt < opts.swap_attempts && retryable(&e) => {
                tracing::warn!(attempt, error = %e, "swap did not get its locks, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
            Err(e) => break Err(e),
        }
    };
    let (keys, ms) = swapped?;
    report.swap_keys = keys;
    report.swap_ms = ms;
    report.swap_attempts = attempt;
    tracing::info!(keys, ms, attempt, "shadow tables swapped in");

    // 4. Clean up.
    progress.phase("dropping the retired tables", None);
    for t in &tables {
        cleanup(client, t, opts.swap_attempts).await?;
    }
    report.total_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Lock timeouts, deadlocks and serialization failures: the swap can try again.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Retry(_) => true,
        StoreError::Db(e) => e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        _ => false,
    }
}

/// Quotes a name after checking it is one of ours: lower-case letters, digits, underscores.
pub(crate) fn ident(name: &str) -> Result<String, StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(format!("\"{name}\""))
    } else {
        Err(StoreError::Decode(format!(
            "unexpected table or index name {name:?}"
        )))
    }
}

/// Partitions of `parent` (none when it does not exist).
async fn partitions(client: &impl GenericClient, parent: &str) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = to_regclass($1) ORDER BY 1",
            &[&parent],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The renames that give each partition of `parent` named `<from><n>` the name `<to><n>`.
async fn partition_renames(
    client: &impl GenericClient,
    parent: &str,
    from: &str,
    to: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for name in partitions(client, parent).await? {
        if let Some(n) = name
            .strip_prefix(from)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            out.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                ident(&name)?,
                ident(&format!("{to}{n}"))?
            ));
        }
    }
    Ok(out)
}

/// DDL statements per transaction in [`run_batched`]: few commits (each waits for a WAL flush)
/// without collecting the locks of thousands of partitions in one transaction. Only for tables
/// nothing else writes (shadow and retired ones): on live tables, holding one partition's lock
/// while waiting for the next could deadlock with a command.
const DDL_BATCH: usize = 64;

/// Runs `stmts` in transactions of [`DDL_BATCH`] statements, retrying a batch that waited too
/// long for a lock (a transaction that read the retired table before the swap may still hold it).
async fn run_batched(client: &Client, stmts: &[String], attempts: u32) -> Result<(), StoreError> {
    for chunk in stmts.chunks(DDL_BATCH) {
        let sql = format!("BEGIN; {}; COMMIT;", chunk.join("; "));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) => {
                    // A failed statement leaves the explicit transaction open and aborted.
                    let _ = client.batch_execute("ROLLBACK").await;
                    let e = StoreError::from(e);
                    if attempt >= attempts || !retryable(&e) {
                        return Err(e);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)))
                        .await;
                }
            }
        }
    }
    Ok(())
}

/// Drops a partitioned table a batch of partitions at a time.
async fn drop_partitioned(client: &Client, parent: &str, attempts: u32) -> Result<(), StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&parent])
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    let mut stmts = Vec::new();
    for p in partitions(client, parent).await? {
        stmts.push(format!("DROP TABLE {}", ident(&p)?));
    }
    stmts.push(format!("DROP TABLE {}", ident(parent)?));
    run_batched(client, &stmts, attempts).await
}

/// Idempotent clean-up around a rebuild of `t`: drops a retired table and an unswapped shadow,
/// and gives the live table's partitions, constraints and indexes their usual names back.
async fn cleanup(client: &Client, t: &str, attempts: u32) -> Result<(), StoreError> {
    drop_partitioned(client, &format!("{t}_retired"), attempts).await?;
    drop_partitioned(client, &format!("{t}_shadow"), attempts).await?;
    let mut stmts = partition_renames(client, t, &format!("{t}_shadow_"), &format!("{t}_")).await?;
    let cons = client
        .query(
            "SELECT conname::text FROM pg_constraint
              WHERE conrelid = to_regclass($1) AND conname LIKE '%\\_shadow'",
            &[&t],
        )
        .await?;
    for r in cons {
        let name: String = r.get(0);
        let base = name.trim_end_matches("_shadow");
        stmts.push(format!(
            "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
            ident(t)?,
            ident(&name)?,
            ident(base)?
        ));
    }
    run_each(client, &stmts, attempts).await?;
    // Indexes of the parent and of its partitions whose names still say "shadow", renamed
    // where the plain name is free (partition index names are the server's choice anyway).
    let idx = client
        .query(
            "SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
              WHERE (x.indrelid = to_regclass($1)
                     OR x.indrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass($1)))
                AND i.relname LIKE '%\\_shadow%'",
            &[&t],
        )
        .await?;
    let names: Vec<String> = idx.iter().map(|r| r.get(0)).collect();
    let renamed: Vec<String> = names.iter().map(|n| n.replacen("_shadow", "", 1)).collect();
    let free: Vec<bool> = client
        .query(
            "SELECT to_regclass(n) IS NULL FROM unnest($1::text[]) WITH ORDINALITY u(n, i) ORDER BY i",
            &[&renamed],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut stmts = Vec::new();
    for ((name, to), free) in names.iter().zip(&renamed).zip(free) {
        if free {
            stmts.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                ident(name)?,
                ident(to)?
            ));
        }
    }
    run_each(client, &stmts, attempts).await
}

/// Runs each statement in its own transaction, retrying lock timeouts and deadlocks: the
/// renames touch live tables, so they take one table's lock at a time, briefly.
async fn run_each(client: &Client, stmts: &[String], attempts: u32) -> Result<(), StoreError> {
    for stmt in stmts {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute(stmt).await.map_err(StoreError::from) {
                Ok(()) => break,
                Err(e) if attempt < attempts && retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "rename waited too long, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The one rebuilt table that is not partitioned: one row per group channel, read by channel id
/// (a user's few large groups), so it has no owner to shard by.
const UNPARTITIONED: &str = "channel_view";

/// `<t>_shadow`: the live table's columns (defaults, NOT NULL and any generated columns) and
/// partitioning, without indexes (they are built after the load).
async fn create_shadow(client: &Client, t: &str, shards: i32) -> Result<(), StoreError> {
    let shadow = format!("{t}_shadow");
    if t == UNPARTITIONED {
        client
            .batch_execute(&format!(
                "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)",
                ident(&shadow)?,
                ident(t)?
            ))
            .await?;
        return Ok(());
    }
    let key: Option<String> = client
        .query_one("SELECT pg_get_partkeydef(to_regclass($1))", &[&t])
        .await?
        .get(0);
    let key = key.ok_or_else(|| {
        StoreError::Config(format!(
            "{t} is not a partitioned table: run `hermet migrate`"
        ))
    })?;
    // `HASH (column)`, as migration 2 creates it.
    let col = key
        .strip_prefix("HASH (")
        .and_then(|k| k.strip_suffix(')'))
        .ok_or_else(|| StoreError::Decode(format!("unexpected partition key of {t}: {key}")))?;
    let mut ddl = format!(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED) PARTITION BY HASH ({});",
        ident(&shadow)?,
        ident(t)?,
        ident(col)?
    );
    for i in 0..shards {
        ddl.push_str(&format!(
            "CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {shards}, REMAINDER {i});",
            ident(&format!("{shadow}_{i}"))?,
            ident(&shadow)?,
        ));
    }
    // One transaction for the table and its partitions.
    if let Err(e) = client.batch_execute(&format!("BEGIN; {ddl} COMMIT;")).await {
        // A failed statement leaves the explicit transaction open and aborted.
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e.into());
    }
    Ok(())
}

/// The live table's primary key, unique constraints and indexes, for the shadow, named
/// `<name>_shadow` (renamed back after the swap).
async fn shadow_index_ddl(client: &Client, t: &str) -> Result<Vec<String>, StoreError> {
    let shadow = ident(&format!("{t}_shadow"))?;
    let mut out = Vec::new();
    for r in client
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u') ORDER BY conname",
            &[&t],
        )
        .await?
    {
        let (name, def): (String, String) = (r.get(0), r.get(1));
        out.push(format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {} {def}",
            ident(&format!("{name}_shadow"))?
        ));
    }
    for r in client
        .query(
            "SELECT i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid)
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
              WHERE x.indrelid = to_regclass($1)
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
              ORDER BY 1",
            &[&t],
        )
        .await?
    {
        let (name, unique, def): (String, bool, String) = (r.get(0), r.get(1), r.get(2));
        let using = def
            .find(" USING ")
            .map(|at| &def[at..])
            .ok_or_else(|| StoreError::Decode(format!("unexpected index definition: {def}")))?;
        out.push(format!(
            "CREATE {}INDEX {} ON {shadow}{using}",
            if unique { "UNIQUE " } else { "" },
            ident(&format!("{name}_shadow"))?
        ));
    }
    Ok(out)
}

async fn current_snapshot(tx: &deadpool_postgres::Transaction<'_>) -> Result<String, StoreError> {
    Ok(tx
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0))
}

/// The build's `INSERT … SELECT` for table `t` over owners in `[$lo, $hi]`; `$n` numbering
/// depends on whether the oracle takes the preview length.
fn build_sql(t: &str) -> Result<(String, bool), StoreError> {
    let shadow = ident(&format!("{t}_shadow"))?;
    Ok(match t {
        "user_conversation_view" => (
            views::with_derived_columns(
                &format!(
                    "INSERT INTO {shadow} ({}, $DERIVED_COLUMNS, updated_at)
                     SELECT b.*, $DERIVED_VALUES, $4::bigint FROM ({}) b WHERE b.user_id BETWEEN $2 AND $3",
                    oracle::STORED_CONVERSATION_COLUMNS,
                    oracle::BUILD_CONVERSATIONS
                ),
                "b",
            ),
            true,
        ),
        "user_contact_view" => (
            format!(
                "INSERT INTO {shadow} ({}, updated_at)
                 SELECT b.*, $3::bigint FROM ({}) b WHERE b.user_id BETWEEN $1 AND $2",
                oracle::STORED_CONTACT_COLUMNS,
                oracle::EXPECTED_CONTACTS
            ),
            false,
        ),
        "conversation_reverse_index" => (
            format!(
                "INSERT INTO {shadow} (peer_user_id, owner_user_id, channel_id)
                 SELECT b.* FROM ({}) b WHERE b.owner_user_id BETWEEN $1 AND $2",
                oracle::EXPECTED_CONVERSATION_REFS
            ),
            false,
        ),
        _ => (
            format!(
                "INSERT INTO {shadow} (contact_user_id, owner_user_id)
                 SELECT b.* FROM ({}) b WHERE b.owner_user_id BETWEEN $1 AND $2",
                oracle::EXPECTED_CONTACT_REFS
            ),
            false,
        ),
    })
}

/// Step 1: fills the shadow tables from one snapshot. Returns the snapshot and the rows.
async fn build(
    client: &mut Client,
    tables: &[&'static str],
    opts: &RebuildOptions,
    progress: &dyn Progress,
    report: &mut RebuildReport,
) -> Result<(String, u64), StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let r = tx
        .query_one(
            "SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text",
            &[],
        )
        .await?;
    let snapshot: String = r.get(0);
    report.snapshot_lsn = r.get(1);
    // Exact row counts of this snapshot, for the progress bar.
    let c = tx
        .query_one(
            "SELECT (SELECT count(*) FROM channel_members),
                    (SELECT count(*) FROM channel_members m JOIN channels c ON c.id = m.channel_id
                      WHERE c.channel_type = 'single'),
                    (SELECT count(*) FROM friendships),
                    (SELECT COALESCE(min(id), 0) FROM users),
                    (SELECT COALESCE(max(id), 0) FROM users),
                    (SELECT count(*) FROM channels WHERE channel_type = 'group')",
            &[],
        )
        .await?;
    let (members, single_members, friendships, lo, hi, groups): (i64, i64, i64, i64, i64, i64) =
        (c.get(0), c.get(1), c.get(2), c.get(3), c.get(4), c.get(5));
    let total: u64 = tables
        .iter()
        .map(|t| match *t {
            "user_conversation_view" => members,
            "channel_view" => groups,
            "conversation_reverse_index" => single_members,
            _ => friendships,
        })
        .map(|n| n.max(0) as u64)
        .sum();
    progress.phase("building shadow tables", Some(total));
    let chunks = (total / opts.chunk_rows.max(1)).clamp(1, 10_000) as i64;
    let width = ((hi - lo + 1).max(1) + chunks - 1) / chunks;
    let now = now_ms();
    let mut rows = 0u64;
    // The channel rows have no owner to range over: one statement for all of them.
    if tables.contains(&UNPARTITIONED) {
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO {} ({}, updated_at) SELECT b.*, $2::bigint FROM ({}) b",
                    ident(&format!("{UNPARTITIONED}_shadow"))?,
                    oracle::STORED_CHANNEL_COLUMNS,
                    oracle::EXPECTED_CHANNELS
                ),
                &[&opts.preview_chars, &now],
            )
            .await?;
        rows += n;
        progress.rows(n);
    }
    let mut stmts = Vec::new();
    for t in tables.iter().filter(|t| **t != UNPARTITIONED) {
        let (sql, takes_preview) = build_sql(t)?;
        stmts.push((tx.prepare(&sql).await?, takes_preview));
    }
    let mut start = lo;
    while start <= hi {
        let end = start.saturating_add(width - 1).min(hi);
        for (stmt, takes_preview) in &stmts {
            let n = if *takes_preview {
                tx.execute(stmt, &[&opts.preview_chars, &start, &end, &now])
                    .await?
            } else if stmt.params().len() == 3 {
                tx.execute(stmt, &[&start, &end, &now]).await?
            } else {
                tx.execute(stmt, &[&start, &end]).await?
            };
            rows += n;
            progress.rows(n);
        }
        start = end.saturating_add(1);
        if end == i64::MAX {
            break;
        }
    }
    tx.commit().await?;
    Ok((snapshot, rows))
}

/// Write-side rows that may have changed after a snapshot: written by a transaction at or
/// after the snapshot's `xmin`, i.e. not certainly finished before it. `$1` is that `xmin`'s
/// `age()` in the current transaction (stable within it), so the test is one built-in call per
/// row: `age(xmin) <= $2`. Frozen and special xids have the largest age and never match.
///
/// This is a superset of "not visible in the snapshot", and unlike `pg_visible_in_snapshot` it is
/// right for subtransaction ids too (a subtransaction's id is above its parent's, and a parent
/// running at the snapshot is at or above its `xmin`); the few extra rows only cost a
/// recomputation.
const CHANGED: &str = "age(xmin) <= $1::int";

/// Conversation keys depending on write-side rows changed after the snapshot: members of changed
/// channels (a message bumps its channel's `last_seq`), changed memberships, single chats of
/// changed users (their peer's row shows them), and single chats of changed friendships (the
/// remark name).
fn dirty_conversations() -> String {
    format!(
        "WITH fu AS (SELECT id FROM users WHERE {CHANGED}),
              fc AS (SELECT id FROM channels WHERE {CHANGED}),
              fm AS (SELECT channel_id, user_id FROM channel_members WHERE {CHANGED}),
              ff AS (SELECT user_id, friend_id FROM friendships WHERE {CHANGED})
         INSERT INTO hermet_rebuild_conv (user_id, channel_id)
         SELECT m.user_id, m.channel_id FROM channel_members m JOIN fc ON fc.id = m.channel_id
         UNION SELECT user_id, channel_id FROM fm
         UNION SELECT m.user_id, m.channel_id
                 FROM fu JOIN channels c ON c.channel_type = 'single' AND c.pair_low = fu.id
                 JOIN channel_members m ON m.channel_id = c.id
         UNION SELECT m.user_id, m.channel_id
                 FROM fu JOIN channels c ON c.channel_type = 'single' AND c.pair_high = fu.id
                 JOIN channel_members m ON m.channel_id = c.id
         UNION SELECT ff.user_id, c.id
                 FROM ff JOIN channels c ON c.channel_type = 'single'
                  AND c.pair_low = LEAST(ff.user_id, ff.friend_id)
                  AND c.pair_high = GREATEST(ff.user_id, ff.friend_id)"
    )
}

/// Contact keys depending on rows changed after the snapshot: changed friendships and friendships
/// showing a changed user.
fn dirty_contacts() -> String {
    format!(
        "WITH fu AS (SELECT id FROM users WHERE {CHANGED}),
              ff AS (SELECT user_id, friend_id FROM friendships WHERE {CHANGED})
         INSERT INTO hermet_rebuild_contact (user_id, contact_id)
         SELECT user_id, friend_id FROM ff
         UNION SELECT f.user_id, f.friend_id FROM friendships f JOIN fu ON fu.id = f.friend_id"
    )
}

/// Recomputes, in the shadow tables, every key depending on a write-side row changed after
/// `since`, from the transaction's snapshot. Returns the number of keys.
async fn refresh(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: &[&'static str],
    since: &str,
    preview_chars: i32,
) -> Result<u64, StoreError> {
    // In the swap this is the first query after LOCK: it takes the snapshot the pass reads.
    let age: i32 = tx
        .query_one(
            "SELECT age((pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint % 4294967296)::text::xid)",
            &[&since],
        )
        .await?
        .get(0);
    let conv = tables.contains(&"user_conversation_view");
    let contact = tables.contains(&"user_contact_view");
    let mut keys = 0;
    if tables.contains(&"channel_view") {
        let set: Vec<String> = oracle::STORED_CHANNEL_COLUMNS
            .split(',')
            .map(str::trim)
            .filter(|c| *c != "channel_id")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        // A channel row depends on its channel and the message at its `last_seq`, which was
        // inserted with the channel's update: changed channels cover both.
        keys += tx
            .execute(
                &format!(
                    "INSERT INTO channel_view_shadow ({}, updated_at)
                     SELECT b.*, $3::bigint FROM ({}) b
                      WHERE b.channel_id IN (SELECT id FROM channels WHERE age(xmin) <= $2::int)
                     ON CONFLICT (channel_id) DO UPDATE SET {}, updated_at = excluded.updated_at",
                    oracle::STORED_CHANNEL_COLUMNS,
                    oracle::EXPECTED_CHANNELS,
                    set.join(", ")
                ),
                &[&preview_chars, &age, &now_ms()],
            )
            .await?;
    }
    if conv {
        tx.batch_execute(
            "CREATE TEMP TABLE hermet_rebuild_conv (user_id BIGINT, channel_id BIGINT) ON COMMIT DROP",
        )
        .await?;
        keys += tx.execute(&dirty_conversations(), &[&age]).await?;
        tx.batch_execute("ANALYZE hermet_rebuild_conv").await?;
        let set: Vec<String> = oracle::STORED_CONVERSATION_COLUMNS
            .split(',')
            .chain(views::DERIVED_CONVERSATION_COLUMNS)
            .map(str::trim)
            .filter(|c| *c != "user_id" && *c != "channel_id")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        tx.execute(
            &views::with_derived_columns(
                &format!(
                    "INSERT INTO user_conversation_view_shadow ({}, $DERIVED_COLUMNS, updated_at)
                     SELECT b.*, $DERIVED_VALUES, $2::bigint FROM ({}) b
                      WHERE (b.user_id, b.channel_id) IN (SELECT user_id, channel_id FROM hermet_rebuild_conv)
                     ON CONFLICT (user_id, channel_id) DO UPDATE SET {}, updated_at = excluded.updated_at",
                    oracle::STORED_CONVERSATION_COLUMNS,
                    oracle::BUILD_CONVERSATIONS,
                    set.join(", ")
                ),
                "b",
            ),
            &[&preview_chars, &now_ms()],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO conversation_reverse_index_shadow (peer_user_id, owner_user_id, channel_id)
                 SELECT b.* FROM ({}) b
                  WHERE (b.owner_user_id, b.channel_id) IN (SELECT user_id, channel_id FROM hermet_rebuild_conv)
                 ON CONFLICT DO NOTHING",
                oracle::EXPECTED_CONVERSATION_REFS
            ),
            &[],
        )
        .await?;
    }
    if contact {
        tx.batch_execute(
            "CREATE TEMP TABLE hermet_rebuild_contact (user_id BIGINT, contact_id BIGINT) ON COMMIT DROP",
        )
        .await?;
        keys += tx.execute(&dirty_contacts(), &[&age]).await?;
        tx.batch_execute("ANALYZE hermet_rebuild_contact").await?;
        let set: Vec<String> = oracle::STORED_CONTACT_COLUMNS
            .split(',')
            .map(str::trim)
            .filter(|c| *c != "user_id" && *c != "contact_id")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        tx.execute(
            &format!(
                "INSERT INTO user_contact_view_shadow ({}, updated_at)
                 SELECT b.*, $1::bigint FROM ({}) b
                  WHERE (b.user_id, b.contact_id) IN (SELECT user_id, contact_id FROM hermet_rebuild_contact)
                 ON CONFLICT (user_id, contact_id) DO UPDATE SET {}, updated_at = excluded.updated_at",
                oracle::STORED_CONTACT_COLUMNS,
                oracle::EXPECTED_CONTACTS,
                set.join(", ")
            ),
            &[&now_ms()],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO contact_reverse_index_shadow (contact_user_id, owner_user_id)
                 SELECT b.* FROM ({}) b
                  WHERE (b.owner_user_id, b.contact_user_id) IN (SELECT user_id, contact_id FROM hermet_rebuild_contact)
                 ON CONFLICT DO NOTHING",
                oracle::EXPECTED_CONTACT_REFS
            ),
            &[],
        )
        .await?;
    }
    Ok(keys)
}

/// Step 3: lock, last catch-up pass, renames, in one transaction. Returns the keys recomputed.
async fn swap(
    client: &mut Client,
    tables: &[&'static str],
    since: &str,
    preview_chars: i32,
) -> Result<u64, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let live: Vec<String> = tables.iter().map(|t| ident(t)).collect::<Result<_, _>>()?;
    // LOCK first: a REPEATABLE READ snapshot is taken by the first query after it, so the
    // snapshot below sees every projection that wrote to the live tables.
    tx.batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", live.join(", ")))
        .await?;
    let keys = refresh(&tx, tables, since, preview_chars).await?;
    for t in tables {
        tx.batch_execute(&format!(
            "ALTER TABLE {} RENAME TO {}; ALTER TABLE {} RENAME TO {}",
            ident(t)?,
            ident(&format!("{t}_retired"))?,
            ident(&format!("{t}_shadow"))?,
            ident(t)?
        ))
        .await?;
        // The partitions of the listed views swap names too, in the same transaction: list
        // reads name the owner's partition (`shard`), so `<t>_<n>` must never be a retired one.
        // (The reverse indexes' partitions get their names back in the clean-up: fewer renames
        // while writers wait.)
        if !views::READ_BY_PARTITION.contains(t) {
            continue;
        }
        let mut renames = partition_renames(
            &tx,
            &format!("{t}_retired"),
            &format!("{t}_"),
            &format!("{t}_retired_"),
        )
        .await?;
        renames.extend(partition_renames(&tx, t, &format!("{t}_shadow_"), &format!("{t}_")).await?);
        if !renames.is_empty() {
            tx.batch_execute(&renames.join("; ")).await?;
        }
    }
    tx.commit().await?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_accepts_only_plain_names() {
        assert_eq!(
            ident("user_contact_view_shadow_3").ok().as_deref(),
            Some("\"user_contact_view_shadow_3\"")
        );
        assert!(ident("x\"; DROP TABLE users; --").is_err());
        assert!(ident("Users").is_err());
        assert!(ident("").is_err());
        assert!(ident(&"a".repeat(64)).is_err());
    }
}
