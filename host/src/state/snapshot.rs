//! The snapshot encoding of keyed state and timers.
//!
//! An operator instance writes its state as *sections*, one per key group,
//! so that a restore at another parallelism can hand each key group to the
//! instance that now owns it. A section is a sequence of entries, each a tag
//! byte followed by its fields; strings carry a u16 length, byte strings a
//! u32 length, times are i64; all little-endian. States are named, not
//! numbered, so a newer module version that declares its states in another
//! order still finds them.
//!
//! Decoding checks every length against the section, so a corrupt section
//! is an error naming the offset, never a panic or a partial read.
//!
//! An incremental checkpoint of a RocksDB instance is not entries but the
//! instance's own files ([`NativeCopy`]): its immutable SST files, shared
//! between checkpoints, and a *native meta* blob in the state file holding
//! the state names by id and RocksDB's small metadata files.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::checkpoint::manifest::{FileEntry, NativeFile};
use crate::state::{StateBackend, StateEntry, StateError, StateKind};
use crate::time::TimeDomain;

const TAG_VALUE: u8 = 1;
const TAG_MAP: u8 = 2;
const TAG_LIST: u8 = 3;
const TAG_EVENT_TIMER: u8 = 4;
const TAG_PROCESSING_TIMER: u8 = 5;

/// One item of an operator's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotEntry<'a> {
    State(StateEntry<'a>),
    Timer {
        domain: TimeDomain,
        time: i64,
        key: &'a [u8],
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot section is corrupt at byte {offset}: {problem}")]
    Corrupt {
        offset: usize,
        problem: &'static str,
    },
    #[error("entry for key group {key_group}, outside this snapshot's range {first}..{end}")]
    KeyGroupOutOfRange {
        key_group: u32,
        first: u32,
        end: u32,
    },
}

/// Work that writes a frozen copy of a backend's state into a snapshot.
pub type Deferred = Box<dyn FnOnce(&mut KeyedSnapshot) -> Result<(), StateError> + Send>;

/// SST files of one backend already in the checkpoint storage's shared
/// area, by their name in the backend's folder.
pub type SharedFiles = Arc<Mutex<HashMap<String, FileEntry>>>;

/// A frozen RocksDB instance handed over as its own files. The checkpoint
/// writer stores each SST file in the shared area unless `stored` has it
/// (an SST file never changes once written, and its name is never reused
/// by the instance), and the meta blob in the task's state file.
pub struct NativeCopy {
    /// The frozen folder: deleted when the copy is dropped.
    pub frozen: PathBuf,
    pub key_groups: Range<u32>,
    /// See [`encode_native_meta`].
    pub meta: Vec<u8>,
    /// SST file names in `frozen`.
    pub sst_files: Vec<String>,
    pub stored: SharedFiles,
    /// Begins the shared name of each new file: unique to the instance's
    /// lifetime, since RocksDB numbers files per instance.
    pub shared_prefix: String,
    /// Filled by the writer: every SST file and where it is stored.
    pub files: Vec<NativeFile>,
}

impl Drop for NativeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.frozen);
    }
}

/// Entries of one operator instance, bucketed by key group as they are
/// written; entries of a backend that froze its state are written later
/// by [`KeyedSnapshot::complete`].
pub struct KeyedSnapshot {
    first: u32,
    groups: Vec<Vec<u8>>,
    deferred: Vec<Deferred>,
    incremental: bool,
    native: Option<NativeCopy>,
}

impl std::fmt::Debug for KeyedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedSnapshot")
            .field("first", &self.first)
            .field("groups", &self.groups.len())
            .field("deferred", &self.deferred.len())
            .finish()
    }
}

impl KeyedSnapshot {
    pub fn new(key_groups: std::ops::Range<u32>) -> Self {
        KeyedSnapshot {
            first: key_groups.start,
            groups: vec![Vec::new(); key_groups.len()],
            deferred: Vec::new(),
            incremental: false,
            native: None,
        }
    }

    /// A snapshot for a checkpoint: backends may hand over their own files.
    pub fn incremental(key_groups: std::ops::Range<u32>) -> Self {
        KeyedSnapshot {
            incremental: true,
            ..Self::new(key_groups)
        }
    }

    /// Sets the backend's files as its part of the snapshot.
    pub fn set_native(&mut self, copy: NativeCopy) {
        self.native = Some(copy);
    }

    pub fn native(&self) -> Option<&NativeCopy> {
        self.native.as_ref()
    }

    pub fn native_mut(&mut self) -> Option<&mut NativeCopy> {
        self.native.as_mut()
    }

