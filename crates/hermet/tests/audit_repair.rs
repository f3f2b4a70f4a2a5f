//! The background audit of `hermet serve` repairs what it finds (`audit.repair`, on by default):
//!
//! - repair: the read side of a running `serve` (`dual_write`, every bucket audited every
//!   second) is corrupted behind its back — a contact row's nickname changed, a conversation
//!   row deleted, an unread count raised — and comes back equal to the write side without
//!   anyone running `hermet admin audit --repair`; `/metrics` counts the findings and the
//!   repairs, and `hermet admin status`'s table records the pass as repaired;
//! - report only: with `audit.repair = false` the same corruption is found pass after pass and
//!   left as it is.
//!
//! Each test has its own database and Redis key prefix; no Kafka. Waits are bounded; nothing
//! asserts timing. Needs `HERMET_DATABASE_URL` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::time::Duration;

use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_store::Store;
use hermet_testkit::{TestDb, TEST_SECRET, TEST_SHARDS};

/// Buckets of the serving process's audit, all of them sampled on every pass.
const BUCKETS: u32 = 16;
/// Rows [`corrupt`] makes wrong, each one finding.
const CORRUPTED: f64 = 3.0;
/// Passes come every second; this is generous.
const REPAIR_WAIT: Duration = Duration::from_secs(60);

/// Users and the single chats between them.
struct Seeded {
    ann: i64,
    bob: i64,
    /// ann–bob and ann–cat.
    ab: i64,
    ac: i64,
}

async fn seed(store: &Store) -> Seeded {
    let l = Limits::default();
    let mut ids = Vec::new();
    for nick in ["ann", "bob", "cat"] {
        let name = Name::parse("nickname", nick, &l).expect("nickname");
        let user = store
            .create_user(&name, &Avatar::default())
            .await
            .expect("create user");
        ids.push(user.value.id);
    }
    let (ann, bob, cat) = (ids[0], ids[1], ids[2]);
    let ab = store.add_friend(ann, bob).await.expect("befriend").value;
    let ac = store.add_friend(ann, cat).await.expect("befriend").value;
    for (from, channel, text) in [
        (ann, ab, "hello bob"),
        (ann, ab, "are you there"),
        (cat, ac, "hi ann"),
        (cat, ac, "lunch?"),
    ] {
        let content = Content::parse(text, &l).expect("content");
        store
            .send_message(from, channel, &content, &MessageType::text())
            .await
            .expect("send");
    }
    Seeded { ann, bob, ab, ac }
}

/// What [`corrupt`] changes, as it is now: ann's nickname for bob, whether bob has his row of
/// the chat with ann, and ann's unread count in the chat with cat.
async fn corrupted_values(store: &Store, s: &Seeded) -> (String, bool, i64) {
    let conn = store.pool().get().await.expect("connection");
    let nickname: String = conn
        .query_one(
            "SELECT contact_nickname FROM user_contact_view WHERE user_id = $1 AND contact_id = $2",
            &[&s.ann, &s.bob],
        )
        .await
        .expect("contact row")
        .get(0);
    let bob_row = conn
        .query_opt(
            "SELECT 1 FROM user_conversation_view WHERE user_id = $1 AND channel_id = $2",
            &[&s.bob, &s.ab],
        )
        .await
        .expect("conversation row")
        .is_some();
    let unread: i64 = conn
        .query_one(
            "SELECT unread_count::bigint FROM user_conversation_view
              WHERE user_id = $1 AND channel_id = $2",
            &[&s.ann, &s.ac],
        )
        .await
        .expect("conversation row")
        .get(0);
    (nickname, bob_row, unread)
}

/// Makes [`CORRUPTED`] read-side rows wrong, behind the running process's back.
async fn corrupt(store: &Store, s: &Seeded) {
    let mut conn = store.pool().get().await.expect("connection");
    let tx = conn.transaction().await.expect("transaction");
    let changed = [
        tx.execute(
            "UPDATE user_contact_view SET contact_nickname = 'corrupted'
              WHERE user_id = $1 AND contact_id = $2",
            &[&s.ann, &s.bob],
        )
        .await
        .expect("corrupt a contact"),
        tx.execute(
            "DELETE FROM user_conversation_view WHERE user_id = $1 AND channel_id = $2",
            &[&s.bob, &s.ab],
        )
        .await
        .expect("delete a conversation"),
        tx.execute(
            "UPDATE user_conversation_view SET unread_count = unread_count + 5
              WHERE user_id = $1 AND channel_id = $2",
            &[&s.ann, &s.ac],
        )
        .await
        .expect("corrupt an unread count"),
    ];
    assert_eq!(changed, [1, 1, 1], "each statement changes one row");
    tx.commit().await.expect("commit");
}

/// Findings of an audit of every bucket, from the test's side.
async fn findings(store: &Store) -> usize {
    let conn = store.pool().get().await.expect("connection");
    hermet_store::audit::audit(&conn, PREVIEW as i32, BUCKETS, None)
        .await
        .expect("audit")
        .findings
        .len()
}

/// `hermet serve` in `dual_write` mode on `db`, auditing every bucket every second.
struct Serving {
    proc: Proc,
    http: reqwest::Client,
    base: String,
}

