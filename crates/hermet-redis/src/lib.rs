//! hermet-redis: the conversation-list cache on Redis ([`hermet_core::cache::ListCache`]).
//!
//! ## Layout
//! Keys start with a configurable prefix (`hermet` by default), so deployments and tests can
//! share one Redis.
//! - `{prefix}:cl:epoch` — a global counter; [`ListCache::invalidate_all`] moves it on.
//! - `{prefix}:cl:u:{owner}` — a hash per owner: field `v` is the owner's version, and per page
//!   size `limit` the fields `s:{limit}` (stamp the page was stored under) and `d:{limit}` (the
//!   page). The whole hash expires `ttl` after its last write.
//!
//! A stamp is `"{epoch}:{v}"` as read before the load; a page is current when its `s:` field
//! equals the current stamp. Stores go through a Lua script that compares and sets atomically, so
//! a page loaded before an invalidation can never be stored after it (see `hermet_core::cache` for
//! the whole argument, including why loads longer than `ttl / 2` are not stored).
//!
//! ## When Redis is unreachable
//! Every call has a short timeout. After an error the cache stays out of the way for
//! `retry_after` (look-ups answer `Unavailable`, so reads go to PostgreSQL and
//! `hermet_cache_fallbacks_total` counts them). An invalidation that fails leaves this process
//! unable to tell which pages are stale, so it marks itself **untrusted**: it neither serves nor
//! stores pages until it has moved the global epoch on, which retires every page stored before.
//! Nothing is ever returned as an error to the reader or the writer.
//!
//! Residual window, documented rather than hidden: a reader in *another* process that looked up
//! before such a lost invalidation and stores after Redis came back (within `ttl / 2`) can store
//! a stale page, which lives until the epoch moves (the failing process moves it as soon as it
//! reaches Redis) or the page expires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hermet_core::cache::{BoxFut, ListCache, Lookup, Stamp};
use hermet_core::rows::UserId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

const STORE_SCRIPT: &str = r"
local e = redis.call('GET', KEYS[1]) or '0'
local v = redis.call('HGET', KEYS[2], 'v') or '0'
if e .. ':' .. v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// An owner's version, and the stamp and page of one page size.
type OwnerFields = (Option<i64>, Option<String>, Option<String>);

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
    /// How long the cache stays out of the way after an error.
    pub retry_after: Duration,
}

/// The Redis-backed [`ListCache`].
pub struct RedisListCache {
    conn: ConnectionManager,
    epoch_key: String,
    owner_prefix: String,
    ttl: Duration,
    retry_after: Duration,
    store_script: Script,
    down_until: Mutex<Option<Instant>>,
    untrusted: AtomicBool,
}

impl std::fmt::Debug for RedisListCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisListCache")
            .field("epoch_key", &self.epoch_key)
            .field("ttl", &self.ttl)
            .field("untrusted", &self.untrusted)
            .finish_non_exhaustive()
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
            conn,
            epoch_key: format!("{}:cl:epoch", cfg.prefix),
            owner_prefix: format!("{}:cl:u:", cfg.prefix),
            ttl: cfg.ttl,
            retry_after: cfg.retry_after,
            store_script: Script::new(STORE_SCRIPT),
            down_until: Mutex::new(None),
            untrusted: AtomicBool::new(false),
        })
    }

    fn owner_key(&self, owner: UserId) -> String {
        format!("{}{owner}", self.owner_prefix)
    }

    fn is_down(&self) -> bool {
        let mut g = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut g = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(Instant::now() + self.retry_after);
    }

    fn fallback(&self) -> Lookup {
        metrics::counter!("hermet_cache_fallbacks_total").increment(1);
        Lookup::Unavailable
    }

    async fn bump_epoch(&self) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let _: i64 = redis::cmd("INCR")
            .arg(&self.epoch_key)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Whether this process may use cached pages: not after a lost invalidation until the epoch
    /// has moved on.
    async fn trusted(&self) -> bool {
        if !self.untrusted.load(Ordering::Acquire) {
            return true;
        }
        match self.bump_epoch().await {
            Ok(()) => {
                self.untrusted.store(false, Ordering::Release);
                tracing::info!(
                    "redis cache trusted again: epoch moved on after lost invalidations"
                );
                true
            }
            Err(e) => {
                self.failed("epoch", &e);
                false
            }
        }
    }

    async fn lookup_inner(&self, owner: UserId, limit: i64) -> Lookup {
        if self.is_down() || !self.trusted().await {
            return self.fallback();
        }
        let mut c = self.conn.clone();
        let key = self.owner_key(owner);
        let got: Result<(Option<i64>, OwnerFields), _> =
            // Not MULTI: an `invalidate_all` between the two reads is concurrent with this
            // look-up either way, and the store script re-checks both values atomically.
            redis::pipe()
                .get(&self.epoch_key)
                .cmd("HMGET")
                .arg(&key)
                .arg("v")
                .arg(format!("s:{limit}"))
                .arg(format!("d:{limit}"))
                .query_async(&mut c)
                .await;
        match got {
            Ok((epoch, (v, at, page))) => {
                let stamp = format!("{}:{}", epoch.unwrap_or(0), v.unwrap_or(0));
                match (at, page) {
                    (Some(at), Some(page)) if at == stamp => {
                        metrics::counter!("hermet_cache_requests_total", "result" => "hit")
                            .increment(1);
                        Lookup::Hit(page)
                    }
                    _ => {
                        metrics::counter!("hermet_cache_requests_total", "result" => "miss")
                            .increment(1);
                        Lookup::Miss(Stamp(stamp))
                    }
                }
            }
            Err(e) => {
                self.failed("lookup", &e);
                self.fallback()
            }
        }
    }

    async fn store_inner(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> bool {
        if self.is_down() || self.untrusted.load(Ordering::Acquire) {
            return false;
        }
        let mut c = self.conn.clone();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let r: Result<i64, _> = self
            .store_script
            .key(&self.epoch_key)
            .key(self.owner_key(owner))
            .arg(stamp.0)
            .arg(format!("s:{limit}"))
            .arg(format!("d:{limit}"))
            .arg(page)
            .arg(ttl_ms)
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
                self.failed("store", &e);
                false
            }
        }
    }

    async fn invalidate_inner(&self, owners: &[UserId]) {
        if owners.is_empty() {
            return;
        }
        if self.is_down() {
            self.untrusted.store(true, Ordering::Release);
            return;
        }
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        for o in owners {
            let key = self.owner_key(*o);
            pipe.hincr(&key, "v", 1).ignore();
            pipe.pexpire(&key, ttl_ms).ignore();
        }
        let mut c = self.conn.clone();
        match pipe.query_async::<()>(&mut c).await {
            Ok(()) => {
                metrics::counter!("hermet_cache_invalidations_total").increment(owners.len() as u64)
            }
            Err(e) => {
                self.untrusted.store(true, Ordering::Release);
                self.failed("invalidate", &e);
            }
        }
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
        Box::pin(async move {
            if let Err(e) = self.bump_epoch().await {
                self.untrusted.store(true, Ordering::Release);
                self.failed("invalidate_all", &e);
            }
        })
    }

    fn max_load(&self) -> Duration {
        self.ttl / 2
    }
}
