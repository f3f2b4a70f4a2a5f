//! The conversation-list cache against a real Redis (issue 6):
//!
//! - the adapter's contract (`hermet_core::cache`): miss, store, hit; an invalidation retires a
//!   page, and a page loaded before an invalidation is refused; `invalidate_all`; page sizes are
//!   separate;
//! - race: concurrent writers and readers over HTTP in `dual_write`, with an artificial delay
//!   between the database read and the cache store; no reader ever gets a list older than a
//!   write acknowledged before its request;
//! - `async` mode: the outbox worker's invalidation retires a page cached before the write;
//! - Redis down: a private `redis-server` is killed mid-run; reads keep answering correctly from
//!   PostgreSQL; it is started again and the cache resumes.
//!
//! Each test uses its own key prefix (or its own Redis) and its own database. Needs
//! `HERMET_DATABASE_URL` and `HERMET_REDIS_URL` (`eval "$(scripts/services.sh env)"`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermet_core::cache::{BoxFut, ListCache, Lookup, Stamp};
use hermet_core::projection::ProjectionConfig;
use hermet_core::rows::UserId;
use hermet_core::validate::Limits;
use hermet_projector::outbox;
use hermet_redis::{RedisCacheConfig, RedisListCache};
use hermet_store::{StoreConfig, SyncMode};
use hermet_testkit::{TestApp, TestDb, User};
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
    StoreConfig {
        sync_mode: mode,
        projection: ProjectionConfig { preview_chars: 50 },
        limits: Limits::default(),
    }
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
    assert!(c.store(1, 20, s1.clone(), "page-1".into()).await);
    assert_eq!(c.lookup(1, 20).await, Lookup::Hit("page-1".into()));
    // Other page sizes and other owners are other pages.
    assert!(matches!(c.lookup(1, 10).await, Lookup::Miss(_)));
    assert!(matches!(c.lookup(2, 20).await, Lookup::Miss(_)));

    // A page loaded before an invalidation is refused after it.
    let Lookup::Miss(s2) = c.lookup(2, 20).await else {
        panic!("owner 2 has nothing cached");
    };
    c.invalidate(&[2, 3]).await;
    assert!(!c.store(2, 20, s2, "stale".into()).await);
    assert!(matches!(c.lookup(2, 20).await, Lookup::Miss(_)));
    // Invalidating 2 and 3 left 1 alone.
    assert_eq!(c.lookup(1, 20).await, Lookup::Hit("page-1".into()));
    c.invalidate(&[1]).await;
    let Lookup::Miss(s3) = c.lookup(1, 20).await else {
        panic!("invalidated page still served");
    };
    assert_ne!(s1, s3, "the stamp moved on");
    // The old stamp can no longer store.
    assert!(!c.store(1, 20, s1, "older".into()).await);
    assert!(c.store(1, 20, s3, "page-1b".into()).await);
    assert_eq!(c.lookup(1, 20).await, Lookup::Hit("page-1b".into()));

    // `invalidate_all` retires every page and every stamp taken before it.
    let Lookup::Miss(s4) = c.lookup(4, 20).await else {
        panic!("owner 4 has nothing cached");
    };
    c.invalidate_all().await;
    assert!(matches!(c.lookup(1, 20).await, Lookup::Miss(_)));
    assert!(!c.store(4, 20, s4, "stale".into()).await);

    // A second cache with another prefix shares nothing with this one.
    let other = redis_cache(redis_url());
    assert!(matches!(other.lookup(1, 20).await, Lookup::Miss(_)));
}

/// A cache that sleeps a random while before every store, as a slow reader between its
/// database read and its cache store would.
#[derive(Debug)]
struct SlowStores {
    inner: Arc<RedisListCache>,
    max_delay_ms: u64,
    hits: AtomicUsize,
    refused: AtomicUsize,
}

