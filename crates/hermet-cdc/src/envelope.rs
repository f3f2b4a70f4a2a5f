//! Debezium-compatible change events, built from decoded pgoutput rows, and topic routing.
//!
//! # Contract
//!
//! The records are what Debezium's PostgreSQL connector writes with the Kafka Connect JSON
//! converter and `schemas.enable=false`, so a consumer written against Debezium's documentation
//! reads them unchanged:
//!
//! - **key**: the key columns of the row as a JSON object in column order, `{"id":5}` or
//!   `{"channel_id":1,"user_id":2}`; a null key for a table without key columns.
//! - **value**: `{"before":{..}|null,"after":{..}|null,"source":{..},"op":"c"|"u"|"d"|"r",
//!   "ts_ms":<relay time>,"transaction":null|{..}}` with
//!   `source = {"version","connector":"postgresql","name":<topic prefix>,"ts_ms":<commit time>,
//!   "snapshot":"true"|"false"|"first"|"last","db","sequence","schema","table","txId","lsn",
//!   "xmin":null}`. `sequence` is Debezium's `"[\"<last commit lsn>\",\"<lsn>\"]"` (LSNs as
//!   decimal strings, either may be `null`); `lsn` is the number of the change's WAL position.
//!   `transaction` is filled when transaction metadata is on (see [`TransactionTracker`]).
//! - **delete**: the delete event, then (with `tombstones_on_delete`, Debezium's default) a
//!   tombstone: same key, null value, so a compacted topic forgets the row. No tombstone for a
//!   null key.
//! - **primary key change**: like Debezium, an update that changes the key becomes a delete of
//!   the old key (plus tombstone) and a create of the new key, so every event for a key lands on
//!   that key's partition. The delete carries header `__debezium.newkey`, the create
//!   `__debezium.oldkey` (the other key, as JSON).
//! - **`before`**: the old row when pgoutput sent one: every column under REPLICA IDENTITY FULL;
//!   only the identity columns for an old key tuple (`'K'`), as Debezium does under
//!   REPLICA IDENTITY DEFAULT. `null` for an update without old tuple.
//!
//! # Unchanged TOAST values
//!
//! pgoutput does not send a TOASTed value that an update left unchanged. Like Debezium, such a
//! column is written as the placeholder [`UNAVAILABLE_VALUE`] (`"__debezium_unavailable_value"`;
//! for `bytea` columns the base64 of those bytes, `"X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="`,
//! again as Debezium does). **Consumers must read the placeholder as "keep the value you already
//! have", never as data and never as NULL.** It is never written as `null`. Unlike Debezium, when
//! the update also carries the full old row (REPLICA IDENTITY FULL, where PostgreSQL logs the old
//! value inline), the old value is used instead of the placeholder. A key column can never be the
//! placeholder: [`EnvelopeError::KeyUnavailable`] instead.
//!
//! # Column values (text format, by type OID)
//!
//! | PostgreSQL | JSON | Debezium (defaults) |
//! |---|---|---|
//! | `int2`, `int4`, `int8`, `oid` | number | same |
//! | `bool` | `true`/`false` | same |
//! | `float4`, `float8` | number; `"NaN"`, `"Infinity"`, `"-Infinity"` as strings | number |
//! | `numeric` | number if exact: an integer within `i64`/`u64` or a decimal of at most 15 significant digits; else the text as a string (also `NaN`, `±Infinity`) | `decimal.handling.mode=precise`: base64 of the unscaled bytes; `double`: number; `string`: string |
//! | `text`, `varchar`, `bpchar`, `name`, `char`, `uuid`, enums | string | same |
//! | `json`, `jsonb` | embedded JSON ([`JsonColumns::Embedded`], default) or the text as a string ([`JsonColumns::String`]) | string (`io.debezium.data.Json`) |
//! | `timestamp`, `timestamptz`, `date`, `time`, `timetz`, `interval` | string exactly as PostgreSQL prints it (`2024-05-06 07:08:09.123456+00`) | `time.precision.mode=adaptive`: `timestamp` epoch µs/ms number, `timestamptz` ISO-8601 string in UTC (`2024-05-06T07:08:09.123456Z`), `date` days since epoch, `time` µs since midnight, `interval` µs |
//! | `bytea` | base64 string | same (`binary.handling.mode=bytes`) |
//! | arrays, anything else | the text as a string | arrays as JSON arrays; others vary |
//!
//! So for the differing types (json with the default option, temporals, numeric, arrays) a
//! Debezium consumer gets the same field with a different value shape. hermet's own tables use
//! only `int8`, `int4`, `text` and `bool`, whose shapes are identical.
//!
//! Binary-format columns (`'b'`, only with pgoutput's `binary` option, which the relay does not
//! use) are converted for `bool`, the integers, the floats, the text types, `json`, `jsonb`,
//! `bytea` and `uuid`; anything else is [`EnvelopeError::UnsupportedBinary`].
//!
//! # Topics
//!
//! Debezium names a table's topic `<prefix>.<schema>.<table>`; the original design rerouted it
//! with a `RegexRouter` (`hermet\.public\.(.*)` → `$1.changed`). [`TopicRouter`] does the same
//! with a template, and names the transaction topic `<prefix>.transaction`.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

