//! The Redis adapter against a real Redis, where its contract meets Redis's own behaviour:
//!
//! - versions never repeat for an owner: a stamp taken before the owner's version entry expired,
//!   or before Redis lost every key (a restarted cache-only Redis, eviction), is never accepted
//!   again, whatever invalidations come after;
//! - a failed invalidation (a private Redis away, then back with its data, as one with
//!   persistence or after a failover is: the invalidation is lost) returns only once no process
//!   can be served the page it should have retired — also when the invalidating process never
//!   looks anything up (a projector), exits right after (the CLI), or its caller gave up waiting
//!   (a cancelled request); and one that times out (Redis frozen with SIGSTOP) waits too;
//! - channel versions (read diffusion): created once, recorded with a page, and retired by
//!   `invalidate_channels`, by expiry and by `invalidate_all`; a failed channel invalidation is
//!   made good like an owner's.
//!
//! Each test uses a key prefix of its own on the shared Redis (`HERMET_REDIS_URL`, from
//! `eval "$(scripts/services.sh env)"`), or a private `redis-server` it starts and stops itself.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_core::cache::{ChannelStamps, ListCache, Lookup};
use hermet_redis::{RedisCacheConfig, RedisListCache};
use hermet_testkit::eventually;
use hermet_testkit::signal::{self, Signal};

const WAIT: Duration = Duration::from_secs(30);
/// How long a test keeps its private Redis away: several failed calls and retries.
const AWAY_FOR: Duration = Duration::from_millis(800);

fn redis_url() -> String {
    std::env::var("HERMET_REDIS_URL").unwrap_or_else(|_| {
        panic!("HERMET_REDIS_URL is not set: run `eval \"$(scripts/services.sh env)\"` first")
    })
}

fn cfg(url: String) -> RedisCacheConfig {
    RedisCacheConfig {
        url,
        prefix: format!("hermet_test_{:016x}", rand::random::<u64>()),
        // Long: nothing in these tests may pass because a page or a version expired by itself.
        ttl: Duration::from_secs(600),
        timeout: Duration::from_millis(100),
        retry_after: Duration::from_millis(100),
    }
}

fn cache(cfg: &RedisCacheConfig) -> RedisListCache {
    RedisListCache::new(cfg).expect("cache config")
}

/// The owner's hash, as the module docs of `hermet_redis` lay the keys out.
fn owner_key(cfg: &RedisCacheConfig, owner: i64) -> String {
    format!("{}:cl:u:{owner}", cfg.prefix)
}

fn epoch_key(cfg: &RedisCacheConfig) -> String {
    format!("{}:cl:epoch", cfg.prefix)
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Makes `key` expire now, as its TTL running out would, and waits until Redis has dropped it.
async fn expire_now(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(1)
        .query_async(conn)
        .await
        .expect("PEXPIRE");
    eventually(format!("{key} expires"), WAIT, async || {
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(conn)
            .await
            .expect("EXISTS");
        n == 0
    })
    .await
}

#[tokio::test]
async fn a_stamp_taken_before_the_version_expired_is_refused_after_a_new_invalidation() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let mut conn = raw(&cfg.url).await;
    // The owner's version has been moved on once (a first write).
    c.invalidate(&[7]).await;
    // A reader stamps, and starts loading the page.
    let Lookup::Miss(stamp) = c.lookup(7, 20).await else {
        panic!("nothing cached yet");
    };
    // The owner's version entry runs out of time just then...
    expire_now(&mut conn, &owner_key(&cfg, 7)).await;
    // ...and a write commits and invalidates the owner before the reader stores.
    c.invalidate(&[7]).await;
    // The reader's page was loaded before that write: it must not be stored.
    assert!(
        !c.store(
            7,
            20,
            stamp,
            ChannelStamps::default(),
            "loaded before the write".into()
        )
        .await,
        "a page stamped before the version expired was stored after a later invalidation"
    );
    assert!(matches!(c.lookup(7, 20).await, Lookup::Miss(_)));
}

#[tokio::test]
async fn a_stamp_taken_before_redis_lost_every_key_is_refused() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let mut conn = raw(&cfg.url).await;
    // A reader stamps against an owner nobody has written to yet, and starts loading.
    let Lookup::Miss(stamp) = c.lookup(8, 20).await else {
        panic!("nothing cached yet");
    };
    // A write commits and invalidates the owner...
    c.invalidate(&[8]).await;
    // ...then the cache loses every key (a cache-only Redis restarted empty, or evicted them).
    for key in [owner_key(&cfg, 8), epoch_key(&cfg)] {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    assert!(
        !c.store(
            8,
            20,
            stamp,
            ChannelStamps::default(),
            "loaded before the write".into()
        )
        .await,
        "a page stamped before Redis lost its keys was stored"
    );
    assert!(matches!(c.lookup(8, 20).await, Lookup::Miss(_)));
}

