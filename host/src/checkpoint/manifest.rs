//! The manifest of a checkpoint (`manifest.json`) and the task state files
//! it lists.
//!
//! A checkpoint folder holds one state file per task that has keyed state
//! (`task-<group>-<instance>.state`) and the manifest, written last. The
//! manifest carries a format version, the size and SHA-256 of every file,
//! and per task: its operators, watermark, source split positions, the sink
//! parts to commit, and where each key group's section of each operator
//! lies in its state file. A state file is the magic `WEIRST01` followed by
//! the sections (see [`crate::state::snapshot`]) back to back.
//!
//! An operator instance checkpointed incrementally (RocksDB) also has a
//! [`NativeState`]: its native meta blob in the state file and its SST
//! files, which live in the job's `shared/` folder beside the checkpoints
//! and are listed, with size and SHA-256, by every checkpoint that uses
//! them. Such a manifest has format 2; one without native state keeps
//! format 1, so savepoints (always full) stay readable by older builds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::connectors::SplitPosition;
use crate::state::snapshot::KeyedSnapshot;

/// The format of a manifest without native state.
pub const FORMAT_VERSION: u32 = 1;
/// The format of a manifest with native state (incremental checkpoints).
pub const FORMAT_VERSION_NATIVE: u32 = 2;
/// The folder beside the checkpoints that holds their shared files.
pub const SHARED_DIR: &str = "shared";
pub const STATE_FILE_MAGIC: &[u8; 8] = b"WEIRST01";
pub const MANIFEST: &str = "manifest.json";
/// The manifest written before a checkpoint's Kafka transactions are
/// committed: the checkpoint is in doubt until `manifest.json` follows.
pub const PREPARED_MANIFEST: &str = "manifest.prepared.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestKind {
    Checkpoint,
    Savepoint,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub job: String,
    pub checkpoint: u64,
    pub kind: ManifestKind,
    /// Every task had finished: the job ran to its end.
    pub finished: bool,
    pub created_ms: i64,
    pub max_parallelism: u32,
    /// Splits of the job's `source`, fixed when the job first started.
    pub source_splits: u32,
    /// Splits of the job's named `sources`, likewise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_source_splits: BTreeMap<String, u32>,
    pub modules: Vec<ModuleVersion>,
    pub tasks: Vec<TaskSnapshot>,
    pub files: Vec<FileEntry>,
}

fn main_source() -> String {
    crate::graph::spec::MAIN_SOURCE.to_owned()
}

impl Manifest {
    /// The split count of source `name` when the job first started; `None`
    /// for a source the checkpoint does not know.
    pub fn split_count(&self, name: &str) -> Option<u32> {
        if name == crate::graph::spec::MAIN_SOURCE {
            Some(self.source_splits)
        } else {
            self.named_source_splits.get(name).copied()
        }
    }
}

/// The code an operator ran when the checkpoint was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleVersion {
    pub operator: String,
    /// Module name or path, or `native:<name>`.
    pub module: String,
    /// SHA-256 of the module's bytes (empty for native operators).
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One task's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub group: u32,
    pub instance: u32,
    /// The operators chained in the task, in order.
    pub operators: Vec<String>,
    pub watermark: i64,
    /// The task's input had ended: this is its final state.
    #[serde(default)]
    pub finished: bool,
    #[serde(default)]
    pub source: Option<SourceSnapshot>,
    #[serde(default)]
    pub sinks: Vec<SinkSnapshot>,
    #[serde(default)]
    pub state: Option<StateFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceSnapshot {
    /// Which of the job's sources (`source` or a key of `sources`).
    #[serde(default = "main_source")]
    pub name: String,
    pub positions: Vec<SplitPosition>,
    /// Highest event time the instance's watermark generator had seen.
    pub max_timestamp: i64,
}

/// Pre-committed output of one sink instance, committed with the checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkSnapshot {
    /// `main`, or `<operator>.<side output>`.
    pub sink: String,
    pub pending: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub file: String,
    pub operators: Vec<OperatorSections>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorSections {
    pub operator: String,
    /// The key groups the instance owned, `[start, end)`.
    pub key_groups: [u32; 2],
    /// `[key group, offset, length]` of each non-empty section in the file.
    pub sections: Vec<[u64; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeState>,
}

/// An operator instance's state as its RocksDB files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NativeState {
    /// `[offset, length]` of the native meta blob in the state file.
    pub meta: [u64; 2],
    pub files: Vec<NativeFile>,
}

/// One SST file of a native state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeFile {
    /// Its name in the instance's folder (RocksDB's metadata refers to it).
    pub local: String,
    /// Its name, size and checksum in the shared folder.
    pub shared: FileEntry,
}

impl Manifest {
    /// Names of the shared files this checkpoint uses.
    pub fn shared_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.tasks
            .iter()
            .filter_map(|t| t.state.as_ref())
            .flat_map(|s| s.operators.iter())
            .filter_map(|o| o.native.as_ref())
            .flat_map(|n| n.files.iter().map(|f| &f.shared))
    }
}

/// Lays the operators' snapshots out as one state file; `None` when no
/// operator has any state.
pub fn encode_state_file(
    file: String,
    operators: &[(String, std::ops::Range<u32>, KeyedSnapshot)],
) -> Option<(Vec<u8>, StateFile)> {
    let mut bytes = STATE_FILE_MAGIC.to_vec();
    let mut index = Vec::new();
    for (name, key_groups, snapshot) in operators {
        let mut sections = Vec::new();
        for (kg, section) in snapshot.sections() {
            sections.push([u64::from(kg), bytes.len() as u64, section.len() as u64]);
            bytes.extend_from_slice(section);
        }
        let native = snapshot.native().map(|copy| {
            let meta = [bytes.len() as u64, copy.meta.len() as u64];
            bytes.extend_from_slice(&copy.meta);
            NativeState {
                meta,
                files: copy.files.clone(),
            }
        });
        if !sections.is_empty() || native.is_some() {
            index.push(OperatorSections {
                operator: name.clone(),
                key_groups: [key_groups.start, key_groups.end],
                sections,
                native,
            });
        }
    }
    if index.is_empty() {
        return None;
    }
    Some((
        bytes,
        StateFile {
            file,
            operators: index,
        },
    ))
}
