//! The inverse of [`super::decode`], for tests and fake replication streams: the relay itself
//! never encodes.

use super::{Column, LogicalMessage, TupleData};

/// Why [`encode`] cannot represent a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} contains a NUL byte")]
    NulInString { what: &'static str },
    #[error("{what} has {len} entries/bytes, more than the wire format can count")]
    TooLong { what: &'static str, len: usize },
}

/// Encodes a message as pgoutput v1 would send it: `decode(&encode(m)?) == Ok(m)`. For tests and
/// fake replication streams; the relay itself never encodes.
pub fn encode(msg: &LogicalMessage) -> Result<Vec<u8>, EncodeError> {
    let mut w = Vec::with_capacity(64);
    w.push(msg.tag());
    match msg {
        LogicalMessage::Begin(b) => {
            w.extend_from_slice(&b.final_lsn.0.to_be_bytes());
            w.extend_from_slice(&b.commit_ts.0.to_be_bytes());
            w.extend_from_slice(&b.xid.to_be_bytes());
        }
        LogicalMessage::Commit(c) => {
            w.push(c.flags);
            w.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
            w.extend_from_slice(&c.end_lsn.0.to_be_bytes());
            w.extend_from_slice(&c.commit_ts.0.to_be_bytes());
        }
        LogicalMessage::Origin(o) => {
            w.extend_from_slice(&o.commit_lsn.0.to_be_bytes());
            put_cstring(&mut w, &o.name, "Origin name")?;
        }
        LogicalMessage::Relation(r) => {
            w.extend_from_slice(&r.id.to_be_bytes());
            put_cstring(&mut w, &r.namespace, "Relation namespace")?;
            put_cstring(&mut w, &r.name, "Relation name")?;
            w.push(r.replica_identity.as_byte());
            put_count16(&mut w, r.columns.len(), "Relation columns")?;
            for c in &r.columns {
                w.push(c.flags);
                put_cstring(&mut w, &c.name, "Relation column name")?;
                w.extend_from_slice(&c.type_oid.to_be_bytes());
                w.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        LogicalMessage::Type(t) => {
            w.extend_from_slice(&t.id.to_be_bytes());
            put_cstring(&mut w, &t.namespace, "Type namespace")?;
            put_cstring(&mut w, &t.name, "Type name")?;
        }
        LogicalMessage::Insert(i) => {
            w.extend_from_slice(&i.relation_id.to_be_bytes());
            w.push(b'N');
            put_tuple(&mut w, &i.new)?;
        }
        LogicalMessage::Update(u) => {
            w.extend_from_slice(&u.relation_id.to_be_bytes());
            if let Some(old) = &u.old {
                w.push(old.kind.as_byte());
                put_tuple(&mut w, &old.tuple)?;
            }
            w.push(b'N');
            put_tuple(&mut w, &u.new)?;
        }
        LogicalMessage::Delete(d) => {
            w.extend_from_slice(&d.relation_id.to_be_bytes());
            w.push(d.old.kind.as_byte());
            put_tuple(&mut w, &d.old.tuple)?;
        }
        LogicalMessage::Truncate(t) => {
            put_count32(&mut w, t.relation_ids.len(), "Truncate relations")?;
            w.push(t.options);
            for id in &t.relation_ids {
                w.extend_from_slice(&id.to_be_bytes());
            }
        }
        LogicalMessage::Message(m) => {
            w.push(m.flags);
            w.extend_from_slice(&m.lsn.0.to_be_bytes());
            put_cstring(&mut w, &m.prefix, "Message prefix")?;
            put_count32(&mut w, m.content.len(), "Message content")?;
            w.extend_from_slice(&m.content);
        }
    }
    Ok(w)
}

fn put_cstring(w: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString { what });
    }
    w.extend_from_slice(s.as_bytes());
    w.push(0);
    Ok(())
}

fn put_count16(w: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = i16::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    w.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_count32(w: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = i32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    w.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_tuple(w: &mut Vec<u8>, t: &TupleData) -> Result<(), EncodeError> {
    put_count16(w, t.columns.len(), "TupleData columns")?;
    for c in &t.columns {
        match c {
            Column::Null => w.push(b'n'),
            Column::UnchangedToast => w.push(b'u'),
            Column::Text(b) | Column::Binary(b) => {
                w.push(if matches!(c, Column::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                put_count32(w, b.len(), "column value")?;
                w.extend_from_slice(b);
            }
        }
    }
    Ok(())
}
