//! Read-side rows and the batch a view store applies.
//!
//! A view row is split into column groups; each group carries the write-side version it was
//! computed from. A store merges an incoming row into an existing one group by group and keeps a
//! group only when its version is newer (`read_seq` keeps the maximum). That makes every apply
//! idempotent and lets stale or reordered computations arrive without harm.
//!
//! Columns that are functions of other columns (`conversation_name`, `conversation_avatar`,
//! `conversation_info_ver`, `unread_count`, `is_hidden`, `activity_at`) are not carried here: the
//! store derives them from the merged row in the statement that writes it.

use crate::rows::{ChannelId, ChannelType, Fanout, MessageId, UserId};

/// A group of view columns and the version that guards it: a store replaces the group's columns
/// only with those of a row carrying a newer version. The declarative description the stores
/// generate their upserts from (`hermet_store::views`), so the merge rule is written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnGroup {
    /// The version column; it keeps the maximum (or, for a [`Scope::Fanout`] group, the
    /// incoming value when the incoming row's shape is newer).
    pub guard: &'static str,
    pub columns: &'static [&'static str],
    pub scope: Scope,
}

/// Whether a group's guard is compared on its own or after the row's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The guard alone decides.
    Own,
    /// `(fanout_ver, guard)` compared in that order: a row of a newer shape (its channel flipped
    /// between write and read diffusion) replaces the group whatever the group's own guard says,
    /// since the shapes fill the group differently (read diffusion leaves it blank).
    Fanout,
}

/// The shape of a conversation row: which diffusion its channel was in, guarded by
/// `fanout_ver`. Every [`Scope::Fanout`] group follows it.
pub const CONVERSATION_SHAPE: ColumnGroup = ColumnGroup {
    guard: "fanout_ver",
    columns: &["fanout"],
    scope: Scope::Own,
};

/// The last-message group's columns, the same in both views (guarded by `last_message_seq`).
const LAST_MESSAGE_COLUMNS: &[&str] = &[
    "last_message_id",
    "last_message_type",
    "last_message_content",
    "last_message_sender_id",
    "last_message_sender_name",
    "last_message_time",
];

/// The column groups of `user_conversation_view` besides [`CONVERSATION_SHAPE`] and the monotonic
/// `read_seq` (the store keeps its maximum).
pub const CONVERSATION_GROUPS: [ColumnGroup; 5] = [
    ColumnGroup {
        guard: "channel_info_ver",
        columns: &["conversation_type", "channel_name", "channel_avatar"],
        scope: Scope::Fanout,
    },
    ColumnGroup {
        guard: "peer_profile_ver",
        columns: &["peer_user_id", "peer_nickname", "peer_avatar"],
        scope: Scope::Own,
    },
    ColumnGroup {
        guard: "remark_ver",
        columns: &["remark_name"],
        scope: Scope::Own,
    },
    ColumnGroup {
        guard: "last_message_seq",
        columns: LAST_MESSAGE_COLUMNS,
        scope: Scope::Fanout,
    },
    ColumnGroup {
        guard: "settings_ver",
        columns: &[
            "is_pinned",
            "is_muted",
            "hidden_at_seq",
            "opened_at",
            "closed_at",
        ],
        scope: Scope::Own,
    },
];

/// The column groups of `channel_view`.
pub const CHANNEL_GROUPS: [ColumnGroup; 2] = [
    ColumnGroup {
        guard: "channel_info_ver",
        columns: &["channel_name", "channel_avatar"],
        scope: Scope::Own,
    },
    ColumnGroup {
        guard: "last_message_seq",
        columns: LAST_MESSAGE_COLUMNS,
        scope: Scope::Own,
    },
];

/// The column groups of `user_contact_view`.
pub const CONTACT_GROUPS: [ColumnGroup; 2] = [
    ColumnGroup {
        guard: "contact_info_ver",
        columns: &["contact_nickname", "contact_avatar"],
        scope: Scope::Own,
    },
    ColumnGroup {
        guard: "friendship_ver",
        columns: &["remark_name", "group_name", "is_starred", "deleted_at"],
        scope: Scope::Own,
    },
];

/// The last message a member can see, as shown in the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMessage {
    pub id: MessageId,
    pub seq: i64,
    pub msg_type: String,
    /// Truncated to the configured preview length, on a character boundary.
    pub content: String,
    pub sender_id: UserId,
    pub sender_name: String,
    pub created_at: i64,
}