fn channel_key(cfg: &RedisCacheConfig, channel: i64) -> String {
    format!("{}:cl:c:{channel}", cfg.prefix)
}

/// Stores a page of `owner` recorded against `channels`, as `read_through` does on a miss.
async fn store_with_channels(c: &RedisListCache, owner: i64, channels: &[i64], page: &str) {
    let Lookup::Miss(stamp) = c.lookup(owner, 20).await else {
        panic!("nothing cached yet");
    };
    let versions = c.channel_versions(channels).await.expect("redis is up");
    let recorded = ChannelStamps(channels.iter().copied().zip(versions).collect());
    assert!(c.store(owner, 20, stamp, recorded, page.into()).await);
}

/// The page of a hit whose channel versions are all current (what `read_through` would serve).
async fn served(c: &RedisListCache, owner: i64) -> Option<String> {
    let Lookup::Hit(found) = c.lookup(owner, 20).await else {
        return None;
    };
    let now = c
        .channel_versions(&found.channels.channels())
        .await
        .expect("redis is up");
    found.channels.unchanged(&now).then_some(found.page)
}

#[tokio::test]
async fn channel_versions_are_created_once_and_recorded_with_the_page() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let first = c.channel_versions(&[10, 11]).await.expect("redis is up");
    assert_eq!(first.len(), 2);
    assert_ne!(first[0], first[1], "each channel has a version of its own");
    // Reading again creates nothing new.
    assert_eq!(
        c.channel_versions(&[11, 10]).await.unwrap(),
        vec![first[1].clone(), first[0].clone()]
    );
    assert_eq!(c.channel_versions(&[]).await, Some(Vec::new()));

    store_with_channels(&c, 1, &[10, 11], "page").await;
    let Lookup::Hit(found) = c.lookup(1, 20).await else {
        panic!("the page was stored");
    };
    assert_eq!(
        found.channels,
        ChannelStamps(vec![(10, first[0].clone()), (11, first[1].clone())])
    );
    assert_eq!(served(&c, 1).await.as_deref(), Some("page"));
    // A page recorded against no channel still is one.
    store_with_channels(&c, 2, &[], "no channels").await;
    assert_eq!(served(&c, 2).await.as_deref(), Some("no channels"));
}

#[tokio::test]
async fn invalidate_channels_retires_the_pages_recorded_against_them() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let other = cache(&cfg); // another process sharing the cache
    store_with_channels(&c, 1, &[10, 11], "one").await;
    store_with_channels(&c, 2, &[12], "two").await;
    let before = c.channel_versions(&[11]).await.unwrap();

    other.invalidate_channels(&[11]).await;
    assert!(
        served(&c, 1).await.is_none(),
        "a page recorded against channel 11 was served"
    );
    assert_eq!(served(&c, 2).await.as_deref(), Some("two"));
    // The owner's stamp did not move; a page stored under it against the new version is served.
    let after = c.channel_versions(&[11]).await.unwrap();
    assert_ne!(before, after, "the channel's version moved on");
    let Lookup::Hit(found) = c.lookup(1, 20).await else {
        panic!("the owner's version did not move");
    };
    // A store recorded against the version from before the invalidation is refused.
    let stale = ChannelStamps(vec![
        (10, found.channels.0[0].1.clone()),
        (11, before[0].clone()),
    ]);
    assert!(
        !c.store(1, 20, found.stamp.clone(), stale, "stale".into())
            .await
    );
    let versions = c.channel_versions(&[10, 11]).await.unwrap();
    let fresh = ChannelStamps(vec![(10, versions[0].clone()), (11, versions[1].clone())]);
    assert!(c.store(1, 20, found.stamp, fresh, "fresh".into()).await);
    assert_eq!(served(&other, 1).await.as_deref(), Some("fresh"));
}

#[tokio::test]
async fn a_channel_version_that_expired_never_matches_again() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let mut conn = raw(&cfg.url).await;
    store_with_channels(&c, 1, &[10], "page").await;
    // The channel's version runs out of time (or is evicted, or Redis restarted without it).
    expire_now(&mut conn, &channel_key(&cfg, 10)).await;
    assert!(served(&c, 1).await.is_none());
}

