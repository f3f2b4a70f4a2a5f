use super::retrying;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hermet_core::validate::{Content, MessageType};
use hermet_store::history::MessagePage;
use serde::Deserialize;
use serde_json::json;

use super::{page_limit, path_id};
use crate::auth::AuthUser;
use crate::consistency::lsn_header;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMessage {
    content: String,
    #[serde(rename = "type")]
    msg_type: Option<String>,
}

pub(crate) async fn send(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Json(body): Json<SendMessage>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let limits = &state.store().config().limits;
    let content = Content::parse(&body.content, limits)?;
    let msg_type = match body.msg_type.as_deref() {
        None => MessageType::text(),
        Some(t) => MessageType::parse(t, limits)?,
    };
    let w = retrying(|| state.store().send_message(me, channel, &content, &msg_type)).await?;
    let m = w.value;
    Ok((
        StatusCode::CREATED,
        lsn_header(w.lsn),
        axum::Json(json!({"message_id": m.message_id, "seq": m.seq, "created_at": m.created_at})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: Option<i64>,
}

pub(crate) async fn history(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Query(q): Query<HistoryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let limit = page_limit(q.limit)?;
    if q.before_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::bad_request(
            "invalid_before_seq",
            "before_seq must be at least 1",
        ));
    }
    let page = match q.after_seq {
        None => MessagePage::Before(q.before_seq),
        Some(s) if s < 0 => {
            return Err(ApiError::bad_request(
                "invalid_after_seq",
                "after_seq must be at least 0",
            ))
        }
        Some(after) => MessagePage::After {
            after,
            before: q.before_seq,
        },
    };
    let items = state
        .store()
        .list_messages(me, channel, page, limit)
        .await?;
    let messages: Vec<_> = items
        .iter()
        .map(|m| {
            json!({
                "message_id": m.message_id,
                "seq": m.seq,
                "sender_id": m.sender_id,
                "sender_name": m.sender_name,
                "type": m.msg_type,
                "content": m.content,
                "created_at": m.created_at,
            })
        })
        .collect();
    Ok(axum::Json(json!({"messages": messages})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MarkRead {
    seq: i64,
}

pub(crate) async fn read(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Json(body): Json<MarkRead>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let w = retrying(|| state.store().mark_read(me, channel, body.seq)).await?;
    Ok((lsn_header(w.lsn), axum::Json(json!({}))))
}
