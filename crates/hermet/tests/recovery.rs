//! Recovery commands against real PostgreSQL and Kafka, as the `hermet` binary runs them
//! (issue 5, "Done means"):
//!
//! - rebuild: `hermet admin rebuild` in `cdc` mode while writes flow and a reader lists
//!   conversations and contacts without pause, over a read side corrupted beforehand (rows
//!   deleted, a nickname wrong under a too-high version, reverse-index entries gone). No read
//!   fails; after draining, the read side equals the rebuild oracle;
//! - replay: a workload in `cdc` mode, drained; both projector groups moved back to offset 0
//!   and reprocessed: the read side is byte for byte what it was (bookkeeping `updated_at`
//!   included: replayed events write nothing) and equals the oracle; a replay is refused while
//!   the group has live members;
//! - bad input to `rebuild`, `replay` and `status` gets a clear error; `status --json` reports
//!   the last audit.
//!
//! Each test has its own database, slot, publication, topics and consumer groups
//! (`projector.group_prefix`), drops its slot and topics when done, and runs alone (`SERIAL`).
//! Waits are bounded and generous; nothing asserts timing. Needs `HERMET_DATABASE_URL` and
//! `HERMET_KAFKA_BROKERS` (`eval "$(scripts/services.sh env)"`).

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermet_store::{Store, StoreConfig, SyncMode};
use hermet_testkit::workload;
use hermet_testkit::{TestDb, TEST_SHARDS};
use serde_json::Value;

/// The workload's users befriending each other, plus a bulk of seeded users, chats and groups
/// (set-based, as `hermet-bench rebuild` seeds), so the rebuild has rows to build.
async fn populate(store: &Store) -> workload::World {
    {
        let conn = store.pool().get().await.expect("connection");
        hermet_testkit::seed::write_side(&conn, 1_000, 2, 40)
            .await
            .expect("seed");
    }
    let mut base = workload::setup(store).await.expect("users");
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
    base
}

/// The swapped-in partitions carry the live names (`<table>_<n>`, which list reads name), and
/// no list read had to fall back to the parent table for a missing one.
async fn assert_partitions_named(store: &Store, users: &[i64]) {
    for &u in users {
        store.list_conversations(u, 50, None).await.expect("list");
        store.list_contacts(u, 50).await.expect("contacts");
    }
    let conn = store.pool().get().await.expect("connection");
    for t in [
        "user_conversation_view",
        "user_contact_view",
        "conversation_reverse_index",
        "contact_reverse_index",
    ] {
        let names = hermet_store::shard::ShardNames::load(&conn, t)
            .await
            .expect("catalog");
        assert!(names.is_some(), "{t}: partitions have their live names");
    }
    let queries = store.list_queries(&conn).await.expect("list queries");
    assert!(queries.routed(), "list reads name partitions");
    assert_eq!(queries.fallbacks(), 0, "no list read missed its partition");
}

