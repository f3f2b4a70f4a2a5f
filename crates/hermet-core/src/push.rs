//! Push: what a connected client is told when the write side changes, and who is told.
//!
//! - [`PushEvent`]: the JSON events of `GET /v1/ws` (`{"type": "message", ...}`, ...). They are
//!   hints, not data: a client re-reads its lists (conversations, contacts, history) to get the
//!   content, so a missed event costs freshness, never correctness.
//! - [`PushSink`]: the port a notifier publishes through (the API's connection hub implements it).
//! - [`plan`]: which users a batch of row changes concerns, before any look-up. Pure.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::change::{Op, RowChange};
use crate::rows::{ChannelId, MessageId, UserId};

/// One push event, serialized with a `type` tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushEvent {
    /// A new message in one of the user's conversations.
    Message {
        channel_id: ChannelId,
        message_id: MessageId,
        seq: i64,
        sender_id: UserId,
    },
    /// Something in the user's row of this conversation changed (membership, settings, read
    /// position, the group's name or avatar, the peer's profile).
    ConversationChanged { channel_id: ChannelId },
    /// The user's contact entry for `contact_id` changed (friendship, remark, the contact's
    /// profile).
    ContactChanged { contact_id: UserId },
}

/// Where push events go.
///
/// Contract: delivery is **at most once** and only to users connected at that moment; `publish`
/// never blocks and never fails (a recipient that cannot keep up is disconnected instead, and
/// recovers by re-reading its lists). `is_connected`/`any_connected`/`connected_users` are hints a
/// publisher uses to skip work for users nobody is listening for; they may be stale by the time it
/// publishes (a user who connects meanwhile misses that event, as one who connects a moment later
/// would).
pub trait PushSink: Send + Sync + 'static {
    /// Whether `user` has at least one connection here.
    fn is_connected(&self, user: UserId) -> bool;
    /// Whether anyone at all is connected here.
    fn any_connected(&self) -> bool;
    /// The users with at least one connection here now, sorted and distinct: what a publisher
    /// intersects a channel's membership with, so that it never loads all members of a large
    /// channel (see `hermet_store::audience`).
    fn connected_users(&self) -> Vec<UserId>;
    /// Sends `event` to every connection of `user` (none: nothing happens).
    fn publish(&self, user: UserId, event: &PushEvent);
}

/// Who a batch of changes concerns, before any look-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushPlan {
    /// Events for one known user, in record order.
    pub direct: Vec<(UserId, PushEvent)>,
    /// Events for every active member of a channel, in record order.
    pub to_members: Vec<(ChannelId, PushEvent)>,
    /// Users whose profile changed: the owners of every row embedding them (found through the
    /// reverse indexes) get `conversation_changed`/`contact_changed`.
    pub profile_users: BTreeSet<UserId>,
}

impl PushPlan {
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.to_members.is_empty() && self.profile_users.is_empty()
    }

    /// The channels whose members must be looked up, without duplicates.
    pub fn member_channels(&self) -> Vec<ChannelId> {
        let set: BTreeSet<ChannelId> = self.to_members.iter().map(|(c, _)| *c).collect();
        set.into_iter().collect()
    }
}

