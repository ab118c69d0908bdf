//! Keyed state: the [`StateBackend`] trait and its backends.
//!
//! Every state is registered by name and kind before use and then addressed
//! by its [`StateId`]. Every access names the key group of the key, computed
//! by [`crate::graph::key_group`]; a backend owns one contiguous key-group
//! range (its task's) and rejects others, so a routing bug surfaces as an
//! error instead of state silently split across tasks.
//!
//! Guests reach state only through the guest contract's handles (shipped
//! value states and the slot-scoped imports); nothing else in a task calls a
//! backend with a key the current batch does not hold.

pub mod memory;
pub mod rocksdb;
pub mod snapshot;

use std::ops::Range;
use std::path::PathBuf;

pub use memory::MemoryBackend;
pub use rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbShared};

pub type StateId = u32;

/// Makes the state backend of each operator instance of one job.
pub enum StateFactory {
    Memory,
    RocksDb(RocksDbShared),
}

impl StateFactory {
    pub fn create(
        &self,
        operator: &str,
        instance: u32,
        key_groups: Range<u32>,
    ) -> Result<Box<dyn StateBackend>, StateError> {
        Ok(self.create_from(operator, instance, key_groups, None)?.0)
    }

    /// Like [`StateFactory::create`], opening the files of `native` (an
    /// old instance of the same key groups) when the backend can; says
    /// whether it did.
    pub fn create_from(
        &self,
        operator: &str,
        instance: u32,
        key_groups: Range<u32>,
        native: Option<&snapshot::NativeSource<'_>>,
    ) -> Result<(Box<dyn StateBackend>, bool), StateError> {
        Ok(match self {
            StateFactory::Memory => (Box::new(MemoryBackend::new(key_groups)), false),
            StateFactory::RocksDb(shared) => (
                Box::new(shared.open_from(operator, instance, key_groups, native)?),
                native.is_some(),
            ),
        })
    }
}

