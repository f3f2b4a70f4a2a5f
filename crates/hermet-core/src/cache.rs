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
//! misses. Writes that change no owner's rows (messages into a channel in read diffusion) move a
//! channel's version instead, which a page records the same way: see *Channels in read
//! diffusion* below.
//!
//! Three details close the remaining gaps:
//! - **Versions never repeat** for an owner or a channel (nor the global version of `invalidate_all`): once a
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
//! ## Channels in read diffusion
//! A message into a group in read diffusion writes one `channel_view` row and no member row, so
//! it does not move any owner's version. Each such channel has a **channel version** of its own,
//! which the writer of a `channel_view` row moves on after commit and before acknowledging, with
//! exactly the contract of owner invalidation ([`ListCache::invalidate_channels`]). A message
//! into a 100,000-member group therefore moves one version, never per-member ones.
//!
//! [`read_through`] then works as follows. On a miss: take the owner's stamp (the look-up) → get
//! the owner's read-diffusion channels `L` (from the store) → read their versions `V`
//! ([`ListCache::channel_versions`]) → load the page → store it together with `(L, V)` under the
//! stamp (refused if the owner's version or any of `V` moved meanwhile). On a hit: the page
//! comes back with the `(L, V)` it was stored with, and is served only if the current versions of
//! `L` still equal `V`; any difference is a miss (and the miss steps follow, under the stamp the
//! look-up returned). Why this is enough:
//! - `L` is fixed for a given owner stamp. Joining or leaving a channel, and a channel flipping
//!   between write and read diffusion, write the owner's member row, so they move the owner's
//!   version: a page stored under a stamp was loaded with the `L` of that stamp, and a hit under
//!   the owner's current version carries the current `L`.
//! - `V` is read *before* the page is loaded. A message committed after that read moves a
//!   version in `V` before it is acknowledged, and versions never repeat, so the hit check (or
//!   the store) sees the difference. A message committed before that read is in the page.
//! - So a page served at a hit reflects every write acknowledged before the request started:
//!   owner-row writes by the owner stamp, `channel_view` writes by the channel versions.
//!
//! An owner with no channel in read diffusion (`L` empty) costs what it did before: no channel
//! call on a hit or a miss. Channel versions include the global version, so
//! [`ListCache::invalidate_all`] retires them too.
//!
//! Loads that took longer than [`ListCache::max_load`] are not stored either: the rule does not
//! need it, but such a page is likely outdated by the time it would be stored.
//!
//! ## Port contract ([`ListCache`])
//! - `lookup`, `store` and `channel_versions` never fail: an unreachable cache answers
//!   [`Lookup::Unavailable`] (or `None`) and refuses stores, and the caller reads the database.
//! - `channel_versions` creates a missing version (at a value never used before, like an owner's
//!   version at a look-up), in the same atomic step that reads it, so a page is only ever
//!   recorded against versions that exist.
//! - `invalidate`, `invalidate_channels` and `invalidate_all` never fail either, and **return
//!   only once their effect is visible to every process** sharing the cache: the owners' (or
//!   channels') versions moved on, or — when that failed — something that retires at least as
//!   much (the Redis adapter removes the global version, retiring every page and every stamp).
//!   - *Who retries:* the cache, for as long as it takes (while the cache is unreachable, the
//!     call waits). Callers never retry and never time the call out to acknowledge anyway.
//!   - *When progress may advance:* only after the call returned. The writer calls it after its
//!     commit and acknowledges after it: the HTTP answer in `dual_write`; the next batch of a
//!     projector or outbox worker (whose rows and watermark are committed already: nothing is
//!     lost, the worker only waits); the end of a CLI repair or rebuild (the process exits after).
//!   - A caller that is dropped while waiting (a request whose client hung up) does not cancel
//!     the repair: the cache finishes it on its own.
//! - `invalidate_all` drops every page (used after a rebuild or a repair rewrote the read side).
//! - Versions never repeat (above), owners' and channels' alike.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rows::{ChannelId, UserId};

/// A boxed future, so that the port can be used as `dyn ListCache`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The version of one owner's list a reader saw before loading; opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp(pub String);

/// The versions of an owner's read-diffusion channels as they were read before a page was
/// loaded: `(channel, version)` pairs, versions opaque. Empty when the owner has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ChannelStamps(pub Vec<(ChannelId, String)>);

