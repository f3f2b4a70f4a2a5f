//! Rate limits over HTTP (`hermet_api::rate_limit`): each limit answers 429 `rate_limited` with
//! `Retry-After` once its bucket is empty, leaves other users and addresses alone, and lets the
//! client through again after the `Retry-After`. Small rates (1 a second) keep each test to a
//! second or two. Another client address is a connection from 127.0.0.2 (the whole of 127/8 is
//! loopback on Linux), or a hop of `X-Forwarded-For` from a trusted proxy.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hermet_api::{Limit, RateLimits};
use hermet_testkit::{eventually, ApiClient, Resp, TestApp, TestDb, User};
use serde_json::{json, Value};

/// Longest a bucket of 1 a second takes to have room again, with slack for a busy machine.
const RECOVERY: Duration = Duration::from_secs(5);

async fn app(limits: RateLimits) -> TestApp {
    let db = TestDb::new().await;
    let store = db.store(50);
    TestApp::spawn_limited(db, store, limits).await
}

/// Asserts the documented 429 and returns its `Retry-After` in seconds.
fn limited(r: &Resp, what: &str) -> u64 {
    assert_eq!(r.status, 429, "{what}: {:?}", r.body);
    assert_eq!(r.code(), "rate_limited", "{what}: {:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a message: {:?}",
        r.body
    );
    let secs: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is not whole seconds: {e}"));
    assert!(secs >= 1, "{what}: Retry-After {secs}");
    secs
}

