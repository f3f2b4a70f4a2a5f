//! The relay's catalog side: the captured tables as PostgreSQL describes them, and the slot,
//! publication and state row the relay needs before it streams (created if missing; a slot lost
//! after its snapshot completed is an error, never silently recreated).

use super::*;

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(super) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) fn split_table(t: &str) -> (String, String) {
    match t.split_once('.') {
        Some((s, n)) => (s.to_owned(), n.to_owned()),
        None => ("public".to_owned(), t.to_owned()),
    }
}

/// A captured table as the catalog describes it.
pub(super) struct CatalogTable {
    pub(super) relation: Arc<RelationBody>,
    pub(super) key_columns: Vec<String>,
}

pub(super) async fn catalog_table(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<CatalogTable, RelayError> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?
        .ok_or_else(|| RelayError::Config(format!("table {schema}.{name} does not exist")))?;
    let oid: u32 = row.get(0);
    let ident: String = row.get(1);
    let cols = client
        .query(
            "SELECT a.attname, a.atttypid, a.atttypmod,
                    COALESCE(a.attnum = ANY(i.indkey::int2[]), false) AS is_key
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(cols.len());
    let mut key_columns = Vec::new();
    for c in &cols {
        let name: String = c.get(0);
        let is_key: bool = c.get(3);
        if is_key {
            key_columns.push(name.clone());
        }
        columns.push(RelColumn {
            flags: if is_key { RelColumn::KEY_FLAG } else { 0 },
            name,
            type_oid: c.get(1),
            type_modifier: c.get(2),
        });
    }
    let replica_identity = ident
        .bytes()
        .next()
        .and_then(ReplicaIdentity::from_byte)
        .unwrap_or(ReplicaIdentity::Default);
    Ok(CatalogTable {
        relation: Arc::new(RelationBody {
            id: oid,
            namespace: schema.to_owned(),
            name: name.to_owned(),
            replica_identity,
            columns,
        }),
        key_columns,
    })
}

/// What the relay knows about its slot at start.
pub(super) enum SlotState {
    /// Snapshot done before: stream from the slot.
    Streaming,
    /// No usable slot: create one and snapshot.
    Fresh,
}

pub(super) async fn prepare(client: &Client, cfg: &RelayConfig) -> Result<SlotState, RelayError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hermet_cdc_state (
                 slot_name     TEXT PRIMARY KEY,
                 snapshot_done BOOLEAN NOT NULL,
                 created_at    TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    let has_pub = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&cfg.publication],
        )
        .await?
        .is_some();
    if !has_pub {
        let tables: Vec<String> = cfg
            .tables
            .iter()
            .map(|t| {
                let (s, n) = split_table(t);
                format!("{}.{}", quote_ident(&s), quote_ident(&n))
            })
            .collect();
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&cfg.publication),
                tables.join(", ")
            ))
            .await?;
        tracing::info!(publication = %cfg.publication, "publication created");
    }
    let slot = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
        .is_some();
    let done: Option<bool> = client
        .query_opt(
            "SELECT snapshot_done FROM hermet_cdc_state WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
        .map(|r| r.get(0));
    match (slot, done) {
        (true, Some(true)) => Ok(SlotState::Streaming),
        (false, Some(true)) => Err(RelayError::SlotLost {
            slot: cfg.slot.clone(),
        }),
        (true, _) => {
            // Made by a relay that died before its snapshot completed: start over.
            tracing::warn!(slot = %cfg.slot, "dropping a slot whose snapshot never completed");
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
                .await?;
            client
                .execute(
                    "DELETE FROM hermet_cdc_state WHERE slot_name = $1",
                    &[&cfg.slot],
                )
                .await?;
            Ok(SlotState::Fresh)
        }
        (false, _) => {
            client
                .execute(
                    "DELETE FROM hermet_cdc_state WHERE slot_name = $1",
                    &[&cfg.slot],
                )
                .await?;
            Ok(SlotState::Fresh)
        }
    }
}
