//! WebSocket push (docs/design.md §4, "Push") with a real WebSocket client: `GET /v1/ws`
//! authentication and its connection lifecycle, and the whole path — a message committed in
//! PostgreSQL, streamed by the CDC relay to Kafka, read by the push notifier, sent to the
//! recipient's socket — with the relay and the notifier running in-process.
//!
//! The relay test has its own database, slot, publication and topics, and drops its slot (before
//! the database) when done; slot tests run one at a time (`SERIAL`). Waits are bounded.
//!
//! Needs `HERMET_DATABASE_URL` (superuser, `wal_level=logical`) and `HERMET_KAFKA_BROKERS`:
//! `eval "$(scripts/services.sh env)" && cargo test -p hermet --test push`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hermet_core::push::{PushEvent, PushSink};
use hermet_projector::push::{PushConfig, PushNotifier};
use hermet_testkit::cdc::{Cdc, Task, PARTITIONS};
use hermet_testkit::pipeline::{brokers, SERIAL};
use hermet_testkit::{eventually, TestApp, User};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound of every wait on the pipeline (relay start, a push arriving).
const WAIT: Duration = Duration::from_secs(60);
/// Bound of a connection's leaving the hub.
const HUB_WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// A WebSocket client

enum Auth<'a> {
    Query(&'a str),
    Header(&'a str),
    None,
}

async fn ws_connect(app: &TestApp, auth: Auth<'_>) -> Result<Ws, WsError> {
    let url = match auth {
        Auth::Query(t) => format!("ws://{}/v1/ws?token={t}", app.addr),
        _ => format!("ws://{}/v1/ws", app.addr),
    };
    let mut req = url.into_client_request()?;
    if let Auth::Header(t) = auth {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header value"),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

async fn connect_as(app: &TestApp, user: &User) -> Ws {
    ws_connect(app, Auth::Query(&user.token))
        .await
        .unwrap_or_else(|e| panic!("WebSocket for user {}: {e}", user.id))
}

/// A refused upgrade: its status and JSON body.
async fn refused(app: &TestApp, auth: Auth<'_>) -> (u16, Value) {
    match ws_connect(app, auth).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body).unwrap_or_else(|_| {
                panic!("error body is not JSON: {}", String::from_utf8_lossy(body))
            });
            (resp.status().as_u16(), json)
        }
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

/// The next JSON event within `within`; `None` if none came. Control frames are skipped.
async fn next_event(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the server closed the push connection"),
            Ok(Some(Err(e))) => panic!("push connection failed: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(&t).expect("events are JSON"))
            }
            Ok(Some(Ok(Message::Close(f)))) => panic!("the server closed the connection: {f:?}"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads events until one satisfies `pred`; returns it and the events before it.
async fn until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_event(ws, left).await {
            Some(e) if pred(&e) => return (e, before),
            Some(e) => before.push(e),
            None => panic!("no {what} within {WAIT:?}; got {before:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The endpoint alone: no Kafka, events published straight to the hub

#[tokio::test]
async fn bad_tokens_get_401_before_any_upgrade() {
    let app = TestApp::spawn().await;
    let a = app.new_user("ann").await;
    let mut forged = a.token.clone();
    forged.pop();
    for (label, auth) in [
        ("no token", Auth::None),
        ("forged query token", Auth::Query(&forged)),
        ("forged header token", Auth::Header(&forged)),
        ("garbage", Auth::Query("not-a-jwt")),
    ] {
        let (status, body) = refused(&app, auth).await;
        assert_eq!(status, 401, "{label}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{label}: {body}");
        assert!(body["error"]["message"].is_string(), "{label}: {body}");
    }
    assert!(!app.hub.any_connected());

    // A good token on a plain GET (no upgrade) is told what the endpoint is, in the API's shape.
    let r = app.get("/v1/ws", &a).await;
    assert!(
        (400..500).contains(&r.status) && r.status != 401,
        "{}: {:?}",
        r.status,
        r.body
    );
    assert_eq!(r.code(), "websocket_upgrade_required", "{:?}", r.body);
}

#[tokio::test]
async fn a_connection_gets_its_users_events_answers_pings_and_cleans_up() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.new_user("ann").await, app.new_user("bob").await);
    let mut wa = ws_connect(&app, Auth::Header(&a.token))
        .await
        .expect("header token");
    let mut wa2 = connect_as(&app, &a).await;
    let mut wb = connect_as(&app, &b).await;
    assert_eq!(app.hub.connections(a.id), 2);
    assert_eq!(app.hub.connections(b.id), 1);

    let event = PushEvent::ContactChanged { contact_id: b.id };
    app.hub.publish(a.id, &event);
    for ws in [&mut wa, &mut wa2] {
        let got = next_event(ws, WAIT).await.expect("event for ann");
        assert_eq!(got, json!({"type": "contact_changed", "contact_id": b.id}));
    }
    assert_eq!(
        next_event(&mut wb, Duration::from_millis(300)).await,
        None,
        "bob got ann's event"
    );

    wb.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match wb.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"are you there");

    wa2.close(None).await.expect("close");
    eventually("a closed connection leaves the hub", HUB_WAIT, async || {
        app.hub.connections(a.id) == 1
    })
    .await;
    drop(wb); // gone without a close frame
    eventually(
        "a dropped connection leaves the hub",
        HUB_WAIT,
        async || !app.hub.is_connected(b.id),
    )
    .await;
    app.hub.publish(a.id, &event);
    assert!(
        next_event(&mut wa, WAIT).await.is_some(),
        "the other connection still works"
    );
}

// ------------------------------------------------------------------------------------------
// The whole path: PostgreSQL → relay → Kafka → notifier → socket

async fn slot_exists(url: &str, slot: &str) -> bool {
    let Ok((client, conn)) = tokio_postgres::connect(url, NoTls).await else {
        return false;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .is_ok_and(|r| r.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_recipients_socket_and_nobody_elses() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let (a, b, c) = (
        app.new_user("ann").await,
        app.new_user("bob").await,
        app.new_user("cid").await,
    );
    let channel = app.befriend(&a, &b).await;

    // The relay in-process, on a slot, publication and topics of the test's own. Declared after
    // `app`: dropped first, so the slot goes before the database (also when the test panics).
    let mut cdc = Cdc::new(&app.db);
    cdc.start_relay().await;
    let topics = cdc.topics();

    // The notifier, placed at the end of every partition once the relay has made its topics.
    let sink: Arc<dyn PushSink> = Arc::new(app.hub.clone());
    let mut pcfg = PushConfig::new(brokers(), topics.clone());
    pcfg.refresh = Duration::from_millis(500);
    let mut notifier = PushNotifier::new(pcfg, app.store.pool().clone(), sink).expect("notifier");
    let partitions = topics.len() * PARTITIONS as usize;
    let slot = cdc.slot();
    eventually("the relay starts", WAIT, async || {
        cdc.check().await;
        notifier.start().await.expect("notifier start");
        notifier.assigned_partitions() == partitions && slot_exists(&app.db.url, &slot).await
    })
    .await;
    let mut wb = connect_as(&app, &b).await;
    let mut wc = connect_as(&app, &c).await;
    let notifier = Task::spawn("push notifier", |stop| async move {
        notifier.run(stop).await.map_err(|e| e.to_string())
    });

    // A's message to B: B's socket gets it (the slot exists, so it is streamed, not snapshotted).
    let sent = app.send(&a, channel, "hello bob").await;
    let expected = json!({
        "type": "message",
        "channel_id": channel,
        "message_id": sent.body["message_id"],
        "seq": sent.body["seq"],
        "sender_id": a.id,
    });
    let (got, before) = until(&mut wb, "message event for bob", |e| e["type"] == "message").await;
    assert_eq!(got, expected, "events before it: {before:?}");

    // C is no member: nothing for C. A later change that does concern C is the fence: events
    // to one connection keep their order, so a message event for C would have come first.
    app.befriend(&a, &c).await;
    let (fence, before) = until(&mut wc, "an event for cid", |_| true).await;
    assert!(before.is_empty());
    assert_ne!(
        fence["type"], "message",
        "cid got someone else's message: {fence}"
    );
    assert!(
        fence == json!({"type": "contact_changed", "contact_id": a.id})
            || fence["type"] == "conversation_changed",
        "unexpected first event for cid: {fence}"
    );

    // Both stop cleanly; then the slot, topics and groups go.
    notifier.stop().await;
    cdc.finish().await;
}
