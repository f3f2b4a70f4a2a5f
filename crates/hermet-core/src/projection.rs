//! The projection: from row changes to view rows.
//!
//! It runs in two pure steps around one look-up of current write-side state:
//!
//! 1. [`affected`] says which view rows a batch of changes touches, in terms the store can
//!    resolve (channels whose member rows change, users whose profile fans out, friend pairs);
//! 2. the store resolves those into view keys and loads, per key, the current write-side rows
//!    ([`ConversationInputs`], [`ContactInputs`]);
//! 3. [`build`] turns the inputs into a [`ViewBatch`] of full rows with versions.
//!
//! Rows are built from the state at look-up time, never from the change itself, so a change
//! that arrives late, twice or out of order cannot make a row wrong: at worst it recomputes a row
//! that is already right, and the store's version guards reject anything older than what it has.
//! The same code serves `dual_write` (inside the command's transaction), `async` (the outbox
//! worker) and `cdc` (the Kafka projectors).
//!
//! # The assumption this rests on, and where it is enforced
//!
//! State-based rows are only right if the look-up **sees the change being applied**. That holds
//! by construction in `dual_write` (the look-up runs in the writing transaction) and in `async`
//! (the outbox row becomes visible atomically with the write it describes). It does *not* hold by
//! itself in `cdc`: PostgreSQL flushes a commit record, and logical decoding may ship it, before
//! the transaction is visible to other sessions (a synchronous standby's wait, a descheduled
//! backend). A look-up in that window rebuilt the row from the state before the change, the
//! event was acknowledged, and the row stayed wrong for good. So every WAL-fed reader first waits
//! until the transactions of its batch are visible (`hermet_projector::visibility`, the check in
//! `hermet_store::visibility`); a transaction still invisible after a bound is dead-lettered,
//! never applied from older state. Anything new that feeds this projection from outside the
//! writing transaction owes the same guarantee.

use std::collections::{BTreeMap, BTreeSet};

use crate::change::RowChange;
use crate::rows::{
    ChannelId, ChannelRow, ChannelType, Fanout, FriendshipRow, MemberRow, MessageRow, UserId,
    UserRow,
};
use crate::views::{
    ChannelViewRow, ContactRef, ContactRow, ConversationRef, ConversationRow, LastMessage,
    ViewBatch,
};

/// Settings of the projection that change what a row looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionConfig {
    /// Characters of a message kept in the conversation preview.
    pub preview_chars: usize,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig { preview_chars: 50 }
    }
}

/// A read model: a family of view tables kept converged together, by one Kafka consumer group
/// in `cdc` (`conversation-view-updater`, `contact-view-updater`), rebuilt together, and waited
/// for together by read-your-writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadModel {
    /// `user_conversation_view`, `channel_view` and `conversation_reverse_index`.
    Conversations,
    /// `user_contact_view` and `contact_reverse_index`.
    Contacts,
}

impl ReadModel {
    pub const ALL: [ReadModel; 2] = [ReadModel::Conversations, ReadModel::Contacts];

    /// Its position in [`ReadModel::ALL`], for per-model arrays.
    pub fn index(self) -> usize {
        match self {
            ReadModel::Conversations => 0,
            ReadModel::Contacts => 1,
        }
    }
}

/// The set of read models a projector maintains. `dual_write` and the outbox worker maintain
/// both; the Kafka consumer groups split them (`conversation-view-updater`,
/// `contact-view-updater`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadModels {
    /// [`ReadModel::Conversations`].
    pub conversations: bool,
    /// [`ReadModel::Contacts`].
    pub contacts: bool,
}

impl ReadModels {
    pub const ALL: ReadModels = ReadModels {
        conversations: true,
        contacts: true,
    };
    pub const CONVERSATIONS: ReadModels = ReadModels {
        conversations: true,
        contacts: false,
    };
    pub const CONTACTS: ReadModels = ReadModels {
        conversations: false,
        contacts: true,
    };

    /// Whether `model` is in the set.
    pub fn contains(self, model: ReadModel) -> bool {
        match model {
            ReadModel::Conversations => self.conversations,
            ReadModel::Contacts => self.contacts,
        }
    }

