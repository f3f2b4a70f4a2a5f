//! Applying row changes to the read side: the I/O half of the projection.
//!
//! Contract:
//! - **Idempotent and order-independent.** Rows are recomputed from the write-side state at
//!   look-up time and merged with per-group version guards, so applying a batch twice, or an old
//!   batch after a newer one, changes nothing.
//! - **Same transaction as the caller.** [`apply_changes`] runs in the caller's transaction:
//!   the command's own in `dual_write`, the worker's in `async` and `cdc`, where the progress
//!   marker (outbox row, offset, LSN) must move in that same transaction or after its commit.
//! - **Embedded profiles are read `FOR SHARE`.** A row that copies a user's profile locks that
//!   user's row until commit, so a concurrent profile change either is seen by this look-up or
//!   waits and then finds the new reverse-index entry when it fans out. Without the lock, a row
//!   created concurrently with a profile change could keep the old nickname forever.
//! - Rows are written in key order, so concurrent batches cannot deadlock on view rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use deadpool_postgres::Transaction;
use hermet_core::change::RowChange;
use hermet_core::projection::{
    self, Affected, ChannelInputs, ContactInputs, ConversationInputs, ProjectionConfig, ReadModels,
};
use hermet_core::rows::{ChannelId, Fanout, FriendshipRow, MemberRow, MessageRow, UserId, UserRow};
use hermet_core::views::ViewBatch;

use crate::rows::{
    self, prefixed, CHANNEL_WIDTH, FRIEND_COLS, MEMBER_WIDTH, MESSAGE_COLS, USER_COLS,
};
use crate::{views, StoreError};

/// What one apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// View rows computed (both views and both indexes).
    pub rows: usize,
}

/// What one apply did, and whose conversation lists it touched: once the transaction commits,
/// the caller invalidates their cached pages (see `hermet_core::cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub stats: ApplyStats,
    /// Owners of conversation rows written, sorted and distinct.
    pub conversation_owners: Vec<UserId>,
    /// Channels in read diffusion whose `channel_view` row was written, sorted and distinct:
    /// once the transaction commits, the caller moves their cache versions (cached pages of
    /// their members depend on them without holding a row of their own that changed).
    pub channels: Vec<ChannelId>,
}

impl Applied {
    /// Adds what another apply of the same transaction did (an outbox worker applies a batch
    /// in pieces).
    pub fn absorb(&mut self, other: Applied) {
        self.stats.rows += other.stats.rows;
        self.conversation_owners.extend(other.conversation_owners);
        self.conversation_owners.sort_unstable();
        self.conversation_owners.dedup();
        self.channels.extend(other.channels);
        self.channels.sort_unstable();
        self.channels.dedup();
    }

    /// Moves the cache versions this apply made stale: its owners' and its read-diffusion
    /// channels'. Every writer calls it after its transaction committed and before it
    /// acknowledges or takes its next batch (the contract of `hermet_core::cache`).
    pub async fn retire_cached(&self, cache: &dyn hermet_core::cache::ListCache) {
        cache.invalidate(&self.conversation_owners).await;
        cache.invalidate_channels(&self.channels).await;
    }
}

/// Projects `changes` onto the read side inside `tx`.
pub async fn apply_changes(
    tx: &Transaction<'_>,
    changes: &[RowChange],
    models: ReadModels,
    cfg: &ProjectionConfig,
) -> Result<Applied, StoreError> {
    let affected = projection::affected(changes);
    if affected.is_empty() {
        return Ok(Applied::default());
    }
    let (batch, read_fanout) = compute_with_fanout(tx, &affected, models, cfg).await?;
    views::apply_batch(tx, &batch).await?;
    let owners: BTreeSet<UserId> = batch.conversations.iter().map(|r| r.user_id).collect();
    Ok(Applied {
        stats: ApplyStats { rows: batch.len() },
        conversation_owners: owners.into_iter().collect(),
        channels: read_fanout,
    })
}

