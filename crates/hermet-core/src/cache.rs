//! The conversation-list cache: its port, and the read-through rule that keeps a cache from ever
//! serving a first page older than a write the reader has seen acknowledged.
//!
//! ## The rule
//! Every cached page carries the **stamp** (an opaque version of the owner's list) that was
//! current when its reader looked it up, *before* loading from the database. Whoever changes an
//! owner's conversation rows moves that owner's version on **after** the change commits and
//! **before** acknowledging it (the command's HTTP answer in `dual_write`; in `async` and `cdc` the
//! projector invalidates right after its batch commits, before it takes the next one). A page is
//! stored only if the owner's version still equals the stamp, checked atomically by the cache. So
//! a reader that loaded before a commit and is slow to store finds the version moved and its
//! stale page is dropped; a reader that starts after an acknowledgement sees the new version and
//! misses.
//!
//! Three details close the remaining gaps:
//! - **Versions never repeat** for an owner (nor the global version of `invalidate_all`): once a
//!   version has moved on, no later one equals it — not after its entry expired, was evicted, or
//!   the cache restarted empty. Otherwise a stamp taken before the move could match again, and a
//!   page loaded before a write be stored after it. (The Redis adapter draws versions at random
//!   and invalidates by removing them; see `hermet_redis`.)
//! - **An invalidation returns only once it has taken effect for every process** (see the
//!   contract below), so a lost invalidation can never be acknowledged.
//! - In `async`/`cdc` a view's watermark commits together with the view rows, a moment before the
//!   projector invalidates. Reads that ask for read-your-writes (`X-Hermet-Min-Lsn`) therefore
//!   bypass the cache; plain reads there are eventually consistent anyway.
//!
//! Loads that took longer than [`ListCache::max_load`] are not stored either: the rule does not
//! need it, but such a page is likely outdated by the time it would be stored.
//!
//! ## Port contract ([`ListCache`])
//! - `lookup` and `store` never fail: an unreachable cache answers [`Lookup::Unavailable`] and
//!   refuses stores, and the caller reads the database.
//! - `invalidate` and `invalidate_all` never fail either, and **return only once their effect is
//!   visible to every process** sharing the cache: the owners' versions moved on, or — when that
//!   failed — something that retires at least as much (the Redis adapter removes the global
//!   version, retiring every page and every stamp).
//!   - *Who retries:* the cache, for as long as it takes (while the cache is unreachable, the
//!     call waits). Callers never retry and never time the call out to acknowledge anyway.
//!   - *When progress may advance:* only after the call returned. The writer calls it after its
//!     commit and acknowledges after it: the HTTP answer in `dual_write`; the next batch of a
//!     projector or outbox worker (whose rows and watermark are committed already: nothing is
//!     lost, the worker only waits); the end of a CLI repair or rebuild (the process exits after).
//!   - A caller that is dropped while waiting (a request whose client hung up) does not cancel
//!     the repair: the cache finishes it on its own.
//! - `invalidate_all` drops every page (used after a rebuild or a repair rewrote the read side).
//! - Versions never repeat (above).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rows::UserId;

/// A boxed future, so that the port can be used as `dyn ListCache`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The version of one owner's list a reader saw before loading; opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp(pub String);

/// What a look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A page stored under the owner's current version.
    Hit(String),
    /// Nothing current; a page loaded now may be stored under this stamp.
    Miss(Stamp),
    /// The cache cannot be used now (unreachable, disabled, or untrusted after a lost
    /// invalidation): read the database and store nothing.
    Unavailable,
}

/// Where first pages of conversation lists are cached. See the module docs for the contract.
pub trait ListCache: Send + Sync + std::fmt::Debug + 'static {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup>;
    /// Stores `page` if the owner's version still is `stamp`; returns whether it did.
    fn store(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> BoxFut<'_, bool>;
    /// Moves the version of every owner in `owners` on; returns once every process sees that (or
    /// more: every page retired), retrying as long as it takes. See the module docs.
    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()>;
    /// Moves every owner's version on; returns as [`ListCache::invalidate`] does.
    fn invalidate_all(&self) -> BoxFut<'_, ()>;
    /// Loads slower than this are not stored (a page that took so long is likely outdated).
    fn max_load(&self) -> Duration;
}

/// Where a page came from, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    /// Loaded from the database and stored.
    Stored,
    /// Loaded from the database, not stored (version moved, load too slow, or store failed).
    NotStored,
    /// Loaded from the database without consulting the cache.
    Bypassed,
}

/// Serves `owner`'s first page from `cache`, or loads it with `load` and stores it under the stamp
/// seen before loading.
pub async fn read_through<F, Fut, E>(
    cache: &dyn ListCache,
    owner: UserId,
    limit: i64,
    load: F,
) -> Result<(String, Source), E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<String, E>>,
{
    let stamp = match cache.lookup(owner, limit).await {
        Lookup::Hit(page) => return Ok((page, Source::Cache)),
        Lookup::Miss(stamp) => stamp,
        Lookup::Unavailable => return Ok((load().await?, Source::Bypassed)),
    };
    let started = Instant::now();
    let page = load().await?;
    if started.elapsed() >= cache.max_load() {
        return Ok((page, Source::NotStored));
    }
    let stored = cache.store(owner, limit, stamp, page.clone()).await;
    Ok((
        page,
        if stored {
            Source::Stored
        } else {
            Source::NotStored
        },
    ))
}

