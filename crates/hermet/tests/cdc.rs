//! The CDC relay end to end (docs/design.md §4, "CDC relay"): the real `hermet serve --role cdc`
//! process against the local PostgreSQL and Kafka, its topics read back by an independent
//! consumer that knows only Debezium's documented envelope.
//!
//! Each test has its own database, slot, publication, topic prefix and topics, and drops its slot
//! when done (a slot holds WAL, and a database with a slot cannot be dropped). Tests that use
//! slots run one at a time (`SERIAL`). Waits are bounded and generous; nothing asserts timing.
//!
//! Needs `HERMET_DATABASE_URL` (superuser, `wal_level=logical`) and `HERMET_KAFKA_BROKERS`:
//! `eval "$(scripts/services.sh env)" && cargo test -p hermet --test cdc -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{poll_until, Proc, SERIAL};
use hermet_core::validate::{Avatar, Content, Label, Limits, MessageType, Name};
use hermet_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use hermet_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use hermet_store::commands::{ConversationPatch, FriendPatch, GroupPatch, ProfilePatch};
use hermet_store::Store;
use hermet_testkit::cdc::TABLES;
use hermet_testkit::pipeline::{brokers, cleanup_blocking, connect, drop_slot, snapshot_done, tag};
use hermet_testkit::{TestDb, TEST_SHARDS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_postgres::Client;

/// Debezium's `unavailable.value.placeholder` default: an unchanged TOASTed value.
const UNAVAILABLE: &str = "__debezium_unavailable_value";
/// Partitions of the test topics: more than one, so per-key routing matters.
const PARTITIONS: i32 = 3;
/// Bound of every wait for the relay (start, snapshot, catching up, exiting).
const WAIT: Duration = Duration::from_secs(180);

fn name(s: &str) -> Name {
    Name::parse("nickname", s, &Limits::default()).expect("name")
}

fn avatar(s: &str) -> Avatar {
    Avatar::parse(s, &Limits::default()).expect("avatar")
}

fn content(s: &str) -> Content {
    Content::parse(s, &Limits::default()).expect("content")
}

fn label(s: &str) -> Label {
    Label::parse("remark_name", s, &Limits::default()).expect("label")
}

// ------------------------------------------------------------------------------------------
// The relay process and its test database

/// One test's database, slot, publication and topics, and the relay process running on them.
struct Cdc {
    slot: String,
    publication: String,
    /// Topic prefix (`source.name`) and the first part of every topic name.
    prefix: String,
    heartbeat_ms: u64,
    /// The last relay started, kept once it exited (its log is read).
    relay: Option<Proc>,
    starts: usize,
    client: Client,
    /// Last: dropped after `Drop::drop` removed the slot.
    db: TestDb,
}

impl Cdc {
    async fn new(heartbeat_ms: u64) -> Cdc {
        let db = TestDb::new().await;
        let tag = tag();
        let client = connect(&db.url).await;
        Cdc {
            slot: format!("t_{tag}"),
            publication: format!("p_{tag}"),
            prefix: format!("t{tag}"),
            heartbeat_ms,
            relay: None,
            starts: 0,
            client,
            db,
        }
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.{table}.changed", self.prefix)
    }

    /// Starts `hermet serve --role cdc`; its stdout and stderr go to a log file.
    fn start(&mut self) {
        if let Some(r) = self.relay.as_mut() {
            assert!(r.exited().is_some(), "the relay is already running");
        }
        let log =
            std::env::temp_dir().join(format!("hermet-cdc-test-{}-{}.log", self.slot, self.starts));
        self.starts += 1;
        let kv = |k: &str, v: String| (k.to_owned(), v);
        let env = [
            kv("HERMET_DATABASE_URL", self.db.url.clone()),
            kv("HERMET_KAFKA_BROKERS", brokers()),
            kv("HERMET_SHARDS", TEST_SHARDS.to_string()),
            kv("HERMET_CDC__SLOT", self.slot.clone()),
            kv("HERMET_CDC__PUBLICATION", self.publication.clone()),
            kv("HERMET_CDC__TOPIC_PREFIX", self.prefix.clone()),
            kv(
                "HERMET_CDC__TOPIC_TEMPLATE",
                format!("{}.{{table}}.changed", self.prefix),
            ),
            kv("HERMET_CDC__PARTITIONS", PARTITIONS.to_string()),
            kv("HERMET_CDC__HEARTBEAT_MS", self.heartbeat_ms.to_string()),
        ];
        self.relay = Some(Proc::spawn("relay", &["serve", "--role", "cdc"], &env, log));
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut relay) = self.relay.take() {
            relay.kill();
        }
    }

    fn relay(&mut self) -> &mut Proc {
        self.relay.as_mut().expect("the relay was started")
    }

    fn assert_running(&mut self, doing: &str) {
        let relay = self.relay();
        if let Some(status) = relay.exited() {
            panic!(
                "the relay exited ({status}) while {doing}\n{}",
                relay.tail()
            );
        }
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.relay().wait_exit(within).await
    }

    fn log(&self) -> String {
        self.relay.as_ref().map(Proc::log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        self.relay.as_ref().map(Proc::tail).unwrap_or_default()
    }

    /// Waits until the relay recorded its initial snapshot as complete.
    async fn wait_snapshot_done(&mut self) {
        let (client, slot) = (&self.client, &self.slot);
        let relay = self.relay.as_mut().expect("the relay was started");
        poll_until(relay, "a completed initial snapshot", WAIT, async || {
            snapshot_done(client, slot).await
        })
        .await;
    }

    async fn wal_lsn(&self) -> String {
        self.client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("pg_current_wal_lsn")
            .get(0)
    }

    async fn confirmed_lsn(&self) -> Option<String> {
        self.client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .expect("pg_replication_slots")
            .and_then(|r| r.get(0))
    }

    /// Waits until the slot's `confirmed_flush_lsn` is at or past `lsn`: the relay has had Kafka
    /// acknowledge every change committed before it.
    async fn wait_confirmed(&mut self, lsn: &str) {
        let (client, slot) = (&self.client, &self.slot);
        let relay = self.relay.as_mut().expect("the relay was started");
        let what = format!("slot {slot} confirms {lsn}");
        poll_until(relay, &what, WAIT, async || {
            let row = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $1::text::pg_lsn
                       FROM pg_replication_slots WHERE slot_name = $2",
                    &[&lsn, slot],
                )
                .await
                .expect("pg_replication_slots");
            let confirmed: Option<String> = row.as_ref().and_then(|r| r.get(0));
            let reached: Option<bool> = row.as_ref().and_then(|r| r.get(1));
            match reached {
                Some(true) => Ok(()),
                _ => Err(format!("confirmed {confirmed:?}")),
            }
        })
        .await;
    }

    /// Everything on the topics of `tables`, read from the beginning by a consumer of its own.
    async fn consume(&self, tables: &[&str]) -> Vec<Event> {
        let topics: Vec<(String, String)> = tables
            .iter()
            .map(|t| ((*t).to_owned(), self.topic(t)))
            .collect();
        tokio::task::spawn_blocking(move || read_topics(&brokers(), &topics))
            .await
            .expect("consumer thread")
    }

    /// Every row of every captured table, as `row_to_json`, by primary key.
    async fn rows(&self) -> HashMap<String, BTreeMap<Vec<i64>, Value>> {
        let mut out = HashMap::new();
        for table in TABLES {
            let mut rows = BTreeMap::new();
            for r in self
                .client
                .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
                .await
                .expect("select rows")
            {
                let v: Value = serde_json::from_str(r.get(0)).expect("row_to_json");
                let key = key_of(table, v.as_object().expect("row object"));
                rows.insert(key, v);
            }
            out.insert(table.to_owned(), rows);
        }
        out
    }

    /// The normal end: stop the relay (SIGTERM: it must exit cleanly) and drop the slot (the rest
    /// is in `Drop`).
    async fn finish(mut self) {
        if let Some(relay) = self.relay.as_mut() {
            if relay.exited().is_none() {
                relay.stop().await;
            }
        }
        drop_slot(&self.db.url, &self.slot)
            .await
            .expect("drop the slot");
    }
}