/// One row of `user_conversation_view`, by column group.
///
/// In read diffusion ([`Fanout::Read`]) the channel and last-message groups are blank (empty
/// name and avatar, version 0, no message): the list reads them from the channel's
/// [`ChannelViewRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub user_id: UserId,
    pub channel_id: ChannelId,
    /// Shape group ([`CONVERSATION_SHAPE`]), guarded by `fanout_ver` (the channel's).
    pub fanout: Fanout,
    pub fanout_ver: i64,
    pub conversation_type: ChannelType,
    /// Channel group, guarded by `channel_info_ver`. Empty for single chats.
    pub channel_name: String,
    pub channel_avatar: String,
    pub channel_info_ver: i64,
    /// Peer group (single chats), guarded by `peer_profile_ver` (the peer's `profile_ver`).
    pub peer_user_id: Option<UserId>,
    pub peer_nickname: Option<String>,
    pub peer_avatar: Option<String>,
    pub peer_profile_ver: i64,
    /// Remark group (single chats), guarded by `remark_ver` (the owner's friendship `ver`).
    pub remark_name: String,
    pub remark_ver: i64,
    /// Last-message group, guarded by `last_message_seq` (0 when there is none).
    pub last_message_seq: i64,
    pub last_message: Option<LastMessage>,
    /// Monotonic: the store keeps the maximum.
    pub read_seq: i64,
    /// Membership and settings group, guarded by `settings_ver`.
    pub is_pinned: bool,
    pub is_muted: bool,
    pub hidden_at_seq: Option<i64>,
    pub opened_at: i64,
    /// 0 while open.
    pub closed_at: i64,
    pub settings_ver: i64,
}

impl ConversationRow {
    pub fn key(&self) -> (UserId, ChannelId) {
        (self.user_id, self.channel_id)
    }
}

/// One row of `channel_view`: a group channel's name and last message, written once per
/// message or group edit whatever the group's size. Groups ([`CHANNEL_GROUPS`]) as in
/// [`ConversationRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelViewRow {
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub channel_avatar: String,
    pub channel_info_ver: i64,
    pub last_message_seq: i64,
    pub last_message: Option<LastMessage>,
}

/// One row of `user_contact_view`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    pub user_id: UserId,
    pub contact_id: UserId,
    /// Profile group, guarded by `contact_info_ver` (the contact's `profile_ver`).
    pub contact_nickname: String,
    pub contact_avatar: String,
    pub contact_info_ver: i64,
    /// Friendship group, guarded by `friendship_ver`.
    pub remark_name: String,
    pub group_name: String,
    pub is_starred: bool,
    /// 0 while the friendship is active.
    pub deleted_at: i64,
    pub friendship_ver: i64,
}

impl ContactRow {
    pub fn key(&self) -> (UserId, UserId) {
        (self.user_id, self.contact_id)
    }
}

/// `conversation_reverse_index`: the single-chat row `(owner, channel)` embeds `peer`'s profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversationRef {
    pub peer_user_id: UserId,
    pub owner_user_id: UserId,
    pub channel_id: ChannelId,
}

/// `contact_reverse_index`: the contact row of `owner` embeds `contact`'s profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContactRef {
    pub contact_user_id: UserId,
    pub owner_user_id: UserId,
}

/// Everything one projection step writes. Rows are sorted by key and unique, so concurrent
/// batches lock rows in the same order and cannot deadlock each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewBatch {
    pub conversations: Vec<ConversationRow>,
    /// `channel_view` rows, by channel id.
    pub channels: Vec<ChannelViewRow>,
    pub contacts: Vec<ContactRow>,
    pub conversation_refs: Vec<ConversationRef>,
    pub contact_refs: Vec<ContactRef>,
}

impl ViewBatch {
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
            && self.channels.is_empty()
            && self.contacts.is_empty()
            && self.conversation_refs.is_empty()
            && self.contact_refs.is_empty()
    }

    /// Number of view rows (both views and both indexes) the batch writes.
    pub fn len(&self) -> usize {
        self.conversations.len()
            + self.channels.len()
            + self.contacts.len()
            + self.conversation_refs.len()
            + self.contact_refs.len()
    }
}
