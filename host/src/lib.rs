//! Weir: a stateful stream-processing engine whose operators are
//! WebAssembly components.
//!
//! Map of the crate:
//! - [`graph`]: the job spec (YAML/JSON) and its validation, planning a job
//!   into chained task groups, and the key -> key group -> instance mapping.
//! - [`runtime`]: record batches, the [`runtime::Operator`] interface, routers
//!   with bounded channels (backpressure), the task loop, running a job.
//! - [`state`]: the [`state::StateBackend`] trait, the memory and RocksDB backends.
//! - [`time`]: watermark generation, min-of-inputs, the timer service.
//! - [`wasm`]: the sandboxed engine, compile cache, host side of the guest
//!   contract (`guest-sdk/wit`), and the operator that drives a guest.
//! - [`window`]: keyed tumbling, sliding and session windows around a Wasm
//!   aggregate, allowed lateness, the late side output.
//! - [`checkpoint`]: barriers, the checkpoint coordinator, manifests and
//!   their verification, restoring (also at another parallelism).
//! - [`connectors`]: generator and file sources; stdout, file, discard sinks.
//! - [`operators`]: native twins of the example operators, for benchmarks.
//! - [`api`]: the REST API (`weir serve`): module registry, jobs, savepoints,
//!   and the web dashboard on top of it.
//! - [`metrics`]: Prometheus metrics of the process (`GET /metrics`).
//! - [`bench`]: `weir bench`.
//! - [`cli`]: the `weir` command line.

pub mod api;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod connectors;
pub mod graph;
pub mod metrics;
pub mod operators;
pub mod runtime;
pub mod state;
pub mod time;
pub mod wasm;
pub mod window;
