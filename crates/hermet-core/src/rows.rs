//! Write-side rows, one struct per table, with the columns the projection reads.
//!
//! Timestamps are Unix milliseconds. Versions (`profile_ver`, `channel_info_ver`, `settings_ver`,
//! `ver`) grow by one on every change of the fields they cover; the projection relies on that.

use serde::{Deserialize, Serialize};

pub type UserId = i64;
pub type ChannelId = i64;
pub type MessageId = i64;

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

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "single" => Some(ChannelType::Single),
            "group" => Some(ChannelType::Group),
            _ => None,
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

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "write" => Some(Fanout::Write),
            "read" => Some(Fanout::Read),
            _ => None,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub role: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendshipRow {
    pub user_id: UserId,
    pub friend_id: UserId,
    pub remark_name: String,
    pub group_name: String,
    pub starred: bool,
    pub status: String,
    pub ver: i64,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

impl FriendshipRow {
    pub fn is_active(&self) -> bool {
        self.status == "active"
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
