//! Read-your-writes headers.
//!
//! Every write response carries `X-Hermet-Lsn`, the WAL position at or after its commit. A read
//! may send `X-Hermet-Min-Lsn`; in `dual_write` mode the read side is updated in the write's own
//! transaction, so any committed write is already visible and the header only has to be valid.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hermet_core::Lsn;

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

pub fn lsn_header(lsn: Lsn) -> [(HeaderName, HeaderValue); 1] {
    let v = HeaderValue::from_str(&lsn.to_string()).unwrap_or(HeaderValue::from_static("0/0"));
    [(LSN_HEADER, v)]
}