impl Drop for Cdc {
    fn drop(&mut self) {
        // The relay's log goes with it (kept if the test is failing).
        self.kill();
        let topics: Vec<String> = TABLES.iter().map(|t| self.topic(t)).collect();
        cleanup_blocking(self.db.url.clone(), self.slot.clone(), topics, Vec::new());
    }
}

// ------------------------------------------------------------------------------------------
// Reading the topics

/// One Kafka record of a captured table's topic.
#[derive(Debug, Clone)]
struct Event {
    table: String,
    partition: i32,
    offset: i64,
    key: Value,
    /// `None`: a tombstone.
    value: Option<Value>,
}

impl Event {
    fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }

    fn after(&self) -> Option<&Map<String, Value>> {
        self.value.as_ref()?.get("after")?.as_object()
    }

    fn before(&self) -> Option<&Map<String, Value>> {
        self.value.as_ref()?.get("before")?.as_object()
    }

    fn source(&self, field: &str) -> Option<&Value> {
        self.value.as_ref()?.get("source")?.get(field)
    }

    fn is_snapshot(&self) -> bool {
        self.op() == Some("r")
    }

    /// The primary key from the Kafka key.
    fn pk(&self) -> Vec<i64> {
        key_of(
            &self.table,
            self.key
                .as_object()
                .unwrap_or_else(|| panic!("{} key is not a JSON object: {}", self.table, self.key)),
        )
    }

    /// A number column of `after`.
    fn after_i64(&self, column: &str) -> i64 {
        self.after()
            .and_then(|a| a.get(column))
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("{} event without after.{column}", self.table))
    }
}

fn key_columns(table: &str) -> &'static [&'static str] {
    match table {
        "channel_members" => &["channel_id", "user_id"],
        "friendships" => &["user_id", "friend_id"],
        _ => &["id"],
    }
}

fn key_of(table: &str, row: &Map<String, Value>) -> Vec<i64> {
    key_columns(table)
        .iter()
        .map(|c| {
            row.get(*c)
                .and_then(Value::as_i64)
                .unwrap_or_else(|| panic!("{table} row without key column {c}: {row:?}"))
        })
        .collect()
}