pub use hermet_core::change::Op;
use hermet_core::Lsn;

use crate::pgoutput::{
    Column, LogicalMessage, Oid, OldTuple, OldTupleKind, RelationBody, TupleData,
};

/// `source.version` of every event.
pub const HERMET_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `source.connector` of every event.
pub const CONNECTOR: &str = "postgresql";
/// Written for an unchanged TOASTed column (Debezium's `unavailable.value.placeholder` default).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";
/// Kafka header on the delete half of a primary key change: the new key.
pub const NEW_KEY_HEADER: &str = "__debezium.newkey";
/// Kafka header on the create half of a primary key change: the old key.
pub const OLD_KEY_HEADER: &str = "__debezium.oldkey";

mod topics;
mod values;

pub use topics::{RouteError, TopicRouter};
pub use values::column_value;

/// Type OIDs of the built-in types the conversion knows.
pub mod oid {
    use crate::pgoutput::Oid;
    pub const BOOL: Oid = 16;
    pub const BYTEA: Oid = 17;
    pub const CHAR: Oid = 18;
    pub const NAME: Oid = 19;
    pub const INT8: Oid = 20;
    pub const INT2: Oid = 21;
    pub const INT4: Oid = 23;
    pub const TEXT: Oid = 25;
    pub const OID: Oid = 26;
    pub const JSON: Oid = 114;
    pub const FLOAT4: Oid = 700;
    pub const FLOAT8: Oid = 701;
    pub const BPCHAR: Oid = 1042;
    pub const VARCHAR: Oid = 1043;
    pub const DATE: Oid = 1082;
    pub const TIME: Oid = 1083;
    pub const TIMESTAMP: Oid = 1114;
    pub const TIMESTAMPTZ: Oid = 1184;
    pub const INTERVAL: Oid = 1186;
    pub const TIMETZ: Oid = 1266;
    pub const NUMERIC: Oid = 1700;
    pub const UUID: Oid = 2950;
    pub const JSONB: Oid = 3802;
}

/// Why an event could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{table} has {expected} columns but the tuple has {found}")]
    ColumnCount {
        table: String,
        expected: usize,
        found: usize,
    },
    #[error("{table} has no column {column:?} to use as key")]
    UnknownKeyColumn { table: String, column: String },
    #[error("key column {table}.{column} is an unchanged TOAST value and no old value was sent")]
    KeyUnavailable { table: String, column: String },
    #[error("column {column} (type {type_oid}): {reason}")]
    InvalidValue {
        column: String,
        type_oid: Oid,
        reason: &'static str,
    },
    #[error("column {column}: binary format of type {type_oid} is not supported")]
    UnsupportedBinary { column: String, type_oid: Oid },
    #[error("serializing an event: {0}")]
    Json(String),
}

