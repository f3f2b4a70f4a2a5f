//! Reads that wait for `X-Hermet-Min-Lsn` do not get in the way of writes.
//!
//! An `async`-mode store whose outbox worker is not running: nothing is ever applied, so every
//! read asking for a write's LSN waits its whole `read_wait`. Such reads used to hold a
//! connection of the commands' pool while they waited, and 64 of them held up every write (and,
//! in `serve --role all`, the projectors sharing that pool). Now:
//!
//! - 64 waiting reads do not delay a write beyond a small bound, and answer stale at their
//!   deadline;
//! - an LSN past the server's WAL position is refused at once (400 `lsn_in_future`);
//! - beyond `max_read_waiters` a read answers stale at once;
//! - waiting reads still answer fresh as soon as the worker applies the write.
//!
//! Bounds are generous (seconds against a wait of several); the old behaviour missed them by
//! the whole wait.

use std::time::{Duration, Instant};

use hermet_api::{ApiConfig, AppState};
use hermet_core::projection::ProjectionConfig;
use hermet_core::validate::Limits;
use hermet_store::{connect_pool, Store, StoreConfig, SyncMode};
use hermet_testkit::{TestDb, TEST_SECRET};
use serde_json::{json, Value};

/// What a write may take while the reads wait: far below their wait, far above a write.
const WRITE_BOUND: Duration = Duration::from_millis(1500);
/// What "at once" may take on a busy two-core machine.
const AT_ONCE: Duration = Duration::from_millis(1500);

async fn serve(store: &Store, cfg: ApiConfig) -> String {
    let app = hermet_api::router(AppState::new(store.clone(), cfg, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = hermet_testkit::axum_serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    stale: bool,
    lsn: Option<String>,
    body: Value,
    took: Duration,
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    min_lsn: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let started = Instant::now();
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(l) = min_lsn {
        req = req.header("x-hermet-min-lsn", l);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let stale = header("x-hermet-stale").as_deref() == Some("true");
    let lsn = header("x-hermet-lsn");
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        stale,
        lsn,
        body,
        took: started.elapsed(),
    }
}

/// `n` concurrent conversation-list reads of `token` asking for `lsn`.
fn readers(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    lsn: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Reply>> {
    (0..n)
        .map(|_| {
            let (http, url, token, lsn) = (
                http.clone(),
                format!("{base}/v1/conversations"),
                token.to_owned(),
                lsn.to_owned(),
            );
            tokio::spawn(async move {
                call(
                    &http,
                    reqwest::Method::GET,
                    url,
                    Some(&token),
                    Some(&lsn),
                    None,
                )
                .await
            })
        })
        .collect()
}

async fn joined(handles: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("reader task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_reads_hold_no_connection_and_are_bounded() {
    let db = TestDb::new().await;
    let cfg = StoreConfig {
        sync_mode: SyncMode::Async,
        projection: ProjectionConfig { preview_chars: 50 },
        limits: Limits::default(),
        fanout: hermet_testkit::SMALL_FANOUT,
    };
    // As `serve` has it: the commands' pool (16 here) and the list reads' own pool.
    let store = db
        .store_with(cfg)
        .with_read_pool(connect_pool(&db.url, 4).expect("read pool"));
    let api = |read_wait: Duration, max_read_waiters: usize| ApiConfig {
        jwt_secret: TEST_SECRET.into(),
        read_wait,
        max_read_waiters,
        open_signup: true,
        ..ApiConfig::default()
    };
    let read_wait = Duration::from_secs(6);
    let base = serve(&store, api(read_wait, 1024)).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    use reqwest::Method;

    let mut users = Vec::new();
    for nick in ["ann", "bob"] {
        let r = call(
            &http,
            Method::POST,
            format!("{base}/v1/users"),
            None,
            None,
            Some(json!({"nickname": nick})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        users.push((
            r.body["id"].as_i64().expect("id"),
            r.body["token"].as_str().expect("token").to_owned(),
        ));
    }
    let (ann, bob) = (&users[0], &users[1]);
    let r = call(
        &http,
        Method::POST,
        format!("{base}/v1/friends"),
        Some(&ann.1),
        None,
        Some(json!({"friend_id": bob.0})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let channel = r.body["channel_id"].as_i64().expect("channel_id");
    // A real write's LSN, never applied: no outbox worker runs.
    let lsn = r.lsn.expect("X-Hermet-Lsn");

    // 64 reads waiting for it, then a write.
    let waiting = readers(&http, &base, &ann.1, &lsn, 64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let send = call(
        &http,
        Method::POST,
        format!("{base}/v1/channels/{channel}/messages"),
        Some(&ann.1),
        None,
        Some(json!({"content": "while 64 reads wait"})),
    )
    .await;
    assert_eq!(send.status, 201, "{send:?}");
    assert!(
        send.took < WRITE_BOUND,
        "a write took {:?} while 64 reads waited (bound {WRITE_BOUND:?})",
        send.took
    );
    // A far-future LSN is refused at once, whatever else waits.
    let future = call(
        &http,
        Method::GET,
        format!("{base}/v1/conversations"),
        Some(&bob.1),
        Some("FFFFFFFF/FFFFFFFF"),
        None,
    )
    .await;
    assert_eq!(future.status, 400, "{future:?}");
    assert_eq!(future.body["error"]["code"], "lsn_in_future", "{future:?}");
    assert!(future.took < AT_ONCE, "answered after {:?}", future.took);
    let contacts = call(
        &http,
        Method::GET,
        format!("{base}/v1/contacts"),
        Some(&bob.1),
        Some("FFFFFFFF/FFFFFFFF"),
        None,
    )
    .await;
    assert_eq!(contacts.status, 400, "{contacts:?}");
    let replies = joined(waiting).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.stale, "nothing was applied: {r:?}");
        assert!(
            r.took >= read_wait.saturating_sub(Duration::from_millis(400)),
            "a read gave up early: {r:?}"
        );
    }

    // Beyond max_read_waiters, reads answer stale at once.
    let bounded = serve(&store, api(read_wait, 4)).await;
    let replies = joined(readers(&http, &bounded, &ann.1, &lsn, 12)).await;
    let quick: Vec<&Reply> = replies.iter().filter(|r| r.took < AT_ONCE).collect();
    assert!(
        replies.iter().all(|r| r.status == 200 && r.stale),
        "{replies:?}"
    );
    assert!(
        quick.len() >= 8,
        "only {} of 12 reads answered at once with 4 allowed to wait: {replies:?}",
        quick.len()
    );

    // Waiting reads answer fresh once the write is applied.
    let patient = serve(&store, api(Duration::from_secs(60), 1024)).await;
    let send_lsn = send.lsn.expect("X-Hermet-Lsn of the send");
    let waiting = readers(&http, &patient, &bob.1, &send_lsn, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let cfg = hermet_projector::outbox::OutboxConfig {
            batch: 100,
            idle_wait: Duration::from_millis(10),
            max_attempts: 5,
            projection: store.config().projection,
            cache: hermet_core::cache::no_cache(),
        };
        let pool = store.pool().clone();
        tokio::spawn(async move {
            hermet_projector::outbox::run_outbox(cfg, pool, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let replies = joined(waiting).await;
    let _ = stop_tx.send(());
    worker.await.expect("worker task").expect("outbox worker");
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.stale, "applied within the wait: {r:?}");
        let items = r.body["conversations"].as_array().expect("conversations");
        assert!(
            items.iter().any(|c| c["channel_id"] == channel
                && c["last_message"]["content"] == "while 64 reads wait"),
            "the read sees the write it waited for: {r:?}"
        );
    }
    db.assert_converged(&store).await;
}
