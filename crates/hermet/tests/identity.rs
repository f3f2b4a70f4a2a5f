//! Identity for real deployments, end to end: API keys (`hermet admin apikey`), the
//! `/v1/server/...` routes, minted tokens, revocation and disabled users — on HTTP and on open
//! WebSockets, in the process that made the change and in another one sharing the database
//! (which learns of it through `LISTEN hermet_auth`) — and the open sign-up switch.
//!
//! Needs `HERMET_DATABASE_URL` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hermet_api::{ApiConfig, AppState};
use hermet_core::validate::KeyName;
use hermet_testkit::{api_config, eventually, TestApp};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The promise: an auth change reaches every API process within a second.
const PROPAGATION: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn new_key(app: &TestApp) -> String {
    let name = KeyName::parse("tests").expect("name");
    app.store.create_api_key(&name).await.expect("key").key
}

/// Another API process on the same database: its own state, cache, hub and listener.
struct Peer {
    base: String,
    state: AppState,
    http: reqwest::Client,
}

impl Peer {
    async fn spawn(app: &TestApp) -> Peer {
        let state = AppState::new(app.db.store(50), api_config(), None);
        let router = hermet_api::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let peer = Peer {
            base,
            state,
            http: reqwest::Client::new(),
        };
        eventually(
            "the peer's auth listener is up",
            Duration::from_secs(10),
            async || peer.state.auth().listening(),
        )
        .await;
        peer
    }

    async fn me(&self, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/me", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn import(app: &TestApp, key: &str, external_id: &str, nickname: &str) -> i64 {
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(key),
            Some(json!({"external_id": external_id, "nickname": nickname})),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "import: {r:?}");
    r.body["id"].as_i64().expect("id")
}

async fn mint(app: &TestApp, key: &str, user: i64, ttl: Option<i64>) -> String {
    let body = ttl.map_or(json!({}), |t| json!({"ttl_secs": t}));
    let r = app
        .call(
            "POST",
            &format!("/v1/server/users/{user}/tokens"),
            Some(key),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 201, "mint: {r:?}");
    r.body["token"].as_str().expect("token").to_owned()
}

async fn me_status(app: &TestApp, token: &str) -> (u16, String) {
    let r = app.call("GET", "/v1/me", Some(token), None).await;
    (r.status, r.code().to_owned())
}

async fn ws(base: &str, token: &str) -> Ws {
    let url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket")
        .0
}

