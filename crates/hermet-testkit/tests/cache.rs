//! The conversation-list cache against a real Redis (issue 6):
//!
//! - the adapter's contract (`hermet_core::cache`): miss, store, hit; an invalidation retires a
//!   page, and a page loaded before an invalidation is refused; `invalidate_all`; page sizes are
//!   separate;
//! - race: concurrent writers and readers over HTTP in `dual_write`, with stores held until a
//!   newer write was acknowledged; no reader ever gets a list older than a write acknowledged
//!   before its request, no such page is ever stored, and the test checks that the race happened
//!   (stale pages were offered, and refused);
//! - `async` mode: the outbox worker's invalidation retires a page cached before the write; when
//!   that invalidation fails (a private Redis away, back with its data), the worker waits instead
//!   of moving on, and the page is retired for the API process as soon as Redis is back;
//! - Redis down: a private `redis-server` is killed mid-run; reads keep answering correctly from
//!   PostgreSQL, a write waits for its invalidation; it is started again, the write is
//!   acknowledged and the cache resumes.
//!
//! Each test uses its own key prefix (or its own Redis) and its own database. Needs
//! `HERMET_DATABASE_URL` and `HERMET_REDIS_URL` (`eval "$(scripts/services.sh env)"`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_core::cache::{BoxFut, ChannelStamps, ListCache, Lookup, Stamp};
use hermet_core::projection::ProjectionConfig;
use hermet_core::rows::{ChannelId, UserId};
use hermet_projector::outbox;
use hermet_redis::{RedisCacheConfig, RedisListCache};
use hermet_store::{StoreConfig, SyncMode};
use hermet_testkit::{eventually, TestApp, TestDb, User};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(60);
/// The API's default page size: the page a plain `GET /v1/conversations` caches.
const PAGE: i64 = 50;

fn redis_url() -> String {
    std::env::var("HERMET_REDIS_URL").unwrap_or_else(|_| {
        panic!("HERMET_REDIS_URL is not set: run the tests with `make test`, which starts Redis")
    })
}

fn cache_cfg(url: String) -> RedisCacheConfig {
    RedisCacheConfig {
        url,
        prefix: format!("hermet_test_{:016x}", rand::random::<u64>()),
        ttl: Duration::from_secs(60),
        timeout: Duration::from_millis(200),
        retry_after: Duration::from_millis(200),
    }
}

fn redis_cache(url: String) -> Arc<RedisListCache> {
    Arc::new(RedisListCache::new(&cache_cfg(url)).expect("cache config"))
}

fn store_cfg(mode: SyncMode) -> StoreConfig {
    hermet_testkit::store_config(mode, 50)
}

/// The seq of the last message in `me`'s conversation `channel`, from the first page.
async fn listed_seq(app: &TestApp, me: &User, channel: i64) -> i64 {
    maybe_listed_seq(app, me, channel)
        .await
        .unwrap_or_else(|| panic!("conversation {channel} not listed"))
}

/// As [`listed_seq`], `None` while the conversation is not listed (yet).
async fn maybe_listed_seq(app: &TestApp, me: &User, channel: i64) -> Option<i64> {
    let r = app.get("/v1/conversations", me).await;
    assert_eq!(r.status, 200, "list: {:?}", r.body);
    let conv = r.body["conversations"]
        .as_array()?
        .iter()
        .find(|c| c["channel_id"] == channel)?;
    Some(conv["last_message"]["seq"].as_i64().unwrap_or(0))
}

async fn send_seq(app: &TestApp, from: &User, channel: i64, text: &str) -> i64 {
    app.send(from, channel, text).await.body["seq"]
        .as_i64()
        .expect("seq in the send answer")
}

