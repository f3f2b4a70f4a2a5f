//! Users of the product's identity provider: a verified provider token's `sub` is the user's
//! `external_id` (the same key `POST /v1/server/users` imports under).
//!
//! Contract:
//! - A subject already imported maps to its user. The mapping never changes once made (an
//!   external id is never moved to another user), so it is cached in the process without
//!   invalidation; the cache is bounded (emptied when full) and only spares a look-up.
//! - An unknown subject is created on first sight when `[auth.jwks] create_users` is on
//!   (idempotent, like the import: concurrent first requests get one user), nicknamed from the
//!   token's nickname claim (cut to the name limit; `sub`, then `user`, when that is not a valid
//!   name). Otherwise it is refused with 401 `unknown_user`: import it first.
//! - A subject that is not a valid external id (surrounding whitespace, control characters, too
//!   long) is refused with 401.
//! - Whether the user still accepts tokens (disabled, revoked) is checked after this, by the
//!   caller ([`super::authenticate`]).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use hermet_core::rows::UserId;
use hermet_core::validate::{Avatar, ExternalId, Name};

use crate::error::ApiError;
use crate::jwks::{ExternalIdentity, JwksVerifier};
use crate::routes::retrying;
use crate::AppState;

/// Most subjects kept; past it the cache starts again empty.
pub const CACHE_CAP: usize = 100_000;

/// Subjects already mapped to users in this process.
#[derive(Default)]
pub struct ExternalUsers {
    known: Mutex<HashMap<String, UserId>>,
}

impl ExternalUsers {
    fn get(&self, subject: &str) -> Option<UserId> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .copied()
    }

    fn insert(&self, subject: &str, user: UserId) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= CACHE_CAP {
            known.clear();
        }
        known.insert(subject.to_owned(), user);
    }
}

/// The user of a verified provider token (see the module doc).
pub(crate) async fn user_of(
    state: &AppState,
    idp: &JwksVerifier,
    id: &ExternalIdentity,
) -> Result<UserId, ApiError> {
    let cache = &state.inner.external;
    if let Some(user) = cache.get(&id.subject) {
        return Ok(user);
    }
    let external = ExternalId::parse(&id.subject).map_err(|e| {
        ApiError::unauthorized(format!(
            "the token's subject is not a valid external id: {e}"
        ))
    })?;
    let user = match state.store().user_by_external_id(external.as_str()).await? {
        Some(user) => user,
        None if idp.creates_users() => {
            let limits = &state.store().config().limits;
            let nickname = nickname_for(id, limits)?;
            let avatar = Avatar::parse("", limits)?;
            let (w, created) = retrying(|| {
                state
                    .store()
                    .create_or_get_external_user(&external, &nickname, &avatar)
            })
            .await?;
            if created {
                tracing::info!(
                    user = w.value.id,
                    "user created on first sight of an identity-provider token"
                );
            }
            w.value.id
        }
        None => return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown_user",
            "no user has this token's subject as external id: import it with POST /v1/server/users",
        )),
    };
    cache.insert(&id.subject, user);
    Ok(user)
}

/// The nickname claim (else `sub`, else `user`) cut to the name limit: the first that is a name.
fn nickname_for(
    id: &ExternalIdentity,
    limits: &hermet_core::validate::Limits,
) -> Result<Name, ApiError> {
    [id.display_name(), id.subject.as_str(), "user"]
        .into_iter()
        .find_map(|raw| {
            let cut: String = raw.chars().take(limits.max_name_chars).collect();
            Name::parse("nickname", &cut, limits).ok()
        })
        .ok_or_else(|| ApiError::unauthorized("no usable nickname for a new user"))
}
