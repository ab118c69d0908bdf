//! The dataflow runtime: record batches, the operator interface, routers
//! between task groups, the task loop, and running a whole job.

pub mod batch;
pub mod job;
pub mod latency;
pub mod operator;
pub mod router;
pub mod task;

pub use batch::{RecordBatch, RecordRef};
pub use job::{
    EmbeddedSource, JobControl, JobEnv, JobError, JobHandle, JobReport, RestoreFrom, StartOptions,
    SwapError, SwapOutcome, run, run_file, start,
};
pub use operator::{FailureKind, InstanceInfo, Operator, OperatorError, Output};
