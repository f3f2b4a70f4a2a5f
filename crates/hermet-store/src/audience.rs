//! Who hears about a change: the look-ups of the push notifier, one statement per kind and batch.
//!
//! Reads of current state outside any transaction: a push is a hint sent after the fact, so a
//! member who joined or left a moment ago may or may not be told; their list read settles it.

use hermet_core::rows::{ChannelId, UserId};

use crate::StoreError;

/// Active members (`left_at IS NULL`) of the channels, as `(channel, user)` pairs.
pub async fn active_members(
    client: &deadpool_postgres::Client,
    channels: &[ChannelId],
) -> Result<Vec<(ChannelId, UserId)>, StoreError> {
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(
            "SELECT channel_id, user_id FROM channel_members
              WHERE channel_id = ANY($1::bigint[]) AND left_at IS NULL",
        )
        .await?;
    client
        .query(&stmt, &[&channels])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0).map_err(decode)?, r.try_get(1).map_err(decode)?)))
        .collect()
}

/// The rows that embed these users' profiles, through the reverse indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileWatchers {
    /// `(peer, owner, channel)`: `owner`'s single-chat row `channel` shows `peer`.
    pub conversations: Vec<(UserId, UserId, ChannelId)>,
    /// `(contact, owner)`: `owner`'s contact list shows `contact`.
    pub contacts: Vec<(UserId, UserId)>,
}

/// Whose rows embed the profiles of `users`.
pub async fn profile_watchers(
    client: &deadpool_postgres::Client,
    users: &[UserId],
) -> Result<ProfileWatchers, StoreError> {
    let mut w = ProfileWatchers::default();
    if users.is_empty() {
        return Ok(w);
    }
    let stmt = client
        .prepare_cached(
            "SELECT peer_user_id, owner_user_id, channel_id FROM conversation_reverse_index
              WHERE peer_user_id = ANY($1::bigint[])",
        )
        .await?;
    for r in client.query(&stmt, &[&users]).await? {
        w.conversations.push((
            r.try_get(0).map_err(decode)?,
            r.try_get(1).map_err(decode)?,
            r.try_get(2).map_err(decode)?,
        ));
    }
    let stmt = client
        .prepare_cached(
            "SELECT contact_user_id, owner_user_id FROM contact_reverse_index
              WHERE contact_user_id = ANY($1::bigint[])",
        )
        .await?;
    for r in client.query(&stmt, &[&users]).await? {
        w.contacts
            .push((r.try_get(0).map_err(decode)?, r.try_get(1).map_err(decode)?));
    }
    Ok(w)
}

fn decode(e: tokio_postgres::Error) -> StoreError {
    StoreError::Decode(e.to_string())
}
