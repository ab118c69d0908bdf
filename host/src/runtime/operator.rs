//! The operator interface every task drives, Wasm or native.
//!
//! An operator sees whole batches, owns its keyed state and timers, and
//! writes to an [`Output`]. [`Operator::process`] and [`Operator::restore`]
//! are required (the second so no stateful operator can forget it); the
//! watermark, processing-time and snapshot hooks default to doing nothing.
//!
//! Snapshot invariant: `snapshot` followed by `restore` of every entry into a
//! fresh instance (or into the instances that own the key groups after a
//! rescale) gives operators that behave identically from then on.

use std::ops::Range;

use crate::runtime::batch::RecordBatch;
use crate::state::StateError;
use crate::state::snapshot::{KeyedSnapshot, SnapshotEntry, SnapshotError};

/// Where an operator writes: the main output and one batch per declared
/// side output, in declaration order, and the input records it set aside as
/// poison (only when the job's `on_error` is not `fail`).
#[derive(Debug, Default)]
pub struct Output {
    pub main: RecordBatch,
    pub side: Vec<RecordBatch>,
    pub rejected: Vec<RejectedRecord>,
}

/// How far an [`Output`] was filled, to take back what a failed call added.
#[derive(Clone, Debug)]
pub struct OutputMark {
    main: usize,
    side: Vec<usize>,
}

impl Output {
    pub fn clear(&mut self) {
        self.main.clear();
        for s in &mut self.side {
            s.clear();
        }
        self.rejected.clear();
    }

    pub fn mark(&self) -> OutputMark {
        OutputMark {
            main: self.main.len(),
            side: self.side.iter().map(RecordBatch::len).collect(),
        }
    }

    /// Drops every record emitted since `mark`.
    pub fn truncate(&mut self, mark: &OutputMark) {
        self.main.truncate(mark.main);
        for (s, &len) in self.side.iter_mut().zip(&mark.side) {
            s.truncate(len);
        }
    }
}

/// A record that could not be decoded or that an operator failed on, with
/// the error, set aside by the job's `on_error` policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp: i64,
    pub error: String,
}

/// Which parallel instance of which operator of which job.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub job: String,
    pub operator: String,
    pub instance: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub key_groups: Range<u32>,
    /// True when records arrive partitioned by key (keyed state is allowed).
    pub keyed: bool,
}

/// What went wrong inside an operator.
#[derive(Debug, thiserror::Error)]
pub enum FailureKind {
    /// The user's code returned an error.
    #[error("the operator returned an error: {0}")]
    Guest(String),
    /// The guest trapped (a panic, an out-of-bounds access, a failed memory grow...).
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("a call took longer than the deadline of {deadline_ms} ms and was stopped")]
    Deadline { deadline_ms: u64 },
    /// The guest broke the batch contract.
    #[error("the guest returned an invalid batch: {0}")]
    BadOutput(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("state backend: {0}")]
    State(#[from] StateError),
    #[error("restoring state: {0}")]
    Restore(String),
}

impl FailureKind {
    /// The guest's code failed on its input (as opposed to the host, its
    /// state storage or the operator's setup).
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            FailureKind::Guest(_)
                | FailureKind::Trap(_)
                | FailureKind::Deadline { .. }
                | FailureKind::BadOutput(_)
        )
    }
}

impl From<SnapshotError> for FailureKind {
    fn from(e: SnapshotError) -> Self {
        FailureKind::Restore(e.to_string())
    }
}

/// An operator failure, naming the job, operator and instance it happened in.
#[derive(Debug, thiserror::Error)]
#[error("job `{job}`, operator `{operator}` (instance {instance}): {kind}")]
pub struct OperatorError {
    pub job: String,
    pub operator: String,
    pub instance: u32,
    pub kind: FailureKind,
}

impl OperatorError {
    pub fn new(info: &InstanceInfo, kind: impl Into<FailureKind>) -> Self {
        OperatorError {
            job: info.job.clone(),
            operator: info.operator.clone(),
            instance: info.instance,
            kind: kind.into(),
        }
    }

    /// A checkpoint holds state for an operator that keeps none (its module
    /// or native kind changed to a stateless one).
    pub fn unexpected_state(info: &InstanceInfo) -> Self {
        OperatorError::new(
            info,
            FailureKind::Restore(
                "the checkpoint holds keyed state or timers for this operator, but it keeps none"
                    .into(),
            ),
        )
    }

    /// True when the user's code is at fault, not the host.
    pub fn is_user_error(&self) -> bool {
        !matches!(self.kind, FailureKind::State(_) | FailureKind::Restore(_))
    }
}

pub trait Operator: Send {
    /// Side outputs this operator may write, in the order of `Output::side`.
    fn side_outputs(&self) -> &[String] {
        &[]
    }

    /// Handles a batch of records.
    fn process(&mut self, input: &RecordBatch, out: &mut Output) -> Result<(), OperatorError>;

    /// Handles a batch of records from input `input` (0-based, in the
    /// order of the spec's `from`) of an operator with several inputs. An
    /// operator that treats its inputs alike (a union) keeps the default.
    fn process_from(
        &mut self,
        input: u16,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        let _ = input;
        self.process(batch, out)
    }

    /// The operator's watermark advanced: fire due event-time timers.
    fn advance_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<(), OperatorError> {
        let _ = (watermark, out);
        Ok(())
    }

    /// The wall clock reached `now`: fire due processing-time timers.
    fn advance_processing_time(&mut self, now: i64, out: &mut Output) -> Result<(), OperatorError> {
        let _ = (now, out);
        Ok(())
    }

    /// The earliest registered processing-time timer, if any.
    fn next_processing_timer(&self) -> Option<i64> {
        None
    }

    /// Writes all keyed state and timers, at a checkpoint barrier. An
    /// operator without state writes nothing.
    fn snapshot(&mut self, out: &mut KeyedSnapshot) -> Result<(), OperatorError> {
        let _ = out;
        Ok(())
    }

    /// Takes back one entry of a snapshot, of a key group this instance owns.
    /// Only called before the first batch.
    fn restore(&mut self, key_group: u32, entry: SnapshotEntry<'_>) -> Result<(), OperatorError>;

    /// Runs a new version of the operator's module from now on, on the same
    /// state and timers. Only Wasm operators can (the job refuses a swap of
    /// any other before it starts one).
    fn swap_module(
        &mut self,
        module: &crate::wasm::WasmModule,
        config: &[u8],
    ) -> Result<(), OperatorError> {
        let _ = (module, config);
        Err(OperatorError {
            job: String::new(),
            operator: String::new(),
            instance: 0,
            kind: FailureKind::Init("only Wasm operators can swap modules".into()),
        })
    }
}
