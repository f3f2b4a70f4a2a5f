//! hermet-redis: the conversation-list cache on Redis ([`hermet_core::cache::ListCache`]).
//!
//! ## Layout
//! Keys start with a configurable prefix (`hermet` by default), so deployments and tests can
//! share one Redis.
//! - `{prefix}:cl:epoch` — the global version; [`ListCache::invalidate_all`] removes it. No TTL.
//! - `{prefix}:cl:u:{owner}` — a hash per owner: field `v` is the owner's version, and per page
//!   size `limit` the fields `s:{limit}` (stamp the page was stored under) and `d:{limit}` (the
//!   page). The whole hash expires `ttl` after its last write; an invalidation removes it.
//!
//! A stamp is `"{epoch}:{v}"`; a page is current when its `s:` field equals the current stamp.
//! Look-ups and stores are Lua scripts, so each reads and writes atomically.
//!
//! ## Versions never repeat
//! A stamp must never become current again once its version has moved on, or a reader that
//! stamped before a write could store a page loaded before it. Versions here are *created* and
//! *removed*, never counted:
//! - only a look-up creates a version, and only when it is missing: at a fresh random integer in
//!   `[2^32, 2^62)`, in the same script that reads it (so a stamp is only ever taken against a
//!   version that exists);
//! - an invalidation **removes** the version (`DEL` of the owner's hash, or of the epoch); so do
//!   expiry, eviction, and a restart of a cache-only Redis;
//! - a store is accepted only if both versions exist and equal the stamp.
//!
//! So a store succeeds only if the very values the look-up saw are still there: anything that
//! removed one of them in between — an invalidation above all — makes the next look-up draw a new
//! one, equal to the old with probability 2^-62. This holds whatever expired or was lost in
//! between, which is why a counter was not used: a counter that never expires still restarts at
//! 0 when a cache-only Redis restarts or evicts it, and a counter kept in an expiring hash starts
//! again at 1 (the bug this replaced: a stamp of version 1 taken just before the hash expired
//! matched the version 1 that the next invalidation created). Versions stay integers so that
//! processes of the previous release (`INCR`/`HINCRBY`, during a rolling deploy) keep working on
//! the same keys.
//!
//! ## When Redis is unreachable
//! Every call has a short timeout; look-ups and stores never fail (see the port contract): after
//! an error the cache stays out of the way for `retry_after` (look-ups answer `Unavailable`, so
//! reads go to PostgreSQL and `hermet_cache_fallbacks_total` counts them; stores are dropped).
//!
//! An invalidation that fails is **made good before it returns**: the failing call hands the
//! failure to a repair task, which removes the epoch (retiring every page and every stamp in all
//! processes) as soon as Redis takes it, retrying with backoff up to `retry_after` apart, and the
//! call returns once a removal *sent after the failure* has succeeded. Callers await
//! `invalidate` before acknowledging (see `hermet_core::cache`), so nothing is acknowledged
//! while some process could still be served the page the lost invalidation should have retired —
//! whether or not the failing process ever looks anything up (a projector) and however soon it
//! exits (the CLI). The repair task is the process's own, so a caller that stops waiting (a
//! request whose client hung up) does not cancel it. Until the removal lands, this process
//! serves and stores no page. The price: while Redis is unreachable, whoever invalidates waits
//! (commands in `dual_write`, projector batches); reads do not.
//!
//! Residual, documented rather than hidden: a process that dies between its commit and the end
//! of its invalidation leaves the pages it should have retired until they expire (`ttl`); and
//! processes of the previous release can still recreate small versions (`HINCRBY` on a missing
//! hash) until the rolling deploy is over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermet_core::cache::{BoxFut, ListCache, Lookup, Stamp};
use hermet_core::rows::UserId;
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::watch;

/// KEYS: epoch, owner hash. ARGV: fresh epoch, fresh version (each used only if missing), stamp
/// field, page field, ttl in ms. Returns `{1, page}` on a hit, `{0, stamp}` on a miss.
const LOOKUP_SCRIPT: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
local v = redis.call('HGET', KEYS[2], 'v')
if not v then
  v = ARGV[2]
  redis.call('HSET', KEYS[2], 'v', v)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local stamp = e .. ':' .. v