#[tokio::test]
async fn redis_cache_keeps_its_contract() {
    let c = redis_cache(redis_url());
    let Lookup::Miss(s1) = c.lookup(1, 20).await else {
        panic!("empty cache must miss");
    };
    assert!(
        c.store(1, 20, s1.clone(), ChannelStamps::default(), "page-1".into())
            .await
    );
    assert_eq!(c.lookup(1, 20).await.page(), Some("page-1"));
    // Other page sizes and other owners are other pages.
    assert!(matches!(c.lookup(1, 10).await, Lookup::Miss(_)));
    assert!(matches!(c.lookup(2, 20).await, Lookup::Miss(_)));

    // A page loaded before an invalidation is refused after it.
    let Lookup::Miss(s2) = c.lookup(2, 20).await else {
        panic!("owner 2 has nothing cached");
    };
    c.invalidate(&[2, 3]).await;
    assert!(
        !c.store(2, 20, s2, ChannelStamps::default(), "stale".into())
            .await
    );
    assert!(matches!(c.lookup(2, 20).await, Lookup::Miss(_)));
    // Invalidating 2 and 3 left 1 alone.
    assert_eq!(c.lookup(1, 20).await.page(), Some("page-1"));
    c.invalidate(&[1]).await;
    let Lookup::Miss(s3) = c.lookup(1, 20).await else {
        panic!("invalidated page still served");
    };
    assert_ne!(s1, s3, "the stamp moved on");
    // The old stamp can no longer store.
    assert!(
        !c.store(1, 20, s1, ChannelStamps::default(), "older".into())
            .await
    );
    assert!(
        c.store(1, 20, s3, ChannelStamps::default(), "page-1b".into())
            .await
    );
    assert_eq!(c.lookup(1, 20).await.page(), Some("page-1b"));

    // `invalidate_all` retires every page and every stamp taken before it.
    let Lookup::Miss(s4) = c.lookup(4, 20).await else {
        panic!("owner 4 has nothing cached");
    };
    c.invalidate_all().await;
    assert!(matches!(c.lookup(1, 20).await, Lookup::Miss(_)));
    assert!(
        !c.store(4, 20, s4, ChannelStamps::default(), "stale".into())
            .await
    );

    // A second cache with another prefix shares nothing with this one.
    let other = redis_cache(redis_url());
    assert!(matches!(other.lookup(1, 20).await, Lookup::Miss(_)));
}

/// The seq of the last message of conversation `channel` in a cached page (the JSON body of
/// `GET /v1/conversations`); 0 when the conversation is not on the page.
fn page_seq(page: &str, channel: i64) -> i64 {
    let v: serde_json::Value = serde_json::from_str(page).expect("a cached page is JSON");
    v["conversations"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["channel_id"] == channel))
        .and_then(|c| c["last_message"]["seq"].as_i64())
        .unwrap_or(0)
}

/// A cache that stages the race the stamp rule is for: half of the stores are held until a
/// write newer than the page has been acknowledged (a slow reader between its database read and
/// its cache store), the others sleep a random while. Every store is classified by what was
/// acknowledged *before* it was offered: a page older than that must be refused.
#[derive(Debug)]
struct RacingStores {
    inner: Arc<RedisListCache>,
    /// The conversation the race is about (set once it exists).
    channel: AtomicI64,
    /// The highest seq of `channel` whose send was acknowledged.
    acked: Arc<AtomicI64>,
    /// Longest a store is held waiting for a newer acknowledged write.
    hold: Duration,
    max_delay_ms: u64,
    hits: AtomicUsize,
    /// Stores of a page older than an acknowledged write, refused (the race, handled).
    stale_refused: AtomicUsize,
    /// Stores of a page older than an acknowledged write, accepted (the bug).
    stale_stored: AtomicUsize,
}