/// Reads every partition of `topics` (`(table, topic)`) from the beginning up to the high
/// watermark taken at the start, with a consumer of its own (fresh group, earliest, no commits).
fn read_topics(brokers: &str, topics: &[(String, String)]) -> Vec<Event> {
    let consumer: BaseConsumer = hermet_kafka::client_config(brokers, "hermet-cdc-test")
        .set(
            "group.id",
            format!("hermet-cdc-test-{:016x}", rand::random::<u64>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let timeout = Duration::from_secs(30);
    let mut assignment = TopicPartitionList::new();
    let mut end: HashMap<(String, i32), i64> = HashMap::new();
    let mut table_of: HashMap<String, String> = HashMap::new();
    for (table, topic) in topics {
        table_of.insert(topic.clone(), table.clone());
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("topic metadata");
        let t = md.topics().first().expect("metadata of the topic");
        assert!(
            t.error().is_none() && !t.partitions().is_empty(),
            "topic {topic} is missing: {:?}",
            t.error()
        );
        assert_eq!(
            t.partitions().len() as i32,
            PARTITIONS,
            "partitions of {topic}"
        );
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .expect("watermarks");
            assert_eq!(low, 0, "{topic}/{} was truncated", p.id());
            if high > low {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("assignment");
                end.insert((topic.clone(), p.id()), high);
            }
        }
    }
    let mut events = Vec::new();
    if end.is_empty() {
        return events;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + WAIT;
    while !end.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the consumer did not reach the end of {end:?}"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let topic = msg.topic().to_owned();
        match (msg.key(), msg.payload()) {
            // A record with neither key nor value is no change event (the relay's progress
            // markers); a Debezium consumer skips it like a tombstone without a key.
            (None, None) => {}
            (None, Some(_)) => panic!("{topic}: a change event without a key"),
            (Some(key), payload) => events.push(Event {
                table: table_of[&topic].clone(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: serde_json::from_slice(key).expect("the key is JSON"),
                value: payload.map(|p| serde_json::from_slice(p).expect("the value is JSON")),
            }),
        }
        let at = (topic, msg.partition());
        if end.get(&at).is_some_and(|&high| msg.offset() + 1 >= high) {
            end.remove(&at);
        }
    }
    events
}

// ------------------------------------------------------------------------------------------
// A consumer that knows only Debezium's documented envelope

/// A change event value as Debezium documents it for PostgreSQL (JSON converter, no schemas):
/// nothing hermet-specific; unknown fields are ignored as any Debezium consumer does.
#[derive(Debug, Deserialize)]
struct DebeziumEvent {
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    source: DebeziumSource,
    op: String,
    ts_ms: i64,
}

#[derive(Debug, Deserialize)]
struct DebeziumSource {
    version: String,
    connector: String,
    name: String,
    ts_ms: i64,
    db: String,
    schema: String,
    table: String,
    #[serde(rename = "txId")]
    tx_id: Option<i64>,
    lsn: Option<i64>,
}

/// Decodes every value as a Debezium event and checks what the documentation promises.
fn check_debezium(events: &[Event], cdc: &Cdc) {
    for e in events {
        let Some(value) = &e.value else {
            continue;
        };
        let d: DebeziumEvent = serde_json::from_value(value.clone())
            .unwrap_or_else(|err| panic!("not a Debezium envelope ({err}): {value}"));
        let what = format!("{} {} {:?}", e.table, d.op, e.key);
        assert!(!d.source.version.is_empty(), "{what}: source.version");
        assert_eq!(d.source.connector, "postgresql", "{what}: source.connector");
        assert_eq!(d.source.name, cdc.prefix, "{what}: source.name");
        assert_eq!(d.source.db, cdc.db.name, "{what}: source.db");
        assert_eq!(d.source.schema, "public", "{what}: source.schema");
        assert_eq!(d.source.table, e.table, "{what}: source.table");
        assert!(d.source.ts_ms > 0 && d.ts_ms > 0, "{what}: ts_ms");
        match d.op.as_str() {
            "c" | "r" => assert!(
                d.before.is_none() && d.after.is_some(),
                "{what}: a create/read has after and no before"
            ),
            "u" => assert!(d.after.is_some(), "{what}: an update has after"),
            "d" => assert!(
                d.before.is_some() && d.after.is_none(),
                "{what}: a delete has before and no after"
            ),
            op => panic!("{what}: unknown op {op:?}"),
        }
        if d.op != "r" {
            assert!(
                d.source.tx_id.is_some() && d.source.lsn.is_some_and(|l| l > 0),
                "{what}: a streamed change has source.txId and source.lsn"
            );
        }
        // The key is the primary key of the row the event is about.
        let row = d.after.as_ref().or(d.before.as_ref()).expect("a row");
        let key = e.key.as_object().expect("key object");
        let mut names: Vec<&str> = key.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut expected = key_columns(&e.table).to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected, "{what}: key columns");
        assert_eq!(e.pk(), key_of(&e.table, row), "{what}: key vs row");
    }
}

// ------------------------------------------------------------------------------------------
// Checks on the events of each key

type Histories<'a> = BTreeMap<(String, Vec<i64>), Vec<&'a Event>>;

/// The events of each `(table, primary key)`, in the order of their partition (one per key).
fn histories(events: &[Event]) -> Histories<'_> {
    let mut h: Histories<'_> = BTreeMap::new();
    for e in events {
        h.entry((e.table.clone(), e.pk())).or_default().push(e);
    }
    for ((table, key), evs) in &mut h {
        let p = evs[0].partition;
        assert!(
            evs.iter().all(|e| e.partition == p),
            "{table} {key:?}: events of one key on several partitions"
        );
        evs.sort_by_key(|e| e.offset);
    }
    h
}

