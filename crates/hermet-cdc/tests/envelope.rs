//! Change events from the captured real messages: exact JSON, and a consumer that knows only
//! Debezium's documented event format.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use hermet_cdc::envelope::{
    change_records, EnvelopeOptions, EventContext, JsonColumns, Record, SnapshotMarker, SourceInfo,
    Table, TopicRouter, TransactionTracker, TupleChange, HERMET_VERSION, NEW_KEY_HEADER,
    OLD_KEY_HEADER, UNAVAILABLE_VALUE,
};
use hermet_cdc::pgoutput::{
    decode, Column, LogicalMessage, RelColumn, RelationBody, ReplicaIdentity, TupleData,
};
use hermet_cdc::Lsn;
use hermet_core::rows::UserRow;
use serde::Deserialize;
use serde_json::{json, Value};

fn messages() -> Vec<LogicalMessage> {
    common::load(common::TEXT)
        .iter()
        .map(|c| decode(&c.bytes).unwrap())
        .collect()
}

fn table(msgs: &[LogicalMessage], index: usize) -> Arc<RelationBody> {
    match &msgs[index] {
        LogicalMessage::Relation(r) => Arc::new(r.clone()),
        other => panic!("not a Relation: {other:?}"),
    }
}

fn source() -> SourceInfo<'static> {
    SourceInfo {
        name: "hermet",
        db: "hermet_capture",
        ts_ms: 1_700_000_000_123,
        tx_id: Some(771),
        lsn: Some(Lsn(0x4676_FDE0)),
        last_commit_lsn: Some(Lsn(0x4676_F000)),
        snapshot: SnapshotMarker::False,
    }
}

const NOW: i64 = 1_700_000_000_456;

fn records(table: &Table, msg: &LogicalMessage, options: &EnvelopeOptions) -> Vec<Record> {
    let (_, change) = TupleChange::from_message(msg).expect("a row message");
    let ctx = EventContext {
        source: source(),
        now_ms: NOW,
        options,
    };
    change_records(table, &change, &ctx, None).unwrap()
}

fn s(bytes: &Option<Vec<u8>>) -> &str {
    std::str::from_utf8(bytes.as_deref().expect("not null")).unwrap()
}

/// The source block these tests use, for `schema.table`.
fn source_json(table: &str) -> String {
    format!(
        r#"{{"version":"{HERMET_VERSION}","connector":"postgresql","name":"hermet","ts_ms":1700000000123,"snapshot":"false","db":"hermet_capture","sequence":"[\"1182199808\",\"1182203360\"]","schema":"public","table":"{table}","txId":771,"lsn":1182203360,"xmin":null}}"#
    )
}

#[test]
fn insert_event_is_exact() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let recs = records(&users, &msgs[3], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 1);
    assert_eq!(s(&recs[0].key), r#"{"id":2}"#);
    assert_eq!(
        s(&recs[0].value),
        format!(
            r#"{{"before":null,"after":{{"id":2,"name":"bob","active":false,"score":null,"nickname":"bobby","bio":"short bio"}},"source":{},"op":"c","ts_ms":1700000000456,"transaction":null}}"#,
            source_json("users")
        )
    );
    assert!(recs[0].headers.is_empty());
}

#[test]
fn unchanged_toast_update_is_exact_and_never_null() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let recs = records(&users, &msgs[6], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 1);
    assert_eq!(s(&recs[0].key), r#"{"id":1}"#);
    assert_eq!(
        s(&recs[0].value),
        format!(
            r#"{{"before":null,"after":{{"id":1,"name":"alice","active":true,"score":43,"nickname":"ally","bio":"__debezium_unavailable_value"}},"source":{},"op":"u","ts_ms":1700000000456,"transaction":null}}"#,
            source_json("users")
        )
    );
}