if redis.call('HGET', KEYS[2], ARGV[3]) == stamp then
  local page = redis.call('HGET', KEYS[2], ARGV[4])
  if page then return {1, page} end
end
return {0, stamp}
";

/// KEYS: epoch, owner hash. ARGV: stamp, stamp field, page field, page, ttl in ms. A missing
/// version was removed after the stamp was taken (look-ups create them), so it refuses.
const STORE_SCRIPT: &str = r"
local e = redis.call('GET', KEYS[1])
local v = redis.call('HGET', KEYS[2], 'v')
if not e or not v or e .. ':' .. v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// Fresh versions are drawn from here: far above the small values the previous release counted
/// from, and far below `i64::MAX`, so that its `HINCRBY`/`INCR` never overflow.
const FRESH_VERSIONS: std::ops::Range<i64> = (1 << 32)..(1 << 62);

/// Shortest pause between two attempts of the repair task.
const FIRST_REPAIR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis url: {0}")]
    Url(String),
    #[error("invalid cache setting: {0}")]
    Setting(&'static str),
}

/// Settings of the Redis cache.
#[derive(Debug, Clone)]
pub struct RedisCacheConfig {
    pub url: String,
    /// Start of every key.
    pub prefix: String,
    /// Lifetime of a cached page and of an owner's version entry.
    pub ttl: Duration,
    /// Longest a single Redis call may take before the cache gives up on it.
    pub timeout: Duration,
    /// How long the cache stays out of the way after an error; also the longest pause between
    /// two attempts to make a failed invalidation good.
    pub retry_after: Duration,
}

/// The Redis-backed [`ListCache`].
pub struct RedisListCache {
    inner: Arc<Inner>,
    owner_prefix: String,
    ttl: Duration,
    lookup_script: Script,
    store_script: Script,
}

/// What the cache shares with its repair task.
struct Inner {
    conn: ConnectionManager,
    epoch_key: String,
    retry_after: Duration,
    down_until: Mutex<Option<Instant>>,
    repair: Mutex<RepairState>,
    /// The highest failure ticket that an epoch removal sent after it has covered.
    covered: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct RepairState {
    /// Invalidations that failed so far; each failure's ticket is the count after it.
    failures: u64,
    /// Whether a repair task is running (at most one per cache).
    running: bool,
}

impl std::fmt::Debug for RedisListCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisListCache")
            .field("epoch_key", &self.inner.epoch_key)
            .field("ttl", &self.ttl)
            .field("repair_pending", &self.inner.repair_pending())
            .finish_non_exhaustive()
    }
}

fn fresh_version() -> String {
    rand::thread_rng().gen_range(FRESH_VERSIONS).to_string()
}

impl Inner {
    fn lock_down(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain instant: a panic elsewhere cannot leave it half-written.
        self.down_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_repair(&self) -> std::sync::MutexGuard<'_, RepairState> {
        // Two counters updated together under the lock, never across a panic point.
        self.repair.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_down(&self) -> bool {
        let mut g = self.lock_down();
        match *g {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *g = None;
                false
            }
            None => false,
        }
    }

    fn failed(&self, op: &'static str, e: &RedisError) {
        tracing::warn!(op, error = %e, "redis cache call failed; reads go to PostgreSQL for now");
        metrics::counter!("hermet_cache_errors_total", "op" => op).increment(1);
        *self.lock_down() = Some(Instant::now() + self.retry_after);
    }

    /// Whether a failed invalidation has not been made good yet: until it is, this process can
    /// no longer tell which pages are stale.
    fn repair_pending(&self) -> bool {
        let failures = self.lock_repair().failures;
        *self.covered.borrow() < failures
    }

