//! What the binary shows operators, as a child process:
//!
//! - `hermet config` prints the database and Redis URLs without their passwords;
//! - an inactive replication slot that retains WAL (cdc configured once, the mode switched to
//!   `dual_write` since, or the relay down for long) is a warning in `hermet admin status` (text
//!   and `--json`) and the gauges `hermet_cdc_slot_retained_wal_bytes` /
//!   `hermet_cdc_slot_active` of `/metrics`.
//!
//! - `GET /v1/ops/status` of a serving process answers what `hermet admin status --json` prints,
//!   to a server API key only.
//!
//! Needs `HERMET_DATABASE_URL` and `HERMET_KAFKA_BROKERS` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::time::Duration;

use hermet_testkit::{TestDb, TEST_SECRET, TEST_SHARDS};
use serde_json::Value;

#[tokio::test]
async fn config_prints_urls_without_passwords() {
    let env = vec![
        (
            "HERMET_DATABASE_URL".to_owned(),
            "postgres://hermet:db-s3cret@db.internal:5432/hermet".to_owned(),
        ),
        (
            "HERMET_REDIS_URL".to_owned(),
            "redis://:redis-s3cret@cache.internal:6379/0".to_owned(),
        ),
        ("HERMET_JWT_SECRET".to_owned(), TEST_SECRET.to_owned()),
    ];
    let out = hermet(&["config"], env).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("postgres://hermet:***@db.internal:5432/hermet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("redis://:***@cache.internal:6379/0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret"),
        "a password is printed:\n{stdout}"
    );
    assert!(!stdout.contains(TEST_SECRET), "the JWT secret is printed");
}

