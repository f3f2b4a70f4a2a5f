//! Write-side rows, one struct per table, with the columns the projection reads.
//!
//! Timestamps are Unix milliseconds. Versions (`profile_ver`, `channel_info_ver`, `settings_ver`,
//! `ver`) grow by one on every change of the fields they cover; the projection relies on that.

use serde::{Deserialize, Serialize};

/// The write-side tables, one per row type below (and per [`crate::change::RowChange`] variant):
/// what the CDC relay captures by default, what a test resets. The one list; everything else that
/// names them all derives from it.
pub const WRITE_TABLES: [&str; 5] = [
    "users",
    "channels",
    "channel_members",
    "friendships",
    "messages",
];

pub type UserId = i64;
pub type ChannelId = i64;
pub type MessageId = i64;

/// A text column holding a value its enum does not have (the column's `CHECK` allows only the
/// enum's values, so this means a schema the code does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{column} cannot be {value:?}")]
pub struct UnknownValue {
    pub column: &'static str,
    pub value: String,
}

impl UnknownValue {
    fn new(column: &'static str, value: &str) -> Self {
        UnknownValue {
            column,
            value: value.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    Single,
    Group,
}

impl ChannelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Single => "single",
            ChannelType::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "single" => Ok(ChannelType::Single),
            "group" => Ok(ChannelType::Group),
            _ => Err(UnknownValue::new("channel_type", s)),
        }
    }
}

/// How a channel's messages reach its members' conversation rows (see `docs/fanout.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fanout {
    /// Write diffusion: every member's row carries the channel's name and last message, and is
    /// rewritten by each message. Single chats and small groups.
    #[default]
    Write,
    /// Read diffusion: the channel's name and last message live in its one `channel_view` row;
    /// members' rows carry only what belongs to the member. Large groups.
    Read,
}

impl Fanout {
    pub fn as_str(self) -> &'static str {
        match self {
            Fanout::Write => "write",
            Fanout::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "write" => Ok(Fanout::Write),
            "read" => Ok(Fanout::Read),
            _ => Err(UnknownValue::new("fanout", s)),
        }
    }

    /// The diffusion a group of `members` should be in, given the one it is in now: read above
    /// `read_threshold`, write again only at `write_threshold` or below, so that a group on the
    /// boundary does not flip back and forth.
    pub fn for_members(self, members: i64, cfg: &FanoutConfig) -> Fanout {
        match self {
            Fanout::Write if members > cfg.read_threshold => Fanout::Read,
            Fanout::Read if members <= cfg.write_threshold() => Fanout::Write,
            same => same,
        }
    }
}

/// When groups switch between write and read diffusion (`fanout.*` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    /// A group with more members than this is in read diffusion. Chosen by measurement: see
    /// `docs/fanout.md`.
    pub read_threshold: i64,
    /// A group in read diffusion goes back to write diffusion at this many members or fewer;
    /// unset: half of `read_threshold`. At most `read_threshold` (the gap is the hysteresis).
    pub write_threshold: Option<i64>,
}

impl FanoutConfig {
    /// [`FanoutConfig::write_threshold`], or its default.
    pub fn write_threshold(&self) -> i64 {
        self.write_threshold.unwrap_or(self.read_threshold / 2)
    }
}

/// Default of [`FanoutConfig::read_threshold`].
pub const DEFAULT_READ_THRESHOLD: i64 = 50;

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            read_threshold: DEFAULT_READ_THRESHOLD,
            write_threshold: None,
        }
    }
}