/// How `json`/`jsonb` columns are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonColumns {
    /// As JSON values inside the row (`"meta":{"a":1}`).
    Embedded,
    /// As strings holding the JSON text (`"meta":"{\"a\": 1}"`), as Debezium does. The default,
    /// so a consumer written for Debezium reads our topics unchanged.
    #[default]
    String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeOptions {
    pub json_columns: JsonColumns,
    /// Follow each delete with a tombstone (Debezium's `tombstones.on.delete`, default true).
    pub tombstones_on_delete: bool,
}

impl Default for EnvelopeOptions {
    fn default() -> Self {
        EnvelopeOptions {
            json_columns: JsonColumns::String,
            tombstones_on_delete: true,
        }
    }
}

/// A captured table: its relation and the columns that make the Kafka key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    relation: Arc<RelationBody>,
    key: Vec<usize>,
}

impl Table {
    /// Keyed by the columns pgoutput flags as replica identity: the primary key under REPLICA
    /// IDENTITY DEFAULT, the index columns under USING INDEX. Under REPLICA IDENTITY FULL pgoutput
    /// flags *every* column, so use [`Table::with_key_columns`] with the primary key there.
    pub fn new(relation: Arc<RelationBody>) -> Self {
        let key = relation.key_indexes();
        Table { relation, key }
    }

    /// Keyed by the named columns, in the given order.
    pub fn with_key_columns(
        relation: Arc<RelationBody>,
        names: &[&str],
    ) -> Result<Self, EnvelopeError> {
        let key = names
            .iter()
            .map(|name| {
                relation
                    .column_index(name)
                    .ok_or_else(|| EnvelopeError::UnknownKeyColumn {
                        table: format!("{}.{}", relation.namespace, relation.name),
                        column: (*name).to_owned(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Table { relation, key })
    }

    pub fn relation(&self) -> &Arc<RelationBody> {
        &self.relation
    }

    /// The schema (`pg_catalog` when pgoutput sent the empty namespace).
    pub fn schema(&self) -> &str {
        if self.relation.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.relation.namespace
        }
    }

    pub fn name(&self) -> &str {
        &self.relation.name
    }

    /// `<schema>.<table>`, Debezium's data collection name.
    pub fn data_collection(&self) -> String {
        format!("{}.{}", self.schema(), self.name())
    }

    pub fn key_indexes(&self) -> &[usize] {
        &self.key
    }

    fn qualified(&self) -> String {
        self.data_collection()
    }

    fn check(&self, tuple: &TupleData) -> Result<(), EnvelopeError> {
        if tuple.len() == self.relation.columns.len() {
            Ok(())
        } else {
            Err(EnvelopeError::ColumnCount {
                table: self.qualified(),
                expected: self.relation.columns.len(),
                found: tuple.len(),
            })
        }
    }
}

/// A row as a JSON object whose fields keep the table's column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row<'a> {
    fields: Vec<(&'a str, Value)>,
}

impl<'a> Row<'a> {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn fields(&self) -> &[(&'a str, Value)] {
        &self.fields
    }

    /// As a `serde_json::Value` (whose maps may not keep the column order).
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Every column of `tuple` as JSON. An unchanged TOAST column takes its value from `old` when
/// that has one, else becomes the placeholder.
pub fn row_json<'a>(
    table: &'a Table,
    tuple: &TupleData,
    old: Option<&TupleData>,
    options: &EnvelopeOptions,
) -> Result<Row<'a>, EnvelopeError> {
    table.check(tuple)?;
    let mut fields = Vec::with_capacity(tuple.len());
    for (i, (col, value)) in table
        .relation
        .columns
        .iter()
        .zip(&tuple.columns)
        .enumerate()
    {
        let value = resolve_toast(value, old, i);
        fields.push((col.name.as_str(), column_value(col, value, options)?));
    }
    Ok(Row { fields })
}

/// The `before` row of an old tuple: every column of a full old row, only the replica identity
/// columns of an old key tuple (the others were not sent).
pub fn old_row_json<'a>(
    table: &'a Table,
    old: &OldTuple,
    options: &EnvelopeOptions,
) -> Result<Row<'a>, EnvelopeError> {
    match old.kind {
        OldTupleKind::Full => row_json(table, &old.tuple, None, options),
        OldTupleKind::Key => {
            table.check(&old.tuple)?;
            let mut fields = Vec::new();
            for (col, value) in table.relation.columns.iter().zip(&old.tuple.columns) {
                if col.is_key() {
                    fields.push((col.name.as_str(), column_value(col, value, options)?));
                }
            }
            Ok(Row { fields })
        }
    }
}

/// The key columns of `tuple` (an unchanged TOAST key column is taken from `old`), or `None`
/// for a table without key columns.
pub fn key_json<'a>(
    table: &'a Table,
    tuple: &TupleData,
    old: Option<&TupleData>,
    options: &EnvelopeOptions,
) -> Result<Option<Row<'a>>, EnvelopeError> {
    if table.key.is_empty() {
        return Ok(None);
    }
    table.check(tuple)?;
    let mut fields = Vec::with_capacity(table.key.len());
    for &i in &table.key {
        let (Some(col), Some(value)) = (table.relation.columns.get(i), tuple.get(i)) else {
            continue; // unreachable: indexes come from the relation and the tuple was checked
        };
        let value = resolve_toast(value, old, i);
        if value.is_unchanged_toast() {
            return Err(EnvelopeError::KeyUnavailable {
                table: table.qualified(),
                column: col.name.clone(),
            });
        }
        fields.push((col.name.as_str(), column_value(col, value, options)?));
    }
    Ok(Some(Row { fields }))
}

