//! The projectors as the real binary runs them (issue 4, "Done means"):
//!
//! - crash: `hermet serve --role projector` in `cdc` mode is SIGKILLed at random points under a
//!   steady write load, several times, and restarted; after draining, the read side equals the
//!   rebuild oracle and no unread count is off (by one or otherwise);
//! - all-in-one: `hermet serve` in `cdc` mode (relay, projectors, API in one process) answers
//!   a list with `X-Hermet-Min-Lsn` from a send with that message, not stale; a page in the
//!   Redis cache is retired by the projectors' invalidation; and `/metrics`, scraped after the
//!   workload, has every documented series, the ones the workload drives moved, and passes
//!   `promtool check metrics` (issue 6).
//!
//! Each test has its own database, slot, publication, topics, dead-letter topic and consumer
//! groups (`projector.group_prefix`), drops its slot and topics when done, and runs alone
//! (`SERIAL`). Waits are bounded and generous; nothing asserts timing. Needs
//! `HERMET_DATABASE_URL` and `HERMET_KAFKA_BROKERS` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hermet_store::oracle::EXPECTED_CONVERSATIONS;
use hermet_store::Store;
use hermet_testkit::workload;
use hermet_testkit::{TestDb, TEST_SECRET};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Offsets the groups have applied (from the watermarks written with each batch).
async fn applied_offsets(store: &Store, group_prefix: &str) -> i64 {
    let conn = store.pool().get().await.expect("connection");
    conn.query_one(
        "SELECT COALESCE(sum(next_offset), 0)::bigint FROM hermet_projector_watermarks
          WHERE projector LIKE $1 || '%'",
        &[&group_prefix],
    )
    .await
    .expect("watermarks")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projector_killed_under_load_converges() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut p = Pipeline::new(&db, "pp", 50);
    let store = db.store_with(store_cfg());

    // Everyone befriends everyone, so most sends and reads succeed from the start.
    let mut base = workload::setup(&store).await.expect("users");
    for i in 0..base.users.len() {
        for j in (i + 1)..base.users.len() {
            let ch = store
                .add_friend(base.users[i], base.users[j])
                .await
                .expect("friends")
                .value;
            base.channels.push(ch);
        }
    }
    let relay = p.start("relay", &["serve", "--role", "cdc"], &[]);
    p.wait_relay(relay).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| tokio::spawn(load(store.clone(), base.clone(), t, stop.clone(), None)))
        .collect();

    let mut rng = StdRng::seed_from_u64(workload::seed());
    let kills = 5;
    let mut progressed_kills = 0;
    for k in 0..kills {
        let proj = p.start("projector", &["serve", "--role", "projector"], &[]);
        let before = applied_offsets(&store, &p.group_prefix()).await;
        if k % 2 == 0 {
            // Mid-work: once this process has applied something, after a random pause.
            let prefix = p.group_prefix();
            poll_until(
                &mut p.procs[proj],
                "the projector makes progress",
                WAIT,
                async || applied_offsets(&store, &prefix).await != before,
            )
            .await;
            progressed_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        } else {
            // Anywhere: starting, joining the group, or applying.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..2500))).await;
        }
        p.procs[proj].assert_running();
        p.procs[proj].kill();
        eprintln!("kill {k}: applied offsets {before} before this run");
    }

    stop.store(true, Ordering::Relaxed);
    let mut applied = std::collections::BTreeMap::new();
    let mut retries = 0;
    for w in writers {
        let w = w.await.expect("load task");
        retries += w.retries;
        for (k, n) in w.applied {
            *applied.entry(k).or_insert(0usize) += n;
        }
    }
    eprintln!("load: {applied:?}, lost races {retries}");
    assert!(
        applied.get("send_message").is_some_and(|n| *n > 20),
        "the load sent too few messages: {applied:?}"
    );

    // The last start drains everything.
    let lsn = wal_lsn(&store).await;
    let proj = p.start("projector", &["serve", "--role", "projector"], &[]);
    p.drain(&store, lsn, &[relay, proj]).await;

    let conn = store.pool().get().await.expect("connection");
    let sql = format!(
        "WITH e AS ({EXPECTED_CONVERSATIONS})
         SELECT count(*) FILTER (WHERE v.unread_count IS DISTINCT FROM e.unread_count),
                count(*) FILTER (WHERE e.unread_count > 0),
                count(*)
           FROM e LEFT JOIN user_conversation_view v USING (user_id, channel_id)"
    );
    let row = conn
        .query_one(&sql, &[&(PREVIEW as i32)])
        .await
        .expect("unread check");
    let (wrong, unread_rows, rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    eprintln!(
        "kills {kills} ({progressed_kills} after progress); conversation rows {rows}, with unread {unread_rows}, wrong unread {wrong}"
    );
    assert_eq!(wrong, 0, "unread counts differ from the write side");
    assert!(
        unread_rows > 0,
        "the check needs unread messages to mean anything"
    );
    db.assert_converged(&store).await;

    let topic = p.dlq_topic();
    let letters =
        tokio::task::spawn_blocking(move || hermet_projector::dlq::list(&brokers(), &topic))
            .await
            .expect("thread")
            .expect("dlq list");
    assert!(
        letters.is_empty(),
        "crashes dead-letter nothing: {letters:?}"
    );

    p.procs[proj].stop().await;
    p.procs[relay].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_all_in_cdc_mode_reads_your_writes() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut p = Pipeline::new(&db, "pp", 50);
    let addr = free_addr();
    let app = p.start(
        "serve",
        &["serve"],
        &[
            ("HERMET_HTTP_ADDR".into(), addr.clone()),
            ("HERMET_JWT_SECRET".into(), TEST_SECRET.into()),
            ("HERMET_AUTH__OPEN_SIGNUP".into(), "true".into()),
            ("HERMET_PROJECTOR__READ_WAIT_MS".into(), "30000".into()),
        ],
    );
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    wait_ready(&mut p.procs[app], &http, &base).await;
    // The relay inside `serve` took its snapshot (the topics exist) before projectors wait on them.
    p.wait_relay(app).await;

    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let mut users = Vec::new();
    for nick in ["ann", "bob"] {
        let r = post("/v1/users", None, json!({"nickname": nick}))
            .await
            .expect("create user");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("json");
        users.push((
            v["id"].as_i64().expect("id"),
            v["token"].as_str().expect("token").to_owned(),
        ));
    }
    let ((_, ann), (bob_id, bob)) = (users[0].clone(), users[1].clone());
    let r = post("/v1/friends", Some(&ann), json!({"friend_id": bob_id}))
        .await
        .expect("befriend");
    assert_eq!(r.status(), 201);
    let channel = r.json::<Value>().await.expect("json")["channel_id"]
        .as_i64()
        .expect("channel_id");
    for i in 1..=5i64 {
        let text = format!("hi {i}");
        let sent = post(
            &format!("/v1/channels/{channel}/messages"),
            Some(&ann),
            json!({"content": text}),
        )
        .await
        .expect("send");
        assert_eq!(sent.status(), 201);
        let lsn = sent
            .headers()
            .get("x-hermet-lsn")
            .and_then(|v| v.to_str().ok())
            .expect("X-Hermet-Lsn")
            .to_owned();
        let list = http
            .get(format!("{base}/v1/conversations"))
            .bearer_auth(&bob)
            .header("x-hermet-min-lsn", &lsn)
            .send()
            .await
            .expect("list");
        assert_eq!(list.status(), 200);
        assert!(
            list.headers().get("x-hermet-stale").is_none(),
            "fresh within the wait (min lsn {lsn})"
        );
        let body: Value = list.json().await.expect("json");
        let conv = body["conversations"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["channel_id"] == channel))
            .unwrap_or_else(|| panic!("listed: {body}"));
        // Preview of 5 characters.
        assert_eq!(
            conv["last_message"]["content"],
            text.chars().take(PREVIEW).collect::<String>()
        );
        assert_eq!(conv["unread_count"], i);
    }

    // The cache in `cdc` mode: bob's page is cached (the second plain read is a hit), then a
    // new message must show up without `X-Hermet-Min-Lsn`, which only the projectors'
    // invalidation can make happen before the page expires (minutes).
    let plain_seq = || async {
        let r = http
            .get(format!("{base}/v1/conversations"))
            .bearer_auth(&bob)
            .send()
            .await
            .expect("list");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        body["conversations"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["channel_id"] == channel))
            .and_then(|c| c["last_message"]["seq"].as_i64())
            .unwrap_or(0)
    };
    assert_eq!(plain_seq().await, 5);
    assert_eq!(plain_seq().await, 5);
    let sent = post(
        &format!("/v1/channels/{channel}/messages"),
        Some(&ann),
        json!({"content": "six"}),
    )
    .await
    .expect("send");
    assert_eq!(sent.status(), 201);
    eventually(
        "the projectors' apply retires the cached page",
        WAIT,
        async || plain_seq().await >= 6,
    )
    .await;

    // Metrics after the workload: wait for the slower samplers (audit, consumer statistics).
    let scrape = || common::scrape(&http, &base);
    let text = eventually("audit and consumer statistics report", WAIT, async || {
        let text = scrape().await;
        if text.contains("hermet_consistency_rate ")
            && text.contains("hermet_consumer_lag_messages{")
        {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    check_metrics(&text);
    p.procs[app].stop().await;
}

/// Every series README "Metrics" documents for an all-in-one `cdc` process is there; those the
/// workload drives have moved; `promtool check metrics` accepts the text.
fn check_metrics(text: &str) {
    // (series, labels it must have, must it have moved above 0)
    let expected: &[(&str, &[&str], bool)] = &[
        (
            "hermet_http_request_duration_seconds_count",
            &["route=\"/v1/conversations\"", "status=\"200\""],
            true,
        ),
        (
            "hermet_http_request_duration_seconds_bucket",
            &["le=\"0.005\""],
            true,
        ),
        (
            "hermet_sync_lag_seconds_count",
            &["view=\"conversation\"", "mode=\"cdc\""],
            true,
        ),
        (
            "hermet_sync_lag_seconds_count",
            &["view=\"contact\"", "mode=\"cdc\""],
            true,
        ),
        ("hermet_consistency_rate", &[], true),
        (
            "hermet_view_updates_total",
            &["view=\"conversation\""],
            true,
        ),
        ("hermet_view_updates_total", &["view=\"contact\""], true),
        ("hermet_view_update_failures_total", &[], false),
        ("hermet_cdc_slot_lag_bytes", &[], false),
        ("hermet_cdc_events_total", &[], true),
        (
            "hermet_consumer_lag_messages",
            &["group=", "partition="],
            false,
        ),
        ("hermet_projector_rows_total", &[], true),
        ("hermet_cache_requests_total", &["result=\"hit\""], true),
        ("hermet_cache_requests_total", &["result=\"miss\""], true),
        ("hermet_cache_invalidations_total", &[], true),
        ("hermet_cache_fallbacks_total", &[], false),
        ("hermet_db_pool_connections", &["state=\"max\""], true),
        ("hermet_db_pool_connections", &["state=\"in_use\""], false),
        ("hermet_db_pool_waiting", &[], false),
        ("hermet_stale_reads_total", &[], false),
        ("hermet_cdc_confirmed_lsn", &[], true),
        ("hermet_cdc_commit_to_ack_seconds_count", &[], true),
        ("hermet_projector_batch_seconds_count", &[], true),
        ("hermet_cache_stores_total", &["result=\"stored\""], true),
        (
            "hermet_projector_dead_letters_total",
            &["projector="],
            false,
        ),
        ("hermet_cdc_errors_total", &[], false),
        ("hermet_cdc_truncates_ignored_total", &[], false),
        ("hermet_audit_findings_total", &[], false),
        ("hermet_audit_repaired_total", &[], false),
        ("hermet_audit_repair_failures_total", &[], false),
        ("hermet_cache_errors_total", &["op=\"store\""], false),
        ("hermet_push_connections", &[], false),
        ("hermet_push_events_total", &[], false),
        ("hermet_push_notified_total", &[], false),
        ("hermet_push_failures_total", &[], false),
        ("hermet_push_slow_drops_total", &[], false),
    ];
    for (series, labels, moved) in expected {
        let v = sample_sum(text, series, labels)
            .unwrap_or_else(|| panic!("{series} {labels:?} is missing from /metrics:\n{text}"));
        if *moved {
            assert!(v > 0.0, "{series} {labels:?} did not move (value {v})");
        }
    }
    // Help texts for the documented families.
    for family in [
        "hermet_sync_lag_seconds",
        "hermet_consistency_rate",
        "hermet_cache_requests_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
    }
    promtool_check_metrics(text);
}

fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian `prometheus`, installed by scripts/install-deps.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
