//! The eventually consistent modes against `dual_write` and the rebuild oracle (issue 4, "Done
//! means"), in one process: the CDC relay, the Kafka consumer groups and the outbox worker run as
//! tasks next to the test.
//!
//! - differential: one seeded workload (every scenario of design §3 (docs/design.md)) in `dual_write`, `async` and
//!   `cdc`, each on a database of its own; after draining, every read side equals the oracle and
//!   the three are identical (timestamps compared as set/unset);
//! - property: the row changes of random sequences, applied shuffled across tables, duplicated,
//!   with old events replayed after new ones and partial deliveries while writes go on, give the
//!   same read side as applying them once in order, and that equals the oracle;
//! - poison: an event the projector cannot apply goes to the dead letters (Kafka topic, or
//!   `hermet_outbox_dead`), later events still apply, and a replay applies it once fixed;
//! - read-your-writes: in `cdc`, a list with `X-Hermet-Min-Lsn` from a send sees the message;
//!   with the projectors stopped, it answers within the bounded wait, flagged stale.
//!
//! Every cdc test has its own slot, publication, topics, dead-letter topic and consumer groups,
//! drops its slot and topics when done, and runs alone (`SERIAL`). Waits are bounded; nothing
//! asserts timing. Needs `HERMET_DATABASE_URL` and `HERMET_KAFKA_BROKERS`
//! (`eval "$(scripts/services.sh env)"`). Seeds: `HERMET_PROPTEST_SEED`, `PROPTEST_CASES`.

use std::collections::BTreeMap;
use std::time::Duration;

use hermet_api::{ApiConfig, AppState, TokenKeys, ViewCoverage};
use hermet_core::cache::{no_cache, NoCache};
use hermet_core::change::RowChange;
use hermet_core::projection::ReadModels;
use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_core::Lsn;
use hermet_projector::{classify, dlq, is_transient, outbox, Failure};
use hermet_store::commands::ProfilePatch;
use hermet_store::{dead_letters, project, sync, Store, StoreError, SyncMode};
use hermet_testkit::cdc::{projection, store_config, Cdc, Task, CONTACTS, CONVERSATIONS, WAIT};
use hermet_testkit::pipeline::{brokers, connect, wal_lsn, SERIAL};
use hermet_testkit::workload::{self, Cmd};
use hermet_testkit::{eventually, render, TestDb, TEST_SECRET};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The outbox worker on `store`'s pool, giving up on a row after `max_attempts`.
fn outbox_worker(store: &Store, max_attempts: u32) -> Task {
    outbox_worker_with(store, max_attempts, 50)
}

/// [`outbox_worker`] claiming up to `batch` rows a step.
fn outbox_worker_with(store: &Store, max_attempts: u32, batch: i64) -> Task {
    let cfg = outbox::OutboxConfig {
        batch,
        idle_wait: Duration::from_millis(5),
        max_attempts,
        projection: projection(),
        cache: no_cache(),
    };
    let pool = store.pool().clone();
    Task::spawn("outbox worker", |stop| async move {
        outbox::run_outbox(cfg, pool, stop)
            .await
            .map_err(|e| e.to_string())
    })
}