/// Resolves `affected` into view keys, loads their write-side state and builds the rows.
pub async fn compute(
    tx: &Transaction<'_>,
    affected: &Affected,
    models: ReadModels,
    cfg: &ProjectionConfig,
) -> Result<ViewBatch, StoreError> {
    Ok(compute_with_fanout(tx, affected, models, cfg).await?.0)
}

/// [`compute`], and the channels in read diffusion whose `channel_view` row the batch writes.
async fn compute_with_fanout(
    tx: &Transaction<'_>,
    affected: &Affected,
    models: ReadModels,
    cfg: &ProjectionConfig,
) -> Result<(ViewBatch, Vec<ChannelId>), StoreError> {
    let (conv_keys, channel_ids) = if models.conversations {
        (
            conversation_keys(tx, affected).await?,
            channel_keys(affected),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let contact_keys = if models.contacts {
        contact_keys(tx, affected).await?
    } else {
        Vec::new()
    };
    let (conversations, contacts) = load_inputs(tx, &conv_keys, &contact_keys).await?;
    let channels = load_channels(tx, &channel_ids).await?;
    let read_fanout = channels
        .iter()
        .filter(|c| projection::fanout_of(&c.channel) == Fanout::Read)
        .map(|c| c.channel.id)
        .collect();
    Ok((
        projection::build(&conversations, &channels, &contacts, cfg),
        read_fanout,
    ))
}

/// The channels whose `channel_view` row a batch recomputes: every channel that changed or got
/// messages (single chats among them are dropped by the projection: they have none).
fn channel_keys(a: &Affected) -> Vec<ChannelId> {
    let set: BTreeSet<ChannelId> = a
        .channels_all_members
        .iter()
        .chain(&a.channels_info)
        .chain(&a.channel_rows)
        .chain(a.channels_new_messages.keys())
        .copied()
        .collect();
    set.into_iter().collect()
}

static CHANNEL_STATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {c}, {m}
           FROM channels c
           LEFT JOIN messages m ON m.channel_id = c.id AND m.seq = c.last_seq
          WHERE c.id = ANY($1::bigint[]) AND c.channel_type = 'group'",
        c = prefixed("c", rows::CHANNEL_COLS),
        m = prefixed("m", MESSAGE_COLS),
    )
});

/// Each group channel's row and its last message.
async fn load_channels(
    tx: &Transaction<'_>,
    ids: &[ChannelId],
) -> Result<Vec<ChannelInputs>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx.prepare_cached(&CHANNEL_STATE).await?;
    tx.query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|row| {
            Ok(ChannelInputs {
                channel: rows::channel(row, 0)?,
                last_message: rows::message_opt(row, CHANNEL_WIDTH)?,
            })
        })
        .collect()
}

fn unzip<A: Copy, B: Copy>(pairs: impl IntoIterator<Item = (A, B)>) -> (Vec<A>, Vec<B>) {
    pairs.into_iter().unzip()
}

/// Branches of the key look-ups. Only the branches with input are sent, so the planner never
/// looks at a partitioned table for an empty array (with hundreds of partitions that costs
/// milliseconds per statement). `$a`/`$b` stand for the branch's parameters.
const MEMBERS_OF_CHANNELS: &str =
    "SELECT user_id, channel_id FROM channel_members WHERE channel_id = ANY($a::bigint[])";
/// In read diffusion a member's row carries neither the name nor the last message, so these
/// two reach members of channels in write diffusion only (a channel that flipped since is
/// covered by its flip, which rewrites every member row).
const MEMBERS_OF_WRITE_CHANNELS: &str = "
    SELECT m.user_id, m.channel_id
      FROM channels c JOIN channel_members m ON m.channel_id = c.id
     WHERE c.id = ANY($a::bigint[]) AND c.fanout = 'write'";
const MEMBERS_SEEING_NEW_MESSAGES: &str = "
    SELECT m.user_id, m.channel_id
      FROM UNNEST($a::bigint[], $b::bigint[]) AS n(channel_id, seq)
      JOIN channels c ON c.id = n.channel_id AND c.fanout = 'write'
      JOIN channel_members m ON m.channel_id = n.channel_id
     WHERE m.left_at IS NULL OR m.left_seq >= n.seq";
