//! Where checkpoints live, and reading one back.
//!
//! Layout: `<dir>/<job>/chk-<id>/` per checkpoint, with its state files and
//! `manifest.json`. A folder without a manifest is a checkpoint that never
//! completed and is deleted when a job starts. Every file is written with
//! fsync; the manifest goes to a temporary name first and is renamed into
//! place, so it is either absent or whole.
//!
//! Loading verifies the format version and the size and SHA-256 of every
//! file before anything is restored; [`CheckpointStore::latest_usable`]
//! falls back to the previous complete checkpoint when the newest is
//! corrupt, and reports what it skipped and why.
//!
//! With an object store behind it ([`super::remote`]), the local folder is
//! the staging copy: every file is uploaded after it is written locally,
//! the manifest last, and the object store is what lists, completes and
//! restores checkpoints.
//!
//! Incremental checkpoints keep SST files in `<dir>/<job>/shared/`, each
//! stored once and listed by every checkpoint that uses it. A shared file
//! is deleted when the last retained checkpoint that lists it is pruned;
//! files no complete checkpoint lists (left by an aborted checkpoint) are
//! deleted when the next run of the job starts, before anything is in
//! flight. Restoring uses the local copy of each shared file when its size
//! and checksum match (local recovery) and downloads it otherwise.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::manifest::{
    FORMAT_VERSION, FORMAT_VERSION_NATIVE, FileEntry, MANIFEST, Manifest, ManifestKind,
    PREPARED_MANIFEST, SHARED_DIR, STATE_FILE_MAGIC,
};
use super::remote::Remote;
use super::{CheckpointError, CheckpointId, io_error};
use crate::connectors::{RestoredSplits, SplitPosition};
use crate::runtime::operator::{FailureKind, InstanceInfo, Operator, OperatorError};
use crate::state::snapshot::{NativeCopy, NativeSource, decode, decode_native_meta};

/// The checkpoints of one job.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    /// The local folder: the checkpoints themselves, or the staging copy of
    /// the remote ones.
    root: PathBuf,
    remote: Option<Arc<Remote>>,
}

/// Writes `bytes` to `dir/name` durably; returns its manifest entry.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileEntry, CheckpointError> {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).map_err(io_error(&path))?;
    file.write_all(bytes).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))?;
    Ok(FileEntry {
        name: name.to_owned(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// Size and SHA-256 of a file, read in pieces (shared files can be large).
fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether the file at `path` is the one `entry` describes.
fn matches(path: &Path, entry: &FileEntry) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == entry.size)
        && file_digest(path).is_ok_and(|(_, sha)| sha == entry.sha256)
}

/// A shared file's name may not leave the shared folder.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.contains("..")
}

/// Writes the manifest last and atomically: the checkpoint is complete once
/// this returns. Returns the bytes written.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<Vec<u8>, CheckpointError> {
    let json = serde_json::to_vec_pretty(manifest).expect("manifests serialize");
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(&json).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    let path = dir.join(MANIFEST);
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    // The rename is durable only once the folder is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(json)
}

/// True for `s3://...` checkpoint locations.
pub fn is_remote(dir: &Path) -> bool {
    dir.to_str().is_some_and(|d| d.starts_with("s3://"))
}

impl CheckpointStore {
    /// Checkpoints in a local folder.
    pub fn new(dir: &Path, job: &str) -> Self {
        CheckpointStore {
            root: dir.join(job),
            remote: None,
        }
    }

    /// Checkpoints in `dir`, a folder or `s3://bucket/prefix`; remote ones
    /// are staged in `local_dir`.
    pub fn open(dir: &Path, local_dir: &Path, job: &str) -> Result<Self, CheckpointError> {
        if !is_remote(dir) {
            return Ok(Self::new(dir, job));
        }
        let url = dir.to_str().expect("checked by is_remote");
        Ok(CheckpointStore {
            root: local_dir.join(job),
            remote: Some(Arc::new(Remote::new(url, job)?)),
        })
    }

