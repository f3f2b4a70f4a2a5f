//! The relations and types announced in a replication session, which row messages refer to by id.

use std::collections::HashMap;
use std::sync::Arc;

use super::{LogicalMessage, Oid, RelationBody, TupleData, TypeBody};

/// A row message refers to a relation the cache has not seen (the relay missed its `Relation`
/// message), or carries a different number of columns than the relation has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error("relation {0} is unknown: no Relation message was received for it in this session")]
    Unknown(Oid),
    #[error("relation {relation} has {expected} columns but the tuple has {found}")]
    ColumnCount {
        relation: String,
        expected: usize,
        found: usize,
    },
}

/// The relations (and custom types) announced in the current replication session, by id.
///
/// Feed it every message with [`RelationCache::observe`]; a later `Relation` for the same id
/// replaces the earlier one (the table changed). Entries are `Arc`s so events being built keep
/// the schema they were decoded with even if the cache moves on.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<Oid, Arc<RelationBody>>,
    types: HashMap<Oid, TypeBody>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `Relation` and `Type` messages; ignores the others.
    pub fn observe(&mut self, msg: &LogicalMessage) {
        match msg {
            LogicalMessage::Relation(r) => {
                self.insert(r.clone());
            }
            LogicalMessage::Type(t) => {
                self.types.insert(t.id, t.clone());
            }
            _ => {}
        }
    }

    pub fn insert(&mut self, relation: RelationBody) -> Arc<RelationBody> {
        let rel = Arc::new(relation);
        self.relations.insert(rel.id, Arc::clone(&rel));
        rel
    }

    pub fn get(&self, id: Oid) -> Option<&Arc<RelationBody>> {
        self.relations.get(&id)
    }

    pub fn resolve(&self, id: Oid) -> Result<&Arc<RelationBody>, RelationError> {
        self.relations.get(&id).ok_or(RelationError::Unknown(id))
    }

    /// Resolves `id` and checks that `tuple` has one column per relation column.
    pub fn resolve_for(
        &self,
        id: Oid,
        tuple: &TupleData,
    ) -> Result<&Arc<RelationBody>, RelationError> {
        let rel = self.resolve(id)?;
        if rel.columns.len() != tuple.len() {
            return Err(RelationError::ColumnCount {
                relation: format!("{}.{}", rel.namespace, rel.name),
                expected: rel.columns.len(),
                found: tuple.len(),
            });
        }
        Ok(rel)
    }

    /// A custom type announced by a `Type` message.
    pub fn type_info(&self, oid: Oid) -> Option<&TypeBody> {
        self.types.get(&oid)
    }

    pub fn remove(&mut self, id: Oid) -> Option<Arc<RelationBody>> {
        self.relations.remove(&id)
    }

    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
    }

    pub fn len(&self) -> usize {
        self.relations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}
