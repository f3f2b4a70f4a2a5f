//! Bearer tokens and who may call what.
//!
//! - User tokens: HS256 JWTs whose `sub` is the user id as a string, with `exp`, `iat` (seconds)
//!   and the private `iat_ms` (the issue time in ms, so "revoke, then mint at once" gives a token
//!   that is valid). An external identity provider sharing the secret can issue the same tokens.
//!   `exp` is enforced exactly (no leeway): the `expires_at` the server routes announce is the
//!   moment the token stops working, and the moment a WebSocket using it is closed.
//! - A token is also refused when its user is disabled (`user_disabled`) or when it was issued
//!   (`iat_ms`, else `iat` × 1000, else 0) before the user's `tokens_valid_after`
//!   (`token_revoked`). That check goes through [`states::AuthStates`], an in-process cache kept
//!   right by `LISTEN hermet_auth` (its module doc states the rules).
//! - Tokens signed by the product's identity provider (RS256, ES256, EdDSA; `[auth.jwks]`) are
//!   told apart by their header's `alg` alone ([`crate::jwks::token_kind`]) and verified against
//!   the provider's key set, never against the HS256 secret (and an HS256 token never against
//!   the provider's keys: the key-confusion attack). Their `sub` is the user's `external_id`
//!   ([`external`]); the same disabled/revoked check follows. [`authenticate`] is the one entry.
//! - [`ServerKey`]: the product's app server, by an API key (`hermet admin apikey create`).
//!   User tokens are refused there and keys are refused on user routes (`invalid_api_key`,
//!   `unauthorized`).

pub mod external;
pub mod states;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use hermet_core::rows::UserId;
use hermet_store::identity::ApiKeyId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::jwks::{token_kind, TokenKind};
use crate::rate_limit::{self, ClientAddr};
use crate::AppState;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
    /// The issue time in ms; ours only (other issuers' tokens fall back to `iat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_ms: Option<i64>,
}

/// A token that verified: whose it is, when it was issued and until when it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// Unix ms (see the module doc).
    pub issued_ms: i64,
    /// Unix seconds.
    pub expires_at_secs: u64,
}

/// A token just minted.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    /// Unix ms.
    pub expires_at_ms: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        TokenKeys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// A token for `user` with the configured lifetime.
    pub fn issue(&self, user: UserId) -> Result<String, ApiError> {
        self.mint(user, self.ttl_secs).map(|m| m.token)
    }

    /// A token for `user` valid for `ttl_secs` from now.
    pub fn mint(&self, user: UserId, ttl_secs: u64) -> Result<Minted, ApiError> {
        let now_ms = now_ms();
        let iat = u64::try_from(now_ms / 1000).unwrap_or(0);
        let exp = iat.saturating_add(ttl_secs);
        let claims = Claims {
            sub: user.to_string(),
            iat: Some(iat),
            exp,
            iat_ms: Some(now_ms),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| {
                tracing::error!(error = %e, "token signing failed");
                ApiError::internal()
            })?;
        Ok(Minted {
            token,
            expires_at_ms: i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// The user of a valid token (signature and expiry only: see [`TokenKeys::verify_token`]).
    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        self.verify_token(token).map(|v| v.user)
    }

    /// Signature, expiry and subject of a token. Whether its user still accepts it is
    /// [`states::AuthStates::check`]'s.
    pub fn verify_token(&self, token: &str) -> Result<Verified, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| ApiError::unauthorized("invalid or expired token"))?;
        let c = data.claims;
        let user = match c.sub.parse::<UserId>() {
            Ok(id) if id > 0 => id,
            _ => return Err(ApiError::unauthorized("token subject is not a user id")),
        };
        let issued_ms = c.iat_ms.unwrap_or_else(|| {
            c.iat.map_or(0, |s| {
                i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
            })
        });
        Ok(Verified {
            user,
            issued_ms,
            expires_at_secs: c.exp,
        })
    }
}

