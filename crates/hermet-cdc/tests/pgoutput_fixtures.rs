//! The decoder against real pgoutput v1 messages captured from PostgreSQL 15
//! (tests/fixtures/capture.sh has the workload these assertions follow).

mod common;

use bytes::Bytes;
use common::{load, Captured, BINARY, TAGS, TEXT};
use hermet_cdc::pgoutput::{
    decode, decode_bytes, encode, Column, LogicalMessage, OldTupleKind, PgTimestamp, RelationBody,
    RelationCache, ReplicaIdentity, TupleData,
};
use hermet_cdc::Lsn;

fn decoded(file: &str) -> Vec<(Captured, LogicalMessage)> {
    load(file)
        .into_iter()
        .map(|c| {
            let msg = decode(&c.bytes).unwrap_or_else(|e| panic!("{e} in {:?}", c.lsn));
            (c, msg)
        })
        .collect()
}

fn text(s: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn relation(msg: &LogicalMessage) -> &RelationBody {
    match msg {
        LogicalMessage::Relation(r) => r,
        other => panic!("not a Relation: {other:?}"),
    }
}

/// md5('1') || md5('2') || ... as the capture workload builds its TOASTed values.
const MD5_1: &str = "c4ca4238a0b923820dcc509a6f75849b";
const MD5_2: &str = "c81e728d9d4c2f636f067f89cc14862c";

#[test]
fn every_captured_message_decodes_and_reencodes_to_the_same_bytes() {
    for file in [TEXT, BINARY] {
        let msgs = decoded(file);
        let tags: String = msgs.iter().map(|(_, m)| char::from(m.tag())).collect();
        assert_eq!(tags, TAGS);
        for (c, m) in &msgs {
            assert_eq!(encode(m).unwrap(), c.bytes, "{:?}", c.lsn);
            assert_eq!(c.bytes.first().copied(), Some(m.tag()));
        }
    }
}

#[test]
fn begin_and_commit_frame_each_transaction() {
    let msgs = decoded(TEXT);
    let mut open: Option<(&Captured, &hermet_cdc::pgoutput::BeginBody)> = None;
    let mut transactions = 0;
    let mut last_end = Lsn(0);
    for (c, m) in &msgs {
        match m {
            LogicalMessage::Begin(b) => {
                assert!(open.is_none(), "nested Begin");
                assert_eq!(b.xid, c.xid);
                assert!(b.final_lsn > last_end);
                open = Some((c, b));
            }
            LogicalMessage::Commit(commit) => {
                let (bc, b) = open.take().expect("Commit without Begin");
                assert_eq!(commit.flags, 0);
                assert_eq!(commit.commit_lsn, b.final_lsn);
                assert_eq!(commit.commit_ts, b.commit_ts);
                assert!(commit.end_lsn > commit.commit_lsn);
                // The peek row of a Commit reports the end of the commit record.
                assert_eq!(commit.end_lsn, c.lsn);
                assert!(bc.lsn <= commit.commit_lsn);
                assert_eq!(bc.xid, c.xid);
                last_end = commit.end_lsn;
                transactions += 1;
                let ms = commit.commit_ts.unix_millis();
                // 2024-01-01 .. 2100-01-01
                assert!((1_704_067_200_000..4_102_444_800_000).contains(&ms), "{ms}");
            }
            _ => assert!(
                open.is_some() || matches!(m, LogicalMessage::Message(x) if !x.transactional()),
                "{m:?} outside a transaction"
            ),
        }
    }
    assert!(open.is_none());
    assert_eq!(transactions, 11);
}

#[test]
fn relation_messages_describe_the_tables() {
    let msgs = decoded(TEXT);
    let users = relation(&msgs[1].1);
    assert_eq!(
        (users.namespace.as_str(), users.name.as_str()),
        ("public", "users")
    );
    assert_eq!(users.replica_identity, ReplicaIdentity::Default);
    let cols: Vec<_> = users
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_modifier, c.is_key()))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", 20, -1, true),
            ("name", 25, -1, false),
            ("active", 16, -1, false),
            ("score", 23, -1, false),
            ("nickname", 25, -1, false),
            ("bio", 25, -1, false),
        ]
    );

    let LogicalMessage::Type(mood) = &msgs[12].1 else {
        panic!("not a Type")
    };
    assert_eq!(
        (mood.namespace.as_str(), mood.name.as_str()),
        ("public", "mood")
    );
    assert!(mood.id >= 16384, "a user type oid");

    let members = relation(&msgs[13].1);
    assert_eq!(members.name, "members");
    assert_eq!(members.replica_identity, ReplicaIdentity::Full);
    assert!(members.id != users.id);
    // REPLICA IDENTITY FULL: every column is flagged, not only the primary key.
    assert!(members.columns.iter().all(|c| c.is_key()));
    let types: Vec<_> = members
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_modifier))
        .collect();
    assert_eq!(
        types,
        [
            ("channel_id", 20, -1),
            ("user_id", 20, -1),
            ("role", 1043, 24),
            ("feeling", mood.id, -1),
            ("ratio", 1700, ((10 << 16) | 3) + 4),
            ("weight", 701, -1),
            ("joined_at", 1184, -1),
            ("meta", 3802, -1),
            ("avatar", 17, -1),
            ("tag", 2950, -1),
            ("note", 25, -1),
        ]
    );
    // Resent unchanged after the TRUNCATE invalidated the cache entries.
    assert_eq!(relation(&msgs[31].1), users);
    assert_eq!(relation(&msgs[33].1), members);
    assert_eq!(relation(&msgs[43].1), users);
}

