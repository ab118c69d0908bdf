//! The RocksDB backend: keyed state on local disk, for state larger than memory.
//!
//! Each operator instance has its own RocksDB instance under
//! `<rocksdb.dir>/<job>/<operator>-<instance>`. That folder is working space,
//! not the durable copy of state (checkpoints are), so writes skip the
//! write-ahead log and the folder is deleted when the backend is dropped, or
//! when a later run finds it left over from a killed process.
//!
//! Key layout: `key group (u16 BE) | state id (u16 BE) | key length (u32 BE) |
//! key | suffix`, the suffix being nothing for value state, the map key for
//! map state and an append sequence number (u64 BE) for list state. The key
//! group comes first so that one key group is one contiguous key range
//! (snapshots and rescaling read it with one iterator); the length prefix
//! keeps each key's entries contiguous and apart from every other key's. Map
//! entries therefore come back in ascending map-key order and list items in
//! append order, as from the memory backend.
//!
//! Value state goes through a write-back cache, like the record cache Kafka
//! Streams keeps in front of its RocksDB stores: a hot key costs a hash probe
//! instead of a RocksDB read and write per record. The cache is bounded in
//! bytes; when it outgrows its budget its changes go to RocksDB in one write
//! batch and it is emptied. A [`ValueHandle`] indexes the cache, so the cache
//! is only emptied while no handle is out: after [`StateBackend::release_handles`]
//! or before any handle was given out. [`StateBackend::prepare_snapshot`]
//! writes pending changes, and iteration refuses to run while any are
//! pending, so a snapshot never misses a write.
//!
//! All instances of a job share one LRU block cache, and their memtables are
//! charged to that cache, so the job's RocksDB memory stays near
//! `block_cache` whatever the number of instances or the size of the state.
//!
//! Snapshots freeze the instance as a RocksDB checkpoint (hard links to its
//! immutable SST files, after the value cache and memtables are flushed).
//! A savepoint, or a checkpoint with `incremental` off, reads the frozen
//! copy into entries. An incremental checkpoint hands the frozen files over
//! as they are ([`NativeCopy`]): each SST file is stored once, and later
//! checkpoints list it again without copying it. An instance restored at
//! the same key groups opens those files directly instead of inserting its
//! entries one by one; one restored at other key groups (rescaling) opens
//! each old instance's files read-only and takes the entries of its own key
//! groups ([`visit_native`]).

use std::ops::Range;
use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, DBRawIterator, Options, ReadOptions,
    WriteBatch, WriteBufferManager, WriteOptions,
};

use super::snapshot::{
    Deferred, KeyedSnapshot, NativeCopy, NativeSource, SharedFiles, encode_native_meta,
};
use super::{MapEntries, StateBackend, StateEntry, StateError, StateId, StateKind, ValueHandle};

/// Sizes and place of a job's RocksDB state (the spec's `rocksdb:` section).
#[derive(Clone, Debug)]
pub struct RocksDbConfig {
    pub dir: PathBuf,
    /// Shared by every instance of the job: data blocks, index and filter
    /// blocks, and memtables.
    pub block_cache_bytes: usize,
    /// One memtable of one instance.
    pub write_buffer_bytes: usize,
    /// Per instance: the write-back cache of value state.
    pub value_cache_bytes: usize,
    /// Checkpoints hand over the instance's own files (see
    /// [`StateBackend::snapshot_later`]).
    pub incremental: bool,
    /// The folder this job's checkpoints keep shared files in. Files of a
    /// restored instance that are already there are not stored again; ones
    /// restored from elsewhere (another job's checkpoint) are.
    pub checkpoint_shared_dir: Option<PathBuf>,
}

/// What the instances of one job share.
pub struct RocksDbShared {
    config: RocksDbConfig,
    job_dir: PathBuf,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl RocksDbShared {
    pub fn new(config: RocksDbConfig, job: &str) -> Self {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        // Memtables may take up to half the budget before RocksDB flushes.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            config.block_cache_bytes / 2,
            false,
            cache.clone(),
        );
        RocksDbShared {
            job_dir: config.dir.join(job),
            config,
            cache,
            write_buffers,
        }
    }

