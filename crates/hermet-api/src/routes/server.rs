//! `/v1/server/...`: what the product's app server calls, authenticated by an API key
//! ([`ServerKey`]): import users by their external id, edit or disable them, mint and revoke
//! their tokens. Input is checked in full before anything is written.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hermet_core::validate::{ExternalId, Invalid};
use hermet_store::identity::ServerUser;
use serde::Deserialize;
use serde_json::json;

use super::{avatar, name, path_id, profile_patch, retrying};
use crate::auth::{now_ms, ServerKey};
use crate::consistency::lsn_header;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::AppState;

fn user_json(u: &ServerUser) -> serde_json::Value {
    json!({
        "id": u.user.id,
        "external_id": u.external_id,
        "nickname": u.user.nickname,
        "avatar": u.user.avatar,
        "profile_ver": u.user.profile_ver,
        "disabled": u.disabled,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportUser {
    external_id: String,
    nickname: String,
    avatar: Option<String>,
}

/// `POST /v1/server/users`: 201 with the new user, or 200 with the one already imported under
/// that external id (left as it is).
pub(crate) async fn import_user(
    _key: ServerKey,
    State(state): State<AppState>,
    Json(body): Json<ImportUser>,
) -> Result<Response, ApiError> {
    let limits = &state.store().config().limits;
    let external_id = ExternalId::parse(&body.external_id)?;
    let nickname = name("nickname", &body.nickname, limits)?;
    let avatar = avatar(body.avatar.as_deref().unwrap_or(""), limits)?;
    let (w, created) = retrying(|| {
        state
            .store()
            .create_or_get_external_user(&external_id, &nickname, &avatar)
    })
    .await?;
    let (status, user) = if created {
        let user = ServerUser {
            user: w.value,
            external_id: Some(external_id.as_str().to_owned()),
            disabled: false,
        };
        (StatusCode::CREATED, user)
    } else {
        (StatusCode::OK, state.store().server_user(w.value.id).await?)
    };
    Ok((status, lsn_header(w.lsn), axum::Json(user_json(&user))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    nickname: Option<String>,
    avatar: Option<String>,
    disabled: Option<bool>,
}

/// `PATCH /v1/server/users/{id}`: the profile through `update_profile` (so the read side
/// follows), `disabled` through the auth state (tokens refused and sockets closed at once).
pub(crate) async fn update_user(
    _key: ServerKey,
    State(state): State<AppState>,
    Path(user): Path<i64>,
    Json(body): Json<UpdateUser>,
) -> Result<Response, ApiError> {
    let user = path_id("user_id", user)?;
    let limits = &state.store().config().limits;
    let patch = profile_patch(body.nickname.as_deref(), body.avatar.as_deref(), limits)?;
    let profile = patch.nickname.is_some() || patch.avatar.is_some();
    if !profile && body.disabled.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_change",
            "give `nickname`, `avatar` and/or `disabled`",
        ));
    }
    let mut lsn = None;
    if profile {
        let w = retrying(|| state.store().update_profile(user, &patch)).await?;
        lsn = Some(w.lsn);
    }
    if let Some(disabled) = body.disabled {
        let w = state.store().set_disabled(user, disabled).await?;
        state.auth().applied(user, w.value);
        lsn = Some(w.lsn);
    }
    let body = axum::Json(user_json(&state.store().server_user(user).await?));
    // One of the two ran: a request with nothing to change was refused above.
    let lsn = lsn.ok_or_else(ApiError::internal)?;
    Ok((lsn_header(lsn), body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MintToken {
    ttl_secs: Option<i64>,
}

/// `POST /v1/server/users/{id}/tokens`: a user token valid for `ttl_secs` (default
/// `auth.token_ttl_secs`, at most `auth.max_token_ttl_secs`).
pub(crate) async fn mint_token(
    _key: ServerKey,
    State(state): State<AppState>,
    Path(user): Path<i64>,
    Json(body): Json<MintToken>,
) -> Result<Response, ApiError> {
    let user = path_id("user_id", user)?;
    let cfg = &state.inner.cfg;
    let max = cfg.max_token_ttl_secs;
    let ttl = match body.ttl_secs {
        None => cfg.token_ttl_secs.min(max),
        Some(t) => u64::try_from(t)
            .ok()
            .filter(|t| (1..=max).contains(t))
            .ok_or_else(|| Invalid::new("ttl_secs", format!("must be between 1 and {max}")))?,
    };
    if state.store().server_user(user).await?.disabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "user_disabled",
            "this user is disabled: no token is issued",
        ));
    }
    let minted = state.keys().mint(user, ttl)?;
    let body = json!({"token": minted.token, "expires_at": minted.expires_at_ms});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `DELETE /v1/server/users/{id}/tokens`: every token of the user issued before now is refused
/// and the sockets using them are closed, in every API process.
pub(crate) async fn revoke_tokens(
    _key: ServerKey,
    State(state): State<AppState>,
    Path(user): Path<i64>,
) -> Result<Response, ApiError> {
    let user = path_id("user_id", user)?;
    let w = state.store().revoke_tokens(user, now_ms()).await?;
    state.auth().applied(user, w.value);
    Ok((StatusCode::NO_CONTENT, lsn_header(w.lsn)).into_response())
}
