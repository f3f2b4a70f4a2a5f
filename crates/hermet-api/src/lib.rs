//! hermet-api: the HTTP/JSON API of `docs/api.md`, on axum.
//!
//! - [`auth`]: HS256 bearer tokens whose `sub` is the user id, refused for disabled users and
//!   revoked tokens (a cache fed by `LISTEN hermet_auth`), and the server API keys;
//! - [`jwks`]: tokens signed by an identity provider, verified against its key set (JWKS);
//! - [`error`]: every failure becomes `{"error": {"code", "message"}}` with the documented status;
//!   internals are logged, never sent;
//! - [`extract`]: JSON/path/query extractors whose rejections use that same error shape;
//! - [`routes`]: one module per resource; handlers parse input into `hermet_core::validate` types
//!   and call the store — no SQL here;
//! - [`push`]: the hub of `GET /v1/ws` connections that the push notifier publishes to;
//! - [`rate_limit`]: per-user and per-address limits answered with 429;
//! - [`ops`]: the port through which `GET /v1/ops/status` asks the process for its operational
//!   status (what `hermet admin status --json` prints);
//! - [`telemetry`]: the metrics this crate records;
//! - [`web`]: the web client at `/` and the operations page at `/ops` (static files).
//!
//! Reads in `dual_write` mode are always fresh; `X-Hermet-Min-Lsn` is validated and, in the
//! eventually consistent modes, waited on (see [`consistency`]).

pub mod auth;
pub mod consistency;
pub mod error;
pub mod extract;
pub mod jwks;
pub mod ops;
pub mod push;
pub mod rate_limit;
mod routes;
pub mod telemetry;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hermet_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

pub use auth::TokenKeys;
pub use consistency::ViewCoverage;
pub use error::ApiError;
pub use push::Hub;
pub use rate_limit::{Limit, RateLimits};
pub use routes::conversations::first_page as conversation_first_page;
pub use routes::retrying as retry_conflicts;

/// Settings of the API layer.
#[derive(Clone)]
pub struct ApiConfig {
    pub jwt_secret: String,
    /// Lifetime of tokens issued by `POST /v1/users`.
    pub token_ttl_secs: u64,
    /// Longest `ttl_secs` of `POST /v1/server/users/{id}/tokens`.
    pub max_token_ttl_secs: u64,
    /// Whether anyone may create a user with `POST /v1/users` (else `403 signup_disabled`).
    pub open_signup: bool,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a read with `X-Hermet-Min-Lsn` waits for the view before answering stale.
    pub read_wait: std::time::Duration,
    /// Most reads with `X-Hermet-Min-Lsn` waiting at once in this process; the ones beyond
    /// answer stale at once (0: reads never wait).
    pub max_read_waiters: usize,
    /// What a read of each view waits on: the projector and (`cdc`) every partition it consumes,
    /// all of which must have caught up for the read to be fresh.
    pub coverage: consistency::ViewCoverage,
    /// Per-user and per-address limits; all off by default.
    pub rate_limits: RateLimits,
    /// `[auth.jwks]`: the verifier of user tokens signed by the product's identity provider,
    /// if one is configured (built, and its key set read, before the server starts).
    pub identity_provider: Option<Arc<jwks::JwksVerifier>>,
    /// Where the web client and the operations page come from (`http.web_dir`).
    pub web: web::Source,
    /// The source of `GET /v1/ops/status` (the binary gives its status gathering); without
    /// one that route answers 503.
    pub ops: Option<Arc<dyn ops::OpsStatus>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_secret: String::new(),
            token_ttl_secs: 30 * 24 * 3600,
            max_token_ttl_secs: 30 * 24 * 3600,
            open_signup: false,
            max_body_bytes: 64 * 1024,
            read_wait: std::time::Duration::from_secs(2),
            max_read_waiters: consistency::DEFAULT_MAX_READ_WAITERS,
            coverage: consistency::ViewCoverage::default(),
            rate_limits: RateLimits::default(),
            identity_provider: None,
            web: web::Source::Embedded,
            ops: None,
        }
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    keys: TokenKeys,
    pub(crate) cfg: ApiConfig,
    metrics: Option<PrometheusHandle>,
    hub: Hub,
    auth: Arc<auth::states::AuthStates>,
    /// Identity-provider subjects already mapped to users.
    external: auth::external::ExternalUsers,
    /// Ends the auth listener when the state is dropped.
    _listener: Option<auth::states::ListenerStop>,
    /// Reads waiting for `X-Hermet-Min-Lsn`, and their poller.
    pub(crate) waits: consistency::Waits,
    pub(crate) limits: rate_limit::Limiters,
    /// `GET /v1/ops/status`'s source with its last answer.
    pub(crate) ops: Option<ops::Cached>,
}

impl AppState {
    /// State with a push hub of its own (nothing publishes to it unless given to a notifier:
    /// see [`AppState::with_hub`]).
    pub fn new(store: Store, cfg: ApiConfig, metrics: Option<PrometheusHandle>) -> Self {
        Self::with_hub(store, cfg, metrics, Hub::default())
    }

    /// State whose `GET /v1/ws` connections register in `hub`, which the push notifier
    /// publishes to.
    pub fn with_hub(
        store: Store,
        cfg: ApiConfig,
        metrics: Option<PrometheusHandle>,
        hub: Hub,
    ) -> Self {
        let keys = TokenKeys::new(cfg.jwt_secret.as_bytes(), cfg.token_ttl_secs);
        let waits = consistency::Waits::new(cfg.max_read_waiters);
        let limits = rate_limit::Limiters::new(&cfg.rate_limits);
        let auth = Arc::new(auth::states::AuthStates::new(store.clone(), hub.clone()));
        let external = auth::external::ExternalUsers::default();
        let listener = auth::states::spawn_listener(&auth);
        let ops = cfg.ops.clone().map(ops::Cached::new);
        AppState {
            inner: Arc::new(Inner {
                store,
                keys,
                cfg,
                metrics,
                hub,
                auth,
                _listener: listener,
                external,
                waits,
                limits,
                ops,
            }),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.inner.keys
    }

    /// The identity provider's verifier, when `[auth.jwks]` is configured.
    pub fn identity_provider(&self) -> Option<&jwks::JwksVerifier> {
        self.inner.cfg.identity_provider.as_deref()
    }

    /// The users' auth states of this process.
    pub fn auth(&self) -> &auth::states::AuthStates {
        &self.inner.auth
    }
}

const OPENAPI: &str = include_str!("openapi.json");

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let max_body = state.inner.cfg.max_body_bytes;
    Router::new()
        .merge(routes::router())
        .merge(web::router(state.inner.cfg.web.clone()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track_requests))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::unavailable("database is not reachable")
    })?;
    Ok(axum::Json(serde_json::json!({"status": "ready"})))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.inner.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::unavailable("metrics are not enabled in this process").into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Request duration per route template and status.
async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    telemetry::request(
        route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}
