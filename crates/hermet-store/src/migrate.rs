//! Versioned migrations, applied in order, each once, under an advisory lock so concurrent
//! starters do not race. Then the read-side shards are created with the configured count
//! (a different count than the database already has is refused: changing it means a rebuild).

use tokio_postgres::Client;

use crate::StoreError;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "write_side",
        include_str!("../migrations/0001_write_side.sql"),
    ),
    (
        2,
        "read_side",
        include_str!("../migrations/0002_read_side.sql"),
    ),
    (3, "cdc", include_str!("../migrations/0003_cdc.sql")),
    (
        4,
        "projectors",
        include_str!("../migrations/0004_projectors.sql"),
    ),
    (5, "ops", include_str!("../migrations/0005_ops.sql")),
    (
        6,
        "derived_columns",
        include_str!("../migrations/0006_derived_columns.sql"),
    ),
    (
        7,
        "outstanding_dead_letters",
        include_str!("../migrations/0007_outstanding_dead_letters.sql"),
    ),
    (
        8,
        "hybrid_fanout",
        include_str!("../migrations/0008_hybrid_fanout.sql"),
    ),
    (
        9,
        "identity",
        include_str!("../migrations/0009_identity.sql"),
    ),
    (
        10,
        "send_function",
        include_str!("../migrations/0010_send_function.sql"),
    ),
    (
        11,
        "send_procedure",
        include_str!("../migrations/0011_send_procedure.sql"),
    ),
];

/// An arbitrary constant: the advisory lock key that serializes migrators.
const MIGRATION_LOCK: i64 = 0x6865_726d_6574;

/// Applies pending migrations and ensures `shards` read-side partitions. Returns the versions
/// applied by this call.
pub async fn migrate(client: &mut Client, shards: u32) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hermet_migrations (
             version    INT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM hermet_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| StoreError::Migration {
                version,
                name,
                source,
            })?;
        tx.execute(
            "INSERT INTO hermet_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tracing::info!(version, name, "migration applied");
        applied.push(version);
    }
    let shards = i32::try_from(shards)
        .map_err(|_| StoreError::Config(format!("shard count {shards} is too large")))?;
    tx.execute("SELECT hermet_ensure_shards($1)", &[&shards])
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) if db.code().code() == "HM001" || db.code().code() == "P0001" => {
                StoreError::Config(db.message().to_owned())
            }
            _ => StoreError::from(e),
        })?;
    tx.commit().await?;
    Ok(applied)
}
