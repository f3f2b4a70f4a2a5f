//! The send command, the write side's hot path, in as few round trips as its checks allow.
//!
//! A send is two statements inside the transaction, sent back to back without waiting (a
//! tokio-postgres pipeline: the requests go out in the order their futures are first polled, and
//! the server runs them in that order):
//!
//! 1. [`LOCK_CHANNEL`] locks the channel row (`FOR UPDATE`): sends and membership changes in one
//!    channel are serialized, as for every command (see [`crate::commands`]).
//! 2. [`SEND`] runs after the lock is granted, so under READ COMMITTED it reads membership and
//!    friendship as they are once every earlier writer of the channel has committed: the same
//!    checks, at the same point, as when they were separate statements. It locks the sender's user
//!    row `FOR SHARE` (a rename waits, or the send waits for the rename and copies the new name),
//!    and only if the sender is an active member and, in a single chat, still a friend of the
//!    peer, it numbers the message, stores it and moves the sender's own read position past it.
//!    It always answers one row: what the checks saw, and the written rows when they passed.
//!
//! In `cdc`, where nothing else runs in the transaction, `BEGIN`, both statements, `COMMIT` and
//! the LSN query are one pipeline: one round trip per send. A refused send commits an empty
//! transaction, and a failing statement aborts the transaction, so the `COMMIT` after it rolls
//! back; either way the answer is the refusal or the first error, never a half-applied send. In
//! `dual_write` and `async` the projection or the outbox row joins the transaction before the
//! commit, which needs the rows the send returned: `BEGIN`, the pipeline of the two statements,
//! the sync path, `COMMIT`, and the LSN query.
//!
//! Every statement is prepared (and cached per connection) before the pipeline starts: a
//! statement that still needed a `Parse` round trip would be sent after the ones behind it.

use std::sync::LazyLock;

use hermet_core::change::{Change, Op, RowChange};
use hermet_core::rows::{ChannelId, ChannelRow, ChannelType, MemberRow, UserId};
use hermet_core::validate::{Content, MessageType};
use tokio_postgres::{Row, Statement};

use crate::commands::{channel_not_found, not_member, user_not_found, Changes, SentMessage};
use crate::rows::{
    self, prefixed, CHANNEL_COLS, CHANNEL_WIDTH, MEMBER_COLS, MEMBER_WIDTH, MESSAGE_COLS,
    MESSAGE_WIDTH,
};
use crate::{now_ms, Store, StoreError, SyncMode, Written};

/// Statement 1 of a send: the channel lock, answering the row as it was before the send.
static LOCK_CHANNEL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 FOR UPDATE"));

/// Statement 2 of a send: the checks and, when they pass, the three writes. `$1` channel,
/// `$2` now, `$3` sender, `$4` type, `$5` content.
///
/// The answer's columns: the sender's nickname (`NULL` if the user does not exist), whether the
/// single-chat friendship holds (true in a group), the sender's member row (`NULL`s if none),
/// then the channel row after the send, the message and the sender's updated member row (all
/// `NULL` when nothing was written; the member row also when the read position did not move).
static SEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH me AS (
             SELECT nickname FROM users WHERE id = $3 FOR SHARE),
         mem AS (
             SELECT {MEMBER_COLS} FROM channel_members WHERE channel_id = $1 AND user_id = $3),
         peer AS (
             SELECT CASE WHEN pair_low = $3 THEN pair_high WHEN pair_high = $3 THEN pair_low END AS id
               FROM channels WHERE id = $1 AND channel_type = 'single'),
         gate AS (
             SELECT (SELECT nickname FROM me) AS nickname,
                    NOT EXISTS (SELECT 1 FROM peer WHERE peer.id IS NOT NULL)
                    OR EXISTS (SELECT 1 FROM friendships f, peer
                                WHERE f.user_id = $3 AND f.friend_id = peer.id
                                  AND f.status = 'active') AS friends,
                    EXISTS (SELECT 1 FROM mem WHERE mem.left_at IS NULL) AS active),
         ch AS (
             UPDATE channels SET last_seq = last_seq + 1, updated_at = $2
              WHERE id = $1
                AND (SELECT nickname IS NOT NULL AND friends AND active FROM gate)
             RETURNING {CHANNEL_COLS}),
         msg AS (
             INSERT INTO messages (channel_id, seq, sender_id, sender_name, msg_type, content, created_at)
             SELECT $1, ch.last_seq, $3, (SELECT nickname FROM gate), $4, $5, $2 FROM ch
             RETURNING {MESSAGE_COLS}),
         own AS (
             UPDATE channel_members m SET read_seq = ch.last_seq FROM ch
              WHERE m.channel_id = $1 AND m.user_id = $3 AND m.read_seq < ch.last_seq
             RETURNING {own})
         SELECT gate.nickname, gate.friends, mem.*, ch.*, msg.*, own.*
           FROM gate LEFT JOIN mem ON true LEFT JOIN ch ON true LEFT JOIN msg ON true
                LEFT JOIN own ON true",
        own = prefixed("m", MEMBER_COLS),
    )
});

