//! Read-your-writes headers.
//!
//! Every write response carries `X-Hermet-Lsn`, the WAL position at or after its commit. A read
//! may send `X-Hermet-Min-Lsn`: in `dual_write` mode the read side is updated in the write's own
//! transaction, so any committed write is already visible; in `async` and `cdc` modes the read
//! waits (bounded by `read_wait`) until the view has applied that LSN, and otherwise answers
//! with `X-Hermet-Stale: true` — at once when `max_read_waiters` reads are waiting already. An
//! LSN past the server's WAL position is refused at once (400 `lsn_in_future`). Waiting holds no
//! database connection (see [`Waits`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hermet_core::projection::ReadModel;
use hermet_core::Lsn;
use hermet_store::sync::{self, Coverage};
use hermet_store::{Store, StoreError, SyncMode};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

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

/// What read-your-writes waits on per view: the projector and, in `cdc`, the topics and
/// partitions it consumes (see `hermet_store::sync::Coverage`).
#[derive(Debug, Clone)]
pub struct ViewCoverage {
    pub conversations: Coverage,
    pub contacts: Coverage,
}

impl ViewCoverage {
    pub fn of(&self, view: ReadModel) -> &Coverage {
        match view {
            ReadModel::Conversations => &self.conversations,
            ReadModel::Contacts => &self.contacts,
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
/// answer will be stale (the wait ran out, or too many reads were waiting already); an LSN past
/// the server's WAL position is a 400 `lsn_in_future`, answered without waiting.
///
/// The wait holds no database connection: one poller per process ([`Waits`]) checks coverage
/// with a connection taken and given back per check, and wakes the reads it answers.
pub async fn wait_for(
    state: &crate::AppState,
    headers: &HeaderMap,
    view: ReadModel,
) -> Result<bool, ApiError> {
    let Some(lsn) = min_lsn(headers)? else {
        return Ok(false);
    };
    if state.store().config().sync_mode == SyncMode::DualWrite {
        return Ok(false);
    }
    // The client had the LSN before the request got here: a check that starts from now on sees
    // its write visible, and the WAL position at or past it.
    let arrived = Instant::now();
    state.inner.waits.wait(state, view, lsn, arrived).await
}

/// Default bound of reads waiting at once per process (`ApiConfig::max_read_waiters`).
pub const DEFAULT_MAX_READ_WAITERS: usize = 1024;

/// Shortest and longest pause between two checks while reads wait and nothing moves, and the
/// pause after a failed check.
const MIN_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(20);
const ERROR_PAUSE: Duration = Duration::from_millis(200);
/// While no read waits the poller sleeps; this often it looks whether its API is gone.
const PARK: Duration = Duration::from_secs(1);

/// One check of the poller: the WAL insert position, then how far each view that had readers
/// waiting is applied (`hermet_store::sync::covered_upto`), both read after `started`.
#[derive(Debug, Clone, Copy)]
struct Check {
    started: Instant,
    wal: Lsn,
    /// Per [`ReadModel::index`]: `None` when the view was not checked; `Some(None)` when not even the
    /// oldest write is known to be applied.
    covered: [Option<Option<Lsn>>; 2],
}

/// The reads of one process waiting for `X-Hermet-Min-Lsn`, and their poller.
///
/// A waiting read used to hold a connection of the commands' pool for up to `read_wait`, which
/// the projectors of `serve --role all` share: many such reads slowed every write. Now:
///
/// - one poller task per process (started with the first wait) runs the checks, one connection
///   of the *read* pool per check, given back before it pauses; it checks at once when a read
///   starts waiting, then every 2–20 ms while reads wait, and sleeps while none does;
/// - a read waits for a check that *started after it arrived* (coverage can move back in the
///   eventually consistent modes — an empty outbox covers everything until the next write — so
///   an older answer says nothing about a newer write), then answers fresh, stale at its
///   deadline, or `lsn_in_future` when its LSN is past the WAL position of that check (no write
///   of this server can have it: without the check it would wait the whole `read_wait`);
/// - at most `max_read_waiters` reads wait at once; the ones beyond answer stale at once.
pub(crate) struct Waits {
    shared: Arc<Shared>,
    poller: Once,
}

struct Shared {
    /// Permits of [`ApiConfig::max_read_waiters`](crate::ApiConfig).
    slots: Semaphore,
    /// Reads waiting per [`ReadModel::index`]: which views the poller checks.
    waiting: [AtomicUsize; 2],
    /// A read started waiting: check now.
    wake: Notify,
    checks: watch::Sender<Option<Check>>,
}

/// Counts a read as waiting for its view while it lives (also when the request is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        crate::telemetry::read_wait_started();
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::read_wait_ended();
    }
}

impl Waits {
    pub(crate) fn new(max_waiters: usize) -> Waits {
        Waits {
            shared: Arc::new(Shared {
                slots: Semaphore::new(max_waiters.min(Semaphore::MAX_PERMITS)),
                waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
                wake: Notify::new(),
                checks: watch::Sender::new(None),
            }),
            poller: Once::new(),
        }
    }

