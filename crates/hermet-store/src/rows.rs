//! Decoding write-side rows. Each `*_COLS` list and its decoder agree on column order; queries
//! that join tables select the lists one after another and decode at offsets. The channel,
//! member and message decoders also read a whole row sent as one value ([`Record`]), through
//! the same field list ([`Fields`]).

use hermet_core::rows::{
    ChannelRow, ChannelType, Fanout, FriendshipRow, FriendshipStatus, MemberRole, MemberRow,
    MessageRow, UserRow,
};
use tokio_postgres::types::{FromSql, Kind, Type};
use tokio_postgres::Row;

use crate::StoreError;

pub(crate) const USER_COLS: &str = "id, nickname, avatar, profile_ver, created_at, updated_at";
pub(crate) const CHANNEL_COLS: &str = "id, channel_type, name, avatar, channel_status, \
     channel_info_ver, member_count, creator_id, last_seq, pair_low, pair_high, created_at, updated_at, \
     fanout, fanout_ver";
pub(crate) const MEMBER_COLS: &str = "channel_id, user_id, role, joined_at, left_at, left_seq, \
     read_seq, pinned, muted, hidden_at_seq, settings_ver";
pub(crate) const FRIEND_COLS: &str = "user_id, friend_id, remark_name, group_name, starred, \
     status, ver, created_at, deleted_at";
pub(crate) const MESSAGE_COLS: &str =
    "id, channel_id, seq, sender_id, sender_name, msg_type, content, created_at";

pub(crate) const MEMBER_WIDTH: usize = 11;
pub(crate) const CHANNEL_WIDTH: usize = 15;

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Decode(format!("column {idx}: {e}")))
}

/// `cols` with each column qualified by `alias`, for joins.
pub(crate) fn prefixed(alias: &str, cols: &str) -> String {
    cols.split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A whole row of a table (a composite value), as PostgreSQL sends it in binary: its fields'
/// bytes in the table's column order (PostgreSQL leaves dropped columns out; columns added later
/// come last and are ignored by the decoders below, which check each field's type). Taking a
/// composite apart field by field in SQL (`(r).col` for every column) costs the server a pass
/// over the value per field; sent whole, it costs one.
pub(crate) struct Record<'a> {
    fields: Vec<(u32, Option<&'a [u8]>)>,
}

impl<'a> FromSql<'a> for Record<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        fn take<'b>(raw: &mut &'b [u8], n: usize) -> Result<&'b [u8], String> {
            if raw.len() < n {
                return Err("a composite value ends early".into());
            }
            let (head, rest) = raw.split_at(n);
            *raw = rest;
            Ok(head)
        }
        let be4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        let mut raw = raw;
        let count = i32::from_be_bytes(be4(take(&mut raw, 4)?));
        let mut fields = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for _ in 0..count {
            let oid = u32::from_be_bytes(be4(take(&mut raw, 4)?));
            let len = i32::from_be_bytes(be4(take(&mut raw, 4)?));
            let value = match usize::try_from(len) {
                Ok(n) => Some(take(&mut raw, n)?),
                Err(_) => None,
            };
            fields.push((oid, value));
        }
        Ok(Record { fields })
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Composite(_))
    }
}

/// Positional access to the fields of one table's row, wherever they come from: columns of a
/// result row from an offset on, or the fields of a row value. Each table's decoder below is
/// written once against it.
pub(crate) trait Fields<'a> {
    /// Field `i`, of type `ty`.
    fn field<T: FromSql<'a>>(&self, i: usize, ty: &Type) -> Result<T, StoreError>;
}

/// Columns `at..` of a result row (their types are checked by tokio-postgres).
struct At<'a>(&'a Row, usize);

impl<'a> Fields<'a> for At<'a> {
    fn field<T: FromSql<'a>>(&self, i: usize, _: &Type) -> Result<T, StoreError> {
        get(self.0, self.1 + i)
    }
}

impl<'a> Fields<'a> for Record<'a> {
    /// Checks the type, so a column order that differs from the decoder's fails loudly
    /// instead of decoding the wrong field.
    fn field<T: FromSql<'a>>(&self, i: usize, ty: &Type) -> Result<T, StoreError> {
        let (oid, raw) = self
            .fields
            .get(i)
            .ok_or_else(|| StoreError::Decode(format!("a row value has no field {i}")))?;
        if *oid != ty.oid() {
            return Err(StoreError::Decode(format!(
                "field {i} of a row value is of type {oid}, not {ty}"
            )));
        }
        T::from_sql_nullable(ty, *raw)
            .map_err(|e| StoreError::Decode(format!("field {i} of a row value: {e}")))
    }
}

/// The row value in column `idx`, decoded by `decode`; `None` for NULL.
pub(crate) fn record<'a, T>(
    row: &'a Row,
    idx: usize,
    decode: impl Fn(&Record<'a>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    get::<Option<Record>>(row, idx)?
        .as_ref()
        .map(decode)
        .transpose()
}

pub(crate) fn user(row: &Row, at: usize) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: get(row, at)?,
        nickname: get(row, at + 1)?,
        avatar: get(row, at + 2)?,
        profile_ver: get(row, at + 3)?,
        created_at: get(row, at + 4)?,
        updated_at: get(row, at + 5)?,
    })
}

pub(crate) fn channel(row: &Row, at: usize) -> Result<ChannelRow, StoreError> {
    channel_fields(&At(row, at))
}