/// Drops the test's slot; declared after the [`TestDb`], so it goes first (a database with a
/// slot cannot be dropped).
struct Slot {
    url: String,
    name: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        cleanup_blocking(self.url.clone(), self.name.clone(), Vec::new(), Vec::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_slot_retaining_wal_is_reported() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let slot = Slot {
        url: db.url.clone(),
        name: format!("ao_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
    };
    let client = connect(&db.url).await;
    // A slot nobody streams from (as the relay leaves behind when the mode is switched to
    // dual_write), then WAL it has to keep.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot.name],
        )
        .await
        .expect("slot");
    client
        .batch_execute(
            "CREATE TABLE ballast (x int);
             INSERT INTO ballast SELECT generate_series(1, 20000);",
        )
        .await
        .expect("WAL");
    let env = vec![
        ("HERMET_DATABASE_URL".to_owned(), db.url.clone()),
        ("HERMET_KAFKA_BROKERS".to_owned(), brokers()),
        ("HERMET_SHARDS".to_owned(), TEST_SHARDS.to_string()),
        ("HERMET_SYNC_MODE".to_owned(), "dual_write".to_owned()),
        ("HERMET_CDC__SLOT".to_owned(), slot.name.clone()),
        (
            "HERMET_PROJECTOR__GROUP_PREFIX".to_owned(),
            format!("{}-", slot.name),
        ),
    ];

    let out = hermet(&["admin", "status", "--json"], env.clone()).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let s: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(s["slot"]["slot"], slot.name.as_str(), "{s}");
    assert_eq!(s["slot"]["active"], false, "{s}");
    let retained = s["slot"]["retained_wal_bytes"].as_i64().unwrap_or(0);
    assert!(retained > 0, "the slot keeps the WAL written since: {s}");
    let warnings: Vec<&str> = s["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("warnings: {s}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&slot.name) && w.contains("inactive")),
        "{s}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("dual_write")),
        "nothing in a dual_write configuration consumes the slot: {s}"
    );

    let out = hermet(&["admin", "status"], env.clone()).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("WARNING") && l.contains(&slot.name))
        .unwrap_or_else(|| panic!("no warning about the slot:\n{stdout}"));
    assert!(
        warning.contains("inactive") && warning.contains("retains"),
        "{warning}"
    );

    // The same on /metrics of a serving process.
    let addr = free_addr();
    let mut serve_env = env.clone();
    serve_env.extend([
        ("HERMET_HTTP_ADDR".to_owned(), addr.clone()),
        ("HERMET_JWT_SECRET".to_owned(), TEST_SECRET.to_owned()),
        ("HERMET_AUTH__OPEN_SIGNUP".to_owned(), "true".to_owned()),
        ("HERMET_AUDIT__INTERVAL_SECS".to_owned(), "0".to_owned()),
        ("HERMET_REDIS__CACHE".to_owned(), "false".to_owned()),
    ]);
    let log = std::env::temp_dir().join(format!("hermet-ao-test-{}-serve.log", slot.name));
    let mut serve = Proc::spawn("serve", &["serve", "--role", "api"], &serve_env, log);
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_ready(&mut serve, &http, &base).await;
    let (url, name) = (format!("{base}/metrics"), slot.name.clone());
    let (retained, active) = poll_until(
        &mut serve,
        "slot gauges on /metrics",
        Duration::from_secs(60),
        || {
            let (http, url, name) = (&http, url.clone(), name.clone());
            async move {
                let text = http.get(url).send().await.ok()?.text().await.ok()?;
                let label = format!("slot=\"{name}\"");
                Some((
                    sample_sum(&text, "hermet_cdc_slot_retained_wal_bytes", &[&label])?,
                    sample_sum(&text, "hermet_cdc_slot_active", &[&label])?,
                ))
            }
        },
    )
    .await;
    assert!(retained > 0.0, "retained {retained}");
    assert_eq!(active, 0.0);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_status_answers_the_status_to_a_server_key() {
    let db = TestDb::new().await;
    let name = hermet_core::validate::KeyName::parse("ops").expect("name");
    let key = db
        .store(PREVIEW)
        .create_api_key(&name)
        .await
        .expect("key")
        .key;
    // Names of this test's own: no slot by that name exists, no group has committed.
    let tag = format!("ops_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let addr = free_addr();
    let env = vec![
        ("HERMET_DATABASE_URL".to_owned(), db.url.clone()),
        ("HERMET_KAFKA_BROKERS".to_owned(), brokers()),
        ("HERMET_SHARDS".to_owned(), TEST_SHARDS.to_string()),
        ("HERMET_SYNC_MODE".to_owned(), "dual_write".to_owned()),
        ("HERMET_CDC__SLOT".to_owned(), tag.clone()),
        (
            "HERMET_PROJECTOR__GROUP_PREFIX".to_owned(),
            format!("{tag}-"),
        ),
        ("HERMET_HTTP_ADDR".to_owned(), addr.clone()),
        ("HERMET_JWT_SECRET".to_owned(), TEST_SECRET.to_owned()),
        ("HERMET_AUTH__OPEN_SIGNUP".to_owned(), "true".to_owned()),
        ("HERMET_AUDIT__INTERVAL_SECS".to_owned(), "0".to_owned()),
        ("HERMET_REDIS__CACHE".to_owned(), "false".to_owned()),
    ];
    let log = std::env::temp_dir().join(format!("hermet-ao-test-{tag}-serve.log"));
    let mut serve = Proc::spawn("serve", &["serve", "--role", "api"], &env, log);
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_ready(&mut serve, &http, &base).await;
    let url = format!("{base}/v1/ops/status");
    let get = |auth: Option<String>| {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        async move {
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let no_store = r
                .headers()
                .get("cache-control")
                .is_some_and(|v| v == "no-store");
            (
                status,
                no_store,
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let (status, _, body) = get(None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &"invalid_api_key".into()),
        "{body}"
    );
    let r = http
        .post(format!("{base}/v1/users"))
        .json(&serde_json::json!({"nickname": "Ann"}))
        .send()
        .await
        .expect("sign up");
    let user: Value = r.json().await.expect("user");
    let token = user["token"].as_str().expect("token").to_owned();
    let (status, _, body) = get(Some(token)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &"invalid_api_key".into()),
        "{body}"
    );

    let (status, no_store, s) = get(Some(key)).await;
    assert_eq!(status, 200, "{s}\n{}", serve.tail());
    assert!(no_store, "live figures are not to be cached");
    assert_eq!(s["sync_mode"], "dual_write", "{s}");
    assert_eq!(s["outbox_pending"], 0, "{s}");
    assert!(s["slot"].is_null(), "{s}");
    assert!(s["groups"].is_array() && s["warnings"].is_array(), "{s}");
    serve.stop().await;
}