    async fn wait(
        &self,
        state: &crate::AppState,
        view: ReadModel,
        lsn: Lsn,
        arrived: Instant,
    ) -> Result<bool, ApiError> {
        let Ok(_slot) = self.shared.slots.try_acquire() else {
            tracing::debug!(%lsn, ?view, "too many reads waiting: answering stale at once");
            crate::telemetry::stale_read(true);
            return Ok(true);
        };
        self.poller.call_once(|| {
            tokio::spawn(poll(
                Arc::downgrade(&self.shared),
                state.store().clone(),
                state.inner.cfg.coverage.clone(),
            ));
        });
        let i = view.index();
        let _waiting = Waiting::enter(&self.shared.waiting[i]);
        let mut checks = self.shared.checks.subscribe();
        self.shared.wake.notify_one();
        let deadline = arrived + state.inner.cfg.read_wait;
        loop {
            let check = *checks.borrow_and_update();
            if let Some(c) = check.filter(|c| c.started >= arrived) {
                if lsn > c.wal {
                    return Err(ApiError::bad_request(
                        "lsn_in_future",
                        format!(
                            "X-Hermet-Min-Lsn {lsn} is past the server's WAL position {}: \
                             it is not the X-Hermet-Lsn of a write to this server",
                            c.wal
                        ),
                    ));
                }
                if c.covered[i].flatten().is_some_and(|upto| upto >= lsn) {
                    return Ok(false);
                }
            }
            match tokio::time::timeout_at(deadline, checks.changed()).await {
                Ok(Ok(())) => {}
                // The deadline, or the poller gone with its API.
                Ok(Err(_)) | Err(_) => {
                    crate::telemetry::stale_read(false);
                    return Ok(true);
                }
            }
        }
    }
}

/// The poller of [`Waits`]: runs until the `Waits` it serves is dropped.
async fn poll(shared: Weak<Shared>, store: Store, coverage: ViewCoverage) {
    let mode = store.config().sync_mode;
    let mut pause = MIN_PAUSE;
    let mut last: [Option<Option<Lsn>>; 2] = [None, None];
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let wanted = [0, 1].map(|i| s.waiting[i].load(Ordering::Acquire) > 0);
        if !wanted.contains(&true) {
            pause = MIN_PAUSE;
            let _ = tokio::time::timeout(PARK, s.wake.notified()).await;
            continue;
        }
        let started = Instant::now();
        match check(&store, mode, &coverage, wanted).await {
            Ok((wal, covered)) => {
                pause = if covered == last {
                    (pause * 2).min(MAX_PAUSE)
                } else {
                    MIN_PAUSE
                };
                last = covered;
                s.checks.send_replace(Some(Check {
                    started,
                    wal,
                    covered,
                }));
            }
            Err(e) => {
                // Waiting reads answer stale at their deadline; the read itself reports a
                // database that is away.
                tracing::warn!(error = %e, mode = mode.as_str(), retry_in_ms = ERROR_PAUSE.as_millis() as u64, "read-your-writes check failed");
                pause = ERROR_PAUSE;
            }
        }
        // Until the next check: the pause, or at once when a read starts waiting (it needs a
        // check that started after it arrived).
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = s.wake.notified() => {}
        }
    }
}

/// The WAL insert position first (any `X-Hermet-Lsn` handed out before `started` is at or
/// before it), then the coverage of the `wanted` views, on one connection of the read pool
/// that goes back to the pool on return.
async fn check(
    store: &Store,
    mode: SyncMode,
    coverage: &ViewCoverage,
    wanted: [bool; 2],
) -> Result<(Lsn, [Option<Option<Lsn>>; 2]), StoreError> {
    let conn = store.read_pool().get().await?;
    let stmt = conn
        .prepare_cached("SELECT pg_current_wal_insert_lsn()::text")
        .await?;
    let wal: String = conn.query_one(&stmt, &[]).await?.get(0);
    let wal: Lsn = wal
        .parse()
        .map_err(|e| StoreError::Decode(format!("WAL position {wal:?}: {e}")))?;
    let mut covered = [None, None];
    for view in ReadModel::ALL {
        if wanted[view.index()] {
            let cov = std::slice::from_ref(coverage.of(view));
            covered[view.index()] = Some(sync::covered_upto(&conn, mode, cov).await?);
        }
    }
    Ok((wal, covered))
}

/// `X-Hermet-Stale: true` when the wait ran out.
pub fn stale_header(stale: bool) -> Option<[(HeaderName, HeaderValue); 1]> {
    stale.then(|| [(STALE_HEADER, HeaderValue::from_static("true"))])
}

pub fn lsn_header(lsn: Lsn) -> [(HeaderName, HeaderValue); 1] {
    let v = HeaderValue::from_str(&lsn.to_string()).unwrap_or(HeaderValue::from_static("0/0"));
    [(LSN_HEADER, v)]
}