    /// `chk-N/name` for a path below the root.
    fn relative(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        Some(
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    /// Writes a checkpoint file durably, and uploads it when the store is
    /// remote and the folder is one of its checkpoints.
    pub fn put_file(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
    ) -> Result<FileEntry, CheckpointError> {
        let entry = write_file(dir, name, bytes)?;
        if let (Some(remote), Some(rel)) = (&self.remote, self.relative(&dir.join(name))) {
            remote.put(&rel, bytes.to_vec())?;
        }
        Ok(entry)
    }

    /// Writes (and uploads) the manifest: the checkpoint is complete after.
    pub fn put_manifest(&self, dir: &Path, manifest: &Manifest) -> Result<(), CheckpointError> {
        let json = write_manifest(dir, manifest)?;
        if let (Some(remote), Some(rel)) = (&self.remote, self.relative(&dir.join(MANIFEST))) {
            remote.put(&rel, json)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local folder of shared files (or their staging copy).
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join(SHARED_DIR)
    }

    /// Stores the SST files of a frozen RocksDB instance that are not
    /// stored yet and lists all of them in `copy.files`.
    pub fn put_native(&self, copy: &mut NativeCopy) -> Result<(), CheckpointError> {
        let shared = self.shared_dir();
        std::fs::create_dir_all(&shared).map_err(io_error(&shared))?;
        let stored = copy.stored.clone();
        let mut stored = stored.lock().expect("shared files lock");
        copy.files.clear();
        for local in &copy.sst_files {
            let entry = match stored.get(local) {
                Some(entry) => entry.clone(),
                None => {
                    let name = format!("{}-{local}", copy.shared_prefix);
                    let entry = self.put_shared(&copy.frozen.join(local), &name)?;
                    stored.insert(local.clone(), entry.clone());
                    entry
                }
            };
            copy.files.push(super::manifest::NativeFile {
                local: local.clone(),
                shared: entry,
            });
        }
        Ok(())
    }

    /// Puts the immutable file `src` into the shared folder as `name`: a
    /// hard link where the folders share a file system, else a copy.
    fn put_shared(&self, src: &Path, name: &str) -> Result<FileEntry, CheckpointError> {
        let target = self.shared_dir().join(name);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(src, &target).is_err() {
            std::fs::copy(src, &target).map_err(io_error(&target))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&target))?;
        }
        let (size, sha256) = file_digest(&target).map_err(io_error(&target))?;
        if let Some(remote) = &self.remote {
            let bytes = std::fs::read(&target).map_err(io_error(&target))?;
            remote.put(&format!("{SHARED_DIR}/{name}"), bytes)?;
        }
        Ok(FileEntry {
            name: name.to_owned(),
            size,
            sha256,
        })
    }

    /// The manifest of complete checkpoint `id`, from the local copy or
    /// the object store.
    fn manifest(&self, id: CheckpointId) -> Result<Option<Manifest>, CheckpointError> {
        let dir = self.checkpoint_dir(id);
        let bytes = match std::fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => Some(bytes),
            Err(_) => match &self.remote {
                Some(remote) => remote.get(&format!("chk-{id:010}/{MANIFEST}"))?,
                None => None,
            },
        };
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Names of the shared files the given checkpoints list.
    fn shared_in(&self, ids: &[CheckpointId]) -> Result<BTreeSet<String>, CheckpointError> {
        let mut names = BTreeSet::new();
        for &id in ids {
            if let Some(m) = self.manifest(id)? {
                names.extend(m.shared_files().map(|f| f.name.clone()));
            }
        }
        Ok(names)
    }

    fn delete_shared(&self, name: &str) {
        let _ = std::fs::remove_file(self.shared_dir().join(name));
        if let Some(remote) = &self.remote
            && let Err(e) = remote.delete(&format!("{SHARED_DIR}/{name}"))
        {
            tracing::warn!(error = %e, "cannot delete a shared checkpoint file");
        }
    }

    /// Deletes every shared file that no complete checkpoint lists. Only
    /// while no checkpoint is in flight: an unfinished one's new files are
    /// not listed anywhere yet.
    pub fn remove_unused_shared(&self) -> Result<(), CheckpointError> {
        let used = self.shared_in(&self.complete()?)?;
        let mut present: BTreeSet<String> = match std::fs::read_dir(self.shared_dir()) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        if let Some(remote) = &self.remote {
            present.extend(remote.files(SHARED_DIR)?);
        }
        for name in present.difference(&used) {
            self.delete_shared(name);
        }
        Ok(())
    }

    pub fn checkpoint_dir(&self, id: CheckpointId) -> PathBuf {
        self.root.join(format!("chk-{id:010}"))
    }

    /// Ids of checkpoint folders, ascending, with whether each is complete.
    fn ids(&self) -> Result<Vec<(CheckpointId, bool)>, CheckpointError> {
        if let Some(remote) = &self.remote {
            let mut ids = Vec::new();
            for folder in remote.folders()? {
                if let Some(id) = folder
                    .strip_prefix("chk-")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    ids.push((id, remote.exists(&format!("{folder}/{MANIFEST}"))?));
                }
            }
            ids.sort_unstable();
            return Ok(ids);
        }
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&self.root))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("chk-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push((id, entry.path().join(MANIFEST).is_file()));
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The id the next checkpoint takes: above every id ever used here.
    pub fn next_id(&self) -> Result<CheckpointId, CheckpointError> {
        Ok(self.ids()?.last().map_or(1, |(id, _)| id + 1))
    }

    /// Ids of complete checkpoints, ascending.
    pub fn complete(&self) -> Result<Vec<CheckpointId>, CheckpointError> {
        Ok(self
            .ids()?
            .into_iter()
            .filter(|(_, complete)| *complete)
            .map(|(id, _)| id)
            .collect())
    }

    /// Creates the folder of a new checkpoint.
    pub fn begin(&self, id: CheckpointId) -> Result<PathBuf, CheckpointError> {
        let dir = self.checkpoint_dir(id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(dir)
    }

    pub fn discard(&self, id: CheckpointId) {
        let _ = std::fs::remove_dir_all(self.checkpoint_dir(id));
        if let Some(remote) = &self.remote
            && let Err(e) = remote.delete_folder(&format!("chk-{id:010}"))
        {
            tracing::warn!(error = %e, "cannot delete an old checkpoint");
        }
    }

    /// Loads checkpoint `id`: the local copy if it verifies (local
    /// recovery), else the remote one, downloaded into the local folder.
    pub fn load(&self, id: CheckpointId) -> Result<LoadedCheckpoint, CheckpointError> {
        let dir = self.checkpoint_dir(id);
        let local = LoadedCheckpoint::load(&dir);
        let Some(remote) = &self.remote else {
            return local;
        };
        if local.is_ok() {
            tracing::info!(checkpoint = id, "restoring from the intact local copy");
            return local;
        }
        download(remote, &format!("chk-{id:010}"), &dir)?;
        tracing::info!(checkpoint = id, from = %remote.url(), "downloaded checkpoint");
        LoadedCheckpoint::load(&dir)
    }

    /// Settles checkpoints left in doubt by a crash between their prepared
    /// manifest and their manifest (see [`crate::checkpoint`]): one whose
    /// Kafka transactions committed (its id is at most `committed`) is
    /// completed with its prepared manifest, any other is deleted, so the
    /// restore falls back to the one before and replays its output.
    pub fn settle_prepared(&self, committed: CheckpointId) -> Result<(), CheckpointError> {
        for (id, complete) in self.ids()? {
            if complete {
                continue;
            }
            let dir = self.checkpoint_dir(id);
            let relative = format!("chk-{id:010}/{PREPARED_MANIFEST}");
            let prepared = match std::fs::read(dir.join(PREPARED_MANIFEST)) {
                Ok(bytes) => Some(bytes),
                Err(_) => match &self.remote {
                    Some(remote) => remote.get(&relative)?,
                    None => None,
                },
            };
            let Some(prepared) = prepared else { continue };
            if id > committed {
                tracing::warn!(
                    checkpoint = id,
                    committed,
                    "a checkpoint's transactions did not commit before a crash: it is dropped and its output replayed"
                );
                self.discard(id);
                continue;
            }
            let manifest: Manifest =
                serde_json::from_slice(&prepared).map_err(|e| CheckpointError::Corrupt {
                    path: dir.clone(),
                    problem: format!("{PREPARED_MANIFEST} does not parse: {e}"),
                })?;
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            self.put_manifest(&dir, &manifest)?;
            tracing::info!(
                checkpoint = id,
                "a checkpoint's transactions committed before a crash: it is complete"
            );
        }
        Ok(())
    }

    /// Deletes folders of checkpoints that never completed.
    pub fn remove_incomplete(&self) -> Result<(), CheckpointError> {
        for (id, complete) in self.ids()? {
            if !complete {
                self.discard(id);
            }
        }
        Ok(())
    }

    /// Keeps the newest `retain` complete checkpoints, deletes the rest,
    /// and the shared files only they listed.
    pub fn prune(&self, retain: usize) -> Result<(), CheckpointError> {
        let complete = self.complete()?;
        let (old, kept) = complete.split_at(complete.len().saturating_sub(retain));
        let released = self.shared_in(old)?;
        for id in old {
            self.discard(*id);
        }
        if !released.is_empty() {
            let used = self.shared_in(kept)?;
            for name in released.difference(&used) {
                self.delete_shared(name);
            }
        }
        Ok(())
    }

    /// The newest complete checkpoint that verifies, and the newer ones
    /// skipped with the reason.
    pub fn latest_usable(
        &self,
    ) -> Result<(Option<LoadedCheckpoint>, Vec<CheckpointError>), CheckpointError> {
        let mut skipped = Vec::new();
        for id in self.complete()?.into_iter().rev() {
            match self.load(id) {
                Ok(c) => return Ok((Some(c), skipped)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a checkpoint that does not verify");
                    skipped.push(e);
                }
            }
        }
        Ok((None, skipped))
    }
}

/// Copies the checkpoint or savepoint in `folder` below the remote's root
/// into local folder `dir` (replacing it), the files its manifest lists and
/// the manifest; checksums are checked by the load that follows.
fn download(remote: &Remote, folder: &str, dir: &Path) -> Result<(), CheckpointError> {
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let missing = |what: &str| CheckpointError::Corrupt {
        path: dir.to_owned(),
        problem: format!("{what} is missing from {}/{folder}", remote.url()),
    };
    let manifest = remote
        .get(&format!("{prefix}{MANIFEST}"))?
        .ok_or_else(|| missing(MANIFEST))?;
    let parsed: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| CheckpointError::Corrupt {
            path: dir.to_owned(),
            problem: format!("{MANIFEST} does not parse: {e}"),
        })?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for file in &parsed.files {
        if file.name.contains('/') || file.name.contains("..") {
            return Err(CheckpointError::Corrupt {
                path: dir.to_owned(),
                problem: format!("file name `{}` leaves the folder", file.name),
            });
        }
        let bytes = remote
            .get(&format!("{prefix}{}", file.name))?
            .ok_or_else(|| missing(&file.name))?;
        write_file(dir, &file.name, &bytes)?;
    }
    // Shared files go beside the checkpoint folders, as the load expects;
    // the ones already there and intact are not downloaded again.
    let shared = dir.parent().unwrap_or(dir).join(SHARED_DIR);
    for file in parsed.shared_files() {
        if !safe_name(&file.name) {
            return Err(CheckpointError::Corrupt {
                path: dir.to_owned(),
                problem: format!("shared file name `{}` leaves its folder", file.name),
            });
        }
        if matches(&shared.join(&file.name), file) {
            continue;
        }
        let relative = format!("{SHARED_DIR}/{}", file.name);
        let bytes = remote
            .get(&relative)?
            .ok_or_else(|| CheckpointError::Corrupt {
                path: dir.to_owned(),
                problem: format!("{}/{relative} is missing", remote.url()),
            })?;
        std::fs::create_dir_all(&shared).map_err(io_error(&shared))?;
        write_file(&shared, &file.name, &bytes)?;
    }
    write_file(dir, MANIFEST, &manifest)?;
    Ok(())
}