    /// Whether a change of write-side `table` can alter these read models, so a projector for
    /// them must read that table's changes. The contact views embed only users and friendships
    /// (see [`affected`]: `profile_users`, `friend_pairs`); conversations embed every table. A
    /// table this does not know is read by the conversation projector, which reports it as
    /// poison rather than dropping it.
    pub fn reads_table(self, table: &str) -> bool {
        self.conversations || (self.contacts && matches!(table, "users" | "friendships"))
    }
}

/// What a batch of changes touches, before any look-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affected {
    /// Channels whose type or diffusion changed (or whose change came without a before image, so
    /// anything may have): the channel row and every member row, current or former.
    pub channels_all_members: BTreeSet<ChannelId>,
    /// Channels whose name/avatar changed: the channel row, and every member row of a channel in
    /// write diffusion (in read diffusion members' rows do not carry the name).
    pub channels_info: BTreeSet<ChannelId>,
    /// Channels with new messages, with the lowest new seq: the channel row, and in write
    /// diffusion the rows of members who can see it (still members, or left at or after that
    /// seq).
    pub channels_new_messages: BTreeMap<ChannelId, i64>,
    /// Channels whose `channel_view` row alone is recomputed (a repair of that row).
    pub channel_rows: BTreeSet<ChannelId>,
    /// Individual member rows that changed (join, leave, settings, read position).
    pub conversation_keys: BTreeSet<(UserId, ChannelId)>,
    /// Users whose profile changed: every row that embeds them, found through the reverse indexes.
    pub profile_users: BTreeSet<UserId>,
    /// Friendships `(owner, friend)` that changed: the owner's contact row and the remark in the
    /// owner's single-chat row.
    pub friend_pairs: BTreeSet<(UserId, UserId)>,
}

impl Affected {
    pub fn is_empty(&self) -> bool {
        self.channels_all_members.is_empty()
            && self.channels_info.is_empty()
            && self.channels_new_messages.is_empty()
            && self.channel_rows.is_empty()
            && self.conversation_keys.is_empty()
            && self.profile_users.is_empty()
            && self.friend_pairs.is_empty()
    }
}

/// Which view rows the changes touch. Deletes of write-side rows do not occur in hermet (leaving,
/// unfriending and hiding are updates), but a delete is still mapped to its key so a manual
/// delete makes the projection recompute, and then drop nothing it cannot rebuild.
pub fn affected(changes: &[RowChange]) -> Affected {
    let mut a = Affected::default();
    for change in changes {
        match change {
            RowChange::Users(c) => {
                if let Some(u) = c.row() {
                    a.profile_users.insert(u.id);
                }
            }
            RowChange::Channels(c) => match (&c.before, &c.after) {
                // With both images we know what moved. A new shape (type, diffusion) reaches
                // every member row; name/avatar reach the channel row and, in write diffusion,
                // every member row; a new `last_seq` reaches the channel row and the members who
                // can see the new messages; a member-count change alone reaches nobody (the
                // member changes carry it, and the diffusion it may flip has its own version).
                (Some(b), Some(n)) => {
                    if b.fanout_ver != n.fanout_ver || b.channel_type != n.channel_type {
                        a.channels_all_members.insert(n.id);
                    } else {
                        if b.channel_info_ver != n.channel_info_ver {
                            a.channels_info.insert(n.id);
                        }
                        if n.last_seq > b.last_seq {
                            note_message(&mut a, n.id, b.last_seq + 1);
                        }
                    }
                }
                // Without a before image (inserts, snapshots, sources that do not carry it),
                // anything may have changed.
                _ => {
                    if let Some(ch) = c.row() {
                        a.channels_all_members.insert(ch.id);
                    }
                }
            },
            RowChange::ChannelMembers(c) => {
                if let Some(m) = c.row() {
                    a.conversation_keys.insert((m.user_id, m.channel_id));
                }
            }
            RowChange::Friendships(c) => {
                if let Some(f) = c.row() {
                    a.friend_pairs.insert((f.user_id, f.friend_id));
                }
            }
            RowChange::Messages(c) => {
                if let Some(m) = c.row() {
                    note_message(&mut a, m.channel_id, m.seq);
                }
            }
        }
    }
    a
}

fn note_message(a: &mut Affected, channel: ChannelId, seq: i64) {
    a.channels_new_messages
        .entry(channel)
        .and_modify(|s| *s = (*s).min(seq))
        .or_insert(seq);
}