const ROWS_EMBEDDING_PEERS: &str = "
    SELECT owner_user_id, channel_id FROM conversation_reverse_index
     WHERE peer_user_id = ANY($a::bigint[])";
const SINGLE_CHATS_OF_PAIRS: &str = "
    SELECT p.owner, c.id
      FROM UNNEST($a::bigint[], $b::bigint[]) AS p(owner, friend)
      JOIN channels c ON c.channel_type = 'single'
                     AND c.pair_low = LEAST(p.owner, p.friend)
                     AND c.pair_high = GREATEST(p.owner, p.friend)";
const CONTACTS_EMBEDDING_USERS: &str = "
    SELECT owner_user_id, contact_user_id FROM contact_reverse_index
     WHERE contact_user_id = ANY($a::bigint[])";

/// A `UNION` of the branches that have input, with their parameters numbered in order.
#[derive(Default)]
struct KeyQuery {
    parts: Vec<String>,
    params: Vec<Vec<i64>>,
}

impl KeyQuery {
    fn branch(&mut self, sql: &str, arrays: Vec<Vec<i64>>) {
        if arrays.first().is_none_or(Vec::is_empty) {
            return;
        }
        let a = self.params.len() + 1;
        self.parts.push(
            sql.replace("$a", &format!("${a}"))
                .replace("$b", &format!("${}", a + 1)),
        );
        self.params.extend(arrays);
    }

    async fn run(self, tx: &Transaction<'_>) -> Result<BTreeSet<(i64, i64)>, StoreError> {
        if self.parts.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sql = self.parts.join("\n UNION \n");
        let stmt = tx.prepare_cached(&sql).await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = tx.query(&stmt, &params).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

async fn conversation_keys(
    tx: &Transaction<'_>,
    a: &Affected,
) -> Result<Vec<(UserId, ChannelId)>, StoreError> {
    let mut q = KeyQuery::default();
    q.branch(
        MEMBERS_OF_CHANNELS,
        vec![a.channels_all_members.iter().copied().collect()],
    );
    q.branch(
        MEMBERS_OF_WRITE_CHANNELS,
        vec![a.channels_info.iter().copied().collect()],
    );
    let (msg_ch, msg_seq) = unzip(a.channels_new_messages.iter().map(|(c, s)| (*c, *s)));
    q.branch(MEMBERS_SEEING_NEW_MESSAGES, vec![msg_ch, msg_seq]);
    q.branch(
        ROWS_EMBEDDING_PEERS,
        vec![a.profile_users.iter().copied().collect()],
    );
    let (pair_o, pair_f) = unzip(a.friend_pairs.iter().copied());
    q.branch(SINGLE_CHATS_OF_PAIRS, vec![pair_o, pair_f]);
    let mut keys = q.run(tx).await?;
    keys.extend(a.conversation_keys.iter().copied());
    Ok(keys.into_iter().collect())
}

async fn contact_keys(
    tx: &Transaction<'_>,
    a: &Affected,
) -> Result<Vec<(UserId, UserId)>, StoreError> {
    let mut q = KeyQuery::default();
    q.branch(
        CONTACTS_EMBEDDING_USERS,
        vec![a.profile_users.iter().copied().collect()],
    );
    let mut keys = q.run(tx).await?;
    keys.extend(a.friend_pairs.iter().copied());
    Ok(keys.into_iter().collect())
}

/// Member, channel and (single chats) the owner's friendship towards the peer, per key.
static CONVERSATION_STATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {m}, {c}, {f}
           FROM UNNEST($1::bigint[], $2::bigint[]) AS k(user_id, channel_id)
           JOIN channel_members m ON m.channel_id = k.channel_id AND m.user_id = k.user_id
           JOIN channels c ON c.id = m.channel_id
           LEFT JOIN friendships f
                  ON c.channel_type = 'single' AND f.user_id = m.user_id
                 AND f.friend_id = CASE WHEN c.pair_low = m.user_id THEN c.pair_high ELSE c.pair_low END",
        m = prefixed("m", rows::MEMBER_COLS),
        c = prefixed("c", rows::CHANNEL_COLS),
        f = prefixed("f", FRIEND_COLS),
    )
});