/// The statements of one send in `cdc`, in the order the pipeline sends them: `BEGIN`,
/// `LOCK_CHANNEL` (`$1` channel), `SEND` (`$1` channel, `$2` now in ms, `$3` sender, `$4` type,
/// `$5` content), `COMMIT` and the LSN query.
///
/// For benchmarks only (`hermet-bench send-http` runs them through pgbench next to the HTTP
/// sends): the text is the store's own, so the comparison cannot drift from what a send runs.
pub fn send_statements_for_benchmarks() -> [&'static str; 5] {
    [
        "BEGIN",
        LOCK_CHANNEL.as_str(),
        SEND.as_str(),
        "COMMIT",
        Store::CURRENT_LSN,
    ]
}

/// Where each part of [`SEND`]'s answer starts.
const AT_MEMBER: usize = 2;
const AT_CHANNEL: usize = AT_MEMBER + MEMBER_WIDTH;
const AT_MESSAGE: usize = AT_CHANNEL + CHANNEL_WIDTH;
const AT_OWN: usize = AT_MESSAGE + MESSAGE_WIDTH;

/// A send's prepared statements, from the connection's cache.
struct Statements {
    lock: Statement,
    send: Statement,
}

impl Statements {
    async fn prepare(conn: &deadpool_postgres::Client) -> Result<Self, StoreError> {
        Ok(Statements {
            lock: conn.prepare_cached(&LOCK_CHANNEL).await?,
            send: conn.prepare_cached(&SEND).await?,
        })
    }
}

/// What a send wrote, decoded from its two answers, or why it was refused.
fn outcome(
    sender: UserId,
    channel_id: ChannelId,
    locked: Option<Row>,
    sent: &Row,
) -> Result<(SentMessage, Changes), StoreError> {
    let before: ChannelRow = match locked {
        Some(row) => rows::channel(&row, 0)?,
        None => return Err(channel_not_found(channel_id)),
    };
    let nickname: Option<String> = rows::get(sent, 0)?;
    let friends: bool = rows::get(sent, 1)?;
    let member = rows::member_opt(sent, AT_MEMBER)?;
    // The same order of refusals as every read of these rules: membership first (a single
    // chat's member row stays when the friendship ends, so it says why), then the friendship.
    if !member.as_ref().is_some_and(MemberRow::is_active) {
        return Err(
            if before.channel_type == ChannelType::Single && member.is_some() {
                not_friends()
            } else {
                not_member()
            },
        );
    }
    if !friends {
        return Err(not_friends());
    }
    if nickname.is_none() {
        return Err(user_not_found(sender));
    }
    let after = rows::channel(sent, AT_CHANNEL)?;
    let msg = rows::message(sent, AT_MESSAGE)?;
    let own: Vec<MemberRow> = rows::member_opt(sent, AT_OWN)?.into_iter().collect();
    let value = SentMessage {
        message_id: msg.id,
        seq: after.last_seq,
        created_at: msg.created_at,
    };
    let mut ch = Changes::default();
    ch.channel_update(before, after);
    ch.push(RowChange::Messages(Change::inserted(msg)));
    ch.members(own, Op::Update);
    Ok((value, ch))
}

fn not_friends() -> StoreError {
    StoreError::forbidden("not_friends", "you can only message your friends")
}

impl Store {
    /// Sends a message as `sender`: refused unless the sender is an active member and, in a
    /// single chat, still the peer's friend. One round trip in `cdc` (module docs).
    pub async fn send_message(
        &self,
        sender: UserId,
        channel_id: ChannelId,
        content: &Content,
        msg_type: &MessageType,
    ) -> Result<Written<SentMessage>, StoreError> {
        let mut conn = self.conn().await?;
        let st = Statements::prepare(&conn).await?;
        let now = now_ms();
        let send_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &channel_id,
            &now,
            &sender,
            &msg_type.as_str(),
            &content.as_str(),
        ];
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&channel_id];
        if self.config().sync_mode == SyncMode::Cdc {
            let begin = conn.prepare_cached("BEGIN").await?;
            let commit = conn.prepare_cached("COMMIT").await?;
            let lsn = conn.prepare_cached(Self::CURRENT_LSN).await?;
            // `join!` polls in argument order, and each future sends its request on its first
            // poll: the server receives them in this order.
            let (began, locked, sent, committed, at) = tokio::join!(
                conn.execute(&begin, &[]),
                conn.query_opt(&st.lock, &lock_params),
                conn.query_one(&st.send, &send_params),
                conn.execute(&commit, &[]),
                conn.query_one(&lsn, &[]),
            );
            began?;
            let (locked, sent) = (locked?, sent?);
            committed?;
            let (value, _) = outcome(sender, channel_id, locked, &sent)?;
            return Ok(Written {
                value,
                lsn: Self::decode_lsn(&at?)?,
            });
        }
        let tx = conn.transaction().await?;
        let (locked, sent) = tokio::join!(
            tx.query_opt(&st.lock, &lock_params),
            tx.query_one(&st.send, &send_params),
        );
        let (value, changes) = outcome(sender, channel_id, locked?, &sent?)?;
        self.finish(tx, changes).await?;
        Ok(Written {
            value,
            lsn: Self::lsn(&conn).await?,
        })
    }
}