impl ListCache for RacingStores {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
        Box::pin(async move {
            let l = self.inner.lookup(owner, limit).await;
            if matches!(l, Lookup::Hit(_)) {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            l
        })
    }
    fn store(
        &self,
        owner: UserId,
        limit: i64,
        stamp: Stamp,
        channels: ChannelStamps,
        page: String,
    ) -> BoxFut<'_, bool> {
        Box::pin(async move {
            let seq = page_seq(&page, self.channel.load(Ordering::SeqCst));
            if rand::random::<bool>() {
                let deadline = Instant::now() + self.hold;
                while self.acked.load(Ordering::SeqCst) <= seq && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                let ms = rand::thread_rng().gen_range(0..=self.max_delay_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            // Read before offering: whatever was acknowledged by now had its invalidation done.
            let acked = self.acked.load(Ordering::SeqCst);
            let stored = self.inner.store(owner, limit, stamp, channels, page).await;
            if seq < acked {
                let n = if stored {
                    &self.stale_stored
                } else {
                    &self.stale_refused
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            stored
        })
    }
    fn channel_versions<'a>(
        &'a self,
        channels: &'a [ChannelId],
    ) -> BoxFut<'a, Option<Vec<String>>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_get_a_list_older_than_an_acknowledged_write() {
    // The highest seq whose send was acknowledged; a reader reads it before its request.
    let acked = Arc::new(AtomicI64::new(0));
    let cache = Arc::new(RacingStores {
        inner: redis_cache(redis_url()),
        channel: AtomicI64::new(0),
        acked: acked.clone(),
        hold: Duration::from_millis(100),
        max_delay_ms: 30,
        hits: AtomicUsize::new(0),
        stale_refused: AtomicUsize::new(0),
        stale_stored: AtomicUsize::new(0),
    });
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::DualWrite))
        .with_cache(cache.clone());
    let app = Arc::new(TestApp::spawn_with(db, store).await);
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    cache.channel.store(channel, Ordering::SeqCst);

    const WRITERS: usize = 3;
    const SENDS: usize = 40;
    const READERS: usize = 6;
    let writing = Arc::new(AtomicUsize::new(WRITERS));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (app, a, acked, writing) = (app.clone(), a.clone(), acked.clone(), writing.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..SENDS {
                let seq = send_seq(&app, &a, channel, &format!("w{w} m{i}")).await;
                acked.fetch_max(seq, Ordering::SeqCst);
            }
            writing.fetch_sub(1, Ordering::SeqCst);
            0usize
        }));
    }
    for _ in 0..READERS {
        let (app, b, acked, writing) = (app.clone(), b.clone(), acked.clone(), writing.clone());
        tasks.push(tokio::spawn(async move {
            let mut reads = 0usize;
            while writing.load(Ordering::SeqCst) > 0 {
                let seen = acked.load(Ordering::SeqCst);
                let listed = listed_seq(&app, &b, channel).await;
                assert!(
                    listed >= seen,
                    "a reader got seq {listed} after seq {seen} was acknowledged"
                );
                reads += 1;
            }
            reads
        }));
    }
    let mut reads = 0;
    for t in tasks {
        reads += t.await.expect("task");
    }
    let total = (WRITERS * SENDS) as i64;
    assert_eq!(acked.load(Ordering::SeqCst), total);
    let stale_refused = cache.stale_refused.load(Ordering::Relaxed);
    let stale_stored = cache.stale_stored.load(Ordering::Relaxed);
    eprintln!(
        "race: {reads} reads during {total} sends; {} cache hits; {stale_refused} pages older \
         than an acknowledged write offered and refused, {stale_stored} stored",
        cache.hits.load(Ordering::Relaxed),
    );
    assert_eq!(
        stale_stored, 0,
        "pages older than an acknowledged write were stored"
    );
    // The race this test stages must have happened, or the assertions above proved nothing.
    assert!(
        stale_refused > 0,
        "no reader offered a page older than an acknowledged write: the race was not staged"
    );
    // Quiet now: the first read may store, the next ones are served from the cache, and all
    // show the last message.
    let before = cache.hits.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(listed_seq(&app, &b, channel).await, total);
    }
    assert!(
        cache.hits.load(Ordering::Relaxed) > before,
        "a quiet list is served from the cache"
    );
    app.db.assert_converged(&app.store).await;
}

/// An outbox worker in the test's process, with a cache of its own (as a projector process has).
struct Worker {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hermet_projector::ProjectorError>>,
}

