//! Route handlers, one module per resource of `API.md`.

mod channels;
pub(crate) mod conversations;
mod friends;
mod groups;
mod users;
mod ws;

use axum::routing::{delete, get, patch, post};
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(users::create))
        .route("/v1/me", get(users::me).patch(users::update_me))
        .route("/v1/friends", post(friends::add))
        .route(
            "/v1/friends/{friend_id}",
            delete(friends::remove).patch(friends::update),
        )
        .route("/v1/contacts", get(friends::contacts))
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{channel_id}", patch(groups::update))
        .route("/v1/groups/{channel_id}/members", post(groups::add_members))
        .route(
            "/v1/groups/{channel_id}/members/{user_id}",
            delete(groups::remove_member),
        )
        .route(
            "/v1/channels/{channel_id}/messages",
            post(channels::send).get(channels::history),
        )
        .route("/v1/channels/{channel_id}/read", post(channels::read))
        .route("/v1/conversations", get(conversations::list))
        .route(
            "/v1/conversations/{channel_id}",
            patch(conversations::update),
        )
        .route("/v1/ws", get(ws::connect))
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
