//! Exactly-once snapshots of a running job: barriers, the coordinator, the
//! on-disk format, restoring.
//!
//! The protocol (asynchronous barrier snapshots, as in Flink):
//! 1. The [`coordinator::Coordinator`] triggers checkpoint `n` by handing a
//!    [`Barrier`] to every source task.
//! 2. A source task, between two batches, records its split positions and
//!    watermark generator, snapshots its chained operators and sends the
//!    barrier downstream after every record it emitted before it.
//! 3. A task with several inputs *aligns*: once an input has delivered
//!    barrier `n` its later events are held back until every input has
//!    delivered it (or ended); then the task snapshots and forwards the
//!    barrier, and replays what it held. So each task's snapshot reflects
//!    exactly the records before barrier `n` on every input.
//! 4. A task's snapshot is serialised in the task thread (memory state is
//!    copied out, which is the synchronous part) and written, checksummed
//!    and fsynced by a writer thread while the task goes on processing.
//! 5. When every task has acknowledged `n`, the coordinator writes the
//!    manifest (last, atomically): only then is `n` complete. Then the
//!    pre-committed output of sinks is committed, and old checkpoints are
//!    deleted beyond `retain`. Kafka transactions are the exception: they
//!    commit between a prepared manifest and the manifest, and a checkpoint
//!    left in doubt by a crash there is settled by what Kafka committed
//!    before anything is restored (see [`crate::connectors::kafka`]).
//!
//! Storage is a local folder, or S3-compatible object storage with a local
//! staging copy ([`remote`]). Savepoints go to a folder or to
//! `s3://bucket/prefix` (staged locally, uploaded manifest last).
//!
//! A task that has finished (its input ended) contributes its final
//! snapshot to every later checkpoint. Invariants: at most one checkpoint is
//! in flight; only a checkpoint with a manifest whose files all match their
//! checksums is ever restored.

pub mod coordinator;
pub mod history;
pub mod manifest;
pub mod remote;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;

pub use manifest::{Manifest, TaskSnapshot};
pub use storage::{CheckpointStore, LoadedCheckpoint};

pub type CheckpointId = u64;

/// What a barrier asks of the tasks it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierKind {
    Checkpoint,
    /// A savepoint; with `stop`, sources stop after it and tasks exit once
    /// it has passed them (stop-with-savepoint).
    Savepoint {
        stop: bool,
    },
}

/// The marker that separates the records before a snapshot from those after.
#[derive(Clone, Debug)]
pub struct Barrier {
    pub id: CheckpointId,
    pub kind: BarrierKind,
    /// The folder this checkpoint's files go to.
    pub dir: Arc<PathBuf>,
    /// A module swap that takes effect right after this barrier's snapshot:
    /// the checkpoint holds the old version's state, and every record after
    /// the barrier meets the new version.
    pub swap: Option<Arc<SwapOrder>>,
}

/// Replace an operator's module in the running tasks.
pub struct SwapOrder {
    pub operator: String,
    pub module: crate::wasm::WasmModule,
    /// The new version's `init` config (JSON bytes).
    pub config: Vec<u8>,
}

impl std::fmt::Debug for SwapOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapOrder")
            .field("operator", &self.operator)
            .field("module", &self.module.name)
            .field("digest", &self.module.digest)
            .finish()
    }
}

impl Barrier {
    pub fn stops(&self) -> bool {
        self.kind == BarrierKind::Savepoint { stop: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unusable: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("checkpoint {path} does not fit this job: {problem}")]
    Incompatible { path: PathBuf, problem: String },
    #[error("checkpoint {id} was aborted: {reason}")]
    Aborted { id: CheckpointId, reason: String },
    #[error("the job is not running")]
    NotRunning,
    #[error("{url}: {message}")]
    Remote { url: String, message: String },
    #[error("the snapshot of task {task} could not be written: {message}")]
    Snapshot { task: usize, message: String },
}

/// Ends the process abruptly at a named point of the checkpoint protocol
/// when the environment variable `WEIR_CRASH_AT` names it (`<point>`, or
/// `<point>@<n>` for checkpoint `n` or later): how the tests crash a run
/// exactly where a commit is in doubt.
pub(crate) fn crash_point(name: &str, checkpoint: CheckpointId) {
    static AT: std::sync::OnceLock<Option<(String, CheckpointId)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let spec = std::env::var("WEIR_CRASH_AT").ok()?;
        Some(match spec.split_once('@') {
            Some((point, n)) => (point.to_owned(), n.parse().unwrap_or(0)),
            None => (spec, 0),
        })
    });
    if let Some((point, from)) = at
        && point == name
        && checkpoint >= *from
    {
        eprintln!("crashing at `{name}` of checkpoint {checkpoint} (WEIR_CRASH_AT)");
        std::process::abort();
    }
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.into();
    move |source| CheckpointError::Io { path, source }
}