#[test]
fn delete_event_and_tombstone_are_exact() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let recs = records(&users, &msgs[23], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 2);
    assert_eq!(s(&recs[0].key), r#"{"id":3}"#);
    // REPLICA IDENTITY DEFAULT: `before` has the key only, not nulls for columns never sent.
    assert_eq!(
        s(&recs[0].value),
        format!(
            r#"{{"before":{{"id":3}},"after":null,"source":{},"op":"d","ts_ms":1700000000456,"transaction":null}}"#,
            source_json("users")
        )
    );
    assert_eq!(
        recs[1],
        Record {
            key: Some(br#"{"id":3}"#.to_vec()),
            value: None,
            headers: vec![]
        }
    );
    let no_tombstones = EnvelopeOptions {
        tombstones_on_delete: false,
        ..Default::default()
    };
    assert_eq!(records(&users, &msgs[23], &no_tombstones).len(), 1);
}

#[test]
fn primary_key_change_is_delete_tombstone_create() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let recs = records(&users, &msgs[9], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 3);
    let src = source_json("users");
    assert_eq!(s(&recs[0].key), r#"{"id":2}"#);
    assert_eq!(
        s(&recs[0].value),
        format!(
            r#"{{"before":{{"id":2}},"after":null,"source":{src},"op":"d","ts_ms":1700000000456,"transaction":null}}"#
        )
    );
    assert_eq!(recs[0].headers, [(NEW_KEY_HEADER, br#"{"id":3}"#.to_vec())]);
    assert_eq!((s(&recs[1].key), &recs[1].value), (r#"{"id":2}"#, &None));
    assert_eq!(s(&recs[2].key), r#"{"id":3}"#);
    assert_eq!(
        s(&recs[2].value),
        format!(
            r#"{{"before":null,"after":{{"id":3,"name":"bob","active":false,"score":null,"nickname":"bobby","bio":"short bio"}},"source":{src},"op":"c","ts_ms":1700000000456,"transaction":null}}"#
        )
    );
    assert_eq!(recs[2].headers, [(OLD_KEY_HEADER, br#"{"id":2}"#.to_vec())]);
}

fn value(rec: &Record) -> Value {
    serde_json::from_slice(rec.value.as_deref().unwrap()).unwrap()
}

#[test]
#[allow(clippy::approx_constant)] // 3.14 is the workload's numeric, not pi
fn full_identity_table_types_and_toast_from_the_old_row() {
    let msgs = messages();
    let rel = table(&msgs, 13);
    let members = Table::with_key_columns(rel.clone(), &["channel_id", "user_id"]).unwrap();
    // pgoutput flags every column of a FULL table, so the default key would be the whole row.
    assert_eq!(Table::new(rel).key_indexes().len(), 11);

    let recs = records(&members, &msgs[14], &EnvelopeOptions::default());
    assert_eq!(s(&recs[0].key), r#"{"channel_id":10,"user_id":1}"#);
    let v = value(&recs[0]);
    let mut after = v["after"].clone();
    let note = after["note"].take();
    assert_eq!(note.as_str().unwrap().len(), 4096);
    assert_eq!(
        after,
        json!({
            "channel_id": 10, "user_id": 1, "role": "owner", "feeling": "happy", "ratio": 3.14,
            "weight": 2.5, "joined_at": "2024-05-06 07:08:09.123456+00",
            "meta": "{\"a\": [1, 2], \"b\": \"x\"}", "avatar": "3q2+7w==",
            "tag": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "note": null
        })
    );

    // Update under FULL: the new tuple says 'u' for note, the old row has it: no placeholder.
    let recs = records(&members, &msgs[17], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 1);
    let v = value(&recs[0]);
    assert_eq!(v["op"], "u");
    assert_eq!(v["before"]["role"], "owner");
    assert_eq!(v["after"]["role"], "member");
    assert_eq!(v["after"]["feeling"], Value::Null);
    assert_eq!(v["after"]["note"], note);
    assert_eq!(v["before"]["note"], note);

    // Key change under FULL: delete of the old key with the full old row, then a create.
    let recs = records(&members, &msgs[20], &EnvelopeOptions::default());
    assert_eq!(recs.len(), 3);
    assert_eq!(s(&recs[0].key), r#"{"channel_id":10,"user_id":1}"#);
    assert_eq!(value(&recs[0])["before"]["note"], note);
    assert_eq!(recs[1].value, None);
    assert_eq!(s(&recs[2].key), r#"{"channel_id":10,"user_id":3}"#);
    assert_eq!(value(&recs[2])["after"]["role"], "member");

    // JSON columns as Debezium writes them: strings.
    let debezium_json = EnvelopeOptions {
        json_columns: JsonColumns::String,
        ..Default::default()
    };
    let recs = records(&members, &msgs[14], &debezium_json);
    assert_eq!(
        value(&recs[0])["after"]["meta"],
        r#"{"a": [1, 2], "b": "x"}"#
    );
}

#[test]
fn transaction_metadata_events() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let LogicalMessage::Begin(begin) = &msgs[0] else {
        panic!()
    };
    let mut tx = TransactionTracker::begin(771, Lsn(1_181_154_936), 1_700_000_000_123);
    assert_eq!(tx.id(), "771:1181154936");
    let ctx = EventContext {
        source: source(),
        now_ms: NOW,
        options: &EnvelopeOptions::default(),
    };
    let begin_rec = tx.begin_record().unwrap();
    assert_eq!(s(&begin_rec.key), r#"{"id":"771:1181154936"}"#);
    assert_eq!(
        s(&begin_rec.value),
        r#"{"status":"BEGIN","id":"771:1181154936","event_count":null,"data_collections":null,"ts_ms":1700000000123}"#
    );
    let mut blocks = vec![];
    for msg in &msgs[2..4] {
        let (_, change) = TupleChange::from_message(msg).unwrap();
        let recs = change_records(&users, &change, &ctx, Some(&mut tx)).unwrap();
        blocks.push(value(&recs[0])["transaction"].clone());
    }
    assert_eq!(
        blocks,
        [
            json!({"id": "771:1181154936", "total_order": 1, "data_collection_order": 1}),
            json!({"id": "771:1181154936", "total_order": 2, "data_collection_order": 2}),
        ]
    );
    tx.next_block("public.members");
    assert_eq!(
        s(&tx.end_record().unwrap().value),
        r#"{"status":"END","id":"771:1181154936","event_count":3,"data_collections":[{"data_collection":"public.users","event_count":2},{"data_collection":"public.members","event_count":1}],"ts_ms":1700000000123}"#
    );
    // In the relay the tracker comes from the Begin message.
    let real = TransactionTracker::begin(begin.xid, begin.final_lsn, begin.commit_ts.unix_millis());
    assert_eq!(real.id(), format!("{}:{}", begin.xid, begin.final_lsn.0));
}

#[test]
fn topics_follow_the_original_regex_router() {
    let msgs = messages();
    let users = Table::new(table(&msgs, 1));
    let router = TopicRouter::hermet_default();
    assert_eq!(
        router.debezium_topic(users.schema(), users.name()),
        "hermet.public.users"
    );
    // RegexRouter `hermet\.public\.(.*)` -> `$1.changed`.
    assert_eq!(router.topic(users.schema(), users.name()), "users.changed");
    for t in ["channels", "channel_members", "friendships", "messages"] {
        assert_eq!(router.topic("public", t), format!("{t}.changed"));
    }
}

// ---------------------------------------------------------------------------------------------
// A consumer that knows only Debezium's documented format (PostgreSQL connector, JSON converter,
// schemas disabled): https://debezium.io/documentation/reference/stable/connectors/postgresql.html
// "Data change events". Unknown fields are rejected, so we emit nothing Debezium does not.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebeziumEvent<T> {
    before: Option<T>,
    after: Option<T>,
    source: DebeziumSource,
    op: String,
    ts_ms: i64,
    #[serde(default)]
    transaction: Option<DebeziumTransaction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case, dead_code)]
struct DebeziumSource {
    version: String,
    connector: String,
    name: String,
    ts_ms: i64,
    snapshot: Option<String>,
    db: String,
    sequence: Option<String>,
    schema: String,
    table: String,
    txId: Option<i64>,
    lsn: Option<i64>,
    xmin: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct DebeziumTransaction {
    id: String,
    total_order: i64,
    data_collection_order: i64,
}

#[derive(Debug, Deserialize, PartialEq)]
struct UserKey {
    id: i64,
}

/// hermet's write-side `users` table as pgoutput describes it.
fn hermet_users() -> Table {
    let col = |name: &str, type_oid, key| RelColumn {
        flags: u8::from(key),
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Table::new(Arc::new(RelationBody {
        id: 16_390,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", 20, true),
            col("nickname", 25, false),
            col("avatar", 25, false),
            col("profile_ver", 20, false),
            col("created_at", 20, false),
            col("updated_at", 20, false),
        ],
    }))
}

fn t(s: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// What a consumer does with an update: the placeholder means "keep what you have".
fn merge(current: &UserRow, after: UserRow) -> UserRow {
    UserRow {
        avatar: if after.avatar == UNAVAILABLE_VALUE {
            current.avatar.clone()
        } else {
            after.avatar
        },
        nickname: if after.nickname == UNAVAILABLE_VALUE {
            current.nickname.clone()
        } else {
            after.nickname
        },
        ..after
    }
}

#[test]
fn a_debezium_consumer_reads_our_events() {
    let users = hermet_users();
    let options = EnvelopeOptions::default();
    let ctx = |snapshot| EventContext {
        source: SourceInfo {
            snapshot,
            ..source()
        },
        now_ms: NOW,
        options: &options,
    };
    let created = TupleData::new(vec![
        t("5"),
        t("ann"),
        t(&"a".repeat(3000)),
        t("1"),
        t("1700000000000"),
        t("1700000000000"),
    ]);
    let updated = TupleData::new(vec![
        t("5"),
        t("annie"),
        Column::UnchangedToast,
        t("2"),
        t("1700000000000"),
        t("1700000000999"),
    ]);

    let mut tx = TransactionTracker::begin(771, Lsn(99), 1);
    let mut events = vec![];
    for (change, snapshot) in [
        (TupleChange::Read { row: &created }, SnapshotMarker::Last),
        (TupleChange::Insert { new: &created }, SnapshotMarker::False),
        (
            TupleChange::Update {
                old: None,
                new: &updated,
            },
            SnapshotMarker::False,
        ),
    ] {
        let recs = change_records(&users, &change, &ctx(snapshot), Some(&mut tx)).unwrap();
        assert_eq!(recs.len(), 1);
        let key: UserKey = serde_json::from_slice(recs[0].key.as_deref().unwrap()).unwrap();
        assert_eq!(key, UserKey { id: 5 });
        let event: DebeziumEvent<UserRow> =
            serde_json::from_slice(recs[0].value.as_deref().unwrap()).unwrap();
        events.push(event);
    }
    for e in &events {
        assert_eq!(e.source.connector, "postgresql");
        assert_eq!(
            (e.source.schema.as_str(), e.source.table.as_str()),
            ("public", "users")
        );
        assert_eq!(e.source.lsn, Some(0x4676_FDE0));
        assert_eq!(e.ts_ms, NOW);
        assert!(e.transaction.is_some());
    }
    let ops: Vec<_> = events.iter().map(|e| e.op.as_str()).collect();
    assert_eq!(ops, ["r", "c", "u"]);
    assert_eq!(events[0].source.snapshot.as_deref(), Some("last"));
    assert_eq!(events[1].source.snapshot.as_deref(), Some("false"));

    let row = events[1].after.clone().unwrap();
    assert_eq!(
        row,
        UserRow {
            id: 5,
            nickname: "ann".into(),
            avatar: "a".repeat(3000),
            profile_ver: 1,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_000,
        }
    );
    assert!(events[2].before.is_none());
    let after = events[2].after.clone().unwrap();
    assert_eq!(after.avatar, UNAVAILABLE_VALUE);
    let merged = merge(&row, after);
    assert_eq!(
        merged.avatar,
        "a".repeat(3000),
        "the unchanged value is kept"
    );
    assert_eq!((merged.nickname.as_str(), merged.profile_ver), ("annie", 2));

    // A delete: the consumer reads the key and sees `before` with the key, `after` null.
    let old = hermet_cdc::pgoutput::OldTuple {
        kind: hermet_cdc::pgoutput::OldTupleKind::Key,
        tuple: TupleData::new(vec![
            t("5"),
            Column::Null,
            Column::Null,
            Column::Null,
            Column::Null,
            Column::Null,
        ]),
    };
    let recs = change_records(
        &users,
        &TupleChange::Delete { old: &old },
        &ctx(SnapshotMarker::False),
        None,
    )
    .unwrap();
    let event: DebeziumEvent<UserKey> =
        serde_json::from_slice(recs[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(
        (event.op.as_str(), event.before, event.after),
        ("d", Some(UserKey { id: 5 }), None)
    );
    assert!(event.transaction.is_none());
    assert_eq!(recs[1].value, None, "tombstone");
}
