//! hermet-redis: the conversation-list cache on Redis ([`hermet_core::cache::ListCache`]).
//!
//! ## Layout
//! Keys start with a configurable prefix (`hermet` by default), so deployments and tests can
//! share one Redis.
//! - `{prefix}:cl:epoch` — the global version; [`ListCache::invalidate_all`] removes it. No TTL.
//! - `{prefix}:cl:u:{owner}` — a hash per owner: field `v` is the owner's version, and per page
//!   size `limit` the fields `t:{limit}` (stamp the page was stored under), `c:{limit}` (the
//!   channel versions it was loaded against: `{channel}={epoch}:{version}` separated by spaces,
//!   empty for none) and `p:{limit}` (the page). The whole hash expires `ttl` after its last
//!   write; an invalidation removes it.
//! - `{prefix}:cl:c:{channel}` — the version of a channel in read diffusion (a string). It
//!   expires `ttl` after it was last read; [`ListCache::invalidate_channels`] removes it.
//!
//! A stamp is `"{epoch}:{v}"`, and so is a channel's version as callers see it (so that
//! [`ListCache::invalidate_all`], which removes the epoch, retires channel versions too). A page
//! is served when its `t:` field equals the current stamp; `hermet_core::cache::read_through`
//! then compares its `c:` versions with the current ones (a second call, made only for pages
//! that recorded channels). Look-ups, stores and channel reads are Lua scripts, so each reads and
//! writes atomically; each is passed every key it touches (the channel check of a hit is not
//! folded into the look-up script because the channel keys are only known from the hash the
//! script reads). Pages of the previous release (fields `s:`/`d:`, no channel versions) are
//! neither served nor overwritten by this one; they go with the hash.
//!
//! ## Versions never repeat
//! A stamp must never become current again once its version has moved on, or a reader that
//! stamped before a write could store a page loaded before it. Versions here are *created* and
//! *removed*, never counted:
//! - only a look-up (for an owner) or a channel read (for channels) creates a version, and only
//!   when it is missing: at a fresh random integer in `[2^32, 2^62)`, in the same script that
//!   reads it (so a stamp is only ever taken against a version that exists);
//! - an invalidation **removes** the version (`DEL` of the owner's hash, of the channel's key, or
//!   of the epoch); so do expiry, eviction, and a restart of a cache-only Redis;
//! - a store is accepted only if the epoch, the owner's version and every recorded channel
//!   version exist and equal what the reader saw.
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

use hermet_core::cache::{BoxFut, Cached, ChannelStamps, ListCache, Lookup, Stamp};
use hermet_core::rows::{ChannelId, UserId};
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::watch;

pub mod telemetry;

use telemetry::{CacheOp, Invalidated, LookupResult, StoreResult};

/// KEYS: epoch, owner hash. ARGV: fresh epoch, fresh version (each used only if missing), stamp
/// field, page field, ttl in ms, channels field. Returns `{'hit', stamp, page, channels}` on a
/// hit, `{'miss', stamp}` on a miss.
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
  local channels = redis.call('HGET', KEYS[2], ARGV[6])
  if page and channels then return {'hit', stamp, page, channels} end
end
return {'miss', stamp}
";

/// KEYS: epoch, owner hash, then the recorded channels' keys. ARGV: stamp, stamp field, page
/// field, page, ttl in ms, channels field, encoded channel versions, then each channel's version
/// as the reader saw it (`{epoch}:{v}`). A missing version was removed after the reader saw it
/// (look-ups and channel reads create them), so it refuses.
const STORE_SCRIPT: &str = r"
local e = redis.call('GET', KEYS[1])
local v = redis.call('HGET', KEYS[2], 'v')
if not e or not v or e .. ':' .. v ~= ARGV[1] then return 0 end
for i = 3, #KEYS do
  local c = redis.call('GET', KEYS[i])
  if not c or e .. ':' .. c ~= ARGV[i + 5] then return 0 end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1], ARGV[3], ARGV[4], ARGV[6], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// KEYS: epoch, then the channels' keys. ARGV: fresh epoch, ttl in ms, then a fresh version per
/// channel (each used only if missing). Returns each channel's `{epoch}:{v}`, in KEYS order. The
/// expiry is renewed on every read: only removal matters to the rule, and a channel that is
/// read keeps its version (and the pages recorded against it).
const CHANNELS_SCRIPT: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
local out = {}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    v = ARGV[i + 1]
    redis.call('SET', KEYS[i], v, 'PX', ARGV[2])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
  out[#out + 1] = e .. ':' .. v
end
return out
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
    channel_prefix: String,
    ttl: Duration,
    lookup_script: Script,
    store_script: Script,
    channels_script: Script,
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

/// The `c:` field of a page: `{channel}={version}` separated by spaces (versions are
/// `{epoch}:{v}`, digits and a colon).
fn encode_channels(channels: &ChannelStamps) -> String {
    let mut out = String::new();
    for (ch, version) in &channels.0 {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&ch.to_string());
        out.push('=');
        out.push_str(version);
    }
    out
}