impl ChannelStamps {
    /// The channels, in the order they were recorded.
    pub fn channels(&self) -> Vec<ChannelId> {
        self.0.iter().map(|(c, _)| *c).collect()
    }

    /// Whether `current` (the versions of [`ChannelStamps::channels`] now, in that order) are
    /// the recorded ones.
    pub fn unchanged(&self, current: &[String]) -> bool {
        self.0.len() == current.len() && self.0.iter().zip(current).all(|((_, v), c)| v == c)
    }
}

/// A page found under the owner's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub page: String,
    /// The owner's current stamp (the one the page was stored under): taken before anything is
    /// loaded, so a page loaded after a failed channel check may be stored under it.
    pub stamp: Stamp,
    /// The channel versions the page was loaded against; it is current only if they still are.
    pub channels: ChannelStamps,
}

/// What a look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A page stored under the owner's current version. Current only if its channel versions
    /// are too: [`read_through`] checks them.
    Hit(Cached),
    /// Nothing current; a page loaded now may be stored under this stamp.
    Miss(Stamp),
    /// The cache cannot be used now (unreachable, disabled, or untrusted after a lost
    /// invalidation): read the database and store nothing.
    Unavailable,
}

impl Lookup {
    /// The page of a hit (before its channel check), for tests and diagnostics.
    pub fn page(&self) -> Option<&str> {
        match self {
            Lookup::Hit(c) => Some(&c.page),
            _ => None,
        }
    }
}

/// Where first pages of conversation lists are cached. See the module docs for the contract.
pub trait ListCache: Send + Sync + std::fmt::Debug + 'static {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup>;
    /// Stores `page`, recorded against `channels`, if the owner's version still is `stamp` and
    /// every channel's version still is the recorded one; returns whether it did.
    fn store(
        &self,
        owner: UserId,
        limit: i64,
        stamp: Stamp,
        channels: ChannelStamps,
        page: String,
    ) -> BoxFut<'_, bool>;
    /// The current versions of `channels`, in their order, each created (at a value never used
    /// before) if missing; `None` when the cache cannot be used now.
    fn channel_versions<'a>(&'a self, channels: &'a [ChannelId])
        -> BoxFut<'a, Option<Vec<String>>>;
    /// Moves the version of every owner in `owners` on; returns once every process sees that (or
    /// more: every page retired), retrying as long as it takes. See the module docs.
    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()>;
    /// Moves the version of every channel in `channels` on; returns as
    /// [`ListCache::invalidate`] does. Called by whoever wrote those channels' `channel_view`
    /// rows, after commit and before acknowledging.
    fn invalidate_channels<'a>(&'a self, channels: &'a [ChannelId]) -> BoxFut<'a, ()>;
    /// Moves every owner's and every channel's version on; returns as [`ListCache::invalidate`]
    /// does.
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
    /// Loaded from the database, not stored (a version moved, load too slow, or store failed).
    NotStored,
    /// Loaded from the database without consulting the cache (or with a cache that became
    /// unusable before the page could be checked or recorded).
    Bypassed,
}

