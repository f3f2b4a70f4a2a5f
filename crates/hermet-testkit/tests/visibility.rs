//! cdc never builds a view row from state older than the change it applies.
//!
//! PostgreSQL can ship a transaction through logical decoding before other sessions can see it
//! (it is committed locally and waits for a synchronous standby, or its backend is descheduled
//! between the WAL flush and leaving the proc array). A projector that looks up the write side in
//! that window used to write nothing new and acknowledge the event: the read side stayed wrong
//! for good. These tests make the window happen:
//!
//! - deterministically: a synchronous standby that never answers (`synchronous_standby_names =
//!   'phantom'`) holds a command's commit; the test sees the relay ship it and the projector
//!   receive it (the projector reports it is waiting), then releases the commit
//!   (`pg_cancel_backend`, which makes it visible) and checks the read side against the oracle.
//!   Once each for a friendship (contact rows), a message (conversation rows) and a profile
//!   change (rows that embed the profile);
//! - the check itself, with transactions left open (ids at or above the snapshot's `xmax`);
//! - the bound: a commit held past `visibility_wait` is dead-lettered, then replayed;
//! - a smoke test under load: many concurrent friendships and messages to one user with every
//!   core busy, then the audit must find nothing. Whether the window opens in a given run is up
//!   to the scheduler (it prints how many batches waited); the deterministic tests above are
//!   the proof.
//!
//! Every session of the test databases uses `synchronous_commit = local` except the one store
//! that is meant to wait. The standby setting is cluster-wide: it is set only while a test
//! holds `SERIAL` and reset when the guard drops (and by `scripts/services.sh up`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hermet_core::cache::NoCache;
use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_projector::dlq;
use hermet_store::commands::ProfilePatch;
use hermet_store::{audit, connect_pool, visibility, Store, StoreConfig, SyncMode};
use hermet_testkit::cdc::{projection, Cdc, CONTACTS, CONVERSATIONS, PREVIEW, WAIT};
use hermet_testkit::pipeline::{brokers, connect, wal_lsn};
use hermet_testkit::{admin_url, eventually, render, TestDb};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Tests with a replication slot, or with the cluster-wide standby setting, run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The projectors run in this process: their metrics are read from this recorder.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("metrics recorder")
    })
}

