//! `GET /v1/ws`: WebSocket push. The token comes as `Authorization: Bearer` or `?token=` (browsers
//! cannot set headers on a WebSocket); a bad one is refused with 401 before any upgrade. The
//! connection then receives this user's events (`hermet_core::push::PushEvent`) as JSON text
//! frames from the [`Hub`](crate::push::Hub); what the client sends is ignored, pings are answered
//! (by the protocol library), and the server pings an idle connection to find dead peers.
//!
//! Auth does not end at the upgrade: the connection is closed (code 1008, policy) when its token
//! expires ("token expired"), when the user's tokens issued before it are revoked ("token
//! revoked") or when the user is disabled ("user disabled"), through [`Hub::close`]
//! (crate::push::Hub::close), which the auth listener calls in every API process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::extract::Query;
use crate::push::{Delivery, Subscription};
use crate::rate_limit::ClientAddr;
use crate::AppState;

/// How often the server pings; a peer silent for [`SILENCE_LIMIT`] is gone.
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// Longest one frame may take to go out before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients have nothing to say yet; keep what they may send small.
const MAX_CLIENT_MESSAGE: usize = 4096;

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

pub(crate) async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: ClientAddr,
    Query(q): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = match bearer_token(&headers)? {
        Some(t) => t.to_owned(),
        None => q.token.ok_or_else(|| {
            ApiError::unauthorized("expected `Authorization: Bearer <token>` or `?token=<token>`")
        })?,
    };
    let token = crate::auth::authenticate(&state, token.trim())
        .await
        .map_err(|e| crate::auth::refused(&state, addr, e))?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            "websocket_upgrade_required",
            format!("GET /v1/ws is a WebSocket endpoint: {}", r.body_text()),
        )
    })?;
    // Registered before the upgrade completes, so nothing published after the 101 is missed;
    // and before the auth check, so a revocation after the check reaches this connection.
    let sub = state.hub().register_token(token.user, token.issued_ms);
    state.auth().check(token.user, token.issued_ms).await?;
    let expires = expiry_instant(token.expires_at_secs);
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| pump(socket, sub, expires)))
}

/// When a token valid until `exp` (Unix seconds) expires, on the monotonic clock.
fn expiry_instant(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    // Far-future expiries are capped (an `Instant` that far out may not be representable).
    Instant::now() + left.min(Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Forwards the subscription's events until either side ends or the token stops being valid;
/// dropping `sub` unregisters.
async fn pump(mut socket: WebSocket, mut sub: Subscription, expires: Instant) {
    let user = sub.user();
    tracing::debug!(user, "push connection open");
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let expiry = tokio::time::sleep_until(expires);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            () = &mut expiry => {
                close(&mut socket, close_code::POLICY, "token expired").await;
                break;
            }
            delivery = sub.next() => match delivery {
                Delivery::Event(text) => {
                    if !send(&mut socket, Message::Text(text)).await {
                        break;
                    }
                }
                Delivery::Closed(why) => {
                    tracing::info!(user, reason = why.reason(), "push connection closed for auth");
                    close(&mut socket, close_code::POLICY, why.reason()).await;
                    break;
                }
                Delivery::TooSlow => {
                    // The hub dropped us: the client did not keep up.
                    let reason = "too slow; reconnect and re-read lists";
                    close(&mut socket, close_code::AGAIN, reason).await;
                    break;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) => {
                    // Reading on lets the library send its answering close frame.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = socket.recv().await {}
                    })
                    .await;
                    break;
                }
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => {
                    tracing::debug!(user, error = %e, "push connection failed");
                    break;
                }
                None => break,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    close(&mut socket, close_code::AWAY, "no answer to pings").await;
                    break;
                }
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(user, "push connection closed");
}

/// Sends one frame within [`SEND_TIMEOUT`]; false when the connection is unusable.
async fn send(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    send(socket, Message::Close(Some(frame))).await;
}
