use super::retrying;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hermet_core::validate::Invalid;
use hermet_store::commands::GroupPatch;
use serde::Deserialize;
use serde_json::json;

use super::{avatar, name, path_id};
use crate::auth::AuthUser;
use crate::consistency::lsn_header;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroup {
    name: String,
    avatar: Option<String>,
    member_ids: Vec<i64>,
}

fn user_ids(
    field: &'static str,
    ids: &[i64],
    max: usize,
    distinct: bool,
) -> Result<Vec<i64>, ApiError> {
    // Bounded before any work: a list far above the group size cannot be valid.
    if ids.len() > max {
        return Err(Invalid::new(field, format!("a group has at most {max} members")).into());
    }
    Ok(hermet_core::validate::member_ids(field, ids, distinct)?)
}

pub(crate) async fn create(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Json(body): Json<CreateGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let limits = &state.store().config().limits;
    let name = name("name", &body.name, limits)?;
    let avatar = avatar(body.avatar.as_deref().unwrap_or(""), limits)?;
    let members = user_ids(
        "member_ids",
        &body.member_ids,
        limits.max_group_members,
        false,
    )?;
    let w = retrying(|| state.store().create_group(me, &name, &avatar, &members)).await?;
    Ok((
        StatusCode::CREATED,
        lsn_header(w.lsn),
        axum::Json(json!({"channel_id": w.value})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateGroup {
    name: Option<String>,
    avatar: Option<String>,
}

pub(crate) async fn update(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Json(body): Json<UpdateGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let limits = &state.store().config().limits;
    let patch = GroupPatch {
        name: body
            .name
            .as_deref()
            .map(|n| name("name", n, limits))
            .transpose()?,
        avatar: body
            .avatar
            .as_deref()
            .map(|a| avatar(a, limits))
            .transpose()?,
    };
    if patch.name.is_none() && patch.avatar.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_change",
            "give `name` and/or `avatar`",
        ));
    }
    let w = retrying(|| state.store().update_group(me, channel, &patch)).await?;
    Ok((lsn_header(w.lsn), axum::Json(json!({}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMembers {
    user_ids: Vec<i64>,
}

pub(crate) async fn add_members(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path(channel): Path<i64>,
    Json(body): Json<AddMembers>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let limits = &state.store().config().limits;
    let ids = user_ids("user_ids", &body.user_ids, limits.max_group_members, true)?;
    let w = retrying(|| state.store().add_members(me, channel, &ids)).await?;
    Ok((lsn_header(w.lsn), axum::Json(json!({}))))
}

pub(crate) async fn remove_member(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Path((channel, user)): Path<(i64, i64)>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = path_id("channel_id", channel)?;
    let user = path_id("user_id", user)?;
    let w = retrying(|| state.store().remove_member(me, channel, user)).await?;
    Ok((StatusCode::NO_CONTENT, lsn_header(w.lsn)))
}