/// The last event of every row is its current state; every deleted row ends with a delete and
/// a tombstone; every row has events.
fn check_final(h: &Histories<'_>, rows: &HashMap<String, BTreeMap<Vec<i64>, Value>>) {
    for (table, rows) in rows {
        for (key, row) in rows {
            let evs = h
                .get(&(table.clone(), key.clone()))
                .unwrap_or_else(|| panic!("{table} {key:?}: no event for an existing row"));
            let last = evs.last().expect("one event");
            assert!(
                matches!(last.op(), Some("c" | "u" | "r")),
                "{table} {key:?}: the last event of an existing row is {:?}",
                last.op()
            );
            assert_eq!(
                Value::Object(last.after().expect("after").clone()),
                *row,
                "{table} {key:?}: the last event's after is not the current row"
            );
        }
    }
    for ((table, key), evs) in h {
        if rows[table].contains_key(key) {
            continue;
        }
        let n = evs.len();
        assert!(
            n >= 2 && evs[n - 1].value.is_none() && evs[n - 2].op() == Some("d"),
            "{table} {key:?}: a deleted row must end with a delete and a tombstone, got {:?}",
            evs.iter().map(|e| e.op()).collect::<Vec<_>>()
        );
    }
}

/// Per key, in partition order: snapshot reads first, then streamed changes in WAL order
/// (`source.lsn` rising), a tombstone only right after a delete and nothing after it, and the
/// write side's versions following the commit order.
fn check_order(h: &Histories<'_>) {
    for ((table, key), evs) in h {
        let what = format!("{table} {key:?}");
        let ops: Vec<Option<&str>> = evs.iter().map(|e| e.op()).collect();
        let mut last_lsn = 0u64;
        let mut streamed = false;
        for (i, e) in evs.iter().enumerate() {
            match e.op() {
                None => assert!(
                    i > 0 && evs[i - 1].op() == Some("d") && i + 1 == evs.len(),
                    "{what}: misplaced tombstone in {ops:?}"
                ),
                Some("r") => assert!(!streamed, "{what}: a snapshot read after a change"),
                Some(_) => {
                    streamed = true;
                    let lsn = e.source("lsn").and_then(Value::as_u64).expect("source.lsn");
                    assert!(lsn > last_lsn, "{what}: source.lsn not rising in {ops:?}");
                    last_lsn = lsn;
                }
            }
            if e.op() == Some("d") {
                assert!(
                    i + 2 == evs.len(),
                    "{what}: only a tombstone may follow a delete: {ops:?}"
                );
            }
        }
        // Versions of the events that carry the row.
        let rows: Vec<&&Event> = evs.iter().filter(|e| e.after().is_some()).collect();
        let col = |c: &str| -> Vec<i64> { rows.iter().map(|e| e.after_i64(c)).collect() };
        let steps = |v: &[i64]| -> Vec<i64> { v.windows(2).map(|w| w[1] - w[0]).collect() };
        match table.as_str() {
            "users" | "friendships" => {
                let v = col(if table == "users" {
                    "profile_ver"
                } else {
                    "ver"
                });
                assert!(
                    steps(&v).iter().all(|&s| s == 1),
                    "{what}: versions {v:?} do not follow the commits one by one"
                );
                if rows.first().is_some_and(|e| e.op() == Some("c")) && table == "users" {
                    assert_eq!(v[0], 1, "{what}: a new user starts at version 1");
                }
            }
            "messages" => assert_eq!(rows.len(), 1, "{what}: one event per message: {ops:?}"),
            "channels" => {
                for c in ["last_seq", "channel_info_ver"] {
                    let v = col(c);
                    assert!(
                        steps(&v).iter().all(|&s| s == 0 || s == 1),
                        "{what}: {c} {v:?} not in commit order"
                    );
                }
                // REPLICA IDENTITY FULL: each update's before is the previous event's after.
                for w in rows.windows(2) {
                    if w[1].op() == Some("u") {
                        assert_eq!(
                            w[1].before(),
                            w[0].after(),
                            "{what}: an update's before is not the previous state"
                        );
                    }
                }
            }
            "channel_members" => {
                let (sv, rs) = (col("settings_ver"), col("read_seq"));
                for i in 1..rows.len() {
                    let ds = sv[i] - sv[i - 1];
                    let dr = rs[i] - rs[i - 1];
                    assert!(
                        (ds == 0 || ds == 1) && dr >= 0 && (ds, dr) != (0, 0),
                        "{what}: settings_ver {sv:?} / read_seq {rs:?} not in commit order"
                    );
                }
            }
            other => panic!("unexpected table {other}"),
        }
    }
}

fn count_ops(events: &[Event]) -> BTreeMap<(String, String), usize> {
    let mut n = BTreeMap::new();
    for e in events {
        let op = e.op().unwrap_or("tombstone").to_owned();
        *n.entry((e.table.clone(), op)).or_insert(0) += 1;
    }
    n
}

// ------------------------------------------------------------------------------------------
// Tests