fn resolve_toast<'t>(value: &'t Column, old: Option<&'t TupleData>, i: usize) -> &'t Column {
    match (value, old.and_then(|o| o.get(i))) {
        (Column::UnchangedToast, Some(prev @ (Column::Text(_) | Column::Binary(_)))) => prev,
        _ => value,
    }
}

/// `source.snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotMarker {
    /// A streamed change.
    False,
    /// A snapshot row.
    True,
    /// The first row of the snapshot.
    First,
    /// The last row of the snapshot.
    Last,
}

impl SnapshotMarker {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::Last => "last",
        }
    }
}

impl Serialize for SnapshotMarker {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the relay knows about where a change came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo<'a> {
    /// The topic prefix (Debezium's `topic.prefix`, formerly the logical server name).
    pub name: &'a str,
    pub db: &'a str,
    /// Commit time of the transaction, Unix ms (snapshot: the time the row was read).
    pub ts_ms: i64,
    pub tx_id: Option<i64>,
    /// The WAL position of the change (the `XLogData` start of its message).
    pub lsn: Option<Lsn>,
    /// The commit LSN of the transaction before (Debezium's `lastCommitLsn`), for `sequence`.
    pub last_commit_lsn: Option<Lsn>,
    pub snapshot: SnapshotMarker,
}

/// The `source` block as serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source<'a> {
    pub version: &'static str,
    pub connector: &'static str,
    pub name: &'a str,
    pub ts_ms: i64,
    pub snapshot: SnapshotMarker,
    pub db: &'a str,
    pub sequence: String,
    pub schema: &'a str,
    pub table: &'a str,
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    pub lsn: Option<u64>,
    pub xmin: Option<i64>,
}

impl<'a> Source<'a> {
    pub fn new(info: &SourceInfo<'a>, table: &'a Table) -> Self {
        let lsn_string = |l: Option<Lsn>| l.map(|l| l.0.to_string());
        let sequence = [lsn_string(info.last_commit_lsn), lsn_string(info.lsn)];
        Source {
            version: HERMET_VERSION,
            connector: CONNECTOR,
            name: info.name,
            ts_ms: info.ts_ms,
            snapshot: info.snapshot,
            db: info.db,
            // Serializing an array of optional strings cannot fail.
            sequence: serde_json::to_string(&sequence).unwrap_or_default(),
            schema: table.schema(),
            table: table.name(),
            tx_id: info.tx_id,
            lsn: info.lsn.map(|l| l.0),
            xmin: None,
        }
    }
}