/// The write-side state one conversation row is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInputs {
    pub member: MemberRow,
    pub channel: ChannelRow,
    /// Single chats: the other user.
    pub peer: Option<UserRow>,
    /// Single chats: the owner's friendship row towards the peer (for the remark name).
    pub friendship: Option<FriendshipRow>,
    /// The message at [`visible_seq`] if there is one.
    pub last_message: Option<MessageRow>,
}

/// The write-side state one `channel_view` row is computed from (group channels only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInputs {
    pub channel: ChannelRow,
    /// The message at the channel's `last_seq` if there is one.
    pub last_message: Option<MessageRow>,
}

/// The seq of the last message a member can see: the channel's last, or the last before they left.
pub fn visible_seq(member: &MemberRow, channel: &ChannelRow) -> i64 {
    match member.left_seq {
        Some(left) if member.left_at.is_some() => left.min(channel.last_seq),
        _ => channel.last_seq,
    }
}

/// The write-side state one contact row is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactInputs {
    pub friendship: FriendshipRow,
    pub contact: UserRow,
}

/// The first `max_chars` characters of `content`, never splitting a character.
pub fn preview(content: &str, max_chars: usize) -> String {
    match content.char_indices().nth(max_chars) {
        Some((end, _)) => content[..end].to_owned(),
        None => content.to_owned(),
    }
}

fn listed_message(msg: &MessageRow, cfg: &ProjectionConfig) -> LastMessage {
    LastMessage {
        id: msg.id,
        seq: msg.seq,
        msg_type: msg.msg_type.clone(),
        content: preview(&msg.content, cfg.preview_chars),
        sender_id: msg.sender_id,
        sender_name: msg.sender_name.clone(),
        created_at: msg.created_at,
    }
}

/// A channel's diffusion as its member rows take it: only groups are ever in read diffusion.
pub fn fanout_of(ch: &ChannelRow) -> Fanout {
    match ch.channel_type {
        ChannelType::Group => ch.fanout,
        ChannelType::Single => Fanout::Write,
    }
}

pub fn conversation_row(inp: &ConversationInputs, cfg: &ProjectionConfig) -> ConversationRow {
    let m = &inp.member;
    let ch = &inp.channel;
    let fanout = fanout_of(ch);
    if fanout == Fanout::Read {
        return member_state_row(m, ch);
    }
    let single = ch.channel_type == ChannelType::Single;
    let last_message = inp
        .last_message
        .as_ref()
        .filter(|msg| msg.seq == visible_seq(m, ch) && msg.channel_id == ch.id)
        .map(|msg| listed_message(msg, cfg));
    let peer = inp.peer.as_ref().filter(|_| single);
    let friendship = inp.friendship.as_ref().filter(|_| single);
    ConversationRow {
        user_id: m.user_id,
        channel_id: ch.id,
        fanout,
        fanout_ver: ch.fanout_ver,
        conversation_type: ch.channel_type,
        channel_name: if single {
            String::new()
        } else {
            ch.name.clone()
        },
        channel_avatar: if single {
            String::new()
        } else {
            ch.avatar.clone()
        },
        channel_info_ver: ch.channel_info_ver,
        peer_user_id: peer.map(|p| p.id),
        peer_nickname: peer.map(|p| p.nickname.clone()),
        peer_avatar: peer.map(|p| p.avatar.clone()),
        peer_profile_ver: peer.map_or(0, |p| p.profile_ver),
        remark_name: friendship.map_or_else(String::new, |f| f.remark_name.clone()),
        remark_ver: friendship.map_or(0, |f| f.ver),
        last_message_seq: last_message.as_ref().map_or(0, |l| l.seq),
        last_message,
        read_seq: m.read_seq,
        is_pinned: m.pinned,
        is_muted: m.muted,
        hidden_at_seq: m.hidden_at_seq,
        opened_at: m.joined_at,
        closed_at: m.left_at.unwrap_or(0),
        settings_ver: m.settings_ver,
    }
}