/// Every read-side row, bookkeeping included, as text in a stable order.
async fn read_side(store: &Store) -> Vec<String> {
    let conn = store.pool().get().await.expect("connection");
    let mut out = Vec::new();
    for t in [
        "user_conversation_view",
        "user_contact_view",
        "conversation_reverse_index",
        "contact_reverse_index",
    ] {
        let rows = conn
            .query(&format!("SELECT t::text FROM {t} t ORDER BY t::text"), &[])
            .await
            .expect("read side");
        out.extend(
            rows.iter()
                .map(|r| format!("{t} {}", r.get::<_, String>(0))),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_under_cdc_load_keeps_reads_and_converges() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut p = Pipeline::new(&db, "rc", 200);
    let store = db.store_with(store_cfg());
    let base = populate(&store).await;

    let relay = p.start("relay", &["serve", "--role", "cdc"], &[]);
    p.wait_relay(relay).await;
    let proj = p.start("projector", &["serve", "--role", "projector"], &[]);
    let lsn = wal_lsn(&store).await;
    p.drain(&store, lsn, &[relay, proj]).await;
    db.assert_converged(&store).await;

    // Corrupt the read side in ways the projection alone would never undo.
    {
        let conn = store.pool().get().await.expect("connection");
        let gone = conn
            .execute(
                "DELETE FROM user_conversation_view WHERE user_id BETWEEN 10 AND 20",
                &[],
            )
            .await
            .expect("delete rows");
        let wrong = conn
            .execute(
                "UPDATE user_conversation_view SET peer_nickname = 'wrong',
                        peer_profile_ver = peer_profile_ver + 1000000
                  WHERE user_id BETWEEN 30 AND 40 AND conversation_type = 'single'",
                &[],
            )
            .await
            .expect("wrong nicknames");
        let refs = conn
            .execute(
                "DELETE FROM contact_reverse_index WHERE contact_user_id BETWEEN 50 AND 60",
                &[],
            )
            .await
            .expect("delete index entries");
        assert!(gone > 0 && wrong > 0 && refs > 0, "corruption applied");
    }
    assert!(
        !db.diff(&store).await.is_empty(),
        "the read side is corrupted"
    );

    // Writers and a reader, all the way through the rebuild.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| tokio::spawn(load(store.clone(), base.clone(), t, stop.clone(), None)))
        .collect();
    let reads = Arc::new(AtomicU64::new(0));
    let read_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (store, stop, reads, errors) = (
            store.clone(),
            stop.clone(),
            reads.clone(),
            read_errors.clone(),
        );
        let users: Vec<i64> = base.users.iter().copied().chain(1..=200).collect();
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let u = users[i % users.len()];
                i += 1;
                let conv = store.list_conversations(u, 50, None).await;
                let cont = store.list_contacts(u, 50).await;
                match (conv, cont) {
                    (Ok(_), Ok(_)) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        errors
                            .lock()
                            .expect("errors")
                            .push(format!("user {u}: {e}"));
                    }
                }
            }
        })
    };
    // Let the writers get going before the rebuild starts.
    eventually("the reader makes progress", WAIT, async || {
        reads.load(Ordering::Relaxed) >= 20
    })
    .await;
    let reads_before = reads.load(Ordering::Relaxed);
    let out = p.admin(&["admin", "rebuild"]).await;
    let reads_during = reads.load(Ordering::Relaxed) - reads_before;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "rebuild failed\n{stdout}\n{stderr}");
    eprintln!("{stdout}");

    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    let mut applied = std::collections::BTreeMap::new();
    for w in writers {
        for (k, n) in w.await.expect("load task").applied {
            *applied.entry(k).or_insert(0usize) += n;
        }
    }
    eprintln!("load: {applied:?}; reads during the rebuild: {reads_during}");
    let errors = read_errors.lock().expect("errors").clone();
    assert!(errors.is_empty(), "reads failed: {errors:?}");
    assert!(reads_during > 0, "the reader ran during the rebuild");
    // The rebuild saw writes land after its snapshot ("catch-up passes: [..] keys; swap: N").
    let caught_up: u64 = stdout
        .lines()
        .find(|l| l.contains("catch-up passes"))
        .and_then(|l| l.split("keys under the lock").next())
        .map(|part| {
            part.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        caught_up > 0,
        "writes landed during the rebuild and were caught up:\n{stdout}"
    );

    let lsn = wal_lsn(&store).await;
    p.drain(&store, lsn, &[relay, proj]).await;
    db.assert_converged(&store).await;
    let conn = store.pool().get().await.expect("connection");
    let leftovers: i64 = conn
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace
               AND (relname LIKE '%\\_shadow%' OR relname LIKE '%\\_retired%')",
            &[],
        )
        .await
        .expect("catalog")
        .get(0);
    assert_eq!(leftovers, 0, "no shadow or retired table is left behind");
    assert_partitions_named(&store, &base.users).await;
    p.procs[proj].stop().await;
    p.procs[relay].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_from_offset_zero_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut p = Pipeline::new(&db, "rc", 200);
    let store = db.store_with(store_cfg());
    let base = populate(&store).await;
    let relay = p.start("relay", &["serve", "--role", "cdc"], &[]);
    p.wait_relay(relay).await;
    let mut proj = p.start("projector", &["serve", "--role", "projector"], &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| tokio::spawn(load(store.clone(), base.clone(), t, stop.clone(), Some(3))))
        .collect();
    for w in writers {
        w.await.expect("load task");
    }
    let lsn = wal_lsn(&store).await;
    p.drain(&store, lsn, &[relay, proj]).await;
    db.assert_converged(&store).await;
    let before = read_side(&store).await;
    assert!(before.len() > 1000, "a read side worth replaying");

    // A live member: refused, with the way out named.
    let group = p.group("conversation-view-updater");
    let out = p
        .admin(&["admin", "replay", "--group", &group, "--from-offset", "0"])
        .await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "replay with live members must fail");
    assert!(
        stderr.contains("live member") && stderr.contains("--wait"),
        "clear refusal: {stdout}\n{stderr}"
    );

    p.procs[proj].stop().await;
    for (g, _) in GROUPS {
        let group = p.group(g);
        let out = p
            .admin(&[
                "admin",
                "replay",
                "--group",
                &group,
                "--from-offset",
                "0",
                "--wait",
                "120",
            ])
            .await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "replay {g}: {stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "moved {group} on {} partitions",
                p.group_topics(g).len() as i32 * PARTITIONS
            )),
            "{stdout}"
        );
        assert!(
            p.group_lag(g).await > 0,
            "{g} was moved back: it has records to consume again"
        );
    }

    proj = p.start("projector", &["serve", "--role", "projector"], &[]);
    let what = p.procs[proj].noting("the groups reprocess");
    eventually(what, WAIT, async || {
        p.procs[proj].assert_running();
        for (g, _) in GROUPS {
            let lag = p.group_lag(g).await;
            if lag > 0 {
                return Err(format!("{g} has {lag} records left"));
            }
        }
        Ok(())
    })
    .await;
    let after = read_side(&store).await;
    let changed: Vec<_> = before
        .iter()
        .zip(after.iter())
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "the replay added or removed read-side rows"
    );
    assert!(changed.is_empty(), "the replay changed rows: {changed:?}");
    db.assert_converged(&store).await;
    p.procs[proj].stop().await;
    p.procs[relay].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_status_reports() {
    let db = TestDb::new().await;
    let env = vec![
        ("HERMET_DATABASE_URL".to_owned(), db.url.clone()),
        ("HERMET_KAFKA_BROKERS".to_owned(), brokers()),
        ("HERMET_SHARDS".to_owned(), TEST_SHARDS.to_string()),
        (
            "HERMET_PROJECTOR__GROUP_PREFIX".to_owned(),
            format!("rcbad{:08x}-", rand::random::<u32>()),
        ),
        // A slot name of its own: slots belong to the whole cluster, and `make run` leaves
        // `hermet_slot` behind.
        (
            "HERMET_CDC__SLOT".to_owned(),
            format!("rcbad_{:08x}", rand::random::<u32>()),
        ),
    ];
    let prefix = env[3].1.clone();
    let group = format!("{prefix}conversation-view-updater");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "admin".into(),
                "rebuild".into(),
                "--view".into(),
                "bogus".into(),
            ],
            "invalid value 'bogus'",
        ),
        (
            vec![
                "admin".into(),
                "replay".into(),
                "--group".into(),
                group.clone(),
            ],
            "--from-offset",
        ),
        (
            vec![
                "admin".into(),
                "replay".into(),
                "--group".into(),
                group.clone(),
                "--from-offset".into(),
                "0".into(),
                "--from-time".into(),
                "0".into(),
            ],
            "cannot be used with",
        ),
        (
            vec![
                "admin".into(),
                "replay".into(),
                "--group".into(),
                group.clone(),
                "--from-offset=-1".into(),
            ],
            "--from-offset must be 0 or more",
        ),
        (
            vec![
                "admin".into(),
                "replay".into(),
                "--group".into(),
                group.clone(),
                "--from-time".into(),
                "last tuesday-ish".into(),
            ],
            "neither Unix milliseconds nor a timestamp",
        ),
        (
            vec![
                "admin".into(),
                "replay".into(),
                "--group".into(),
                "nobody-knows-me".into(),
                "--from-offset".into(),
                "0".into(),
            ],
            "is not a projector group",
        ),
        (
            vec!["admin".into(), "repair".into(), "--user".into(), "0".into()],
            "--user must be a positive id",
        ),
        (
            vec!["admin".into(), "status".into(), "--bogus".into()],
            "unexpected argument '--bogus'",
        ),
    ];
    for (args, expected) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hermet(&a, env.clone()).await;
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "{args:?} must fail\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in the error\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked\n{stderr}");
    }

    // Status before any audit, then after one.
    let status = |env: Vec<(String, String)>| async move {
        let out = hermet(&["admin", "status", "--json"], env).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "status: {stdout}\n{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let s = status(env.clone()).await;
    assert_eq!(s["last_audit"], Value::Null, "{s}");
    assert_eq!(s["slot"], Value::Null, "no relay ran: {s}");
    assert_eq!(s["outbox_pending"], 0, "{s}");
    let out = hermet(&["admin", "audit", "--buckets", "16"], env.clone()).await;
    assert!(out.status.success(), "{:?}", text(&out));
    let s = status(env.clone()).await;
    assert_eq!(s["last_audit"]["source"], "cli", "{s}");
    assert_eq!(s["last_audit"]["consistency_rate"], 1.0, "{s}");
    assert_eq!(s["last_audit"]["audited_buckets"], 16, "{s}");
    let out = hermet(&["admin", "status"], env.clone()).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("last audit (cli, "), "{stdout}");

    // One view only: the other's tables are left alone.
    let out = hermet(&["admin", "rebuild", "--view", "contact"], env.clone()).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("rebuilt user_contact_view, contact_reverse_index from"),
        "{stdout}"
    );
    let out = hermet(&["admin", "audit", "--buckets", "16"], env.clone()).await;
    assert!(out.status.success(), "{:?}", text(&out));
}

