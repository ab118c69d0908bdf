//! The in-memory backend: one hash map per (state, key group).
//!
//! Values are kept as bytes exactly as the operator wrote them, so reads and
//! writes cost a hash probe and a copy, and a snapshot is a walk over the
//! maps. Map states iterate in sorted order so every backend agrees.

use std::collections::BTreeMap;
use std::ops::Range;

use rustc_hash::FxHashMap;

use super::{MapEntries, StateBackend, StateEntry, StateError, StateId, StateKind};

enum Cell {
    Value(Vec<u8>),
    Map(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
}

struct Table {
    name: String,
    kind: StateKind,
    /// Indexed by key group minus the first owned key group.
    groups: Vec<FxHashMap<Box<[u8]>, Cell>>,
}

pub struct MemoryBackend {
    key_groups: Range<u32>,
    tables: Vec<Table>,
}

impl MemoryBackend {
    pub fn new(key_groups: Range<u32>) -> Self {
        MemoryBackend {
            key_groups,
            tables: Vec::new(),
        }
    }

    fn group(
        &mut self,
        id: StateId,
        kind: StateKind,
        key_group: u32,
    ) -> Result<&mut FxHashMap<Box<[u8]>, Cell>, StateError> {
        if !self.key_groups.contains(&key_group) {
            return Err(StateError::KeyGroupNotOwned {
                key_group,
                owned: self.key_groups.clone(),
            });
        }
        let first = self.key_groups.start;
        let table = self
            .tables
            .get_mut(id as usize)
            .ok_or(StateError::UnknownState(id))?;
        if table.kind != kind {
            return Err(StateError::WrongKind {
                id,
                actual: table.kind,
                used: kind,
            });
        }
        Ok(&mut table.groups[(key_group - first) as usize])
    }

    fn cell(
        &mut self,
        id: StateId,
        kind: StateKind,
        key_group: u32,
        key: &[u8],
    ) -> Result<&mut Cell, StateError> {
        let group = self.group(id, kind, key_group)?;
        if !group.contains_key(key) {
            let empty = match kind {
                StateKind::Value => Cell::Value(Vec::new()),
                StateKind::Map => Cell::Map(BTreeMap::new()),
                StateKind::List => Cell::List(Vec::new()),
            };
            group.insert(key.into(), empty);
        }
        Ok(group.get_mut(key).expect("inserted above"))
    }
}

impl StateBackend for MemoryBackend {
    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(i) = self.tables.iter().position(|t| t.name == name) {
            let existing = self.tables[i].kind;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(i as StateId);
        }
        let groups = (0..self.key_groups.len())
            .map(|_| FxHashMap::default())
            .collect();
        self.tables.push(Table {
            name: name.to_owned(),
            kind,
            groups,
        });
        Ok((self.tables.len() - 1) as StateId)
    }

    fn key_groups(&self) -> Range<u32> {
        self.key_groups.clone()
    }

    #[inline]
    fn value_get_into(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, StateError> {
        match self.group(id, StateKind::Value, key_group)?.get(key) {
            Some(Cell::Value(v)) => {
                out.extend_from_slice(v);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    #[inline]
    fn value_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        let group = self.group(id, StateKind::Value, key_group)?;
        match group.get_mut(key) {
            Some(Cell::Value(v)) => {
                v.clear();
                v.extend_from_slice(value);
            }
            _ => {
                group.insert(key.into(), Cell::Value(value.to_vec()));
            }
        }
        Ok(())
    }

    fn value_remove(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.group(id, StateKind::Value, key_group)?.remove(key);
        Ok(())
    }

    fn map_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        Ok(match self.group(id, StateKind::Map, key_group)?.get(key) {
            Some(Cell::Map(m)) => m.get(map_key).cloned(),
            _ => None,
        })
    }

    fn map_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        if let Cell::Map(m) = self.cell(id, StateKind::Map, key_group, key)? {
            m.insert(map_key.to_vec(), value.to_vec());
        }
        Ok(())
    }

    fn map_remove(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<(), StateError> {
        let group = self.group(id, StateKind::Map, key_group)?;
        if let Some(Cell::Map(m)) = group.get_mut(key) {
            m.remove(map_key);
            if m.is_empty() {
                group.remove(key);
            }
        }
        Ok(())
    }

    fn map_entries(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<MapEntries, StateError> {
        Ok(match self.group(id, StateKind::Map, key_group)?.get(key) {
            Some(Cell::Map(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => Vec::new(),
        })
    }

    fn map_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.group(id, StateKind::Map, key_group)?.remove(key);
        Ok(())
    }

    fn list_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(match self.group(id, StateKind::List, key_group)?.get(key) {
            Some(Cell::List(l)) => l.clone(),
            _ => Vec::new(),
        })
    }

    fn list_append(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        if let Cell::List(l) = self.cell(id, StateKind::List, key_group, key)? {
            l.push(value.to_vec());
        }
        Ok(())
    }

    fn list_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.group(id, StateKind::List, key_group)?.remove(key);
        Ok(())
    }

    fn for_each_in_key_group(
        &self,
        key_group: u32,
        visit: &mut dyn FnMut(StateEntry<'_>),
    ) -> Result<(), StateError> {
        if !self.key_groups.contains(&key_group) {
            return Err(StateError::KeyGroupNotOwned {
                key_group,
                owned: self.key_groups.clone(),
            });
        }
        let index = (key_group - self.key_groups.start) as usize;
        for table in &self.tables {
            let state = table.name.as_str();
            for (key, cell) in &table.groups[index] {
                match cell {
                    Cell::Value(value) => visit(StateEntry::Value { state, key, value }),
                    Cell::Map(m) => {
                        for (map_key, value) in m {
                            visit(StateEntry::MapEntry {
                                state,
                                key,
                                map_key,
                                value,
                            });
                        }
                    }
                    Cell::List(l) => {
                        for value in l {
                            visit(StateEntry::ListItem { state, key, value });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_map_list_round_trip_and_key_group_scope() {
        let mut b = MemoryBackend::new(4..8);
        let v = b.register("v", StateKind::Value).unwrap();
        let m = b.register("m", StateKind::Map).unwrap();
        let l = b.register("l", StateKind::List).unwrap();
        assert_eq!(b.register("v", StateKind::Value).unwrap(), v);
        assert!(b.register("v", StateKind::Map).is_err());
        b.value_put(v, 5, b"k", b"1").unwrap();
        let mut out = Vec::new();
        assert!(b.value_get_into(v, 5, b"k", &mut out).unwrap());
        assert_eq!(out, b"1");
        assert!(!b.value_get_into(v, 5, b"other", &mut out).unwrap());
        b.map_put(m, 5, b"k", b"b", b"2").unwrap();
        b.map_put(m, 5, b"k", b"a", b"1").unwrap();
        assert_eq!(b.map_entries(m, 5, b"k").unwrap()[0].0, b"a");
        b.list_append(l, 6, b"k", b"x").unwrap();
        b.list_append(l, 6, b"k", b"y").unwrap();
        assert_eq!(b.list_get(l, 6, b"k").unwrap().len(), 2);
        assert!(matches!(
            b.value_put(v, 9, b"k", b"1"),
            Err(StateError::KeyGroupNotOwned { .. })
        ));
        let mut seen = 0;
        b.for_each_in_key_group(5, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, 3);
    }
}
