//! The read side: guarded batch upserts and the list queries.
//!
//! Every upsert merges group by group: a group of columns is replaced only when the incoming
//! row carries a newer version of it (`read_seq` keeps the maximum), and a row whose groups are
//! all as new as the incoming ones is not written at all, so replays cost no write.

use deadpool_postgres::Transaction;
use hermet_core::rows::{ChannelId, ChannelType, UserId};
use hermet_core::views::{
    ChannelViewRow, ColumnGroup, ContactRow, ConversationRow, Scope, ViewBatch, CHANNEL_GROUPS,
    CONTACT_GROUPS, CONVERSATION_GROUPS, CONVERSATION_SHAPE,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use tokio_postgres::error::SqlState;

use crate::shard::{self, ShardNames};
use crate::telemetry::{view_rows_written, WrittenView};
use crate::{now_ms, StoreError};

/// Columns of `user_conversation_view` that are functions of its other columns. They are plain
/// columns that every writer fills (migration 6 says why they are not generated columns).
pub const DERIVED_CONVERSATION_COLUMNS: [&str; 6] = [
    "conversation_name",
    "conversation_avatar",
    "conversation_info_ver",
    "unread_count",
    "is_hidden",
    "activity_at",
];

/// The values of [`DERIVED_CONVERSATION_COLUMNS`], in that order, given the SQL that reads each
/// input column: migration 6's functions, which hold the rules.
fn derived_values(col: impl Fn(&str) -> String) -> [String; 6] {
    let c = |name: &str| col(name);
    [
        format!(
            "hermet_conversation_name({}, {}, {}, {})",
            c("conversation_type"),
            c("channel_name"),
            c("remark_name"),
            c("peer_nickname")
        ),
        format!(
            "hermet_conversation_avatar({}, {}, {})",
            c("conversation_type"),
            c("channel_avatar"),
            c("peer_avatar")
        ),
        format!(
            "hermet_conversation_info_ver({}, {}, {})",
            c("conversation_type"),
            c("channel_info_ver"),
            c("peer_profile_ver")
        ),
        format!(
            "hermet_unread_count({}, {})",
            c("last_message_seq"),
            c("read_seq")
        ),
        format!(
            "hermet_is_hidden({}, {})",
            c("hidden_at_seq"),
            c("last_message_seq")
        ),
        format!(
            "hermet_activity_at({}, {})",
            c("last_message_time"),
            c("opened_at")
        ),
    ]
}

/// `sql` with `$DERIVED_COLUMNS` replaced by [`DERIVED_CONVERSATION_COLUMNS`] and
/// `$DERIVED_VALUES` by their values for a row whose other columns are `{row}.<column>`: how
/// every writer that inserts whole rows fills them.
pub fn with_derived_columns(sql: &str, row: &str) -> String {
    sql.replace("$DERIVED_COLUMNS", &DERIVED_CONVERSATION_COLUMNS.join(", "))
        .replace(
            "$DERIVED_VALUES",
            &derived_values(|c| format!("{row}.{c}")).join(", "),
        )
}

/// The merge rule of one column group: the SQL condition under which the incoming row
/// (`excluded`) replaces the group in the existing row (`v`).
fn newer(g: &ColumnGroup) -> String {
    let own = format!("excluded.{0} > v.{0}", g.guard);
    match g.scope {
        Scope::Own => own,
        Scope::Fanout => {
            let shape = CONVERSATION_SHAPE.guard;
            format!("(excluded.{shape} > v.{shape} OR (excluded.{shape} = v.{shape} AND {own}))")
        }
    }
}

/// What an upsert keeps for `col` when the row exists (`v`) and a row comes in (`excluded`):
/// a group's column and guard from the side the group's rule prefers; a column of no group
/// (`read_seq`) the maximum.
fn merged(groups: &[ColumnGroup], col: &str) -> String {
    match groups
        .iter()
        .find(|g| g.guard == col || g.columns.contains(&col))
    {
        Some(g) => format!(
            "CASE WHEN {} THEN excluded.{col} ELSE v.{col} END",
            newer(g)
        ),
        None => format!("GREATEST(excluded.{col}, v.{col})"),
    }
}

/// `ON CONFLICT ({key}) DO UPDATE` for `groups`, generated from their description in
/// `hermet_core::views`: every group merged by its rule, each of `maxed` kept at its maximum,
/// `extra` assignments appended, and a row whose groups are all as new as the incoming ones not
/// written at all (replays cost no write).
fn on_conflict(key: &str, groups: &[ColumnGroup], maxed: &[&str], extra: &[String]) -> String {
    let mut set = Vec::new();
    let mut when = Vec::new();
    for g in groups {
        for c in g.columns.iter().chain([&g.guard]) {
            set.push(format!("{c} = {}", merged(groups, c)));
        }
        when.push(newer(g));
    }
    for c in maxed {
        set.push(format!("{c} = {}", merged(groups, c)));
        when.push(format!("excluded.{c} > v.{c}"));
    }
    set.extend(extra.iter().cloned());
    set.push("updated_at = excluded.updated_at".to_owned());
    format!(
        "ON CONFLICT ({key}) DO UPDATE SET\n    {}\nWHERE {}",
        set.join(",\n    "),
        when.join("\n   OR ")
    )
}

/// Every group of the conversation view, its shape first.
fn conversation_groups() -> Vec<ColumnGroup> {
    std::iter::once(CONVERSATION_SHAPE)
        .chain(CONVERSATION_GROUPS)
        .collect()
}

/// The guarded merge of conversation rows as one statement. Derived columns are computed from
/// the merged values (a `SET` sees only the old row and `excluded`).
static UPSERT_CONVERSATIONS: LazyLock<String> = LazyLock::new(|| {
    let groups = conversation_groups();
    let derived: Vec<String> = DERIVED_CONVERSATION_COLUMNS
        .iter()
        .zip(derived_values(|c| merged(&groups, c)))
        .map(|(c, value)| format!("{c} = {value}"))
        .collect();
    format!(
        "{}\n{}",
        with_derived_columns(INSERT_CONVERSATIONS, "u"),
        on_conflict("user_id, channel_id", &groups, &["read_seq"], &derived)
    )
});

static UPSERT_CONTACTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSERT_CONTACTS}\n{}",
        on_conflict("user_id, contact_id", &CONTACT_GROUPS, &[], &[])
    )
});