fn first_version() -> i64 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: UserId,
    pub nickname: String,
    pub avatar: String,
    pub profile_ver: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRow {
    pub id: ChannelId,
    pub channel_type: ChannelType,
    pub name: String,
    pub avatar: String,
    pub channel_status: String,
    pub channel_info_ver: i64,
    pub member_count: i32,
    pub creator_id: UserId,
    pub last_seq: i64,
    /// Single chats only: the two users, smaller id first (a pair has one channel for life).
    pub pair_low: Option<UserId>,
    pub pair_high: Option<UserId>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Groups only may be in [`Fanout::Read`]. Changes recorded before hermet had hybrid
    /// fan-out carry neither field: they were all write diffusion.
    #[serde(default)]
    pub fanout: Fanout,
    /// Moves by one each time `fanout` flips.
    #[serde(default = "first_version")]
    pub fanout_ver: i64,
}

impl ChannelRow {
    /// In a single chat, the other user of the pair.
    pub fn peer_of(&self, user: UserId) -> Option<UserId> {
        match (self.channel_type, self.pair_low, self.pair_high) {
            (ChannelType::Single, Some(lo), Some(hi)) if lo == user => Some(hi),
            (ChannelType::Single, Some(lo), Some(hi)) if hi == user => Some(lo),
            _ => None,
        }
    }
}

/// A member's role in a channel (`channel_members.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Manages a group (renames it, adds and removes members). One per group; when the owner
    /// leaves, another member becomes owner.
    Owner,
    Member,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "owner" => Ok(MemberRole::Owner),
            "member" => Ok(MemberRole::Member),
            _ => Err(UnknownValue::new("role", s)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub role: MemberRole,
    pub joined_at: i64,
    /// Set while the user is not a member (left or removed).
    pub left_at: Option<i64>,
    /// The channel's `last_seq` when the user left: the last message they saw.
    pub left_seq: Option<i64>,
    pub read_seq: i64,
    pub pinned: bool,
    pub muted: bool,
    /// Hidden while the conversation's last seq is `<=` this.
    pub hidden_at_seq: Option<i64>,
    pub settings_ver: i64,
}

impl MemberRow {
    pub fn is_active(&self) -> bool {
        self.left_at.is_none()
    }
}

/// Whether a friendship holds (`friendships.status`). Rows are never deleted: unfriending marks
/// the row deleted, and befriending again makes it active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FriendshipStatus {
    Active,
    Deleted,
}

impl FriendshipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FriendshipStatus::Active => "active",
            FriendshipStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "active" => Ok(FriendshipStatus::Active),
            "deleted" => Ok(FriendshipStatus::Deleted),
            _ => Err(UnknownValue::new("status", s)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendshipRow {
    pub user_id: UserId,
    pub friend_id: UserId,
    pub remark_name: String,
    pub group_name: String,
    pub starred: bool,
    pub status: FriendshipStatus,
    pub ver: i64,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

impl FriendshipRow {
    pub fn is_active(&self) -> bool {
        self.status == FriendshipStatus::Active
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub seq: i64,
    pub sender_id: UserId,
    pub sender_name: String,
    pub msg_type: String,
    pub content: String,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of each value is its column's text and its JSON (outbox rows, Debezium events),
    /// and parses back; anything else is refused with the column's name.
    #[test]
    fn text_values_round_trip() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
            values: &[T],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Result<T, UnknownValue>,
            column: &'static str,
        ) {
            for &v in values {
                assert_eq!(parse(as_str(v)), Ok(v));
                let json = serde_json::to_string(&v).expect("serialize");
                assert_eq!(json, format!("\"{}\"", as_str(v)));
            }
            assert_eq!(parse("Bogus"), Err(UnknownValue::new(column, "Bogus")));
        }
        use FriendshipStatus as S;
        check(&[S::Active, S::Deleted], S::as_str, S::parse, "status");
        use MemberRole as R;
        check(&[R::Owner, R::Member], R::as_str, R::parse, "role");
        use ChannelType as C;
        check(&[C::Single, C::Group], C::as_str, C::parse, "channel_type");
        check(
            &[Fanout::Write, Fanout::Read],
            Fanout::as_str,
            Fanout::parse,
            "fanout",
        );
        assert_eq!(
            UnknownValue::new("role", "admin").to_string(),
            r#"role cannot be "admin""#
        );
    }
}