/// The `transaction` block of a data event (with transaction metadata on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxBlock {
    pub id: String,
    /// 1-based position of the event among all events of the transaction.
    pub total_order: u64,
    /// 1-based position among the transaction's events of the same table.
    pub data_collection_order: u64,
}

/// A change event value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a> {
    pub before: Option<Row<'a>>,
    pub after: Option<Row<'a>>,
    pub source: Source<'a>,
    pub op: Op,
    /// When the relay built the event, Unix ms.
    pub ts_ms: i64,
    pub transaction: Option<TxBlock>,
}

/// One Kafka record: JSON key and value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `None`: a null key (table without key columns).
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// A row change as pgoutput delivered it (or a snapshot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleChange<'a> {
    Insert {
        new: &'a TupleData,
    },
    Update {
        old: Option<&'a OldTuple>,
        new: &'a TupleData,
    },
    Delete {
        old: &'a OldTuple,
    },
    /// A row read by the initial snapshot (`op: "r"`).
    Read {
        row: &'a TupleData,
    },
}

impl<'a> TupleChange<'a> {
    /// The change carried by an `Insert`, `Update` or `Delete` message, with its relation id.
    pub fn from_message(msg: &'a LogicalMessage) -> Option<(Oid, TupleChange<'a>)> {
        match msg {
            LogicalMessage::Insert(m) => Some((m.relation_id, TupleChange::Insert { new: &m.new })),
            LogicalMessage::Update(m) => Some((
                m.relation_id,
                TupleChange::Update {
                    old: m.old.as_ref(),
                    new: &m.new,
                },
            )),
            LogicalMessage::Delete(m) => Some((m.relation_id, TupleChange::Delete { old: &m.old })),
            _ => None,
        }
    }
}

/// Everything about an event that is not the row.
#[derive(Debug, Clone)]
pub struct EventContext<'a> {
    pub source: SourceInfo<'a>,
    /// The relay's clock, Unix ms (the envelope's top-level `ts_ms`).
    pub now_ms: i64,
    pub options: &'a EnvelopeOptions,
}