/// The rebuild does not depend on the sync mode: the same corrupted read side and concurrent
/// writers in `dual_write` (views in the command's transaction) and `async` (outbox worker),
/// with the rebuild run in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_converges_in_dual_write_and_async_under_load() {
    use hermet_store::rebuild;
    for mode in [SyncMode::DualWrite, SyncMode::Async] {
        let db = TestDb::new().await;
        let store = db.store_with(StoreConfig {
            sync_mode: mode,
            ..store_cfg()
        });
        let (stop_worker, worker) = if mode == SyncMode::Async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let cfg = hermet_projector::outbox::OutboxConfig {
                batch: 100,
                idle_wait: Duration::from_millis(20),
                max_attempts: 5,
                projection: store_cfg().projection,
                cache: hermet_core::cache::no_cache(),
            };
            let pool = store.pool().clone();
            let h = tokio::spawn(async move {
                hermet_projector::outbox::run_outbox(cfg, pool, async {
                    let _ = rx.await;
                })
                .await
            });
            (Some(tx), Some(h))
        } else {
            (None, None)
        };
        let base = populate(&store).await;
        {
            let conn = store.pool().get().await.expect("connection");
            conn.batch_execute(
                "DELETE FROM user_contact_view WHERE user_id BETWEEN 10 AND 20;
                 UPDATE user_conversation_view SET read_seq = read_seq + 1000000
                  WHERE user_id BETWEEN 30 AND 40;
                 DELETE FROM conversation_reverse_index WHERE peer_user_id BETWEEN 50 AND 60;",
            )
            .await
            .expect("corrupt");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3u64)
            .map(|t| tokio::spawn(load(store.clone(), base.clone(), t, stop.clone(), None)))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Prepare the routed list reads before the swap renames their partitions.
        for &u in &base.users {
            store.list_conversations(u, 50, None).await.expect("list");
            store.list_contacts(u, 50).await.expect("contacts");
        }
        let opts = rebuild::RebuildOptions::new(
            hermet_core::projection::ReadModel::ALL.to_vec(),
            PREVIEW as i32,
        );
        // The seeded users' rows exist only once the rebuild swaps them in. A routed read that
        // starts after the parent table showed a user's contacts must show them too: reading a
        // retired partition under the live name would not.
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let conn = store.pool().get().await.expect("connection");
                let (mut reads, mut stale) = (0u64, Vec::new());
                for u in (1..=200i64).cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let parent: i64 = conn
                        .query_one(
                            "SELECT count(*) FROM user_contact_view WHERE user_id = $1 AND deleted_at = 0",
                            &[&u],
                        )
                        .await
                        .expect("parent read")
                        .get(0);
                    let routed = store.list_contacts(u, 100).await.expect("routed read");
                    reads += 1;
                    if parent > 0 && routed.is_empty() {
                        stale.push(u);
                    }
                }
                (reads, stale)
            })
        };
        let report = rebuild::rebuild(store.pool(), &opts, &rebuild::NoProgress)
            .await
            .unwrap_or_else(|e| panic!("rebuild in {}: {e}", mode.as_str()));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("load task");
        }
        let (reads, stale) = reader.await.expect("reader");
        assert!(reads > 0, "the reader ran");
        assert!(
            stale.is_empty(),
            "routed reads older than the parent's: {stale:?}"
        );
        eprintln!("{}: {report:?}", mode.as_str());
        assert!(
            report.catch_up_keys.iter().sum::<u64>() + report.swap_keys > 0,
            "writes landed during the rebuild in {}",
            mode.as_str()
        );
        if let (Some(tx), Some(h)) = (stop_worker, worker) {
            let conn = store.pool().get().await.expect("connection");
            eventually("the outbox drains", WAIT, async || {
                let pending: i64 = conn
                    .query_one("SELECT count(*) FROM hermet_outbox", &[])
                    .await
                    .expect("outbox")
                    .get(0);
                pending == 0
            })
            .await;
            let _ = tx.send(());
            h.await.expect("worker").expect("outbox worker");
        }
        db.assert_converged(&store).await;
        assert_partitions_named(&store, &base.users).await;
    }
}