/// The value of the series `name{projector="<projector>"}`, 0 when absent.
fn metric(name: &str, projector: &str) -> f64 {
    let label = format!("projector=\"{projector}\"");
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn store_cfg() -> StoreConfig {
    hermet_testkit::cdc::store_config(SyncMode::Cdc)
}

/// `url` with `synchronous_commit` set for every session of the pool.
fn with_commit(url: &str, level: &str) -> String {
    format!("{url}?options=-c%20synchronous_commit%3D{level}")
}

/// A store whose commits do not wait for a standby.
fn store(db: &TestDb) -> Store {
    Store::new(
        connect_pool(&with_commit(&db.url, "local"), 16).expect("pool"),
        store_cfg(),
    )
}

/// A fresh database, its store, and a cdc pipeline on it (configured by `configure`) with the
/// relay and both groups running. Bind the three to separate variables: the pipeline must be
/// dropped before the database.
async fn pipeline(configure: impl FnOnce(&mut Cdc)) -> (TestDb, Store, Cdc) {
    metrics();
    let db = TestDb::new().await;
    let store = store(&db);
    let mut cdc = Cdc::new(&db);
    configure(&mut cdc);
    cdc.start_relay().await;
    cdc.start_groups(store.pool());
    (db, store, cdc)
}

/// A store whose commits wait for the synchronous standby: with the phantom one, for ever.
fn held_store(db: &TestDb) -> Store {
    Store::new(
        connect_pool(&with_commit(&db.url, "on"), 2).expect("pool"),
        store_cfg(),
    )
}

/// A synchronous standby that never connects, while the value lives. Sessions that do not ask
/// for `synchronous_commit = on` themselves do not wait for it.
struct PhantomStandby;

// ALTER SYSTEM cannot run in a transaction block: one statement at a time.
const PHANTOM: [&str; 3] = [
    "ALTER SYSTEM SET synchronous_commit = 'local'",
    "ALTER SYSTEM SET synchronous_standby_names = 'phantom'",
    "SELECT pg_reload_conf()",
];
const NO_STANDBY: [&str; 3] = [
    "ALTER SYSTEM RESET synchronous_standby_names",
    "ALTER SYSTEM RESET synchronous_commit",
    "SELECT pg_reload_conf()",
];

impl PhantomStandby {
    /// Sets the standby, and returns once a commit of `db` asking for it really waits: the
    /// checkpointer publishes the setting some time after the reload.
    async fn start(db: &TestDb) -> PhantomStandby {
        // A commit waits for a standby only if its transaction wrote WAL: the probe inserts.
        connect(&with_commit(&db.url, "local"))
            .await
            .batch_execute("CREATE TABLE IF NOT EXISTS hermet_test_probe (x int)")
            .await
            .expect("probe table");
        let admin = connect(&admin_url()).await;
        for sql in PHANTOM {
            admin.batch_execute(sql).await.expect(sql);
        }
        let guard = PhantomStandby;
        eventually(
            "a probe commit waits for the phantom standby",
            WAIT,
            || async {
                let probe = connect(&with_commit(&db.url, "on")).await;
                let pid: i32 = probe
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .expect("pid")
                    .get(0);
                let commit = tokio::spawn(async move {
                    probe
                        .batch_execute("INSERT INTO hermet_test_probe VALUES (1)")
                        .await
                });
                // Either the commit returns (the setting is not in force yet) or it waits.
                let waits = eventually("the probe commit returns or waits", WAIT, || async {
                    if commit.is_finished() {
                        return Some(false);
                    }
                    in_sync_rep(&admin, pid).await.then_some(true)
                })
                .await;
                if waits {
                    admin
                        .execute("SELECT pg_cancel_backend($1)", &[&pid])
                        .await
                        .expect("release the probe");
                }
                let _ = commit.await;
                waits.then_some(())
            },
        )
        .await;
        guard
    }
}

/// Whether backend `pid` waits for the synchronous standby.
async fn in_sync_rep(admin: &tokio_postgres::Client, pid: i32) -> bool {
    admin
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .is_some()
}

impl Drop for PhantomStandby {
    fn drop(&mut self) {
        // Resetting wakes every commit still waiting. Needs async I/O: a thread with its own
        // runtime works from any context, a panicking test too.
        let _ = std::thread::spawn(|| {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let admin = connect(&admin_url()).await;
                    for sql in NO_STANDBY {
                        if let Err(e) = admin.batch_execute(sql).await {
                            eprintln!("could not reset the standby settings ({sql}): {e}");
                        }
                    }
                });
            }
        })
        .join();
    }
}

/// The pid of the session of `db` whose commit waits for the standby.
async fn waiting_commit(admin: &tokio_postgres::Client, db: &TestDb) -> i32 {
    eventually(
        "a commit waiting for the synchronous standby",
        WAIT,
        || async {
            admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'SyncRep'",
                &[&db.name],
            )
            .await
            .expect("pg_stat_activity")
            .first()
            .map(|r| r.get::<_, i32>(0))
        },
    )
    .await
}

fn name(s: &str) -> Name {
    Name::parse("nickname", s, &Limits::default()).expect("name")
}

async fn user(store: &Store, nick: &str) -> i64 {
    store
        .create_user(&name(nick), &Avatar::default())
        .await
        .expect("create user")
        .value
        .id
}

