//! The send command, the write side's hot path, in as few round trips and protocol messages as
//! its checks allow.
//!
//! The send's checks and writes are one function, `hermet_send`
//! (`migrations/0010_send_function.sql`), which runs two statements on the server, in this order:
//!
//! 1. The channel lock (`FOR UPDATE`): sends and membership changes in one channel are
//!    serialized, as for every command (see [`crate::commands`]).
//! 2. The checks and the writes. A VOLATILE function takes a fresh snapshot for each statement
//!    under READ COMMITTED, so this one reads membership and friendship as they are once every
//!    earlier writer of the channel has committed: the same checks, at the same point, as when
//!    they were separate statements from here. It locks the sender's user row `FOR SHARE` (a
//!    rename waits, or the send waits for the rename and copies the new name), and only if the
//!    sender is an active member and, in a single chat, still a friend of the peer, it numbers
//!    the message, stores it and moves the sender's own read position past it.
//!
//! The function answers whole rows (the channel as locked, what the checks saw, the rows
//! written); each caller selects the columns it decodes, so a column added to these tables needs
//! no new function. A change to the checks or the writes needs a new migration that replaces
//! `hermet_send` (an applied migration is never edited); one that changes its parameters or its
//! answer adds a function under a new name, so servers of the previous version keep working
//! during a rolling upgrade.
//!
//! - **`cdc`**: nothing else joins the transaction, so the send is the procedure
//!   `hermet_send_committed` (`migrations/0011_send_procedure.sql`): it calls `hermet_send`,
//!   keeps only what the answer and the refusals need ([`SEND_CDC`]), commits, and then reads
//!   the WAL insert position, which is past the commit record: `X-Hermet-Lsn`. One statement,
//!   one round trip and one protocol `Sync`. Before, the function call and a separate LSN query
//!   were pipelined: one round trip but two `Sync`s, two transactions and two answers flushed
//!   by the server (tokio-postgres ends every statement with a `Sync`), and the LSN query could
//!   not join the send's transaction, since it must read the position after the commit. A
//!   procedure commits only when called on its own, outside any transaction block: the pooled
//!   connection is idle when the call starts, and nothing shares its `Sync`.
//! - **`dual_write`, `async`**: the projection or the outbox row joins the transaction before
//!   the commit and needs the rows the send wrote: `BEGIN`, [`SEND_FULL`], the sync path,
//!   `COMMIT`, the LSN query.
//!
//! A refused send writes nothing, and a failing statement rolls back the whole call: the answer
//! is the refusal or the first error, never a half-applied send (in `cdc`, nothing before the
//! procedure's `COMMIT` survives an error). Statements are prepared once per connection and
//! cached.

use hermet_core::change::{Change, Op, RowChange};
use hermet_core::rows::{ChannelId, ChannelType, MemberRow, UserId};
use hermet_core::validate::{Content, MessageType};
use tokio_postgres::Row;

use crate::commands::{channel_not_found, not_member, user_not_found, Changes, SentMessage};
use crate::rows;
use crate::{now_ms, Store, StoreError, SyncMode, Written};

/// The send in `cdc`: `$1` channel, `$2` now (ms), `$3` sender, `$4` type, `$5` content; the
/// procedure's `OUT` arguments are passed as `NULL`. One row: the channel's type (`NULL`: no
/// such channel), the sender's nickname (`NULL`: no such user), whether the single-chat
/// friendship holds, the sender's member key and `left_at` (`NULL` key: not a member), the
/// message's id, seq and time (`NULL`: nothing written), and the LSN after the commit.
static SEND_CDC: &str = "CALL hermet_send_committed($1, $2, $3, $4, $5, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// The call of `hermet_send` in `dual_write` and `async`, same parameters: the channel as
/// locked, the nickname, the friendship, the sender's member row, then the channel after the
/// send, the message and the sender's updated member row (each `NULL` when not written). The
/// rows come whole and are decoded here ([`rows::Record`]): selecting their 64 columns one by
/// one made the statement ~10 % slower than the two statements it replaced.
static SEND_FULL: &str = "SELECT s.before_row, s.sender_name, s.is_friend, s.member_row, \
     s.after_row, s.message_row, s.own_row FROM hermet_send($1, $2, $3, $4, $5) AS s";

/// The statements of one send in `cdc`, in order: the call of `hermet_send_committed`
/// (`$1` channel, `$2` now in ms, `$3` sender, `$4` type, `$5` content), which also answers the
/// LSN.
///
/// For benchmarks only (`hermet-bench send-http` runs them through pgbench next to the HTTP
/// sends): the text is the store's own, so the comparison cannot drift from what a send runs.
pub fn send_statements_for_benchmarks() -> &'static [&'static str] {
    static STATEMENTS: [&str; 1] = [SEND_CDC];
    &STATEMENTS
}