    /// Whether entries are still to be written by [`KeyedSnapshot::complete`].
    pub fn is_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Writes the entries of frozen backends (on the checkpoint writer's
    /// thread, while the task goes on).
    pub fn complete(&mut self) -> Result<(), StateError> {
        for work in std::mem::take(&mut self.deferred) {
            work(self)?;
        }
        Ok(())
    }

    /// Adds a state entry of key group `key_group`.
    pub fn push_state(&mut self, key_group: u32, entry: StateEntry<'_>) -> Result<(), StateError> {
        self.push(key_group, SnapshotEntry::State(entry))
            .map_err(|e| StateError::Snapshot(e.to_string()))
    }

    pub fn push(&mut self, key_group: u32, entry: SnapshotEntry<'_>) -> Result<(), SnapshotError> {
        let end = self.first + self.groups.len() as u32;
        let out = key_group
            .checked_sub(self.first)
            .and_then(|i| self.groups.get_mut(i as usize))
            .ok_or(SnapshotError::KeyGroupOutOfRange {
                key_group,
                first: self.first,
                end,
            })?;
        encode(out, entry);
        Ok(())
    }

    /// Adds every state entry of `backend`, key group by key group: now, or
    /// later from a frozen copy when the backend can make one.
    pub fn add_backend(&mut self, backend: &mut dyn StateBackend) -> Result<(), StateError> {
        if let Some(work) = backend.snapshot_later(self.incremental)? {
            self.deferred.push(work);
            return Ok(());
        }
        backend.prepare_snapshot()?;
        for key_group in backend.key_groups() {
            let index = (key_group - self.first) as usize;
            let out = &mut self.groups[index];
            backend
                .for_each_in_key_group(key_group, &mut |e| encode(out, SnapshotEntry::State(e)))?;
        }
        Ok(())
    }

    /// Non-empty sections: (key group, encoded entries).
    pub fn sections(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(i, g)| (self.first + i as u32, g.as_slice()))
    }
}

const KIND_VALUE: u8 = 1;
const KIND_MAP: u8 = 2;
const KIND_LIST: u8 = 3;

/// The native meta blob: the state names and kinds by id (`u32` count,
/// then name and kind byte each), then RocksDB's metadata files (`u32`
/// count, then name and contents each).
pub fn encode_native_meta(states: &[(String, StateKind)], files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(states.len() as u32).to_le_bytes());
    for (name, kind) in states {
        put_str(&mut out, name);
        out.push(match kind {
            StateKind::Value => KIND_VALUE,
            StateKind::Map => KIND_MAP,
            StateKind::List => KIND_LIST,
        });
    }
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (name, bytes) in files {
        put_str(&mut out, name);
        put_bytes(&mut out, bytes);
    }
    out
}

/// One old instance's native state in a verified checkpoint.
pub struct NativeSource<'a> {
    pub key_groups: Range<u32>,
    pub meta: NativeMeta<'a>,
    /// Where the SST files are, by their shared names.
    pub shared_dir: &'a std::path::Path,
    pub files: &'a [NativeFile],
}

/// A decoded native meta blob.
pub struct NativeMeta<'a> {
    pub states: Vec<(String, StateKind)>,
    pub files: Vec<(&'a str, &'a [u8])>,
}