/// Runs `command` on the held store; checks that it is committed but invisible, that the
/// projector `group` received it and waits, then makes it visible, drains and compares the read
/// side with the oracle. `check` then looks at the rows the command was about.
async fn held_then_released<F, Fut>(
    what: &str,
    db: &TestDb,
    store: &Store,
    cdc: &mut Cdc,
    group: &str,
    command: F,
) where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let admin = connect(&admin_url()).await;
    let waits_before = metric("hermet_projector_visibility_waits_total", &cdc.group(group));
    let held = tokio::spawn(command(held_store(db)));
    let pid = waiting_commit(&admin, db).await;
    // Committed locally (the relay ships it), not visible to any other session yet. The
    // projector got the events and waits instead of looking up the state before them.
    let projector = cdc.group(group);
    eventually(
        &format!("{what}: {projector} waiting for the held transaction"),
        WAIT,
        || async {
            (metric(
                "hermet_projector_visibility_waiting_transactions",
                &projector,
            ) > 0.0)
                .then_some(())
        },
    )
    .await;
    assert!(
        !held.is_finished(),
        "{what}: the command returned while held"
    );
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .expect("release the commit");
    tokio::time::timeout(WAIT, held)
        .await
        .expect("the released command returns")
        .expect("the command task");
    cdc.drain(store, wal_lsn(store).await).await;
    db.assert_converged(store).await;
    assert!(
        metric("hermet_projector_visibility_waits_total", &projector) > waits_before,
        "{what}: the wait was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_visible_after_the_projector_received_them_still_land() {
    let _serial = SERIAL.lock().await;
    let (db, store, mut cdc) = pipeline(|_| {}).await;
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let cy = user(&store, "cy").await;
    let ab = store.add_friend(ann, bob).await.expect("befriend").value;
    cdc.drain(&store, wal_lsn(&store).await).await;
    db.assert_converged(&store).await;
    let _standby = PhantomStandby::start(&db).await;

    // A friendship: both contact rows, both single-chat rows.
    held_then_released(
        "friendship",
        &db,
        &store,
        &mut cdc,
        CONTACTS,
        move |s| async move {
            s.add_friend(ann, cy).await.expect("befriend");
        },
    )
    .await;
    let contacts = store.list_contacts(cy, 100).await.expect("contacts");
    assert_eq!(contacts.len(), 1, "cy's contact row for ann: {contacts:?}");

    // A message: the last message and unread count of both members.
    held_then_released(
        "message",
        &db,
        &store,
        &mut cdc,
        CONVERSATIONS,
        move |s| async move {
            let c = Content::parse("held", &Limits::default()).expect("content");
            s.send_message(ann, ab, &c, &MessageType::text())
                .await
                .expect("send");
        },
    )
    .await;

    // A profile change: bob's nickname in ann's conversation and contact rows.
    held_then_released(
        "profile",
        &db,
        &store,
        &mut cdc,
        CONVERSATIONS,
        move |s| async move {
            let patch = ProfilePatch {
                nickname: Some(name("robert")),
                avatar: None,
            };
            s.update_profile(bob, &patch).await.expect("update profile");
        },
    )
    .await;
    drop(_standby);
    cdc.finish().await;
}

/// The check itself: transactions still running are invisible, also when their xids are at or
/// above the snapshot's `xmax` (nothing newer has finished), and visible once they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_transactions_are_invisible_until_they_end() {
    let db = TestDb::new().await;
    let store = store(&db);
    let begin = |url: String| async move {
        let c = connect(&url).await;
        c.batch_execute("BEGIN").await.expect("begin");
        let xid: String = c
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .expect("xid")
            .get(0);
        let xid = (xid.parse::<u64>().expect("xid8") & 0xffff_ffff) as u32;
        (c, xid)
    };
    let (a, xa) = begin(db.url.clone()).await;
    let (b, xb) = begin(db.url.clone()).await;
    let conn = store.pool().get().await.expect("connection");
    let mut both = visibility::invisible(&conn, &[xa, xb, 1, 2])
        .await
        .expect("invisible");
    both.sort_unstable();
    assert_eq!(
        both,
        vec![xa, xb],
        "two running transactions (ids 1 and 2 never run)"
    );
    a.batch_execute("COMMIT").await.expect("commit a");
    assert_eq!(
        visibility::invisible(&conn, &[xa, xb])
            .await
            .expect("invisible"),
        vec![xb]
    );
    b.batch_execute("COMMIT").await.expect("commit b");
    assert!(visibility::invisible(&conn, &[xa, xb])
        .await
        .expect("invisible")
        .is_empty());
}