impl Worker {
    fn spawn(app: &TestApp, cache: Arc<RedisListCache>) -> Worker {
        let stop = tokio_util::sync::CancellationToken::new();
        let cfg = outbox::OutboxConfig {
            batch: 50,
            idle_wait: Duration::from_millis(5),
            max_attempts: 3,
            projection: ProjectionConfig { preview_chars: 50 },
            cache,
        };
        let pool = app.store.pool().clone();
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move { outbox::run_outbox(cfg, pool, stopped).await });
        Worker { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("worker task").expect("worker");
    }
}

/// Waits until `me`'s list shows `seq` in `channel` (reading through the app, so through its
/// cache, or from PostgreSQL while the cache is unavailable).
async fn wait_listed(
    app: &TestApp,
    me: &User,
    channel: i64,
    seq: i64,
    bound: Duration,
    what: &str,
) {
    eventually(what, bound, async || {
        maybe_listed_seq(app, me, channel).await.unwrap_or(0) >= seq
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_worker_invalidates_what_it_applies() {
    let cache = redis_cache(redis_url());
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::Async))
        .with_cache(cache.clone());
    let app = TestApp::spawn_with(db, store).await;
    let worker = Worker::spawn(&app, cache.clone());
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    let first = send_seq(&app, &a, channel, "one").await;
    // Wait for the worker, then cache bob's page (a miss that stores, then a hit).
    wait_listed(
        &app,
        &b,
        channel,
        first,
        WAIT,
        "outbox worker did not apply",
    )
    .await;
    // The worker may still retire bob's page for a change of the same set-up applied in a later
    // batch: list again until the page stays cached.
    eventually("bob's page is cached", WAIT, async || {
        listed_seq(&app, &b, channel).await;
        matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_))
    })
    .await;

    let second = send_seq(&app, &a, channel, "two").await;
    // Without the worker's invalidation the cached page would be served for the whole TTL.
    wait_listed(
        &app,
        &b,
        channel,
        second,
        WAIT,
        "the cached page outlived the worker's apply",
    )
    .await;
    worker.stop().await;
    app.db.assert_converged(&app.store).await;
}

/// How long a test keeps its private Redis away: several failed calls and retries.
const AWAY_FOR: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_invalidation_fails_waits_and_the_page_is_retired_everywhere() {
    let mut redis = PrivateRedis::start(free_port()).await;
    // Two processes' caches on one Redis: the API's, which the app reads through, and the
    // outbox worker's, which only invalidates and never looks anything up.
    let cfg = RedisCacheConfig {
        // Nothing in this test may pass because a page expired by itself.
        ttl: Duration::from_secs(600),
        ..cache_cfg(redis.url())
    };
    let api_cache = Arc::new(RedisListCache::new(&cfg).expect("cache config"));
    let worker_cache = Arc::new(RedisListCache::new(&cfg).expect("cache config"));
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::Async))
        .with_cache(api_cache.clone());
    let app = TestApp::spawn_with(db, store).await;
    let worker = Worker::spawn(&app, worker_cache);
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    let first = send_seq(&app, &a, channel, "one").await;
    wait_listed(
        &app,
        &b,
        channel,
        first,
        WAIT,
        "outbox worker did not apply",
    )
    .await;
    listed_seq(&app, &b, channel).await;
    assert!(matches!(api_cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));

    // Redis goes away, its data saved (persistence, or a failover that kept it). The worker
    // applies the next message (reads fall back to PostgreSQL meanwhile, and see it), and its
    // invalidation cannot reach Redis.
    redis.go_away_keeping_data().await;
    let second = send_seq(&app, &a, channel, "two").await;
    wait_listed(
        &app,
        &b,
        channel,
        second,
        WAIT,
        "outbox worker did not apply",
    )
    .await;
    // Rather than moving on, the worker waits for Redis to take that invalidation.
    let third = send_seq(&app, &a, channel, "three").await;
    tokio::time::sleep(AWAY_FOR).await;
    let third_applied_while_away = maybe_listed_seq(&app, &b, channel).await.unwrap_or(0) >= third;
    redis.come_back().await;

    // Back, with the page cached before "two": once the API process uses its cache again, that
    // page is retired for it long before it expires (while the worker's invalidation is being
    // made good it may still be served: the worker has not moved on yet).
    eventually(
        "the API process serves the page from after the worker's apply (else the lost \
         invalidation was never made good)",
        Duration::from_secs(10),
        async || {
            let cache_used = api_cache.lookup(b.id, PAGE).await != Lookup::Unavailable;
            cache_used && maybe_listed_seq(&app, &b, channel).await.unwrap_or(0) >= third
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(listed_seq(&app, &b, channel).await, third);
    }
    assert!(
        !third_applied_while_away,
        "the worker moved on before its invalidation had landed"
    );
    // Nothing was lost, only delayed.
    worker.stop().await;
    app.db.assert_converged(&app.store).await;
}

