//! The in-memory backend.
//!
//! Value states live in a slab per state (one entry per key: key, key group,
//! value bytes, short ones inline) with one hash index per key group over it,
//! so a lookup is one probe and a [`ValueHandle`] is the slab index: reads
//! and writes through it cost no probe at all. Freed slab entries are reused.
//! Map and list states keep one hash map per key group. Bytes are stored exactly as the operator
//! wrote them; a snapshot is a walk over the key group's index. Map states
//! iterate in sorted order so every backend agrees.

use std::collections::BTreeMap;
use std::ops::Range;

use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use super::{MapEntries, StateBackend, StateEntry, StateError, StateId, StateKind, ValueHandle};

enum Cell {
    Map(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
}

/// Bytes kept inline when at most `N` long, on the heap beyond. Keys and
/// counters are mostly a few bytes: inline, a lookup compares and a read
/// copies without following a pointer to another cache line.
#[derive(Clone)]
enum SmallBytes<const N: usize> {
    Inline { len: u8, data: [u8; N] },
    Heap(Box<[u8]>),
}

/// Keys: a window's state key is the record key and two timestamps, 24
/// bytes for an 8-byte key, and that must not cost an allocation per window.
type KeyBytes = SmallBytes<30>;
/// Values: counters, sums and short accumulators.
type ValueBytes = SmallBytes<22>;

const _: () = assert!(std::mem::size_of::<KeyBytes>() == 32);
const _: () = assert!(std::mem::size_of::<ValueBytes>() == 24);

impl<const N: usize> SmallBytes<N> {
    const EMPTY: Self = SmallBytes::Inline {
        len: 0,
        data: [0; N],
    };

    fn new(bytes: &[u8]) -> Self {
        if bytes.len() > N {
            return SmallBytes::Heap(bytes.into());
        }
        let mut data = [0; N];
        copy_short(&mut data[..bytes.len()], bytes);
        SmallBytes::Inline {
            len: bytes.len() as u8,
            data,
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, data } => &data[..*len as usize],
            SmallBytes::Heap(bytes) => bytes,
        }
    }

    /// Replaces the bytes, in place when they fit where the old ones were.
    #[inline]
    fn set(&mut self, bytes: &[u8]) {
        match self {
            SmallBytes::Inline { len, data } if bytes.len() <= N => {
                copy_short(&mut data[..bytes.len()], bytes);
                *len = bytes.len() as u8;
            }
            SmallBytes::Heap(old) if old.len() == bytes.len() => old.copy_from_slice(bytes),
            _ => *self = SmallBytes::new(bytes),
        }
    }
}

/// `copy_from_slice` with the common eight-byte case as one word move
/// instead of a call to `memcpy`.
#[inline(always)]
fn copy_short(to: &mut [u8], from: &[u8]) {
    match (
        <&mut [u8; 8]>::try_from(&mut *to),
        <&[u8; 8]>::try_from(from),
    ) {
        (Ok(to), Ok(from)) => *to = *from,
        _ => to.copy_from_slice(from),
    }
}

/// Marks a free slab entry in `ValueTable::groups`.
const FREE: u32 = u32::MAX;

/// One value state's entries as parallel arrays indexed by slab position,
/// so that a lookup's probes touch only the index and the keys.
#[derive(Default)]
struct ValueTable {
    keys: Vec<KeyBytes>,
    values: Vec<ValueBytes>,
    /// Offset of each entry's key group in the backend's range, or [`FREE`].
    groups: Vec<u32>,
    /// Each entry's key hash, for growing and cleaning the index (window
    /// state inserts and removes an entry per key and window) without
    /// hashing every key again.
    hashes: Vec<u64>,
    free: Vec<u32>,
    /// Per key group: slab positions, hashed by key.
    index: Vec<HashTable<u32>>,
}

/// xxh3, not Fx: window state keys differ only in a few bytes of their
/// suffix, which Fx spreads poorly enough to triple the probes.
fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Key equality. Keys are mostly a few bytes long, and for those two
/// overlapping word loads beat a call to `memcmp` on every probe.
#[inline(always)]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

impl ValueTable {
    #[inline]
    fn find(&self, group: usize, key: &[u8]) -> Option<u32> {
        let keys = &self.keys;
        self.index[group]
            .find(key_hash(key), |&i| {
                same_key(keys[i as usize].as_slice(), key)
            })
            .copied()
    }