/// A mix of inserts, updates and deletes over the five tables comes out of Kafka complete, per
/// key in commit order, ending at each row's current state, readable as Debezium events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_change_in_order() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    cdc.start();
    cdc.wait_snapshot_done().await;

    let s = cdc.db.store(50);
    let mut u = Vec::new();
    for i in 0..6 {
        u.push(
            s.create_user(&name(&format!("user{i}")), &Avatar::default())
                .await
                .expect("create_user")
                .value
                .id,
        );
    }
    let nick = |n: &str| ProfilePatch {
        nickname: Some(name(n)),
        avatar: None,
    };
    s.update_profile(u[0], &nick("zero b")).await.unwrap();
    s.update_profile(
        u[1],
        &ProfilePatch {
            nickname: None,
            avatar: Some(avatar("https://example.com/1.png")),
        },
    )
    .await
    .unwrap();
    s.update_profile(u[0], &nick("zero c")).await.unwrap();
    let c01 = s.add_friend(u[0], u[1]).await.unwrap().value;
    let c02 = s.add_friend(u[0], u[2]).await.unwrap().value;
    let text = MessageType::text();
    s.send_message(u[0], c01, &content("hi"), &text)
        .await
        .unwrap();
    s.send_message(u[1], c01, &content("hello"), &text)
        .await
        .unwrap();
    let doomed = s
        .send_message(u[0], c02, &content("to be deleted"), &text)
        .await
        .unwrap()
        .value
        .message_id;
    s.send_message(u[2], c02, &content("hey"), &text)
        .await
        .unwrap();
    let g = s
        .create_group(
            u[0],
            &name("group"),
            &Avatar::default(),
            &[u[1], u[2], u[3]],
        )
        .await
        .unwrap()
        .value;
    s.send_message(u[1], g, &content("group hi"), &text)
        .await
        .unwrap();
    s.update_group(
        u[0],
        g,
        &GroupPatch {
            name: Some(name("group renamed")),
            avatar: None,
        },
    )
    .await
    .unwrap();
    s.add_members(u[0], g, &[u[4]]).await.unwrap();
    let last = s
        .send_message(u[2], g, &content("welcome"), &text)
        .await
        .unwrap()
        .value
        .seq;
    s.remove_member(u[0], g, u[3]).await.unwrap();
    s.mark_read(u[4], g, last).await.unwrap();
    s.update_conversation(
        u[1],
        g,
        ConversationPatch {
            pinned: Some(true),
            muted: None,
            hidden: None,
        },
    )
    .await
    .unwrap();
    s.update_friend(
        u[0],
        u[1],
        &FriendPatch {
            remark_name: Some(label("bestie")),
            group_name: None,
            starred: Some(true),
        },
    )
    .await
    .unwrap();
    s.delete_friend(u[0], u[2]).await.unwrap();
    s.add_friend(u[2], u[0]).await.unwrap();
    s.update_profile(u[2], &nick("two b")).await.unwrap();
    s.remove_member(u[0], g, u[0]).await.unwrap(); // the owner leaves: ownership moves
    s.send_message(u[1], g, &content("bye"), &text)
        .await
        .unwrap();
    // Deletes: a message, and a user nothing refers to.
    let n = cdc
        .client
        .execute("DELETE FROM messages WHERE id = $1", &[&doomed])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = cdc
        .client
        .execute("DELETE FROM users WHERE id = $1", &[&u[5]])
        .await
        .unwrap();
    assert_eq!(n, 1);

    let target = cdc.wal_lsn().await;
    cdc.wait_confirmed(&target).await;
    let events = cdc.consume(&TABLES).await;
    check_debezium(&events, &cdc);
    let h = histories(&events);
    let rows = cdc.rows().await;
    check_final(&h, &rows);
    check_order(&h);

    // The mix was what it says: every table changed, creates, updates and deletes, no snapshot
    // rows (the tables were empty when the relay started).
    let ops = count_ops(&events);
    println!("events by table and op: {ops:?}");
    for t in TABLES {
        assert!(
            ops.contains_key(&(t.to_owned(), "c".to_owned())),
            "no create on {t}"
        );
    }
    for t in ["users", "channels", "channel_members", "friendships"] {
        assert!(
            ops.contains_key(&(t.to_owned(), "u".to_owned())),
            "no update on {t}"
        );
    }
    for t in ["users", "messages"] {
        assert_eq!(ops.get(&(t.to_owned(), "d".to_owned())), Some(&1), "{t}");
        assert_eq!(
            ops.get(&(t.to_owned(), "tombstone".to_owned())),
            Some(&1),
            "{t}"
        );
    }
    assert!(events.iter().all(|e| !e.is_snapshot()), "no snapshot rows");
    // Exactly one event per committed row change: nothing duplicated without a crash.
    let messages = rows["messages"].len() + 1;
    assert_eq!(ops[&("messages".to_owned(), "c".to_owned())], messages);
    cdc.finish().await;
}