/// The close frame the server sends within `within` (events and pings before it are skipped).
async fn closed_with(ws: &mut Ws, within: Duration) -> (CloseCode, String) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {within:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return (f.code, f.reason.to_string()),
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) => panic!("closed without a frame"),
            Ok(Some(Err(e))) => panic!("connection failed: {e}"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Nothing but pings for `d`: the socket is still open.
async fn stays_open(ws: &mut Ws, d: Duration) {
    match tokio::time::timeout(d, ws.next()).await {
        Err(_) => {}
        Ok(m) => panic!("expected an open, quiet socket; got {m:?}"),
    }
}

#[tokio::test]
async fn api_key_lifecycle_through_the_cli() {
    let app = TestApp::spawn().await;
    let env = vec![("HERMET_DATABASE_URL".to_owned(), app.db.url.clone())];

    let out = hermet(
        &[
            "admin",
            "apikey",
            "create",
            "--name",
            "app server",
            "--json",
        ],
        // Logged at info, as an operator would run it: the logs must stay off stdout (which
        // `--json` output is piped from) and must not carry the key.
        [
            env.clone(),
            vec![("RUST_LOG".to_owned(), "info".to_owned())],
        ]
        .concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "create: {stdout}{stderr}");
    assert!(
        stderr.contains("api key created"),
        "logged on stderr: {stderr}"
    );
    let created: Value = serde_json::from_str(stdout.trim()).expect("stdout is the JSON alone");
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_i64().expect("id");
    assert!(key.starts_with("hmk_") && key.len() > 40, "{key}");
    assert!(!stderr.contains(&key), "the key is logged: {stderr}");

    // It works on the server routes.
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-1", "nickname": "Ann"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["external_id"], "acct-1");
    assert_eq!(r.body["disabled"], false);
    assert!(r.header("x-hermet-lsn").is_some(), "{r:?}");

    // Listed without the key, with its prefix and its use.
    for json in [true, false] {
        let mut args = vec!["admin", "apikey", "list"];
        if json {
            args.push("--json");
        }
        let out = hermet(&args, env.clone()).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "list: {stdout}{stderr}");
        assert!(!stdout.contains(&key), "the key is listed: {stdout}");
        if json {
            let list: Value = serde_json::from_str(stdout.trim()).expect("JSON");
            let k = &list[0];
            assert_eq!(k["id"], id);
            assert_eq!(k["name"], "app server");
            assert!(key.starts_with(k["prefix"].as_str().expect("prefix")));
            assert!(k["last_used_at"].as_i64().is_some(), "{k}");
            assert!(k["revoked_at"].is_null(), "{k}");
        } else {
            assert!(stdout.contains("app server"), "{stdout}");
        }
    }

    // A user token is no key, and a key is no user token.
    let user_token = mint(&app, &key, r.body["id"].as_i64().unwrap(), None).await;
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&user_token),
            Some(json!({"external_id": "x", "nickname": "X"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{r:?}");
    let r = app.call("GET", "/v1/me", Some(&key), None).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            None,
            Some(json!({"external_id": "x", "nickname": "X"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{r:?}");

    // Revoked: refused from then on.
    let out = hermet(&["admin", "apikey", "revoke", &id.to_string()], env.clone()).await;
    assert!(out.status.success(), "revoke: {:?}", text(&out));
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-2", "nickname": "Bo"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{r:?}");
    assert_eq!(app.store.user_by_external_id("acct-2").await.unwrap(), None);

    // Bad input to the CLI: refused, nothing created.
    for args in [
        vec!["admin", "apikey", "create", "--name", ""],
        vec!["admin", "apikey", "create", "--name", &"n".repeat(65)],
        vec!["admin", "apikey", "revoke", "999999"],
        vec!["admin", "apikey", "revoke", "0"],
    ] {
        let out = hermet(&args, env.clone()).await;
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {:?}",
            text(&out)
        );
    }
    assert_eq!(app.store.list_api_keys().await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_imports_of_one_external_id_make_one_user() {
    let app = TestApp::spawn().await;
    let key = new_key(&app).await;
    let calls = (0..16).map(|_| {
        app.call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-race", "nickname": "Racer", "avatar": "https://x.example/a.png"})),
        )
    });
    let answers = futures::future::join_all(calls).await;
    let created = answers.iter().filter(|r| r.status == 201).count();
    let existing = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, existing), (1, 15), "{answers:?}");
    let ids: std::collections::BTreeSet<i64> = answers
        .iter()
        .map(|r| r.body["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let conn = app.store.pool().get().await.unwrap();
    let users: i64 = conn
        .query_one("SELECT count(*) FROM users WHERE nickname = 'Racer'", &[])
        .await
        .unwrap()
        .get(0);
    let claimed: i64 = conn
        .query_one(
            "SELECT count(*) FROM user_auth WHERE external_id = 'acct-race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((users, claimed), (1, 1));
    // The read side learned of the one user (dual_write: at once).
    assert!(app.db.diff(&app.store).await.is_empty());
}

#[tokio::test]
async fn minted_tokens_last_as_long_as_asked() {
    let db = hermet_testkit::TestDb::new().await;
    let store = db.store(50);
    let cfg = ApiConfig {
        max_token_ttl_secs: 3600,
        ..api_config()
    };
    let app = TestApp::spawn_configured(db, store, cfg).await;
    let key = new_key(&app).await;
    let user = import(&app, &key, "acct-ttl", "Tia").await;
    let path = format!("/v1/server/users/{user}/tokens");

    let before = now_ms();
    let r = app
        .call("POST", &path, Some(&key), Some(json!({"ttl_secs": 600})))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let expires = r.body["expires_at"].as_i64().expect("expires_at");
    assert!(
        expires > before + 598_000 && expires <= now_ms() + 600_000,
        "expires_at {expires} is not 600 s after {before}"
    );
    let token = r.body["token"].as_str().unwrap();
    assert_eq!(me_status(&app, token).await.0, 200);

    for bad in [
        json!({"ttl_secs": 3601}),
        json!({"ttl_secs": 0}),
        json!({"ttl_secs": -5}),
        json!({"ttl_secs": "60"}),
        json!({"ttl": 60}),
    ] {
        let r = app.call("POST", &path, Some(&key), Some(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    let r = app
        .call(
            "POST",
            "/v1/server/users/999999/tokens",
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "user_not_found"), "{r:?}");

    // A token of one second stops working on its own.
    let short = mint(&app, &key, user, Some(1)).await;
    eventually(
        "the one-second token is refused",
        Duration::from_secs(5),
        async || me_status(&app, &short).await.0 == 401,
    )
    .await;
}

#[tokio::test]
async fn revocation_reaches_this_process_at_once_and_another_within_a_second() {
    let app = TestApp::spawn().await;
    let peer = Peer::spawn(&app).await;
    let key = new_key(&app).await;
    let user = import(&app, &key, "acct-rev", "Rev").await;
    let old = mint(&app, &key, user, None).await;
    // Both processes have the user's state cached as valid.
    assert_eq!(me_status(&app, &old).await.0, 200);
    assert_eq!(peer.me(&old).await.0, 200);

    let r = app
        .call(
            "DELETE",
            &format!("/v1/server/users/{user}/tokens"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header("x-hermet-lsn").is_some(), "{r:?}");
    assert_eq!(me_status(&app, &old).await, (401, "token_revoked".into()));
    eventually(
        "the other process refuses the revoked token",
        PROPAGATION,
        async || peer.me(&old).await.0 == 401,
    )
    .await;
    let (_, body) = peer.me(&old).await;
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");

    // Minted right after the revocation: valid everywhere.
    let new = mint(&app, &key, user, None).await;
    assert_eq!(me_status(&app, &new).await.0, 200);
    assert_eq!(peer.me(&new).await.0, 200);

    // Revoked by the other process: this one learns of it.
    peer.state
        .store()
        .revoke_tokens(user, now_ms())
        .await
        .expect("revoke");
    eventually(
        "this process refuses the token revoked elsewhere",
        PROPAGATION,
        async || me_status(&app, &new).await.0 == 401,
    )
    .await;
    let r = app
        .call("DELETE", "/v1/server/users/999999/tokens", Some(&key), None)
        .await;
    assert_eq!((r.status, r.code()), (404, "user_not_found"), "{r:?}");
}

/// Rule 4 of `hermet_api::auth::states`: while the listener is down nothing cached is trusted,
/// and it comes back with an empty cache — so a change it could not hear of (here one made
/// without a notification, as any change made while it was away) is still seen.
#[tokio::test]
async fn a_lost_listener_reconnects_and_forgets_what_it_may_have_missed() {
    let app = TestApp::spawn().await;
    let peer = Peer::spawn(&app).await;
    let key = new_key(&app).await;
    let user = import(&app, &key, "acct-lost", "Lou").await;
    let token = mint(&app, &key, user, None).await;
    assert_eq!(peer.me(&token).await.0, 200, "cached as valid");

    let sessions = peer.state.auth().listener_sessions();
    let conn = app.store.pool().get().await.unwrap();
    let killed: i64 = conn
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1",
            &[&hermet_store::identity::LISTENER_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "no listener connection found");
    // Revoked behind every listener's back: no NOTIFY.
    conn.execute(
        "INSERT INTO user_auth (user_id, tokens_valid_after, updated_at) VALUES ($1, $2, $2)
         ON CONFLICT (user_id) DO UPDATE SET tokens_valid_after = EXCLUDED.tokens_valid_after",
        &[&user, &(now_ms() + 1)],
    )
    .await
    .unwrap();
    eventually(
        "the peer's listener is back",
        Duration::from_secs(10),
        async || peer.state.auth().listener_sessions() > sessions && peer.state.auth().listening(),
    )
    .await;
    let (status, body) = peer.me(&token).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("token_revoked")),
        "{body}"
    );
}

#[tokio::test]
async fn sockets_close_on_revocation_disable_and_expiry() {
    let app = TestApp::spawn().await;
    let peer = Peer::spawn(&app).await;
    let key = new_key(&app).await;
    let user = import(&app, &key, "acct-ws", "Wes").await;
    let base = format!("http://{}", app.addr);

    // Revocation: the sockets here and in the other process close.
    let token = mint(&app, &key, user, None).await;
    let (mut here, mut there) = (ws(&base, &token).await, ws(&peer.base, &token).await);
    let r = app
        .call(
            "DELETE",
            &format!("/v1/server/users/{user}/tokens"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    for ws in [&mut here, &mut there] {
        assert_eq!(
            closed_with(ws, PROPAGATION).await,
            (CloseCode::Policy, "token revoked".into())
        );
    }
    // Nor can the revoked token open a new one.
    let url = format!("ws://{}/v1/ws?token={token}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("a revoked token opened a socket: {other:?}"),
    }

    // Disable: closed everywhere, tokens refused, no new token; re-enable restores the token.
    let token = mint(&app, &key, user, None).await;
    let (mut here, mut there) = (ws(&base, &token).await, ws(&peer.base, &token).await);
    let r = app
        .call(
            "PATCH",
            &format!("/v1/server/users/{user}"),
            Some(&key),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["disabled"]),
        (200, &json!(true)),
        "{r:?}"
    );
    assert!(r.header("x-hermet-lsn").is_some(), "{r:?}");
    for ws in [&mut here, &mut there] {
        assert_eq!(
            closed_with(ws, PROPAGATION).await,
            (CloseCode::Policy, "user disabled".into())
        );
    }
    assert_eq!(me_status(&app, &token).await, (401, "user_disabled".into()));
    let r = app
        .call(
            "POST",
            &format!("/v1/server/users/{user}/tokens"),
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "user_disabled"), "{r:?}");
    let r = app
        .call(
            "PATCH",
            &format!("/v1/server/users/{user}"),
            Some(&key),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["disabled"]),
        (200, &json!(false)),
        "{r:?}"
    );
    assert_eq!(me_status(&app, &token).await.0, 200);
    eventually(
        "the other process accepts the re-enabled user",
        PROPAGATION,
        async || peer.me(&token).await.0 == 200,
    )
    .await;
    let mut back = ws(&base, &token).await;
    stays_open(&mut back, Duration::from_millis(300)).await;

    // Expiry: a socket whose token runs out is closed.
    let short = mint(&app, &key, user, Some(2)).await;
    let mut expiring = ws(&base, &short).await;
    assert_eq!(
        closed_with(&mut expiring, Duration::from_secs(4)).await,
        (CloseCode::Policy, "token expired".into())
    );
    // The other socket of the user was not touched.
    stays_open(&mut back, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn bad_input_on_the_server_routes_writes_nothing() {
    let app = TestApp::spawn().await;
    let key = new_key(&app).await;
    let user = import(&app, &key, "acct-ok", "Okay").await;
    let users = async || -> i64 {
        let conn = app.store.pool().get().await.unwrap();
        conn.query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0)
    };
    let before = users().await;
    for (body, code) in [
        (
            json!({"external_id": "acct-x", "nickname": ""}),
            "invalid_input",
        ),
        (
            json!({"external_id": "acct-x", "nickname": "a\u{7}b"}),
            "invalid_input",
        ),
        (
            json!({"external_id": "acct-x", "nickname": "X", "avatar": "ftp://x"}),
            "invalid_input",
        ),
        (json!({"external_id": "", "nickname": "X"}), "invalid_input"),
        (
            json!({"external_id": " acct-x", "nickname": "X"}),
            "invalid_input",
        ),
        (
            json!({"external_id": "x".repeat(257), "nickname": "X"}),
            "invalid_input",
        ),
        (
            json!({"external_id": "acct-x", "nickname": "X", "admin": true}),
            "invalid_json",
        ),
        (json!({"nickname": "X"}), "invalid_json"),
        (json!({"external_id": 5, "nickname": "X"}), "invalid_json"),
    ] {
        let r = app
            .call("POST", "/v1/server/users", Some(&key), Some(body.clone()))
            .await;
        assert_eq!((r.status, r.code()), (400, code), "{body}: {r:?}");
    }
    assert_eq!(users().await, before, "a refused import created a user");
    assert_eq!(app.store.user_by_external_id("acct-x").await.unwrap(), None);

    let path = format!("/v1/server/users/{user}");
    for (body, code) in [
        (json!({}), "nothing_to_change"),
        (json!({"nickname": null}), "nothing_to_change"),
        (json!({"nickname": "", "disabled": true}), "invalid_input"),
        (json!({"avatar": "nope", "disabled": true}), "invalid_input"),
        (json!({"disabled": "yes"}), "invalid_json"),
        (json!({"external_id": "other"}), "invalid_json"),
    ] {
        let r = app
            .call("PATCH", &path, Some(&key), Some(body.clone()))
            .await;
        assert_eq!((r.status, r.code()), (400, code), "{body}: {r:?}");
    }
    let u = app.store.server_user(user).await.unwrap();
    assert_eq!(
        (u.user.nickname.as_str(), u.user.profile_ver, u.disabled),
        ("Okay", 1, false)
    );

    let r = app
        .call(
            "PATCH",
            "/v1/server/users/999999",
            Some(&key),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "user_not_found"), "{r:?}");
    let r = app
        .call(
            "PATCH",
            "/v1/server/users/999999",
            Some(&key),
            Some(json!({"nickname": "N"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, "user_not_found"), "{r:?}");
    for path in ["/v1/server/users/0", "/v1/server/users/abc"] {
        let r = app
            .call("PATCH", path, Some(&key), Some(json!({"disabled": true})))
            .await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    let r = app
        .raw(
            "POST",
            "/v1/server/users",
            Some(&key),
            "not json",
            "application/json",
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    // A good edit goes through the profile command: the read side follows.
    let r = app
        .call(
            "PATCH",
            &path,
            Some(&key),
            Some(json!({"nickname": "Renamed"})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["nickname"]),
        (200, &json!("Renamed")),
        "{r:?}"
    );
    assert!(r.header("x-hermet-lsn").is_some());
    assert!(app.db.diff(&app.store).await.is_empty());
    // Importing the same external id again leaves the user as it is.
    let r = app
        .call(
            "POST",
            "/v1/server/users",
            Some(&key),
            Some(json!({"external_id": "acct-ok", "nickname": "Other"})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["id"], &r.body["nickname"]),
        (200, &json!(user), &json!("Renamed")),
        "{r:?}"
    );
}

#[tokio::test]
async fn open_signup_off_refuses_post_users() {
    let db = hermet_testkit::TestDb::new().await;
    let store = db.store(50);
    let cfg = ApiConfig {
        open_signup: false,
        ..api_config()
    };
    let app = TestApp::spawn_configured(db, store, cfg).await;
    let r = app
        .call("POST", "/v1/users", None, Some(json!({"nickname": "Ann"})))
        .await;
    assert_eq!((r.status, r.code()), (403, "signup_disabled"), "{r:?}");
    let conn = app.store.pool().get().await.unwrap();
    let users: i64 = conn
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 0);
    // The default is off.
    assert!(!ApiConfig::default().open_signup);
}

/// `GET /v1/ops/status` takes the server key like the server routes; a process without a status
/// source (this in-process app: the binary gives it, see `admin_output.rs`) answers 503.
#[tokio::test]
async fn ops_status_without_a_source_is_unavailable() {
    let app = TestApp::spawn().await;
    let key = new_key(&app).await;
    let user = app.new_user("Ann").await;
    let r = app.call("GET", "/v1/ops/status", None, None).await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{r:?}");
    let r = app
        .call("GET", "/v1/ops/status", Some(&user.token), None)
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_api_key"), "{r:?}");
    let r = app.call("GET", "/v1/ops/status", Some(&key), None).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
}
