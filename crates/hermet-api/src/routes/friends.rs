use super::retrying;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hermet_store::commands::FriendPatch;
use serde::Deserialize;
use serde_json::json;

use super::{label, path_id, strict_min_lsn};
use crate::auth::AuthUser;
use crate::consistency::{lsn_header, stale_header, wait_for};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::AppState;
use hermet_core::projection::ReadModel;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddFriend {
    friend_id: i64,
}

pub(crate) async fn add(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Json(body): Json<AddFriend>,
) -> Result<impl IntoResponse, ApiError> {
    let friend = hermet_core::validate::id("friend_id", body.friend_id)?;
    let w = retrying(|| state.store().add_friend(me, friend)).await?;
    Ok((
        StatusCode::CREATED,
        lsn_header(w.lsn),
        axum::Json(json!({"channel_id": w.value})),
    ))
}

pub(crate) async fn remove(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(friend): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let friend = path_id("friend_id", friend)?;
    let w = retrying(|| state.store().delete_friend(me, friend)).await?;
    Ok((StatusCode::NO_CONTENT, lsn_header(w.lsn)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateFriend {
    remark_name: Option<String>,
    group_name: Option<String>,
    starred: Option<bool>,
}

pub(crate) async fn update(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(friend): Path<i64>,
    Json(body): Json<UpdateFriend>,
) -> Result<impl IntoResponse, ApiError> {
    let friend = path_id("friend_id", friend)?;
    let limits = &state.store().config().limits;
    let patch = FriendPatch {
        remark_name: body
            .remark_name
            .as_deref()
            .map(|r| label("remark_name", r, limits))
            .transpose()?,
        group_name: body
            .group_name
            .as_deref()
            .map(|g| label("group_name", g, limits))
            .transpose()?,
        starred: body.starred,
    };
    if patch.remark_name.is_none() && patch.group_name.is_none() && patch.starred.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_change",
            "give `remark_name`, `group_name` and/or `starred`",
        ));
    }
    let w = retrying(|| state.store().update_friend(me, friend, &patch)).await?;
    Ok((lsn_header(w.lsn), axum::Json(json!({}))))
}

pub(crate) async fn contacts(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    strict_min_lsn(&headers)?;
    let stale = wait_for(&state, &headers, ReadModel::Contacts).await?;
    let items = state.store().list_contacts(me, 10_000).await?;
    let contacts: Vec<_> = items
        .iter()
        .map(|c| {
            json!({
                "contact_id": c.contact_id,
                "nickname": c.nickname,
                "avatar": c.avatar,
                "remark_name": c.remark_name,
                "group_name": c.group_name,
                "starred": c.starred,
            })
        })
        .collect();
    Ok((
        stale_header(stale),
        axum::Json(json!({"contacts": contacts})),
    ))
}