    /// Opens an empty state for one operator instance.
    pub fn open(
        &self,
        operator: &str,
        instance: u32,
        key_groups: Range<u32>,
    ) -> Result<RocksDbBackend, StateError> {
        self.open_from(operator, instance, key_groups, None)
    }

    /// Opens the state of one operator instance: empty, or made of the
    /// files of `native`, an old instance of the same key groups.
    pub fn open_from(
        &self,
        operator: &str,
        instance: u32,
        key_groups: Range<u32>,
        native: Option<&NativeSource<'_>>,
    ) -> Result<RocksDbBackend, StateError> {
        assert!(
            key_groups.end <= u32::from(u16::MAX) + 1,
            "max parallelism is validated to fit key groups in 16 bits"
        );
        let path = self.job_dir.join(format!("{operator}-{instance}"));
        let storage = |e: rocksdb::Error| StateError::Storage {
            path: path.clone(),
            message: e.into_string(),
        };
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks live in the bounded cache, partitioned so
        // that a lookup loads a 4 KiB partition, not a whole file's filter
        // (megabytes with millions of keys, reread and checksummed on every
        // cache miss otherwise); the small top level stays pinned.
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4 << 10);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Small blocks: a point lookup of a cold key reads and decompresses
        // one block, and keyed state is all point lookups.
        table.set_block_size(4 << 10);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_manager(&self.write_buffers);
        options.set_write_buffer_size(self.config.write_buffer_bytes);
        options.set_compression_type(DBCompressionType::Lz4);
        options.set_max_background_jobs(2);
        if path.exists() {
            // Left over from a process that was killed: its contents are
            // superseded by whatever the job restores from.
            DB::destroy(&options, &path).map_err(storage)?;
            let _ = std::fs::remove_dir_all(&path);
        }
        // So are frozen copies a killed process had not written yet.
        if let Ok(entries) = std::fs::read_dir(&self.job_dir) {
            let frozen = format!("{operator}-{instance}.frozen-");
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&frozen) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
        let guard = RemoveOnDrop(path.clone());
        let mut states = Vec::new();
        let mut stored = std::collections::HashMap::new();
        if let Some(native) = native {
            assert_eq!(
                native.key_groups, key_groups,
                "only exact ranges open natively"
            );
            materialize(native, &path)?;
            states = native.meta.states.clone();
            if self.config.checkpoint_shared_dir.as_deref() == Some(native.shared_dir) {
                for file in native.files {
                    stored.insert(file.local.clone(), file.shared.clone());
                }
            }
        }
        let db = DB::open(&options, &path).map_err(storage)?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(RocksDbBackend {
            db,
            _dir: guard,
            shared_prefix: format!("{operator}-{instance}-{:016x}", instance_nonce(&path)),
            path,
            write,
            key_groups,
            states,
            cache: ValueCache::default(),
            cache_budget: self.config.value_cache_bytes,
            key_buf: Vec::new(),
            snapshots: 0,
            incremental: self.config.incremental,
            stored: std::sync::Arc::new(std::sync::Mutex::new(stored)),
        })
    }
}

/// Different for every instance opened, in this process or any other.
fn instance_nonce(path: &Path) -> u64 {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut seed = Vec::new();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&crate::time::now_millis().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    seed.extend_from_slice(&nanos.to_le_bytes());
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    seed.extend_from_slice(&n.to_le_bytes());
    seed.extend_from_slice(path.as_os_str().as_encoded_bytes());
    hash(&seed)
}

/// A file-system error on the RocksDB files in `path`.
fn io(path: &Path, e: std::io::Error) -> StateError {
    StateError::Storage {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Lays the files of native state out in folder `dir`, as RocksDB wrote
/// them: metadata files from the blob, SST files linked (or copied) from
/// the shared folder.
fn materialize(native: &NativeSource<'_>, dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, bytes) in &native.meta.files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    }
    for file in native.files {
        let from = native.shared_dir.join(&file.shared.name);
        let to = dir.join(&file.local);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| io(&from, e))?;
        }
    }
    Ok(())
}