static UPSERT_CHANNELS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSERT_CHANNELS}\n{}",
        on_conflict("channel_id", &CHANNEL_GROUPS, &[], &[])
    )
});

const INSERT_CONVERSATIONS: &str = "
INSERT INTO user_conversation_view AS v (
    user_id, channel_id, fanout, fanout_ver, conversation_type, channel_name, channel_avatar, channel_info_ver,
    peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
    last_message_id, last_message_seq, last_message_type, last_message_content,
    last_message_sender_id, last_message_sender_name, last_message_time,
    read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver,
    $DERIVED_COLUMNS, updated_at)
SELECT u.*, $DERIVED_VALUES, $29::bigint
  FROM UNNEST(
    $1::bigint[], $2::bigint[], $27::text[], $28::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
    $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bigint[],
    $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::bigint[], $18::text[], $19::bigint[],
    $20::bigint[], $21::bool[], $22::bool[], $23::bigint[], $24::bigint[], $25::bigint[], $26::bigint[])
    AS u(user_id, channel_id, fanout, fanout_ver, conversation_type, channel_name, channel_avatar, channel_info_ver,
         peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
         last_message_id, last_message_seq, last_message_type, last_message_content,
         last_message_sender_id, last_message_sender_name, last_message_time,
         read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver)";

const INSERT_CONTACTS: &str = "
INSERT INTO user_contact_view AS v (
    user_id, contact_id, contact_nickname, contact_avatar, contact_info_ver,
    remark_name, group_name, is_starred, deleted_at, friendship_ver, updated_at)
SELECT u.*, $11::bigint FROM UNNEST(
    $1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
    $6::text[], $7::text[], $8::bool[], $9::bigint[], $10::bigint[]) AS u";

const INSERT_CHANNELS: &str = "
INSERT INTO channel_view AS v (
    channel_id, channel_name, channel_avatar, channel_info_ver,
    last_message_id, last_message_seq, last_message_type, last_message_content,
    last_message_sender_id, last_message_sender_name, last_message_time, updated_at)