/// The Kafka records of one change, in order: usually one; a delete and its tombstone; or, for a
/// primary key change, delete(old key) + tombstone + create(new key). With `tx`, each data
/// event gets its `transaction` block and is counted for the END event.
pub fn change_records(
    table: &Table,
    change: &TupleChange<'_>,
    ctx: &EventContext<'_>,
    mut tx: Option<&mut TransactionTracker>,
) -> Result<Vec<Record>, EnvelopeError> {
    let opts = ctx.options;
    let mut out = Vec::with_capacity(1);
    let mut event = |op: Op,
                     key: &Option<Vec<u8>>,
                     before: Option<Row<'_>>,
                     after: Option<Row<'_>>,
                     headers: Vec<(&'static str, Vec<u8>)>,
                     out: &mut Vec<Record>|
     -> Result<(), EnvelopeError> {
        let transaction = tx
            .as_deref_mut()
            .map(|t| t.next_block(&table.data_collection()));
        let envelope = Envelope {
            before,
            after,
            source: Source::new(&ctx.source, table),
            op,
            ts_ms: ctx.now_ms,
            transaction,
        };
        out.push(Record {
            key: key.clone(),
            value: Some(to_json(&envelope)?),
            headers,
        });
        Ok(())
    };
    match *change {
        TupleChange::Insert { new } | TupleChange::Read { row: new } => {
            let op = if matches!(change, TupleChange::Read { .. }) {
                Op::Read
            } else {
                Op::Insert
            };
            let key = key_bytes(table, new, None, opts)?;
            let after = row_json(table, new, None, opts)?;
            event(op, &key, None, Some(after), Vec::new(), &mut out)?;
        }
        TupleChange::Update { old: None, new } => {
            let key = key_bytes(table, new, None, opts)?;
            let after = row_json(table, new, None, opts)?;
            event(Op::Update, &key, None, Some(after), Vec::new(), &mut out)?;
        }
        TupleChange::Update {
            old: Some(old),
            new,
        } => {
            let full_old = (old.kind == OldTupleKind::Full).then_some(&old.tuple);
            let new_key = key_bytes(table, new, Some(&old.tuple), opts)?;
            let old_key = key_bytes(table, &old.tuple, None, opts)?;
            let before = old_row_json(table, old, opts)?;
            let after = row_json(table, new, full_old, opts)?;
            if old_key == new_key {
                event(
                    Op::Update,
                    &new_key,
                    Some(before),
                    Some(after),
                    Vec::new(),
                    &mut out,
                )?;
            } else {
                let header = |k: &Option<Vec<u8>>| k.clone().unwrap_or_else(|| b"null".to_vec());
                event(
                    Op::Delete,
                    &old_key,
                    Some(before),
                    None,
                    vec![(NEW_KEY_HEADER, header(&new_key))],
                    &mut out,
                )?;
                if opts.tombstones_on_delete && old_key.is_some() {
                    out.push(Record {
                        key: old_key.clone(),
                        value: None,
                        headers: Vec::new(),
                    });
                }
                event(
                    Op::Insert,
                    &new_key,
                    None,
                    Some(after),
                    vec![(OLD_KEY_HEADER, header(&old_key))],
                    &mut out,
                )?;
            }
        }
        TupleChange::Delete { old } => {
            let key = key_bytes(table, &old.tuple, None, opts)?;
            let before = old_row_json(table, old, opts)?;
            event(Op::Delete, &key, Some(before), None, Vec::new(), &mut out)?;
            if opts.tombstones_on_delete && key.is_some() {
                out.push(Record {
                    key,
                    value: None,
                    headers: Vec::new(),
                });
            }
        }
    }
    Ok(out)
}

fn key_bytes(
    table: &Table,
    tuple: &TupleData,
    old: Option<&TupleData>,
    options: &EnvelopeOptions,
) -> Result<Option<Vec<u8>>, EnvelopeError> {
    key_json(table, tuple, old, options)?
        .map(|k| to_json(&k))
        .transpose()
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    serde_json::to_vec(value).map_err(|e| EnvelopeError::Json(e.to_string()))
}

/// Transaction metadata, like Debezium's `provide.transaction.metadata`: a BEGIN and an END
/// event on `<prefix>.transaction` around the transaction's data events, and a `transaction`
/// block in each data event.
///
/// The id is `"<xid>:<commit lsn>"` with the commit LSN (`Begin.final_lsn`) as a decimal number:
/// unique, and the same on every replay of the transaction. (Debezium uses the txId and an LSN
/// of the transaction too, in the same format.) `ts_ms` of both events is the commit time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionTracker {
    id: String,
    ts_ms: i64,
    total: u64,
    collections: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct TxKey<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct TxEvent<'a> {
    status: &'static str,
    id: &'a str,
    event_count: Option<u64>,
    data_collections: Option<Vec<TxCollection<'a>>>,
    ts_ms: i64,
}

#[derive(Serialize)]
struct TxCollection<'a> {
    data_collection: &'a str,
    event_count: u64,
}

