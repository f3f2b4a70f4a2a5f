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
//!   [`CACHE_FOR`] (a failure too), so any number of open pages costs one gathering per second.
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

/// A gathering's outcome, shared by every caller it answers.
pub(crate) type Answer = Result<Arc<serde_json::Value>, Arc<OpsError>>;

/// The configured port with its last answer.
pub(crate) struct Cached {
    source: Arc<dyn OpsStatus>,
    /// Held across the gathering, so concurrent callers wait for one gathering instead of each
    /// starting their own.
    /// A failure is kept too: callers queued behind a gathering that failed (a database that
    /// does not answer costs up to [`GATHER_TIMEOUT`]) get its answer instead of each waiting
    /// out a gathering of their own.
    last: Mutex<Option<(Instant, Answer)>>,
}

impl Cached {
    pub(crate) fn new(source: Arc<dyn OpsStatus>) -> Self {
        Cached {
            source,
            last: Mutex::new(None),
        }
    }

    /// The last answer if younger than [`CACHE_FOR`], else a new one.
    pub(crate) async fn status(&self) -> Answer {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(GATHER_TIMEOUT, self.source.status()).await {
            Ok(r) => r.map(Arc::new).map_err(Arc::new),
            Err(_) => Err(Arc::new(OpsError::Unavailable(format!(
                "gathering the status took over {}s",
                GATHER_TIMEOUT.as_secs()
            )))),
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
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

    struct Failing(Arc<AtomicUsize>);

    impl OpsStatus for Failing {
        fn status(&self) -> StatusFuture {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(OpsError::Unavailable("no database".into())) })
        }
    }

    #[tokio::test]
    async fn a_failure_is_reused_for_a_second_too() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cached = Cached::new(Arc::new(Failing(calls.clone())));
        for _ in 0..3 {
            let e = cached.status().await.expect_err("the source fails");
            assert!(matches!(*e, OpsError::Unavailable(_)), "{e}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one gathering for the three callers"
        );
    }
}
