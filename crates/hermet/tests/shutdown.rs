//! `hermet serve` stopping under load, in each sync mode (`dual_write`, `async`, `cdc`).
//!
//! The process runs on its own database (and, in `cdc`, its own slot, topics and groups).
//! Several tasks send messages through the HTTP API without pause; SIGTERM arrives while
//! requests are in flight. Then:
//! - the process exits with status 0, well within `shutdown.deadline_secs`;
//! - every send answered 2xx is in the write side;
//! - in `cdc`, the slot's `confirmed_flush_lsn` covers the `X-Hermet-Lsn` of every answered
//!   send: the relay streamed up to its stop fence, Kafka acknowledged it, and PostgreSQL was
//!   told before the process exited;
//! - after a restart the read side converges to the rebuild oracle (nothing lost, nothing
//!   applied wrongly).
//!
//! The load is shown to be real: requests were in flight when the signal was sent, and some
//! were answered after it (the API finishes what it accepted).
//! Needs `HERMET_DATABASE_URL` and `HERMET_KAFKA_BROKERS` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermet_core::Lsn;
use hermet_testkit::signal::Signal;
use hermet_testkit::{eventually, TestDb, TEST_SECRET};
use serde_json::{json, Value};

/// `shutdown.deadline_secs` of the process under test.
const DEADLINE_SECS: u64 = 20;

/// Concurrent senders.
const SENDERS: usize = 6;

/// Sends answered before SIGTERM is sent: the load is well under way by then.
const BEFORE_SIGNAL: usize = 150;

/// A send answered 2xx, with what identifies it in the write side.
struct Accepted {
    channel: i64,
    content: String,
    lsn: Lsn,
    answered: Instant,
}

/// What the senders saw.
#[derive(Default)]
struct Seen {
    accepted: Mutex<Vec<Accepted>>,
    in_flight: AtomicUsize,
    /// Non-2xx answers (a request refused while stopping is fine; it must not be counted).
    refused: AtomicUsize,
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await
    }

    async fn json(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let r = self.post(path, token, body).await.expect("request");
        assert_eq!(r.status(), 201, "{path}");
        r.json().await.expect("json")
    }
}

/// Sends to `channel` as `token` until the API stops answering (or `stop`).
async fn sender(
    api: Arc<Api>,
    token: String,
    channel: i64,
    task: usize,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let content = format!("s{task}-{i}");
        i += 1;
        seen.in_flight.fetch_add(1, Ordering::SeqCst);
        let r = api
            .post(
                &format!("/v1/channels/{channel}/messages"),
                Some(&token),
                json!({"content": content}),
            )
            .await;
        let answered = Instant::now();
        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        let Ok(r) = r else {
            // The server closed the connection or no longer listens: it is stopping.
            return;
        };
        if !r.status().is_success() {
            seen.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let lsn = r
            .headers()
            .get("x-hermet-lsn")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Lsn>().ok())
            .expect("a write answers X-Hermet-Lsn");
        seen.accepted.lock().expect("accepted").push(Accepted {
            channel,
            content,
            lsn,
            answered,
        });
    }
}