/// Who hears about which change. Snapshot reads (`op = r`) are not changes and tell nobody.
///
/// - a new message: every active member gets `message`;
/// - a `channel_members` row: its user gets `conversation_changed`;
/// - a channel whose name/avatar/type version moved (both images needed: without the before
///   image the change cannot be told apart from a new `last_seq`, which the message itself
///   announces): every active member gets `conversation_changed`;
/// - a `friendships` row `(user, friend)`: `user` gets `contact_changed` for `friend`;
/// - a `users` row: everyone embedding that profile (see [`PushPlan::profile_users`]).
pub fn plan(changes: &[RowChange]) -> PushPlan {
    let mut p = PushPlan::default();
    for change in changes {
        match change {
            RowChange::Messages(c) => {
                if let (Op::Insert, Some(m)) = (c.op, &c.after) {
                    p.to_members.push((
                        m.channel_id,
                        PushEvent::Message {
                            channel_id: m.channel_id,
                            message_id: m.id,
                            seq: m.seq,
                            sender_id: m.sender_id,
                        },
                    ));
                }
            }
            RowChange::ChannelMembers(c) if c.op != Op::Read => {
                if let Some(m) = c.row() {
                    p.direct.push((
                        m.user_id,
                        PushEvent::ConversationChanged {
                            channel_id: m.channel_id,
                        },
                    ));
                }
            }
            RowChange::Channels(c) => {
                if let (Some(b), Some(n)) = (&c.before, &c.after) {
                    if b.channel_info_ver != n.channel_info_ver || b.channel_type != n.channel_type
                    {
                        p.to_members
                            .push((n.id, PushEvent::ConversationChanged { channel_id: n.id }));
                    }
                }
            }
            RowChange::Friendships(c) if c.op != Op::Read => {
                if let Some(f) = c.row() {
                    p.direct.push((
                        f.user_id,
                        PushEvent::ContactChanged {
                            contact_id: f.friend_id,
                        },
                    ));
                }
            }
            RowChange::Users(c) if c.op != Op::Read => {
                if let Some(u) = c.row() {
                    p.profile_users.insert(u.id);
                }
            }
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;
    use crate::rows::{ChannelRow, ChannelType, FriendshipRow, MemberRow, MessageRow, UserRow};

    fn message(id: i64, channel: i64, seq: i64) -> MessageRow {
        MessageRow {
            id,
            channel_id: channel,
            seq,
            sender_id: 1,
            sender_name: "a".into(),
            msg_type: "text".into(),
            content: "hi".into(),
            created_at: 0,
        }
    }

    fn channel(id: i64, info_ver: i64, last_seq: i64) -> ChannelRow {
        ChannelRow {
            id,
            channel_type: ChannelType::Group,
            name: "g".into(),
            avatar: String::new(),
            channel_status: "active".into(),
            channel_info_ver: info_ver,
            member_count: 2,
            creator_id: 1,
            last_seq,
            pair_low: None,
            pair_high: None,
            created_at: 0,
            updated_at: 0,
            fanout: crate::rows::Fanout::Write,
            fanout_ver: 1,
        }
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let e = PushEvent::Message {
            channel_id: 3,
            message_id: 9,
            seq: 2,
            sender_id: 1,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type": "message", "channel_id": 3, "message_id": 9, "seq": 2,
                "sender_id": 1})
        );
        assert_eq!(
            serde_json::to_value(PushEvent::ConversationChanged { channel_id: 3 }).unwrap(),
            serde_json::json!({"type": "conversation_changed", "channel_id": 3})
        );
        assert_eq!(
            serde_json::to_value(PushEvent::ContactChanged { contact_id: 4 }).unwrap(),
            serde_json::json!({"type": "contact_changed", "contact_id": 4})
        );
    }

    #[test]
    fn each_table_reaches_its_audience() {
        let renamed = Change {
            op: Op::Update,
            before: Some(channel(7, 1, 5)),
            after: Some(channel(7, 2, 5)),
        };
        let new_seq_only = Change {
            op: Op::Update,
            before: Some(channel(8, 1, 5)),
            after: Some(channel(8, 1, 6)),
        };
        let member = MemberRow {
            channel_id: 7,
            user_id: 2,
            role: crate::rows::MemberRole::Member,
            joined_at: 0,
            left_at: None,
            left_seq: None,
            read_seq: 0,
            pinned: false,
            muted: false,
            hidden_at_seq: None,
            settings_ver: 1,
        };
        let friendship = FriendshipRow {
            user_id: 2,
            friend_id: 3,
            remark_name: String::new(),
            group_name: String::new(),
            starred: false,
            status: crate::rows::FriendshipStatus::Active,
            ver: 1,
            created_at: 0,
            deleted_at: None,
        };
        let user = UserRow {
            id: 3,
            nickname: "c".into(),
            avatar: String::new(),
            profile_ver: 2,
            created_at: 0,
            updated_at: 0,
        };
        let p = plan(&[
            RowChange::Messages(Change::inserted(message(10, 8, 6))),
            RowChange::Channels(renamed),
            RowChange::Channels(new_seq_only),
            RowChange::ChannelMembers(Change::updated(member)),
            RowChange::Friendships(Change::updated(friendship)),
            RowChange::Users(Change::updated(user)),
        ]);
        assert_eq!(
            p.to_members,
            vec![
                (
                    8,
                    PushEvent::Message {
                        channel_id: 8,
                        message_id: 10,
                        seq: 6,
                        sender_id: 1
                    }
                ),
                (7, PushEvent::ConversationChanged { channel_id: 7 }),
            ]
        );
        assert_eq!(
            p.direct,
            vec![
                (2, PushEvent::ConversationChanged { channel_id: 7 }),
                (2, PushEvent::ContactChanged { contact_id: 3 }),
            ]
        );
        assert_eq!(p.profile_users, BTreeSet::from([3]));
        assert_eq!(p.member_channels(), vec![7, 8]);
    }

    #[test]
    fn snapshots_and_unknown_channel_changes_tell_nobody() {
        let snapshot = Change {
            op: Op::Read,
            before: None,
            after: Some(message(1, 1, 1)),
        };
        let no_before = Change::updated(channel(1, 3, 3));
        let p = plan(&[
            RowChange::Messages(snapshot),
            RowChange::Channels(no_before),
        ]);
        assert!(p.is_empty(), "{p:?}");
    }
}