async fn count(store: &Store, sql: &str) -> i64 {
    let conn = store.pool().get().await.expect("connection");
    conn.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Waits until `sql` (a count) is `want`.
async fn wait_count(store: &Store, sql: &str, want: i64) {
    eventually(format!("{sql} is {want}"), WAIT, async || {
        let n = count(store, sql).await;
        if n == want {
            Ok(())
        } else {
            Err(format!("{sql} is {n}"))
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------
// Comparing databases

const VIEW_TABLES: [(&str, &str); 5] = [
    ("user_conversation_view", "user_id, channel_id"),
    ("channel_view", "channel_id"),
    ("user_contact_view", "user_id, contact_id"),
    (
        "conversation_reverse_index",
        "peer_user_id, owner_user_id, channel_id",
    ),
    ("contact_reverse_index", "contact_user_id, owner_user_id"),
];

const WRITE_TABLES: [(&str, &str); 5] = [
    ("users", "id"),
    ("channels", "id"),
    ("channel_members", "channel_id, user_id"),
    ("friendships", "user_id, friend_id"),
    ("messages", "id"),
];

type Dump = BTreeMap<&'static str, Vec<Value>>;

/// Every row of `tables` in key order, as JSON, without bookkeeping (`updated_at`); with
/// `times_as_set`, time columns (`*_at`, `*_time`) become whether they are set.
async fn dump(store: &Store, tables: &[(&'static str, &str)], times_as_set: bool) -> Dump {
    let conn = store.pool().get().await.expect("connection");
    let mut out = Dump::new();
    for (table, key) in tables {
        let rows = conn
            .query(
                &format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY {key}"),
                &[],
            )
            .await
            .expect("dump");
        let rows = rows
            .iter()
            .map(|r| {
                let mut v: Value = serde_json::from_str(r.get::<_, &str>(0)).expect("row json");
                let obj = v.as_object_mut().expect("row object");
                obj.remove("updated_at");
                if times_as_set {
                    for (k, x) in obj.iter_mut() {
                        if k.ends_with("_at") || k.ends_with("_time") {
                            let set = !(x.is_null() || *x == json!(0));
                            *x = Value::Bool(set);
                        }
                    }
                }
                v
            })
            .collect();
        out.insert(table, rows);
    }
    out
}

/// The first differing rows of the first differing table, if any.
fn difference(a_name: &str, a: &Dump, b_name: &str, b: &Dump) -> Option<String> {
    for (table, rows_a) in a {
        let rows_b = &b[table];
        if rows_a == rows_b {
            continue;
        }
        let show = |rows: Vec<&Value>| {
            rows.iter()
                .take(10)
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let only_a = show(rows_a.iter().filter(|r| !rows_b.contains(r)).collect());
        let only_b = show(rows_b.iter().filter(|r| !rows_a.contains(r)).collect());
        return Some(format!(
            "{table} differs between {a_name} ({} rows) and {b_name} ({} rows)\nonly in {a_name}:\n{only_a}\nonly in {b_name}:\n{only_b}",
            rows_a.len(),
            rows_b.len(),
        ));
    }
    None
}

fn assert_same(a_name: &str, a: &Dump, b_name: &str, b: &Dump) {
    if let Some(d) = difference(a_name, a, b_name, b) {
        panic!("{d}");
    }
}

// ------------------------------------------------------------------------------------------
// 1. Differential: one workload, three modes

/// Runs `cmds` and returns what was applied, failing on any system error.
/// How the workload used the two diffusions: groups now in read diffusion, groups that flipped
/// to it at least once, and groups that came back to write diffusion.
#[derive(Debug, Default, Clone, Copy)]
struct FanoutCoverage {
    read: i64,
    flipped_to_read: i64,
    flipped_back: i64,
}

async fn fanout_coverage(store: &Store) -> FanoutCoverage {
    let conn = store.pool().get().await.expect("connection");
    let r = conn
        .query_one(
            "SELECT count(*) FILTER (WHERE fanout = 'read'),
                    count(*) FILTER (WHERE fanout = 'read' OR fanout_ver > 1),
                    count(*) FILTER (WHERE fanout = 'write' AND fanout_ver > 1)
               FROM channels",
            &[],
        )
        .await
        .expect("fan-out coverage");
    FanoutCoverage {
        read: r.get(0),
        flipped_to_read: r.get(1),
        flipped_back: r.get(2),
    }
}

async fn run_workload(store: &Store, cmds: &[Cmd]) -> workload::World {
    match workload::run(store, cmds).await {
        Ok(w) => w,
        Err(e) => panic!("workload (mode {}): {e}", store.config().sync_mode.as_str()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_workload_three_modes_same_read_side() {
    let _serial = SERIAL.lock().await;
    let seed = workload::seed();
    let cmds = workload::generate(seed, 600);
    eprintln!("HERMET_PROPTEST_SEED={seed}: {} commands", cmds.len());

    // dual_write: the reference.
    let db_dw = TestDb::new().await;
    let dw = db_dw.store_with(store_config(SyncMode::DualWrite));
    let world = run_workload(&dw, &cmds).await;
    eprintln!("applied commands: {:?}", world.applied);
    for kind in Cmd::KINDS {
        assert!(
            world.applied.get(kind).is_some_and(|n| *n > 0),
            "the workload never applied {kind}: {:?} (try another seed)",
            world.applied
        );
    }
    db_dw.assert_converged(&dw).await;
    let shapes = fanout_coverage(&dw).await;
    assert!(
        shapes.read > 0 && shapes.flipped_to_read > 0 && shapes.flipped_back > 0,
        "the workload must cross the fan-out threshold both ways: {shapes:?} (try another seed)"
    );

    // async: the worker drains the outbox while the workload runs.
    let db_as = TestDb::new().await;
    let as_ = db_as.store_with(store_config(SyncMode::Async));
    let worker = outbox_worker(&as_, 3);
    run_workload(&as_, &cmds).await;
    wait_count(&as_, "SELECT count(*) FROM hermet_outbox", 0).await;
    assert_eq!(
        count(&as_, "SELECT count(*) FROM hermet_outbox_dead").await,
        0,
        "no outbox row may be set aside"
    );
    worker.stop().await;
    db_as.assert_converged(&as_).await;

    // cdc: relay and both consumer groups run while the workload runs.
    let db_cdc = TestDb::new().await;
    let mut cdc = Cdc::new(&db_cdc);
    let cs = db_cdc.store_with(store_config(SyncMode::Cdc));
    cdc.start_relay().await;
    cdc.start_groups(cs.pool());
    run_workload(&cs, &cmds).await;
    let lsn = wal_lsn(&cs).await;
    cdc.drain(&cs, lsn).await;
    let dlq_topic = cdc.dlq_topic();
    let letters = tokio::task::spawn_blocking(move || dlq::list(&brokers(), &dlq_topic))
        .await
        .expect("thread")
        .expect("dlq list");
    assert!(
        letters.is_empty(),
        "no event may be dead-lettered: {letters:?}"
    );
    db_cdc.assert_converged(&cs).await;

    // Same ids, same write side, same read side (timestamps: set or not).
    let all: Vec<(&str, &str)> = WRITE_TABLES.iter().chain(&VIEW_TABLES).copied().collect();
    let d_dw = dump(&dw, &all, true).await;
    let d_as = dump(&as_, &all, true).await;
    let d_cdc = dump(&cs, &all, true).await;
    assert!(
        d_dw["user_conversation_view"].len() > 10 && d_dw["messages"].len() > 50,
        "the workload is too small to mean much"
    );
    assert_same("dual_write", &d_dw, "async", &d_as);
    assert_same("dual_write", &d_dw, "cdc", &d_cdc);
    cdc.finish().await;
}

// ------------------------------------------------------------------------------------------
// 2. Property: shuffled, duplicated, replayed, partial deliveries

const RESET: &str = "TRUNCATE users, channels, channel_members, friendships, messages,
    user_conversation_view, channel_view, user_contact_view, conversation_reverse_index,
    contact_reverse_index, hermet_outbox, hermet_outbox_dead
    RESTART IDENTITY CASCADE";

/// The lists above name every write-side table, and only those, in the order of the one list.
#[test]
fn write_table_lists_match_the_write_side() {
    let tables = hermet_core::rows::WRITE_TABLES;
    assert_eq!(WRITE_TABLES.map(|(t, _)| t), tables);
    let prefix = format!("TRUNCATE {},", tables.join(", "));
    assert!(RESET.starts_with(&prefix), "{RESET}");
}

const RESET_READ_SIDE: &str = "TRUNCATE user_conversation_view, channel_view, user_contact_view,
    conversation_reverse_index, contact_reverse_index";

/// The changes in the outbox, one entry per command, in commit order.
async fn outbox_changes(store: &Store) -> Result<Vec<Vec<RowChange>>, String> {
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    let rows = conn
        .query("SELECT changes FROM hermet_outbox ORDER BY id", &[])
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|r| serde_json::from_value(r.get::<_, Value>(0)).map_err(|e| e.to_string()))
        .collect()
}

/// Applies `changes` to `models` in one transaction, as any projector does.
async fn apply(store: &Store, changes: &[RowChange], models: ReadModels) -> Result<(), String> {
    let mut conn = store.pool().get().await.map_err(|e| e.to_string())?;
    let tx = conn.transaction().await.map_err(|e| e.to_string())?;
    project::apply_changes(&tx, changes, models, &projection())
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// What a sloppy transport delivers to one projector: every change once or twice, all
/// shuffled (across tables too), then some older changes replayed at the end, in batches of
/// random size.
fn deliveries(rng: &mut StdRng, changes: &[RowChange]) -> Vec<Vec<RowChange>> {
    let mut list: Vec<RowChange> = Vec::new();
    for c in changes {
        for _ in 0..rng.gen_range(1..=2) {
            list.push(c.clone());
        }
    }
    list.shuffle(rng);
    let older = &changes[..changes.len() / 2];
    list.extend(older.choose_multiple(rng, older.len() / 2 + 1).cloned());
    let mut batches = Vec::new();
    while !list.is_empty() {
        let n = rng.gen_range(1..=8).min(list.len());
        batches.push(list.drain(..n).collect());
    }
    batches
}

/// One case: run `cmds` in `async` mode with no worker (the outbox keeps every change), with
/// partial out-of-order deliveries while the writes go on; then deliver everything the sloppy
/// way. Compare with applying every change once, in order, to an empty read side.
async fn projection_case(
    store: &Store,
    db: &TestDb,
    cmds: &[Cmd],
    seed: u64,
    seen: &std::sync::Mutex<FanoutCoverage>,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    conn.batch_execute(RESET).await.map_err(|e| e.to_string())?;
    drop(conn);
    let mut w = workload::setup(store).await?;
    for c in cmds {
        workload::exec(store, &mut w, c).await?;
        if rng.gen_ratio(1, 3) {
            // Some of what was written so far, early and out of order, computed from the
            // write side as it is now (later writes will make these rows older).
            let so_far: Vec<RowChange> = outbox_changes(store).await?.concat();
            let mut some: Vec<RowChange> =
                so_far.into_iter().filter(|_| rng.gen_ratio(1, 2)).collect();
            some.shuffle(&mut rng);
            let models = *[
                ReadModels::ALL,
                ReadModels::CONVERSATIONS,
                ReadModels::CONTACTS,
            ]
            .choose(&mut rng)
            .expect("read models");
            apply(store, &some, models).await?;
        }
    }
    let per_command = outbox_changes(store).await?;
    let all: Vec<RowChange> = per_command.concat();
    let shapes = fanout_coverage(store).await;
    if let Ok(mut s) = seen.lock() {
        s.read += shapes.read;
        s.flipped_to_read += shapes.flipped_to_read;
        s.flipped_back += shapes.flipped_back;
    }

    // Sloppy: the two projectors get independent deliveries, interleaved.
    let mut conv = deliveries(&mut rng, &all).into_iter();
    let mut cont = deliveries(&mut rng, &all).into_iter();
    loop {
        let (a, b) = (conv.next(), cont.next());
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(batch) = a {
            apply(store, &batch, ReadModels::CONVERSATIONS).await?;
        }
        if let Some(batch) = b {
            apply(store, &batch, ReadModels::CONTACTS).await?;
        }
    }
    let sloppy = dump(store, &VIEW_TABLES, false).await;
    let d = db.diff(store).await;
    if !d.is_empty() {
        return Err(format!(
            "after shuffled, duplicated and replayed deliveries the read side differs from the oracle:\n{}",
            render(&d)
        ));
    }

    // Clean: once, in order, one command at a time, into an empty read side.
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    conn.batch_execute(RESET_READ_SIDE)
        .await
        .map_err(|e| e.to_string())?;
    drop(conn);
    for changes in &per_command {
        apply(store, changes, ReadModels::ALL).await?;
    }
    let clean = dump(store, &VIEW_TABLES, false).await;
    let d = db.diff(store).await;
    if !d.is_empty() {
        return Err(format!(
            "applied once in order, the read side differs from the oracle:\n{}",
            render(&d)
        ));
    }
    match difference("sloppy delivery", &sloppy, "in-order delivery", &clean) {
        Some(d) => Err(d),
        None => Ok(()),
    }
}

#[test]
fn projection_is_idempotent_and_order_independent() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(TestDb::new());
    let store = db.store_with(store_config(SyncMode::Async));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let seed = workload::seed();
    let mut runner = workload::runner(seed, cases);
    let strategy = (
        proptest::collection::vec(workload::cmd(), 1..40),
        any::<u64>(),
    );
    let seen = std::sync::Mutex::new(FanoutCoverage::default());
    let result = runner.run(&strategy, |(cmds, shuffle)| {
        rt.block_on(projection_case(&store, &db, &cmds, shuffle, &seen))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("HERMET_PROPTEST_SEED={seed}: {e}");
    }
    let seen = *seen.lock().expect("coverage");
    assert!(
        seen.read > 0 && seen.flipped_to_read > 0 && seen.flipped_back > 0,
        "the cases must cross the fan-out threshold both ways: {seen:?} (try another seed)"
    );
}

// ------------------------------------------------------------------------------------------
// 4. Poison events

/// Makes every write of `user`'s conversation rows fail (the view is hash partitioned; a row
/// trigger on the parent applies to every partition).
const POISON: &str = "
CREATE FUNCTION hermet_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'poisoned conversation row of user %', NEW.user_id;
END $$;
CREATE TRIGGER hermet_test_poison BEFORE INSERT OR UPDATE ON user_conversation_view
    FOR EACH ROW WHEN (NEW.user_id = {user}) EXECUTE FUNCTION hermet_test_poison();";

const CURE: &str = "DROP TRIGGER hermet_test_poison ON user_conversation_view;
    DROP FUNCTION hermet_test_poison()";

/// [`POISON`] raising SQLSTATE `{errcode}` and counting each failed write in a sequence
/// (`nextval` is not rolled back with the failed apply): `{user}`, `{errcode}` to fill in.
const COUNTED_POISON: &str = "
CREATE SEQUENCE hermet_test_poison_hits;
CREATE FUNCTION hermet_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('hermet_test_poison_hits');
    RAISE EXCEPTION USING ERRCODE = '{errcode}',
        MESSAGE = format('poisoned conversation row of user %s', NEW.user_id);
END $$;
CREATE TRIGGER hermet_test_poison BEFORE INSERT OR UPDATE ON user_conversation_view
    FOR EACH ROW WHEN (NEW.user_id = {user}) EXECUTE FUNCTION hermet_test_poison();";

const COUNTED_CURE: &str = "DROP TRIGGER hermet_test_poison ON user_conversation_view;
    DROP FUNCTION hermet_test_poison(); DROP SEQUENCE hermet_test_poison_hits";

/// How many applies the counted poison has failed so far.
async fn poison_hits(store: &Store) -> i64 {
    count(
        store,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM hermet_test_poison_hits",
    )
    .await
}

async fn user(store: &Store, nick: &str) -> i64 {
    let n = Name::parse("nickname", nick, &Limits::default()).expect("name");
    store
        .create_user(&n, &Avatar::default())
        .await
        .expect("create user")
        .value
        .id
}

async fn send(store: &Store, from: i64, channel: i64, text: &str) -> Lsn {
    let c = Content::parse(text, &Limits::default()).expect("content");
    store
        .send_message(from, channel, &c, &MessageType::text())
        .await
        .expect("send")
        .lsn
}

/// The user's conversation row for `channel` as listed: (last message preview, unread).
async fn listed(store: &Store, user: i64, channel: i64) -> Option<(Option<String>, i64)> {
    store
        .list_conversations(user, 100, None)
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.channel_id == channel)
        .map(|c| (c.last_message.map(|m| m.content), c.unread_count))
}

/// Waits until both projectors of `cdc` have moved past `lsn` on every partition, applying each
/// record or dead-lettering it (`Cdc::drain` waits for `covers`, which dead letters hold back).
async fn wait_passed(cdc: &mut Cdc, store: &Store, lsn: Lsn) {
    let conn = store.pool().get().await.expect("connection");
    eventually(format!("projectors pass {lsn}"), WAIT, async || {
        cdc.check().await;
        let mut all = true;
        for base in [CONVERSATIONS, CONTACTS] {
            let passed = sync::passed_upto(&conn, &cdc.coverage(base))
                .await
                .expect("passed_upto");
            all &= passed.is_some_and(|p| p >= lsn);
        }
        all
    })
    .await
}

/// Whether the view of `cov` may call a write at `lsn` applied.
async fn covers(store: &Store, mode: SyncMode, cov: &sync::Coverage, lsn: Lsn) -> bool {
    let conn = store.pool().get().await.expect("connection");
    sync::covers(&conn, mode, cov, lsn).await.expect("covers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_event_is_dead_lettered_then_replayed() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut cdc = Cdc::new(&db);
    cdc.max_attempts = 2;
    let store = db.store_with(store_config(SyncMode::Cdc));
    cdc.start_relay().await;
    cdc.start_groups(store.pool());

    let (a, b, c, d) = (
        user(&store, "ann").await,
        user(&store, "bob").await,
        user(&store, "cid").await,
        user(&store, "dan").await,
    );
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let cd = store.add_friend(c, d).await.expect("friends").value;
    cdc.drain(&store, wal_lsn(&store).await).await;
    db.assert_converged(&store).await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(&POISON.replace("{user}", &a.to_string()))
        .await
        .expect("install the poison");
    // B's message reaches A's row (impossible now) and B's; C's later message reaches D's.
    send(&store, b, ab, "to ann").await;
    send(&store, c, cd, "later").await;
    // Not `drain`: that waits until reads may call the writes applied, which the dead letters
    // hold back until they are replayed.
    wait_passed(&mut cdc, &store, wal_lsn(&store).await).await;

    assert_eq!(
        listed(&store, d, cd).await,
        Some((Some("later".into()), 1)),
        "an event after the poison still applies"
    );
    assert_eq!(
        listed(&store, b, ab).await,
        Some((Some("to an".into()), 0)),
        "the sender's own row, from an event of the same batch, still applies"
    );
    assert_eq!(
        listed(&store, a, ab).await,
        Some((None, 0)),
        "the poisoned row is not updated"
    );
    let diff = db.diff(&store).await;
    assert!(
        !diff.is_empty(),
        "the poisoned row must differ from the oracle"
    );
    assert!(
        diff.iter()
            .all(|m| m.table == "user_conversation_view"
                && m.row.contains(&format!("\"user_id\":{a},"))),
        "only A's row differs:\n{}",
        render(&diff)
    );

    let topic = cdc.dlq_topic();
    let letters = tokio::task::spawn_blocking(move || dlq::list(&brokers(), &topic))
        .await
        .expect("thread")
        .expect("dlq list");
    assert!(!letters.is_empty(), "the poisoned events are dead-lettered");
    for l in &letters {
        assert_eq!(l.group, cdc.group(CONVERSATIONS), "{l:?}");
        assert!(l.error.contains("poisoned conversation row"), "{l:?}");
        assert_eq!(l.attempts, "2", "{l:?}");
        assert!(cdc.topics().contains(&l.topic), "{l:?}");
    }
    eprintln!("dead letters: {letters:#?}");

    // Fix the cause, replay: A's row catches up; a second replay has nothing left.
    conn.batch_execute(CURE).await.expect("cure");
    let dlq_topic = cdc.dlq_topic();
    let replay = || async {
        dlq::replay(
            &brokers(),
            &dlq_topic,
            store.pool(),
            &projection(),
            &NoCache,
        )
        .await
        .expect("replay")
    };
    let replayed = replay().await;
    assert_eq!(replayed, letters.len());
    assert_eq!(listed(&store, a, ab).await, Some((Some("to an".into()), 1)));
    db.assert_converged(&store).await;
    let again = replay().await;
    assert_eq!(again, 0, "each dead letter is replayed once");
    cdc.finish().await;
}

/// A projector's coverage counts only the topics it reads now: progress rows left from a topic it
/// read under an earlier configuration (here far ahead) must not make a write look applied, and
/// retiring them leaves the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coverage_counts_only_the_projectors_topics() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Cdc));
    let mut conn = store.pool().get().await.expect("connection");
    let progress = |topic: &str, partition: i32, lsn: i64| sync::PartitionProgress {
        topic: topic.into(),
        partition,
        applied_lsn: lsn,
        next_offset: 1,
        commit_ts_ms: None,
    };
    let tx = conn.transaction().await.expect("tx");
    sync::advance_watermarks(
        &tx,
        "p",
        &[
            progress("users", 0, 100),
            progress("users", 1, 300),
            progress("messages", 0, 900),
            progress("messages", 1, 900),
        ],
    )
    .await
    .expect("watermarks");
    tx.commit().await.expect("commit");
    let cov = sync::Coverage {
        projector: "p".into(),
        topics: vec!["users".into()],
        partitions: 2,
    };
    let upto = sync::covered_upto(&conn, SyncMode::Cdc, std::slice::from_ref(&cov))
        .await
        .expect("covered_upto");
    assert_eq!(
        upto,
        Some(Lsn(100)),
        "the slowest partition of the topics read"
    );
    assert!(sync::covers(&conn, SyncMode::Cdc, &cov, Lsn(100))
        .await
        .expect("covers"));
    assert!(!sync::covers(&conn, SyncMode::Cdc, &cov, Lsn(101))
        .await
        .expect("covers"));
    let short = sync::Coverage {
        partitions: 3,
        ..cov.clone()
    };
    assert!(
        !sync::covers(&conn, SyncMode::Cdc, &short, Lsn(1))
            .await
            .expect("covers"),
        "a partition that never reported covers nothing"
    );

    let retired = sync::retire_watermarks(&conn, "p", &cov.topics)
        .await
        .expect("retire");
    assert_eq!(retired, 2);
    let left = count(&store, "SELECT count(*) FROM hermet_projector_watermarks").await;
    assert_eq!(left, 2);
    assert!(sync::covers(&conn, SyncMode::Cdc, &cov, Lsn(100))
        .await
        .expect("covers"));
}

/// One projector batch's bookkeeping, as the consumer writes it: marks, then watermarks (for
/// projector `p`; projector `q` only moves its watermarks alike).
async fn marked_batch(
    store: &Store,
    letters: Vec<dead_letters::DeadLetterMark>,
    progress: Vec<sync::PartitionProgress>,
) {
    let mut conn = store.pool().get().await.expect("connection");
    let tx = conn.transaction().await.expect("tx");
    dead_letters::record_dead_letters(&tx, "p", &letters)
        .await
        .expect("dead letters");
    for projector in ["p", "q"] {
        sync::advance_watermarks(&tx, projector, &progress)
            .await
            .expect("watermarks");
    }
    tx.commit().await.expect("commit");
}

async fn cleared(store: &Store, partition: i32, offset: i64) -> bool {
    let mut conn = store.pool().get().await.expect("connection");
    let tx = conn.transaction().await.expect("tx");
    let there = dead_letters::clear_dead_letter(&tx, "p", "users", partition, offset)
        .await
        .expect("clear");
    tx.commit().await.expect("commit");
    there
}

async fn covered_upto(store: &Store, cov: &sync::Coverage) -> Option<Lsn> {
    let conn = store.pool().get().await.expect("connection");
    sync::covered_upto(&conn, SyncMode::Cdc, std::slice::from_ref(cov))
        .await
        .expect("covered_upto")
}

/// Issue item 3, at the store: a dead-lettered record holds its projector's coverage just
/// before its LSN, whatever the watermarks say, until it is cleared; one without an LSN (it did
/// not decode) takes its partition's watermark from before its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coverage_stops_before_outstanding_dead_letters() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Cdc));
    let progress = |partition: i32, lsn: i64| sync::PartitionProgress {
        topic: "users".into(),
        partition,
        applied_lsn: lsn,
        next_offset: 10,
        commit_ts_ms: None,
    };
    let letter = |partition: i32, offset: i64, lsn: Option<i64>| dead_letters::DeadLetterMark {
        topic: "users".into(),
        partition,
        offset,
        lsn,
        error: "poisoned".into(),
    };
    let cov = sync::Coverage {
        projector: "p".into(),
        topics: vec!["users".into()],
        partitions: 2,
    };
    let other = sync::Coverage {
        projector: "q".into(),
        ..cov.clone()
    };
    marked_batch(&store, vec![], vec![progress(0, 400), progress(1, 400)]).await;
    assert_eq!(covered_upto(&store, &cov).await, Some(Lsn(400)));
    // A record at 500 dead-lettered; the partitions move on to 1000 past it.
    marked_batch(
        &store,
        vec![letter(0, 3, Some(500))],
        vec![progress(0, 1000), progress(1, 1000)],
    )
    .await;
    assert_eq!(
        covered_upto(&store, &cov).await,
        Some(Lsn(499)),
        "just before the dead letter, not the watermarks"
    );
    assert_eq!(
        covered_upto(&store, &other).await,
        Some(Lsn(1000)),
        "another projector's coverage is its own"
    );
    assert!(covers(&store, SyncMode::Cdc, &cov, Lsn(499)).await);
    assert!(!covers(&store, SyncMode::Cdc, &cov, Lsn(500)).await);
    {
        let conn = store.pool().get().await.expect("connection");
        assert_eq!(
            sync::passed_upto(&conn, &cov).await.expect("passed"),
            Some(Lsn(1000)),
            "the partitions did move on"
        );
    }
    // Undecodable (no LSN) on partition 1, at 1000 before this batch.
    marked_batch(
        &store,
        vec![letter(1, 11, None)],
        vec![progress(0, 2000), progress(1, 2000)],
    )
    .await;
    assert_eq!(covered_upto(&store, &cov).await, Some(Lsn(499)));
    assert!(cleared(&store, 0, 3).await);
    assert!(!cleared(&store, 0, 3).await, "cleared once");
    assert_eq!(
        covered_upto(&store, &cov).await,
        Some(Lsn(999)),
        "the undecodable record's transaction committed after the partition's 1000"
    );
    // Undecodable on a partition that never reported: nothing is known, nothing covered.
    marked_batch(&store, vec![letter(7, 0, None)], vec![]).await;
    assert_eq!(covered_upto(&store, &cov).await, Some(Lsn(0)));
    assert!(cleared(&store, 1, 11).await && cleared(&store, 7, 0).await);
    assert_eq!(
        covered_upto(&store, &cov).await,
        Some(Lsn(2000)),
        "all replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_outbox_row_is_set_aside_then_replayed() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Async));
    let worker = outbox_worker(&store, 2);
    let (a, b, c, d) = (
        user(&store, "ann").await,
        user(&store, "bob").await,
        user(&store, "cid").await,
        user(&store, "dan").await,
    );
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let cd = store.add_friend(c, d).await.expect("friends").value;
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    db.assert_converged(&store).await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(&POISON.replace("{user}", &a.to_string()))
        .await
        .expect("install the poison");
    send(&store, b, ab, "to ann").await;
    send(&store, c, cd, "later").await;
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;

    let dead = conn
        .query("SELECT error, attempts FROM hermet_outbox_dead", &[])
        .await
        .expect("dead rows");
    assert_eq!(
        dead.len(),
        1,
        "exactly the poisoned command's row is set aside"
    );
    let (error, attempts): (String, i32) = (dead[0].get(0), dead[0].get(1));
    assert!(error.contains("poisoned conversation row"), "{error}");
    assert_eq!(attempts, 2);
    assert_eq!(
        listed(&store, d, cd).await,
        Some((Some("later".into()), 1)),
        "a row after the poison still applies"
    );
    assert_eq!(listed(&store, a, ab).await, Some((None, 0)));

    conn.batch_execute(CURE).await.expect("cure");
    assert_eq!(dlq::replay_outbox(store.pool()).await.expect("replay"), 1);
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    assert_eq!(
        count(&store, "SELECT count(*) FROM hermet_outbox_dead").await,
        0
    );
    assert_eq!(listed(&store, a, ab).await, Some((Some("to an".into()), 1)));
    assert_eq!(listed(&store, b, ab).await, Some((Some("to an".into()), 0)));
    db.assert_converged(&store).await;
    worker.stop().await;
}

/// Issue item 4: a poison row deep in a full batch is found by bisection. Before, each batch
/// failed `max_attempts` times and then a single row was applied, so a poison row at position k
/// cost about `max_attempts · k` failed batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_poison_row_in_a_full_batch_costs_logarithmic_failed_applies() {
    const BATCH: i64 = 64;
    const POISON_AT: i64 = 40;
    const MAX_ATTEMPTS: u32 = 3;
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Async));
    let (a, b, c, d) = (
        user(&store, "ann").await,
        user(&store, "bob").await,
        user(&store, "cid").await,
        user(&store, "dan").await,
    );
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let cd = store.add_friend(c, d).await.expect("friends").value;
    let worker = outbox_worker(&store, MAX_ATTEMPTS);
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    worker.stop().await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(
        &COUNTED_POISON
            .replace("{user}", &a.to_string())
            .replace("{errcode}", "P0001"),
    )
    .await
    .expect("install the poison");
    // One full batch, waiting: the poisoned command's row at POISON_AT.
    for i in 0..BATCH {
        if i == POISON_AT {
            send(&store, b, ab, "to ann").await;
        } else {
            send(&store, c, cd, &format!("m{i}")).await;
        }
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM hermet_outbox").await,
        BATCH
    );

    let worker = outbox_worker_with(&store, MAX_ATTEMPTS, BATCH);
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    worker.stop().await;
    let dead = conn
        .query("SELECT error, changes::text FROM hermet_outbox_dead", &[])
        .await
        .expect("dead rows");
    assert_eq!(dead.len(), 1, "exactly the poisoned row is set aside");
    let (error, changes): (String, String) = (dead[0].get(0), dead[0].get(1));
    assert!(error.contains("poisoned conversation row"), "{error}");
    assert!(changes.contains("to ann"), "{changes}");
    let failed = poison_hits(&store).await;
    let bound = i64::from(MAX_ATTEMPTS) + 2 * 6; // max_attempts + 2·log2(64)
    eprintln!("failed applies: {failed} (bound {bound})");
    assert!(
        failed <= bound,
        "{failed} failed applies to isolate one poison row at {POISON_AT} of {BATCH} (bound {bound})"
    );
    assert_eq!(
        listed(&store, d, cd).await,
        Some((Some("m63".into()), BATCH - 1)),
        "every other row applied"
    );

    conn.batch_execute(COUNTED_CURE).await.expect("cure");
    assert_eq!(dlq::replay_outbox(store.pool()).await.expect("replay"), 1);
    let worker = outbox_worker(&store, MAX_ATTEMPTS);
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    worker.stop().await;
    db.assert_converged(&store).await;
}

/// Issue item 11: a failure the data is not to blame for (here a trigger raising `XX000`, an
/// internal error) is retried for as long as it lasts; the row is never set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_not_caused_by_the_data_are_retried_never_set_aside() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Async));
    let worker = outbox_worker(&store, 2);
    let (a, b) = (user(&store, "ann").await, user(&store, "bob").await);
    let ab = store.add_friend(a, b).await.expect("friends").value;
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(
        &COUNTED_POISON
            .replace("{user}", &a.to_string())
            .replace("{errcode}", "XX000"),
    )
    .await
    .expect("install the failure");
    send(&store, b, ab, "to ann").await;
    // Well past max_attempts (2), or set aside (the bug).
    eventually("the worker retried or set the row aside", WAIT, || async {
        let dead = count(&store, "SELECT count(*) FROM hermet_outbox_dead").await;
        (poison_hits(&store).await >= 5 || dead > 0).then_some(())
    })
    .await;
    assert_eq!(
        count(&store, "SELECT count(*) FROM hermet_outbox_dead").await,
        0,
        "an internal error is not the data's fault: nothing is set aside"
    );
    assert_eq!(count(&store, "SELECT count(*) FROM hermet_outbox").await, 1);

    conn.batch_execute(COUNTED_CURE).await.expect("cure");
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    assert_eq!(listed(&store, a, ab).await, Some((Some("to an".into()), 1)));
    db.assert_converged(&store).await;
    worker.stop().await;
}

/// Issue item 11: real PostgreSQL errors, classified by SQLSTATE. Only the data's own faults
/// (class 22, class 23, a trigger's `RAISE`) are poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_errors_are_classified_by_sqlstate() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Async));
    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(
        "CREATE TEMP TABLE hermet_test_t (x int PRIMARY KEY CHECK (x > 0));
         INSERT INTO hermet_test_t VALUES (1)",
    )
    .await
    .expect("table");
    let raise =
        |code: &str| format!("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}'; END $$");
    let cases: Vec<(String, Failure)> = vec![
        ("SELECT 1/0".into(), Failure::Poison),
        ("SELECT 'x'::int".into(), Failure::Poison),
        (
            "INSERT INTO hermet_test_t VALUES (1)".into(),
            Failure::Poison,
        ),
        (
            "INSERT INTO hermet_test_t VALUES (-1)".into(),
            Failure::Poison,
        ),
        (
            "DO $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$".into(),
            Failure::Poison,
        ),
        (
            "SELECT * FROM hermet_no_such_table".into(),
            Failure::Unknown,
        ),
        (raise("XX000"), Failure::Unknown),
        (raise("53100"), Failure::Unknown),
        (raise("P0002"), Failure::Unknown),
        (
            "SET statement_timeout = 10; SELECT pg_sleep(1)".into(),
            Failure::Unknown,
        ),
        (raise("40001"), Failure::Conflict),
        (raise("40P01"), Failure::Conflict),
        (raise("57P01"), Failure::Unavailable),
        (raise("08006"), Failure::Unavailable),
    ];
    for (sql, want) in cases {
        let e = StoreError::from(conn.batch_execute(&sql).await.expect_err(&sql));
        assert_eq!(classify(&e), want, "{sql}: {e}");
        assert_eq!(
            is_transient(&e),
            want != Failure::Poison,
            "{sql}: {e} is retried unless it is the data's fault"
        );
        let _ = conn.batch_execute("RESET statement_timeout").await;
    }

    // A connection the server ended.
    let victim = connect(&db.url).await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    conn.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    eventually("the victim sees its end", WAIT, || async {
        victim.is_closed().then_some(())
    })
    .await;
    let e = StoreError::from(victim.batch_execute("SELECT 1").await.expect_err("closed"));
    assert_eq!(classify(&e), Failure::Unavailable, "{e}");
}

/// Issue item 6: a single-chat row created by a channel change while its member change went
/// elsewhere (dead-lettered, say) still gets its reverse-index entry, so the peer's next profile
/// change reaches it. Before, the entry came only with the member change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_profile_change_reaches_a_row_built_without_its_member_change() {
    let db = TestDb::new().await;
    // No worker: the test hands the outbox's changes to the projection itself.
    let store = db.store_with(store_config(SyncMode::Async));
    let (a, b) = (user(&store, "ann").await, user(&store, "bob").await);
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let taken = || async {
        let changes = outbox_changes(&store).await.expect("outbox").concat();
        let conn = store.pool().get().await.expect("connection");
        conn.batch_execute("DELETE FROM hermet_outbox")
            .await
            .expect("empty the outbox");
        changes
    };
    let (members, others): (Vec<RowChange>, Vec<RowChange>) = taken()
        .await
        .into_iter()
        .partition(|c| matches!(c, RowChange::ChannelMembers(_)));
    assert!(!members.is_empty() && !others.is_empty());
    apply(&store, &others, ReadModels::ALL)
        .await
        .expect("apply");
    let peer_nickname = || async {
        let conn = store.pool().get().await.expect("connection");
        conn.query_opt(
            "SELECT peer_nickname FROM user_conversation_view WHERE user_id = $1 AND channel_id = $2",
            &[&a, &ab],
        )
        .await
        .expect("row")
        .and_then(|r| r.get::<_, Option<String>>(0))
    };
    assert_eq!(
        peer_nickname().await.as_deref(),
        Some("bob"),
        "the channel change built ann's row"
    );

    let patch = ProfilePatch {
        nickname: Some(Name::parse("nickname", "bobby", &Limits::default()).expect("name")),
        avatar: None,
    };
    store.update_profile(b, &patch).await.expect("rename");
    apply(&store, &taken().await, ReadModels::ALL)
        .await
        .expect("apply");
    assert_eq!(
        peer_nickname().await.as_deref(),
        Some("bobby"),
        "the profile change reached the row its member change never built"
    );
    db.assert_converged(&store).await;
    // The member changes at last (a replay): nothing moves.
    apply(&store, &members, ReadModels::ALL)
        .await
        .expect("apply");
    db.assert_converged(&store).await;
}

// ------------------------------------------------------------------------------------------
// 5. Read-your-writes

/// The API on `store`, on a random local port.
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

struct Http {
    client: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn lsn(&self) -> String {
        self.header("x-hermet-lsn")
            .unwrap_or_else(|| panic!("a write answers X-Hermet-Lsn: {:?}", self.body))
            .to_owned()
    }
}

impl Http {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        min_lsn: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, url);
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
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_your_writes_in_cdc_mode() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    // Other WAL on the server all along (another database, as other tenants or the projectors'
    // own writes would make): a write's LSN is then often past its commit, and only a marker
    // at a later position covers it.
    let other = TestDb::new().await;
    let noise = {
        let client = connect(&other.url).await;
        client
            .batch_execute("CREATE TABLE noise (x int)")
            .await
            .expect("noise table");
        tokio::spawn(async move {
            loop {
                let _ = client.batch_execute("INSERT INTO noise VALUES (1)").await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut cdc = Cdc::new(&db);
    // No heartbeat within the wait: freshness may not depend on it.
    cdc.heartbeat = Duration::from_secs(60);
    let store = db.store_with(store_config(SyncMode::Cdc));
    cdc.start_relay().await;
    cdc.start_groups(store.pool());
    let coverage = hermet_api::ViewCoverage {
        conversations: cdc.coverage(CONVERSATIONS),
        contacts: cdc.coverage(CONTACTS),
    };
    let api_cfg = |wait: Duration| ApiConfig {
        jwt_secret: TEST_SECRET.into(),
        read_wait: wait,
        coverage: coverage.clone(),
        open_signup: true,
        ..ApiConfig::default()
    };
    // Generous: a fresh read normally waits for one projector batch.
    let base = serve(&store, api_cfg(Duration::from_secs(15))).await;
    let http = Http {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client"),
    };
    use reqwest::Method;
    let mut users = Vec::new();
    for nick in ["ann", "bob"] {
        let r = http
            .call(
                Method::POST,
                format!("{base}/v1/users"),
                None,
                None,
                Some(json!({"nickname": nick})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        users.push((
            r.body["id"].as_i64().expect("id"),
            r.body["token"].as_str().expect("token").to_owned(),
        ));
    }
    let ((_, ann), (bob_id, bob)) = (users[0].clone(), users[1].clone());

    let r = http
        .call(
            Method::POST,
            format!("{base}/v1/friends"),
            Some(&ann),
            None,
            Some(json!({"friend_id": bob_id})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let channel = r.body["channel_id"].as_i64().expect("channel_id");
    let contacts = http
        .call(
            Method::GET,
            format!("{base}/v1/contacts"),
            Some(&ann),
            Some(&r.lsn()),
            None,
        )
        .await;
    assert_eq!(contacts.status, 200);
    assert_eq!(contacts.header("x-hermet-stale"), None);
    assert!(
        contacts.body["contacts"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["contact_id"] == bob_id)),
        "the new friend is listed: {}",
        contacts.body
    );

    for i in 1..=12i64 {
        let text = format!("m{i}");
        let sent = http
            .call(
                Method::POST,
                format!("{base}/v1/channels/{channel}/messages"),
                Some(&ann),
                None,
                Some(json!({"content": text})),
            )
            .await;
        assert_eq!(sent.status, 201, "{:?}", sent.body);
        let list = http
            .call(
                Method::GET,
                format!("{base}/v1/conversations"),
                Some(&bob),
                Some(&sent.lsn()),
                None,
            )
            .await;
        assert_eq!(list.status, 200, "{:?}", list.body);
        assert_eq!(list.header("x-hermet-stale"), None, "fresh within the wait");
        let conv = list.body["conversations"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["channel_id"] == channel))
            .unwrap_or_else(|| panic!("the conversation is listed: {}", list.body));
        assert_eq!(conv["last_message"]["content"], text, "{conv}");
        assert_eq!(conv["unread_count"], i, "{conv}");
    }

    noise.abort();

    // Projectors stopped: a read waiting for a write they will not apply answers, stale,
    // after the (short) bounded wait of this second API instance.
    cdc.stop_groups().await;
    let short = serve(&store, api_cfg(Duration::from_millis(500))).await;
    let sent = http
        .call(
            Method::POST,
            format!("{short}/v1/channels/{channel}/messages"),
            Some(&ann),
            None,
            Some(json!({"content": "late"})),
        )
        .await;
    assert_eq!(sent.status, 201);
    let list = http
        .call(
            Method::GET,
            format!("{short}/v1/conversations"),
            Some(&bob),
            Some(&sent.lsn()),
            None,
        )
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(list.header("x-hermet-stale"), Some("true"));
    let conv = list.body["conversations"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["channel_id"] == channel))
        .expect("listed");
    assert_eq!(
        conv["last_message"]["content"], "m12",
        "the stale answer is the old row"
    );
    cdc.finish().await;
}

/// The API on `store` answering reads with `X-Hermet-Min-Lsn` after at most `wait`.
async fn serve_waiting(store: &Store, coverage: ViewCoverage, wait: Duration) -> String {
    serve(
        store,
        ApiConfig {
            jwt_secret: TEST_SECRET.into(),
            read_wait: wait,
            coverage,
            open_signup: true,
            ..ApiConfig::default()
        },
    )
    .await
}

/// A token for a user made through the store.
fn token(user: i64) -> String {
    TokenKeys::new(TEST_SECRET.as_bytes(), 3600)
        .issue(user)
        .expect("token")
}

/// `GET {base}{path}` as `user`, asking for writes up to `lsn`: (stale?, body).
async fn read_at(base: &str, path: &str, user: i64, lsn: Lsn) -> (bool, Value) {
    let http = Http {
        client: reqwest::Client::new(),
    };
    let r = http
        .call(
            reqwest::Method::GET,
            format!("{base}{path}"),
            Some(&token(user)),
            Some(&lsn.to_string()),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (r.header("x-hermet-stale") == Some("true"), r.body)
}

/// Issue item 3, `async`: an outbox row set aside keeps reads asking for a write at or past it
/// stale, until it is replayed and applied. Before, it left the queue and `covers` forgot it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_aside_outbox_rows_keep_reads_stale_until_replayed() {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(SyncMode::Async));
    let worker = outbox_worker(&store, 2);
    let (a, b, c, d) = (
        user(&store, "ann").await,
        user(&store, "bob").await,
        user(&store, "cid").await,
        user(&store, "dan").await,
    );
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let cd = store.add_friend(c, d).await.expect("friends").value;
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    let before = wal_lsn(&store).await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(&POISON.replace("{user}", &a.to_string()))
        .await
        .expect("install the poison");
    let poisoned = send(&store, b, ab, "to ann").await;
    let later = send(&store, c, cd, "later").await;
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    assert_eq!(
        count(&store, "SELECT count(*) FROM hermet_outbox_dead").await,
        1
    );
    assert_eq!(listed(&store, d, cd).await, Some((Some("later".into()), 1)));

    let cov = ViewCoverage::default();
    let any = &cov.conversations;
    assert!(covers(&store, SyncMode::Async, any, before).await);
    assert!(
        !covers(&store, SyncMode::Async, any, poisoned).await,
        "the set-aside write is not applied"
    );
    assert!(
        !covers(&store, SyncMode::Async, any, later).await,
        "nor is anything after it"
    );
    let base = serve_waiting(&store, cov.clone(), Duration::from_millis(300)).await;
    let (stale, body) = read_at(&base, "/v1/conversations", d, later).await;
    assert!(stale, "a read asking for the later write is stale: {body}");
    let (stale, _) = read_at(&base, "/v1/conversations", d, before).await;
    assert!(!stale, "a read asking for an earlier write is fresh");

    conn.batch_execute(CURE).await.expect("cure");
    assert_eq!(dlq::replay_outbox(store.pool()).await.expect("replay"), 1);
    wait_count(&store, "SELECT count(*) FROM hermet_outbox", 0).await;
    assert!(covers(&store, SyncMode::Async, any, later).await);
    let (stale, _) = read_at(&base, "/v1/conversations", a, later).await;
    assert!(!stale, "fresh once the row is replayed and applied");
    assert_eq!(listed(&store, a, ab).await, Some((Some("to an".into()), 1)));
    db.assert_converged(&store).await;
    worker.stop().await;
}

/// Issue item 3, `cdc`: a dead-lettered record keeps reads asking for a write at or past it
/// stale (its partition and the markers moved on past it), until `dlq replay` applies it.
/// Before, the watermarks alone said the write was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_keep_reads_stale_until_replayed_in_cdc_mode() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::new().await;
    let mut cdc = Cdc::new(&db);
    cdc.max_attempts = 2;
    let store = db.store_with(store_config(SyncMode::Cdc));
    cdc.start_relay().await;
    cdc.start_groups(store.pool());
    let (a, b, c, d) = (
        user(&store, "ann").await,
        user(&store, "bob").await,
        user(&store, "cid").await,
        user(&store, "dan").await,
    );
    let ab = store.add_friend(a, b).await.expect("friends").value;
    let cd = store.add_friend(c, d).await.expect("friends").value;
    let before = wal_lsn(&store).await;
    cdc.drain(&store, before).await;

    let conn = store.pool().get().await.expect("connection");
    conn.batch_execute(&POISON.replace("{user}", &a.to_string()))
        .await
        .expect("install the poison");
    let poisoned = send(&store, b, ab, "to ann").await;
    let later = send(&store, c, cd, "later").await;
    wait_passed(&mut cdc, &store, wal_lsn(&store).await).await;
    assert_eq!(listed(&store, d, cd).await, Some((Some("later".into()), 1)));
    let marks = count(
        &store,
        &format!(
            "SELECT count(*) FROM hermet_projector_dead_letters WHERE projector = '{}'",
            cdc.group(CONVERSATIONS)
        ),
    )
    .await;
    assert!(marks > 0, "the dead letters are marked outstanding");

    let (conv, contacts) = (cdc.coverage(CONVERSATIONS), cdc.coverage(CONTACTS));
    assert!(covers(&store, SyncMode::Cdc, &conv, before).await);
    assert!(
        !covers(&store, SyncMode::Cdc, &conv, poisoned).await,
        "a write whose change is dead-lettered is not applied"
    );
    assert!(
        !covers(&store, SyncMode::Cdc, &conv, later).await,
        "nor is any write after it"
    );
    assert!(
        covers(&store, SyncMode::Cdc, &contacts, later).await,
        "the contact view dead-lettered nothing"
    );
    {
        let conn = store.pool().get().await.expect("connection");
        let upto = sync::covered_upto(&conn, SyncMode::Cdc, &[conv.clone(), contacts.clone()])
            .await
            .expect("covered_upto");
        assert!(
            upto.is_some_and(|u| u >= before && u < poisoned),
            "covered up to {upto:?}: between {before} and {poisoned}"
        );
    }
    let coverage = ViewCoverage {
        conversations: conv.clone(),
        contacts: contacts.clone(),
    };
    let base = serve_waiting(&store, coverage, Duration::from_millis(500)).await;
    let (stale, body) = read_at(&base, "/v1/conversations", d, later).await;
    assert!(stale, "a read asking for the later write is stale: {body}");
    assert!(
        body["conversations"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["channel_id"] == cd)),
        "the stale answer still lists: {body}"
    );
    let (stale, _) = read_at(&base, "/v1/conversations", d, before).await;
    assert!(!stale, "a read asking for an earlier write is fresh");
    let (stale, _) = read_at(&base, "/v1/contacts", d, later).await;
    assert!(
        !stale,
        "contact reads do not wait for the conversation view's dead letters"
    );

    conn.batch_execute(CURE).await.expect("cure");
    let topic = cdc.dlq_topic();
    let replayed = dlq::replay(&brokers(), &topic, store.pool(), &projection(), &NoCache)
        .await
        .expect("replay");
    assert!(replayed > 0);
    assert_eq!(
        count(&store, "SELECT count(*) FROM hermet_projector_dead_letters").await,
        0,
        "replay clears what it applied"
    );
    assert!(covers(&store, SyncMode::Cdc, &conv, later).await);
    let (stale, _) = read_at(&base, "/v1/conversations", a, later).await;
    assert!(!stale, "fresh once the dead letters are replayed");
    assert_eq!(listed(&store, a, ab).await, Some((Some("to an".into()), 1)));
    db.assert_converged(&store).await;
    cdc.finish().await;
}