/// Serves `owner`'s first page from `cache`, or loads it with `load` and stores it under the stamp
/// and channel versions seen before loading. `channels` yields the owner's channels in read
/// diffusion (`Store::read_fanout_channels`); it is called only on a miss. See the module docs.
pub async fn read_through<C, CFut, F, Fut, E>(
    cache: &dyn ListCache,
    owner: UserId,
    limit: i64,
    channels: C,
    load: F,
) -> Result<(String, Source), E>
where
    C: FnOnce() -> CFut,
    CFut: Future<Output = Result<Vec<ChannelId>, E>>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<String, E>>,
{
    let stamp = match cache.lookup(owner, limit).await {
        Lookup::Hit(found) => {
            if found.channels.0.is_empty() {
                return Ok((found.page, Source::Cache));
            }
            match cache.channel_versions(&found.channels.channels()).await {
                Some(now) if found.channels.unchanged(&now) => {
                    return Ok((found.page, Source::Cache));
                }
                // A channel moved since the page's versions were read: a miss, under the stamp
                // the look-up just confirmed as current.
                Some(_) => found.stamp,
                None => return Ok((load().await?, Source::Bypassed)),
            }
        }
        Lookup::Miss(stamp) => stamp,
        Lookup::Unavailable => return Ok((load().await?, Source::Bypassed)),
    };
    // Channels first, then their versions, then the page: the order the rule depends on.
    let list = channels().await?;
    let recorded = if list.is_empty() {
        ChannelStamps::default()
    } else {
        match cache.channel_versions(&list).await {
            Some(v) if v.len() == list.len() => ChannelStamps(list.into_iter().zip(v).collect()),
            // Versions that cannot be read cannot be recorded: nothing may be stored.
            _ => return Ok((load().await?, Source::Bypassed)),
        }
    };
    let started = Instant::now();
    let page = load().await?;
    if started.elapsed() >= cache.max_load() {
        return Ok((page, Source::NotStored));
    }
    let stored = cache
        .store(owner, limit, stamp, recorded, page.clone())
        .await;
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
    fn store(&self, _: UserId, _: i64, _: Stamp, _: ChannelStamps, _: String) -> BoxFut<'_, bool> {
        Box::pin(async { false })
    }
    fn channel_versions<'a>(&'a self, _: &'a [ChannelId]) -> BoxFut<'a, Option<Vec<String>>> {
        Box::pin(async { None })
    }
    fn invalidate<'a>(&'a self, _: &'a [UserId]) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
    fn invalidate_channels<'a>(&'a self, _: &'a [ChannelId]) -> BoxFut<'a, ()> {
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
    channels: HashMap<ChannelId, u64>,
    /// Per (owner, limit): the stamp and channel versions a page was stored under, and the page.
    pages: HashMap<(UserId, i64), (String, ChannelStamps, String)>,
}

impl MemoryState {
    fn stamp(&self, owner: UserId) -> String {
        format!(
            "{}:{}",
            self.epoch,
            self.versions.get(&owner).copied().unwrap_or(0)
        )
    }