/// Visits the entries of key groups `key_groups` of an old instance's
/// native state, opened read-only from a scratch folder beside the shared
/// folder (so that its files can be linked, not copied).
pub fn visit_native<E: From<StateError>>(
    native: &NativeSource<'_>,
    key_groups: Range<u32>,
    visit: &mut dyn FnMut(u32, StateEntry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = native
        .shared_dir
        .with_file_name(format!(".restore-{}-{n}", std::process::id()));
    let _remove = RemoveOnDrop(dir.clone());
    let _ = std::fs::remove_dir_all(&dir);
    materialize(native, &dir)?;
    let db = DB::open_for_read_only(&Options::default(), &dir, false).map_err(|e| {
        StateError::Storage {
            path: dir.clone(),
            message: e.into_string(),
        }
    })?;
    for key_group in key_groups {
        let mut failed = None;
        visit_key_group(&db, &dir, &native.meta.states, key_group, &mut |e| {
            if failed.is_none()
                && let Err(e) = visit(key_group, e)
            {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Cached {
    db_key: Box<[u8]>,
    /// `None`: the key has no value (or had it removed).
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// Per-entry bookkeeping counted against the cache budget.
const CACHED_OVERHEAD: usize = 64;

#[derive(Default)]
struct ValueCache {
    entries: Vec<Cached>,
    index: HashTable<u32>,
    bytes: usize,
    dirty: usize,
    handles_out: bool,
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl ValueCache {
    fn find(&self, db_key: &[u8]) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(hash(db_key), |&i| &*entries[i as usize].db_key == db_key)
            .copied()
    }

    fn insert(&mut self, db_key: &[u8], value: Option<Vec<u8>>, dirty: bool) -> u32 {
        let at = self.entries.len() as u32;
        self.bytes += db_key.len() + value.as_ref().map_or(0, Vec::len) + CACHED_OVERHEAD;
        self.dirty += usize::from(dirty);
        self.entries.push(Cached {
            db_key: db_key.into(),
            value,
            dirty,
        });
        let entries = &self.entries;
        self.index
            .insert_unique(hash(db_key), at, |&i| hash(&entries[i as usize].db_key));
        at
    }

    fn set(&mut self, at: u32, value: Option<&[u8]>) {
        let entry = &mut self.entries[at as usize];
        let old = entry.value.as_ref().map_or(0, Vec::len);
        match (&mut entry.value, value) {
            (Some(v), Some(new)) => {
                v.clear();
                v.extend_from_slice(new);
            }
            (slot, new) => *slot = new.map(<[u8]>::to_vec),
        }
        self.bytes = self.bytes - old + value.map_or(0, <[u8]>::len);
        if !entry.dirty {
            entry.dirty = true;
            self.dirty += 1;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.bytes = 0;
        self.dirty = 0;
    }
}

pub struct RocksDbBackend {
    db: DB,
    /// Declared after `db` so the folder goes only once RocksDB closed it.
    _dir: RemoveOnDrop,
    path: PathBuf,
    write: WriteOptions,
    key_groups: Range<u32>,
    states: Vec<(String, StateKind)>,
    cache: ValueCache,
    cache_budget: usize,
    key_buf: Vec<u8>,
    /// Frozen copies made so far (for their folder names).
    snapshots: u64,
    /// Checkpoints hand over the frozen files ([`NativeCopy`]).
    incremental: bool,
    /// The SST files already in checkpoint storage.
    stored: SharedFiles,
    shared_prefix: String,
}

const PREFIX_LEN: usize = 8;

fn encode_key(out: &mut Vec<u8>, key_group: u32, id: StateId, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&(key_group as u16).to_be_bytes());
    out.extend_from_slice(&(id as u16).to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < u8::MAX {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // Unreachable for our keys: the leading key group is below 0x8000.
    vec![u8::MAX; prefix.len() + 1]
}

/// A stored key split into its parts.
struct DecodedKey<'a> {
    state: StateId,
    key: &'a [u8],
    suffix: &'a [u8],
}

fn decode_key(db_key: &[u8]) -> Option<DecodedKey<'_>> {
    let state = u16::from_be_bytes(db_key.get(2..4)?.try_into().ok()?);
    let len = u32::from_be_bytes(db_key.get(4..8)?.try_into().ok()?) as usize;
    let key = db_key.get(PREFIX_LEN..PREFIX_LEN + len)?;
    Some(DecodedKey {
        state: StateId::from(state),
        key,
        suffix: &db_key[PREFIX_LEN + len..],
    })
}

impl RocksDbBackend {
    fn storage(&self, e: rocksdb::Error) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    fn check(&self, id: StateId, key_group: u32, used: StateKind) -> Result<(), StateError> {
        if !self.key_groups.contains(&key_group) {
            return Err(StateError::KeyGroupNotOwned {
                key_group,
                owned: self.key_groups.clone(),
            });
        }
        let &(_, actual) = self
            .states
            .get(id as usize)
            .ok_or(StateError::UnknownState(id))?;
        if actual != used {
            return Err(StateError::WrongKind { id, actual, used });
        }
        Ok(())
    }

    /// Encodes the key into `key_buf` after checking the access.
    fn key(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        used: StateKind,
    ) -> Result<(), StateError> {
        self.check(id, key_group, used)?;
        encode_key(&mut self.key_buf, key_group, id, key);
        Ok(())
    }

    /// The cache entry of the key in `key_buf`, read from RocksDB on a miss.
    fn cached(&mut self) -> Result<u32, StateError> {
        if let Some(at) = self.cache.find(&self.key_buf) {
            return Ok(at);
        }
        let value = self
            .db
            .get_pinned(&self.key_buf)
            .map_err(|e| self.storage(e))?
            .map(|v| v.to_vec());
        Ok(self.cache.insert(&self.key_buf, value, false))
    }

    fn flush_cache(&mut self) -> Result<(), StateError> {
        if self.cache.dirty == 0 {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for entry in self.cache.entries.iter_mut().filter(|e| e.dirty) {
            match &entry.value {
                Some(v) => batch.put(&entry.db_key, v),
                None => batch.delete(&entry.db_key),
            }
            entry.dirty = false;
        }
        self.cache.dirty = 0;
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| self.storage(e))
    }

    fn evict_if_full(&mut self) -> Result<(), StateError> {
        if self.cache.handles_out || self.cache.bytes <= self.cache_budget {
            return Ok(());
        }
        self.flush_cache()?;
        self.cache.clear();
        Ok(())
    }

    fn iterate(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(prefix_end(prefix));
        // A snapshot or a list read touches each block once: keep it out of
        // the cache the hot keys live in.
        read.fill_cache(false);
        let mut it: DBRawIterator<'_> = self.db.raw_iterator_opt(read);
        it.seek(prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            visit(k, v)?;
            it.next();
        }
        it.status().map_err(|e| self.storage(e))
    }

    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(prefix, &prefix_end(prefix)[..]);
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| self.storage(e))
    }

    /// Bytes of state on disk and in memtables, for reports.
    pub fn approximate_bytes(&self) -> u64 {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        property("rocksdb.total-sst-files-size") + property("rocksdb.cur-size-all-mem-tables")
    }
}

impl StateBackend for RocksDbBackend {
    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(i) = self.states.iter().position(|(n, _)| n == name) {
            let existing = self.states[i].1;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(i as StateId);
        }
        if self.states.len() > usize::from(u16::MAX) {
            return Err(StateError::TooManyStates);
        }
        self.states.push((name.to_owned(), kind));
        Ok((self.states.len() - 1) as StateId)
    }

    fn key_groups(&self) -> Range<u32> {
        self.key_groups.clone()
    }

    fn value_get_into(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, StateError> {
        self.key(id, key_group, key, StateKind::Value)?;
        let at = self.cached()?;
        let found = match &self.cache.entries[at as usize].value {
            Some(v) => {
                out.extend_from_slice(v);
                true
            }
            None => false,
        };
        self.evict_if_full()?;
        Ok(found)
    }

    fn value_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::Value)?;
        match self.cache.find(&self.key_buf) {
            Some(at) => self.cache.set(at, Some(value)),
            None => {
                // No read needed: the write replaces whatever is stored.
                self.cache.insert(&self.key_buf, Some(value.to_vec()), true);
            }
        }
        self.evict_if_full()
    }

    fn value_remove(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::Value)?;
        match self.cache.find(&self.key_buf) {
            Some(at) => self.cache.set(at, None),
            None => {
                self.cache.insert(&self.key_buf, None, true);
            }
        }
        self.evict_if_full()
    }

    fn value_find(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Option<ValueHandle>, StateError> {
        self.key(id, key_group, key, StateKind::Value)?;
        let at = self.cached()?;
        self.cache.handles_out = true;
        Ok(self.cache.entries[at as usize]
            .value
            .is_some()
            .then_some(ValueHandle(at)))
    }

    fn value_read(&self, id: StateId, handle: ValueHandle) -> Result<&[u8], StateError> {
        let stale = StateError::StaleHandle {
            id,
            handle: handle.0,
        };
        let entry = self.cache.entries.get(handle.0 as usize).ok_or(stale)?;
        match (&entry.value, decode_key(&entry.db_key)) {
            (Some(v), Some(k)) if k.state == id => Ok(v),
            _ => Err(StateError::StaleHandle {
                id,
                handle: handle.0,
            }),
        }
    }

    fn value_write(
        &mut self,
        id: StateId,
        handle: ValueHandle,
        value: Option<&[u8]>,
    ) -> Result<(), StateError> {
        self.value_read(id, handle)?;
        self.cache.set(handle.0, value);
        Ok(())
    }

    fn release_handles(&mut self) -> Result<(), StateError> {
        self.cache.handles_out = false;
        self.evict_if_full()
    }

    fn prepare_snapshot(&mut self) -> Result<(), StateError> {
        self.flush_cache()
    }

    fn map_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        self.key(id, key_group, key, StateKind::Map)?;
        self.key_buf.extend_from_slice(map_key);
        let value = self
            .db
            .get_pinned(&self.key_buf)
            .map_err(|e| self.storage(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn map_put(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::Map)?;
        self.key_buf.extend_from_slice(map_key);
        self.db
            .put_opt(&self.key_buf, value, &self.write)
            .map_err(|e| self.storage(e))
    }

    fn map_remove(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        map_key: &[u8],
    ) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::Map)?;
        self.key_buf.extend_from_slice(map_key);
        self.db
            .delete_opt(&self.key_buf, &self.write)
            .map_err(|e| self.storage(e))
    }

    fn map_entries(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<MapEntries, StateError> {
        self.key(id, key_group, key, StateKind::Map)?;
        let prefix_len = self.key_buf.len();
        let mut entries = Vec::new();
        self.iterate(&self.key_buf, |k, v| {
            entries.push((k[prefix_len..].to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(entries)
    }

    fn map_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::Map)?;
        self.delete_prefix(&self.key_buf)
    }

    fn list_get(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError> {
        self.key(id, key_group, key, StateKind::List)?;
        let mut items = Vec::new();
        self.iterate(&self.key_buf, |_, v| {
            items.push(v.to_vec());
            Ok(())
        })?;
        Ok(items)
    }

    fn list_append(
        &mut self,
        id: StateId,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::List)?;
        let prefix_len = self.key_buf.len();
        // The last item's sequence number: the greatest key below prefix+max.
        self.key_buf.extend_from_slice(&u64::MAX.to_be_bytes());
        let next = {
            let mut it = self.db.raw_iterator();
            it.seek_for_prev(&self.key_buf);
            let last = it
                .key()
                .filter(|k| {
                    k.len() == prefix_len + 8 && k[..prefix_len] == self.key_buf[..prefix_len]
                })
                .map(|k| u64::from_be_bytes(k[prefix_len..].try_into().expect("8 bytes")));
            it.status().map_err(|e| self.storage(e))?;
            last.map_or(0, |seq| seq + 1)
        };
        self.key_buf.truncate(prefix_len);
        self.key_buf.extend_from_slice(&next.to_be_bytes());
        self.db
            .put_opt(&self.key_buf, value, &self.write)
            .map_err(|e| self.storage(e))
    }

    fn list_clear(&mut self, id: StateId, key_group: u32, key: &[u8]) -> Result<(), StateError> {
        self.key(id, key_group, key, StateKind::List)?;
        self.delete_prefix(&self.key_buf)
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
        if self.cache.dirty > 0 {
            return Err(StateError::UnflushedWrites(self.cache.dirty));
        }
        visit_key_group(&self.db, &self.path, &self.states, key_group, visit)
    }

    /// A RocksDB checkpoint of the instance (hard links to its immutable
    /// files, after its cached writes and memtables are flushed) is the
    /// frozen copy. The checkpoint writer either takes its files as they
    /// are (incremental) or reads it into entries; then it is deleted.
    fn snapshot_later(&mut self, incremental: bool) -> Result<Option<Deferred>, StateError> {
        self.flush_cache()?;
        self.snapshots += 1;
        let frozen = frozen_dir(&self.path, self.snapshots);
        let _ = std::fs::remove_dir_all(&frozen);
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&frozen))
            .map_err(|e| self.storage(e))?;
        let states = self.states.clone();
        let key_groups = self.key_groups.clone();
        if incremental && self.incremental {
            let stored = self.stored.clone();
            let shared_prefix = self.shared_prefix.clone();
            return Ok(Some(Box::new(move |out: &mut KeyedSnapshot| {
                let mut copy = NativeCopy {
                    frozen,
                    key_groups,
                    meta: Vec::new(),
                    sst_files: Vec::new(),
                    stored,
                    shared_prefix,
                    files: Vec::new(),
                };
                let mut meta_files = Vec::new();
                let entries = std::fs::read_dir(&copy.frozen).map_err(|e| io(&copy.frozen, e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| io(&copy.frozen, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".sst") {
                        copy.sst_files.push(name);
                    } else {
                        let bytes =
                            std::fs::read(entry.path()).map_err(|e| io(&entry.path(), e))?;
                        meta_files.push((name, bytes));
                    }
                }
                copy.sst_files.sort();
                meta_files.sort();
                copy.meta = encode_native_meta(&states, &meta_files);
                out.set_native(copy);
                Ok(())
            })));
        }
        Ok(Some(Box::new(move |out: &mut KeyedSnapshot| {
            let _remove = RemoveOnDrop(frozen.clone());
            let db = DB::open_for_read_only(&Options::default(), &frozen, false).map_err(|e| {
                StateError::Storage {
                    path: frozen.clone(),
                    message: e.into_string(),
                }
            })?;
            let mut failed = None;
            for key_group in key_groups {
                visit_key_group(&db, &frozen, &states, key_group, &mut |e| {
                    if let Err(e) = out.push_state(key_group, e) {
                        failed.get_or_insert(e);
                    }
                })?;
            }
            failed.map_or(Ok(()), Err)
        })))
    }
}

/// Where frozen copy `n` of the instance in `path` goes.
fn frozen_dir(path: &Path, n: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".frozen-{n}"));
    path.with_file_name(name)
}

/// Visits every entry of one key group of `db`.
fn visit_key_group(
    db: &DB,
    path: &Path,
    states: &[(String, StateKind)],
    key_group: u32,
    visit: &mut dyn FnMut(StateEntry<'_>),
) -> Result<(), StateError> {
    let storage = |message: String| StateError::Storage {
        path: path.to_owned(),
        message,
    };
    let prefix = (key_group as u16).to_be_bytes();
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound(prefix_end(&prefix));
    // A snapshot touches each block once: keep it out of the cache the hot
    // keys live in.
    read.fill_cache(false);
    let mut it: DBRawIterator<'_> = db.raw_iterator_opt(read);
    it.seek(prefix);
    while let (Some(db_key), Some(value)) = (it.key(), it.value()) {
        let corrupt = || storage(format!("undecodable key {}", hex::encode(db_key)));
        let k = decode_key(db_key).ok_or_else(corrupt)?;
        let (state, kind) = states.get(k.state as usize).ok_or_else(corrupt)?;
        let state = state.as_str();
        visit(match kind {
            StateKind::Value => StateEntry::Value {
                state,
                key: k.key,
                value,
            },
            StateKind::Map => StateEntry::MapEntry {
                state,
                key: k.key,
                map_key: k.suffix,
                value,
            },
            StateKind::List => StateEntry::ListItem {
                state,
                key: k.key,
                value,
            },
        });
        it.next();
    }
    it.status().map_err(|e| storage(e.into_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn shared(dir: &Path, value_cache_bytes: usize) -> RocksDbShared {
        RocksDbShared::new(
            RocksDbConfig {
                dir: dir.to_owned(),
                block_cache_bytes: 8 << 20,
                write_buffer_bytes: 1 << 20,
                value_cache_bytes,
                incremental: true,
                checkpoint_shared_dir: None,
            },
            "test",
        )
    }

    #[test]
    fn a_snapshot_is_frozen_at_the_barrier_and_written_later() {
        let dir = std::env::temp_dir().join(format!("weir-rocks-frozen-{}", std::process::id()));
        let shared = shared(&dir, 1 << 20);
        let mut b = shared.open("op", 0, 0..4).unwrap();
        let v = b.register("v", StateKind::Value).unwrap();
        b.value_put(v, 1, b"k", b"1").unwrap();
        let mut snap = KeyedSnapshot::new(0..4);
        snap.add_backend(&mut b).unwrap();
        assert!(snap.is_deferred(), "rocksdb freezes instead of copying");
        // Writes after the barrier are not in the snapshot.
        b.value_put(v, 1, b"k", b"2").unwrap();
        b.value_put(v, 2, b"other", b"3").unwrap();
        b.prepare_snapshot().unwrap();
        let frozen: Vec<_> = std::fs::read_dir(dir.join("test"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".frozen-"))
            .collect();
        assert_eq!(frozen.len(), 1, "one frozen copy until it is written");
        snap.complete().unwrap();
        let sections: Vec<(u32, Vec<u8>)> = snap.sections().map(|(g, s)| (g, s.to_vec())).collect();
        assert_eq!(
            sections.len(),
            1,
            "only key group 1 had state at the barrier"
        );
        let mut values = Vec::new();
        crate::state::snapshot::decode::<crate::state::snapshot::SnapshotError>(
            &sections[0].1,
            &mut |e| {
                if let crate::state::snapshot::SnapshotEntry::State(StateEntry::Value {
                    value,
                    ..
                }) = e
                {
                    values.push(value.to_vec());
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(values, vec![b"1".to_vec()]);
        assert!(
            !std::fs::read_dir(dir.join("test"))
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(".frozen-")),
            "the frozen copy is deleted once written"
        );
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_incremental_snapshot_stores_each_file_once_and_opens_again_as_files() {
        let dir = std::env::temp_dir().join(format!("weir-rocks-native-{}", std::process::id()));
        let shared = shared(&dir, 1 << 20);
        let store = crate::checkpoint::CheckpointStore::new(&dir.join("ck"), "test");
        let mut b = shared.open("op", 0, 0..4).unwrap();
        let v = b.register("v", StateKind::Value).unwrap();
        let l = b.register("l", StateKind::List).unwrap();
        let snapshot = |b: &mut RocksDbBackend| {
            let mut snap = KeyedSnapshot::incremental(0..4);
            snap.add_backend(b).unwrap();
            snap.complete().unwrap();
            store
                .put_native(snap.native_mut().expect("native"))
                .unwrap();
            snap
        };
        b.value_put(v, 1, b"k1", b"one").unwrap();
        b.list_append(l, 3, b"k3", b"a").unwrap();
        let first = snapshot(&mut b);
        b.value_put(v, 2, b"k2", b"two").unwrap();
        let second = snapshot(&mut b);
        let (first, second) = (first.native().unwrap(), second.native().unwrap());
        assert_eq!(first.files.len(), 1);
        assert_eq!(second.files.len(), 2, "one new file beside the old one");
        assert!(
            second.files.contains(&first.files[0]),
            "the old file is listed again, not stored again"
        );

        // Open the second snapshot's files as a new instance; the states
        // keep their ids even if registered in another order.
        let meta = crate::state::snapshot::decode_native_meta(&second.meta).unwrap();
        let shared_dir = store.shared_dir();
        let source = NativeSource {
            key_groups: 0..4,
            meta,
            shared_dir: &shared_dir,
            files: &second.files,
        };
        let mut restored = shared.open_from("op", 1, 0..4, Some(&source)).unwrap();
        let l2 = restored.register("l", StateKind::List).unwrap();
        let v2 = restored.register("v", StateKind::Value).unwrap();
        let mut out = Vec::new();
        assert!(restored.value_get_into(v2, 2, b"k2", &mut out).unwrap());
        assert_eq!(out, b"two");
        assert_eq!(
            restored.list_get(l2, 3, b"k3").unwrap(),
            vec![b"a".to_vec()]
        );

        // Checkpointed again: files restored from another job's folder are
        // stored anew, ones from this job's folder are listed as they are.
        let elsewhere = snapshot(&mut restored);
        assert!(
            (elsewhere.native().unwrap().files.iter()).all(|f| !second.files.contains(f)),
            "stored again under new names"
        );
        let same_job = RocksDbShared::new(
            RocksDbConfig {
                dir: dir.clone(),
                block_cache_bytes: 8 << 20,
                write_buffer_bytes: 1 << 20,
                value_cache_bytes: 1 << 20,
                incremental: true,
                checkpoint_shared_dir: Some(shared_dir.clone()),
            },
            "test",
        );
        let mut reopened = same_job.open_from("op", 2, 0..4, Some(&source)).unwrap();
        let again = snapshot(&mut reopened);
        assert_eq!(again.native().unwrap().files, second.files);
        drop((again, elsewhere, reopened));

        // Read by key group, as a rescaled restore does.
        let mut seen = Vec::new();
        visit_native::<StateError>(&source, 1..3, &mut |kg, e| {
            seen.push((kg, format!("{e:?}")));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|(kg, _)| (1..3).contains(kg)));
        drop((b, restored));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tiny_value_cache_still_keeps_every_write_and_handles_stay_valid() {
        let dir = std::env::temp_dir().join(format!("weir-rocks-{}", std::process::id()));
        let shared = shared(&dir, 256);
        let mut b = shared.open("op", 0, 0..4).unwrap();
        let v = b.register("v", StateKind::Value).unwrap();
        for i in 0u32..1000 {
            b.value_put(v, i % 4, &i.to_le_bytes(), &(i * 2).to_le_bytes())
                .unwrap();
        }
        let h = b.value_find(v, 1, &1u32.to_le_bytes()).unwrap().unwrap();
        // Puts while a handle is out never evict the entry it points at.
        for i in 1000u32..2000 {
            b.value_put(v, i % 4, &i.to_le_bytes(), b"x").unwrap();
        }
        assert_eq!(b.value_read(v, h).unwrap(), 2u32.to_le_bytes());
        b.value_write(v, h, Some(b"one")).unwrap();
        b.release_handles().unwrap();
        let mut out = Vec::new();
        assert!(
            b.value_get_into(v, 1, &1u32.to_le_bytes(), &mut out)
                .unwrap()
        );
        assert_eq!(out, b"one");
        b.value_remove(v, 2, &2u32.to_le_bytes()).unwrap();
        assert!(matches!(
            b.for_each_in_key_group(0, &mut |_| {}),
            Err(StateError::UnflushedWrites(_))
        ));
        b.prepare_snapshot().unwrap();
        let mut count = 0;
        for g in 0..4 {
            b.for_each_in_key_group(g, &mut |_| count += 1).unwrap();
        }
        assert_eq!(count, 1999);
        drop(b);
        assert!(!dir.join("test/op-0").exists(), "working files are removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
