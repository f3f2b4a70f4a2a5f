//! Who hears about a change: the look-ups of the push notifier, one statement per kind and batch.
//!
//! Reads of current state outside any transaction: a push is a hint sent after the fact, so a
//! member who joined or left a moment ago may or may not be told; their list read settles it.
//!
//! ## Channel members: an intersection, never the whole membership
//! A notifier can only reach the users connected to its own process, and a channel may have
//! 100,000 members (groups in read diffusion are the large ones), of whom a process serves a
//! few. So members are never listed: [`connected_members`] takes the channels *and* the users
//! connected here, and asks only for the pairs that are both — [`CONNECTED_MEMBERS_SQL`]. Its
//! two `= ANY` conditions are both index conditions on the primary key `(channel_id, user_id)`:
//! one probe per channel and connected user. As measured on PostgreSQL 15 with a 100,000-member
//! channel: users with ~20 memberships each and a few connected → `Index Scan using
//! channel_members_pkey`, `Index Cond: channel_id = ANY AND user_id = ANY`; users with a single
//! membership → `channel_members_by_user` (the connected users' memberships, filtered by
//! channel), as cheap. Only when the connected users are a large share of the channel (25,000
//! of its 100,000 members in the measurement) does the planner read the channel's range of the
//! primary key instead, because that is then cheaper than as many probes; the answer still
//! carries only the intersection. So the work grows with the connected users, bounded by the
//! channel's size, and the answer never with the channel (`tests/push_audience.rs` in
//! `hermet-testkit` checks the plan on a 100,000-member channel).
//!
//! With nobody connected the notifier skips the statement altogether.

use hermet_core::rows::{ChannelId, UserId};

use crate::StoreError;

/// The statement of [`connected_members`] (public so that a test can `EXPLAIN` exactly it).
pub const CONNECTED_MEMBERS_SQL: &str = "SELECT m.channel_id, m.user_id FROM channel_members m
  WHERE m.channel_id = ANY($1::bigint[]) AND m.user_id = ANY($2::bigint[]) AND m.left_at IS NULL";

/// Active members (`left_at IS NULL`) of `channels` among `users` (the users connected here), as
/// `(channel, user)` pairs. Empty input: no statement.
pub async fn connected_members(
    client: &deadpool_postgres::Client,
    channels: &[ChannelId],
    users: &[UserId],
) -> Result<Vec<(ChannelId, UserId)>, StoreError> {
    if channels.is_empty() || users.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(CONNECTED_MEMBERS_SQL).await?;
    client
        .query(&stmt, &[&channels, &users])
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