/// A request to `app` from the local address `from`, with extra `headers`.
async fn call_from(
    app: &TestApp,
    from: IpAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .expect("client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    ApiClient::finish(req).await
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

async fn sign_up(app: &TestApp, from: &str, xff: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
    let body = json!({"nickname": "someone"});
    call_from(
        app,
        ip(from),
        "POST",
        "/v1/users",
        None,
        Some(body),
        &headers,
    )
    .await
}

/// Waits until `request` is let through again, and checks that took no less than the client was
/// told to wait, less the second `Retry-After` rounds up.
async fn recovers(what: &str, told: u64, since: Instant, request: impl AsyncFn() -> Resp) {
    let r = eventually(format!("{what} let through again"), RECOVERY, async || {
        let r = request().await;
        if r.status == 429 {
            Err(format!("{:?}", r.body))
        } else {
            Ok(r)
        }
    })
    .await;
    assert!(r.status < 300, "{what}: {:?}", r.body);
    assert!(
        since.elapsed() + Duration::from_secs(1) >= Duration::from_secs(told),
        "{what}: let through {:?} after a Retry-After of {told} s",
        since.elapsed()
    );
}

#[tokio::test]
async fn sign_ups_are_limited_per_address() {
    let app = app(RateLimits {
        signup: Limit::new(1, 2),
        ..RateLimits::default()
    })
    .await;
    for _ in 0..2 {
        let r = sign_up(&app, "127.0.0.1", None).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let refused = sign_up(&app, "127.0.0.1", None).await;
    let since = Instant::now();
    let told = limited(&refused, "third sign-up from one address");
    let other = sign_up(&app, "127.0.0.2", None).await;
    assert_eq!(other.status, 201, "another address: {:?}", other.body);
    recovers("sign-up", told, since, async || {
        sign_up(&app, "127.0.0.1", None).await
    })
    .await;
}

#[tokio::test]
async fn forwarded_for_names_the_client_behind_a_trusted_proxy() {
    let app = app(RateLimits {
        signup: Limit::new(1, 1),
        trusted_proxies: vec!["127.0.0.1".parse().expect("net")],
        ..RateLimits::default()
    })
    .await;
    let first = sign_up(&app, "127.0.0.1", Some("203.0.113.1")).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    // The client cannot pick a fresh address by writing hops on the left.
    let again = sign_up(&app, "127.0.0.1", Some("198.51.100.77, 203.0.113.1")).await;
    limited(&again, "a second sign-up of 203.0.113.1");
    let other = sign_up(&app, "127.0.0.1", Some("203.0.113.2")).await;
    assert_eq!(other.status, 201, "another client: {:?}", other.body);
    // From a peer that is not trusted, the header is ignored: 127.0.0.2 has its own bucket.
    let direct = sign_up(&app, "127.0.0.2", Some("203.0.113.1")).await;
    assert_eq!(direct.status, 201, "{:?}", direct.body);
}

#[tokio::test]
async fn sends_are_limited_per_user() {
    let app = app(RateLimits {
        send: Limit::new(1, 3),
        ..RateLimits::default()
    })
    .await;
    let (a, b) = (app.new_user("a").await, app.new_user("b").await);
    let channel = app.befriend(&a, &b).await;
    let path = format!("/v1/channels/{channel}/messages");
    let send = async |u: &User| app.post(&path, u, json!({"content": "hi"})).await;
    for _ in 0..3 {
        let r = send(&a).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let refused = send(&a).await;
    let since = Instant::now();
    let told = limited(&refused, "fourth send");
    assert_eq!(send(&b).await.status, 201, "another user sends");
    // Other writes of the same user are not sends.
    let r = app.patch("/v1/me", &a, json!({"nickname": "a2"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    recovers("send", told, since, async || send(&a).await).await;
}

#[tokio::test]
async fn writes_are_limited_per_user_and_reads_are_not() {
    let app = app(RateLimits {
        write: Limit::new(1, 3),
        ..RateLimits::default()
    })
    .await;
    let (a, b) = (app.new_user("a").await, app.new_user("b").await);
    let channel = app.befriend(&a, &b).await; // a's first write
    let rename = async |u: &User| app.patch("/v1/me", u, json!({"nickname": "n"})).await;
    for _ in 0..2 {
        let r = rename(&a).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let refused = rename(&a).await;
    let since = Instant::now();
    let told = limited(&refused, "fourth write");
    // A send is a write too; a delete is.
    let path = format!("/v1/channels/{channel}/messages");
    limited(
        &app.post(&path, &a, json!({"content": "hi"})).await,
        "a send past the write limit",
    );
    limited(
        &app.delete(&format!("/v1/friends/{}", b.id), &a).await,
        "a delete past the write limit",
    );
    assert_eq!(app.get("/v1/me", &a).await.status, 200, "reads go on");
    assert_eq!(rename(&b).await.status, 200, "another user writes");
    recovers("write", told, since, async || rename(&a).await).await;
}

#[tokio::test]
async fn refused_tokens_are_limited_per_address() {
    let app = app(RateLimits {
        auth_failure: Limit::new(1, 2),
        ..RateLimits::default()
    })
    .await;
    let a = app.new_user("a").await;
    let me = async |from: &str, token: &str| {
        call_from(&app, ip(from), "GET", "/v1/me", Some(token), None, &[]).await
    };
    for _ in 0..2 {
        let r = me("127.0.0.1", "not.a.token").await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{:?}", r.body);
    }
    let refused = me("127.0.0.1", "not.a.token").await;
    let since = Instant::now();
    let told = limited(&refused, "third refused token");
    // The WebSocket's token is accounted the same way.
    let ws = call_from(
        &app,
        ip("127.0.0.1"),
        "GET",
        "/v1/ws?token=bad",
        None,
        None,
        &[],
    )
    .await;
    limited(&ws, "a refused WebSocket token");
    // A valid token from the same address is not held back; another address is not limited.
    assert_eq!(me("127.0.0.1", &a.token).await.status, 200);
    let other = me("127.0.0.2", "not.a.token").await;
    assert_eq!(other.status, 401, "another address: {:?}", other.body);
    // A missing header guesses nothing and is not counted.
    let bare = call_from(&app, ip("127.0.0.1"), "GET", "/v1/me", None, None, &[]).await;
    assert_eq!(bare.status, 401, "{:?}", bare.body);
    recovers("refused token answered 401", told, since, async || {
        let r = me("127.0.0.1", "not.a.token").await;
        // 401 is "let through" here: the refusal itself, no longer limited.
        Resp {
            status: if r.status == 401 { 200 } else { r.status },
            ..r
        }
    })
    .await;
}