async fn stops_cleanly_under_load(mode: &str) {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut p = Pipeline::new(&db, "sd", 50);
    let store = db.store_with(store_cfg());
    let addr = free_addr();
    let env: Vec<(String, String)> = vec![
        ("HERMET_HTTP_ADDR".into(), addr.clone()),
        ("HERMET_JWT_SECRET".into(), TEST_SECRET.into()),
        ("HERMET_AUTH__OPEN_SIGNUP".into(), "true".into()),
        ("HERMET_SYNC_MODE".into(), mode.into()),
        (
            "HERMET_SHUTDOWN__DEADLINE_SECS".into(),
            DEADLINE_SECS.to_string(),
        ),
        // No background repair: the read side must converge by the projectors alone.
        ("HERMET_AUDIT__INTERVAL_SECS".into(), "0".into()),
    ];
    let serve = p.start("serve", &["serve"], &env);
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        base: format!("http://{addr}"),
    });
    wait_ready(&mut p.procs[serve], &api.http, &api.base).await;
    if mode == "cdc" {
        p.wait_relay(serve).await;
    }

    // Pairs of friends; each sender writes to a channel of its own.
    let mut chats = Vec::new();
    for t in 0..SENDERS {
        let a = api
            .json("/v1/users", None, json!({"nickname": format!("a{t}")}))
            .await;
        let b = api
            .json("/v1/users", None, json!({"nickname": format!("b{t}")}))
            .await;
        let token = a["token"].as_str().expect("token").to_owned();
        let ch = api
            .json("/v1/friends", Some(&token), json!({"friend_id": b["id"]}))
            .await["channel_id"]
            .as_i64()
            .expect("channel_id");
        chats.push((token, ch));
    }

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = chats
        .into_iter()
        .enumerate()
        .map(|(t, (token, ch))| {
            tokio::spawn(sender(
                api.clone(),
                token,
                ch,
                t,
                seen.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually("the load is under way", WAIT, || {
        let n = seen.accepted.lock().expect("accepted").len();
        std::future::ready((n >= BEFORE_SIGNAL).then_some(()))
    })
    .await;
    p.procs[serve].assert_running();

    let in_flight_at_signal = seen.in_flight.load(Ordering::SeqCst);
    let pid = p.procs[serve].pid().expect("running");
    let signalled = Instant::now();
    hermet_testkit::signal::process(pid, Signal::Term).expect("SIGTERM");
    let status = eventually(
        "serve exits after SIGTERM",
        Duration::from_secs(DEADLINE_SECS + 30),
        || std::future::ready(p.procs[serve].exited()),
    )
    .await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }
    assert!(
        status.success(),
        "{mode}: serve exited with {status} on SIGTERM\n{}",
        p.procs[serve].tail()
    );
    assert!(
        took < Duration::from_secs(DEADLINE_SECS),
        "{mode}: the stop took {took:?}, past shutdown.deadline_secs ({DEADLINE_SECS} s)"
    );

    let accepted = std::mem::take(&mut *seen.accepted.lock().expect("accepted"));
    let after_signal = accepted.iter().filter(|a| a.answered > signalled).count();
    eprintln!(
        "{mode}: {} sends accepted, {after_signal} answered after SIGTERM, {in_flight_at_signal} in \
         flight at SIGTERM, {} refused; stopped in {took:?}",
        accepted.len(),
        seen.refused.load(Ordering::Relaxed)
    );
    assert!(
        in_flight_at_signal > 0,
        "{mode}: requests were in flight when SIGTERM was sent"
    );
    assert!(
        after_signal > 0,
        "{mode}: requests in progress at SIGTERM are answered before the API stops"
    );

    // Every answered send is in the write side.
    let conn = store.pool().get().await.expect("connection");
    let rows = conn
        .query("SELECT channel_id, content FROM messages", &[])
        .await
        .expect("messages");
    let written: std::collections::HashSet<(i64, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<String> = accepted
        .iter()
        .filter(|a| !written.contains(&(a.channel, a.content.clone())))
        .map(|a| format!("{}:{}", a.channel, a.content))
        .collect();
    assert!(
        missing.is_empty(),
        "{mode}: answered 2xx but not written: {missing:?}"
    );

    let last_lsn = accepted
        .iter()
        .map(|a| a.lsn)
        .max()
        .expect("sends were accepted");
    if mode == "cdc" {
        // The relay confirmed, before exiting, a position past every acknowledged write.
        let confirmed: String = conn
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&p.slot()],
            )
            .await
            .expect("the slot")
            .get(0);
        let confirmed: Lsn = confirmed.parse().expect("an LSN");
        assert!(
            confirmed >= last_lsn,
            "cdc: the slot confirmed {confirmed}, before the last acknowledged write at {last_lsn}\n{}",
            p.procs[serve].tail()
        );
    }

    // Restarted, the process catches up, and the read side is what the write side says.
    let again = p.start("serve-again", &["serve"], &env);
    wait_ready(&mut p.procs[again], &api.http, &api.base).await;
    if mode == "cdc" {
        p.drain(&store, last_lsn, &[again]).await;
    }
    eventually("the read side converges to the oracle", WAIT, || async {
        db.diff(&store).await.is_empty().then_some(())
    })
    .await;
    db.assert_converged(&store).await;
    p.procs[again].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_write_stops_cleanly_under_load() {
    stops_cleanly_under_load("dual_write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_stops_cleanly_under_load() {
    stops_cleanly_under_load("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdc_stops_cleanly_under_load() {
    stops_cleanly_under_load("cdc").await;
}