#[test]
fn inserts_carry_text_values_and_the_whole_toasted_value() {
    let msgs = decoded(TEXT);
    let LogicalMessage::Insert(alice) = &msgs[2].1 else {
        panic!()
    };
    assert_eq!(alice.relation_id, relation(&msgs[1].1).id);
    let c = &alice.new.columns;
    assert_eq!(
        c[..5],
        [
            text("1"),
            text("alice"),
            text("t"),
            text("42"),
            Column::Null
        ]
    );
    let bio = c[5].text().expect("bio is sent in full on insert");
    assert_eq!(bio.len(), 100_000);
    assert!(bio.starts_with(&format!("{MD5_1}{MD5_2}")));

    let LogicalMessage::Insert(bob) = &msgs[3].1 else {
        panic!()
    };
    assert_eq!(
        bob.new.columns,
        [
            text("2"),
            text("bob"),
            text("f"),
            Column::Null,
            text("bobby"),
            text("short bio")
        ]
    );

    let LogicalMessage::Insert(member) = &msgs[14].1 else {
        panic!()
    };
    let c = &member.new.columns;
    let texts: Vec<_> = c[..10].iter().map(|v| v.text().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "10",
            "1",
            "owner",
            "happy",
            "3.140",
            "2.5",
            "2024-05-06 07:08:09.123456+00",
            r#"{"a": [1, 2], "b": "x"}"#,
            r"\xdeadbeef",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ]
    );
    assert_eq!(c[10].text().unwrap().len(), 128 * 32);
}

#[test]
fn an_update_leaving_a_toasted_value_unchanged_marks_it_explicitly() {
    let msgs = decoded(TEXT);
    let LogicalMessage::Update(u) = &msgs[6].1 else {
        panic!()
    };
    assert!(
        u.old.is_none(),
        "DEFAULT identity, key unchanged: no old tuple"
    );
    assert_eq!(
        u.new.columns,
        [
            text("1"),
            text("alice"),
            text("t"),
            text("43"),
            text("ally"),
            Column::UnchangedToast
        ]
    );
    assert!(!u.new.columns[5].is_null());
}

#[test]
fn old_tuples_key_and_full() {
    let msgs = decoded(TEXT);
    // DEFAULT identity, key changed: 'K' with the key and nulls for the rest.
    let LogicalMessage::Update(u) = &msgs[9].1 else {
        panic!()
    };
    let old = u.old.as_ref().expect("old key");
    assert_eq!(old.kind, OldTupleKind::Key);
    let mut expected = vec![text("2")];
    expected.extend(vec![Column::Null; 5]);
    assert_eq!(old.tuple.columns, expected);
    assert_eq!(u.new.columns[..3], [text("3"), text("bob"), text("f")]);

    // FULL identity: 'O' with every column, the TOASTed note inline; the new tuple has 'u'.
    let LogicalMessage::Update(u) = &msgs[17].1 else {
        panic!()
    };
    let old = u.old.as_ref().expect("old row");
    assert_eq!(old.kind, OldTupleKind::Full);
    assert_eq!(old.tuple.columns[2..4], [text("owner"), text("happy")]);
    assert_eq!(old.tuple.columns[10].text().unwrap().len(), 4096);
    assert_eq!(u.new.columns[2..4], [text("member"), Column::Null]);
    assert_eq!(u.new.columns[10], Column::UnchangedToast);

    // FULL identity key update.
    let LogicalMessage::Update(u) = &msgs[20].1 else {
        panic!()
    };
    let old = u.old.as_ref().unwrap();
    assert_eq!(old.kind, OldTupleKind::Full);
    assert_eq!(old.tuple.columns[..2], [text("10"), text("1")]);
    assert_eq!(u.new.columns[..2], [text("10"), text("3")]);

    // Deletes: 'K' then 'O'.
    let LogicalMessage::Delete(d) = &msgs[23].1 else {
        panic!()
    };
    assert_eq!(d.old.kind, OldTupleKind::Key);
    assert_eq!(d.old.tuple.columns[0], text("3"));
    assert!(d.old.tuple.columns[1..].iter().all(Column::is_null));
    let LogicalMessage::Delete(d) = &msgs[24].1 else {
        panic!()
    };
    assert_eq!(d.old.kind, OldTupleKind::Full);
    assert_eq!(
        d.old.tuple.columns[..3],
        [text("10"), text("3"), text("member")]
    );
    assert_eq!(d.old.tuple.columns[10].text().unwrap().len(), 4096);
}