impl TransactionTracker {
    pub fn begin(xid: u32, commit_lsn: Lsn, commit_ts_ms: i64) -> Self {
        TransactionTracker {
            id: format!("{xid}:{}", commit_lsn.0),
            ts_ms: commit_ts_ms,
            total: 0,
            collections: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Data events counted so far.
    pub fn event_count(&self) -> u64 {
        self.total
    }

    /// Counts one data event of `data_collection` (`schema.table`) and returns its block.
    pub fn next_block(&mut self, data_collection: &str) -> TxBlock {
        self.total += 1;
        let order = match self
            .collections
            .iter_mut()
            .find(|(name, _)| name == data_collection)
        {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.collections.push((data_collection.to_owned(), 1));
                1
            }
        };
        TxBlock {
            id: self.id.clone(),
            total_order: self.total,
            data_collection_order: order,
        }
    }

    /// `{"status":"BEGIN","id":..,"event_count":null,"data_collections":null,"ts_ms":..}`
    pub fn begin_record(&self) -> Result<Record, EnvelopeError> {
        self.record("BEGIN", None, None)
    }

    /// `{"status":"END","id":..,"event_count":N,"data_collections":[{"data_collection":..,
    /// "event_count":n}..],"ts_ms":..}`, collections in order of first appearance.
    pub fn end_record(&self) -> Result<Record, EnvelopeError> {
        let collections = self
            .collections
            .iter()
            .map(|(name, n)| TxCollection {
                data_collection: name,
                event_count: *n,
            })
            .collect();
        self.record("END", Some(self.total), Some(collections))
    }

    fn record(
        &self,
        status: &'static str,
        event_count: Option<u64>,
        data_collections: Option<Vec<TxCollection<'_>>>,
    ) -> Result<Record, EnvelopeError> {
        Ok(Record {
            key: Some(to_json(&TxKey { id: &self.id })?),
            value: Some(to_json(&TxEvent {
                status,
                id: &self.id,
                event_count,
                data_collections,
                ts_ms: self.ts_ms,
            })?),
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::RelColumn;

    fn col(name: &str, type_oid: Oid) -> RelColumn {
        RelColumn {
            flags: 0,
            name: name.into(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn text(col: &RelColumn, s: &str) -> Value {
        column_value(
            col,
            &Column::Text(bytes::Bytes::copy_from_slice(s.as_bytes())),
            &EnvelopeOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn numerics_are_numbers_only_when_exact() {
        let c = col("n", oid::NUMERIC);
        assert_eq!(text(&c, "12.340"), serde_json::json!(12.34));
        assert_eq!(text(&c, "-0.5"), serde_json::json!(-0.5));
        assert_eq!(text(&c, "100.000"), serde_json::json!(100));
        assert_eq!(
            text(&c, "-9223372036854775808"),
            serde_json::json!(i64::MIN)
        );
        assert_eq!(
            text(&c, "18446744073709551615"),
            serde_json::json!(u64::MAX)
        );
        assert_eq!(
            text(&c, "18446744073709551616"),
            serde_json::json!("18446744073709551616")
        );
        assert_eq!(
            text(&c, "0.000123456789012345"),
            serde_json::json!(0.000123456789012345)
        );
        assert_eq!(
            text(&c, "1.0000000000000001"),
            serde_json::json!("1.0000000000000001")
        );
        assert_eq!(text(&c, "NaN"), serde_json::json!("NaN"));
        assert_eq!(text(&c, "-Infinity"), serde_json::json!("-Infinity"));
    }

    #[test]
    fn scalar_types_follow_the_table() {
        assert_eq!(text(&col("b", oid::BOOL), "t"), Value::Bool(true));
        assert_eq!(text(&col("i", oid::INT2), "-7"), serde_json::json!(-7));
        assert_eq!(
            text(&col("o", oid::OID), "4294967295"),
            serde_json::json!(4294967295u32)
        );
        assert_eq!(text(&col("f", oid::FLOAT4), "0.1"), serde_json::json!(0.1));
        assert_eq!(
            text(&col("f", oid::FLOAT8), "-Infinity"),
            serde_json::json!("-Infinity")
        );
        assert_eq!(
            column_value(
                &col("j", oid::JSONB),
                &Column::Text(bytes::Bytes::from_static(br#"{"a": [1]}"#)),
                &EnvelopeOptions {
                    json_columns: JsonColumns::Embedded,
                    ..Default::default()
                }
            )
            .unwrap(),
            serde_json::json!({"a": [1]})
        );
        assert_eq!(
            text(&col("j", oid::JSONB), r#"{"a": [1]}"#),
            serde_json::json!(r#"{"a": [1]}"#),
            "Debezium's shape by default"
        );
        assert_eq!(
            column_value(
                &col("j", oid::JSON),
                &Column::Text(bytes::Bytes::from_static(br#"{"a": 1}"#)),
                &EnvelopeOptions {
                    json_columns: JsonColumns::String,
                    ..Default::default()
                }
            )
            .unwrap(),
            serde_json::json!(r#"{"a": 1}"#)
        );
        assert_eq!(
            text(&col("x", oid::BYTEA), "\\xdeadBEEF"),
            serde_json::json!("3q2+7w==")
        );
        assert_eq!(
            text(&col("x", oid::BYTEA), "a\\\\b\\001"),
            serde_json::json!("YVxiAQ==")
        );
        assert_eq!(
            text(&col("t", oid::TIMESTAMPTZ), "2024-05-06 07:08:09+00"),
            "2024-05-06 07:08:09+00"
        );
        assert_eq!(text(&col("a", 1007), "{1,2}"), serde_json::json!("{1,2}"));
        for (c, bad) in [
            (col("i", oid::INT4), "x"),
            (col("b", oid::BOOL), "true"),
            (col("f", oid::FLOAT8), "1e999"),
            (col("x", oid::BYTEA), "\\x0"),
            (col("x", oid::BYTEA), "\\9"),
        ] {
            assert!(
                column_value(
                    &c,
                    &Column::Text(bytes::Bytes::copy_from_slice(bad.as_bytes())),
                    &EnvelopeOptions::default()
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unchanged_toast_is_the_placeholder_never_null() {
        let opts = EnvelopeOptions::default();
        assert_eq!(
            column_value(&col("t", oid::TEXT), &Column::UnchangedToast, &opts).unwrap(),
            serde_json::json!(UNAVAILABLE_VALUE)
        );
        assert_eq!(
            column_value(&col("b", oid::BYTEA), &Column::UnchangedToast, &opts).unwrap(),
            serde_json::json!("X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==")
        );
    }

    #[test]
    fn binary_values() {
        let opts = EnvelopeOptions::default();
        let bin = |c: &RelColumn, b: &[u8]| {
            column_value(c, &Column::Binary(bytes::Bytes::copy_from_slice(b)), &opts)
        };
        assert_eq!(
            bin(&col("i", oid::INT8), &10i64.to_be_bytes()).unwrap(),
            serde_json::json!(10)
        );
        assert_eq!(
            bin(&col("f", oid::FLOAT4), &0.1f32.to_be_bytes()).unwrap(),
            serde_json::json!(0.1)
        );
        assert_eq!(
            bin(&col("f", oid::FLOAT8), &f64::NAN.to_be_bytes()).unwrap(),
            serde_json::json!("NaN")
        );
        assert_eq!(
            bin(
                &col("u", oid::UUID),
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]
            )
            .unwrap(),
            serde_json::json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert!(bin(&col("i", oid::INT4), &[0, 1]).is_err());
        assert!(matches!(
            bin(&col("n", oid::NUMERIC), &[0, 0]),
            Err(EnvelopeError::UnsupportedBinary {
                type_oid: oid::NUMERIC,
                ..
            })
        ));
    }

    #[test]
    fn router_templates() {
        let r = TopicRouter::hermet_default();
        assert_eq!(r.topic("public", "users"), "users.changed");
        assert_eq!(r.topic("audit", "users"), "hermet.audit.users");
        assert_eq!(r.transaction_topic(), "hermet.transaction");
        assert_eq!(
            r,
            TopicRouter::new("hermet", Some("public"), "{table}.changed").unwrap()
        );
        assert_eq!(r.to_string(), "hermet.public.<table> -> {table}.changed");

        let d = TopicRouter::debezium("shop").unwrap();
        assert_eq!(d.topic("public", "orders"), "shop.public.orders");
        assert_eq!(
            d.topic("public", "weird table$"),
            "shop.public.weird_table_"
        );

        let all = TopicRouter::new("p", None, "cdc-{schema}-{table}-{prefix}").unwrap();
        assert_eq!(all.topic("s", "t"), "cdc-s-t-p");

        for bad in [
            "",
            "static",
            "{table",
            "{table}}",
            "}{table}",
            "{tabel}.x",
            "{}{table}",
        ] {
            assert!(TopicRouter::new("p", None, bad).is_err(), "{bad:?}");
        }
        assert!(TopicRouter::new("", None, "{table}").is_err());
        assert!(TopicRouter::new("a b", None, "{table}").is_err());
    }
}