/// The inverse of [`encode_channels`]; `None` for anything it does not write.
fn decode_channels(field: &str) -> Option<ChannelStamps> {
    field
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (ch, version) = p.split_once('=')?;
            let ch = ch.parse::<ChannelId>().ok()?;
            (!version.is_empty() && !version.contains(['=', ' '])).then(|| (ch, version.to_owned()))
        })
        .collect::<Option<Vec<_>>>()
        .map(ChannelStamps)
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

    fn failed(&self, op: CacheOp, e: &RedisError) {
        tracing::warn!(op = op.as_str(), error = %e, "redis cache call failed; reads go to PostgreSQL for now");
        telemetry::error(op);
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
    /// `keys`: how many owners or channels the failed call was for (logged).
    async fn make_good(self: &Arc<Self>, op: CacheOp, keys: usize) {
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
            op = op.as_str(),
            keys,
            ticket,
            "invalidation failed; waiting until the epoch is removed before acknowledging"
        );
        let started = Instant::now();
        let mut covered = self.covered.subscribe();
        // The sender lives in `self`, which this call holds, so the wait cannot fail.
        let _ = covered.wait_for(|c| *c >= ticket).await;
        tracing::info!(
            op = op.as_str(),
            keys,
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
                    telemetry::error(CacheOp::Epoch);
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
        telemetry::register_errors();
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
            channel_prefix: format!("{}:cl:c:", cfg.prefix),
            ttl: cfg.ttl,
            lookup_script: Script::new(LOOKUP_SCRIPT),
            store_script: Script::new(STORE_SCRIPT),
            channels_script: Script::new(CHANNELS_SCRIPT),
        })
    }

    fn owner_key(&self, owner: UserId) -> String {
        format!("{}{owner}", self.owner_prefix)
    }

    fn channel_key(&self, channel: ChannelId) -> String {
        format!("{}{channel}", self.channel_prefix)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn fallback(&self) -> Lookup {
        telemetry::fallback();
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
        let got: Result<Vec<String>, _> = self
            .lookup_script
            .key(&self.inner.epoch_key)
            .key(self.owner_key(owner))
            .arg(fresh_version())
            .arg(fresh_version())
            .arg(format!("t:{limit}"))
            .arg(format!("p:{limit}"))
            .arg(self.ttl_ms())
            .arg(format!("c:{limit}"))
            .invoke_async(&mut c)
            .await;
        let mut got = match got {
            Ok(got) => got.into_iter(),
            Err(e) => {
                self.inner.failed(CacheOp::Lookup, &e);
                return self.fallback();
            }
        };
        let (kind, stamp) = (got.next(), got.next().map(Stamp));
        let found = match (kind.as_deref(), stamp, got.next(), got.next()) {
            (Some("hit"), Some(stamp), Some(page), Some(channels)) => {
                match decode_channels(&channels) {
                    Some(channels) => Lookup::Hit(Cached {
                        page,
                        stamp,
                        channels,
                    }),
                    // Not what this release writes: the page cannot be checked, so it is a miss
                    // (the next store overwrites it).
                    None => Lookup::Miss(stamp),
                }
            }
            (Some("miss"), Some(stamp), None, None) => Lookup::Miss(stamp),
            _ => {
                // Only a script of another shape answers so; the cache cannot be trusted.
                tracing::error!("redis cache look-up script answered in an unknown shape");
                telemetry::error(CacheOp::Lookup);
                return self.fallback();
            }
        };
        telemetry::lookup(if matches!(found, Lookup::Hit(_)) {
            LookupResult::Hit
        } else {
            LookupResult::Miss
        });
        found
    }

    async fn channel_versions_inner(&self, channels: &[ChannelId]) -> Option<Vec<String>> {
        if channels.is_empty() {
            return Some(Vec::new());
        }
        if !self.usable() {
            return None;
        }
        let mut inv = self.channels_script.prepare_invoke();
        inv.key(&self.inner.epoch_key)
            .arg(fresh_version())
            .arg(self.ttl_ms());
        for ch in channels {
            inv.key(self.channel_key(*ch)).arg(fresh_version());
        }
        let mut c = self.inner.conn.clone();
        match inv.invoke_async::<Vec<String>>(&mut c).await {
            Ok(v) if v.len() == channels.len() => Some(v),
            Ok(_) => {
                tracing::error!("redis cache channel script answered in an unknown shape");
                telemetry::error(CacheOp::ChannelVersions);
                None
            }
            Err(e) => {
                self.inner.failed(CacheOp::ChannelVersions, &e);
                None
            }
        }
    }

    async fn store_inner(
        &self,
        owner: UserId,
        limit: i64,
        stamp: Stamp,
        channels: ChannelStamps,
        page: String,
    ) -> bool {
        if !self.usable() {
            return false;
        }
        let mut inv = self.store_script.prepare_invoke();
        inv.key(&self.inner.epoch_key)
            .key(self.owner_key(owner))
            .arg(stamp.0)
            .arg(format!("t:{limit}"))
            .arg(format!("p:{limit}"))
            .arg(page)
            .arg(self.ttl_ms())
            .arg(format!("c:{limit}"))
            .arg(encode_channels(&channels));
        for (ch, version) in &channels.0 {
            inv.key(self.channel_key(*ch)).arg(version);
        }
        let mut c = self.inner.conn.clone();
        let r: Result<i64, _> = inv.invoke_async(&mut c).await;
        match r {
            Ok(1) => {
                telemetry::stored(StoreResult::Stored);
                true
            }
            Ok(_) => {
                telemetry::stored(StoreResult::Stale);
                false
            }
            Err(e) => {
                self.inner.failed(CacheOp::Store, &e);
                false
            }
        }
    }

    async fn invalidate_inner(&self, owners: &[UserId]) {
        let keys: Vec<String> = owners.iter().map(|o| self.owner_key(*o)).collect();
        self.remove_versions(&keys, CacheOp::Invalidate, Invalidated::Owners)
            .await;
    }

    /// As [`RedisListCache::invalidate_inner`], for channel versions (removing a channel's key
    /// retires every page recorded against it; a failure is made good the same way).
    async fn invalidate_channels_inner(&self, channels: &[ChannelId]) {
        let keys: Vec<String> = channels.iter().map(|c| self.channel_key(*c)).collect();
        self.remove_versions(&keys, CacheOp::InvalidateChannels, Invalidated::Channels)
            .await;
    }

    /// Removes the version keys `keys` (`whose`: owners' or channels'), counting them; a
    /// failure is made good by removing the epoch before this returns.
    async fn remove_versions(&self, keys: &[String], op: CacheOp, whose: Invalidated) {
        if keys.is_empty() {
            return;
        }
        // With a repair pending, the epoch removal it is waiting for covers these keys too
        // (it is sent after they join); trying them one by one would only add a timeout.
        if !self.inner.repair_pending() {
            let mut c = self.inner.conn.clone();
            match redis::cmd("DEL").arg(keys).query_async::<i64>(&mut c).await {
                Ok(_) => {
                    telemetry::invalidated(whose, keys.len());
                    return;
                }
                Err(e) => self.inner.failed(op, &e),
            }
        }
        self.inner.make_good(op, keys.len()).await;
    }

    async fn invalidate_all_inner(&self) {
        if !self.inner.repair_pending() {
            match self.inner.remove_epoch().await {
                Ok(()) => return,
                Err(e) => self.inner.failed(CacheOp::InvalidateAll, &e),
            }
        }
        self.inner.make_good(CacheOp::InvalidateAll, 0).await;
    }
}