/// Rows that existed before the relay first started come as snapshot reads (`op: "r"`), exactly
/// once, in the state they had; later changes are streamed as c/u/d after them; nothing is
/// missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    let s = cdc.db.store(50);
    let text = MessageType::text();
    let mut u = Vec::new();
    for i in 0..4 {
        u.push(
            s.create_user(&name(&format!("early{i}")), &Avatar::default())
                .await
                .unwrap()
                .value
                .id,
        );
    }
    s.update_profile(
        u[0],
        &ProfilePatch {
            nickname: Some(name("early zero b")),
            avatar: None,
        },
    )
    .await
    .unwrap();
    let c01 = s.add_friend(u[0], u[1]).await.unwrap().value;
    let g = s
        .create_group(
            u[1],
            &name("early group"),
            &Avatar::default(),
            &[u[2], u[3]],
        )
        .await
        .unwrap()
        .value;
    let mut early_msgs = Vec::new();
    for i in 0..5 {
        early_msgs.push(
            s.send_message(u[i % 2], c01, &content(&format!("early {i}")), &text)
                .await
                .unwrap()
                .value
                .message_id,
        );
        s.send_message(u[1 + i % 3], g, &content(&format!("early g {i}")), &text)
            .await
            .unwrap();
    }
    let before_start = cdc.rows().await;

    cdc.start();
    cdc.wait_snapshot_done().await;

    let late = s
        .create_user(&name("late"), &Avatar::default())
        .await
        .unwrap()
        .value
        .id;
    s.update_profile(
        u[1],
        &ProfilePatch {
            nickname: Some(name("early one b")),
            avatar: None,
        },
    )
    .await
    .unwrap();
    s.add_friend(late, u[2]).await.unwrap();
    s.send_message(u[0], c01, &content("late"), &text)
        .await
        .unwrap();
    s.add_members(u[1], g, &[late]).await.unwrap();
    s.send_message(late, g, &content("late g"), &text)
        .await
        .unwrap();
    s.delete_friend(u[0], u[1]).await.unwrap();
    cdc.client
        .execute("DELETE FROM messages WHERE id = $1", &[&early_msgs[0]])
        .await
        .unwrap();

    let target = cdc.wal_lsn().await;
    cdc.wait_confirmed(&target).await;
    let events = cdc.consume(&TABLES).await;
    check_debezium(&events, &cdc);
    let h = histories(&events);
    check_final(&h, &cdc.rows().await);
    check_order(&h);

    let mut reads = 0;
    for ((table, key), evs) in &h {
        let existed = before_start[table].get(key);
        let snapshot: Vec<&&Event> = evs.iter().filter(|e| e.is_snapshot()).collect();
        match existed {
            Some(row) => {
                assert_eq!(
                    snapshot.len(),
                    1,
                    "{table} {key:?}: one snapshot read per existing row"
                );
                assert!(
                    evs[0].is_snapshot(),
                    "{table} {key:?}: the read comes first"
                );
                assert_eq!(
                    Value::Object(evs[0].after().expect("after").clone()),
                    *row,
                    "{table} {key:?}: the read is the row as it was at the start"
                );
                let marker = evs[0].source("snapshot").and_then(Value::as_str);
                assert!(
                    matches!(marker, Some("true" | "first" | "last")),
                    "{table} {key:?}: source.snapshot {marker:?}"
                );
                reads += 1;
            }
            None => {
                assert!(
                    snapshot.is_empty(),
                    "{table} {key:?}: a row made after the snapshot was read in it"
                );
                assert_eq!(
                    evs[0].op(),
                    Some("c"),
                    "{table} {key:?}: a new row starts with c"
                );
            }
        }
        for e in evs.iter().filter(|e| !e.is_snapshot() && e.value.is_some()) {
            assert_eq!(
                e.source("snapshot").and_then(Value::as_str),
                Some("false"),
                "{table} {key:?}: a streamed change is not marked as snapshot"
            );
        }
    }
    let existing: usize = before_start.values().map(BTreeMap::len).sum();
    assert_eq!(reads, existing, "every row present at the start was read");
    for table in TABLES {
        assert!(
            !before_start[table].is_empty(),
            "the snapshot covers {table}"
        );
    }
    let ops = count_ops(&events);
    println!("snapshot rows {reads}; events by table and op: {ops:?}");
    for op in ["c", "u", "d"] {
        assert!(
            ops.keys().any(|(_, o)| o == op),
            "no streamed {op} after the snapshot"
        );
    }
    cdc.finish().await;
}

