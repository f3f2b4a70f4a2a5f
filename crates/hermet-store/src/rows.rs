//! Decoding write-side rows. Each `*_COLS` list and its decoder agree on column order; queries
//! that join tables select the lists one after another and decode at offsets.

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

impl<'a> Record<'a> {
    /// Field `i`, which must be of type `ty` (checked, so a column order that differs from the
    /// decoder's fails loudly instead of decoding the wrong field).
    fn get<T: FromSql<'a>>(&self, i: usize, ty: &Type) -> Result<T, StoreError> {
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

/// A `channels` row sent whole, or `None` for NULL.
pub(crate) fn channel_record(row: &Row, idx: usize) -> Result<Option<ChannelRow>, StoreError> {
    let Some(r) = get::<Option<Record>>(row, idx)? else {
        return Ok(None);
    };
    Ok(Some(ChannelRow {
        id: r.get(0, &Type::INT8)?,
        channel_type: ChannelType::parse(r.get(1, &Type::TEXT)?)?,
        name: r.get(2, &Type::TEXT)?,
        avatar: r.get(3, &Type::TEXT)?,
        channel_status: r.get(4, &Type::TEXT)?,
        channel_info_ver: r.get(5, &Type::INT8)?,
        member_count: r.get(6, &Type::INT4)?,
        creator_id: r.get(7, &Type::INT8)?,
        last_seq: r.get(8, &Type::INT8)?,
        pair_low: r.get(9, &Type::INT8)?,
        pair_high: r.get(10, &Type::INT8)?,
        created_at: r.get(11, &Type::INT8)?,
        updated_at: r.get(12, &Type::INT8)?,
        fanout: Fanout::parse(r.get(13, &Type::TEXT)?)?,
        fanout_ver: r.get(14, &Type::INT8)?,
    }))
}

/// A `channel_members` row sent whole, or `None` for NULL.
pub(crate) fn member_record(row: &Row, idx: usize) -> Result<Option<MemberRow>, StoreError> {
    let Some(r) = get::<Option<Record>>(row, idx)? else {
        return Ok(None);
    };
    Ok(Some(MemberRow {
        channel_id: r.get(0, &Type::INT8)?,
        user_id: r.get(1, &Type::INT8)?,
        role: MemberRole::parse(r.get(2, &Type::TEXT)?)?,
        joined_at: r.get(3, &Type::INT8)?,
        left_at: r.get(4, &Type::INT8)?,
        left_seq: r.get(5, &Type::INT8)?,
        read_seq: r.get(6, &Type::INT8)?,
        pinned: r.get(7, &Type::BOOL)?,
        muted: r.get(8, &Type::BOOL)?,
        hidden_at_seq: r.get(9, &Type::INT8)?,
        settings_ver: r.get(10, &Type::INT8)?,
    }))
}

/// A `messages` row sent whole, or `None` for NULL.
pub(crate) fn message_record(row: &Row, idx: usize) -> Result<Option<MessageRow>, StoreError> {
    let Some(r) = get::<Option<Record>>(row, idx)? else {
        return Ok(None);
    };
    Ok(Some(MessageRow {
        id: r.get(0, &Type::INT8)?,
        channel_id: r.get(1, &Type::INT8)?,
        seq: r.get(2, &Type::INT8)?,
        sender_id: r.get(3, &Type::INT8)?,
        sender_name: r.get(4, &Type::TEXT)?,
        msg_type: r.get(5, &Type::TEXT)?,
        content: r.get(6, &Type::TEXT)?,
        created_at: r.get(7, &Type::INT8)?,
    }))
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
    Ok(ChannelRow {
        id: get(row, at)?,
        channel_type: ChannelType::parse(&get::<String>(row, at + 1)?)?,
        name: get(row, at + 2)?,
        avatar: get(row, at + 3)?,
        channel_status: get(row, at + 4)?,
        channel_info_ver: get(row, at + 5)?,
        member_count: get(row, at + 6)?,
        creator_id: get(row, at + 7)?,
        last_seq: get(row, at + 8)?,
        pair_low: get(row, at + 9)?,
        pair_high: get(row, at + 10)?,
        created_at: get(row, at + 11)?,
        updated_at: get(row, at + 12)?,
        fanout: Fanout::parse(&get::<String>(row, at + 13)?)?,
        fanout_ver: get(row, at + 14)?,
    })
}

pub(crate) fn member(row: &Row, at: usize) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        channel_id: get(row, at)?,
        user_id: get(row, at + 1)?,
        role: MemberRole::parse(&get::<String>(row, at + 2)?)?,
        joined_at: get(row, at + 3)?,
        left_at: get(row, at + 4)?,
        left_seq: get(row, at + 5)?,
        read_seq: get(row, at + 6)?,
        pinned: get(row, at + 7)?,
        muted: get(row, at + 8)?,
        hidden_at_seq: get(row, at + 9)?,
        settings_ver: get(row, at + 10)?,
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
    Ok(MessageRow {
        id: get(row, at)?,
        channel_id: get(row, at + 1)?,
        seq: get(row, at + 2)?,
        sender_id: get(row, at + 3)?,
        sender_name: get(row, at + 4)?,
        msg_type: get(row, at + 5)?,
        content: get(row, at + 6)?,
        created_at: get(row, at + 7)?,
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
        assert_eq!(r.get::<i64>(0, &Type::INT8).expect("int8"), 5);
        assert_eq!(r.get::<Option<String>>(1, &Type::TEXT).expect("null"), None);
        assert_eq!(r.get::<&str>(2, &Type::TEXT).expect("text"), "single");
        assert!(
            r.get::<i64>(1, &Type::TEXT).is_err(),
            "NULL into a non-Option"
        );
        assert!(
            r.get::<i64>(2, &Type::INT8).is_err(),
            "a text field read as int8"
        );
        assert!(r.get::<i64>(3, &Type::INT8).is_err(), "past the last field");
        let cut = &raw[..raw.len() - 2];
        assert!(
            Record::from_sql(&Type::RECORD, cut).is_err(),
            "a value cut short"
        );
    }
}