#[tokio::test]
async fn invalidate_all_retires_channel_versions() {
    let cfg = cfg(redis_url());
    let c = cache(&cfg);
    let before = c.channel_versions(&[10]).await.unwrap();
    // A reader read the version and is loading for owner 1 (its owner stamp is taken too).
    let Lookup::Miss(stamp) = c.lookup(1, 20).await else {
        panic!("nothing cached yet");
    };
    c.invalidate_all().await;
    let after = c.channel_versions(&[10]).await.unwrap();
    assert_ne!(before, after, "a channel version survived invalidate_all");
    assert!(
        !c.store(
            1,
            20,
            stamp,
            ChannelStamps(vec![(10, before[0].clone())]),
            "stale".into()
        )
        .await
    );
}

/// A `redis-server` of the test's own, on a port and in a directory of its own, that the test
/// can take away and bring back with its data (as a Redis with persistence, or a failover that
/// kept the data, comes back: commands sent meanwhile are lost), or freeze (SIGSTOP: calls time
/// out) and thaw.
struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let dir = std::env::temp_dir().join(format!(
            "hermet-redis-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = PrivateRedis {
            port,
            dir,
            child: None,
            frozen: false,
        };
        r.come_back().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with whatever `go_away_keeping_data` saved.
    async fn come_back(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/install-deps.sh)");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server starts", WAIT, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
        })
        .await;
    }

    async fn go_away_keeping_data(&mut self) {
        let mut c = raw(&self.url()).await;
        let () = redis::cmd("SAVE").query_async(&mut c).await.expect("SAVE");
        self.kill();
    }

    fn signal(&self, sig: Signal) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| signal::process(c.id(), sig).is_ok())
    }

    fn freeze(&mut self) {
        assert!(self.signal(Signal::Stop), "SIGSTOP redis-server");
        self.frozen = true;
    }

    fn thaw(&mut self) {
        assert!(self.signal(Signal::Cont), "SIGCONT redis-server");
        self.frozen = false;
    }

    fn kill(&mut self) {
        if self.frozen {
            self.signal(Signal::Cont);
            self.frozen = false;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An API process (`api`) has a page of owner 5 cached; another process's cache (`writer`),
/// sharing the prefix, has been in use (its connection is up). Both talk to `redis`.
async fn cached_page(redis: &PrivateRedis) -> (RedisListCache, Arc<RedisListCache>) {
    let cfg = cfg(redis.url());
    let api = cache(&cfg);
    let writer = Arc::new(cache(&cfg));
    writer.invalidate(&[99]).await;
    let Lookup::Miss(stamp) = api.lookup(5, 20).await else {
        panic!("nothing cached yet");
    };
    assert!(
        api.store(
            5,
            20,
            stamp,
            ChannelStamps::default(),
            "before the write".into()
        )
        .await
    );
    assert_eq!(api.lookup(5, 20).await.page(), Some("before the write"));
    (api, writer)
}

/// What `api` answers for owner 5 once it uses Redis again after an outage.
async fn lookup_when_back(api: &RedisListCache) -> Lookup {
    eventually("the cache comes back", WAIT, async || {
        match api.lookup(5, 20).await {
            Lookup::Unavailable => None,
            found => Some(found),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_returns_only_once_no_process_can_serve_the_stale_page() {
    let mut redis = PrivateRedis::start().await;
    let (api, writer) = cached_page(&redis).await;

    // The writer (a projector: it never looks anything up) commits a change of owner 5 and
    // invalidates while Redis is away.
    redis.go_away_keeping_data().await;
    let started = Instant::now();
    let invalidation = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.invalidate(&[5]).await })
    };
    tokio::time::sleep(AWAY_FOR).await;
    let returned_while_away = invalidation.is_finished();
    redis.come_back().await;
    tokio::time::timeout(WAIT, invalidation)
        .await
        .expect("the invalidation returns once Redis is back")
        .expect("invalidation task");
    let waited = started.elapsed();

    // The writer acknowledges now (moves its progress on): the API process must not serve the
    // page from before the write, now or later.
    let found = lookup_when_back(&api).await;
    assert!(
        matches!(found, Lookup::Miss(_)),
        "another process served the page a failed invalidation should have retired: {found:?}"
    );
    assert!(
        !returned_while_away && waited >= AWAY_FOR,
        "the invalidation returned while Redis could not take it (returned while away: \
         {returned_while_away}, waited {waited:?})"
    );
    // And the cache works again for everyone.
    let Lookup::Miss(stamp) = api.lookup(5, 20).await else {
        panic!("the retired page is still served");
    };
    assert!(
        api.store(
            5,
            20,
            stamp,
            ChannelStamps::default(),
            "after the write".into()
        )
        .await
    );
    assert_eq!(writer.lookup(5, 20).await.page(), Some("after the write"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidate_all_lands_before_a_short_lived_process_exits() {
    let mut redis = PrivateRedis::start().await;
    let (api, cli) = cached_page(&redis).await;

    // The CLI repairs or rebuilds the read side, retires every page, and exits.
    redis.go_away_keeping_data().await;
    let back_later = async {
        tokio::time::sleep(AWAY_FOR).await;
        redis.come_back().await;
    };
    let started = Instant::now();
    let ((), ()) = tokio::join!(cli.invalidate_all(), back_later);
    let waited = started.elapsed();
    drop(cli);

    let found = lookup_when_back(&api).await;
    assert!(
        matches!(found, Lookup::Miss(_)),
        "a page from before the rebuild is served after the CLI exited: {found:?}"
    );
    assert!(
        waited >= AWAY_FOR,
        "invalidate_all returned after {waited:?}, before Redis could take it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_whose_caller_gave_up_still_lands() {
    let mut redis = PrivateRedis::start().await;
    let (api, writer) = cached_page(&redis).await;

    // A command invalidates while Redis is away, and its client hangs up: the request's future
    // (and so the invalidation call) is dropped.
    redis.go_away_keeping_data().await;
    let invalidation = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.invalidate(&[5]).await })
    };
    tokio::time::sleep(AWAY_FOR).await;
    invalidation.abort();
    let _ = invalidation.await;
    redis.come_back().await;

    // Nothing acknowledged that write, but its change is committed: the page from before it
    // must go as soon as Redis is back, not when it expires.
    eventually(
        "the page a dropped invalidation should have retired is no longer served",
        WAIT,
        async || lookup_when_back(&api).await.page() != Some("before the write"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_times_out_waits_for_redis() {
    let mut redis = PrivateRedis::start().await;
    let (api, writer) = cached_page(&redis).await;

    // Redis stops answering (its process frozen): the writer's calls time out.
    redis.freeze();
    let started = Instant::now();
    let invalidation = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.invalidate(&[5]).await })
    };
    tokio::time::sleep(AWAY_FOR).await;
    let returned_while_frozen = invalidation.is_finished();
    redis.thaw();
    tokio::time::timeout(WAIT, invalidation)
        .await
        .expect("the invalidation returns once Redis answers")
        .expect("invalidation task");
    let waited = started.elapsed();
    assert!(
        !returned_while_frozen && waited >= AWAY_FOR,
        "the invalidation returned while Redis could not take it (returned while frozen: \
         {returned_while_frozen}, waited {waited:?})"
    );
    let found = lookup_when_back(&api).await;
    assert!(matches!(found, Lookup::Miss(_)), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_channel_invalidation_returns_only_once_no_process_can_serve_the_stale_page() {
    let mut redis = PrivateRedis::start().await;
    let cfg = cfg(redis.url());
    let api = cache(&cfg);
    let writer = Arc::new(cache(&cfg));
    writer.invalidate(&[99]).await;
    store_with_channels(&api, 5, &[40], "before the message").await;
    assert_eq!(served(&api, 5).await.as_deref(), Some("before the message"));

    // A message into channel 40 (read diffusion) commits; its writer invalidates the channel
    // while Redis is away.
    redis.go_away_keeping_data().await;
    let started = Instant::now();
    let invalidation = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.invalidate_channels(&[40]).await })
    };
    tokio::time::sleep(AWAY_FOR).await;
    let returned_while_away = invalidation.is_finished();
    redis.come_back().await;
    tokio::time::timeout(WAIT, invalidation)
        .await
        .expect("the invalidation returns once Redis is back")
        .expect("invalidation task");
    let waited = started.elapsed();
    assert!(
        !returned_while_away && waited >= AWAY_FOR,
        "the channel invalidation returned while Redis could not take it (returned while away: \
         {returned_while_away}, waited {waited:?})"
    );
    // The page recorded against the channel's old version is not served by any process: the
    // epoch is gone, so the owner's stamp and the channel's version have both moved on.
    let found = lookup_when_back(&api).await;
    assert!(
        matches!(found, Lookup::Miss(_)),
        "another process served the page a failed channel invalidation should have retired: \
         {found:?}"
    );
    eventually("the cache comes back", WAIT, async || {
        writer.channel_versions(&[40]).await.is_some()
    })
    .await;
    store_with_channels(&api, 5, &[40], "after the message").await;
    assert_eq!(
        served(&writer, 5).await.as_deref(),
        Some("after the message")
    );
}
