//! Debezium change events back into row changes.
//!
//! The projection reads keys (and, for channels, the versions in the before and after images)
//! from a change; everything else it recomputes from the write side. So columns the event could
//! not carry (Debezium's `__debezium_unavailable_value` for an unchanged TOASTed value) are
//! harmless: they arrive as that text and are never written anywhere.

use hermet_core::change::{Change, Op, RowChange};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// What a record of a data topic is.
// Decoded once per record and moved straight into a batch: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A row change, with its source position.
    Change {
        change: RowChange,
        lsn: u64,
        commit_ts_ms: i64,
        /// The 32-bit id of the transaction that made the change (`source.txId`); `None` for
        /// snapshot reads and sources that do not say. The projector waits until it is visible
        /// before looking anything up (`hermet_store::visibility`).
        xid: Option<u32>,
    },
    /// Nothing to apply (a delete's tombstone).
    Skip,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a Debezium envelope: {0}")]
    Envelope(String),
    #[error("table {0:?} is not a write-side table")]
    UnknownTable(String),
    #[error("{table} row: {error}")]
    Row { table: String, error: String },
}

#[derive(Deserialize)]
struct Envelope {
    before: Option<Value>,
    after: Option<Value>,
    op: String,
    source: Source,
}

#[derive(Deserialize)]
struct Source {
    table: String,
    #[serde(default)]
    lsn: Option<u64>,
    ts_ms: i64,
    #[serde(default, rename = "txId")]
    tx_id: Option<i64>,
}

/// The 32-bit xid of a `txId`: its low 32 bits (a source that sends the full 64-bit id carries
/// the epoch above them; the epoch is found again where the id is checked). Negative: none.
fn xid_of(tx_id: Option<i64>) -> Option<u32> {
    tx_id
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| (t & 0xffff_ffff) as u32)
}

/// Column defaults to complete key-only images (deletes under the default replica identity
/// carry only the key).
fn defaults(table: &str) -> Option<Value> {
    Some(match table {
        "users" => serde_json::json!({"id": 0, "nickname": "", "avatar": "", "profile_ver": 0,
            "created_at": 0, "updated_at": 0}),
        "channels" => {
            serde_json::json!({"id": 0, "channel_type": "group", "name": "", "avatar": "",
            "channel_status": "", "channel_info_ver": 0, "member_count": 0, "creator_id": 0,
            "last_seq": 0, "pair_low": null, "pair_high": null, "created_at": 0, "updated_at": 0})
        }
        "channel_members" => serde_json::json!({"channel_id": 0, "user_id": 0, "role": "member",
            "joined_at": 0, "left_at": null, "left_seq": null, "read_seq": 0, "pinned": false,
            "muted": false, "hidden_at_seq": null, "settings_ver": 0}),
        "friendships" => serde_json::json!({"user_id": 0, "friend_id": 0, "remark_name": "",
            "group_name": "", "starred": false, "status": "deleted", "ver": 0, "created_at": 0,
            "deleted_at": null}),
        "messages" => serde_json::json!({"id": 0, "channel_id": 0, "seq": 0, "sender_id": 0,
            "sender_name": "", "msg_type": "", "content": "", "created_at": 0}),
        _ => return None,
    })
}

fn row<T: DeserializeOwned>(table: &str, v: Option<Value>) -> Result<Option<T>, DecodeError> {
    let Some(Value::Object(given)) = v else {
        return Ok(None);
    };
    let mut full = defaults(table).ok_or_else(|| DecodeError::UnknownTable(table.to_owned()))?;
    if let Value::Object(f) = &mut full {
        for (k, v) in given {
            f.insert(k, v);
        }
    }
    serde_json::from_value(full)
        .map(Some)
        .map_err(|e| DecodeError::Row {
            table: table.to_owned(),
            error: e.to_string(),
        })
}