/// A member's row in read diffusion: what belongs to the member, the channel and last-message
/// groups blank (the list takes them from the channel's row).
fn member_state_row(m: &MemberRow, ch: &ChannelRow) -> ConversationRow {
    ConversationRow {
        user_id: m.user_id,
        channel_id: ch.id,
        fanout: Fanout::Read,
        fanout_ver: ch.fanout_ver,
        conversation_type: ch.channel_type,
        channel_name: String::new(),
        channel_avatar: String::new(),
        channel_info_ver: 0,
        peer_user_id: None,
        peer_nickname: None,
        peer_avatar: None,
        peer_profile_ver: 0,
        remark_name: String::new(),
        remark_ver: 0,
        last_message_seq: 0,
        last_message: None,
        read_seq: m.read_seq,
        is_pinned: m.pinned,
        is_muted: m.muted,
        hidden_at_seq: m.hidden_at_seq,
        opened_at: m.joined_at,
        closed_at: m.left_at.unwrap_or(0),
        settings_ver: m.settings_ver,
    }
}

/// A group's `channel_view` row; `None` for a single chat (its rows carry the peer instead).
pub fn channel_view_row(inp: &ChannelInputs, cfg: &ProjectionConfig) -> Option<ChannelViewRow> {
    let ch = &inp.channel;
    if ch.channel_type != ChannelType::Group {
        return None;
    }
    let last_message = inp
        .last_message
        .as_ref()
        .filter(|msg| msg.seq == ch.last_seq && msg.channel_id == ch.id)
        .map(|msg| listed_message(msg, cfg));
    Some(ChannelViewRow {
        channel_id: ch.id,
        channel_name: ch.name.clone(),
        channel_avatar: ch.avatar.clone(),
        channel_info_ver: ch.channel_info_ver,
        last_message_seq: last_message.as_ref().map_or(0, |l| l.seq),
        last_message,
    })
}

pub fn contact_row(inp: &ContactInputs) -> ContactRow {
    let f = &inp.friendship;
    ContactRow {
        user_id: f.user_id,
        contact_id: f.friend_id,
        contact_nickname: inp.contact.nickname.clone(),
        contact_avatar: inp.contact.avatar.clone(),
        contact_info_ver: inp.contact.profile_ver,
        remark_name: f.remark_name.clone(),
        group_name: f.group_name.clone(),
        is_starred: f.starred,
        deleted_at: f.deleted_at.unwrap_or(0),
        friendship_ver: f.ver,
    }
}

