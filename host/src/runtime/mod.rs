//! The dataflow runtime: record batches, the operator interface, routers
//! between task groups, the task loop, and running a whole job.
//!
//! Every task runs on a dedicated OS thread, and tasks talk through bounded
//! crossbeam channels of batches. The alternative, one async task per task
//! on a tokio runtime with a worker per core, was measured with the same
//! job (`cargo bench -p weir --bench scheduling`: P sources routing by key
//! through the runtime's `Router` into P native keyed counters on the
//! memory backend, 2 cores, median of 3): tokio reached 0.93-0.97x the
//! threads' events/s at P=1 and 1.07-1.17x at P=2, using 10-40% less CPU
//! per event (no futex wake-ups between threads). That difference is a few
//! nanoseconds per event against the roughly 200 ns a Wasm operator
//! spends on one, while threads give what tokio would not: a guest call
//! may run for up to its deadline (seconds) and would stall every task
//! sharing its worker, wasmtime's async mode would add a stack switch to
//! every call, and sinks block (fsync, librdkafka flushes) without special
//! care. With more task threads than cores, a router blocks on a full
//! channel instead of polling it (see `Router::send`), which is what keeps
//! P=2 on two cores close to tokio.

pub mod batch;
pub mod job;
pub mod latency;
pub mod operator;
pub mod pair;
pub mod router;
pub mod task;

pub use batch::{RecordBatch, RecordRef};
pub use job::{
    EmbeddedSource, JobControl, JobEnv, JobError, JobHandle, JobReport, RestoreFrom, StartOptions,
    SwapError, SwapOutcome, run, run_file, start,
};
pub use operator::{FailureKind, InstanceInfo, Operator, OperatorError, Output};
