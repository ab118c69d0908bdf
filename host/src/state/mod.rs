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
pub mod snapshot;

use std::ops::Range;

pub use memory::MemoryBackend;

pub type StateId = u32;

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
/// `value_write` of `None` or a `value_remove` of its key); finding, reading
/// and writing other entries never invalidates it. Handles of a state are
/// small dense integers, so a caller may index by them.
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

    /// Visits every item stored in one key group.
    fn for_each_in_key_group(
        &self,
        key_group: u32,
        visit: &mut dyn FnMut(StateEntry<'_>),
    ) -> Result<(), StateError>;
}
