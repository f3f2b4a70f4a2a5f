use super::retrying;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hermet_core::rows::UserRow;
use serde::Deserialize;
use serde_json::json;

use super::{avatar, name, profile_patch};
use crate::auth::AuthUser;
use crate::consistency::lsn_header;
use crate::error::ApiError;
use crate::extract::Json;
use crate::rate_limit::{self, ClientAddr};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    nickname: String,
    avatar: Option<String>,
}

fn user_json(u: &UserRow) -> serde_json::Value {
    json!({"id": u.id, "nickname": u.nickname, "avatar": u.avatar, "profile_ver": u.profile_ver})
}

pub(crate) async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    Json(body): Json<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.inner.cfg.open_signup {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "signup_disabled",
            "open sign-up is off: users are created by the product's server (POST /v1/server/users)",
        ));
    }
    rate_limit::check_signup(&state, addr)?;
    let limits = &state.store().config().limits;
    let nickname = name("nickname", &body.nickname, limits)?;
    let avatar = avatar(body.avatar.as_deref().unwrap_or(""), limits)?;
    let w = retrying(|| state.store().create_user(&nickname, &avatar)).await?;
    let token = state.keys().issue(w.value.id)?;
    let mut body = user_json(&w.value);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, lsn_header(w.lsn), axum::Json(body)))
}

pub(crate) async fn me(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let u = state.store().get_user(me).await?;
    Ok(axum::Json(user_json(&u)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMe {
    nickname: Option<String>,
    avatar: Option<String>,
}

pub(crate) async fn update_me(
    AuthUser(me): AuthUser,
    State(state): State<AppState>,
    Json(body): Json<UpdateMe>,
) -> Result<impl IntoResponse, ApiError> {
    let limits = &state.store().config().limits;
    let patch = profile_patch(body.nickname.as_deref(), body.avatar.as_deref(), limits)?;
    if patch.nickname.is_none() && patch.avatar.is_none() {
        return Err(ApiError::bad_request(
            "nothing_to_change",
            "give `nickname` and/or `avatar`",
        ));
    }
    let w = retrying(|| state.store().update_profile(me, &patch)).await?;
    Ok((lsn_header(w.lsn), axum::Json(user_json(&w.value))))
}
