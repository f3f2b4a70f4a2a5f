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

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hermet_core::Lsn;

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

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        let have = self.remaining();
        let truncated = DecodeError::Truncated {
            what,
            offset: start,
            need: n,
            have,
        };
        if n > have {
            return Err(truncated);
        }
        // n <= len - start, so this neither overflows nor leaves the buffer.
        let end = start + n;
        self.pos = end;
        self.buf.get(start..end).ok_or(truncated)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let offset = self.pos;
        let have = self.remaining();
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| DecodeError::Truncated {
            what,
            offset,
            need: N,
            have,
        })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// An `Int16` count, which must not be negative.
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            what,
            value: value.into(),
            offset,
        })
    }

    /// An `Int32` count or length, which must not be negative.
    fn count32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            what,
            value: value.into(),
            offset,
        })
    }

    fn marker(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8(what)?;
        if found == expected {
            Ok(())
        } else {
            Err(DecodeError::BadTupleMarker {
                expected: what,
                found,
                offset,
            })
        }
    }

    /// `n` bytes as a zero-copy slice of the message.
    fn slice(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { what, offset })?;
        let s = rest
            .get(..len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or(DecodeError::InvalidUtf8 { what, offset })?
            .to_owned();
        self.pos = offset.saturating_add(len).saturating_add(1);
        Ok(s)
    }
}