    async fn remove_epoch(&self) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(&self.epoch_key)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Records a failed invalidation and returns once an epoch removal sent after it has
    /// succeeded: from then on no process can be served a page stored before the failure, nor
    /// store one under a stamp taken before it.
    async fn make_good(self: &Arc<Self>, op: &'static str, owners: usize) {
        let ticket = {
            let mut st = self.lock_repair();
            st.failures += 1;
            if !st.running {
                st.running = true;
                // A task of its own: it must finish even if this caller is dropped.
                tokio::spawn(self.clone().repair());
            }
            st.failures
        };
        tracing::warn!(
            op,
            owners,
            ticket,
            "invalidation failed; waiting until the epoch is removed before acknowledging"
        );
        let started = Instant::now();
        let mut covered = self.covered.subscribe();
        // The sender lives in `self`, which this call holds, so the wait cannot fail.
        let _ = covered.wait_for(|c| *c >= ticket).await;
        tracing::info!(
            op,
            owners,
            ticket,
            waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "failed invalidation made good: every cached page is retired"
        );
    }

    /// Removes the epoch until a removal succeeds after the last failure that joined.
    async fn repair(self: Arc<Self>) {
        let max_pause = self.retry_after.max(FIRST_REPAIR_PAUSE);
        let mut pause = FIRST_REPAIR_PAUSE;
        let mut attempts = 0u64;
        loop {
            // Every failure up to `target` happened before this removal is sent.
            let target = self.lock_repair().failures;
            match self.remove_epoch().await {
                Ok(()) => {
                    self.covered.send_replace(target);
                    *self.lock_down() = None;
                    let mut st = self.lock_repair();
                    if st.failures == target {
                        st.running = false;
                        tracing::info!(
                            attempts = attempts + 1,
                            covered = target,
                            "redis cache epoch removed after failed invalidations"
                        );
                        return;
                    }
                    // More failures joined while the removal was on its way: one more, sent
                    // after them, covers them.
                }
                Err(e) => {
                    attempts += 1;
                    metrics::counter!("hermet_cache_errors_total", "op" => "epoch").increment(1);
                    // The first failure, then now and then: an outage must not flood the log.
                    if attempts == 1 || attempts.is_multiple_of(100) {
                        tracing::warn!(
                            attempts,
                            pending = target.saturating_sub(*self.covered.borrow()),
                            error = %e,
                            "redis cache unreachable; invalidations wait for it"
                        );
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(max_pause);
                }
            }
        }
    }
}

impl RedisListCache {
    /// Builds the cache; connects lazily, so a Redis that is down at start-up is not an error.
    /// Must be called inside a Tokio runtime.
    pub fn new(cfg: &RedisCacheConfig) -> Result<Self, CacheError> {
        if cfg.ttl < Duration::from_secs(2) {
            return Err(CacheError::Setting("ttl must be at least 2 seconds"));
        }
        if cfg.timeout.is_zero() {
            return Err(CacheError::Setting("timeout must be positive"));
        }
        if cfg.prefix.is_empty() || cfg.prefix.contains(char::is_whitespace) {
            return Err(CacheError::Setting(
                "prefix must be non-empty and without whitespace",
            ));
        }
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| CacheError::Url(e.to_string()))?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            // Reconnection is retried by the next call after `retry_after`, not in a loop here.
            .set_number_of_retries(1)
            .set_max_delay(cfg.timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg)
            .map_err(|e| CacheError::Url(e.to_string()))?;
        for op in ["lookup", "store", "invalidate", "invalidate_all", "epoch"] {
            metrics::counter!("hermet_cache_errors_total", "op" => op).increment(0);
        }
        Ok(RedisListCache {
            inner: Arc::new(Inner {
                conn,
                epoch_key: format!("{}:cl:epoch", cfg.prefix),
                retry_after: cfg.retry_after,
                down_until: Mutex::new(None),
                repair: Mutex::new(RepairState::default()),
                covered: watch::channel(0).0,
            }),
            owner_prefix: format!("{}:cl:u:", cfg.prefix),
            ttl: cfg.ttl,
            lookup_script: Script::new(LOOKUP_SCRIPT),
            store_script: Script::new(STORE_SCRIPT),
        })
    }