impl Serving {
    async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Serving {
        let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let addr = free_addr();
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut env = vec![
            kv("HERMET_DATABASE_URL", &db.url),
            kv("HERMET_SHARDS", &TEST_SHARDS.to_string()),
            kv("HERMET_SYNC_MODE", "dual_write"),
            kv("HERMET_READ_SIDE__PREVIEW_CHARS", &PREVIEW.to_string()),
            kv("HERMET_HTTP_ADDR", &addr),
            kv("HERMET_JWT_SECRET", TEST_SECRET),
            kv("HERMET_AUTH__OPEN_SIGNUP", "true"),
            // A repair retires every cached page: only this test's pages.
            kv("HERMET_REDIS__KEY_PREFIX", &format!("ar{tag}")),
            kv("HERMET_AUDIT__INTERVAL_SECS", "1"),
            kv("HERMET_AUDIT__BUCKETS", &BUCKETS.to_string()),
            kv("HERMET_AUDIT__SAMPLE_BUCKETS", &BUCKETS.to_string()),
            kv("HERMET_AUDIT__RECHECK_MS", "100"),
        ];
        env.extend(extra.iter().map(|(k, v)| kv(k, v)));
        let log = std::env::temp_dir().join(format!("hermet-ar-test-{tag}-serve.log"));
        let mut proc = Proc::spawn("serve", &["serve"], &env, log);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let base = format!("http://{addr}");
        wait_ready(&mut proc, &http, &base).await;
        Serving { proc, http, base }
    }
}

fn counter(text: &str, series: &str) -> f64 {
    sample_sum(text, series, &[])
        .unwrap_or_else(|| panic!("{series} is missing from /metrics:\n{text}"))
}

/// `hermet_audit_runs` rows of `serve`'s audit with findings: (all, repaired).
async fn serve_runs_with_findings(store: &Store) -> (i64, i64) {
    let conn = store.pool().get().await.expect("connection");
    let row = conn
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE repaired) FROM hermet_audit_runs
              WHERE source = 'serve' AND findings > 0",
            &[],
        )
        .await
        .expect("audit runs");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_audit_repairs_a_corrupted_read_side() {
    let db = TestDb::new().await;
    let store = db.store(PREVIEW);
    let s = seed(&store).await;
    db.assert_converged(&store).await;
    let before = corrupted_values(&store, &s).await;
    assert_eq!(before.0, "bob");
    assert!(before.1);

    let mut app = Serving::start(&db, &[]).await;
    let first = scrape(&app.http, &app.base).await;
    assert_eq!(
        counter(&first, "hermet_audit_repaired_total"),
        0.0,
        "registered at 0 from the start"
    );
    corrupt(&store, &s).await;
    assert_ne!(corrupted_values(&store, &s).await, before);

    let (http, base, st) = (&app.http, app.base.as_str(), &store);
    let text = poll_until(
        &mut app.proc,
        "the background audit repaired the read side",
        REPAIR_WAIT,
        || async move {
            // Clean and recorded first, then the counters: the repair commits before it is
            // counted, and the pass is recorded after that.
            if findings(st).await > 0 || serve_runs_with_findings(st).await.1 == 0 {
                return None;
            }
            let text = scrape(http, base).await;
            (counter(&text, "hermet_audit_repaired_total") >= CORRUPTED).then_some(text)
        },
    )
    .await;
    let (found, repaired) = (
        counter(&text, "hermet_audit_findings_total"),
        counter(&text, "hermet_audit_repaired_total"),
    );
    eprintln!("findings {found}, repaired {repaired}");
    assert!(found >= CORRUPTED, "findings counted: {found}");
    assert!(repaired >= CORRUPTED, "repairs counted: {repaired}");
    assert_eq!(counter(&text, "hermet_audit_repair_failures_total"), 0.0);
    assert_eq!(corrupted_values(&store, &s).await, before);
    db.assert_converged(&store).await;
    let (runs, repaired_runs) = serve_runs_with_findings(&store).await;
    assert!(
        runs >= 1 && repaired_runs == runs,
        "every pass with findings recorded as repaired: {repaired_runs} of {runs}"
    );
    app.proc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_repair_off_the_background_audit_only_reports() {
    let db = TestDb::new().await;
    let store = db.store(PREVIEW);
    let s = seed(&store).await;
    let before = corrupted_values(&store, &s).await;

    let mut app = Serving::start(&db, &[("HERMET_AUDIT__REPAIR", "false")]).await;
    corrupt(&store, &s).await;
    let wrong = corrupted_values(&store, &s).await;
    assert_ne!(wrong, before);

    // Two passes' worth of findings, both recorded: the second pass saw the rows the first one
    // left, so a repair would have had its chance (it commits before the next pass starts).
    let (http, base, st) = (&app.http, app.base.as_str(), &store);
    let text = poll_until(
        &mut app.proc,
        "two audit passes found the corruption",
        REPAIR_WAIT,
        || async move {
            if serve_runs_with_findings(st).await.0 < 2 {
                return None;
            }
            let text = scrape(http, base).await;
            (counter(&text, "hermet_audit_findings_total") >= 2.0 * CORRUPTED).then_some(text)
        },
    )
    .await;
    assert_eq!(counter(&text, "hermet_audit_repaired_total"), 0.0);
    assert_eq!(
        corrupted_values(&store, &s).await,
        wrong,
        "audit.repair = false leaves the rows as they are"
    );
    assert_eq!(findings(&store).await, CORRUPTED as usize);
    let (runs, repaired_runs) = serve_runs_with_findings(&store).await;
    assert!(runs >= 2, "passes with findings recorded: {runs}");
    assert_eq!(repaired_runs, 0, "no pass recorded as repaired");
    app.proc.stop().await;
}