static CONTACT_FRIENDSHIPS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM friendships f
           JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(user_id, friend_id)
             ON f.user_id = k.user_id AND f.friend_id = k.friend_id",
        prefixed("f", FRIEND_COLS)
    )
});

static USERS_FOR_SHARE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {USER_COLS} FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE")
});

static VISIBLE_MESSAGES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM messages m
           JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(channel_id, seq)
             ON m.channel_id = k.channel_id AND m.seq = k.seq",
        prefixed("m", MESSAGE_COLS)
    )
});

async fn load_inputs(
    tx: &Transaction<'_>,
    conv_keys: &[(UserId, ChannelId)],
    contact_keys: &[(UserId, UserId)],
) -> Result<(Vec<ConversationInputs>, Vec<ContactInputs>), StoreError> {
    // Conversation state.
    let mut states = Vec::with_capacity(conv_keys.len());
    if !conv_keys.is_empty() {
        let (u, c) = unzip(conv_keys.iter().copied());
        let stmt = tx.prepare_cached(&CONVERSATION_STATE).await?;
        for row in tx.query(&stmt, &[&u, &c]).await? {
            let member: MemberRow = rows::member(&row, 0)?;
            let channel = rows::channel(&row, MEMBER_WIDTH)?;
            let friendship = rows::friendship_opt(&row, MEMBER_WIDTH + CHANNEL_WIDTH)?;
            states.push((member, channel, friendship));
        }
    }

    // Contact friendships.
    let mut friendships: Vec<FriendshipRow> = Vec::with_capacity(contact_keys.len());
    if !contact_keys.is_empty() {
        let (o, f) = unzip(contact_keys.iter().copied());
        let stmt = tx.prepare_cached(&CONTACT_FRIENDSHIPS).await?;
        for row in tx.query(&stmt, &[&o, &f]).await? {
            friendships.push(rows::friendship(&row, 0)?);
        }
    }

    // Every embedded profile, locked until commit (see the module contract).
    let mut user_ids: BTreeSet<UserId> = states
        .iter()
        .filter_map(|(m, c, _)| c.peer_of(m.user_id))
        .collect();
    user_ids.extend(friendships.iter().map(|f| f.friend_id));
    let mut users: BTreeMap<UserId, UserRow> = BTreeMap::new();
    if !user_ids.is_empty() {
        let ids: Vec<i64> = user_ids.into_iter().collect();
        let stmt = tx.prepare_cached(&USERS_FOR_SHARE).await?;
        for row in tx.query(&stmt, &[&ids]).await? {
            let u = rows::user(&row, 0)?;
            users.insert(u.id, u);
        }
    }

    // The last message each member can see.
    let wanted: BTreeSet<(ChannelId, i64)> = states
        .iter()
        .map(|(m, c, _)| (c.id, projection::visible_seq(m, c)))
        .filter(|(_, seq)| *seq > 0)
        .collect();
    let mut messages: BTreeMap<(ChannelId, i64), MessageRow> = BTreeMap::new();
    if !wanted.is_empty() {
        let (c, s) = unzip(wanted);
        let stmt = tx.prepare_cached(&VISIBLE_MESSAGES).await?;
        for row in tx.query(&stmt, &[&c, &s]).await? {
            let msg = rows::message(&row, 0)?;
            messages.insert((msg.channel_id, msg.seq), msg);
        }
    }

    let conversations = states
        .into_iter()
        .map(|(member, channel, friendship)| {
            let peer = channel
                .peer_of(member.user_id)
                .and_then(|p| users.get(&p).cloned());
            let last_message = messages
                .get(&(channel.id, projection::visible_seq(&member, &channel)))
                .cloned();
            ConversationInputs {
                member,
                channel,
                peer,
                friendship,
                last_message,
            }
        })
        .collect();
    let contacts = friendships
        .into_iter()
        .filter_map(|friendship| {
            let contact = users.get(&friendship.friend_id)?.clone();
            Some(ContactInputs {
                friendship,
                contact,
            })
        })
        .collect();
    Ok((conversations, contacts))
}