    fn owner_key(&self, owner: UserId) -> String {
        format!("{}{owner}", self.owner_prefix)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn fallback(&self) -> Lookup {
        metrics::counter!("hermet_cache_fallbacks_total").increment(1);
        Lookup::Unavailable
    }

    fn usable(&self) -> bool {
        !self.inner.is_down() && !self.inner.repair_pending()
    }

    async fn lookup_inner(&self, owner: UserId, limit: i64) -> Lookup {
        if !self.usable() {
            return self.fallback();
        }
        let mut c = self.inner.conn.clone();
        let got: Result<(i64, String), _> = self
            .lookup_script
            .key(&self.inner.epoch_key)
            .key(self.owner_key(owner))
            .arg(fresh_version())
            .arg(fresh_version())
            .arg(format!("s:{limit}"))
            .arg(format!("d:{limit}"))
            .arg(self.ttl_ms())
            .invoke_async(&mut c)
            .await;
        match got {
            Ok((1, page)) => {
                metrics::counter!("hermet_cache_requests_total", "result" => "hit").increment(1);
                Lookup::Hit(page)
            }
            Ok((_, stamp)) => {
                metrics::counter!("hermet_cache_requests_total", "result" => "miss").increment(1);
                Lookup::Miss(Stamp(stamp))
            }
            Err(e) => {
                self.inner.failed("lookup", &e);
                self.fallback()
            }
        }
    }

    async fn store_inner(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> bool {
        if !self.usable() {
            return false;
        }
        let mut c = self.inner.conn.clone();
        let r: Result<i64, _> = self
            .store_script
            .key(&self.inner.epoch_key)
            .key(self.owner_key(owner))
            .arg(stamp.0)
            .arg(format!("s:{limit}"))
            .arg(format!("d:{limit}"))
            .arg(page)
            .arg(self.ttl_ms())
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(1) => {
                metrics::counter!("hermet_cache_stores_total", "result" => "stored").increment(1);
                true
            }
            Ok(_) => {
                metrics::counter!("hermet_cache_stores_total", "result" => "stale").increment(1);
                false
            }
            Err(e) => {
                self.inner.failed("store", &e);
                false
            }
        }
    }

    async fn invalidate_inner(&self, owners: &[UserId]) {
        if owners.is_empty() {
            return;
        }
        // With a repair pending, the epoch removal it is waiting for covers these owners too
        // (it is sent after they join); trying them one by one would only add a timeout.
        if !self.inner.repair_pending() {
            let keys: Vec<String> = owners.iter().map(|o| self.owner_key(*o)).collect();
            let mut c = self.inner.conn.clone();
            match redis::cmd("DEL")
                .arg(&keys)
                .query_async::<i64>(&mut c)
                .await
            {
                Ok(_) => {
                    metrics::counter!("hermet_cache_invalidations_total")
                        .increment(owners.len() as u64);
                    return;
                }
                Err(e) => self.inner.failed("invalidate", &e),
            }
        }
        self.inner.make_good("invalidate", owners.len()).await;
    }

    async fn invalidate_all_inner(&self) {
        if !self.inner.repair_pending() {
            match self.inner.remove_epoch().await {
                Ok(()) => return,
                Err(e) => self.inner.failed("invalidate_all", &e),
            }
        }
        self.inner.make_good("invalidate_all", 0).await;
    }
}

impl ListCache for RedisListCache {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
        Box::pin(self.lookup_inner(owner, limit))
    }

    fn store(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> BoxFut<'_, bool> {
        Box::pin(self.store_inner(owner, limit, stamp, page))
    }

    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
        Box::pin(self.invalidate_inner(owners))
    }

    fn invalidate_all(&self) -> BoxFut<'_, ()> {
        Box::pin(self.invalidate_all_inner())
    }

    /// Half the lifetime of a page. The stamp rule above does not depend on it (versions never
    /// repeat); it keeps pages whose load took that long, and so are likely outdated, out.
    fn max_load(&self) -> Duration {
        self.ttl / 2
    }
}
