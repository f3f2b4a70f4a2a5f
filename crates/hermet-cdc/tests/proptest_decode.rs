//! Property tests: the decoder never panics (random bytes, mutated and truncated real messages),
//! decoding is the exact inverse of the test encoder, and building events never panics.

mod common;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hermet_cdc::envelope::{
    change_records, oid, EnvelopeOptions, EventContext, SnapshotMarker, SourceInfo, Table,
    TransactionTracker, TupleChange,
};
use hermet_cdc::pgoutput::{
    decode, encode, BeginBody, Column, CommitBody, DeleteBody, InsertBody, LogicalMessage,
    MessageBody, OldTuple, OldTupleKind, OriginBody, PgTimestamp, RelColumn, RelationBody,
    ReplicaIdentity, TruncateBody, TupleData, TypeBody, UpdateBody,
};
use hermet_cdc::Lsn;
use proptest::prelude::*;

fn fixtures() -> &'static [Vec<u8>] {
    static F: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        common::load(common::TEXT)
            .into_iter()
            .chain(common::load(common::BINARY))
            .map(|c| c.bytes)
            .collect()
    })
}

/// Decoding any input returns; when it succeeds, the message re-encodes to exactly the input.
fn check(input: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = decode(input) {
        let again = encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.as_slice(), input);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Remove { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let n = buf.len().max(1);
    match *m {
        Mutation::Flip { at, bits } => {
            if let Some(b) = buf.get_mut(at % n) {
                *b ^= bits;
            }
        }
        Mutation::Set { at, byte } => {
            if let Some(b) = buf.get_mut(at % n) {
                *b = byte;
            }
        }
        Mutation::Insert { at, byte } => buf.insert(at % (buf.len() + 1), byte),
        Mutation::Remove { at } => {
            if !buf.is_empty() {
                buf.remove(at % n);
            }
        }
        Mutation::Truncate { at } => buf.truncate(at % n),
    }
}

// Small fields keep generated messages readable when a case fails.
fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,8}"
}

