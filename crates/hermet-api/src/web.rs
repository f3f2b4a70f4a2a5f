//! The web client (`/`) and the operations page (`/ops`): static files from `web/` in this crate.
//!
//! Contract:
//! - The files are embedded in the binary at build time, so a release needs nothing beside the
//!   binary and nothing is fetched from elsewhere at run time (no CDN). With `http.web_dir` set,
//!   they are read from that folder on every request instead: edit and reload, no rebuild (for
//!   working on the client; a missing file there is a 404, not a fallback to the embedded copy).
//! - Only the files of [`FILES`] are served; anything else falls through to the API's 404.
//! - Every answer carries a Content-Security-Policy that allows scripts, styles and connections
//!   to this origin only (images from anywhere: avatars are URLs), so an injected string can never
//!   run as script. An `ETag` (a hash of the bytes) with `Cache-Control: no-cache` lets browsers
//!   revalidate cheaply and never run a stale client against a newer API. Gzip is negotiated by
//!   the layer in [`router`].
//! - The pages are public; what they show is guarded by the API they call (user tokens for the
//!   client, a server API key for the operations page).

use std::path::PathBuf;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;

use crate::error::ApiError;

/// One served file: its URL path, its name in `web/`, its type and its embedded bytes.
struct File {
    path: &'static str,
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! web_file {
    ($path:literal, $name:literal, $type:expr) => {
        File {
            path: $path,
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../web/", $name)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything served, by URL path.
const FILES: &[File] = &[
    web_file!("/", "index.html", HTML),
    web_file!("/base.js", "base.js", JS),
    web_file!("/app.js", "app.js", JS),
    web_file!("/app.css", "app.css", CSS),
    web_file!("/ops", "ops.html", HTML),
    web_file!("/ops.js", "ops.js", JS),
    web_file!("/ops.css", "ops.css", CSS),
];

/// Avatars are URLs of the users' choosing: `https:` only (and `data:`), so a page never
/// fetches plain-text URLs; `'self'` covers this origin's WebSocket too.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src https: data:; \
                   style-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the files come from.
#[derive(Clone, Debug, Default)]
pub enum Source {
    /// The copies built into the binary.
    #[default]
    Embedded,
    /// A folder read on every request (`http.web_dir`).
    Dir(PathBuf),
}

/// The routes of [`FILES`], with gzip for clients that accept it.
pub fn router<S: Clone + Send + Sync + 'static>(source: Source) -> Router<S> {
    let mut r = Router::new();
    for (i, f) in FILES.iter().enumerate() {
        r = r.route(
            f.path,
            get(move |State(src): State<Source>, headers: HeaderMap| serve(src, i, headers)),
        );
    }
    r.layer(CompressionLayer::new().gzip(true))
        .with_state(source)
}

async fn serve(source: Source, index: usize, headers: HeaderMap) -> Response {
    let file = &FILES[index];
    let bytes: std::borrow::Cow<'static, [u8]> = match &source {
        Source::Embedded => file.bytes.into(),
        Source::Dir(dir) => match read(dir.join(file.name)).await {
            Ok(b) => b.into(),
            Err(e) => {
                tracing::warn!(file = file.name, error = %e, "web file not readable");
                return ApiError::not_found("no such file").into_response();
            }
        },
    };
    // Weak: the gzip and the plain answer share it (and a proxy that compresses keeps it).
    let etag = format!("W/\"{:016x}\"", fnv1a(&bytes));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == &etag[2..])
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match bytes {
            std::borrow::Cow::Borrowed(b) => axum::body::Body::from(b),
            std::borrow::Cow::Owned(v) => axum::body::Body::from(v),
        };
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A file of the folder, read off the runtime's threads.
async fn read(path: PathBuf) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// FNV-1a: a stable content hash for the `ETag` (not a security boundary: a changed file only
/// has to look different).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> Router {
        router(Source::Embedded)
    }

    #[tokio::test]
    async fn pages_carry_the_policy_and_revalidate_by_etag() {
        for path in ["/", "/base.js", "/app.js", "/ops"] {
            let resp = app()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
            let etag = resp.headers()[header::ETAG].clone();
            let again = app()
                .oneshot(
                    Request::get(path)
                        .header(header::IF_NONE_MATCH, etag)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
    }

    #[tokio::test]
    async fn gzip_is_negotiated() {
        let resp = app()
            .oneshot(
                Request::get("/app.js")
                    .header(header::ACCEPT_ENCODING, "gzip")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        // Tiny bodies are not worth compressing; the real client is not tiny.
        if FILES[1].bytes.len() > 1024 {
            assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        }
    }

    #[tokio::test]
    async fn a_folder_serves_its_own_copy_and_a_missing_file_is_404() {
        let dir = std::env::temp_dir().join(format!("hermet-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.js"), "// from the folder\n").unwrap();
        let r = router::<()>(Source::Dir(dir.clone()));
        let resp = r
            .clone()
            .oneshot(Request::get("/app.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&body[..], b"// from the folder\n");
        let missing = r
            .oneshot(Request::get("/ops.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        std::fs::remove_dir_all(&dir).ok();
    }
}