/// What the checks of a send saw, in either shape of the answer.
struct Gate {
    channel_type: ChannelType,
    nickname: Option<String>,
    friends: bool,
    /// `None`: never a member; `Some(false)`: left.
    active: Option<bool>,
}

impl Gate {
    /// The refusal, if any. The same order of refusals as every read of these rules:
    /// membership first (a single chat's member row stays when the friendship ends, so it says
    /// why), then the friendship, then the sender's existence.
    fn check(&self, sender: UserId) -> Result<(), StoreError> {
        match self.active {
            Some(true) => {}
            Some(false) if self.channel_type == ChannelType::Single => return Err(not_friends()),
            _ => return Err(not_member()),
        }
        if !self.friends {
            return Err(not_friends());
        }
        if self.nickname.is_none() {
            return Err(user_not_found(sender));
        }
        Ok(())
    }
}

/// The answer of [`SEND_CDC`]: the message and the LSN after its commit, or why the send was
/// refused.
fn outcome_cdc(
    sender: UserId,
    channel_id: ChannelId,
    sent: &Row,
) -> Result<Written<SentMessage>, StoreError> {
    let Some(channel_type) = rows::get::<Option<String>>(sent, 0)? else {
        return Err(channel_not_found(channel_id));
    };
    let member: Option<i64> = rows::get(sent, 3)?;
    let left_at: Option<i64> = rows::get(sent, 4)?;
    Gate {
        channel_type: ChannelType::parse(&channel_type)?,
        nickname: rows::get(sent, 1)?,
        friends: rows::get(sent, 2)?,
        active: member.map(|_| left_at.is_none()),
    }
    .check(sender)?;
    let message_id: Option<i64> = rows::get(sent, 5)?;
    let (Some(message_id), Some(seq), Some(created_at)) =
        (message_id, rows::get(sent, 6)?, rows::get(sent, 7)?)
    else {
        return Err(StoreError::Decode(
            "hermet_send_committed passed its checks but wrote no message".into(),
        ));
    };
    Ok(Written {
        value: SentMessage {
            message_id,
            seq,
            created_at,
        },
        lsn: Store::decode_lsn_at(sent, 8)?,
    })
}

/// The answer of [`SEND_FULL`]: the message and the rows it changed, or why it was refused.
fn outcome_full(
    sender: UserId,
    channel_id: ChannelId,
    sent: Option<Row>,
) -> Result<(SentMessage, Changes), StoreError> {
    let Some(sent) = sent else {
        return Err(channel_not_found(channel_id));
    };
    let decoded = |what: &str| StoreError::Decode(format!("hermet_send answered no {what}"));
    let before = rows::record(&sent, 0, rows::channel_fields)?.ok_or_else(|| decoded("channel"))?;
    let member = rows::record(&sent, 3, rows::member_fields)?;
    Gate {
        channel_type: before.channel_type,
        nickname: rows::get(&sent, 1)?,
        friends: rows::get(&sent, 2)?,
        active: member.as_ref().map(MemberRow::is_active),
    }
    .check(sender)?;
    let after = rows::record(&sent, 4, rows::channel_fields)?
        .ok_or_else(|| decoded("channel after the send"))?;
    let msg = rows::record(&sent, 5, rows::message_fields)?.ok_or_else(|| decoded("message"))?;
    let own: Vec<MemberRow> = rows::record(&sent, 6, rows::member_fields)?
        .into_iter()
        .collect();
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
    /// single chat, still the peer's friend. One statement in `cdc` (module docs).
    pub async fn send_message(
        &self,
        sender: UserId,
        channel_id: ChannelId,
        content: &Content,
        msg_type: &MessageType,
    ) -> Result<Written<SentMessage>, StoreError> {
        let mut conn = self.conn().await?;
        let now = now_ms();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &channel_id,
            &now,
            &sender,
            &msg_type.as_str(),
            &content.as_str(),
        ];
        if self.config().sync_mode == SyncMode::Cdc {
            let send = conn.prepare_cached(SEND_CDC).await?;
            let sent = conn.query_one(&send, &params).await?;
            return outcome_cdc(sender, channel_id, &sent);
        }
        let send = conn.prepare_cached(SEND_FULL).await?;
        let tx = conn.transaction().await?;
        let sent = tx.query_opt(&send, &params).await?;
        let (value, changes) = outcome_full(sender, channel_id, sent)?;
        self.finish(tx, changes).await?;
        Ok(Written {
            value,
            lsn: Self::lsn(&conn).await?,
        })
    }
}
