//! Bearer tokens: HS256 JWTs whose `sub` is the user id as a string. An external identity
//! provider sharing the secret can issue the same tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hermet_core::rows::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::rate_limit::{self, ClientAddr};
use crate::AppState;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

#[derive(Clone)]
pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl TokenKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn issue(&self, user: UserId) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc).map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })
    }

    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| ApiError::unauthorized("invalid or expired token"))?;
        match data.claims.sub.parse::<UserId>() {
            Ok(id) if id > 0 => Ok(id),
            _ => Err(ApiError::unauthorized("token subject is not a user id")),
        }
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
        let user = state
            .keys()
            .verify(token.trim())
            .map_err(|e| rate_limit::auth_failed(state, ClientAddr::of(parts, state), e))?;
        rate_limit::check_user(state, parts, user)?;
        Ok(AuthUser(user))
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
            iat: 0,
            exp: 1,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.enc).unwrap();
        assert!(keys.verify(&t).is_err());
    }
}