SELECT u.*, $12::bigint FROM UNNEST(
    $1::bigint[], $2::text[], $3::text[], $4::bigint[],
    $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[]) AS u";

const INSERT_CONVERSATION_REFS: &str = "
INSERT INTO conversation_reverse_index (peer_user_id, owner_user_id, channel_id)
SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])
ON CONFLICT DO NOTHING";

const INSERT_CONTACT_REFS: &str = "
INSERT INTO contact_reverse_index (contact_user_id, owner_user_id)
SELECT * FROM UNNEST($1::bigint[], $2::bigint[])
ON CONFLICT DO NOTHING";

/// Applies a batch with one statement per table (PostgreSQL routes rows to their shards).
pub async fn apply_batch(tx: &Transaction<'_>, b: &ViewBatch) -> Result<(), StoreError> {
    let now = now_ms();
    if !b.conversations.is_empty() {
        upsert_conversations(tx, &b.conversations, now).await?;
    }
    if !b.channels.is_empty() {
        upsert_channels(tx, &b.channels, now).await?;
    }
    if !b.contacts.is_empty() {
        upsert_contacts(tx, &b.contacts, now).await?;
    }
    if !b.conversation_refs.is_empty() {
        let p: Vec<i64> = b.conversation_refs.iter().map(|r| r.peer_user_id).collect();
        let o: Vec<i64> = b
            .conversation_refs
            .iter()
            .map(|r| r.owner_user_id)
            .collect();
        let c: Vec<i64> = b.conversation_refs.iter().map(|r| r.channel_id).collect();
        let stmt = tx.prepare_cached(INSERT_CONVERSATION_REFS).await?;
        tx.execute(&stmt, &[&p, &o, &c]).await?;
    }
    if !b.contact_refs.is_empty() {
        let c: Vec<i64> = b.contact_refs.iter().map(|r| r.contact_user_id).collect();
        let o: Vec<i64> = b.contact_refs.iter().map(|r| r.owner_user_id).collect();
        let stmt = tx.prepare_cached(INSERT_CONTACT_REFS).await?;
        tx.execute(&stmt, &[&c, &o]).await?;
    }
    view_rows_written(WrittenView::Conversation, b.conversations.len());
    view_rows_written(WrittenView::Channel, b.channels.len());
    view_rows_written(WrittenView::Contact, b.contacts.len());
    Ok(())
}

async fn upsert_conversations(
    tx: &Transaction<'_>,
    rows: &[ConversationRow],
    now: i64,
) -> Result<(), StoreError> {
    fn col<'a, T>(rows: &'a [ConversationRow], f: impl Fn(&'a ConversationRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    fn lm(r: &ConversationRow) -> Option<&hermet_core::views::LastMessage> {
        r.last_message.as_ref()
    }
    let user_id = col(rows, |r| r.user_id);
    let channel_id = col(rows, |r| r.channel_id);
    let ctype = col(rows, |r| r.conversation_type.as_str());
    let cname = col(rows, |r| r.channel_name.as_str());
    let cavatar = col(rows, |r| r.channel_avatar.as_str());
    let cver = col(rows, |r| r.channel_info_ver);
    let peer = col(rows, |r| r.peer_user_id);
    let pnick = col(rows, |r| r.peer_nickname.as_deref());
    let pavatar = col(rows, |r| r.peer_avatar.as_deref());
    let pver = col(rows, |r| r.peer_profile_ver);
    let remark = col(rows, |r| r.remark_name.as_str());
    let rver = col(rows, |r| r.remark_ver);
    let mid = col(rows, |r| lm(r).map(|m| m.id));
    let mseq = col(rows, |r| r.last_message_seq);
    let mtype = col(rows, |r| lm(r).map(|m| m.msg_type.as_str()));
    let mcontent = col(rows, |r| lm(r).map(|m| m.content.as_str()));
    let msender = col(rows, |r| lm(r).map(|m| m.sender_id));
    let msname = col(rows, |r| lm(r).map(|m| m.sender_name.as_str()));
    let mtime = col(rows, |r| lm(r).map(|m| m.created_at));
    let read = col(rows, |r| r.read_seq);
    let pinned = col(rows, |r| r.is_pinned);
    let muted = col(rows, |r| r.is_muted);
    let hidden = col(rows, |r| r.hidden_at_seq);
    let opened = col(rows, |r| r.opened_at);
    let closed = col(rows, |r| r.closed_at);
    let sver = col(rows, |r| r.settings_ver);
    let fanout = col(rows, |r| r.fanout.as_str());
    let fanout_ver = col(rows, |r| r.fanout_ver);
    let stmt = tx.prepare_cached(&UPSERT_CONVERSATIONS).await?;
    tx.execute(
        &stmt,
        &[
            &user_id,
            &channel_id,
            &ctype,
            &cname,
            &cavatar,
            &cver,
            &peer,
            &pnick,
            &pavatar,
            &pver,
            &remark,
            &rver,
            &mid,
            &mseq,
            &mtype,
            &mcontent,
            &msender,
            &msname,
            &mtime,
            &read,
            &pinned,
            &muted,
            &hidden,
            &opened,
            &closed,
            &sver,
            &fanout,
            &fanout_ver,
            &now,
        ],
    )
    .await?;
    Ok(())
}

