//! Read-your-writes headers.
//!
//! Every write response carries `X-Hermet-Lsn`, the WAL position at or after its commit. A read
//! may send `X-Hermet-Min-Lsn`: in `dual_write` mode the read side is updated in the write's own
//! transaction, so any committed write is already visible; in `async` and `cdc` modes the read
//! waits (bounded by `read_wait`) until the view has applied that LSN, and otherwise answers
//! with `X-Hermet-Stale: true`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hermet_core::Lsn;
use hermet_store::sync::Coverage;

use crate::error::ApiError;

pub const LSN_HEADER: HeaderName = HeaderName::from_static("x-hermet-lsn");
pub const MIN_LSN_HEADER: HeaderName = HeaderName::from_static("x-hermet-min-lsn");

/// The `X-Hermet-Min-Lsn` of a request, if any; a malformed one is a 400.
pub fn min_lsn(headers: &HeaderMap) -> Result<Option<Lsn>, ApiError> {
    match headers.get(MIN_LSN_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<Lsn>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_lsn",
                    "X-Hermet-Min-Lsn must be an LSN like 0/16B3748",
                )
            }),
    }
}

pub const STALE_HEADER: HeaderName = HeaderName::from_static("x-hermet-stale");

/// Which projector a read waits on.
#[derive(Debug, Clone, Copy)]
pub enum View {
    Conversations,
    Contacts,
}

/// What read-your-writes waits on per view: the projector and, in `cdc`, the topics and
/// partitions it consumes (see `hermet_store::sync::Coverage`).
#[derive(Debug, Clone)]
pub struct ViewCoverage {
    pub conversations: Coverage,
    pub contacts: Coverage,
}

impl ViewCoverage {
    pub fn of(&self, view: View) -> &Coverage {
        match view {
            View::Conversations => &self.conversations,
            View::Contacts => &self.contacts,
        }
    }
}

impl Default for ViewCoverage {
    /// No partitions known: in `cdc` a read with `X-Hermet-Min-Lsn` answers stale after its wait
    /// rather than claim a write is applied.
    fn default() -> Self {
        let unknown = |name: &str| Coverage {
            projector: name.to_owned(),
            topics: Vec::new(),
            partitions: 1,
        };
        ViewCoverage {
            conversations: unknown("conversation-view-updater"),
            contacts: unknown("contact-view-updater"),
        }
    }
}

/// Waits until `view` covers the request's minimum LSN, if it has one. Returns whether the
/// answer will be stale (the wait ran out).
pub async fn wait_for(
    state: &crate::AppState,
    headers: &HeaderMap,
    view: View,
) -> Result<bool, ApiError> {
    let Some(lsn) = min_lsn(headers)? else {
        return Ok(false);
    };
    let store = state.store();
    let mode = store.config().sync_mode;
    if mode == hermet_store::SyncMode::DualWrite {
        return Ok(false);
    }
    let cfg = &state.inner.cfg;
    let deadline = tokio::time::Instant::now() + cfg.read_wait;
    let conn = store
        .pool()
        .get()
        .await
        .map_err(hermet_store::StoreError::from)?;
    let mut pause = std::time::Duration::from_millis(2);
    let coverage = cfg.coverage.of(view);
    loop {
        let covered = hermet_store::sync::covers(&conn, mode, coverage, lsn).await?;
        if covered {
            return Ok(false);
        }
        if tokio::time::Instant::now() + pause > deadline {
            metrics::counter!("hermet_stale_reads_total").increment(1);
            return Ok(true);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// `X-Hermet-Stale: true` when the wait ran out.
pub fn stale_header(stale: bool) -> Option<[(HeaderName, HeaderValue); 1]> {
    stale.then(|| [(STALE_HEADER, HeaderValue::from_static("true"))])
}

pub fn lsn_header(lsn: Lsn) -> [(HeaderName, HeaderValue); 1] {
    let v = HeaderValue::from_str(&lsn.to_string()).unwrap_or(HeaderValue::from_static("0/0"));
    [(LSN_HEADER, v)]
}