/// A map state's entries: (map key, value) pairs in ascending key order.
pub type MapEntries = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    Value,
    Map,
    List,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state `{name}` is already registered as a {existing:?} state, not {requested:?}")]
    KindMismatch {
        name: String,
        existing: StateKind,
        requested: StateKind,
    },
    #[error("no state with id {0}")]
    UnknownState(StateId),
    #[error("state id {id} is a {actual:?} state, used as {used:?}")]
    WrongKind {
        id: StateId,
        actual: StateKind,
        used: StateKind,
    },
    #[error("value handle {handle} of state {id} does not name a stored value")]
    StaleHandle { id: StateId, handle: u32 },
    #[error("key group {key_group} is not owned by this task (it owns {owned:?})")]
    KeyGroupNotOwned { key_group: u32, owned: Range<u32> },
    #[error("RocksDB state in {path}: {message}")]
    Storage { path: PathBuf, message: String },
    #[error("more than 65536 states registered by one operator")]
    TooManyStates,
    #[error("{0} cached writes not yet written: call prepare_snapshot before iterating")]
    UnflushedWrites(usize),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// One stored item, as iterated for snapshots and rescaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateEntry<'a> {
    Value {
        state: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
    MapEntry {
        state: &'a str,
        key: &'a [u8],
        map_key: &'a [u8],
        value: &'a [u8],
    },
    ListItem {
        state: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
}

/// A located value-state entry: the way to read and write one key's value
/// again without another lookup. Valid until that entry is removed (a
/// `value_write` of `None` or a `value_remove` of its key) or until
/// [`StateBackend::release_handles`]; finding, reading and writing other
/// entries never invalidates it, and finding the same key again before the
/// release gives the same handle. Handles are small dense integers, so a
/// caller may index by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueHandle(pub u32);

/// Keyed state of one operator instance, scoped to its key groups.
pub trait StateBackend: Send {
    /// Registers (or finds) a state by name; the same name always has the same kind.
    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError>;
    fn key_groups(&self) -> Range<u32>;

    /// Appends the value to `out`; `false` when there is none.
    fn value_get_into(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, StateError>;
    fn value_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError>;
    fn value_remove(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError>;
    /// Stores a value for a key the caller found without one and has not
    /// written since (a window's new accumulator), so a backend may skip
    /// looking for it again. Returns a handle to the new value where the
    /// backend has one, for further writes in the same batch.
    fn value_insert(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<ValueHandle>, StateError> {
        self.value_put(id, key_group, key, value).map(|()| None)
    }

    /// Locates a stored value: one lookup, after which reads and writes of it
    /// go through the handle. `None` when the key has no value.
    fn value_find(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Option<ValueHandle>, StateError>;
    fn value_read(&self, id: StateId, handle: ValueHandle) -> Result<&[u8], StateError>;
    /// Replaces the value, or with `None` removes the entry (and the handle).
    fn value_write(
        &mut self,
        id: StateId,
        handle: ValueHandle,
        value: Option<&[u8]>,
    ) -> Result<(), StateError>;

    /// Declares every handle given out so far unused, so a backend that
    /// caches may evict. Operators that use handles call it once per batch.
    fn release_handles(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Makes every write visible to [`StateBackend::for_each_in_key_group`].
    fn prepare_snapshot(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Freezes the current state cheaply and returns the work of writing it
    /// into a snapshot, to be run later on another thread (the checkpoint
    /// writer) while this backend goes on changing; `None` when the backend
    /// can only be copied out now. With `incremental` (a checkpoint, not a
    /// savepoint) the frozen copy may be handed over as the backend's own
    /// files ([`snapshot::NativeCopy`]) instead of entries.
    fn snapshot_later(
        &mut self,
        _incremental: bool,
    ) -> Result<Option<snapshot::Deferred>, StateError> {
        Ok(None)
    }

    fn map_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError>;
    fn map_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError>;
    fn map_remove(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<(), StateError>;
    /// Entries in ascending map-key order.
    fn map_entries(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<MapEntries, StateError>;
    fn map_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError>;

    fn list_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError>;
    fn list_append(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError>;
    fn list_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError>;

    /// Visits every item stored in one key group (after `prepare_snapshot`).
    fn for_each_in_key_group(
        &self,
        key_group: u32,
        visit: &mut dyn FnMut(StateEntry<'_>),
    ) -> Result<(), StateError>;
}

/// The behaviour every backend shares, run against each of them.
#[cfg(test)]
mod conformance {
    use super::snapshot::{KeyedSnapshot, SnapshotEntry, SnapshotError, decode, restore_entry};
    use super::*;

    /// A folder removed when dropped (after the backends using it).
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Backends = Vec<(&'static str, Box<dyn StateBackend>)>;

    fn backends(key_groups: Range<u32>) -> (Scratch, Backends) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weir-conformance-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let rocks = RocksDbShared::new(
            RocksDbConfig {
                dir: dir.clone(),
                block_cache_bytes: 4 << 20,
                write_buffer_bytes: 256 << 10,
                // Small enough that the tests below go through eviction.
                value_cache_bytes: 1 << 10,
                incremental: true,
                checkpoint_shared_dir: None,
            },
            "conformance",
        );
        let backends: Backends = vec![
            ("memory", Box::new(MemoryBackend::new(key_groups.clone()))),
            (
                "rocksdb",
                Box::new(rocks.open("op", 0, key_groups).expect("opens")),
            ),
        ];
        (Scratch(dir), backends)
    }

    fn all_entries(b: &mut dyn StateBackend) -> Vec<String> {
        b.prepare_snapshot().unwrap();
        let mut out = Vec::new();
        for g in b.key_groups() {
            b.for_each_in_key_group(g, &mut |e| out.push(format!("{g}:{e:?}")))
                .unwrap();
        }
        out.sort();
        out
    }

    #[test]
    fn value_map_and_list_state_behave_alike() {
        let (_scratch, all) = backends(4..8);
        for (name, mut b) in all {
            let b = b.as_mut();
            let v = b.register("v", StateKind::Value).unwrap();
            let m = b.register("m", StateKind::Map).unwrap();
            let l = b.register("l", StateKind::List).unwrap();
            assert_eq!(b.register("v", StateKind::Value).unwrap(), v, "{name}");
            assert!(b.register("v", StateKind::Map).is_err(), "{name}");
            assert!(
                matches!(
                    b.value_put(m, 5, b"k", b"1"),
                    Err(StateError::WrongKind { .. })
                ),
                "{name}"
            );
            b.value_put(v, 5, b"k", b"1").unwrap();
            let mut out = Vec::new();
            assert!(b.value_get_into(v, 5, b"k", &mut out).unwrap(), "{name}");
            assert_eq!(out, b"1", "{name}");
            assert!(!b.value_get_into(v, 5, b"other", &mut out).unwrap());
            assert!(!b.value_get_into(v, 6, b"k", &mut out).unwrap(), "{name}");
            b.map_put(m, 5, b"k", b"b", b"2").unwrap();
            b.map_put(m, 5, b"k", b"a", b"1").unwrap();
            b.map_put(m, 5, b"k", b"ab", b"3").unwrap();
            // A key that is a prefix of another key keeps its own entries.
            b.map_put(m, 5, b"kk", b"a", b"9").unwrap();
            let keys: Vec<_> = b
                .map_entries(m, 5, b"k")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, [&b"a"[..], b"ab", b"b"], "{name}");
            assert_eq!(b.map_get(m, 5, b"k", b"ab").unwrap().unwrap(), b"3");
            b.map_remove(m, 5, b"k", b"ab").unwrap();
            assert_eq!(b.map_get(m, 5, b"k", b"ab").unwrap(), None, "{name}");
            b.map_clear(m, 5, b"k").unwrap();
            assert!(b.map_entries(m, 5, b"k").unwrap().is_empty(), "{name}");
            assert_eq!(b.map_entries(m, 5, b"kk").unwrap().len(), 1, "{name}");
            for item in [&b"x"[..], b"y", b"z"] {
                b.list_append(l, 6, b"k", item).unwrap();
            }
            assert_eq!(
                b.list_get(l, 6, b"k").unwrap(),
                [b"x", b"y", b"z"],
                "{name}"
            );
            b.list_clear(l, 6, b"k").unwrap();
            b.list_append(l, 6, b"k", b"again").unwrap();
            assert_eq!(b.list_get(l, 6, b"k").unwrap(), [b"again"], "{name}");
            assert!(
                matches!(
                    b.value_put(v, 9, b"k", b"1"),
                    Err(StateError::KeyGroupNotOwned { .. })
                ),
                "{name}"
            );
            let entries = all_entries(b);
            assert_eq!(entries.len(), 3, "{name}: {entries:?}");
        }
    }

    #[test]
    fn handles_find_read_write_and_remove_alike() {
        let (_scratch, all) = backends(0..4);
        for (name, mut b) in all {
            let b = b.as_mut();
            let v = b.register("v", StateKind::Value).unwrap();
            assert_eq!(b.value_find(v, 1, b"a").unwrap(), None, "{name}");
            b.value_put(v, 1, b"a", b"1").unwrap();
            b.value_put(v, 2, b"b", b"2").unwrap();
            let a = b.value_find(v, 1, b"a").unwrap().unwrap();
            assert_eq!(b.value_find(v, 1, b"a").unwrap(), Some(a), "{name}");
            assert_eq!(b.value_find(v, 2, b"a").unwrap(), None, "{name}");
            b.value_write(v, a, Some(b"11")).unwrap();
            assert_eq!(b.value_read(v, a).unwrap(), b"11", "{name}");
            b.value_write(v, a, None).unwrap();
            assert!(
                matches!(b.value_read(v, a), Err(StateError::StaleHandle { .. })),
                "{name}"
            );
            b.release_handles().unwrap();
            assert_eq!(b.value_find(v, 1, b"a").unwrap(), None, "{name}");
            let mut out = Vec::new();
            assert!(b.value_get_into(v, 2, b"b", &mut out).unwrap(), "{name}");
            b.value_remove(v, 2, b"b").unwrap();
            assert!(all_entries(b).is_empty(), "{name}");
        }
    }

    #[test]
    fn many_keys_survive_eviction_and_snapshot_into_the_other_backend() {
        let mut snapshots = Vec::new();
        let (_scratch, all) = backends(0..8);
        for (name, mut b) in all {
            let b = b.as_mut();
            let v = b.register("count", StateKind::Value).unwrap();
            let l = b.register("items", StateKind::List).unwrap();
            for round in 0..3u64 {
                for k in 0..2000u64 {
                    let key = k.to_le_bytes();
                    let g = (k % 8) as u32;
                    let mut out = Vec::new();
                    let c = if b.value_get_into(v, g, &key, &mut out).unwrap() {
                        u64::from_le_bytes(out.try_into().unwrap()) + 1
                    } else {
                        1
                    };
                    b.value_put(v, g, &key, &c.to_le_bytes()).unwrap();
                    if k % 100 == 0 {
                        b.list_append(l, g, &key, &round.to_le_bytes()).unwrap();
                    }
                }
            }
            let mut snap = KeyedSnapshot::new(0..8);
            snap.add_backend(b).unwrap();
            snap.complete().unwrap();
            let sections: Vec<(u32, Vec<u8>)> =
                snap.sections().map(|(g, s)| (g, s.to_vec())).collect();
            snapshots.push((name, all_entries(b), sections));
        }
        let (_, memory_entries, _) = &snapshots[0];
        assert_eq!(memory_entries.len(), 2000 + 20 * 3, "counts and list items");
        assert!(
            memory_entries
                .iter()
                .all(|e| !e.contains("Value") || e.contains("value: [3, 0"))
        );
        assert_eq!(
            &snapshots[1].1, memory_entries,
            "rocksdb agrees with memory"
        );
        // Each backend's snapshot restores into the other with equal contents.
        for (i, (from, _, sections)) in snapshots.iter().enumerate() {
            let (_target_scratch, mut all) = backends(0..8);
            let mut target = all.swap_remove(1 - i).1;
            for (g, bytes) in sections {
                decode::<SnapshotError>(bytes, &mut |e| {
                    match e {
                        SnapshotEntry::State(e) => restore_entry(target.as_mut(), *g, e).unwrap(),
                        SnapshotEntry::Timer { .. } => unreachable!("no timers here"),
                    }
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(&all_entries(target.as_mut()), memory_entries, "from {from}");
        }
    }
}