async fn upsert_contacts(
    tx: &Transaction<'_>,
    rows: &[ContactRow],
    now: i64,
) -> Result<(), StoreError> {
    fn col<'a, T>(rows: &'a [ContactRow], f: impl Fn(&'a ContactRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let stmt = tx.prepare_cached(&UPSERT_CONTACTS).await?;
    tx.execute(
        &stmt,
        &[
            &col(rows, |r| r.user_id),
            &col(rows, |r| r.contact_id),
            &col(rows, |r| r.contact_nickname.as_str()),
            &col(rows, |r| r.contact_avatar.as_str()),
            &col(rows, |r| r.contact_info_ver),
            &col(rows, |r| r.remark_name.as_str()),
            &col(rows, |r| r.group_name.as_str()),
            &col(rows, |r| r.is_starred),
            &col(rows, |r| r.deleted_at),
            &col(rows, |r| r.friendship_ver),
            &now,
        ],
    )
    .await?;
    Ok(())
}

async fn upsert_channels(
    tx: &Transaction<'_>,
    rows: &[ChannelViewRow],
    now: i64,
) -> Result<(), StoreError> {
    fn col<'a, T>(rows: &'a [ChannelViewRow], f: impl Fn(&'a ChannelViewRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    fn lm(r: &ChannelViewRow) -> Option<&hermet_core::views::LastMessage> {
        r.last_message.as_ref()
    }
    let stmt = tx.prepare_cached(&UPSERT_CHANNELS).await?;
    tx.execute(
        &stmt,
        &[
            &col(rows, |r| r.channel_id),
            &col(rows, |r| r.channel_name.as_str()),
            &col(rows, |r| r.channel_avatar.as_str()),
            &col(rows, |r| r.channel_info_ver),
            &col(rows, |r| lm(r).map(|m| m.id)),
            &col(rows, |r| r.last_message_seq),
            &col(rows, |r| lm(r).map(|m| m.msg_type.as_str())),
            &col(rows, |r| lm(r).map(|m| m.content.as_str())),
            &col(rows, |r| lm(r).map(|m| m.sender_id)),
            &col(rows, |r| lm(r).map(|m| m.sender_name.as_str())),
            &col(rows, |r| lm(r).map(|m| m.created_at)),
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// A conversation as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationItem {
    pub channel_id: ChannelId,
    pub conversation_type: ChannelType,
    pub name: String,
    pub avatar: String,
    pub peer_user_id: Option<UserId>,
    pub last_message: Option<ListedMessage>,
    pub unread_count: i64,
    pub pinned: bool,
    pub muted: bool,
    pub cursor: ListCursor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMessage {
    pub message_id: i64,
    pub seq: i64,
    pub msg_type: String,
    pub content: String,
    pub sender_id: UserId,
    pub sender_name: String,
    pub created_at: i64,
}

/// Position in the conversation list: the sort key of the last item of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub pinned: bool,
    pub activity_at: i64,
    pub channel_id: ChannelId,
}

impl ListCursor {
    pub fn encode(&self) -> String {
        format!(
            "{}.{}.{}",
            u8::from(self.pinned),
            self.activity_at,
            self.channel_id
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let pinned = match it.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let activity_at = it.next()?.parse().ok()?;
        let channel_id = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(ListCursor {
            pinned,
            activity_at,
            channel_id,
        })
    }
}

const LIST_COLS: &str = "channel_id, conversation_type, conversation_name, conversation_avatar,
    peer_user_id, last_message_id, last_message_seq, last_message_type, last_message_content,
    last_message_sender_id, last_message_sender_name, last_message_time, unread_count,
    is_pinned, is_muted, activity_at";

/// The list's columns from a member row in read diffusion joined with its channel's row:
/// name, avatar and last message from the channel, unread, hidden and activity computed here by
/// the rules every writer uses (migration 6's functions). A channel row not written yet (never
/// the case once the channel's first change is applied) shows an empty name and no message.
const READ_FANOUT_COLS: &str = "v.channel_id, v.conversation_type,
    COALESCE(c.channel_name, ''), COALESCE(c.channel_avatar, ''), NULL::bigint,
    c.last_message_id, COALESCE(c.last_message_seq, 0), c.last_message_type,
    c.last_message_content, c.last_message_sender_id, c.last_message_sender_name,
    c.last_message_time,
    hermet_unread_count(COALESCE(c.last_message_seq, 0), v.read_seq) AS unread_count,
    v.is_pinned, v.is_muted,
    hermet_activity_at(c.last_message_time, v.opened_at) AS activity_at";

/// One page of the list: the owner's rows in write diffusion (a range scan of the list index,
/// at most `limit` rows) merged with their rows in read diffusion (one per large group they are
/// in, each joined with its channel's row), in the one order. `cursor` is `""` for the first
/// page, or the condition that keeps what sorts after `($3, $4, $5)`.
fn list_sql(table: &str, after: bool) -> String {
    let (write_after, read_after) = if after {
        (
            "AND (is_pinned, activity_at, channel_id) < ($3, $4, $5)",
            "AND (v.is_pinned, hermet_activity_at(c.last_message_time, v.opened_at), v.channel_id)
                 < ($3, $4, $5)",
        )
    } else {
        ("", "")
    };
    format!(
        "SELECT * FROM (
           (SELECT {LIST_COLS} FROM {table}
             WHERE user_id = $1 AND closed_at = 0 AND NOT is_hidden AND fanout = 'write'
                   {write_after}
             ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC
             LIMIT $2)
           UNION ALL
           SELECT {READ_FANOUT_COLS}
             FROM {table} v LEFT JOIN channel_view c ON c.channel_id = v.channel_id
            WHERE v.user_id = $1 AND v.fanout = 'read' AND v.closed_at = 0
              AND NOT hermet_is_hidden(v.hidden_at_seq, COALESCE(c.last_message_seq, 0))
                  {read_after}
         ) page
         ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC
         LIMIT $2"
    )
}

fn list_first_sql(table: &str) -> String {
    list_sql(table, false)
}

fn list_after_sql(table: &str) -> String {
    list_sql(table, true)
}

/// The channels in read diffusion of an owner's open rows, hidden ones included: what a cached
/// first page depends on besides the owner's own rows (`hermet_core::cache`).
const READ_FANOUT_CHANNELS: &str = "
    SELECT channel_id FROM user_conversation_view
     WHERE user_id = $1 AND fanout = 'read' AND closed_at = 0
     ORDER BY channel_id";

/// See [`READ_FANOUT_CHANNELS`].
pub async fn read_fanout_channels(
    client: &deadpool_postgres::Client,
    user: UserId,
) -> Result<Vec<ChannelId>, StoreError> {
    let stmt = client.prepare_cached(READ_FANOUT_CHANNELS).await?;
    client
        .query(&stmt, &[&user])
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(decode))
        .collect()
}

fn list_contacts_sql(table: &str) -> String {
    format!(
        "SELECT contact_id, contact_nickname, contact_avatar, remark_name, group_name, is_starred
           FROM {table}
          WHERE user_id = $1 AND deleted_at = 0
          ORDER BY is_starred DESC, contact_nickname, contact_id
          LIMIT $2"
    )
}

/// The list statements of one table: one per partition (by remainder), routed by the owner's
/// id, or none when the partitions are not laid out as [`shard`] expects; and one on the
/// partitioned parent.
#[derive(Debug)]
struct Routed<T> {
    parent: T,
    per_shard: Vec<T>,
}

impl<T> Routed<T> {
    fn new(table: &str, shards: Option<ShardNames>, sql: impl Fn(&str) -> T) -> Self {
        Routed {
            parent: sql(table),
            per_shard: shards
                .map(|s| s.names().iter().map(|n| sql(n)).collect())
                .unwrap_or_default(),
        }
    }

    fn routed(&self) -> bool {
        !self.per_shard.is_empty()
    }

    fn of(&self, user: UserId) -> &T {
        if !self.routed() {
            return &self.parent;
        }
        &self.per_shard[shard::hash_partition(user, self.per_shard.len() as u32) as usize]
    }
}

/// Statements one connection keeps prepared at most. A routed read prepares one statement per
/// partition and kind (about 51 KB of server memory each, measured), up to three per shard:
/// 768 at the default 256 shards, 12,288 at the maximum of 4,096. Past this bound the
/// connection's statement cache is emptied (the statements are closed on the server and
/// prepared again as reads need them), so no connection holds more than about 50 MB of them.
pub const DEFAULT_MAX_LIST_STATEMENTS: usize = 1024;

/// The tables whose partitions the list reads name; the rebuild keeps their partitions' names
/// live across its swap.
pub(crate) const READ_BY_PARTITION: [&str; 2] = ["user_conversation_view", "user_contact_view"];

/// The list queries, built once per process from the catalog (texts only: the statements are
/// prepared per connection, by the pool's statement cache).
///
/// Reads name the owner's partition (see [`shard`] for why and when that is safe). Should a
/// partition have gone missing anyway (a rebuild by an older hermet, which renamed partitions
/// after its swap), the read is answered from the parent instead.
#[derive(Debug)]
pub struct ListQueries {
    conversations: Routed<(String, String)>,
    contacts: Routed<String>,
    /// Statements a connection may keep prepared before its cache is emptied (see
    /// [`DEFAULT_MAX_LIST_STATEMENTS`]).
    max_statements: usize,
    /// Reads answered from the parent because their partition was missing.
    fallbacks: AtomicU64,
}

impl ListQueries {
    pub async fn load(
        client: &deadpool_postgres::Client,
        max_statements: usize,
    ) -> Result<Self, StoreError> {
        let [conv_table, contacts_table] = READ_BY_PARTITION;
        let conv = ShardNames::load(client, conv_table).await?;
        let contacts = ShardNames::load(client, contacts_table).await?;
        if conv.is_none() || contacts.is_none() {
            tracing::warn!(
                "read-side partitions are not named as hermet creates them; \
                 list reads go through the partitioned tables"
            );
        }
        Ok(ListQueries {
            conversations: Routed::new(conv_table, conv, |t| {
                (list_first_sql(t), list_after_sql(t))
            }),
            contacts: Routed::new(contacts_table, contacts, list_contacts_sql),
            max_statements,
            fallbacks: AtomicU64::new(0),
        })
    }

    /// Whether reads name the owner's partition (both lists).
    pub fn routed(&self) -> bool {
        self.conversations.routed() && self.contacts.routed()
    }

    /// Reads so far answered from the parent because their partition was missing.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

/// Runs `sql` (prepared, cached per connection); on a missing relation, runs `fallback`.
async fn query_routed(
    client: &deadpool_postgres::Client,
    queries: &ListQueries,
    sql: &str,
    fallback: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    match query_prepared(client, queries.max_statements, sql, params).await {
        Err(e) if sql != fallback && e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            tracing::warn!(error = %e, "read-side partition missing; reading the parent table");
            queries.fallbacks.fetch_add(1, Ordering::Relaxed);
            Ok(query_prepared(client, queries.max_statements, fallback, params).await?)
        }
        r => Ok(r?),
    }
}

/// Runs `sql` as a statement of the connection's cache, which it keeps at `max_statements`.
async fn query_prepared(
    client: &deadpool_postgres::Client,
    max_statements: usize,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(sql).await?;
    if client.statement_cache.size() > max_statements {
        // `stmt` stays usable: the server closes it once this read drops it.
        client.statement_cache.clear();
    }
    client.query(&stmt, params).await
}

/// One page of a user's conversation list: pinned first, newest activity first, channel id as
/// the tie-break; closed and hidden conversations left out.
pub async fn list_conversations(
    client: &deadpool_postgres::Client,
    queries: &ListQueries,
    user: UserId,
    limit: i64,
    after: Option<ListCursor>,
) -> Result<Vec<ConversationItem>, StoreError> {
    let (first, after_sql) = queries.conversations.of(user);
    let (parent_first, parent_after) = &queries.conversations.parent;
    let rows = match after {
        None => query_routed(client, queries, first, parent_first, &[&user, &limit]).await?,
        Some(c) => {
            query_routed(
                client,
                queries,
                after_sql,
                parent_after,
                &[&user, &limit, &c.pinned, &c.activity_at, &c.channel_id],
            )
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            let t: String = r.try_get(1).map_err(decode)?;
            let last_id: Option<i64> = r.try_get(5).map_err(decode)?;
            let last_message = match last_id {
                None => None,
                Some(message_id) => Some(ListedMessage {
                    message_id,
                    seq: r.try_get(6).map_err(decode)?,
                    msg_type: r
                        .try_get::<_, Option<String>>(7)
                        .map_err(decode)?
                        .unwrap_or_default(),
                    content: r
                        .try_get::<_, Option<String>>(8)
                        .map_err(decode)?
                        .unwrap_or_default(),
                    sender_id: r
                        .try_get::<_, Option<i64>>(9)
                        .map_err(decode)?
                        .unwrap_or_default(),
                    sender_name: r
                        .try_get::<_, Option<String>>(10)
                        .map_err(decode)?
                        .unwrap_or_default(),
                    created_at: r
                        .try_get::<_, Option<i64>>(11)
                        .map_err(decode)?
                        .unwrap_or_default(),
                }),
            };
            let channel_id: i64 = r.try_get(0).map_err(decode)?;
            let pinned: bool = r.try_get(13).map_err(decode)?;
            Ok(ConversationItem {
                channel_id,
                conversation_type: ChannelType::parse(&t)?,
                name: r.try_get(2).map_err(decode)?,
                avatar: r.try_get(3).map_err(decode)?,
                peer_user_id: r.try_get(4).map_err(decode)?,
                last_message,
                unread_count: r.try_get(12).map_err(decode)?,
                pinned,
                muted: r.try_get(14).map_err(decode)?,
                cursor: ListCursor {
                    pinned,
                    activity_at: r.try_get(15).map_err(decode)?,
                    channel_id,
                },
            })
        })
        .collect()
}

fn decode(e: tokio_postgres::Error) -> StoreError {
    StoreError::Decode(e.to_string())
}

/// A contact as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactItem {
    pub contact_id: UserId,
    pub nickname: String,
    pub avatar: String,
    pub remark_name: String,
    pub group_name: String,
    pub starred: bool,
}

/// A user's contacts: starred first, then by nickname; deleted friendships left out.
pub async fn list_contacts(
    client: &deadpool_postgres::Client,
    queries: &ListQueries,
    user: UserId,
    limit: i64,
) -> Result<Vec<ContactItem>, StoreError> {
    query_routed(
        client,
        queries,
        queries.contacts.of(user),
        &queries.contacts.parent,
        &[&user, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(ContactItem {
            contact_id: r.try_get(0).map_err(decode)?,
            nickname: r.try_get(1).map_err(decode)?,
            avatar: r.try_get(2).map_err(decode)?,
            remark_name: r.try_get(3).map_err(decode)?,
            group_name: r.try_get(4).map_err(decode)?,
            starred: r.try_get(5).map_err(decode)?,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::ListCursor;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = ListCursor {
            pinned: true,
            activity_at: 1_700_000_000_000,
            channel_id: 42,
        };
        assert_eq!(ListCursor::decode(&c.encode()), Some(c));
        for bad in ["", "1", "2.1.1", "1.x.1", "1.1.1.1", "1.1."] {
            assert_eq!(ListCursor::decode(bad), None, "{bad}");
        }
    }
}