/// Builds the rows from the looked-up state, and the reverse-index entry of every row that
/// embeds a profile: each single-chat conversation row (its peer) and each contact row.
///
/// The entry goes with the row whatever event built it, not only with the member or friendship
/// change that created it: that change may have been dead-lettered while a channel or message
/// change (re)created the row, and a row without its entry never hears of its peer's next
/// profile change. Entries of rows that already have one cost an index probe
/// (`ON CONFLICT DO NOTHING` in the store). An entry is never removed: a single chat's pair and a
/// friendship's pair never change (leaving or unfriending is an update), so it stays right.
pub fn build(
    conversations: &[ConversationInputs],
    channels: &[ChannelInputs],
    contacts: &[ContactInputs],
    cfg: &ProjectionConfig,
) -> ViewBatch {
    let chans: BTreeMap<ChannelId, ChannelViewRow> = channels
        .iter()
        .filter_map(|inp| channel_view_row(inp, cfg))
        .map(|row| (row.channel_id, row))
        .collect();
    let mut conv: BTreeMap<(UserId, ChannelId), ConversationRow> = BTreeMap::new();
    let mut conv_refs = BTreeSet::new();
    for inp in conversations {
        let row = conversation_row(inp, cfg);
        // From the channel's pair, not from the looked-up peer row: the entry is about which
        // rows embed whom, whatever the profile looks like.
        if let Some(peer) = inp.channel.peer_of(inp.member.user_id) {
            conv_refs.insert(ConversationRef {
                peer_user_id: peer,
                owner_user_id: row.user_id,
                channel_id: row.channel_id,
            });
        }
        conv.insert(row.key(), row);
    }
    let mut cont: BTreeMap<(UserId, UserId), ContactRow> = BTreeMap::new();
    let mut cont_refs = BTreeSet::new();
    for inp in contacts {
        let row = contact_row(inp);
        cont_refs.insert(ContactRef {
            contact_user_id: row.contact_id,
            owner_user_id: row.user_id,
        });
        cont.insert(row.key(), row);
    }
    ViewBatch {
        conversations: conv.into_values().collect(),
        channels: chans.into_values().collect(),
        contacts: cont.into_values().collect(),
        conversation_refs: conv_refs.into_iter().collect(),
        contact_refs: cont_refs.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;

    fn channel(id: i64, t: ChannelType, last_seq: i64) -> ChannelRow {
        ChannelRow {
            id,
            channel_type: t,
            name: if t == ChannelType::Group {
                "g".into()
            } else {
                String::new()
            },
            avatar: String::new(),
            channel_status: "active".into(),
            channel_info_ver: 1,
            member_count: 2,
            creator_id: 1,
            last_seq,
            pair_low: (t == ChannelType::Single).then_some(1),
            pair_high: (t == ChannelType::Single).then_some(2),
            created_at: 0,
            updated_at: 0,
            fanout: Fanout::Write,
            fanout_ver: 1,
        }
    }

    fn member(channel_id: i64, user_id: i64) -> MemberRow {
        MemberRow {
            channel_id,
            user_id,
            role: crate::rows::MemberRole::Member,
            joined_at: 5,
            left_at: None,
            left_seq: None,
            read_seq: 0,
            pinned: false,
            muted: false,
            hidden_at_seq: None,
            settings_ver: 1,
        }
    }

    fn message(channel_id: i64, seq: i64, content: &str) -> MessageRow {
        MessageRow {
            id: 100 + seq,
            channel_id,
            seq,
            sender_id: 2,
            sender_name: "bob".into(),
            msg_type: "text".into(),
            content: content.into(),
            created_at: 10 * seq,
        }
    }

    #[test]
    fn preview_keeps_whole_characters() {
        assert_eq!(preview("héllo", 2), "hé");
        assert_eq!(preview("日本語テキスト", 3), "日本語");
        assert_eq!(preview("short", 50), "short");
        assert_eq!(preview("", 3), "");
        assert_eq!(preview("👍👍", 1), "👍");
    }

    /// What the contact projector does not read must never reach a contact row: its keys come
    /// only from `profile_users` and `friend_pairs`.
    #[test]
    fn contacts_read_only_users_and_friendships() {
        let ch = channel(7, ChannelType::Single, 3);
        let mut renamed = ch.clone();
        renamed.channel_info_ver = 2;
        let others = [
            RowChange::Channels(Change::inserted(ch.clone())),
            RowChange::Channels(Change {
                op: crate::change::Op::Update,
                before: Some(ch),
                after: Some(renamed),
            }),
            RowChange::ChannelMembers(Change::updated(member(7, 1))),
            RowChange::Messages(Change::inserted(message(7, 4, "a"))),
        ];
        for c in &others {
            assert!(
                !ReadModels::CONTACTS.reads_table(c.table()),
                "{}",
                c.table()
            );
            assert!(ReadModels::CONVERSATIONS.reads_table(c.table()));
            let a = affected(std::slice::from_ref(c));
            assert!(
                a.profile_users.is_empty() && a.friend_pairs.is_empty(),
                "{c:?}"
            );
        }
        for t in ["users", "friendships"] {
            assert!(
                ReadModels::CONTACTS.reads_table(t) && ReadModels::CONVERSATIONS.reads_table(t)
            );
        }
        assert!(!ReadModels::CONTACTS.reads_table("audit_log"));
        assert!(ReadModels::CONVERSATIONS.reads_table("audit_log"));
    }

    #[test]
    fn message_changes_touch_members_from_the_lowest_seq() {
        let changes = vec![
            RowChange::Messages(Change::inserted(message(7, 4, "a"))),
            RowChange::Messages(Change::inserted(message(7, 3, "b"))),
            RowChange::Messages(Change::inserted(message(8, 1, "c"))),
        ];
        let a = affected(&changes);
        assert_eq!(a.channels_new_messages.get(&7), Some(&3));
        assert_eq!(a.channels_new_messages.get(&8), Some(&1));
        assert!(a.channels_all_members.is_empty());
    }

    #[test]
    fn channel_info_change_reaches_the_channel_and_a_flip_every_member() {
        let before = channel(7, ChannelType::Group, 3);
        let mut after = before.clone();
        after.channel_info_ver = 2;
        after.name = "renamed".into();
        let changes = vec![RowChange::Channels(Change {
            op: crate::change::Op::Update,
            before: Some(before.clone()),
            after: Some(after),
        })];
        let a = affected(&changes);
        assert!(a.channels_info.contains(&7));
        assert!(a.channels_all_members.is_empty(), "the shape did not move");
        let mut flipped = before.clone();
        flipped.fanout = Fanout::Read;
        flipped.fanout_ver = 2;
        flipped.member_count = 300;
        let changes = vec![RowChange::Channels(Change {
            op: crate::change::Op::Update,
            before: Some(before.clone()),
            after: Some(flipped),
        })];
        assert!(affected(&changes).channels_all_members.contains(&7));
        let mut seq_only = before.clone();
        seq_only.last_seq = 5;
        let changes = vec![RowChange::Channels(Change {
            op: crate::change::Op::Update,
            before: Some(before.clone()),
            after: Some(seq_only),
        })];
        let a = affected(&changes);
        assert!(a.channels_all_members.is_empty());
        assert_eq!(
            a.channels_new_messages.get(&7),
            Some(&4),
            "from the first new seq"
        );
        let mut count_only = before.clone();
        count_only.member_count += 1;
        let changes = vec![RowChange::Channels(Change {
            op: crate::change::Op::Update,
            before: Some(before),
            after: Some(count_only),
        })];
        assert!(
            affected(&changes).is_empty(),
            "a member count alone touches no row"
        );
    }

    /// In read diffusion a member's row carries only the member's state; the channel's row
    /// carries the name and the last message, for every group whatever its diffusion.
    #[test]
    fn read_diffusion_rows_carry_member_state_and_the_channel_row_the_rest() {
        let mut ch = channel(7, ChannelType::Group, 9);
        ch.fanout = Fanout::Read;
        ch.fanout_ver = 3;
        let mut m = member(7, 1);
        m.read_seq = 4;
        m.pinned = true;
        let inp = ConversationInputs {
            member: m,
            channel: ch.clone(),
            peer: None,
            friendship: None,
            last_message: Some(message(7, 9, "hello")),
        };
        let cfg = ProjectionConfig::default();
        let row = conversation_row(&inp, &cfg);
        assert_eq!((row.fanout, row.fanout_ver), (Fanout::Read, 3));
        assert_eq!((row.read_seq, row.is_pinned, row.opened_at), (4, true, 5));
        assert!(row.last_message.is_none() && row.last_message_seq == 0);
        assert!(row.channel_name.is_empty() && row.channel_info_ver == 0);
        let chan = ChannelInputs {
            channel: ch.clone(),
            last_message: Some(message(7, 9, "hello")),
        };
        let cv = channel_view_row(&chan, &cfg).expect("a group has a channel row");
        assert_eq!((cv.channel_name.as_str(), cv.last_message_seq), ("g", 9));
        let mut write = ch;
        write.fanout = Fanout::Write;
        let full = conversation_row(
            &ConversationInputs {
                channel: write.clone(),
                ..inp
            },
            &cfg,
        );
        assert_eq!(full.last_message_seq, 9);
        assert_eq!(full.channel_name, "g");
        let single = ChannelInputs {
            channel: channel(8, ChannelType::Single, 1),
            last_message: None,
        };
        assert!(channel_view_row(&single, &cfg).is_none());
        let batch = build(&[], &[chan.clone(), chan], &[], &cfg);
        assert_eq!(batch.channels.len(), 1, "one row per channel");
    }

    #[test]
    fn the_diffusion_flips_with_hysteresis() {
        let cfg = crate::rows::FanoutConfig {
            read_threshold: 200,
            write_threshold: None,
        };
        assert_eq!(cfg.write_threshold(), 100);
        assert_eq!(Fanout::Write.for_members(200, &cfg), Fanout::Write);
        assert_eq!(Fanout::Write.for_members(201, &cfg), Fanout::Read);
        assert_eq!(Fanout::Read.for_members(150, &cfg), Fanout::Read);
        assert_eq!(Fanout::Read.for_members(101, &cfg), Fanout::Read);
        assert_eq!(Fanout::Read.for_members(100, &cfg), Fanout::Write);
        let tight = crate::rows::FanoutConfig {
            read_threshold: 2,
            write_threshold: Some(2),
        };
        assert_eq!(Fanout::Write.for_members(3, &tight), Fanout::Read);
        assert_eq!(Fanout::Read.for_members(2, &tight), Fanout::Write);
    }

    #[test]
    fn a_member_who_left_sees_the_last_message_before_leaving() {
        let ch = channel(7, ChannelType::Group, 9);
        let mut m = member(7, 1);
        m.left_at = Some(50);
        m.left_seq = Some(4);
        assert_eq!(visible_seq(&m, &ch), 4);
        let inp = ConversationInputs {
            member: m,
            channel: ch,
            peer: None,
            friendship: None,
            last_message: Some(message(7, 4, "bye")),
        };
        let row = conversation_row(&inp, &ProjectionConfig::default());
        assert_eq!(row.last_message_seq, 4);
        assert_eq!(row.closed_at, 50);
        assert_eq!(row.last_message.unwrap().content, "bye");
    }

    #[test]
    fn a_message_that_is_not_the_visible_one_is_ignored() {
        let inp = ConversationInputs {
            member: member(7, 1),
            channel: channel(7, ChannelType::Group, 9),
            peer: None,
            friendship: None,
            last_message: Some(message(7, 8, "old")),
        };
        let row = conversation_row(&inp, &ProjectionConfig::default());
        assert_eq!(row.last_message_seq, 0);
        assert!(row.last_message.is_none());
    }

    #[test]
    fn single_chat_rows_embed_peer_and_remark_and_index_them() {
        let peer = UserRow {
            id: 2,
            nickname: "bob".into(),
            avatar: "a".into(),
            profile_ver: 3,
            created_at: 0,
            updated_at: 0,
        };
        let f = FriendshipRow {
            user_id: 1,
            friend_id: 2,
            remark_name: "Bobby".into(),
            group_name: String::new(),
            starred: false,
            status: crate::rows::FriendshipStatus::Active,
            ver: 2,
            created_at: 0,
            deleted_at: None,
        };
        let conv = ConversationInputs {
            member: member(7, 1),
            channel: channel(7, ChannelType::Single, 0),
            peer: Some(peer.clone()),
            friendship: Some(f.clone()),
            last_message: None,
        };
        let batch = build(
            &[conv.clone(), conv],
            &[],
            &[ContactInputs {
                friendship: f,
                contact: peer,
            }],
            &ProjectionConfig::default(),
        );
        assert_eq!(
            batch.conversations.len(),
            1,
            "same key built twice is one row"
        );
        let row = &batch.conversations[0];
        assert_eq!(row.peer_nickname.as_deref(), Some("bob"));
        assert_eq!(row.peer_profile_ver, 3);
        assert_eq!(row.remark_name, "Bobby");
        assert_eq!(row.remark_ver, 2);
        assert_eq!(
            batch.conversation_refs,
            vec![ConversationRef {
                peer_user_id: 2,
                owner_user_id: 1,
                channel_id: 7
            }]
        );
        assert_eq!(batch.contacts[0].contact_info_ver, 3);
        assert_eq!(
            batch.contact_refs,
            vec![ContactRef {
                contact_user_id: 2,
                owner_user_id: 1
            }]
        );
    }

    /// A single-chat row built by a channel or message change (its member change went
    /// elsewhere, e.g. to the dead letters) still gets its reverse-index entry, so the peer's next
    /// profile change finds it; a group row gets none.
    #[test]
    fn every_single_chat_row_built_carries_its_reverse_index_entry() {
        let single = ConversationInputs {
            member: member(7, 1),
            channel: channel(7, ChannelType::Single, 4),
            peer: None,
            friendship: None,
            last_message: Some(message(7, 4, "hi")),
        };
        let group = ConversationInputs {
            member: member(8, 1),
            channel: channel(8, ChannelType::Group, 0),
            peer: None,
            friendship: None,
            last_message: None,
        };
        let changes = vec![RowChange::Messages(Change::inserted(message(7, 4, "hi")))];
        assert!(
            affected(&changes).conversation_keys.is_empty(),
            "no member change in the batch"
        );
        let batch = build(&[single, group], &[], &[], &ProjectionConfig::default());
        assert_eq!(batch.conversations.len(), 2);
        assert_eq!(
            batch.conversation_refs,
            vec![ConversationRef {
                peer_user_id: 2,
                owner_user_id: 1,
                channel_id: 7
            }],
            "the peer comes from the channel's pair, even when the peer's row was not loaded"
        );
    }
}