/// Who a bearer token names, with every check: signature and expiry (by the HS256 secret, or by
/// the identity provider's key set for an asymmetric `alg`), the provider subject's user, then
/// whether that user still accepts the token (disabled, revoked).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Verified, ApiError> {
    let v = match state.identity_provider() {
        Some(idp) if token_kind(token) == TokenKind::External => {
            let id = idp.verify(token).await?;
            let user = external::user_of(state, idp, &id).await?;
            Verified {
                user,
                // No `iat`: issued at the epoch, so any revocation refuses it.
                issued_ms: id.issued_at_ms.unwrap_or(0),
                expires_at_secs: id.expires_at,
            }
        }
        Some(_) => state.keys().verify_token(token)?,
        // Without a provider the header is only read to explain a refusal, not on every request.
        None => state.keys().verify_token(token).map_err(|e| {
            if token_kind(token) == TokenKind::External {
                ApiError::unauthorized(
                    "tokens signed by an identity provider are not accepted: no [auth.jwks] is configured",
                )
            } else {
                e
            }
        })?,
    };
    state.auth().check(v.user, v.issued_ms).await?;
    Ok(v)
}

/// A refused token counts against its address's failure bucket (the answer may become a 429);
/// a token that could not be checked (503) is not the client's failure.
pub(crate) fn refused(state: &AppState, addr: ClientAddr, e: ApiError) -> ApiError {
    if e.status == StatusCode::UNAUTHORIZED {
        rate_limit::auth_failed(state, addr, e)
    } else {
        e
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?
            .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
        let v = authenticate(state, token.trim())
            .await
            .map_err(|e| refused(state, ClientAddr::of(parts, state), e))?;
        rate_limit::check_user(state, parts, v.user)?;
        Ok(AuthUser(v.user))
    }
}

/// The API key of a server-to-server request.
#[derive(Debug, Clone, Copy)]
pub struct ServerKey(pub ApiKeyId);

impl FromRequestParts<AppState> for ServerKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", m);
        let key = bearer_token(&parts.headers)
            .map_err(|e| refused(&e.message))?
            .ok_or_else(|| refused("expected `Authorization: Bearer <API key>`"))?
            .trim();
        // A user token (or anything else) is no key: refused without a look-up.
        if !key.starts_with(hermet_store::identity::API_KEY_PREFIX) || key.len() > 128 {
            return Err(refused("not an API key"));
        }
        match state.store().verify_api_key(key).await? {
            Some(id) => Ok(ServerKey(id)),
            None => Err(refused("unknown or revoked API key")),
        }
    }
}
/// The token of an `Authorization: Bearer <token>` header; `None` without the header, an error
/// when the header is there but not a bearer token.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let keys = TokenKeys::new(b"secret-one", 60);
        let other = TokenKeys::new(b"secret-two", 60);
        let t = keys.issue(42).unwrap();
        assert_eq!(keys.verify(&t).unwrap(), 42);
        assert!(other.verify(&t).is_err(), "signed with another secret");
        assert!(keys.verify("not.a.jwt").is_err());
        let mut tampered = t.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = TokenKeys::new(b"s", 0);
        let claims = Claims {
            sub: "1".into(),
            iat: Some(0),
            exp: 1,
            iat_ms: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.enc).unwrap();
        assert!(keys.verify(&t).is_err());
    }

    #[test]
    fn minted_tokens_carry_their_issue_time_and_expiry() {
        let keys = TokenKeys::new(b"s", 60);
        let before = now_ms();
        let m = keys.mint(7, 90).unwrap();
        let v = keys.verify_token(&m.token).unwrap();
        assert_eq!(v.user, 7);
        assert!(v.issued_ms >= before && v.issued_ms <= now_ms(), "{v:?}");
        assert_eq!(
            m.expires_at_ms,
            i64::try_from(v.expires_at_secs).unwrap() * 1000
        );
        let in_90s = v.issued_ms / 1000 * 1000 + 90_000;
        assert_eq!(m.expires_at_ms, in_90s);
        // Another issuer's token without `iat_ms` counts from `iat`, or from 0 without it.
        let claims = Claims {
            sub: "3".into(),
            iat: Some(1_000),
            exp: u64::MAX / 2000,
            iat_ms: None,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.enc).unwrap();
        assert_eq!(keys.verify_token(&t).unwrap().issued_ms, 1_000_000);
        let claims = Claims {
            iat: None,
            ..claims
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.enc).unwrap();
        assert_eq!(keys.verify_token(&t).unwrap().issued_ms, 0);
    }
}