/// Why [`encode`] cannot represent a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} contains a NUL byte")]
    NulInString { what: &'static str },
    #[error("{what} has {len} entries/bytes, more than the wire format can count")]
    TooLong { what: &'static str, len: usize },
}

/// Encodes a message as pgoutput v1 would send it: `decode(&encode(m)?) == Ok(m)`. For tests and
/// fake replication streams; the relay itself never encodes.
pub fn encode(msg: &LogicalMessage) -> Result<Vec<u8>, EncodeError> {
    let mut w = Vec::with_capacity(64);
    w.push(msg.tag());
    match msg {
        LogicalMessage::Begin(b) => {
            w.extend_from_slice(&b.final_lsn.0.to_be_bytes());
            w.extend_from_slice(&b.commit_ts.0.to_be_bytes());
            w.extend_from_slice(&b.xid.to_be_bytes());
        }
        LogicalMessage::Commit(c) => {
            w.push(c.flags);
            w.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
            w.extend_from_slice(&c.end_lsn.0.to_be_bytes());
            w.extend_from_slice(&c.commit_ts.0.to_be_bytes());
        }
        LogicalMessage::Origin(o) => {
            w.extend_from_slice(&o.commit_lsn.0.to_be_bytes());
            put_cstring(&mut w, &o.name, "Origin name")?;
        }
        LogicalMessage::Relation(r) => {
            w.extend_from_slice(&r.id.to_be_bytes());
            put_cstring(&mut w, &r.namespace, "Relation namespace")?;
            put_cstring(&mut w, &r.name, "Relation name")?;
            w.push(r.replica_identity.as_byte());
            put_count16(&mut w, r.columns.len(), "Relation columns")?;
            for c in &r.columns {
                w.push(c.flags);
                put_cstring(&mut w, &c.name, "Relation column name")?;
                w.extend_from_slice(&c.type_oid.to_be_bytes());
                w.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        LogicalMessage::Type(t) => {
            w.extend_from_slice(&t.id.to_be_bytes());
            put_cstring(&mut w, &t.namespace, "Type namespace")?;
            put_cstring(&mut w, &t.name, "Type name")?;
        }
        LogicalMessage::Insert(i) => {
            w.extend_from_slice(&i.relation_id.to_be_bytes());
            w.push(b'N');
            put_tuple(&mut w, &i.new)?;
        }
        LogicalMessage::Update(u) => {
            w.extend_from_slice(&u.relation_id.to_be_bytes());
            if let Some(old) = &u.old {
                w.push(old.kind.as_byte());
                put_tuple(&mut w, &old.tuple)?;
            }
            w.push(b'N');
            put_tuple(&mut w, &u.new)?;
        }
        LogicalMessage::Delete(d) => {
            w.extend_from_slice(&d.relation_id.to_be_bytes());
            w.push(d.old.kind.as_byte());
            put_tuple(&mut w, &d.old.tuple)?;
        }
        LogicalMessage::Truncate(t) => {
            put_count32(&mut w, t.relation_ids.len(), "Truncate relations")?;
            w.push(t.options);
            for id in &t.relation_ids {
                w.extend_from_slice(&id.to_be_bytes());
            }
        }
        LogicalMessage::Message(m) => {
            w.push(m.flags);
            w.extend_from_slice(&m.lsn.0.to_be_bytes());
            put_cstring(&mut w, &m.prefix, "Message prefix")?;
            put_count32(&mut w, m.content.len(), "Message content")?;
            w.extend_from_slice(&m.content);
        }
    }
    Ok(w)
}

fn put_cstring(w: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString { what });
    }
    w.extend_from_slice(s.as_bytes());
    w.push(0);
    Ok(())
}

fn put_count16(w: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = i16::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    w.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_count32(w: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = i32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    w.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_tuple(w: &mut Vec<u8>, t: &TupleData) -> Result<(), EncodeError> {
    put_count16(w, t.columns.len(), "TupleData columns")?;
    for c in &t.columns {
        match c {
            Column::Null => w.push(b'n'),
            Column::UnchangedToast => w.push(b'u'),
            Column::Text(b) | Column::Binary(b) => {
                w.push(if matches!(c, Column::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                put_count32(w, b.len(), "column value")?;
                w.extend_from_slice(b);
            }
        }
    }
    Ok(())
}

/// A row message refers to a relation the cache has not seen (the relay missed its `Relation`
/// message), or carries a different number of columns than the relation has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error("relation {0} is unknown: no Relation message was received for it in this session")]
    Unknown(Oid),
    #[error("relation {relation} has {expected} columns but the tuple has {found}")]
    ColumnCount {
        relation: String,
        expected: usize,
        found: usize,
    },
}

/// The relations (and custom types) announced in the current replication session, by id.
///
/// Feed it every message with [`RelationCache::observe`]; a later `Relation` for the same id
/// replaces the earlier one (the table changed). Entries are `Arc`s so events being built keep
/// the schema they were decoded with even if the cache moves on.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<Oid, Arc<RelationBody>>,
    types: HashMap<Oid, TypeBody>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `Relation` and `Type` messages; ignores the others.
    pub fn observe(&mut self, msg: &LogicalMessage) {
        match msg {
            LogicalMessage::Relation(r) => {
                self.insert(r.clone());
            }
            LogicalMessage::Type(t) => {
                self.types.insert(t.id, t.clone());
            }
            _ => {}
        }
    }

    pub fn insert(&mut self, relation: RelationBody) -> Arc<RelationBody> {
        let rel = Arc::new(relation);
        self.relations.insert(rel.id, Arc::clone(&rel));
        rel
    }

    pub fn get(&self, id: Oid) -> Option<&Arc<RelationBody>> {
        self.relations.get(&id)
    }

    pub fn resolve(&self, id: Oid) -> Result<&Arc<RelationBody>, RelationError> {
        self.relations.get(&id).ok_or(RelationError::Unknown(id))
    }

    /// Resolves `id` and checks that `tuple` has one column per relation column.
    pub fn resolve_for(
        &self,
        id: Oid,
        tuple: &TupleData,
    ) -> Result<&Arc<RelationBody>, RelationError> {
        let rel = self.resolve(id)?;
        if rel.columns.len() != tuple.len() {
            return Err(RelationError::ColumnCount {
                relation: format!("{}.{}", rel.namespace, rel.name),
                expected: rel.columns.len(),
                found: tuple.len(),
            });
        }
        Ok(rel)
    }

    /// A custom type announced by a `Type` message.
    pub fn type_info(&self, oid: Oid) -> Option<&TypeBody> {
        self.types.get(&oid)
    }

    pub fn remove(&mut self, id: Oid) -> Option<Arc<RelationBody>> {
        self.relations.remove(&id)
    }

    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
    }

    pub fn len(&self) -> usize {
        self.relations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
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