/// A `channels` row in [`CHANNEL_COLS`] order (also the table's column order).
pub(crate) fn channel_fields<'a>(f: &impl Fields<'a>) -> Result<ChannelRow, StoreError> {
    Ok(ChannelRow {
        id: f.field(0, &Type::INT8)?,
        channel_type: ChannelType::parse(f.field(1, &Type::TEXT)?)?,
        name: f.field(2, &Type::TEXT)?,
        avatar: f.field(3, &Type::TEXT)?,
        channel_status: f.field(4, &Type::TEXT)?,
        channel_info_ver: f.field(5, &Type::INT8)?,
        member_count: f.field(6, &Type::INT4)?,
        creator_id: f.field(7, &Type::INT8)?,
        last_seq: f.field(8, &Type::INT8)?,
        pair_low: f.field(9, &Type::INT8)?,
        pair_high: f.field(10, &Type::INT8)?,
        created_at: f.field(11, &Type::INT8)?,
        updated_at: f.field(12, &Type::INT8)?,
        fanout: Fanout::parse(f.field(13, &Type::TEXT)?)?,
        fanout_ver: f.field(14, &Type::INT8)?,
    })
}

pub(crate) fn member(row: &Row, at: usize) -> Result<MemberRow, StoreError> {
    member_fields(&At(row, at))
}

/// A `channel_members` row in [`MEMBER_COLS`] order (also the table's column order).
pub(crate) fn member_fields<'a>(f: &impl Fields<'a>) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        channel_id: f.field(0, &Type::INT8)?,
        user_id: f.field(1, &Type::INT8)?,
        role: MemberRole::parse(f.field(2, &Type::TEXT)?)?,
        joined_at: f.field(3, &Type::INT8)?,
        left_at: f.field(4, &Type::INT8)?,
        left_seq: f.field(5, &Type::INT8)?,
        read_seq: f.field(6, &Type::INT8)?,
        pinned: f.field(7, &Type::BOOL)?,
        muted: f.field(8, &Type::BOOL)?,
        hidden_at_seq: f.field(9, &Type::INT8)?,
        settings_ver: f.field(10, &Type::INT8)?,
    })
}

/// A friendship at `at`, or `None` when a left join found none (its key column is NULL).
pub(crate) fn friendship_opt(row: &Row, at: usize) -> Result<Option<FriendshipRow>, StoreError> {
    let key: Option<i64> = get(row, at)?;
    if key.is_none() {
        return Ok(None);
    }
    friendship(row, at).map(Some)
}

pub(crate) fn friendship(row: &Row, at: usize) -> Result<FriendshipRow, StoreError> {
    Ok(FriendshipRow {
        user_id: get(row, at)?,
        friend_id: get(row, at + 1)?,
        remark_name: get(row, at + 2)?,
        group_name: get(row, at + 3)?,
        starred: get(row, at + 4)?,
        status: FriendshipStatus::parse(&get::<String>(row, at + 5)?)?,
        ver: get(row, at + 6)?,
        created_at: get(row, at + 7)?,
        deleted_at: get(row, at + 8)?,
    })
}

pub(crate) fn message(row: &Row, at: usize) -> Result<MessageRow, StoreError> {
    message_fields(&At(row, at))
}

/// A `messages` row in [`MESSAGE_COLS`] order (also the table's column order).
pub(crate) fn message_fields<'a>(f: &impl Fields<'a>) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        id: f.field(0, &Type::INT8)?,
        channel_id: f.field(1, &Type::INT8)?,
        seq: f.field(2, &Type::INT8)?,
        sender_id: f.field(3, &Type::INT8)?,
        sender_name: f.field(4, &Type::TEXT)?,
        msg_type: f.field(5, &Type::TEXT)?,
        content: f.field(6, &Type::TEXT)?,
        created_at: f.field(7, &Type::INT8)?,
    })
}

/// A message at `at`, or `None` when a left join found none (its key column is NULL).
pub(crate) fn message_opt(row: &Row, at: usize) -> Result<Option<MessageRow>, StoreError> {
    let key: Option<i64> = get(row, at)?;
    if key.is_none() {
        return Ok(None);
    }
    message(row, at).map(Some)
}

pub(crate) fn all<T>(
    rows: &[Row],
    f: impl Fn(&Row, usize) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|r| f(r, 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's binary composite: field count, then per field type oid, length (-1: NULL)
    /// and bytes.
    fn composite(fields: &[(u32, Option<&[u8]>)]) -> Vec<u8> {
        let mut out = (fields.len() as i32).to_be_bytes().to_vec();
        for (oid, value) in fields {
            out.extend_from_slice(&oid.to_be_bytes());
            match value {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn records_decode_by_position_and_check_types() {
        let five = 5i64.to_be_bytes();
        let raw = composite(&[
            (Type::INT8.oid(), Some(&five)),
            (Type::TEXT.oid(), None),
            (Type::TEXT.oid(), Some(b"single")),
        ]);
        let r = Record::from_sql(&Type::RECORD, &raw).expect("decodes");
        assert_eq!(r.field::<i64>(0, &Type::INT8).expect("int8"), 5);
        assert_eq!(
            r.field::<Option<String>>(1, &Type::TEXT).expect("null"),
            None
        );
        assert_eq!(r.field::<&str>(2, &Type::TEXT).expect("text"), "single");
        assert!(
            r.field::<i64>(1, &Type::TEXT).is_err(),
            "NULL into a non-Option"
        );
        assert!(
            r.field::<i64>(2, &Type::INT8).is_err(),
            "a text field read as int8"
        );
        assert!(
            r.field::<i64>(3, &Type::INT8).is_err(),
            "past the last field"
        );
        let cut = &raw[..raw.len() - 2];
        assert!(
            Record::from_sql(&Type::RECORD, cut).is_err(),
            "a value cut short"
        );
    }
}
