//! Decoding write-side rows. Each `*_COLS` list and its decoder agree on column order; queries
//! that join tables select the lists one after another and decode at offsets.

use hermet_core::rows::{
    ChannelRow, ChannelType, Fanout, FriendshipRow, FriendshipStatus, MemberRole, MemberRow,
    MessageRow, UserRow,
};
use tokio_postgres::types::FromSql;
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
pub(crate) const MESSAGE_WIDTH: usize = 8;
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

/// A member row at `at`, or `None` when a left join found none (its key column is NULL).
pub(crate) fn member_opt(row: &Row, at: usize) -> Result<Option<MemberRow>, StoreError> {
    let key: Option<i64> = get(row, at)?;
    if key.is_none() {
        return Ok(None);
    }
    member(row, at).map(Some)
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