impl ListCache for RedisListCache {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
        Box::pin(self.lookup_inner(owner, limit))
    }

    fn store(
        &self,
        owner: UserId,
        limit: i64,
        stamp: Stamp,
        channels: ChannelStamps,
        page: String,
    ) -> BoxFut<'_, bool> {
        Box::pin(self.store_inner(owner, limit, stamp, channels, page))
    }

    fn channel_versions<'a>(
        &'a self,
        channels: &'a [ChannelId],
    ) -> BoxFut<'a, Option<Vec<String>>> {
        Box::pin(self.channel_versions_inner(channels))
    }

    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
        Box::pin(self.invalidate_inner(owners))
    }

    fn invalidate_channels<'a>(&'a self, channels: &'a [ChannelId]) -> BoxFut<'a, ()> {
        Box::pin(self.invalidate_channels_inner(channels))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_fields_round_trip_and_refuse_what_this_release_does_not_write() {
        let c = ChannelStamps(vec![(10, "5:77".into()), (-3, "5:8".into())]);
        assert_eq!(encode_channels(&c), "10=5:77 -3=5:8");
        assert_eq!(decode_channels(&encode_channels(&c)), Some(c));
        assert_eq!(decode_channels(""), Some(ChannelStamps::default()));
        for bad in ["10", "x=1:2", "10=", "10==1"] {
            assert_eq!(decode_channels(bad), None, "{bad}");
        }
    }
}