fn value_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn column() -> impl Strategy<Value = Column> {
    prop_oneof![
        Just(Column::Null),
        Just(Column::UnchangedToast),
        value_bytes().prop_map(Column::Text),
        value_bytes().prop_map(Column::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(column(), 0..6).prop_map(TupleData::new)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    (
        prop_oneof![Just(OldTupleKind::Key), Just(OldTupleKind::Full)],
        tuple(),
    )
        .prop_map(|(kind, tuple)| OldTuple { kind, tuple })
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn message() -> impl Strategy<Value = LogicalMessage> {
    let rel_column = (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    );
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, ts, xid)| {
            LogicalMessage::Begin(BeginBody {
                final_lsn,
                commit_ts: PgTimestamp(ts),
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(|(flags, commit_lsn, end_lsn, ts)| {
            LogicalMessage::Commit(CommitBody {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts: PgTimestamp(ts),
            })
        }),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(OriginBody { commit_lsn, name })),
        (
            any::<u32>(),
            name(),
            name(),
            identity,
            proptest::collection::vec(rel_column, 0..5)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(RelationBody {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| LogicalMessage::Type(
            TypeBody {
                id,
                namespace,
                name
            }
        )),
        (any::<u32>(), tuple())
            .prop_map(|(relation_id, new)| LogicalMessage::Insert(InsertBody { relation_id, new })),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(
            |(relation_id, old, new)| LogicalMessage::Update(UpdateBody {
                relation_id,
                old,
                new
            })
        ),
        (any::<u32>(), old_tuple())
            .prop_map(|(relation_id, old)| LogicalMessage::Delete(DeleteBody { relation_id, old })),
        (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
            |(options, relation_ids)| LogicalMessage::Truncate(TruncateBody {
                options,
                relation_ids
            })
        ),
        (any::<u8>(), lsn(), name(), value_bytes()).prop_map(|(flags, lsn, prefix, content)| {
            LogicalMessage::Message(MessageBody {
                flags,
                lsn,
                prefix,
                content,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn random_bodies_behind_valid_tags_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTMKNSEcAbPrpk".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        check(&bytes)?;
    }

    #[test]
    fn encode_then_decode_is_identity(msg in message()) {
        let bytes = encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode(&bytes), Ok(msg));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn mutated_real_messages_never_panic(
        index in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = index.get(fixtures()).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(&bytes)?;
    }

    #[test]
    fn every_truncation_of_a_real_message_is_an_error(
        index in any::<proptest::sample::Index>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let full = index.get(fixtures());
        let len = cut.index(full.len());
        prop_assert!(decode(&full[..len]).is_err());
    }
}

fn type_oid() -> impl Strategy<Value = u32> {
    prop_oneof![
        proptest::sample::select(vec![
            oid::BOOL,
            oid::BYTEA,
            oid::CHAR,
            oid::NAME,
            oid::INT8,
            oid::INT2,
            oid::INT4,
            oid::TEXT,
            oid::OID,
            oid::JSON,
            oid::FLOAT4,
            oid::FLOAT8,
            oid::BPCHAR,
            oid::VARCHAR,
            oid::DATE,
            oid::TIMESTAMPTZ,
            oid::NUMERIC,
            oid::UUID,
            oid::JSONB,
        ]),
        any::<u32>(),
    ]
}

/// Text that is sometimes a valid value of some type.
fn fuzzy_text() -> impl Strategy<Value = Column> {
    prop_oneof![
        "-?[0-9]{0,25}(\\.[0-9]{0,20})?",
        "[tf]|NaN|-?Infinity|\\\\x[0-9a-fA-F]{0,8}|(\\\\[0-9]{0,3}|a|\\\\\\\\){0,4}",
        "\\{\"a\": ?[0-9]{0,3}\\}?",
        ".{0,12}",
    ]
    .prop_map(|s: String| Column::Text(Bytes::from(s)))
}

fn event_column() -> impl Strategy<Value = Column> {
    prop_oneof![column(), fuzzy_text()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn building_events_never_panics(
        types in proptest::collection::vec((type_oid(), any::<bool>()), 1..5),
        a in proptest::collection::vec(event_column(), 1..5),
        b in proptest::collection::vec(event_column(), 1..5),
        kind in 0..4u8,
        full in any::<bool>(),
    ) {
        let columns = types
            .iter()
            .enumerate()
            .map(|(i, &(type_oid, key))| RelColumn {
                flags: u8::from(key),
                name: format!("c{i}"),
                type_oid,
                type_modifier: -1,
            })
            .collect();
        let table = Table::new(Arc::new(RelationBody {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        }));
        let (a, b) = (TupleData::new(a), TupleData::new(b));
        let old = OldTuple {
            kind: if full { OldTupleKind::Full } else { OldTupleKind::Key },
            tuple: b.clone(),
        };
        let change = match kind {
            0 => TupleChange::Insert { new: &a },
            1 => TupleChange::Update { old: Some(&old), new: &a },
            2 => TupleChange::Delete { old: &old },
            _ => TupleChange::Read { row: &a },
        };
        let options = EnvelopeOptions::default();
        let ctx = EventContext {
            source: SourceInfo {
                name: "hermet",
                db: "db",
                ts_ms: 1,
                tx_id: Some(1),
                lsn: Some(Lsn(1)),
                last_commit_lsn: None,
                snapshot: SnapshotMarker::False,
            },
            now_ms: 2,
            options: &options,
        };
        let mut tx = TransactionTracker::begin(1, Lsn(1), 1);
        if let Ok(records) = change_records(&table, &change, &ctx, Some(&mut tx)) {
            prop_assert!(!records.is_empty());
            for r in records {
                if let Some(v) = r.value {
                    // Every value is valid JSON.
                    serde_json::from_slice::<serde_json::Value>(&v)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
    }
}
