//! Route handlers, one module per resource of `docs/api.md`.

mod channels;
pub(crate) mod conversations;
mod friends;
mod groups;
mod ops;
mod server;
mod users;
mod ws;

use axum::http::HeaderMap;
use axum::routing::{delete, get, patch, post};
use axum::Router;
use hermet_core::validate::{Avatar, Invalid, Label, Limits, Name};

use crate::consistency::MIN_LSN_HEADER;
use crate::error::ApiError;
use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().merge(lists()).merge(others())
}

/// The reads whose answers grow with the user's data (a page of 100 conversations is tens of
/// kilobytes of JSON): gzipped when the client accepts it and the answer is over 1 KiB, which a
/// phone on a slow link downloads several times faster. Other answers are small and not worth
/// the CPU; WebSocket upgrades stay untouched.
fn lists() -> Router<AppState> {
    use tower_http::compression::{predicate::SizeAbove, CompressionLayer};
    Router::new()
        .route("/v1/contacts", get(friends::contacts))
        .route(
            "/v1/channels/{channel_id}/messages",
            post(channels::send).get(channels::history),
        )
        .route("/v1/conversations", get(conversations::list))
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .compress_when(SizeAbove::new(1024)),
        )
}

fn others() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(users::create))
        .route("/v1/me", get(users::me).patch(users::update_me))
        .route("/v1/friends", post(friends::add))
        .route(
            "/v1/friends/{friend_id}",
            delete(friends::remove).patch(friends::update),
        )
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{channel_id}", patch(groups::update))
        .route("/v1/groups/{channel_id}/members", post(groups::add_members))
        .route(
            "/v1/groups/{channel_id}/members/{user_id}",
            delete(groups::remove_member),
        )
        .route("/v1/channels/{channel_id}/read", post(channels::read))
        .route(
            "/v1/conversations/{channel_id}",
            patch(conversations::update),
        )
        .route("/v1/ws", get(ws::connect))
        .route("/v1/server/users", post(server::import_user))
        .route("/v1/server/users/{user_id}", patch(server::update_user))
        .route(
            "/v1/server/users/{user_id}/tokens",
            post(server::mint_token).delete(server::revoke_tokens),
        )
        .route("/v1/ops/status", get(ops::status))
}

/// A nickname or group name. The document's `maxLength` bounds the string as sent, so that is
/// checked before trimming (`Name::parse` bounds the trimmed string).
fn name(field: &'static str, raw: &str, limits: &Limits) -> Result<Name, ApiError> {
    at_most_chars(field, raw, limits.max_name_chars)?;
    Ok(Name::parse(field, raw, limits)?)
}

/// A remark or contact-group name, bounded as sent (see [`name`]).
fn label(field: &'static str, raw: &str, limits: &Limits) -> Result<Label, ApiError> {
    at_most_chars(field, raw, limits.max_remark_chars)?;
    Ok(Label::parse(field, raw, limits)?)
}

/// An avatar URL: bounded as sent and printable ASCII (other characters are percent-encoded in
/// a URL), so its length in characters, which the document bounds, is its length in bytes,
/// which `Avatar::parse` bounds.
fn avatar(raw: &str, limits: &Limits) -> Result<Avatar, ApiError> {
    at_most_chars("avatar", raw, limits.max_avatar_bytes)?;
    if !raw.trim().is_ascii() {
        return Err(Invalid::new(
            "avatar",
            "must be printable ASCII (percent-encode other characters)",
        )
        .into());
    }
    Ok(Avatar::parse(raw, limits)?)
}

/// A profile change as sent (`PATCH /v1/me`, `PATCH /v1/server/users/{user_id}`), each field
/// validated like on creation.
fn profile_patch(
    nickname: Option<&str>,
    avatar_raw: Option<&str>,
    limits: &Limits,
) -> Result<hermet_store::commands::ProfilePatch, ApiError> {
    Ok(hermet_store::commands::ProfilePatch {
        nickname: nickname.map(|n| name("nickname", n, limits)).transpose()?,
        avatar: avatar_raw.map(|a| avatar(a, limits)).transpose()?,
    })
}

fn at_most_chars(field: &'static str, raw: &str, max: usize) -> Result<(), ApiError> {
    if raw.chars().count() > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")).into());
    }
    Ok(())
}

/// `X-Hermet-Min-Lsn` as the document writes it (`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`), checked
/// before `consistency` parses it (whose parser also takes signs and surrounding spaces).
fn strict_min_lsn(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(MIN_LSN_HEADER) else {
        return Ok(());
    };
    let hex = |s: &[u8]| (1..=8).contains(&s.len()) && s.iter().all(u8::is_ascii_hexdigit);
    let b = v.as_bytes();
    let ok = b
        .iter()
        .position(|&c| c == b'/')
        .is_some_and(|i| hex(&b[..i]) && hex(&b[i + 1..]));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_lsn",
            "X-Hermet-Min-Lsn must be an LSN like 0/16B3748",
        ))
    }
}

/// A positive id from a path segment.
fn path_id(field: &'static str, raw: i64) -> Result<i64, ApiError> {
    Ok(hermet_core::validate::id(field, raw)?)
}

/// `limit` of a page: 1–100, default 50.
fn page_limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(50),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 100",
        )),
    }
}

/// Attempts a command gets when its transaction loses a race.
const COMMAND_ATTEMPTS: u32 = 3;

/// Runs a write-side command, again when its transaction lost a race (a deadlock or a
/// serialization failure: `StoreError::Retry`). Such a transaction rolled back and nothing
/// outside it happened (cache invalidation and the outbox follow a commit), so running it again
/// is safe. After [`COMMAND_ATTEMPTS`] the client gets `503 conflict_retry`, as before.
pub async fn retrying<T, F, Fut>(mut command: F) -> Result<T, hermet_store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, hermet_store::StoreError>>,
{
    let mut attempt = 1;
    loop {
        match command().await {
            Err(hermet_store::StoreError::Retry(e)) if attempt < COMMAND_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "transaction conflict, running the command again");
                // A few milliseconds apart (the clock's nanoseconds as jitter), so the
                // transactions that collided do not meet again in step.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos() % 8));
                tokio::time::sleep(std::time::Duration::from_millis(2 + jitter)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn lsn_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(MIN_LSN_HEADER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn min_lsn_as_documented() {
        assert!(strict_min_lsn(&HeaderMap::new()).is_ok());
        for ok in ["0/0", "0/16B3748", "FFFFFFFF/ffffffff"] {
            assert!(strict_min_lsn(&lsn_header(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "+1/0",
            "0/-1",
            "123456789/0",
            "0/0/0",
            "g/0",
        ] {
            assert!(strict_min_lsn(&lsn_header(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_apply_to_the_string_as_sent() {
        let l = Limits::default();
        assert_eq!(name("name", " Ann ", &l).unwrap().as_str(), "Ann");
        let padded = format!(" {} ", "n".repeat(63));
        assert!(name("name", &padded, &l).is_err(), "65 characters as sent");
        assert!(label("remark_name", &format!("{} ", "r".repeat(64)), &l).is_err());
        assert_eq!(label("remark_name", "  ", &l).unwrap().as_str(), "");
        assert!(avatar("https://x.example/a.png", &l).is_ok());
        assert!(avatar(" HTTPS://x ", &l).is_ok());
        assert!(avatar("https://x.example/é.png", &l).is_err(), "not ASCII");
        let long = format!("https://{}", "a".repeat(504));
        assert!(avatar(&long, &l).is_ok(), "512 characters");
        assert!(
            avatar(&format!(" {long}"), &l).is_err(),
            "513 characters as sent"
        );
    }
}