/// A `redis-server` of the test's own, on a port and in a directory of its own, that the test
/// can kill and start again, empty or with the data it had.
struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> PrivateRedis {
        let dir = std::env::temp_dir().join(format!(
            "hermet-test-redis-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = PrivateRedis {
            port,
            dir,
            child: None,
        };
        r.come_back().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), with whatever was saved in its directory.
    async fn come_back(&mut self) {
        // No automatic saves: only `go_away_keeping_data` keeps data across a restart.
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

    /// Saves the data, then kills the server: it comes back with it.
    async fn go_away_keeping_data(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // One command in plain RESP: not worth a Redis client of the test's own.
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the private redis");
        c.write_all(b"*1\r\n$4\r\nSAVE\r\n").await.expect("SAVE");
        let mut answer = [0u8; 5];
        c.read_exact(&mut answer).await.expect("SAVE answer");
        assert_eq!(&answer, b"+OK\r\n", "SAVE");
        self.kill();
    }

    fn kill(&mut self) {
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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_redis_going_away_and_the_cache_resumes() {
    let mut redis = PrivateRedis::start(free_port()).await;
    let cache = redis_cache(redis.url());
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::DualWrite))
        .with_cache(cache.clone());
    let app = Arc::new(TestApp::spawn_with(db, store).await);
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    let s1 = send_seq(&app, &a, channel, "one").await;
    assert_eq!(listed_seq(&app, &b, channel).await, s1);
    assert!(matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));

    // Redis goes away mid-run: reads go on, from PostgreSQL, and are right.
    redis.kill();
    for _ in 0..3 {
        assert_eq!(listed_seq(&app, &b, channel).await, s1);
    }
    assert_eq!(cache.lookup(b.id, PAGE).await, Lookup::Unavailable);
    // A write commits, but is acknowledged only once its invalidation has landed: until then
    // another process could still serve the page it changes.
    let sending = {
        let (app, a) = (app.clone(), a.clone());
        tokio::spawn(async move { send_seq(&app, &a, channel, "while down").await })
    };
    tokio::time::sleep(AWAY_FOR).await;
    assert!(
        !sending.is_finished(),
        "a write was acknowledged while its invalidation could not land"
    );
    // Its change is committed: reads, from PostgreSQL, show it already.
    assert!(listed_seq(&app, &b, channel).await > s1);

    // Back (empty, as a restarted cache-only Redis is): the write is acknowledged, and the cache
    // resumes by itself.
    redis.come_back().await;
    let last = tokio::time::timeout(WAIT, sending)
        .await
        .expect("the write is acknowledged once Redis is back")
        .expect("send task");
    eventually("the cache resumes", WAIT, async || {
        assert_eq!(listed_seq(&app, &b, channel).await, last);
        matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_))
    })
    .await;
    // And invalidation works again.
    let s_next = send_seq(&app, &a, channel, "back").await;
    assert_eq!(listed_seq(&app, &b, channel).await, s_next);
    assert!(matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));
    app.db.assert_converged(&app.store).await;
}