    fn insert(&mut self, group: usize, key: &[u8], value: &[u8]) -> u32 {
        let hash = key_hash(key);
        let (key, value) = (KeyBytes::new(key), ValueBytes::new(value));
        let at = match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = key;
                self.values[i as usize] = value;
                self.groups[i as usize] = group as u32;
                self.hashes[i as usize] = hash;
                i
            }
            None => {
                self.keys.push(key);
                self.values.push(value);
                self.groups.push(group as u32);
                self.hashes.push(hash);
                (self.keys.len() - 1) as u32
            }
        };
        let hashes = &self.hashes;
        self.index[group].insert_unique(hash, at, |&i| hashes[i as usize]);
        at
    }

    fn remove_at(&mut self, at: u32) {
        let group = self.groups[at as usize];
        if group == FREE {
            return;
        }
        let hash = self.hashes[at as usize];
        if let Ok(found) = self.index[group as usize].find_entry(hash, |&i| i == at) {
            found.remove();
        }
        self.groups[at as usize] = FREE;
        self.keys[at as usize] = KeyBytes::EMPTY;
        self.values[at as usize] = ValueBytes::EMPTY;
        self.free.push(at);
    }

    #[inline]
    fn is_live(&self, handle: ValueHandle) -> bool {
        self.groups
            .get(handle.0 as usize)
            .is_some_and(|&g| g != FREE)
    }
}

enum Store {
    Values(ValueTable),
    /// Indexed by key group minus the first owned key group.
    Cells(Vec<FxHashMap<Box<[u8]>, Cell>>),
}

struct Table {
    name: String,
    kind: StateKind,
    store: Store,
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

    fn group_offset(&self, key_group: u32) -> Result<usize, StateError> {
        if !self.key_groups.contains(&key_group) {
            return Err(StateError::KeyGroupNotOwned {
                key_group,
                owned: self.key_groups.clone(),
            });
        }
        Ok((key_group - self.key_groups.start) as usize)
    }

    fn table(&self, id: StateId, used: StateKind) -> Result<&Table, StateError> {
        let table = self
            .tables
            .get(id as usize)
            .ok_or(StateError::UnknownState(id))?;
        if table.kind != used {
            return Err(StateError::WrongKind {
                id,
                actual: table.kind,
                used,
            });
        }
        Ok(table)
    }

    fn values(&self, id: StateId) -> Result<&ValueTable, StateError> {
        match &self.table(id, StateKind::Value)?.store {
            Store::Values(v) => Ok(v),
            Store::Cells(_) => unreachable!("value tables are created as Values"),
        }
    }

    fn values_mut(&mut self, id: StateId) -> Result<&mut ValueTable, StateError> {
        self.table(id, StateKind::Value)?;
        match &mut self.tables[id as usize].store {
            Store::Values(v) => Ok(v),
            Store::Cells(_) => unreachable!("value tables are created as Values"),
        }
    }

