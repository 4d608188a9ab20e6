//! Relation messages and the cache of them: pgoutput describes each table (its columns, their
//! types and which form the replica identity) before the first change to it in a session, and
//! again after any change to its definition. Later messages name tables only by OID.

use std::collections::HashMap;

use super::DecodeError;
use super::reader::Reader;

/// A table as pgoutput describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// `pg_catalog` is sent as an empty namespace; `read` restores the name.
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key (with REPLICA IDENTITY FULL: every column).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

pub(super) fn read(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("relation OID")?;
    let namespace = match r.cstr("relation namespace")? {
        "" => "pg_catalog",
        ns => ns,
    }
    .to_owned();
    let name = r.cstr("relation name")?.to_owned();
    let replica_identity = r.u8("relation replica identity")?;
    let count = r.u16("relation column count")?;
    let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        let name = r.cstr("column name")?.to_owned();
        let type_oid = r.u32("column type OID")?;
        let type_modifier = r.i32("column type modifier")?;
        columns.push(Column {
            key: flags & 1 == 1,
            name,
            type_oid,
            type_modifier,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// Relations seen in the current replication session, by OID. Cleared on reconnect.
#[derive(Default, Debug)]
pub struct RelationCache<T> {
    entries: HashMap<u32, T>,
}

impl<T> RelationCache<T> {
    /// Replaces whatever was known about this OID.
    pub fn insert(&mut self, oid: u32, value: T) {
        self.entries.insert(oid, value);
    }

    pub fn get(&self, oid: u32) -> Option<&T> {
        self.entries.get(&oid)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