/// A verified checkpoint or savepoint, its files in memory.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
    files: HashMap<String, Vec<u8>>,
    /// Where the shared files of native state are (verified by `load`).
    shared_dir: PathBuf,
}

impl LoadedCheckpoint {
    /// Reads and verifies a savepoint (or checkpoint) folder: a local one,
    /// or `s3://bucket/prefix/savepoint-...`, downloaded first into a local
    /// folder of the same name below the system's temp folder.
    pub fn open(location: &Path) -> Result<Self, CheckpointError> {
        if !is_remote(location) {
            return Self::load(location);
        }
        let url = location.to_string_lossy();
        let url = url.trim_end_matches('/');
        let remote = Remote::folder(url)?;
        let name = url.rsplit('/').next().unwrap_or("savepoint");
        let dir = std::env::temp_dir()
            .join("weir-savepoint-downloads")
            .join(name);
        download(&remote, "", &dir)?;
        tracing::info!(from = %url, to = %dir.display(), "downloaded savepoint");
        let mut loaded = Self::load(&dir)?;
        loaded.dir = location.to_owned();
        Ok(loaded)
    }

    /// Reads and verifies a checkpoint or savepoint folder.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let json = std::fs::read(dir.join(MANIFEST)).map_err(|e| CheckpointError::Corrupt {
            path: dir.to_owned(),
            problem: format!("cannot read {MANIFEST}: {e}"),
        })?;
        let loaded = Self::verify(dir, &json, &mut |name| std::fs::read(dir.join(name)))?;
        for file in loaded.manifest.shared_files() {
            let path = loaded.shared_dir.join(&file.name);
            let problem = match file_digest(&path) {
                Err(e) => format!("cannot read shared file `{}`: {e}", file.name),
                Ok((size, _)) if size != file.size => format!(
                    "shared file `{}` has {size} bytes, the manifest says {} (truncated?)",
                    file.name, file.size
                ),
                Ok((_, sha)) if sha != file.sha256 => {
                    format!("shared file `{}` does not match its checksum", file.name)
                }
                Ok(_) => continue,
            };
            return Err(CheckpointError::Corrupt {
                path: dir.to_owned(),
                problem,
            });
        }
        Ok(loaded)
    }

    /// Checks a manifest and the files it lists (read through `read_file`,
    /// by name) against each other: everything [`LoadedCheckpoint::load`]
    /// does but the reading, so untrusted bytes can be checked in memory.
    pub fn verify(
        dir: &Path,
        json: &[u8],
        read_file: &mut dyn FnMut(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, CheckpointError> {
        let corrupt = |problem: String| CheckpointError::Corrupt {
            path: dir.to_owned(),
            problem,
        };
        let manifest: Manifest = serde_json::from_slice(json)
            .map_err(|e| corrupt(format!("{MANIFEST} does not parse: {e}")))?;
        if manifest.format != FORMAT_VERSION && manifest.format != FORMAT_VERSION_NATIVE {
            return Err(CheckpointError::Incompatible {
                path: dir.to_owned(),
                problem: format!(
                    "format version {} (this build reads {FORMAT_VERSION} and {FORMAT_VERSION_NATIVE})",
                    manifest.format
                ),
            });
        }
        if let Some(file) = manifest.shared_files().next() {
            if manifest.kind == ManifestKind::Savepoint {
                return Err(corrupt(format!(
                    "a savepoint must hold all of its state, but it lists shared file `{}`",
                    file.name
                )));
            }
            if let Some(bad) = manifest.shared_files().find(|f| !safe_name(&f.name)) {
                return Err(corrupt(format!(
                    "shared file name `{}` leaves its folder",
                    bad.name
                )));
            }
        }
        let mut files = HashMap::new();
        for entry in &manifest.files {
            if entry.name.contains('/') || entry.name.contains("..") {
                return Err(corrupt(format!(
                    "file name `{}` leaves the folder",
                    entry.name
                )));
            }
            let bytes = read_file(&entry.name)
                .map_err(|e| corrupt(format!("cannot read file `{}`: {e}", entry.name)))?;
            if bytes.len() as u64 != entry.size {
                return Err(corrupt(format!(
                    "file `{}` has {} bytes, the manifest says {} (truncated?)",
                    entry.name,
                    bytes.len(),
                    entry.size
                )));
            }
            if hex::encode(Sha256::digest(&bytes)) != entry.sha256 {
                return Err(corrupt(format!(
                    "file `{}` does not match its checksum",
                    entry.name
                )));
            }
            if !bytes.starts_with(STATE_FILE_MAGIC) {
                return Err(corrupt(format!(
                    "file `{}` is not a state file",
                    entry.name
                )));
            }
            files.insert(entry.name.clone(), bytes);
        }
        for task in &manifest.tasks {
            if let Some(state) = &task.state {
                let Some(bytes) = files.get(&state.file) else {
                    return Err(corrupt(format!(
                        "task {}/{} names state file `{}`, which the manifest does not list",
                        task.group, task.instance, state.file
                    )));
                };
                let within = |offset: u64, len: u64| {
                    offset
                        .checked_add(len)
                        .is_some_and(|end| end <= bytes.len() as u64)
                };
                for op in &state.operators {
                    for &[_, offset, len] in &op.sections {
                        if !within(offset, len) {
                            return Err(corrupt(format!(
                                "a section of `{}` lies outside file `{}`",
                                op.operator, state.file
                            )));
                        }
                    }
                    if let Some(native) = &op.native {
                        let [offset, len] = native.meta;
                        if !within(offset, len) {
                            return Err(corrupt(format!(
                                "the native state of `{}` lies outside file `{}`",
                                op.operator, state.file
                            )));
                        }
                        let meta = &bytes[offset as usize..(offset + len) as usize];
                        if let Err(e) = decode_native_meta(meta) {
                            return Err(corrupt(format!(
                                "the native state of `{}` in `{}`: {e}",
                                op.operator, state.file
                            )));
                        }
                    }
                }
            }
        }
        Ok(LoadedCheckpoint {
            dir: dir.to_owned(),
            manifest,
            files,
            shared_dir: dir.parent().unwrap_or(dir).join(SHARED_DIR),
        })
    }

    /// The native state (RocksDB files) of every instance of `operator`.
    pub fn native_sources(&self, operator: &str) -> Vec<NativeSource<'_>> {
        let mut sources = Vec::new();
        for task in &self.manifest.tasks {
            let Some(state) = &task.state else { continue };
            let bytes = &self.files[&state.file];
            for op in state.operators.iter().filter(|o| o.operator == operator) {
                let Some(native) = &op.native else { continue };
                let [offset, len] = native.meta;
                let meta = &bytes[offset as usize..(offset + len) as usize];
                sources.push(NativeSource {
                    key_groups: op.key_groups[0]..op.key_groups[1],
                    meta: decode_native_meta(meta).expect("checked by verify"),
                    shared_dir: &self.shared_dir,
                    files: &native.files,
                });
            }
        }
        sources
    }

    /// The native state of `operator` that covers exactly `key_groups`, when
    /// one old instance held just those: it can be opened as it is.
    pub fn native_exact(
        &self,
        operator: &str,
        key_groups: &std::ops::Range<u32>,
    ) -> Option<NativeSource<'_>> {
        let mut overlapping = self
            .native_sources(operator)
            .into_iter()
            .filter(|s| s.key_groups.start < key_groups.end && key_groups.start < s.key_groups.end);
        let source = overlapping.next()?;
        (source.key_groups == *key_groups && overlapping.next().is_none()).then_some(source)
    }

    pub fn id(&self) -> CheckpointId {
        self.manifest.checkpoint
    }

    /// The splits of source `source` instance `instance` of `parallelism`
    /// reads on resuming.
    pub fn source_splits(&self, source: &str, instance: u32, parallelism: u32) -> RestoredSplits {
        let positions: Vec<SplitPosition> = self
            .manifest
            .tasks
            .iter()
            .filter_map(|t| t.source.as_ref())
            .filter(|s| s.name == source)
            .flat_map(|s| s.positions.iter())
            .filter(|p| p.split % parallelism == instance)
            .cloned()
            .collect();
        RestoredSplits {
            split_count: self.manifest.split_count(source).unwrap_or(parallelism),
            positions,
        }
    }

    /// Where the sources' watermark generators resume: the lowest of the
    /// saved ones, so no instance's watermark runs ahead of its records.
    pub fn source_max_timestamp(&self, source: &str) -> i64 {
        self.manifest
            .tasks
            .iter()
            .filter_map(|t| t.source.as_ref())
            .filter(|s| s.name == source)
            .map(|s| s.max_timestamp)
            .filter(|&t| t != i64::MIN)
            .min()
            .unwrap_or(i64::MIN)
    }

    /// The watermark a task running `operators` resumes at: the lowest
    /// saved watermark of any instance of any of them.
    pub fn watermark_for(&self, operators: &[String]) -> i64 {
        self.manifest
            .tasks
            .iter()
            .filter(|t| t.operators.iter().any(|o| operators.contains(o)))
            .map(|t| t.watermark)
            .min()
            .unwrap_or(i64::MIN)
    }

    /// Every part a sink had pre-committed.
    pub fn sink_pending(&self, sink: &str) -> Vec<PathBuf> {
        let mut parts: Vec<PathBuf> = self
            .manifest
            .tasks
            .iter()
            .flat_map(|t| t.sinks.iter())
            .filter(|s| s.sink == sink)
            .flat_map(|s| s.pending.iter().cloned())
            .collect();
        parts.sort();
        parts.dedup();
        parts
    }

    /// Feeds operator `info.operator`'s state for `info.key_groups`, from
    /// whichever old instances held it, into `op`; with `native_opened`,
    /// everything but the native state, which the operator's backend was
    /// opened from ([`LoadedCheckpoint::native_exact`]).
    pub fn restore_operator(
        &self,
        info: &InstanceInfo,
        op: &mut dyn Operator,
        native_opened: bool,
    ) -> Result<u64, OperatorError> {
        let owned = info.key_groups.clone();
        let mut entries = 0u64;
        for task in &self.manifest.tasks {
            let Some(state) = &task.state else { continue };
            let bytes = &self.files[&state.file];
            for sections in state
                .operators
                .iter()
                .filter(|o| o.operator == info.operator)
            {
                for &[kg, offset, len] in &sections.sections {
                    let kg = kg as u32;
                    if !owned.contains(&kg) {
                        continue;
                    }
                    let section = &bytes[offset as usize..(offset + len) as usize];
                    decode::<OperatorError>(section, &mut |entry| {
                        entries += 1;
                        op.restore(kg, entry)
                    })
                    .map_err(|e| {
                        if e.operator.is_empty() {
                            // A decoding error: name the operator and checkpoint.
                            OperatorError::new(
                                info,
                                FailureKind::Restore(format!(
                                    "{} (in {})",
                                    e.kind,
                                    self.dir.display()
                                )),
                            )
                        } else {
                            e
                        }
                    })?;
                }
            }
        }
        if native_opened {
            return Ok(entries);
        }
        for source in self.native_sources(&info.operator) {
            let range =
                source.key_groups.start.max(owned.start)..source.key_groups.end.min(owned.end);
            if range.is_empty() {
                continue;
            }
            crate::state::rocksdb::visit_native(&source, range, &mut |kg, entry| {
                entries += 1;
                Ok(op.restore(kg, crate::state::snapshot::SnapshotEntry::State(entry))?)
            })
            .map_err(|e| match e {
                NativeRestoreError::Operator(e) => e,
                NativeRestoreError::State(e) => OperatorError::new(
                    info,
                    FailureKind::Restore(format!("{e} (in {})", self.dir.display())),
                ),
            })?;
        }
        Ok(entries)
    }
}

/// Why reading native state back failed: the files, or the operator.
#[derive(Debug)]
pub enum NativeRestoreError {
    State(crate::state::StateError),
    Operator(OperatorError),
}

impl From<crate::state::StateError> for NativeRestoreError {
    fn from(e: crate::state::StateError) -> Self {
        NativeRestoreError::State(e)
    }
}

impl From<OperatorError> for NativeRestoreError {
    fn from(e: OperatorError) -> Self {
        NativeRestoreError::Operator(e)
    }
}

/// Decoding errors surface without an operator; `restore_operator` names it.
impl From<crate::state::snapshot::SnapshotError> for OperatorError {
    fn from(e: crate::state::snapshot::SnapshotError) -> Self {
        OperatorError {
            job: String::new(),
            operator: String::new(),
            instance: 0,
            kind: e.into(),
        }
    }
}