    fn group(
        &mut self,
        id: StateId,
        kind: StateKind,
        key_group: u32,
    ) -> Result<&mut FxHashMap<Box<[u8]>, Cell>, StateError> {
        let offset = self.group_offset(key_group)?;
        self.table(id, kind)?;
        match &mut self.tables[id as usize].store {
            Store::Cells(groups) => Ok(&mut groups[offset]),
            Store::Values(_) => unreachable!("map and list tables are created as Cells"),
        }
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
                StateKind::Map => Cell::Map(BTreeMap::new()),
                _ => Cell::List(Vec::new()),
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
        let groups = self.key_groups.len();
        let store = match kind {
            StateKind::Value => Store::Values(ValueTable {
                index: (0..groups).map(|_| HashTable::new()).collect(),
                ..ValueTable::default()
            }),
            StateKind::Map | StateKind::List => {
                Store::Cells((0..groups).map(|_| FxHashMap::default()).collect())
            }
        };
        self.tables.push(Table {
            name: name.to_owned(),
            kind,
            store,
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
        let group = self.group_offset(key_group)?;
        let table = self.values(id)?;
        match table.find(group, key) {
            Some(i) => {
                out.extend_from_slice(table.values[i as usize].as_slice());
                Ok(true)
            }
            None => Ok(false),
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
        let group = self.group_offset(key_group)?;
        let table = self.values_mut(id)?;
        match table.find(group, key) {
            Some(i) => table.values[i as usize].set(value),
            None => {
                table.insert(group, key, value);
            }
        }
        Ok(())
    }

    #[inline]
    fn value_insert(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<ValueHandle>, StateError> {
        let group = self.group_offset(key_group)?;
        let table = self.values_mut(id)?;
        debug_assert!(
            table.find(group, key).is_none(),
            "value_insert of a stored key"
        );
        Ok(Some(ValueHandle(table.insert(group, key, value))))
    }

    fn value_remove(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        let group = self.group_offset(key_group)?;
        let table = self.values_mut(id)?;
        if let Some(i) = table.find(group, key) {
            table.remove_at(i);
        }
        Ok(())
    }

    #[inline]
    fn value_find(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Option<ValueHandle>, StateError> {
        let group = self.group_offset(key_group)?;
        Ok(self.values(id)?.find(group, key).map(ValueHandle))
    }

    #[inline]
    fn value_read(&self, id: StateId, handle: ValueHandle) -> Result<&[u8], StateError> {
        let table = self.values(id)?;
        if !table.is_live(handle) {
            return Err(StateError::StaleHandle {
                id,
                handle: handle.0,
            });
        }
        Ok(table.values[handle.0 as usize].as_slice())
    }

    #[inline]
    fn value_write(
        &mut self,
        id: StateId,
        handle: ValueHandle,
        value: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let table = self.values_mut(id)?;
        if !table.is_live(handle) {
            return Err(StateError::StaleHandle {
                id,
                handle: handle.0,
            });
        }
        match value {
            Some(bytes) => table.values[handle.0 as usize].set(bytes),
            None => table.remove_at(handle.0),
        }
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
            match &table.store {
                Store::Values(values) => {
                    for &i in values.index[index].iter() {
                        visit(StateEntry::Value {
                            state,
                            key: values.keys[i as usize].as_slice(),
                            value: values.values[i as usize].as_slice(),
                        });
                    }
                }
                Store::Cells(groups) => {
                    for (key, cell) in &groups[index] {
                        match cell {
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
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_bytes_across_the_inline_limit() {
        let mut b = MemoryBackend::new(0..4);
        let v = b.register("v", StateKind::Value).unwrap();
        let lengths = [0, 1, 8, 22, 23, 64, 23, 8, 0, 30, 31, 30, 31];
        for (round, &n) in lengths.iter().enumerate() {
            let key: Vec<u8> = (0..n as u8).map(|x| x ^ 0x5a).collect();
            let value: Vec<u8> = (0..n).map(|x| (x + round) as u8).collect();
            b.value_put(v, 2, b"k", &value).unwrap();
            b.value_put(v, 2, &key, &value).unwrap();
            let mut got = Vec::new();
            assert!(b.value_get_into(v, 2, b"k", &mut got).unwrap());
            assert_eq!(got, value, "value of {n} bytes after {round} writes");
            got.clear();
            assert!(b.value_get_into(v, 2, &key, &mut got).unwrap());
            assert_eq!(got, value, "key of {n} bytes");
        }
        for &n in &lengths {
            let key: Vec<u8> = (0..n as u8).map(|x| x ^ 0x5a).collect();
            b.value_remove(v, 2, &key).unwrap();
            assert!(!b.value_get_into(v, 2, &key, &mut Vec::new()).unwrap());
        }
    }

    #[test]
    fn keys_of_every_length_compare_byte_for_byte() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(same_key(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same_key(&a, &b), "length {n}, byte {i}");
            }
            assert!(!same_key(&a, &[a.as_slice(), &[0]].concat()));
        }
    }

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

    #[test]
    fn handles_read_write_remove_and_reuse() {
        let mut b = MemoryBackend::new(0..4);
        let v = b.register("v", StateKind::Value).unwrap();
        assert_eq!(b.value_find(v, 1, b"a").unwrap(), None);
        b.value_put(v, 1, b"a", b"1").unwrap();
        b.value_put(v, 2, b"b", b"2").unwrap();
        let a = b.value_find(v, 1, b"a").unwrap().unwrap();
        assert_eq!(
            b.value_find(v, 2, b"a").unwrap(),
            None,
            "key groups are separate"
        );
        b.value_write(v, a, Some(b"11")).unwrap();
        let mut out = Vec::new();
        b.value_get_into(v, 1, b"a", &mut out).unwrap();
        assert_eq!(out, b"11");
        b.value_write(v, a, None).unwrap();
        assert!(matches!(
            b.value_read(v, a),
            Err(StateError::StaleHandle { .. })
        ));
        assert_eq!(b.value_find(v, 1, b"a").unwrap(), None);
        b.value_put(v, 3, b"c", b"3").unwrap();
        let c = b.value_find(v, 3, b"c").unwrap().unwrap();
        assert_eq!(c, a, "freed entries are reused");
        assert_eq!(b.value_read(v, c).unwrap(), b"3");
        let mut seen = Vec::new();
        for g in 0..4 {
            b.for_each_in_key_group(g, &mut |e| {
                if let StateEntry::Value { key, value, .. } = e {
                    seen.push((g, key.to_vec(), value.to_vec()));
                }
            })
            .unwrap();
        }
        assert_eq!(
            seen,
            vec![
                (2, b"b".to_vec(), b"2".to_vec()),
                (3, b"c".to_vec(), b"3".to_vec())
            ]
        );
    }
}
