//! `GET /v1/ops/status`: the operational status of `hermet admin status --json` for the `/ops`
//! page and monitoring scripts, taken with a server API key ([`ServerKey`]) like the
//! `/v1/server/...` routes (a user token is refused, 401 `invalid_api_key`). The answer is kept
//! for about a second ([`crate::ops::CACHE_FOR`]): each gathering asks PostgreSQL and Kafka.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::auth::ServerKey;
use crate::error::ApiError;
use crate::ops::OpsError;
use crate::AppState;

/// 200 with the status document; 503 when this process has no status source or PostgreSQL
/// cannot be reached.
pub(crate) async fn status(
    ServerKey(key): ServerKey,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let Some(ops) = &state.inner.ops else {
        return Err(ApiError::unavailable(
            "this process does not report an operational status",
        ));
    };
    let doc = ops.status().await.map_err(|e| match e.as_ref() {
        OpsError::Unavailable(detail) => {
            tracing::warn!(error = %detail, api_key = key, "operational status unavailable");
            ApiError::unavailable("the database is unavailable, retry later")
        }
        OpsError::Failed(detail) => {
            tracing::error!(error = %detail, api_key = key, "gathering the operational status failed");
            ApiError::internal()
        }
    })?;
    // Live figures: never from a cache between the page and the server.
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(doc.as_ref()),
    )
        .into_response())
}
