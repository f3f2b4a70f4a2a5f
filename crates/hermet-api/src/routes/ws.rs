//! `GET /v1/ws`: WebSocket push. The token comes as `Authorization: Bearer` or `?token=` (browsers
//! cannot set headers on a WebSocket); a bad one is refused with 401 before any upgrade. The
//! connection then receives this user's events (`hermet_core::push::PushEvent`) as JSON text
//! frames from the [`Hub`](crate::push::Hub); what the client sends is ignored, pings are answered
//! (by the protocol library), and the server pings an idle connection to find dead peers.

use std::time::Duration;

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
use crate::push::Subscription;
use crate::rate_limit::{self, ClientAddr};
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
    let user = state
        .keys()
        .verify(token.trim())
        .map_err(|e| rate_limit::auth_failed(&state, addr, e))?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            "websocket_upgrade_required",
            format!("GET /v1/ws is a WebSocket endpoint: {}", r.body_text()),
        )
    })?;
    // Registered before the upgrade completes, so nothing published after the 101 is missed.
    let sub = state.hub().register(user);
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| pump(socket, sub)))
}

/// Forwards the subscription's events until either side ends; dropping `sub` unregisters.
async fn pump(mut socket: WebSocket, mut sub: Subscription) {
    let user = sub.user();
    tracing::debug!(user, "push connection open");
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            event = sub.recv() => match event {
                Some(text) => {
                    if !send(&mut socket, Message::Text(text)).await {
                        break;
                    }
                }
                None => {
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