#[test]
fn logical_decoding_messages() {
    let msgs = decoded(TEXT);
    let (c, LogicalMessage::Message(m)) = &msgs[27] else {
        panic!()
    };
    assert!(m.transactional());
    assert_eq!(m.prefix, "hermet");
    assert_eq!(&m.content[..], b"hello");
    assert_eq!(m.lsn, c.lsn);

    let (c, LogicalMessage::Message(m)) = &msgs[29] else {
        panic!()
    };
    assert!(!m.transactional());
    assert_eq!(c.xid, 0, "non-transactional: no transaction");
    assert_eq!(
        (m.prefix.as_str(), &m.content[..]),
        ("hermet", &b"hello"[..])
    );
    assert_eq!(m.lsn, c.lsn);
}

#[test]
fn truncates_list_relations_and_options() {
    let msgs = decoded(TEXT);
    let users = relation(&msgs[31].1).id;
    let members = relation(&msgs[33].1).id;
    let LogicalMessage::Truncate(t) = &msgs[34].1 else {
        panic!()
    };
    assert!(t.cascade() && t.restart_identity());
    assert_eq!(t.options, 3);
    assert_eq!(t.relation_ids, [users, members]);
    let LogicalMessage::Truncate(t) = &msgs[39].1 else {
        panic!()
    };
    assert!(!t.cascade() && !t.restart_identity());
    assert_eq!(t.relation_ids, [members]);
}

#[test]
fn origin_message_and_origin_commit_time() {
    let msgs = decoded(TEXT);
    let LogicalMessage::Begin(b) = &msgs[41].1 else {
        panic!()
    };
    // pg_replication_origin_xact_setup's timestamp becomes the transaction's commit time.
    assert_eq!(b.commit_ts.unix_millis(), 1_704_164_645_000); // 2024-01-02 03:04:05 UTC
    assert_eq!(
        b.commit_ts,
        PgTimestamp::from_unix_micros(1_704_164_645_000_000)
    );
    let LogicalMessage::Origin(o) = &msgs[42].1 else {
        panic!()
    };
    assert_eq!(o.name, "hermet_capture_origin");
    assert_eq!(o.commit_lsn, "0/12345678".parse().unwrap());
    let LogicalMessage::Insert(i) = &msgs[44].1 else {
        panic!()
    };
    assert_eq!(i.new.columns[..2], [text("4"), text("dave")]);
}

#[test]
fn binary_option_gives_binary_columns() {
    let msgs = decoded(BINARY);
    let LogicalMessage::Insert(bob) = &msgs[3].1 else {
        panic!()
    };
    let bin = |b: &[u8]| Column::Binary(Bytes::copy_from_slice(b));
    assert_eq!(
        bob.new.columns,
        [
            bin(&2i64.to_be_bytes()),
            bin(b"bob"),
            bin(&[0]),
            Column::Null,
            bin(b"bobby"),
            bin(b"short bio"),
        ]
    );
    let LogicalMessage::Update(u) = &msgs[6].1 else {
        panic!()
    };
    assert_eq!(u.new.columns[5], Column::UnchangedToast);
    assert_eq!(u.new.columns[3], bin(&43i32.to_be_bytes()));
}

#[test]
fn relation_cache_resolves_every_row_message() {
    let mut cache = RelationCache::new();
    let mut rows = 0;
    for (_, m) in decoded(TEXT) {
        cache.observe(&m);
        let tuples: Vec<&TupleData> = match &m {
            LogicalMessage::Insert(i) => vec![&i.new],
            LogicalMessage::Update(u) => u.old.iter().map(|o| &o.tuple).chain([&u.new]).collect(),
            LogicalMessage::Delete(d) => vec![&d.old.tuple],
            _ => continue,
        };
        for t in tuples {
            cache.resolve_for(m.relation_id().unwrap(), t).unwrap();
            rows += 1;
        }
    }
    // 4 inserts, 4 updates (3 with an old tuple), 2 deletes.
    assert_eq!(rows, 13);
    assert_eq!(cache.len(), 2);
    let members = decoded(TEXT)
        .iter()
        .find_map(|(_, m)| match m {
            LogicalMessage::Relation(r) if r.name == "members" => Some(r.id),
            _ => None,
        })
        .unwrap();
    let feeling = cache.resolve(members).unwrap().columns[3].type_oid;
    assert_eq!(cache.type_info(feeling).unwrap().name, "mood");
}

#[test]
fn decode_bytes_does_not_copy_values() {
    let captured = load(TEXT);
    let buf = Bytes::from(captured[2].bytes.clone());
    let range = buf.as_ptr_range();
    let LogicalMessage::Insert(i) = decode_bytes(buf.clone()).unwrap() else {
        panic!()
    };
    let bio = i.new.columns[5].bytes().unwrap();
    assert!(
        range.contains(&bio.as_ptr()),
        "the value is a slice of the input"
    );
}