impl ListCache for SlowStores {
    fn lookup(&self, owner: UserId, limit: i64) -> BoxFut<'_, Lookup> {
        Box::pin(async move {
            let l = self.inner.lookup(owner, limit).await;
            if matches!(l, Lookup::Hit(_)) {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            l
        })
    }
    fn store(&self, owner: UserId, limit: i64, stamp: Stamp, page: String) -> BoxFut<'_, bool> {
        Box::pin(async move {
            let ms = rand::thread_rng().gen_range(0..=self.max_delay_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let stored = self.inner.store(owner, limit, stamp, page).await;
            if !stored {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
            stored
        })
    }
    fn invalidate<'a>(&'a self, owners: &'a [UserId]) -> BoxFut<'a, ()> {
        self.inner.invalidate(owners)
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
    let cache = Arc::new(SlowStores {
        inner: redis_cache(redis_url()),
        max_delay_ms: 30,
        hits: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    });
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::DualWrite))
        .with_cache(cache.clone());
    let app = Arc::new(TestApp::spawn_with(db, store).await);
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;

    // The highest seq whose send was acknowledged; a reader reads it before its request.
    let acked = Arc::new(AtomicI64::new(0));
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
    eprintln!(
        "race: {reads} reads during {} sends; {} cache hits; {} stale stores refused",
        total,
        cache.hits.load(Ordering::Relaxed),
        cache.refused.load(Ordering::Relaxed)
    );
    app.db.assert_converged(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_worker_invalidates_what_it_applies() {
    let cache = redis_cache(redis_url());
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::Async))
        .with_cache(cache.clone());
    let app = TestApp::spawn_with(db, store).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let cfg = outbox::OutboxConfig {
            batch: 50,
            idle_wait: Duration::from_millis(5),
            max_attempts: 3,
            projection: ProjectionConfig { preview_chars: 50 },
            cache: cache.clone(),
        };
        let pool = app.store.pool().clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            outbox::run_outbox(cfg, pool, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    let first = send_seq(&app, &a, channel, "one").await;
    // Wait for the worker, then cache bob's page (a miss that stores, then a hit).
    let deadline = Instant::now() + WAIT;
    while maybe_listed_seq(&app, &b, channel).await.unwrap_or(0) < first {
        assert!(Instant::now() < deadline, "outbox worker did not apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listed_seq(&app, &b, channel).await;
    assert!(matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));

    let second = send_seq(&app, &a, channel, "two").await;
    // Without the worker's invalidation the cached page would be served for the whole TTL.
    while listed_seq(&app, &b, channel).await < second {
        assert!(
            Instant::now() < deadline,
            "the cached page outlived the worker's apply"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker");
    app.db.assert_converged(&app.store).await;
}

/// A `redis-server` of the test's own, on a port of its own.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/install-deps.sh)");
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
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
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_redis_going_away_and_the_cache_resumes() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port).await;
    let cache = redis_cache(format!("redis://127.0.0.1:{port}"));
    let db = TestDb::new().await;
    let store = db
        .store_with(store_cfg(SyncMode::DualWrite))
        .with_cache(cache.clone());
    let app = TestApp::spawn_with(db, store).await;
    let a = app.new_user("ann").await;
    let b = app.new_user("bob").await;
    let channel = app.befriend(&a, &b).await;
    let s1 = send_seq(&app, &a, channel, "one").await;
    assert_eq!(listed_seq(&app, &b, channel).await, s1);
    assert!(matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));

    // Redis goes away mid-run: writes and reads go on, and reads are right.
    redis.kill();
    let mut last = s1;
    for i in 0..5 {
        last = send_seq(&app, &a, channel, &format!("down {i}")).await;
        assert_eq!(listed_seq(&app, &b, channel).await, last);
    }
    assert_eq!(cache.lookup(b.id, PAGE).await, Lookup::Unavailable);

    // Back (empty, as a restarted cache-only Redis is): the cache resumes by itself.
    let _redis = PrivateRedis::start(redis.port).await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(listed_seq(&app, &b, channel).await, last);
        if matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)) {
            break;
        }
        assert!(Instant::now() < deadline, "the cache did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And invalidation works again.
    let s_next = send_seq(&app, &a, channel, "back").await;
    assert_eq!(listed_seq(&app, &b, channel).await, s_next);
    assert!(matches!(cache.lookup(b.id, PAGE).await, Lookup::Hit(_)));
    app.db.assert_converged(&app.store).await;
}