/// Profile updates and messages from a background load while the relay is SIGKILLed and
/// restarted several times; afterwards every committed version is on Kafka.
async fn write_load(
    store: Store,
    worker: u64,
    users: Vec<i64>,
    chats: Vec<(i64, Vec<i64>)>,
    stop: Arc<AtomicBool>,
) -> (u64, u64, u64) {
    let mut rng = StdRng::seed_from_u64(rand::random::<u64>() ^ worker);
    let (mut updates, mut sends, mut failed) = (0u64, 0u64, 0u64);
    let text = MessageType::text();
    while !stop.load(Ordering::Relaxed) {
        let ok = if rng.gen_bool(0.5) {
            let user = users[rng.gen_range(0..users.len())];
            let patch = ProfilePatch {
                nickname: Some(name(&format!("w{worker} #{updates}"))),
                avatar: None,
            };
            let r = store.update_profile(user, &patch).await;
            updates += u64::from(r.is_ok());
            r.is_ok()
        } else {
            let (chat, members) = &chats[rng.gen_range(0..chats.len())];
            let from = members[rng.gen_range(0..members.len())];
            let r = store
                .send_message(from, *chat, &content(&format!("w{worker} m{sends}")), &text)
                .await;
            sends += u64::from(r.is_ok());
            r.is_ok()
        };
        // A failed command (a deadlock, say) committed nothing, so it owes nothing to Kafka.
        failed += u64::from(!ok);
    }
    (updates, sends, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_under_load() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    let s = cdc.db.store(50);
    let mut u = Vec::new();
    for i in 0..6 {
        u.push(
            s.create_user(&name(&format!("load{i}")), &Avatar::default())
                .await
                .unwrap()
                .value
                .id,
        );
    }
    let c01 = s.add_friend(u[0], u[1]).await.unwrap().value;
    let c23 = s.add_friend(u[2], u[3]).await.unwrap().value;
    let g = s
        .create_group(u[0], &name("load group"), &Avatar::default(), &u[1..])
        .await
        .unwrap()
        .value;
    let chats = vec![
        (c01, vec![u[0], u[1]]),
        (c23, vec![u[2], u[3]]),
        (g, u.clone()),
    ];
    cdc.start();
    cdc.wait_snapshot_done().await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            tokio::spawn(write_load(
                s.clone(),
                w,
                u.clone(),
                chats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut rng = StdRng::from_entropy();
    let kills = rng.gen_range(4..=5);
    for i in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..=3000))).await;
        cdc.assert_running("under load");
        cdc.kill();
        if i + 1 < kills {
            cdc.start();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut updates, mut sends, mut failed) = (0, 0, 0);
    for w in workers {
        let (a, b, c) = w.await.expect("load worker");
        updates += a;
        sends += b;
        failed += c;
    }
    let target = cdc.wal_lsn().await;
    cdc.start();
    cdc.wait_confirmed(&target).await;
    let events = cdc.consume(&["users", "channels", "messages"]).await;
    check_debezium(&events, &cdc);

    // (table, key, version) → times seen.
    let mut seen: HashMap<(&str, i64, i64), usize> = HashMap::new();
    for e in &events {
        let Some(after) = e.after() else { continue };
        let id = after["id"].as_i64().expect("id");
        let v = match e.table.as_str() {
            "users" => e.after_i64("profile_ver"),
            "channels" => e.after_i64("last_seq"),
            _ => 0,
        };
        let table = TABLES.iter().find(|t| **t == e.table).expect("table");
        *seen.entry((table, id, v)).or_insert(0) += 1;
    }
    let mut missing = Vec::new();
    let mut expected = 0usize;
    for r in cdc
        .client
        .query("SELECT id, profile_ver FROM users", &[])
        .await
        .unwrap()
    {
        let (id, ver): (i64, i64) = (r.get(0), r.get(1));
        for v in 1..=ver {
            expected += 1;
            if !seen.contains_key(&("users", id, v)) {
                missing.push(format!("users {id} v{v}"));
            }
        }
    }
    for r in cdc
        .client
        .query("SELECT id, last_seq FROM channels", &[])
        .await
        .unwrap()
    {
        let (id, last): (i64, i64) = (r.get(0), r.get(1));
        for seq in 1..=last {
            expected += 1;
            if !seen.contains_key(&("channels", id, seq)) {
                missing.push(format!("channels {id} seq {seq}"));
            }
        }
    }
    for r in cdc
        .client
        .query("SELECT id FROM messages", &[])
        .await
        .unwrap()
    {
        let id: i64 = r.get(0);
        expected += 1;
        if !seen.contains_key(&("messages", id, 0)) {
            missing.push(format!("messages {id}"));
        }
    }
    let data_events = events.iter().filter(|e| e.after().is_some()).count();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let mut dup_by_table: BTreeMap<&str, usize> = BTreeMap::new();
    for ((t, _, _), n) in &seen {
        *dup_by_table.entry(t).or_insert(0) += n - 1;
    }
    println!(
        "crash test: kills={kills} relay starts={} load: profile updates={updates} messages={sends} \
         failed commands={failed}; committed versions expected={expected}; events={data_events} \
         duplicates={duplicates} {dup_by_table:?} missing={}",
        cdc.starts,
        missing.len()
    );
    assert!(
        updates > 0 && sends > 0,
        "the load made no progress: {updates} updates, {sends} messages"
    );
    assert!(
        missing.is_empty(),
        "{} committed changes are not on Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    cdc.finish().await;
}

/// With no writes to captured tables the slot's confirmed position keeps up with the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(200).await;
    cdc.start();
    cdc.wait_snapshot_done().await;
    let start = cdc.confirmed_lsn().await.expect("the slot exists");

    // WAL on a table that is not captured.
    cdc.client
        .batch_execute("CREATE TABLE idle_noise (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)")
        .await
        .unwrap();
    for i in 0..20 {
        cdc.client
            .execute(
                "INSERT INTO idle_noise (v) SELECT md5(g::text || $1) FROM generate_series(1, 200) g",
                &[&i.to_string()],
            )
            .await
            .unwrap();
    }
    let after_writes = cdc.wal_lsn().await;
    let moved: bool = cdc
        .client
        .query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn",
            &[&after_writes, &start],
        )
        .await
        .unwrap()
        .get(0);
    assert!(moved, "the uncaptured writes made WAL");
    cdc.wait_confirmed(&after_writes).await;
    // And it keeps going with no writes at all (only the relay's heartbeat makes WAL).
    let later = cdc.wal_lsn().await;
    cdc.wait_confirmed(&later).await;
    let end = cdc.confirmed_lsn().await;
    println!(
        "idle slot: confirmed {start} -> {end:?} (WAL after writes {after_writes}, later {later})"
    );

    let events = cdc.consume(&TABLES).await;
    assert!(
        events.is_empty(),
        "nothing was written to captured tables, yet {} events",
        events.len()
    );
    cdc.finish().await;
}

