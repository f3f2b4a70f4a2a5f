//! The operations port: how `GET /v1/ops/status` (and through it the `/ops` page) asks the
//! process for the document `hermet admin status --json` prints, without this crate knowing
//! the binary's configuration.
//!
//! Contract of [`OpsStatus`]:
//! - **Who may call**: only requests with a server API key ([`crate::auth::ServerKey`]); the
//!   document names slots, topics, groups and backlog sizes, which users have no business
//!   seeing.
//! - **Cost**: each call opens a PostgreSQL connection and asks Kafka for the consumer groups'
//!   offsets and the dead-letter topic's size (a broker that does not answer costs its timeout,
//!   about 10 s). Callers poll at most every second or so; the route keeps the last answer for
//!   [`CACHE_FOR`], so any number of open pages costs one gathering per second.
//! - **Failure**: it never fails the process. A database that cannot be reached is an
//!   [`OpsError::Unavailable`] (503); a Kafka that does not answer is not an error at all, it is
//!   reported inside the document (`kafka_error`, groups empty, `dlq_records` null), as
//!   `hermet admin status` reports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// What [`OpsStatus::status`] returns.
pub type StatusFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, OpsError>> + Send>>;

/// The process's operational status, as the JSON document of `hermet admin status --json`.
pub trait OpsStatus: Send + Sync + 'static {
    fn status(&self) -> StatusFuture;
}

/// Why the status could not be gathered. The message is logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// PostgreSQL cannot be reached: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a failed query, a bad configuration).
    #[error("{0}")]
    Failed(String),
}

/// How long an answer is reused: several open pages polling every 2 s cost one gathering.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Longest one gathering may take before the caller gets a 503 (a Kafka that does not answer
/// already ends within about 10 s, reported inside the document).
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(30);

/// The configured port with its last answer.
pub(crate) struct Cached {
    source: Arc<dyn OpsStatus>,
    /// Held across the gathering, so concurrent callers wait for one gathering instead of each
    /// starting their own.
    last: Mutex<Option<(Instant, Arc<serde_json::Value>)>>,
}

impl Cached {
    pub(crate) fn new(source: Arc<dyn OpsStatus>) -> Self {
        Cached {
            source,
            last: Mutex::new(None),
        }
    }

    /// The last answer if younger than [`CACHE_FOR`], else a new one.
    pub(crate) async fn status(&self) -> Result<Arc<serde_json::Value>, OpsError> {
        let mut last = self.last.lock().await;
        if let Some((at, doc)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Ok(doc.clone());
            }
        }
        let doc = match tokio::time::timeout(GATHER_TIMEOUT, self.source.status()).await {
            Ok(r) => Arc::new(r?),
            Err(_) => {
                return Err(OpsError::Unavailable(format!(
                    "gathering the status took over {}s",
                    GATHER_TIMEOUT.as_secs()
                )))
            }
        };
        *last = Some((Instant::now(), doc.clone()));
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    impl OpsStatus for Counting {
        fn status(&self) -> StatusFuture {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(serde_json::json!({ "call": n })) })
        }
    }

    #[tokio::test]
    async fn answers_are_reused_for_a_second() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cached = Cached::new(Arc::new(Counting(calls.clone())));
        assert_eq!(cached.status().await.unwrap()["call"], 1);
        assert_eq!(cached.status().await.unwrap()["call"], 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Aged past the cache's life: gathered again.
        if let Some((at, _)) = cached.last.lock().await.as_mut() {
            *at = at.checked_sub(CACHE_FOR).expect("an instant a second ago");
        }
        assert_eq!(cached.status().await.unwrap()["call"], 2);
    }
}