    /// A channel's version; a counter that starts at 0 exists for every channel, so nothing
    /// needs creating. Distinct from owner stamps by its `c` only for readability.
    fn channel_stamp(&self, channel: ChannelId) -> String {
        format!(
            "{}:c{}",
            self.epoch,
            self.channels.get(&channel).copied().unwrap_or(0)
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
                Some((at, channels, page)) if *at == stamp => Lookup::Hit(Cached {
                    page: page.clone(),
                    stamp: Stamp(stamp),
                    channels: channels.clone(),
                }),
                _ => Lookup::Miss(Stamp(stamp)),
            }
        });
        Box::pin(async move { found })
    }
    fn store(
        &self,
        owner: UserId,
        limit: i64,
        stamp: Stamp,
        channels: ChannelStamps,
        page: String,
    ) -> BoxFut<'_, bool> {
        let stored = self.with(|s| {
            if s.stamp(owner) != stamp.0
                || channels.0.iter().any(|(c, v)| s.channel_stamp(*c) != *v)
            {
                return false;
            }
            s.pages.insert((owner, limit), (stamp.0, channels, page));
            true
        });
        Box::pin(async move { stored })
    }
    fn channel_versions<'a>(
        &'a self,
        channels: &'a [ChannelId],
    ) -> BoxFut<'a, Option<Vec<String>>> {
        let v = self.with(|s| channels.iter().map(|c| s.channel_stamp(*c)).collect());
        Box::pin(async move { Some(v) })
    }
    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
        self.with(|s| {
            for o in owners {
                *s.versions.entry(*o).or_insert(0) += 1;
            }
        });
        Box::pin(async {})
    }
    fn invalidate_channels<'a>(&'a self, channels: &'a [ChannelId]) -> BoxFut<'a, ()> {
        self.with(|s| {
            for c in channels {
                *s.channels.entry(*c).or_insert(0) += 1;
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

    /// An owner with no channel in read diffusion.
    async fn none<E>() -> Result<Vec<ChannelId>, E> {
        Ok(Vec::new())
    }

    fn these(cs: &[ChannelId]) -> impl Future<Output = Result<Vec<ChannelId>, ()>> {
        let cs = cs.to_vec();
        async move { Ok(cs) }
    }

    #[test]
    fn second_read_is_a_hit() {
        let c = MemoryCache::default();
        let (p, src) = run(read_through(&c, 1, 20, none, || page("a"))).unwrap();
        assert_eq!((p.as_str(), src), ("a", Source::Stored));
        let (p, src) = run(read_through(&c, 1, 20, none, || page("b"))).unwrap();
        assert_eq!((p.as_str(), src), ("a", Source::Cache));
        // Another limit is another page.
        let (_, src) = run(read_through(&c, 1, 10, none, || page("c"))).unwrap();
        assert_eq!(src, Source::Stored);
    }

    #[test]
    fn invalidation_during_the_load_drops_the_stale_page() {
        let c = MemoryCache::default();
        let invalidated = Cell::new(false);
        let (p, src) = run(read_through(&c, 7, 20, none, || {
            // The write commits and invalidates while this reader is loading.
            run(c.invalidate(&[7]));
            invalidated.set(true);
            page("stale")
        }))
        .unwrap();
        assert!(invalidated.get());
        assert_eq!((p.as_str(), src), ("stale", Source::NotStored));
        let (p, src) = run(read_through(&c, 7, 20, none, || page("fresh"))).unwrap();
        assert_eq!((p.as_str(), src), ("fresh", Source::Stored));
    }

    #[test]
    fn invalidation_reaches_only_its_owners_and_all_reaches_everyone() {
        let c = MemoryCache::default();
        run(read_through(&c, 1, 20, none, || page("one"))).unwrap();
        run(read_through(&c, 2, 20, none, || page("two"))).unwrap();
        run(c.invalidate(&[1]));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
        assert_eq!(run(c.lookup(2, 20)).page(), Some("two"));
        run(c.invalidate_all());
        assert!(matches!(run(c.lookup(2, 20)), Lookup::Miss(_)));
    }

    #[test]
    fn no_cache_always_loads() {
        let (p, src) = run(read_through(&NoCache, 1, 20, none, || page("x"))).unwrap();
        assert_eq!((p.as_str(), src), ("x", Source::Bypassed));
    }

    #[test]
    fn load_errors_pass_through_and_store_nothing() {
        let c = MemoryCache::default();
        let r: Result<_, &str> = run(read_through(&c, 1, 20, none, || async { Err("db down") }));
        assert_eq!(r, Err("db down"));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
    }

    /// A [`MemoryCache`] that counts channel calls and can make them unavailable.
    #[derive(Debug, Default)]
    struct Probe {
        inner: MemoryCache,
        channel_calls: std::sync::atomic::AtomicUsize,
        channels_down: std::sync::atomic::AtomicBool,
    }

    impl ListCache for Probe {
        fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
            self.inner.lookup(owner, limit)
        }
        fn store(
            &self,
            owner: UserId,
            limit: i64,
            stamp: Stamp,
            channels: ChannelStamps,
            page: String,
        ) -> BoxFut<'_, bool> {
            self.inner.store(owner, limit, stamp, channels, page)
        }
        fn channel_versions<'a>(
            &'a self,
            channels: &'a [ChannelId],
        ) -> BoxFut<'a, Option<Vec<String>>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.channel_calls.fetch_add(1, SeqCst);
            if self.channels_down.load(SeqCst) {
                return Box::pin(async { None });
            }
            self.inner.channel_versions(channels)
        }
        fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
            self.inner.invalidate(owners)
        }
        fn invalidate_channels<'a>(&'a self, channels: &'a [ChannelId]) -> BoxFut<'a, ()> {
            self.inner.invalidate_channels(channels)
        }
        fn invalidate_all(&self) -> BoxFut<'_, ()> {
            self.inner.invalidate_all()
        }
        fn max_load(&self) -> Duration {
            self.inner.max_load()
        }
    }

    impl Probe {
        fn channel_calls(&self) -> usize {
            self.channel_calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn a_channel_invalidated_after_the_store_makes_the_next_read_a_miss() {
        let c = MemoryCache::default();
        let (_, src) = run(read_through(&c, 1, 20, || these(&[100, 200]), || page("a"))).unwrap();
        assert_eq!(src, Source::Stored);
        // The channel list is only asked for on a miss.
        let asked = Cell::new(false);
        let (p, src) = run(read_through(
            &c,
            1,
            20,
            || {
                asked.set(true);
                these(&[100, 200])
            },
            || page("b"),
        ))
        .unwrap();
        assert_eq!((p.as_str(), src, asked.get()), ("a", Source::Cache, false));
        // A message into channel 200 commits and its version moves (nothing of owner 1 does).
        run(c.invalidate_channels(&[200]));
        assert_eq!(
            run(c.lookup(1, 20)).page(),
            Some("a"),
            "the owner's stamp still matches"
        );
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100, 200]), || page("b"))).unwrap();
        assert_eq!((p.as_str(), src), ("b", Source::Stored));
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100, 200]), || page("c"))).unwrap();
        assert_eq!((p.as_str(), src), ("b", Source::Cache));
        // Channels the page was not loaded against do not matter.
        run(c.invalidate_channels(&[300]));
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100, 200]), || page("d"))).unwrap();
        assert_eq!((p.as_str(), src), ("b", Source::Cache));
    }

    #[test]
    fn a_channel_moved_between_reading_its_version_and_storing_is_caught() {
        let c = MemoryCache::default();
        let (p, src) = run(read_through(
            &c,
            1,
            20,
            || these(&[100]),
            || {
                // The page is loaded after the versions were read; a message commits and
                // invalidates its channel meanwhile.
                run(c.invalidate_channels(&[100]));
                page("stale")
            },
        ))
        .unwrap();
        assert_eq!((p.as_str(), src), ("stale", Source::NotStored));
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100]), || page("fresh"))).unwrap();
        assert_eq!((p.as_str(), src), ("fresh", Source::Stored));
        // Had the store not checked, the hit check would have: a page recorded against the old
        // version is never served.
        let Lookup::Miss(stamp) = run(c.lookup(2, 20)) else {
            panic!("owner 2 has nothing cached");
        };
        let old = ChannelStamps(vec![(
            100,
            run(c.channel_versions(&[100])).unwrap()[0].clone(),
        )]);
        run(c.invalidate_channels(&[100]));
        assert!(!run(c.store(2, 20, stamp, old, "stale".into())));
    }

    #[test]
    fn invalidate_all_retires_channel_versions_too() {
        let c = MemoryCache::default();
        let before = run(c.channel_versions(&[100, 200])).unwrap();
        run(c.invalidate_all());
        let after = run(c.channel_versions(&[100, 200])).unwrap();
        assert!(before.iter().zip(&after).all(|(b, a)| b != a));
    }

    #[test]
    fn no_channels_costs_no_channel_call() {
        let c = Probe::default();
        let (_, src) = run(read_through(&c, 1, 20, none, || page("a"))).unwrap();
        assert_eq!(src, Source::Stored);
        let (p, src) = run(read_through(&c, 1, 20, none, || page("b"))).unwrap();
        assert_eq!((p.as_str(), src), ("a", Source::Cache));
        run(c.invalidate(&[1]));
        let (p, src) = run(read_through(&c, 1, 20, none, || page("c"))).unwrap();
        assert_eq!((p.as_str(), src), ("c", Source::Stored));
        assert_eq!(c.channel_calls(), 0);
    }

    #[test]
    fn unreadable_channel_versions_serve_and_store_nothing_from_the_cache() {
        use std::sync::atomic::Ordering::SeqCst;
        let c = Probe::default();
        run(read_through(&c, 1, 20, || these(&[100]), || page("a"))).unwrap();
        c.channels_down.store(true, SeqCst);
        // The page cannot be checked: it is not served.
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100]), || page("b"))).unwrap();
        assert_eq!((p.as_str(), src), ("b", Source::Bypassed));
        // Nor can a new page be recorded.
        run(c.invalidate(&[1]));
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100]), || page("c"))).unwrap();
        assert_eq!((p.as_str(), src), ("c", Source::Bypassed));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
        c.channels_down.store(false, SeqCst);
        let (p, src) = run(read_through(&c, 1, 20, || these(&[100]), || page("d"))).unwrap();
        assert_eq!((p.as_str(), src), ("d", Source::Stored));
    }

    #[test]
    fn channel_list_errors_pass_through_and_store_nothing() {
        let c = MemoryCache::default();
        let r: Result<_, &str> = run(read_through(
            &c,
            1,
            20,
            || async { Err("db down") },
            || async { Ok("never loaded".to_owned()) },
        ));
        assert_eq!(r, Err("db down"));
        assert!(matches!(run(c.lookup(1, 20)), Lookup::Miss(_)));
    }
}
