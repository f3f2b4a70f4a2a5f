//! Decoder for the messages of PostgreSQL's `pgoutput` logical replication plugin, protocol
//! version 1 (PostgreSQL 15 documentation, "Logical Replication Message Formats").
//!
//! # Contract
//!
//! - [`decode`] / [`decode_bytes`] take the payload of ONE message: what a `XLogData` (`'w'`)
//!   frame of the replication stream carries after its 25-byte header, or one `data` row of
//!   `pg_logical_slot_{peek,get}_binary_changes`. The WAL positions of the `XLogData` header are
//!   not part of the payload; the caller keeps them.
//! - Every input gives `Ok` or `Err`, never a panic: every read is bounds-checked, lengths and
//!   counts from the wire are checked against the bytes actually present before anything is
//!   allocated for them, and a message must be consumed exactly ([`DecodeError::TrailingBytes`]
//!   otherwise).
//! - Protocol version 1 only: the messages of streamed transactions (`S`, `E`, `c`, `A`, v2) and
//!   of two-phase commit (`b`, `P`, `K`, `r`, `p`, v3) are rejected as
//!   [`DecodeError::UnknownTag`], and no message carries the streaming `xid` field. The relay
//!   starts replication with `proto_version '1'`, so the server never sends them.
//! - Names (namespaces, relations, columns, types, origins, message prefixes) must be UTF-8: the
//!   server sends them in the database encoding, which for hermet is UTF8; anything else is
//!   [`DecodeError::InvalidUtf8`]. Column values and message contents are kept as bytes.
//! - An unchanged TOASTed value (`'u'`) is [`Column::UnchangedToast`], distinct from
//!   [`Column::Null`]: it means "the value did not change and was not sent", never "NULL".
//! - Values are zero-copy slices of the input when decoding from [`Bytes`] ([`decode_bytes`]);
//!   [`decode`] copies the input once.
//!
//! # What pgoutput v1 sends
//!
//! - Every transaction is `Begin`, then optionally `Origin` (when the change was made by a
//!   session with a replication origin), then changes, then `Commit`. `Begin.final_lsn` equals
//!   `Commit.commit_lsn`; `Commit.end_lsn` is the position to confirm once the transaction is
//!   durably handled. Both carry the commit timestamp (for a transaction with a replication origin
//!   it is the timestamp given to `pg_replication_origin_xact_setup`, not the local commit time).
//! - `Relation` (preceded by `Type` for every column of a non-built-in type, e.g. an enum) is sent
//!   before the first change of a relation in a session and again after anything invalidated its
//!   cache entry (DDL, `TRUNCATE`...), always inside a transaction. Row messages refer to it by
//!   id, hence [`RelationCache`]. A new session starts with an empty cache on the server side, so
//!   the relay may start with an empty one too.
//! - With `REPLICA IDENTITY FULL` every column is flagged as key in `Relation` (the flag means
//!   "part of the replica identity", not "part of the primary key").
//! - `Update` carries an old tuple only if the replica identity is FULL (`'O'`, every column) or if
//!   a replica identity column changed (`'K'`, the identity columns; the others are `'n'`).
//!   `Delete` always carries one (`'K'` or `'O'`).
//! - A non-transactional logical decoding message (`pg_logical_emit_message(false, ...)`) comes
//!   alone, outside any `Begin`/`Commit`; a transactional one inside its transaction.

mod cache;
mod encode;
mod reader;

use bytes::Bytes;
use hermet_core::Lsn;

pub use cache::{RelationCache, RelationError};
pub use encode::{encode, EncodeError};
use reader::Reader;

/// A PostgreSQL object id (relation, type).
pub type Oid = u32;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's `TimestampTz` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01).
    pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    pub fn from_unix_micros(unix_micros: i64) -> Self {
        PgTimestamp(unix_micros.saturating_sub(Self::POSTGRES_EPOCH_UNIX_MICROS))
    }

    /// Microseconds since the Unix epoch (saturating at the `i64` range, which only the
    /// `infinity` timestamps reach).
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(Self::POSTGRES_EPOCH_UNIX_MICROS)
    }

    /// Milliseconds since the Unix epoch, rounded down.
    pub fn unix_millis(self) -> i64 {
        self.unix_micros().div_euclid(1000)
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(BeginBody),
    Commit(CommitBody),
    Origin(OriginBody),
    Relation(RelationBody),
    Type(TypeBody),
    Insert(InsertBody),
    Update(UpdateBody),
    Delete(DeleteBody),
    Truncate(TruncateBody),
    Message(MessageBody),
}

