use super::retrying;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use hermet_core::cache::{read_through, Source};
use hermet_core::rows::UserId;
use hermet_store::commands::ConversationPatch;
use hermet_store::views::{ConversationItem, ListCursor};
use hermet_store::{Store, SyncMode};
use serde::{Deserialize, Serialize};

use super::{page_limit, path_id, strict_min_lsn};
use crate::auth::AuthUser;
use crate::consistency::{lsn_header, min_lsn, stale_header, wait_for};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::AppState;
use hermet_core::projection::ReadModel;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

pub(crate) async fn list(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            cursor_grammar(c)
                .then(|| ListCursor::decode(c))
                .flatten()
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
                })?,
        ),
    };
    strict_min_lsn(&headers)?;
    // A read that asks for its own writes in `async`/`cdc` must not take a page cached before
    // the projector's invalidation landed (see `hermet_core::cache`).
    let wants_own_writes =
        min_lsn(&headers)?.is_some() && state.store().config().sync_mode != SyncMode::DualWrite;
    let stale = wait_for(&state, &headers, ReadModel::Conversations).await?;
    let body = if after.is_none() && !wants_own_writes && !stale {
        first_page(state.store(), me, limit).await?.0
    } else {
        load_page(state.store(), me, limit, after).await?
    };
    Ok((
        stale_header(stale),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    ))
}

/// A cursor as the document writes it (`^[01]\.[0-9]{1,18}\.[0-9]{1,18}$`, which always decodes),
/// checked before `ListCursor::decode` (which also takes signs and longer numbers).
fn cursor_grammar(c: &str) -> bool {
    let digits = |s: &str| (1..=18).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = c.split('.');
    matches!(parts.next(), Some("0" | "1"))
        && parts.next().is_some_and(digits)
        && parts.next().is_some_and(digits)
        && parts.next().is_none()
}

/// The first page of `me`'s conversation list as `GET /v1/conversations` answers it (the JSON
/// body), through the store's list cache; also where a page came from.
pub async fn first_page(
    store: &Store,
    me: UserId,
    limit: i64,
) -> Result<(String, Source), ApiError> {
    // The owner's channels in read diffusion, whose versions a cached page is checked against
    // (see `hermet_core::cache`); asked for on a miss only.
    let read_fanout = || async { Ok::<_, ApiError>(store.read_fanout_channels(me).await?) };
    read_through(store.cache().as_ref(), me, limit, read_fanout, || {
        load_page(store, me, limit, None)
    })
    .await
}

/// One page of `me`'s conversation list as the JSON body of the answer.
async fn load_page(
    store: &Store,
    me: UserId,
    limit: i64,
    after: Option<ListCursor>,
) -> Result<String, ApiError> {
    // One extra row tells whether another page exists.
    let mut items = store.list_conversations(me, limit + 1, after).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|i| i.cursor.encode())
    } else {
        None
    };
    let page = Page {
        conversations: items.iter().map(Item::from).collect(),
        next_cursor,
    };
    serde_json::to_string(&page).map_err(|e| {
        tracing::error!(error = %e, "could not render a conversation page");
        ApiError::internal()
    })
}

// The list body is rendered straight from borrowed rows (no intermediate `serde_json::Value`
// maps): this is the hottest path of the service. Fields are in alphabetical order so the bytes
// are the ones `json!` produced before, and cached pages from older processes look the same.
#[derive(Serialize)]
struct Page<'a> {
    conversations: Vec<Item<'a>>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct Item<'a> {
    avatar: &'a str,
    channel_id: i64,
    last_message: Option<Last<'a>>,
    muted: bool,
    name: &'a str,
    peer_user_id: Option<i64>,
    pinned: bool,
    #[serde(rename = "type")]
    kind: &'static str,
    unread_count: i64,
}

#[derive(Serialize)]
struct Last<'a> {
    content: &'a str,
    created_at: i64,
    message_id: i64,
    sender_id: i64,
    sender_name: &'a str,
    seq: i64,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a> From<&'a ConversationItem> for Item<'a> {
    fn from(c: &'a ConversationItem) -> Self {
        Item {
            avatar: &c.avatar,
            channel_id: c.channel_id,
            last_message: c.last_message.as_ref().map(|m| Last {
                content: &m.content,
                created_at: m.created_at,
                message_id: m.message_id,
                sender_id: m.sender_id,
                sender_name: &m.sender_name,
                seq: m.seq,
                kind: &m.msg_type,
            }),
            muted: c.muted,
            name: &c.name,
            peer_user_id: c.peer_user_id,
            pinned: c.pinned,
            kind: c.conversation_type.as_str(),
            unread_count: c.unread_count,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateConversation {
    pinned: Option<bool>,
    muted: Option<bool>,
    hidden: Option<bool>,
}

pub(crate) async fn update(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Json(body): Json<UpdateConversation>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    if body.pinned.is_none() && body.muted.is_none() && body.hidden.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_change",
            "give `pinned`, `muted` and/or `hidden`",
        ));
    }
    let patch = ConversationPatch {
        pinned: body.pinned,
        muted: body.muted,
        hidden: body.hidden,
    };
    let w = retrying(|| state.store().update_conversation(me, channel, patch)).await?;
    Ok((lsn_header(w.lsn), axum::Json(serde_json::json!({}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_as_documented() {
        for ok in [
            "0.1.1",
            "1.1796144765001.42",
            &format!("0.{0}.{0}", "9".repeat(18)),
        ] {
            assert!(cursor_grammar(ok), "{ok}");
            assert!(ListCursor::decode(ok).is_some(), "{ok} decodes");
        }
        let long = format!("0.{}.1", "1".repeat(19));
        for bad in [
            "", "2.1.1", "0.1", "0.1.1.1", "0.+1.1", "0.-1.1", "0..1", "0.1.x", &long,
        ] {
            assert!(!cursor_grammar(bad), "{bad}");
        }
        // An issued cursor is one the grammar takes.
        let issued = ListCursor {
            pinned: true,
            activity_at: 1_796_144_765_001,
            channel_id: 7,
        };
        assert!(cursor_grammar(&issued.encode()));
    }
}