pub fn decode_native_meta(bytes: &[u8]) -> Result<NativeMeta<'_>, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    let mut states = Vec::new();
    for _ in 0..r.u32()? {
        let name = r.str()?.to_owned();
        let kind = match r.take(1)?[0] {
            KIND_VALUE => StateKind::Value,
            KIND_MAP => StateKind::Map,
            KIND_LIST => StateKind::List,
            _ => return Err(r.corrupt("unknown state kind")),
        };
        states.push((name, kind));
    }
    let mut files = Vec::new();
    for _ in 0..r.u32()? {
        let name = r.str()?;
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(r.corrupt("a metadata file name leaves its folder"));
        }
        files.push((name, r.bytes()?));
    }
    if r.at != bytes.len() {
        return Err(r.corrupt("bytes after the last metadata file"));
    }
    Ok(NativeMeta { states, files })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("state names are validated to be short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub fn encode(out: &mut Vec<u8>, entry: SnapshotEntry<'_>) {
    match entry {
        SnapshotEntry::State(StateEntry::Value { state, key, value }) => {
            out.push(TAG_VALUE);
            put_str(out, state);
            put_bytes(out, key);
            put_bytes(out, value);
        }
        SnapshotEntry::State(StateEntry::MapEntry {
            state,
            key,
            map_key,
            value,
        }) => {
            out.push(TAG_MAP);
            put_str(out, state);
            put_bytes(out, key);
            put_bytes(out, map_key);
            put_bytes(out, value);
        }
        SnapshotEntry::State(StateEntry::ListItem { state, key, value }) => {
            out.push(TAG_LIST);
            put_str(out, state);
            put_bytes(out, key);
            put_bytes(out, value);
        }
        SnapshotEntry::Timer { domain, time, key } => {
            out.push(match domain {
                TimeDomain::EventTime => TAG_EVENT_TIMER,
                TimeDomain::ProcessingTime => TAG_PROCESSING_TIMER,
            });
            out.extend_from_slice(&time.to_le_bytes());
            put_bytes(out, key);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, problem: &'static str) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.at,
            problem,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.corrupt("a length runs past the end of the section"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        let b = self.take(len as usize)?;
        std::str::from_utf8(b).map_err(|_| self.corrupt("a state name is not UTF-8"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32()?;
        self.take(len as usize)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Visits every entry of a section, in the order written.
pub fn decode<'a, E: From<SnapshotError>>(
    section: &'a [u8],
    visit: &mut dyn FnMut(SnapshotEntry<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut r = Reader {
        bytes: section,
        at: 0,
    };
    while r.at < section.len() {
        let tag = r.take(1)?[0];
        let entry = match tag {
            TAG_VALUE => SnapshotEntry::State(StateEntry::Value {
                state: r.str()?,
                key: r.bytes()?,
                value: r.bytes()?,
            }),
            TAG_MAP => SnapshotEntry::State(StateEntry::MapEntry {
                state: r.str()?,
                key: r.bytes()?,
                map_key: r.bytes()?,
                value: r.bytes()?,
            }),
            TAG_LIST => SnapshotEntry::State(StateEntry::ListItem {
                state: r.str()?,
                key: r.bytes()?,
                value: r.bytes()?,
            }),
            TAG_EVENT_TIMER | TAG_PROCESSING_TIMER => SnapshotEntry::Timer {
                domain: if tag == TAG_EVENT_TIMER {
                    TimeDomain::EventTime
                } else {
                    TimeDomain::ProcessingTime
                },
                time: r.i64()?,
                key: r.bytes()?,
            },
            _ => {
                r.at -= 1;
                return Err(r.corrupt("unknown entry tag").into());
            }
        };
        visit(entry)?;
    }
    Ok(())
}

/// Puts one state entry of a snapshot back into a backend.
pub fn restore_entry(
    backend: &mut dyn StateBackend,
    key_group: u32,
    entry: StateEntry<'_>,
) -> Result<(), StateError> {
    match entry {
        StateEntry::Value { state, key, value } => {
            let id = backend.register(state, StateKind::Value)?;
            backend.value_put(id, key_group, key, value)
        }
        StateEntry::MapEntry {
            state,
            key,
            map_key,
            value,
        } => {
            let id = backend.register(state, StateKind::Map)?;
            backend.map_put(id, key_group, key, map_key, value)
        }
        StateEntry::ListItem { state, key, value } => {
            let id = backend.register(state, StateKind::List)?;
            backend.list_append(id, key_group, key, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryBackend;

    #[test]
    fn backend_round_trip_by_key_group() {
        let mut a = MemoryBackend::new(0..4);
        let v = a.register("v", StateKind::Value).unwrap();
        let m = a.register("m", StateKind::Map).unwrap();
        let l = a.register("l", StateKind::List).unwrap();
        a.value_put(v, 1, b"k1", b"one").unwrap();
        a.value_put(v, 3, b"k3", b"three").unwrap();
        a.map_put(m, 1, b"k1", b"x", b"1").unwrap();
        a.list_append(l, 3, b"k3", b"a").unwrap();
        a.list_append(l, 3, b"k3", b"b").unwrap();
        let mut snap = KeyedSnapshot::new(0..4);
        snap.add_backend(&mut a).unwrap();
        snap.push(
            3,
            SnapshotEntry::Timer {
                domain: TimeDomain::EventTime,
                time: -5,
                key: b"k3",
            },
        )
        .unwrap();
        assert!(
            snap.push(
                9,
                SnapshotEntry::Timer {
                    domain: TimeDomain::EventTime,
                    time: 0,
                    key: b""
                }
            )
            .is_err()
        );

        // Restore only key group 3 into a backend that owns 2..4.
        let mut b = MemoryBackend::new(2..4);
        let mut timers = Vec::new();
        for (kg, section) in snap.sections() {
            if !(2..4).contains(&kg) {
                continue;
            }
            decode::<SnapshotError>(section, &mut |e| {
                match e {
                    SnapshotEntry::State(s) => restore_entry(&mut b, kg, s).unwrap(),
                    SnapshotEntry::Timer { time, key, .. } => timers.push((time, key.to_vec())),
                }
                Ok(())
            })
            .unwrap();
        }
        let v = b.register("v", StateKind::Value).unwrap();
        let l = b.register("l", StateKind::List).unwrap();
        let mut out = Vec::new();
        assert!(b.value_get_into(v, 3, b"k3", &mut out).unwrap());
        assert_eq!(out, b"three");
        assert_eq!(
            b.list_get(l, 3, b"k3").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(timers, vec![(-5, b"k3".to_vec())]);
    }

    #[test]
    fn corrupt_sections_are_errors() {
        let mut section = Vec::new();
        encode(
            &mut section,
            SnapshotEntry::State(StateEntry::Value {
                state: "v",
                key: b"key",
                value: b"value",
            }),
        );
        for cut in 1..section.len() {
            let r = decode::<SnapshotError>(&section[..cut], &mut |_| Ok(()));
            assert!(r.is_err(), "truncated at {cut}");
        }
        section[0] = 99;
        let err = decode::<SnapshotError>(&section, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("unknown entry tag"), "{err}");
    }
}