fn change<T: DeserializeOwned>(
    table: &str,
    op: Op,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<Change<T>, DecodeError> {
    Ok(Change {
        op,
        before: row(table, before)?,
        after: row(table, after)?,
    })
}

/// Decodes one record value (`None`: a tombstone).
pub fn decode(value: Option<&[u8]>) -> Result<Decoded, DecodeError> {
    let Some(bytes) = value else {
        return Ok(Decoded::Skip);
    };
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let op = match env.op.as_str() {
        "c" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        other => return Err(DecodeError::Envelope(format!("unknown op {other:?}"))),
    };
    let t = env.source.table.as_str();
    let (b, a) = (env.before, env.after);
    let change = match t {
        "users" => RowChange::Users(change(t, op, b, a)?),
        "channels" => RowChange::Channels(change(t, op, b, a)?),
        "channel_members" => RowChange::ChannelMembers(change(t, op, b, a)?),
        "friendships" => RowChange::Friendships(change(t, op, b, a)?),
        "messages" => RowChange::Messages(change(t, op, b, a)?),
        other => return Err(DecodeError::UnknownTable(other.to_owned())),
    };
    let xid = xid_of(env.source.tx_id);
    if xid.is_none() && op != Op::Read {
        no_txid(t);
    }
    Ok(Decoded::Change {
        change,
        lsn: env.source.lsn.unwrap_or(0),
        commit_ts_ms: env.source.ts_ms,
        xid,
    })
}

/// A streamed change that does not name its transaction cannot be held back until it is visible
/// (`crate::visibility`); hermet's relay always names it, so this is another producer. Counted
/// (`hermet_projector_changes_without_txid_total`) and said once per process.
fn no_txid(table: &str) {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    crate::telemetry::change_without_txid();
    if !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            table,
            "a change event carries no source.txId: it is applied without \
            waiting until its transaction is visible, so a look-up may miss it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every write-side table decodes, even from a key-only image (its defaults fill the rest).
    #[test]
    fn decodes_every_write_table() {
        for table in hermet_core::rows::WRITE_TABLES {
            let v = format!(
                r#"{{"before":{{}},"after":null,"source":{{"table":"{table}","lsn":5,"ts_ms":1}},"op":"d","ts_ms":2}}"#
            );
            match decode(Some(v.as_bytes())) {
                Ok(Decoded::Change { change, .. }) => assert_eq!(change.table(), table),
                other => panic!("{table}: {other:?}"),
            }
        }
    }

    #[test]
    fn decodes_an_update_with_a_placeholder() {
        let v = br#"{"before":null,"after":{"id":7,"nickname":"__debezium_unavailable_value","avatar":"a","profile_ver":3,"created_at":1,"updated_at":2},
            "source":{"version":"0.1.0","connector":"postgresql","name":"hermet","ts_ms":123,"db":"d","schema":"public","table":"users","txId":5,"lsn":99},
            "op":"u","ts_ms":124}"#;
        match decode(Some(v)).unwrap() {
            Decoded::Change {
                change: RowChange::Users(c),
                lsn,
                commit_ts_ms,
                xid,
            } => {
                assert_eq!(c.after.unwrap().profile_ver, 3);
                assert_eq!((lsn, commit_ts_ms, xid), (99, 123, Some(5)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_only_deletes_and_tombstones() {
        let v = br#"{"before":{"channel_id":1,"user_id":2},"after":null,"source":{"table":"channel_members","lsn":5,"ts_ms":1},"op":"d","ts_ms":2}"#;
        match decode(Some(v)).unwrap() {
            Decoded::Change {
                change: RowChange::ChannelMembers(c),
                xid,
                ..
            } => {
                let b = c.before.unwrap();
                assert_eq!((b.channel_id, b.user_id), (1, 2));
                assert_eq!(xid, None, "no txId: nothing to wait for");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(None).unwrap(), Decoded::Skip);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Some(b"{")).is_err());
        assert!(decode(Some(
            br#"{"before":null,"after":{},"source":{"table":"nope","ts_ms":1},"op":"c"}"#
        ))
        .is_err());
        assert!(decode(Some(
            br#"{"before":null,"after":{"id":"x"},"source":{"table":"users","ts_ms":1},"op":"c"}"#
        ))
        .is_err());
        assert!(decode(Some(
            br#"{"before":null,"after":null,"source":{"table":"users","ts_ms":1},"op":"z"}"#
        ))
        .is_err());
    }
}