impl LogicalMessage {
    /// The message's tag byte on the wire (`b'B'`, `b'C'`...).
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::Message(_) => b'M',
        }
    }

    /// The relation a row message (`Insert`, `Update`, `Delete`) or `Relation` is about.
    pub fn relation_id(&self) -> Option<Oid> {
        match self {
            LogicalMessage::Relation(r) => Some(r.id),
            LogicalMessage::Insert(m) => Some(m.relation_id),
            LogicalMessage::Update(m) => Some(m.relation_id),
            LogicalMessage::Delete(m) => Some(m.relation_id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginBody {
    /// The LSN of the transaction's commit record (= [`CommitBody::commit_lsn`]).
    pub final_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitBody {
    /// Unused by PostgreSQL 15 (always 0); kept as received.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    pub commit_ts: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginBody {
    /// The commit LSN on the origin server (what `pg_replication_origin_xact_setup` was given).
    pub commit_lsn: Lsn,
    pub name: String,
}

/// `relreplident` of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// A `Relation` message: the published columns of a table, in the order tuples carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationBody {
    pub id: Oid,
    /// The schema; the empty string stands for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelColumn>,
}

impl RelationBody {
    /// Indexes of the columns flagged as part of the replica identity.
    pub fn key_indexes(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key())
            .map(|(i, _)| i)
            .collect()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// Bit 0 ([`RelColumn::KEY_FLAG`]): the column is part of the replica identity.
    pub flags: u8,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`: -1 when the type has none; e.g. `varchar(20)` is 24, `numeric(10,3)` is
    /// `(10 << 16 | 3) + 4`.
    pub type_modifier: i32,
}

impl RelColumn {
    pub const KEY_FLAG: u8 = 1;

    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY_FLAG != 0
    }
}

/// A `Type` message: sent before a `Relation` that has a column of a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeBody {
    pub id: Oid,
    pub namespace: String,
    pub name: String,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: a TOASTed value that did not change and was not sent. Not NULL: the value is
    /// whatever the row held before.
    UnchangedToast,
    /// `'t'`: the value in the type's text output format.
    Text(Bytes),
    /// `'b'`: the value in the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

impl Column {
    pub fn is_null(&self) -> bool {
        matches!(self, Column::Null)
    }

    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, Column::UnchangedToast)
    }

    /// The bytes of a `Text` or `Binary` value.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Column::Text(b) | Column::Binary(b) => Some(b),
            Column::Null | Column::UnchangedToast => None,
        }
    }

    /// A `Text` value as `&str`, if it is valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        match self {
            Column::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// `TupleData`: the columns of one row, in [`RelationBody::columns`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    pub columns: Vec<Column>,
}

impl TupleData {
    pub fn new(columns: Vec<Column>) -> Self {
        TupleData { columns }
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Column> {
        self.columns.get(index)
    }
}

/// Which old tuple an `Update` or `Delete` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OldTupleKind {
    /// `'K'`: the replica identity columns; the other columns are `'n'`.
    Key,
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

impl OldTupleKind {
    pub fn as_byte(self) -> u8 {
        match self {
            OldTupleKind::Key => b'K',
            OldTupleKind::Full => b'O',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldTupleKind,
    pub tuple: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertBody {
    pub relation_id: Oid,
    pub new: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateBody {
    pub relation_id: Oid,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBody {
    pub relation_id: Oid,
    pub old: OldTuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateBody {
    /// Raw option bits: 1 = `CASCADE`, 2 = `RESTART IDENTITY`.
    pub options: u8,
    pub relation_ids: Vec<Oid>,
}

impl TruncateBody {
    pub const CASCADE: u8 = 1;
    pub const RESTART_IDENTITY: u8 = 2;

    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// A logical decoding message (`pg_logical_emit_message`), sent with the `messages` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody {
    /// Raw flags; bit 0 is [`MessageBody::transactional`].
    pub flags: u8,
    /// The LSN of the message's WAL record.
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

impl MessageBody {
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Why a message could not be decoded. Offsets are byte offsets into the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {tag:#04x} (protocol version 1 only)")]
    UnknownTag { tag: u8 },
    #[error(
        "truncated pgoutput message: {what} at offset {offset} needs {need} bytes, {have} left"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("{what} at offset {offset} is not NUL-terminated")]
    MissingNul { what: &'static str, offset: usize },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str, offset: usize },
    #[error("negative {what} ({value}) at offset {offset}")]
    NegativeLength {
        what: &'static str,
        value: i64,
        offset: usize,
    },
    #[error("unknown tuple column kind {kind:#04x} for column {column} at offset {offset}")]
    BadColumnKind {
        kind: u8,
        column: usize,
        offset: usize,
    },
    #[error("expected {expected} at offset {offset}, found {found:#04x}")]
    BadTupleMarker {
        expected: &'static str,
        found: u8,
        offset: usize,
    },
    #[error("unknown replica identity {found:#04x} at offset {offset}")]
    BadReplicaIdentity { found: u8, offset: usize },
    #[error("{count} trailing bytes after a complete {tag:?} message")]
    TrailingBytes { tag: char, count: usize },
}

/// Decodes one pgoutput message, copying `buf` once. See the module docs for the contract.
pub fn decode(buf: &[u8]) -> Result<LogicalMessage, DecodeError> {
    decode_bytes(Bytes::copy_from_slice(buf))
}

/// Decodes one pgoutput message; column values and message contents are slices of `buf`.
pub fn decode_bytes(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = match r.buf.first() {
        Some(&t) => t,
        None => return Err(DecodeError::Empty),
    };
    r.pos = 1;
    let msg = match tag {
        b'B' => LogicalMessage::Begin(BeginBody {
            final_lsn: Lsn(r.u64("Begin final LSN")?),
            commit_ts: PgTimestamp(r.i64("Begin commit timestamp")?),
            xid: r.u32("Begin xid")?,
        }),
        b'C' => LogicalMessage::Commit(CommitBody {
            flags: r.u8("Commit flags")?,
            commit_lsn: Lsn(r.u64("Commit LSN")?),
            end_lsn: Lsn(r.u64("Commit end LSN")?),
            commit_ts: PgTimestamp(r.i64("Commit timestamp")?),
        }),
        b'O' => LogicalMessage::Origin(OriginBody {
            commit_lsn: Lsn(r.u64("Origin commit LSN")?),
            name: r.cstring("Origin name")?,
        }),
        b'R' => LogicalMessage::Relation(relation(&mut r)?),
        b'Y' => LogicalMessage::Type(TypeBody {
            id: r.u32("Type oid")?,
            namespace: r.cstring("Type namespace")?,
            name: r.cstring("Type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            r.marker(b'N', "'N' (new tuple)")?;
            LogicalMessage::Insert(InsertBody {
                relation_id,
                new: tuple(&mut r)?,
            })
        }
        b'U' => {
            let relation_id = r.u32("Update relation id")?;
            let offset = r.pos;
            let marker = r.u8("Update tuple marker")?;
            let old = match marker {
                b'K' | b'O' => {
                    let kind = if marker == b'K' {
                        OldTupleKind::Key
                    } else {
                        OldTupleKind::Full
                    };
                    let tuple = tuple(&mut r)?;
                    r.marker(b'N', "'N' (new tuple)")?;
                    Some(OldTuple { kind, tuple })
                }
                b'N' => None,
                found => {
                    return Err(DecodeError::BadTupleMarker {
                        expected: "'K', 'O' or 'N'",
                        found,
                        offset,
                    })
                }
            };
            LogicalMessage::Update(UpdateBody {
                relation_id,
                old,
                new: tuple(&mut r)?,
            })
        }
        b'D' => {
            let relation_id = r.u32("Delete relation id")?;
            let offset = r.pos;
            let kind = match r.u8("Delete tuple marker")? {
                b'K' => OldTupleKind::Key,
                b'O' => OldTupleKind::Full,
                found => {
                    return Err(DecodeError::BadTupleMarker {
                        expected: "'K' or 'O'",
                        found,
                        offset,
                    })
                }
            };
            LogicalMessage::Delete(DeleteBody {
                relation_id,
                old: OldTuple {
                    kind,
                    tuple: tuple(&mut r)?,
                },
            })
        }
        b'T' => {
            let count = r.count32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            // Each id is 4 bytes: never reserve more than the input can hold.
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("Truncate relation id")?);
            }
            LogicalMessage::Truncate(TruncateBody {
                options,
                relation_ids,
            })
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = Lsn(r.u64("Message LSN")?);
            let prefix = r.cstring("Message prefix")?;
            let len = r.count32("Message content length")?;
            let content = r.slice(len, "Message content")?;
            LogicalMessage::Message(MessageBody {
                flags,
                lsn,
                prefix,
                content,
            })
        }
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    let count = r.remaining();
    if count != 0 {
        return Err(DecodeError::TrailingBytes {
            tag: char::from(tag),
            count,
        });
    }
    Ok(msg)
}

fn relation(r: &mut Reader) -> Result<RelationBody, DecodeError> {
    let id = r.u32("Relation id")?;
    let namespace = r.cstring("Relation namespace")?;
    let name = r.cstring("Relation name")?;
    let offset = r.pos;
    let found = r.u8("Relation replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(found)
        .ok_or(DecodeError::BadReplicaIdentity { found, offset })?;
    let count = r.count16("Relation column count")?;
    // A column takes at least 10 bytes (flags, empty name, type, modifier).
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(RelColumn {
            flags: r.u8("Relation column flags")?,
            name: r.cstring("Relation column name")?,
            type_oid: r.u32("Relation column type")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(RelationBody {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = r.count16("TupleData column count")?;
    // A column takes at least 1 byte.
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for column in 0..count {
        let offset = r.pos;
        let col = match r.u8("TupleData column kind")? {
            b'n' => Column::Null,
            b'u' => Column::UnchangedToast,
            b't' => {
                let len = r.count32("text column length")?;
                Column::Text(r.slice(len, "text column value")?)
            }
            b'b' => {
                let len = r.count32("binary column length")?;
                Column::Binary(r.slice(len, "binary column value")?)
            }
            kind => {
                return Err(DecodeError::BadColumnKind {
                    kind,
                    column,
                    offset,
                })
            }
        };
        columns.push(col);
    }
    Ok(TupleData { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_to_unix() {
        assert_eq!(PgTimestamp(0).unix_millis(), 946_684_800_000);
        assert_eq!(PgTimestamp(-1).unix_millis(), 946_684_799_999);
        assert_eq!(PgTimestamp(1_500).unix_micros(), 946_684_800_001_500);
        assert_eq!(
            PgTimestamp::from_unix_micros(946_684_800_000_000),
            PgTimestamp(0)
        );
        assert_eq!(PgTimestamp(i64::MAX).unix_micros(), i64::MAX);
        assert_eq!(
            PgTimestamp(i64::MIN).unix_micros(),
            i64::MIN + 946_684_800_000_000
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b"S"), Err(DecodeError::UnknownTag { tag: b'S' }));
        assert!(matches!(
            decode(b"B\0\0"),
            Err(DecodeError::Truncated {
                what: "Begin final LSN",
                offset: 1,
                need: 8,
                have: 2
            })
        ));
        // Insert with a column kind 'x'.
        let bad = [b'I', 0, 0, 0, 1, b'N', 0, 1, b'x'];
        assert!(matches!(
            decode(&bad),
            Err(DecodeError::BadColumnKind {
                kind: b'x',
                column: 0,
                offset: 8
            })
        ));
        // A text column with length -1.
        let neg = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode(&neg),
            Err(DecodeError::NegativeLength { value: -1, .. })
        ));
        // Origin name without its NUL, and with invalid UTF-8.
        let mut origin = vec![b'O', 0, 0, 0, 0, 0, 0, 0, 1, b'a'];
        assert!(matches!(
            decode(&origin),
            Err(DecodeError::MissingNul { offset: 9, .. })
        ));
        origin[9] = 0xff;
        origin.push(0);
        assert!(matches!(
            decode(&origin),
            Err(DecodeError::InvalidUtf8 { offset: 9, .. })
        ));
        // A complete Begin followed by junk.
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&[0; 20]);
        assert!(decode(&begin).is_ok());
        begin.push(7);
        assert_eq!(
            decode(&begin),
            Err(DecodeError::TrailingBytes { tag: 'B', count: 1 })
        );
        // Update without 'N'.
        let upd = [b'U', 0, 0, 0, 1, b'Q'];
        assert!(matches!(
            decode(&upd),
            Err(DecodeError::BadTupleMarker { found: b'Q', .. })
        ));
        // A huge truncate count with no ids behind it must not allocate for it.
        let trunc = [b'T', 0x7f, 0xff, 0xff, 0xff, 0];
        assert!(matches!(decode(&trunc), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn encode_rejects_what_the_wire_cannot_carry() {
        let msg = LogicalMessage::Origin(OriginBody {
            commit_lsn: Lsn(1),
            name: "a\0b".into(),
        });
        assert_eq!(
            encode(&msg),
            Err(EncodeError::NulInString {
                what: "Origin name"
            })
        );
    }

    #[test]
    fn cache_resolves_and_checks_column_counts() {
        let rel = RelationBody {
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![RelColumn {
                flags: 1,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            }],
        };
        let mut cache = RelationCache::new();
        assert_eq!(cache.resolve(7).err(), Some(RelationError::Unknown(7)));
        cache.observe(&LogicalMessage::Relation(rel.clone()));
        assert_eq!(cache.len(), 1);
        let one = TupleData::new(vec![Column::Text(Bytes::from_static(b"1"))]);
        assert_eq!(**cache.resolve_for(7, &one).unwrap(), rel);
        assert!(matches!(
            cache.resolve_for(7, &TupleData::default()),
            Err(RelationError::ColumnCount {
                expected: 1,
                found: 0,
                ..
            })
        ));
        assert_eq!(rel.key_indexes(), vec![0]);
    }
}
