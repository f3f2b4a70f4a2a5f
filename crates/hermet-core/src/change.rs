//! Row changes: what happened on the write side, table by table.
//!
//! All three sync modes speak this language. `dual_write` builds changes from the rows its
//! statements return, the outbox stores them, and the CDC path decodes them from Debezium
//! envelopes. A change may be delivered more than once and changes of different tables may arrive
//! in any order; the projection is written for that.

use serde::{Deserialize, Serialize};

use crate::rows::{ChannelRow, FriendshipRow, MemberRow, MessageRow, UserRow};

/// The kind of change, as Debezium spells it (`c`, `u`, `d`, `r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "c")]
    Insert,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    /// A row read by a snapshot, not a change.
    #[serde(rename = "r")]
    Read,
}

/// One change of one row. `after` is absent for deletes; `before` may be absent whenever the
/// source does not carry it (the projection never needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    pub op: Op,
    pub before: Option<T>,
    pub after: Option<T>,
}

impl<T> Change<T> {
    pub fn inserted(row: T) -> Self {
        Change {
            op: Op::Insert,
            before: None,
            after: Some(row),
        }
    }

    pub fn updated(row: T) -> Self {
        Change {
            op: Op::Update,
            before: None,
            after: Some(row),
        }
    }

    /// The row as it is now known, before or after.
    pub fn row(&self) -> Option<&T> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "table", rename_all = "snake_case")]
pub enum RowChange {
    Users(Change<UserRow>),
    Channels(Change<ChannelRow>),
    ChannelMembers(Change<MemberRow>),
    Friendships(Change<FriendshipRow>),
    Messages(Change<MessageRow>),
}

impl RowChange {
    pub fn table(&self) -> &'static str {
        match self {
            RowChange::Users(_) => "users",
            RowChange::Channels(_) => "channels",
            RowChange::ChannelMembers(_) => "channel_members",
            RowChange::Friendships(_) => "friendships",
            RowChange::Messages(_) => "messages",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::WRITE_TABLES;

    /// Each write-side table has its variant, and the variant's serialized tag (the outbox's
    /// JSON) and [`RowChange::table`] are that table's name.
    #[test]
    fn every_write_table_has_its_variant() {
        for table in WRITE_TABLES {
            let json = format!(r#"{{"table":"{table}","op":"d","before":null,"after":null}}"#);
            let change: RowChange = serde_json::from_str(&json).expect(table);
            assert_eq!(change.table(), table);
        }
    }
}