/// An update that leaves a large out-of-line (TOASTed) value unchanged carries Debezium's
/// placeholder for it, never null; the snapshot read and the insert carry the full value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_never_null() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    // ~200 KB of hex digits of md5s: too random to compress to a page.
    let insert = "INSERT INTO users (nickname, avatar, created_at, updated_at)
                  SELECT string_agg(md5(random()::text || g::text), ''), '', 1, 1
                    FROM generate_series(1, 6400) g
                  RETURNING id";
    let early: i64 = cdc.client.query_one(insert, &[]).await.unwrap().get(0);
    cdc.start();
    cdc.wait_snapshot_done().await;
    let late: i64 = cdc.client.query_one(insert, &[]).await.unwrap().get(0);
    let mut full = HashMap::new();
    for id in [early, late] {
        let r = cdc
            .client
            .query_one(
                "SELECT nickname, pg_column_size(nickname) FROM users WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let (nickname, stored): (String, i32) = (r.get(0), r.get(1));
        assert!(nickname.len() >= 200_000, "a large value");
        // More than a page can hold: the value lives out of line, in the TOAST table.
        assert!(
            stored > 8192,
            "stored size {stored}: not TOASTed out of line"
        );
        full.insert(id, nickname);
    }
    let new_avatar = "https://example.com/toast.png";
    cdc.client
        .execute(
            "UPDATE users SET avatar = $1, profile_ver = profile_ver + 1 WHERE id = ANY($2)",
            &[&new_avatar, &vec![early, late]],
        )
        .await
        .unwrap();
    let target = cdc.wal_lsn().await;
    cdc.wait_confirmed(&target).await;
    let events = cdc.consume(&["users"]).await;
    check_debezium(&events, &cdc);
    let h = histories(&events);
    for (id, first) in [(early, "r"), (late, "c")] {
        let evs = &h[&("users".to_owned(), vec![id])];
        let ops: Vec<Option<&str>> = evs.iter().map(|e| e.op()).collect();
        assert_eq!(ops, [Some(first), Some("u")], "user {id}");
        let nick = |e: &Event| e.after().and_then(|a| a.get("nickname")).cloned();
        assert!(
            nick(evs[0]).as_ref().and_then(Value::as_str) == Some(full[&id].as_str()),
            "user {id}: the {first} event must carry the whole nickname"
        );
        let upd = evs[1].after().expect("after");
        assert_eq!(upd["avatar"], new_avatar, "user {id}");
        assert_eq!(upd["profile_ver"], 2, "user {id}");
        assert_eq!(
            upd["nickname"],
            Value::String(UNAVAILABLE.to_owned()),
            "user {id}: an unchanged TOASTed value must be the placeholder, never null or data"
        );
    }
    cdc.finish().await;
}

/// A slot dropped behind the relay's back, after its snapshot completed, is not recreated: the
/// process exits non-zero and says how to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_slot_is_refused() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    cdc.start();
    cdc.wait_snapshot_done().await;

    // End the relay's walsender and drop the slot before the relay reconnects.
    drop_slot(&cdc.db.url, &cdc.slot)
        .await
        .expect("drop the slot behind the relay's back");
    let status = cdc.wait_exit(WAIT).await;
    let log = cdc.log();
    // main's report: `error: ...` and its `caused by: ...` lines.
    let error: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("error:") || l.trim_start().starts_with("caused by:"))
        .collect();
    assert!(
        !status.success(),
        "the relay must fail on a lost slot, exited {status}\n{}",
        cdc.log_tail()
    );
    assert!(
        error
            .iter()
            .any(|l| l.contains(&cdc.slot) && l.contains("hermet_cdc_state")),
        "the error names the slot and the recovery: {error:?}\n{}",
        cdc.log_tail()
    );

    // It stays refused on a fresh start, and no slot is made behind the operator's back.
    cdc.start();
    let status = cdc.wait_exit(WAIT).await;
    assert!(!status.success(), "a restart must refuse too");
    assert!(cdc.log().contains("hermet_cdc_state"), "{}", cdc.log_tail());
    assert_eq!(cdc.confirmed_lsn().await, None, "no slot was recreated");
    let slots: i64 = cdc
        .client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&cdc.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot was recreated");
    cdc.finish().await;
}

/// Topics made outside hermet with another partition count than `cdc.partitions` are refused
/// before anything streams: reads waiting with `X-Hermet-Min-Lsn` count `cdc.partitions` per
/// topic, so a mismatch would make them answer early or never. The error names the topic and
/// the setting; once the setting matches, the same topics are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_with_another_partition_count_are_refused() {
    let _serial = SERIAL.lock().await;
    let mut cdc = Cdc::new(500).await;
    let odd = cdc.topic("messages");
    hermet_kafka::ensure_topics(&brokers(), std::slice::from_ref(&odd), PARTITIONS + 2, 1)
        .await
        .expect("create a topic with another partition count");

    cdc.start();
    let status = cdc.wait_exit(WAIT).await;
    assert!(
        !status.success(),
        "the relay must refuse the topic, exited {status}\n{}",
        cdc.log_tail()
    );
    let log = cdc.log();
    let wanted = format!("topic {odd} has {}", PARTITIONS + 2);
    assert!(
        log.lines()
            .any(|l| l.contains(&wanted) && l.contains("HERMET_CDC__PARTITIONS")),
        "the error names the topic, its count and the setting\n{}",
        cdc.log_tail()
    );
    assert_eq!(cdc.confirmed_lsn().await, None, "nothing was streamed");
    cdc.finish().await;
}