/// A transaction that stays invisible past `visibility_wait` is dead-lettered with that reason,
/// never applied from the older state; `dlq replay` applies it once it is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_invisible_past_the_bound_is_dead_lettered_then_replayed() {
    let _serial = SERIAL.lock().await;
    let (db, store, mut cdc) =
        pipeline(|cdc| cdc.visibility_wait = Duration::from_millis(300)).await;
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    cdc.drain(&store, wal_lsn(&store).await).await;
    let standby = PhantomStandby::start(&db).await;
    let admin = connect(&admin_url()).await;
    let held = tokio::spawn({
        let s = held_store(&db);
        async move {
            s.add_friend(ann, bob).await.expect("befriend");
        }
    });
    let pid = waiting_commit(&admin, &db).await;
    let topic = cdc.dlq_topic();
    let groups = [cdc.group(CONVERSATIONS), cdc.group(CONTACTS)];
    // Complete once both groups dead-lettered their records of the held transaction and no more
    // arrive: a group's records can come in more than one batch, each set aside only after its
    // own visibility wait, so the list must stay the same for several of those waits.
    let settled = Duration::from_millis(1_000);
    let mut seen: Option<(usize, std::time::Instant)> = None;
    let letters = eventually(
        "the held friendship in the dead letters",
        WAIT,
        async || {
            let topic = topic.clone();
            let letters = tokio::task::spawn_blocking(move || dlq::list(&brokers(), &topic))
                .await
                .expect("list task")
                .expect("dlq list");
            let both = groups.iter().all(|g| {
                letters
                    .iter()
                    .any(|l| &l.group == g && l.error.contains("not visible"))
            });
            if !both {
                return None;
            }
            match seen {
                Some((n, since)) if n == letters.len() => {
                    (since.elapsed() >= settled).then_some(letters)
                }
                _ => {
                    seen = Some((letters.len(), std::time::Instant::now()));
                    None
                }
            }
        },
    )
    .await;
    assert!(
        letters.iter().all(|l| l.error.contains("not visible")),
        "only the held transaction's records: {letters:?}"
    );
    let projectors = [cdc.group(CONVERSATIONS), cdc.group(CONTACTS)];
    let timeouts: f64 = projectors
        .iter()
        .map(|p| metric("hermet_projector_visibility_timeouts_total", p))
        .sum();
    assert!(timeouts >= 1.0, "timeouts counted: {timeouts}");
    // Nothing was built from the state before the friendship.
    assert!(store
        .list_contacts(ann, 10)
        .await
        .expect("contacts")
        .is_empty());
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .expect("release the commit");
    held.await.expect("command task");
    drop(standby);
    let replayed = dlq::replay(&brokers(), &topic, store.pool(), &projection(), &NoCache)
        .await
        .expect("replay");
    assert_eq!(replayed, letters.len(), "every dead letter replayed");
    cdc.drain(&store, wal_lsn(&store).await).await;
    db.assert_converged(&store).await;
    assert_eq!(
        store.list_contacts(ann, 10).await.expect("contacts").len(),
        1
    );
    cdc.finish().await;
}

/// Busy loops on every core until dropped, so committing backends get descheduled.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Users befriending one user and writing to them, 16 at a time, under CPU load.
const FANS: usize = 400;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_friendships_and_messages_to_one_user_under_load_converge() {
    let _serial = SERIAL.lock().await;
    let (db, store, mut cdc) = pipeline(|_| {}).await;
    let hub = user(&store, "hub").await;
    let load = CpuLoad::start();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                let hi = Content::parse("hi there", &Limits::default()).expect("content");
                while next.fetch_add(1, Ordering::Relaxed) < FANS {
                    let fan = user(&store, "fan").await;
                    let ch = store.add_friend(fan, hub).await.expect("befriend").value;
                    store
                        .send_message(fan, ch, &hi, &MessageType::text())
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    cdc.drain(&store, wal_lsn(&store).await).await;
    drop(load);
    let conn = store.pool().get().await.expect("connection");
    let report = audit::audit(&conn, PREVIEW as i32, 64, None)
        .await
        .expect("audit");
    let waits: f64 = [CONVERSATIONS, CONTACTS]
        .iter()
        .map(|g| metric("hermet_projector_visibility_waits_total", &cdc.group(g)))
        .sum();
    eprintln!(
        "{FANS} friendships and messages: {} findings, {} rows audited, projector batches that \
         waited for visibility: {waits}",
        report.findings.len(),
        report.expected_rows
    );
    assert!(
        report.findings.is_empty(),
        "audit found {} rows differing: {:?}",
        report.findings.len(),
        report.findings.iter().take(10).collect::<Vec<_>>()
    );
    let contacts = store
        .list_contacts(hub, FANS as i64 + 1)
        .await
        .expect("contacts");
    assert_eq!(contacts.len(), FANS, "every fan is the hub's contact");
    let d = db.diff(&store).await;
    assert!(d.is_empty(), "read side differs:\n{}", render(&d));
    drop(conn);
    cdc.finish().await;
}
