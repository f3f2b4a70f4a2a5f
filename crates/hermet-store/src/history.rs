//! Reading a channel's messages: history pages, newest first, and catch-up pages, oldest first
//! after the last seq a client has. Members only; membership and messages come from one
//! read-only snapshot.

use hermet_core::rows::{ChannelId, UserId};

use crate::commands::{channel_not_found, q, q_opt};
use crate::rows::{self, MESSAGE_COLS};
use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageItem {
    pub message_id: i64,
    pub seq: i64,
    pub sender_id: UserId,
    pub sender_name: String,
    pub msg_type: String,
    pub content: String,
    pub created_at: i64,
}

/// A page of a channel's messages: newest first below a seq (`None`: the newest), or oldest
/// first above one (catching up from the last seq a client has), optionally below another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePage {
    Before(Option<i64>),
    After { after: i64, before: Option<i64> },
}

impl Store {
    /// A page of a channel's messages (see [`MessagePage`]). Members only.
    pub async fn list_messages(
        &self,
        reader: UserId,
        channel_id: ChannelId,
        page: MessagePage,
        limit: i64,
    ) -> Result<Vec<MessageItem>, StoreError> {
        let mut conn = self.conn().await?;
        // A read-only transaction: membership and messages from one snapshot.
        let tx = conn.build_transaction().read_only(true).start().await?;
        let exists = q_opt(&tx, "SELECT 1 FROM channels WHERE id = $1", &[&channel_id]).await?;
        if exists.is_none() {
            return Err(channel_not_found(channel_id));
        }
        Self::active_member(&tx, channel_id, reader).await?;
        // Both directions walk the (channel_id, seq) key.
        let (sql, after, before) = match page {
            MessagePage::Before(before) => ("ORDER BY seq DESC", 0, before),
            MessagePage::After { after, before } => ("ORDER BY seq ASC", after, before),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages
              WHERE channel_id = $1 AND seq > $2 AND seq < $3 {sql} LIMIT $4"
        );
        let before = before.unwrap_or(i64::MAX);
        let out = q(&tx, &sql, &[&channel_id, &after, &before, &limit])
            .await?
            .iter()
            .map(|r| {
                rows::message(r, 0).map(|m| MessageItem {
                    message_id: m.id,
                    seq: m.seq,
                    sender_id: m.sender_id,
                    sender_name: m.sender_name,
                    msg_type: m.msg_type,
                    content: m.content,
                    created_at: m.created_at,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(out)
    }
}