/// A cache that holds nothing: every look-up is [`Lookup::Unavailable`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

/// A shared [`NoCache`].
pub fn no_cache() -> Arc<dyn ListCache> {
    Arc::new(NoCache)
}

impl ListCache for NoCache {
    fn lookup(&self, _: UserId, _: i64) -> BoxFut<'_, Lookup> {
        Box::pin(async { Lookup::Unavailable })
    }
    fn store(&self, _: UserId, _: i64, _: Stamp, _: String) -> BoxFut<'_, bool> {
        Box::pin(async { false })
    }
    fn invalidate<'a>(&'a self, _: &'a [UserId]) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
    fn invalidate_all(&self) -> BoxFut<'_, ()> {
        Box::pin(async {})
    }
    fn max_load(&self) -> Duration {
        Duration::ZERO
    }
}

/// An in-process cache with the same stamp rule as the Redis adapter, for unit tests of code that
/// uses the port (the Redis adapter is tested against a real Redis for the same contract). Its
/// versions are counters that never expire or reset, so they never repeat; its invalidations
/// cannot fail.
#[derive(Debug, Default)]
pub struct MemoryCache {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    epoch: u64,
    versions: HashMap<UserId, u64>,
    pages: HashMap<(UserId, i64), (String, String)>,
}

impl MemoryState {
    fn stamp(&self, owner: UserId) -> String {
        format!(
            "{}:{}",
            self.epoch,
            self.versions.get(&owner).copied().unwrap_or(0)
        )
    }
}

impl MemoryCache {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a test fake, so a poisoned lock is simply reused.
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl ListCache for MemoryCache {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
        let found = self.with(|s| {
            let stamp = s.stamp(owner);
            match s.pages.get(&(owner, limit)) {
                Some((at, page)) if *at == stamp => Lookup::Hit(page.clone()),
                _ => Lookup::Miss(Stamp(stamp)),
            }
        });
        Box::pin(async move { found })
    }
    fn store(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> BoxFut<'_, bool> {
        let stored = self.with(|s| {
            if s.stamp(owner) != stamp.0 {
                return false;
            }
            s.pages.insert((owner, limit), (stamp.0, page));
            true
        });
        Box::pin(async move { stored })
    }
    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
        self.with(|s| {
            for o in owners {
                *s.versions.entry(*o).or_insert(0) += 1;
            }
        });
        Box::pin(async {})
    }
    fn invalidate_all(&self) -> BoxFut<'_, ()> {
        self.with(|s| s.epoch += 1);
        Box::pin(async {})
    }
    fn max_load(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn run<F: Future>(f: F) -> F::Output {
        // The fake's futures are ready at once, so polling once with a no-op waker suffices.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("fake cache futures are always ready"),
        }
    }

    fn page(s: &str) -> impl Future<Output = Result<String, ()>> {
        let s = s.to_owned();
        async move { Ok(s) }
    }

    #[test]
    fn second_read_is_a_hit() {
        let c = MemoryCache::default();
        let (p, src) = run(read_through(&c, 1, 20, || page("a"))).unwrap();
        assert_eq!((p.as_str(), src), ("a", Source::Stored));
        let (p, src) = run(read_through(&c, 1, 20, || page("b"))).unwrap();
        assert_eq!((p.as_str(), src), ("a", Source::Cache));
        // Another limit is another page.
        let (_, src) = run(read_through(&c, 1, 10, || page("c"))).unwrap();
        assert_eq!(src, Source::Stored);
    }

    #[test]
    fn invalidation_during_the_load_drops_the_stale_page() {
        let c = MemoryCache::default();
        let invalidated = Cell::new(false);
        let (p, src) = run(read_through(&c, 7, 20, || {
            // The write commits and invalidates while this reader is loading.
            run(c.invalidate(&[7]));
            invalidated.set(true);
            page("stale")
        }))
        .unwrap();
        assert!(invalidated.get());
        assert_eq!((p.as_str(), src), ("stale", Source::NotStored));
        let (p, src) = run(read_through(&c, 7, 20, || page("fresh"))).unwrap();
        assert_eq!((p.as_str(), src), ("fresh", Source::Stored));
    }

    #[test]
    fn invalidation_reaches_only_its_owners_and_all_reaches_everyone() {
        let c = MemoryCache::default();
        run(read_through(&c, 1, 20, || page("one"))).unwrap();
        run(read_through(&c, 2, 20, || page("two"))).unwrap();
        run(c.invalidate(&[1]));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
        assert_eq!(run(c.lookup(2, 20)), Lookup::Hit("two".into()));
        run(c.invalidate_all());
        assert!(matches!(run(c.lookup(2, 20)), Lookup::Miss(_)));
    }

    #[test]
    fn no_cache_always_loads() {
        let (p, src) = run(read_through(&NoCache, 1, 20, || page("x"))).unwrap();
        assert_eq!((p.as_str(), src), ("x", Source::Bypassed));
    }

    #[test]
    fn load_errors_pass_through_and_store_nothing() {
        let c = MemoryCache::default();
        let r: Result<_, &str> = run(read_through(&c, 1, 20, || async { Err("db down") }));
        assert_eq!(r, Err("db down"));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
    }
}
