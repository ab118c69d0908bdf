//! Running a job in this process: load its modules, plan its task groups,
//! wire them with bounded channels, run every task on its own thread, and
//! report.
//!
//! Threads, not async tasks: a task is CPU-bound and long-lived, blocks only
//! on its channels, and calls synchronous Wasm; a dedicated thread per task
//! avoids handing each batch through an executor and keeps a guest's deadline
//! independent of other tasks. The number of tasks is the sum of the task
//! groups' parallelisms, bounded by the spec's max parallelism.
//!
//! Failure: when a task fails, the run is cancelled (its channels close,
//! its neighbours stop with `PeerStopped`), and the run's error is the first
//! failure that is not `PeerStopped`: the cause, not its echoes. The job's
//! restart strategy then decides: wait and run again from the latest
//! complete checkpoint (or the savepoint it started from, or the start), or
//! fail the job with that error.
//!
//! A job is started with [`start`], which returns a [`JobHandle`] to take
//! savepoints, stop with a savepoint, cancel, or wait for the end; [`run`]
//! starts and waits. One thread per job (the runner) runs the attempts and
//! the checkpoint coordinator; a writer thread stores snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::checkpoint::coordinator::{
    CheckpointCounts, Coordinator, CoordinatorConfig, Written, spawn_writer,
};
use crate::checkpoint::manifest::ModuleVersion;
use crate::checkpoint::{CheckpointError, CheckpointId, CheckpointStore, LoadedCheckpoint};
use crate::connectors::{
    ConnectorError, SinkFactory, SinkMode, Source, SourceAssignment, build_source,
    recover_directory,
};
use crate::graph::spec::{JobSpec, OnError, SourceSpec, StateBackendKind, WindowSpec};
use crate::graph::{TaskGroup, key_group_range, plan};
use crate::runtime::batch::RecordBatch;
use crate::runtime::latency::LatencyHistogram;
use crate::runtime::operator::{InstanceInfo, Operator, OperatorError};
use crate::runtime::router::{Envelope, Fanout, Recycled, Router};
use crate::runtime::task::{
    Aligned, AlignmentGroup, DEAD_LETTER_SINK, FinalSnapshot, Head, Rejects, SharedCounters,
    SourceTime, Tail, Task, TaskError, TaskLink, TaskStats,
};
use crate::state::{RocksDbConfig, RocksDbShared, StateFactory};
use crate::time::{BoundedOutOfOrderness, InputWatermarks};
use crate::wasm::{ModuleError, WasmModule, WasmRuntime};
use crate::window::WindowOperator;

/// Batches a channel between two tasks holds before the sender blocks.
const CHANNEL_BATCHES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Spec(#[from] crate::graph::SpecError),
    #[error("operator `{operator}`: module `{module}` not found (looked in: {searched})")]
    ModuleNotFound {
        operator: String,
        module: String,
        searched: String,
    },
    #[error("operator `{operator}`: {source}")]
    Module {
        operator: String,
        source: ModuleError,
    },
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("job `{job}`: {message}")]
    Internal { job: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("job `{0}` was cancelled")]
    Cancelled(String),
}

impl From<TaskError> for JobError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Operator(e) => JobError::Operator(e),
            TaskError::Connector(e) => JobError::Connector(e),
            TaskError::PeerStopped { task } => JobError::Internal {
                job: String::new(),
                message: format!("task {task} stopped because a connected task stopped"),
            },
            TaskError::Internal { task, message } => JobError::Internal {
                job: String::new(),
                message: format!("task {task}: {message}"),
            },
        }
    }
}

/// Builds a source instance for a spec whose source is `embedded`.
pub type EmbeddedSource = Arc<dyn Fn(&SourceAssignment) -> Box<dyn Source> + Send + Sync>;

/// What a job runs with: the Wasm runtime and where module names are looked up.
#[derive(Clone)]
pub struct JobEnv {
    pub wasm: Arc<WasmRuntime>,
    pub module_dirs: Vec<PathBuf>,
    /// The source of specs with `source: {type: embedded}`, for programs
    /// that use Weir as a library.
    pub embedded_source: Option<EmbeddedSource>,
    /// Sinks keep an order-independent digest of their records
    /// (`JobReport::sink_digest`); it costs two hashes per record, so only
    /// benchmarks that check output by it ask for it.
    pub digest_sink_records: bool,
    /// Whether a source instance and the instance it feeds share a thread
    /// where the graph allows it (see [`crate::runtime::pair`]); `None`:
    /// when the job has more tasks than the machine has cores and the
    /// source's polls never wait.
    pub share_source_threads: Option<bool>,
}

impl JobEnv {
    pub fn new(wasm: Arc<WasmRuntime>, module_dirs: Vec<PathBuf>) -> Self {
        JobEnv {
            wasm,
            module_dirs,
            embedded_source: None,
            digest_sink_records: false,
            share_source_threads: None,
        }
    }
}

/// The outcome of a finished job.
#[derive(Debug)]
pub struct JobReport {
    pub records_in: u64,
    pub sink_records: u64,
    /// Sum of sink values that are 8-byte little-endian u64s.
    pub sink_value_sum: u64,
    /// Order-independent digest of the sink's records
    /// ([`crate::connectors::sinks::record_digest`]).
    pub sink_digest: u64,
    /// Records per side output (`operator.side-output`) that reached a sink.
    pub side_records: BTreeMap<String, u64>,
    /// Records emitted to side outputs that have no sink in the spec.
    pub unrouted_side_records: u64,
    /// Records too far ahead of the wall clock to move the watermark.
    pub far_future_records: u64,
    /// Records later than their windows' allowed lateness (sent to the
    /// windows' late side outputs).
    pub late_records: u64,
    /// Poison records set aside by `on_error` (skipped or dead-lettered).
    pub rejected_records: u64,
    /// Records that reached the dead-letter sink.
    pub dead_letter_records: u64,
    pub elapsed: Duration,
    /// Time tasks spent blocked on full channels, summed.
    pub blocked: Duration,
    pub latency: Arc<LatencyHistogram>,
    /// The checkpoint or savepoint the last run started from.
    pub restored_from: Option<PathBuf>,
    /// Runs after a failure.
    pub restarts: u32,
    pub checkpoints: CheckpointCounts,
    /// Set when the job stopped with a savepoint rather than finishing.
    pub stopped_with_savepoint: Option<PathBuf>,
}

/// Finds a module by path (`*.wasm`) or by name in the module folders;
/// `word-count` also matches `word_count.wasm`, as cargo names artifacts.
pub fn resolve_module(operator: &str, module: &str, dirs: &[PathBuf]) -> Result<PathBuf, JobError> {
    if module.ends_with(".wasm") {
        let p = PathBuf::from(module);
        if p.is_file() {
            return Ok(p);
        }
        return Err(JobError::ModuleNotFound {
            operator: operator.to_owned(),
            module: module.to_owned(),
            searched: p.display().to_string(),
        });
    }
    let candidates = [
        format!("{module}.wasm"),
        format!("{}.wasm", module.replace('-', "_")),
    ];
    for dir in dirs {
        for c in &candidates {
            let p = dir.join(c);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(JobError::ModuleNotFound {
        operator: operator.to_owned(),
        module: module.to_owned(),
        searched: if dirs.is_empty() {
            "no module folders given (use --module-dir)".into()
        } else {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

#[derive(Clone)]
enum OperatorKind {
    Wasm { module: WasmModule, config: Vec<u8> },
    Native(String),
}

/// Everything a task thread needs to build its operators.
#[derive(Clone)]
struct OperatorPlan {
    name: String,
    kind: OperatorKind,
    parallelism: u32,
    keyed: bool,
    window: Option<WindowSpec>,
    /// Set poison records aside instead of failing (`on_error`).
    isolate_failures: bool,
}

/// What building an operator instance of a job needs.
struct OperatorEnv<'a> {
    wasm: &'a WasmRuntime,
    job: &'a str,
    max_parallelism: u32,
    shared: &'a SharedCounters,
    state: &'a StateFactory,
    restore: Option<&'a LoadedCheckpoint>,
}

/// Builds operator instance `instance` of `plan`, with its state restored
/// when the run restores.
fn build_operator(
    env: &OperatorEnv<'_>,
    plan: &OperatorPlan,
    instance: u32,
) -> Result<(Box<dyn Operator>, InstanceInfo), OperatorError> {
    let OperatorEnv {
        wasm,
        job,
        max_parallelism,
        shared,
        state,
        restore,
    } = *env;
    let key_groups = if plan.keyed {
        key_group_range(instance, max_parallelism, plan.parallelism)
    } else {
        0..max_parallelism
    };
    let info = InstanceInfo {
        job: job.to_owned(),
        operator: plan.name.clone(),
        instance,
        parallelism: plan.parallelism,
        max_parallelism,
        key_groups: key_groups.clone(),
        keyed: plan.keyed,
    };
    let native = restore.and_then(|c| c.native_exact(&plan.name, &key_groups));
    let (backend, native_opened) = state
        .create_from(&plan.name, instance, key_groups, native.as_ref())
        .map_err(|e| OperatorError::new(&info, e))?;
    let mut op: Box<dyn Operator> = match &plan.kind {
        OperatorKind::Wasm { module, config } => {
            let mut guest = wasm.instantiate(module, info.clone(), backend, config)?;
            if plan.isolate_failures && plan.window.is_none() {
                guest.isolate_failures();
            }
            match &plan.window {
                Some(window) => Box::new(WindowOperator::new(
                    guest,
                    info.clone(),
                    window,
                    shared.late_records.clone(),
                )?),
                None => Box::new(guest),
            }
        }
        OperatorKind::Native(name) => crate::operators::build(name, info.clone(), backend)?,
    };
    if let Some(c) = restore {
        c.restore_operator(&info, op.as_mut(), native_opened)?;
    }
    Ok((op, info))
}

/// Where a started job takes its state from.
#[derive(Clone, Debug, Default)]
pub enum RestoreFrom {
    /// The job's latest complete checkpoint, if it has one; else the start.
    /// This is how a job resumes after its process was killed.
    #[default]
    Latest,
    /// The start, ignoring existing checkpoints.
    Fresh,
    /// A savepoint or checkpoint folder (possibly taken at another
    /// parallelism, or with older module versions).
    Savepoint(PathBuf),
}

#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub restore: RestoreFrom,
}

enum JobCommand {
    Savepoint {
        target: PathBuf,
        stop: bool,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    },
    Swap {
        operator: String,
        module: WasmModule,
        config: Option<Vec<u8>>,
        reply: Sender<Result<SwapOutcome, SwapError>>,
    },
    Cancel,
}

/// How a hot swap ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The new version took over at checkpoint `swapped_at` and has run
    /// through checkpoint `confirmed_by` since: it is the operator's module
    /// from now on, also across restarts.
    Committed {
        swapped_at: CheckpointId,
        confirmed_by: CheckpointId,
    },
    /// The new version failed before a checkpoint confirmed it (or the
    /// swap's own checkpoint did not complete): the job restarted from the
    /// checkpoint taken at the swap, on the old version.
    RolledBack { reason: String },
}

/// Why a hot swap was not started.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the job has no operator `{0}`")]
    NoOperator(String),
    #[error("operator `{0}` is native; only Wasm operators swap modules")]
    NotWasm(String),
    #[error(
        "a hot swap needs periodic checkpoints (`checkpoint:` in the job spec): the checkpoint \
         taken at the swap is what a failing new version rolls back to"
    )]
    NoCheckpoints,
    #[error("operator `{0}` is already being swapped")]
    Busy(String),
    #[error("the job is not running")]
    NotRunning,
}

/// A swap between its request and its outcome; outlives a failed run, whose
/// restart is the rollback.
struct SwapInFlight {
    order: Arc<crate::checkpoint::SwapOrder>,
    reply: Sender<Result<SwapOutcome, SwapError>>,
    /// The swap's checkpoint, once triggered: completes with its folder.
    ack: Receiver<Result<PathBuf, CheckpointError>>,
    /// The swap's checkpoint, once complete.
    swapped_at: Option<CheckpointId>,
}

impl SwapInFlight {
    fn roll_back(self, reason: String) {
        tracing::warn!(operator = %self.order.operator, module = %self.order.module.name,
            %reason, "hot swap rolled back");
        let _ = self.reply.send(Ok(SwapOutcome::RolledBack { reason }));
    }
}

/// Commands to a running job; cheap to clone and keep after the
/// [`JobHandle`] went to whoever waits for the job.
#[derive(Clone)]
pub struct JobControl {
    pub name: String,
    commands: Sender<JobCommand>,
    records: Arc<AtomicU64>,
    restarts: Arc<std::sync::atomic::AtomicU32>,
}

impl JobControl {
    fn savepoint_request(&self, target: &Path, stop: bool) -> Result<PathBuf, CheckpointError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(JobCommand::Savepoint {
                target: target.to_owned(),
                stop,
                reply,
            })
            .map_err(|_| CheckpointError::NotRunning)?;
        answer.recv().map_err(|_| CheckpointError::NotRunning)?
    }

    /// Takes a savepoint below `target`; returns its folder once complete.
    pub fn savepoint(&self, target: &Path) -> Result<PathBuf, CheckpointError> {
        self.savepoint_request(target, false)
    }

    /// Takes a final savepoint, after which the sources stop and the job
    /// ends (without firing the remaining windows: resuming will).
    pub fn stop_with_savepoint(&self, target: &Path) -> Result<PathBuf, CheckpointError> {
        self.savepoint_request(target, true)
    }

    pub fn cancel(&self) {
        let _ = self.commands.send(JobCommand::Cancel);
    }

    /// Hot swap: `operator` runs `module` from the next checkpoint barrier
    /// on, with its state as it is (`config: None` keeps the current
    /// config). Blocks until the new version is confirmed by a complete
    /// checkpoint after the swap, or has failed and the job rolled back to
    /// the swap's checkpoint on the old version.
    pub fn swap_operator(
        &self,
        operator: &str,
        module: WasmModule,
        config: Option<Vec<u8>>,
    ) -> Result<SwapOutcome, SwapError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(JobCommand::Swap {
                operator: operator.to_owned(),
                module,
                config,
                reply,
            })
            .map_err(|_| SwapError::NotRunning)?;
        answer.recv().map_err(|_| SwapError::NotRunning)?
    }

    /// Records taken in by the sources of the current run so far.
    pub fn records_processed(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Restarts after failures so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// A job running in this process.
pub struct JobHandle {
    pub name: String,
    control: JobControl,
    thread: std::thread::JoinHandle<Result<JobReport, JobError>>,
}

impl JobHandle {
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    pub fn savepoint(&self, target: &Path) -> Result<PathBuf, CheckpointError> {
        self.control.savepoint(target)
    }

    pub fn stop_with_savepoint(&self, target: &Path) -> Result<PathBuf, CheckpointError> {
        self.control.stop_with_savepoint(target)
    }

    pub fn cancel(&self) {
        self.control.cancel()
    }

    pub fn records_processed(&self) -> u64 {
        self.control.records_processed()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn wait(self) -> Result<JobReport, JobError> {
        self.thread.join().unwrap_or_else(|panic| {
            Err(JobError::Internal {
                job: self.name.clone(),
                message: format!("the job's runner panicked: {}", panic_message(&panic)),
            })
        })
    }
}

/// Builds a task on the thread that runs it.
pub(crate) type TaskBuild = Box<dyn FnOnce() -> Result<Task, TaskError> + Send>;

/// A task of the job not yet given a thread.
struct PendingTask {
    name: String,
    group: usize,
    instance: usize,
    build: TaskBuild,
}

pub(crate) fn panicked(task: &str, panic: &Box<dyn std::any::Any + Send>) -> TaskError {
    TaskError::Internal {
        task: task.to_string(),
        message: format!("panicked: {}", panic_message(panic)),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a job to completion (all sources exhausted) in this process,
/// resuming from its latest complete checkpoint if it has one.
pub fn run(spec: &JobSpec, env: &JobEnv) -> Result<JobReport, JobError> {
    start(spec, env, StartOptions::default())?.wait()
}

/// What every run of a job shares: the checked spec, loaded modules.
struct Prepared {
    spec: JobSpec,
    env: JobEnv,
    /// What runs: a committed hot swap changes these for later runs.
    operator_plans: std::sync::Mutex<Arc<Vec<OperatorPlan>>>,
    modules: std::sync::Mutex<Vec<ModuleVersion>>,
    store: Option<CheckpointStore>,
    state: Arc<StateFactory>,
}

/// Checks the spec and loads the modules (so those errors come back at
/// once), then runs the job on a runner thread.
pub fn start(spec: &JobSpec, env: &JobEnv, options: StartOptions) -> Result<JobHandle, JobError> {
    spec.validate()?;
    let mut operator_plans = Vec::new();
    let mut modules = Vec::new();
    for (i, op) in spec.operators.iter().enumerate() {
        let kind = match (&op.module, &op.native) {
            (Some(module), _) => {
                let path = resolve_module(&op.name, module, &env.module_dirs)?;
                let loaded =
                    env.wasm
                        .load_file(module, &path)
                        .map_err(|source| JobError::Module {
                            operator: op.name.clone(),
                            source,
                        })?;
                tracing::info!(operator = %op.name, module = %module, digest = %&loaded.digest[..12],
                    cache = ?loaded.cache, ms = loaded.compile_time.as_millis() as u64, "module ready");
                modules.push(ModuleVersion {
                    operator: op.name.clone(),
                    module: module.clone(),
                    digest: loaded.digest.clone(),
                });
                let config = op
                    .config
                    .as_ref()
                    .map(|c| serde_json::to_vec(c).expect("JSON values serialize"))
                    .unwrap_or_default();
                OperatorKind::Wasm {
                    module: loaded,
                    config,
                }
            }
            (None, Some(native)) => {
                modules.push(ModuleVersion {
                    operator: op.name.clone(),
                    module: format!("native:{native}"),
                    digest: String::new(),
                });
                OperatorKind::Native(native.clone())
            }
            (None, None) => unreachable!("validate() requires module or native"),
        };
        let keyed = op.input == crate::graph::Partitioning::Key;
        operator_plans.push(OperatorPlan {
            name: op.name.clone(),
            kind,
            parallelism: spec.operator_parallelism(i),
            keyed,
            window: op.window.clone(),
            isolate_failures: spec.on_error != OnError::Fail,
        });
    }
    let store = spec
        .checkpoint
        .as_ref()
        .map(|c| CheckpointStore::open(&c.dir, &c.local_dir, &spec.name))
        .transpose()?;
    let initial = match (&options.restore, &store) {
        (RestoreFrom::Savepoint(path), _) => Some(Arc::new(LoadedCheckpoint::open(path)?)),
        (RestoreFrom::Latest, Some(store)) => {
            settle_in_doubt(spec, store)?;
            let (latest, _skipped) = store.latest_usable()?;
            latest.map(Arc::new)
        }
        _ => None,
    };
    if let Some(c) = &initial {
        check_compatible(spec, c)?;
    }
    let state = Arc::new(match spec.state {
        StateBackendKind::Memory => StateFactory::Memory,
        StateBackendKind::Rocksdb => {
            let r = spec.rocksdb.clone().unwrap_or_default();
            StateFactory::RocksDb(RocksDbShared::new(
                RocksDbConfig {
                    dir: r.dir,
                    block_cache_bytes: r.block_cache as usize,
                    write_buffer_bytes: r.write_buffer as usize,
                    value_cache_bytes: r.value_cache as usize,
                    incremental: r.incremental,
                    checkpoint_shared_dir: store.as_ref().map(CheckpointStore::shared_dir),
                },
                &spec.name,
            ))
        }
    });
    let prepared = Prepared {
        spec: spec.clone(),
        env: env.clone(),
        operator_plans: std::sync::Mutex::new(Arc::new(operator_plans)),
        modules: std::sync::Mutex::new(modules),
        store,
        state,
    };
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let records = Arc::new(AtomicU64::new(0));
    let progress = records.clone();
    let restarts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let restart_count = restarts.clone();
    let thread = std::thread::Builder::new()
        .name(format!("weir-job-{}", spec.name))
        .spawn(move || {
            let running = &crate::metrics::metrics().jobs_running;
            running.inc();
            let result = run_attempts(&prepared, initial, &command_rx, &progress, &restart_count);
            running.dec();
            result
        })
        .map_err(|e| JobError::Internal {
            job: spec.name.clone(),
            message: format!("cannot start the job's runner thread: {e}"),
        })?;
    Ok(JobHandle {
        name: spec.name.clone(),
        control: JobControl {
            name: spec.name.clone(),
            commands,
            records,
            restarts,
        },
        thread,
    })
}

fn check_compatible(spec: &JobSpec, c: &LoadedCheckpoint) -> Result<(), JobError> {
    let incompatible = |problem: String| {
        JobError::Checkpoint(CheckpointError::Incompatible {
            path: c.dir.clone(),
            problem,
        })
    };
    if c.manifest.max_parallelism != spec.max_parallelism {
        return Err(incompatible(format!(
            "it was taken with max_parallelism {}, the job has {}; key groups cannot be \
             redistributed across a change of max_parallelism",
            c.manifest.max_parallelism, spec.max_parallelism
        )));
    }
    let known: Vec<&str> = spec.operators.iter().map(|o| o.name.as_str()).collect();
    for task in &c.manifest.tasks {
        if let Some(state) = &task.state {
            for op in &state.operators {
                if !known.contains(&op.operator.as_str()) {
                    return Err(incompatible(format!(
                        "it holds state of operator `{}`, which the job no longer has",
                        op.operator
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Why a run ended without a report.
enum RunError {
    /// Before any task ran (sinks, threads): not worth a restart.
    Setup(JobError),
    /// A task failed: the restart strategy decides.
    Failed(JobError),
    Cancelled,
}

fn run_attempts(
    prepared: &Prepared,
    initial: Option<Arc<LoadedCheckpoint>>,
    commands: &Receiver<JobCommand>,
    progress: &Arc<AtomicU64>,
    restart_count: &std::sync::atomic::AtomicU32,
) -> Result<JobReport, JobError> {
    let spec = &prepared.spec;
    let restart = spec.restart_strategy();
    // Checkpoints of this job from before this start (an older run of the
    // same name) are not fallbacks when it started fresh or from a savepoint.
    let first_own = match &prepared.store {
        Some(store) => match &initial {
            Some(c) if c.dir.starts_with(store.root()) => c.id(),
            _ => store.next_id()?,
        },
        None => u64::MAX,
    };
    let mut restore = initial.clone();
    let mut restarts = 0;
    let mut swap: Option<SwapInFlight> = None;
    // Savepoints and swaps asked for while the job waited to restart: the
    // next run starts them.
    let mut deferred: Vec<JobCommand> = Vec::new();
    loop {
        if let Some(c) = &restore {
            tracing::info!(job = %spec.name, from = %c.dir.display(), finished = c.manifest.finished,
                "restoring");
            if c.manifest.finished {
                tracing::warn!(job = %spec.name, checkpoint = c.id(),
                    "the job had already run to its end: nothing is left to do (run it with --fresh to start over)");
            }
        }
        let result = run_once(
            prepared,
            restore.clone(),
            commands,
            progress,
            (&mut swap, std::mem::take(&mut deferred)),
        );
        if let (Some(s), Err(e)) = (swap.take(), &result) {
            s.roll_back(match e {
                RunError::Setup(e) | RunError::Failed(e) => e.to_string(),
                RunError::Cancelled => "the job was cancelled".into(),
            });
        }
        match result {
            Ok(mut report) => {
                report.restarts = restarts;
                return Ok(report);
            }
            Err(RunError::Setup(e)) => return Err(e),
            Err(RunError::Cancelled) => return Err(JobError::Cancelled(spec.name.clone())),
            Err(RunError::Failed(e)) => {
                restarts += 1;
                restart_count.store(restarts, Ordering::Relaxed);
                crate::metrics::metrics()
                    .restarts
                    .with_label_values(&[spec.name.as_str()])
                    .inc();
                let Some(delay) = restart.delay_before(restarts) else {
                    return Err(e);
                };
                tracing::warn!(job = %spec.name, error = %e, restart = restarts,
                    delay_ms = delay.as_millis() as u64, "job failed; restarting");
                if wait_or_cancel(commands, delay, &mut deferred) {
                    return Err(JobError::Cancelled(spec.name.clone()));
                }
                restore = match &prepared.store {
                    Some(store) => {
                        settle_in_doubt(spec, store)?;
                        let (latest, _) = store.latest_usable()?;
                        match latest.filter(|c| c.id() >= first_own) {
                            Some(c) => Some(Arc::new(c)),
                            None => initial.clone(),
                        }
                    }
                    None => initial.clone(),
                };
            }
        }
    }
}

/// Sleeps for `delay`; true if the job was cancelled meanwhile. Savepoints
/// and swaps asked for meanwhile wait in `deferred` for the next run.
fn wait_or_cancel(
    commands: &Receiver<JobCommand>,
    delay: Duration,
    deferred: &mut Vec<JobCommand>,
) -> bool {
    let until = Instant::now() + delay;
    loop {
        match commands.recv_deadline(until) {
            Ok(JobCommand::Cancel) => return true,
            Ok(command @ (JobCommand::Savepoint { .. } | JobCommand::Swap { .. })) => {
                deferred.push(command)
            }
            Err(_) => return false,
        }
    }
}

/// Where a stop-with-savepoint's answer goes once the tasks have stopped,
/// and where the coordinator reports the savepoint.
type StopReply = (
    Sender<Result<PathBuf, CheckpointError>>,
    Receiver<Result<PathBuf, CheckpointError>>,
);

/// Starts a savepoint or a swap for the run (a cancel is the runner's own).
fn start_command(
    prepared: &Prepared,
    coordinator: &mut Coordinator,
    swap: &mut Option<SwapInFlight>,
    stop_reply: &mut Option<StopReply>,
    command: JobCommand,
) {
    match command {
        JobCommand::Savepoint {
            target,
            stop: true,
            reply,
        } => {
            // Answer after the tasks have stopped.
            let (inner, answer) = crossbeam_channel::bounded(1);
            coordinator.request_savepoint(target, true, inner);
            *stop_reply = Some((reply, answer));
        }
        JobCommand::Savepoint { target, reply, .. } => {
            coordinator.request_savepoint(target, false, reply)
        }
        JobCommand::Swap {
            operator,
            module,
            config,
            reply,
        } => start_swap(
            prepared,
            coordinator,
            swap,
            (operator, module, config, reply),
        ),
        JobCommand::Cancel => {}
    }
}

/// A requested swap's parts: operator, module, config, where the outcome goes.
type SwapRequest = (
    String,
    WasmModule,
    Option<Vec<u8>>,
    Sender<Result<SwapOutcome, SwapError>>,
);

/// Starts a hot swap with a checkpoint that carries it, or refuses it.
fn start_swap(
    prepared: &Prepared,
    coordinator: &mut Coordinator,
    swap: &mut Option<SwapInFlight>,
    (operator, module, config, reply): SwapRequest,
) {
    let plans = prepared.operator_plans.lock().expect("plans lock").clone();
    let refusal = match plans.iter().find(|p| p.name == operator) {
        _ if prepared.spec.checkpoint.is_none() => SwapError::NoCheckpoints,
        _ if swap.is_some() => SwapError::Busy(operator),
        None => SwapError::NoOperator(operator),
        Some(OperatorPlan {
            kind: OperatorKind::Native(_),
            ..
        }) => SwapError::NotWasm(operator),
        Some(OperatorPlan {
            kind: OperatorKind::Wasm {
                config: current, ..
            },
            ..
        }) => {
            let order = Arc::new(crate::checkpoint::SwapOrder {
                operator,
                module,
                config: config.unwrap_or_else(|| current.clone()),
            });
            let (ack_tx, ack) = crossbeam_channel::bounded(1);
            coordinator.request_swap(order.clone(), ack_tx);
            *swap = Some(SwapInFlight {
                order,
                reply,
                ack,
                swapped_at: None,
            });
            return;
        }
    };
    let _ = reply.send(Err(refusal));
}

/// The new version is the operator's from now on: later runs (restarts
/// after failures) build it, and their manifests record it.
fn commit_swap(prepared: &Prepared, order: &crate::checkpoint::SwapOrder) {
    let mut plans = prepared.operator_plans.lock().expect("plans lock");
    let mut next: Vec<OperatorPlan> = plans.as_ref().clone();
    for plan in next.iter_mut().filter(|p| p.name == order.operator) {
        plan.kind = OperatorKind::Wasm {
            module: order.module.clone(),
            config: order.config.clone(),
        };
    }
    *plans = Arc::new(next);
    let mut modules = prepared.modules.lock().expect("modules lock");
    for m in modules.iter_mut().filter(|m| m.operator == order.operator) {
        m.module = order.module.name.clone();
        m.digest = order.module.digest.clone();
    }
    let job = prepared.spec.name.as_str();
    crate::metrics::metrics()
        .hot_swaps
        .with_label_values(&[job, order.operator.as_str()])
        .inc();
}

/// Messages from tasks and the writer to the runner.
enum TaskEvent {
    Exited {
        task: usize,
        result: Result<TaskStats, TaskError>,
    },
    Written(Written),
}

/// One run of the job: from `restore` (or the start) until the tasks end.
fn run_once(
    prepared: &Prepared,
    restore: Option<Arc<LoadedCheckpoint>>,
    commands: &Receiver<JobCommand>,
    progress: &Arc<AtomicU64>,
    (swap, deferred): (&mut Option<SwapInFlight>, Vec<JobCommand>),
) -> Result<JobReport, RunError> {
    let spec = &prepared.spec;
    let env = &prepared.env;
    let setup = RunError::Setup;
    let started = Instant::now();
    let groups = plan(spec);
    let checkpointing = spec.checkpoint.is_some();
    let mode = SinkMode {
        transactional: checkpointing,
        resuming: restore.is_some(),
    };

    // Sinks, and their folders brought to the restored checkpoint's state.
    let make_sink = |name: String, sink| -> Result<Arc<SinkFactory>, JobError> {
        let mut factory = SinkFactory::new(sink, mode, &spec.name, &name)?;
        factory.digest = env.digest_sink_records;
        if let Some(dir) = factory.directory() {
            let keep = restore
                .as_ref()
                .map(|c| c.sink_pending(&name))
                .unwrap_or_default();
            recover_directory(dir, &keep)?;
        }
        Ok(Arc::new(factory))
    };
    let main_sink = make_sink("main".into(), &spec.sink).map_err(setup)?;
    let mut all_sinks = vec![main_sink.clone()];
    let mut side_sinks: Vec<BTreeMap<String, Arc<SinkFactory>>> = Vec::new();
    for op in &spec.operators {
        let mut m = BTreeMap::new();
        for (name, sink) in &op.side_outputs {
            let f = make_sink(format!("{}.{name}", op.name), sink).map_err(setup)?;
            all_sinks.push(f.clone());
            m.insert(name.clone(), f);
        }
        side_sinks.push(m);
    }
    let side_sinks = Arc::new(side_sinks);
    let dead_letter_sink = spec
        .dead_letter
        .as_ref()
        .map(|sink| make_sink(DEAD_LETTER_SINK.into(), sink))
        .transpose()
        .map_err(setup)?;
    all_sinks.extend(dead_letter_sink.clone());
    let task_count: u32 = groups.iter().map(|g| g.parallelism).sum();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // Per source group: the group whose instances share its instances'
    // threads (see `runtime::pair`).
    let thread_sharing: BTreeMap<usize, usize> = (0..groups.len())
        .filter(|&g| {
            env.share_source_threads.unwrap_or_else(|| {
                task_count as usize > cores
                    && groups[g]
                        .source
                        .as_ref()
                        .and_then(|name| spec.source_named(name))
                        .is_some_and(SourceSpec::polls_without_waiting)
            })
        })
        .filter_map(|g| crate::graph::thread_sharing_reader(&groups, g).map(|r| (g, r)))
        .collect();
    let thread_count = task_count
        - thread_sharing
            .keys()
            .map(|&g| groups[g].parallelism)
            .sum::<u32>();
    // See `Router::send` for why this decides how a full channel is waited on.
    let oversubscribed = thread_count as usize > cores;

    // Channels: one bounded channel per instance of every group with inputs;
    // the instances of a group's inputs send on it as channels 0.., input
    // after input.
    let mut receivers: Vec<Vec<Option<Receiver<Envelope>>>> = Vec::new();
    let mut senders: Vec<Vec<Sender<Envelope>>> = Vec::new();
    // Beside each: the way its batches go back to the senders.
    let mut recycle: Vec<Vec<Recycled>> = Vec::new();
    let mut recycled: Vec<Vec<Receiver<RecordBatch>>> = Vec::new();
    let mut channel_offsets: Vec<Vec<u32>> = Vec::new();
    for g in &groups {
        let mut offsets = Vec::new();
        let mut channels = 0u32;
        for input in &g.inputs {
            offsets.push(channels);
            channels += groups[input.group].parallelism;
        }
        channel_offsets.push(offsets);
        if g.inputs.is_empty() {
            senders.push(Vec::new());
            receivers.push(Vec::new());
            recycle.push(Vec::new());
            recycled.push(Vec::new());
            continue;
        }
        let (s, r): (Vec<_>, Vec<_>) = (0..g.parallelism)
            .map(|_| crossbeam_channel::bounded(CHANNEL_BATCHES))
            .unzip();
        senders.push(s);
        receivers.push(r.into_iter().map(Some).collect());
        let (back, from): (Vec<_>, Vec<_>) = (0..g.parallelism)
            .map(|_| Recycled::channel(CHANNEL_BATCHES))
            .unzip();
        recycle.push(back);
        recycled.push(from);
    }
    let sink_group = match spec.operators.len() {
        0 => 0,
        n => crate::graph::group_of(&groups, n - 1),
    };

    let (events, event_rx) = crossbeam_channel::unbounded::<TaskEvent>();
    let (finals, final_rx) = crossbeam_channel::unbounded::<FinalSnapshot>();
    let (write_tx, write_rx) = crossbeam_channel::unbounded();
    // Without checkpoints, savepoints only: nothing is written below this root.
    let store = prepared
        .store
        .clone()
        .unwrap_or_else(|| CheckpointStore::new(Path::new(""), &spec.name));
    let writer = {
        let events = events.clone();
        spawn_writer(store.clone(), write_rx, move |w| {
            let _ = events.send(TaskEvent::Written(w));
        })
        .map_err(|e| {
            setup(JobError::Internal {
                job: spec.name.clone(),
                message: format!("cannot start the checkpoint writer: {e}"),
            })
        })?
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let shared = SharedCounters {
        records: progress.clone(),
        ..SharedCounters::default()
    };
    progress.store(0, Ordering::Relaxed);
    let mut source_splits: BTreeMap<String, u32> = BTreeMap::new();
    for group in &groups {
        if let Some(name) = &group.source {
            let splits = match &restore {
                Some(c) => c.manifest.split_count(name),
                None => None,
            };
            source_splits.insert(name.clone(), splits.unwrap_or(group.parallelism));
        }
    }
    let mut triggers = Vec::new();
    // Per task, in the coordinator's numbering: how to build it on its
    // thread, and per group and instance, the task's index.
    let mut builds: Vec<PendingTask> = Vec::new();
    let mut task_index: Vec<Vec<usize>> = Vec::new();
    let mut alignment_groups: BTreeMap<String, Arc<AlignmentGroup>> = BTreeMap::new();
    for (gi, group) in groups.iter().enumerate() {
        task_index.push(Vec::new());
        for instance in 0..group.parallelism {
            let index = builds.len();
            task_index[gi].push(index);
            let names: Vec<String> = group
                .operators
                .iter()
                .map(|&i| spec.operators[i].name.clone())
                .collect();
            let resume_watermark = restore.as_ref().map(|c| c.watermark_for(&names));
            let head = if let Some(source_name) = &group.source {
                let source_spec = spec
                    .source_named(source_name)
                    .expect("planned sources exist");
                let watermark_spec = source_spec.watermark();
                let assignment = SourceAssignment {
                    instance,
                    parallelism: group.parallelism,
                    restored: restore
                        .as_ref()
                        .map(|c| c.source_splits(source_name, instance, group.parallelism)),
                };
                let source = match (source_spec, &env.embedded_source) {
                    (SourceSpec::Embedded(_), Some(make)) => make(&assignment),
                    _ => build_source(source_spec, &assignment).map_err(|e| setup(e.into()))?,
                };
                let mut source = source;
                if spec.on_error != OnError::Fail {
                    source.reject_bad_records();
                }
                if restore.is_none()
                    && let Some(n) = source.split_count()
                {
                    source_splits.insert(source_name.clone(), n);
                }
                let mut time = SourceTime::new(&watermark_spec);
                if let Some(drift) = watermark_spec.max_drift {
                    let group = alignment_groups
                        .entry(source_name.clone())
                        .or_insert_with(|| {
                            Arc::new(AlignmentGroup {
                                watermarks: (0..group.parallelism)
                                    .map(|_| std::sync::atomic::AtomicI64::new(i64::MIN))
                                    .collect(),
                                max_drift_ms: drift.as_millis().min(i64::MAX as u128) as i64,
                            })
                        });
                    time.alignment = Some(Aligned {
                        group: group.clone(),
                        instance: instance as usize,
                    });
                }
                if let Some(c) = &restore {
                    time.watermarks = BoundedOutOfOrderness::resuming(
                        watermark_spec.max_out_of_orderness.as_millis() as i64,
                        c.source_max_timestamp(source_name),
                    );
                }
                Head::Source { source, time }
            } else {
                let mut channel_inputs = Vec::new();
                for (k, input) in group.inputs.iter().enumerate() {
                    let input_index = u16::try_from(k).expect("spec validation bounds inputs");
                    channel_inputs.extend(std::iter::repeat_n(
                        input_index,
                        groups[input.group].parallelism as usize,
                    ));
                }
                Head::Input {
                    receiver: receivers[gi][instance as usize]
                        .take()
                        .expect("each receiver is taken once"),
                    recycled: Some(recycle[gi][instance as usize].clone()),
                    watermarks: InputWatermarks::starting_at(
                        channel_inputs.len(),
                        resume_watermark.unwrap_or(i64::MIN),
                    ),
                    channel_inputs,
                }
            };
            let (trigger, trigger_rx) = if group.source.is_some() {
                let (s, r) = crossbeam_channel::unbounded();
                (Some(s), Some(r))
            } else {
                (None, None)
            };
            triggers.push(trigger);
            let tail = if gi != sink_group {
                let routers = crate::graph::readers_of(&groups, gi)
                    .into_iter()
                    .map(|(reader, k)| {
                        let mut router = Router::new(
                            channel_offsets[reader][k] + instance,
                            instance,
                            senders[reader].clone(),
                            groups[reader].inputs[k].partitioning,
                            spec.batch.size,
                            spec.batch.linger,
                            spec.max_parallelism,
                        );
                        router.block_when_full = oversubscribed;
                        router.recycle_from(recycled[reader].clone());
                        router
                    })
                    .collect();
                Tail::Router(Fanout::new(routers))
            } else {
                Tail::Sink(main_sink.instance().map_err(|e| setup(e.into()))?)
            };
            let rejects = Rejects {
                policy: spec.on_error,
                sink: dead_letter_sink
                    .as_ref()
                    .map(|f| f.instance())
                    .transpose()
                    .map_err(|e| setup(e.into()))?,
            };
            let name = format!("{}/{}#{}", spec.name, group_name(spec, group), instance);
            let ops = group.operators.clone();
            let plans = prepared.operator_plans.lock().expect("plans lock").clone();
            let wasm = env.wasm.clone();
            let state = prepared.state.clone();
            let side_sinks = side_sinks.clone();
            let job = spec.name.clone();
            let max_parallelism = spec.max_parallelism;
            let batch_size = spec.batch.size;
            let shared = shared.clone();
            let restore = restore.clone();
            let link = TaskLink {
                index,
                group: gi as u32,
                instance,
                operator_names: names,
                operator_key_groups: Vec::new(),
                writer: write_tx.clone(),
                triggers: trigger_rx,
                finals: finals.clone(),
                final_state: checkpointing,
                cancel: cancel.clone(),
                shared: shared.clone(),
                job: spec.name.clone(),
                source_name: group.source.clone().unwrap_or_default(),
            };
            let thread_name = name.clone();
            let build = move || -> Result<Task, TaskError> {
                let mut link = link;
                let mut operators = Vec::new();
                let mut sides = Vec::new();
                for &i in &ops {
                    let operator_env = OperatorEnv {
                        wasm: &wasm,
                        job: &job,
                        max_parallelism,
                        shared: &shared,
                        state: &state,
                        restore: restore.as_deref(),
                    };
                    let (op, info) = build_operator(&operator_env, &plans[i], instance)?;
                    link.operator_key_groups.push(info.key_groups.clone());
                    let mut outputs = Vec::new();
                    for s in op.side_outputs() {
                        outputs.push(match side_sinks[i].get(s) {
                            Some(f) => Some(f.instance()?),
                            None => None,
                        });
                    }
                    sides.push(outputs);
                    operators.push(op);
                }
                let mut task = Task::new(name, head, operators, sides, tail, batch_size, link);
                task.set_rejects(rejects);
                if let Some(w) = resume_watermark {
                    task.resume_at(w)?;
                }
                Ok(task)
            };
            builds.push(PendingTask {
                name: thread_name,
                group: gi,
                instance: instance as usize,
                build: Box::new(build),
            });
        }
    }
    // The threads: one per task, but one per pair of a source instance and
    // the instance it shares a thread with.
    let mut builds: Vec<Option<PendingTask>> = builds.into_iter().map(Some).collect();
    let mut handles = Vec::new();
    for index in 0..builds.len() {
        let Some(PendingTask {
            name,
            group,
            instance,
            build,
        }) = builds[index].take()
        else {
            continue;
        };
        let events = events.clone();
        let report = move |task: usize, result: Result<TaskStats, TaskError>| {
            let _ = events.send(TaskEvent::Exited { task, result });
        };
        let partner = thread_sharing.get(&group).map(|&reader| {
            let partner = task_index[reader][instance];
            let pending = builds[partner].take().expect("a reader pairs once");
            (partner, pending.build)
        });
        let thread_name = match &partner {
            Some(_) => format!("{name}+"),
            None => name.clone(),
        };
        let run = move || match partner {
            None => {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build()?.run()))
                        .unwrap_or_else(|panic| Err(panicked(&name, &panic)));
                report(index, result);
            }
            Some((partner, build_reader)) => crate::runtime::pair::build_and_run_pair(
                &name,
                (index, build),
                (partner, build_reader),
                &report,
            ),
        };
        let handle = std::thread::Builder::new()
            .name(format!("weir-{thread_name}"))
            .stack_size(8 << 20)
            .spawn(run)
            .map_err(|e| {
                setup(JobError::Internal {
                    job: spec.name.clone(),
                    message: format!("cannot start a task thread: {e}"),
                })
            })?;
        handles.push(handle);
    }
    drop(senders);
    drop(finals);
    let tasks = builds.len();

    let checkpoint_spec = spec.checkpoint.clone();
    let mut coordinator = Coordinator::new(
        CoordinatorConfig {
            job: spec.name.clone(),
            store,
            interval: checkpoint_spec.as_ref().map(|c| c.interval),
            timeout: checkpoint_spec
                .as_ref()
                .map_or(Duration::from_secs(600), |c| c.timeout),
            retain: checkpoint_spec.as_ref().map_or(1, |c| c.retain),
            max_parallelism: spec.max_parallelism,
            source_splits,
            modules: prepared.modules.lock().expect("modules lock").clone(),
            state_backend: match spec.state {
                StateBackendKind::Memory => "memory",
                StateBackendKind::Rocksdb => "rocksdb",
            },
            on_complete: kafka_offset_commits(spec),
            restart_on_abort: !exactly_once_kafka_sinks(spec).is_empty(),
        },
        triggers,
        write_tx,
        all_sinks.clone(),
    )
    .map_err(|e| setup(e.into()))?;

    // The runner loop: the coordinator's clock, task events, commands.
    let mut running = tasks;
    let mut stats: Vec<Option<TaskStats>> = vec![None; tasks];
    let mut first_error: Option<JobError> = None;
    let mut echo: Option<JobError> = None;
    let mut cancelled = false;
    let mut stopped_with: Option<PathBuf> = None;
    let mut stop_reply: Option<StopReply> = None;
    // Every task finished: the final checkpoint commits the last output.
    let mut need_final = false;
    for command in deferred {
        start_command(prepared, &mut coordinator, swap, &mut stop_reply, command);
    }
    while running > 0 || coordinator.is_pending() || need_final {
        let deadline = coordinator
            .deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        crossbeam_channel::select! {
            recv(event_rx) -> event => match event.expect("the runner holds a sender") {
                TaskEvent::Exited { task, result } => {
                    running -= 1;
                    coordinator.on_gone(task);
                    match result {
                        Ok(s) => stats[task] = Some(s),
                        Err(TaskError::PeerStopped { task }) => {
                            echo.get_or_insert(JobError::Internal {
                                job: spec.name.clone(),
                                message: format!("task {task} stopped because a connected task stopped"),
                            });
                        }
                        Err(e) => {
                            if first_error.is_none() {
                                tracing::error!(job = %spec.name, error = %e, "task failed");
                                cancel.store(true, Ordering::Relaxed);
                                coordinator.abandon("a task failed");
                            }
                            first_error.get_or_insert(e.into());
                        }
                    }
                    need_final = running == 0 && first_error.is_none() && echo.is_none()
                        && !cancelled && stats.iter().flatten().all(|s| !s.stopped)
                        && checkpointing;
                }
                TaskEvent::Written(w) => coordinator.on_written(w),
            },
            recv(final_rx) -> f => {
                if let Ok(f) = f {
                    coordinator.on_finished(f.task, f.last, f.snapshot, f.state);
                }
            },
            recv(commands) -> command => match command {
                Ok(command @ (JobCommand::Savepoint { .. } | JobCommand::Swap { .. })) => {
                    start_command(prepared, &mut coordinator, swap, &mut stop_reply, command);
                }
                Ok(JobCommand::Cancel) => {
                    cancelled = true;
                    cancel.store(true, Ordering::Relaxed);
                    coordinator.abandon("the job was cancelled");
                }
                Err(_) => {}
            },
            default(deadline.saturating_duration_since(Instant::now())) => {}
        }
        coordinator.tick(Instant::now());
        if let Some(reason) = coordinator.take_failure()
            && first_error.is_none()
        {
            tracing::error!(job = %spec.name, %reason, "restarting");
            cancel.store(true, Ordering::Relaxed);
            coordinator.abandon("the run is restarting");
            first_error = Some(JobError::Internal {
                job: spec.name.clone(),
                message: reason,
            });
        }
        if let Some(s) = swap.as_mut() {
            match s.swapped_at {
                None => match s.ack.try_recv() {
                    Ok(Ok(_)) => {
                        let id = coordinator.counts.last_completed.unwrap_or_default();
                        s.swapped_at = Some(id);
                        coordinator.set_module(ModuleVersion {
                            operator: s.order.operator.clone(),
                            module: s.order.module.name.clone(),
                            digest: s.order.module.digest.clone(),
                        });
                    }
                    Ok(Err(CheckpointError::NotRunning)) => {
                        let s = swap.take().expect("checked");
                        let _ = s.reply.send(Err(SwapError::NotRunning));
                    }
                    Ok(Err(e)) => {
                        // Tasks that passed the barrier run the new version,
                        // the others the old: only a restart from the last
                        // complete checkpoint makes the job whole again.
                        if first_error.is_none() {
                            cancel.store(true, Ordering::Relaxed);
                            coordinator.abandon("a hot swap's checkpoint failed");
                        }
                        first_error.get_or_insert(JobError::Internal {
                            job: spec.name.clone(),
                            message: format!(
                                "the checkpoint of the hot swap of `{}` did not complete: {e}",
                                s.order.operator
                            ),
                        });
                    }
                    Err(_) => {}
                },
                Some(at) if coordinator.counts.last_completed > Some(at) => {
                    let s = swap.take().expect("checked");
                    commit_swap(prepared, &s.order);
                    let confirmed_by = coordinator.counts.last_completed.unwrap_or_default();
                    tracing::info!(job = %spec.name, operator = %s.order.operator,
                        module = %s.order.module.name, swapped_at = at, confirmed_by,
                        "hot swap committed");
                    let _ = s.reply.send(Ok(SwapOutcome::Committed {
                        swapped_at: at,
                        confirmed_by,
                    }));
                }
                Some(_) => {}
            }
        }
        if need_final && !coordinator.is_pending() {
            // After a savepoint that was in flight, if there was one.
            coordinator.final_checkpoint();
            need_final = false;
        }
        if let Some((_, answer)) = &stop_reply
            && let Ok(result) = answer.try_recv()
        {
            let (reply, _) = stop_reply.take().expect("checked");
            if let Ok(path) = &result {
                stopped_with = Some(path.clone());
            }
            let _ = reply.send(result);
        }
        if first_error.is_some() && running == 0 {
            break;
        }
    }
    if let Some((reply, answer)) = stop_reply.take() {
        let result = answer
            .try_recv()
            .unwrap_or(Err(CheckpointError::NotRunning));
        if let Ok(path) = &result {
            stopped_with = Some(path.clone());
        }
        let _ = reply.send(result);
    }
    coordinator.abandon("the run ended");
    let counts = coordinator.counts;
    drop(coordinator);
    for handle in handles {
        let _ = handle.join();
    }
    drop(events);
    let _ = writer.join();

    if cancelled {
        return Err(RunError::Cancelled);
    }
    if let Some(e) = first_error.or(echo) {
        return Err(RunError::Failed(e));
    }
    let stats: Vec<TaskStats> = stats.into_iter().flatten().collect();
    // Source groups come first in the plan, so their tasks do.
    let source_tasks: u32 = groups
        .iter()
        .filter(|g| g.source.is_some())
        .map(|g| g.parallelism)
        .sum();
    let records_in = stats
        .iter()
        .take(source_tasks as usize)
        .map(|s| s.records_in)
        .sum();
    let blocked = stats.iter().map(|s| s.blocked).sum();
    let mut side_records = BTreeMap::new();
    for (op, sinks) in spec.operators.iter().zip(side_sinks.iter()) {
        for (name, f) in sinks {
            side_records.insert(
                format!("{}.{name}", op.name),
                f.totals.records.load(Ordering::Relaxed),
            );
        }
    }
    Ok(JobReport {
        records_in,
        sink_records: main_sink.totals.records.load(Ordering::Relaxed),
        sink_value_sum: main_sink.totals.value_sum.load(Ordering::Relaxed),
        sink_digest: main_sink.totals.digest.load(Ordering::Relaxed),
        side_records,
        unrouted_side_records: shared.unrouted_side_records.load(Ordering::Relaxed),
        far_future_records: shared.far_future_records.load(Ordering::Relaxed),
        late_records: shared.late_records.load(Ordering::Relaxed),
        rejected_records: shared.rejected_records.load(Ordering::Relaxed),
        dead_letter_records: dead_letter_sink
            .as_ref()
            .map_or(0, |f| f.totals.records.load(Ordering::Relaxed)),
        elapsed: started.elapsed(),
        blocked,
        latency: shared.latency,
        restored_from: restore.as_ref().map(|c| c.dir.clone()),
        restarts: 0,
        checkpoints: counts,
        stopped_with_savepoint: stopped_with,
    })
}

/// The job's Kafka sinks with exactly-once delivery, each with the name its
/// transactional ids derive from.
fn exactly_once_kafka_sinks(spec: &JobSpec) -> Vec<(crate::graph::spec::KafkaSinkSpec, String)> {
    use crate::graph::spec::{KafkaDelivery, SinkSpec};
    let mut sinks = vec![("main".to_owned(), &spec.sink)];
    for op in &spec.operators {
        for (name, sink) in &op.side_outputs {
            sinks.push((format!("{}.{name}", op.name), sink));
        }
    }
    sinks.extend(
        spec.dead_letter
            .iter()
            .map(|s| (DEAD_LETTER_SINK.to_owned(), s)),
    );
    sinks
        .into_iter()
        .filter_map(|(name, sink)| match sink {
            SinkSpec::Kafka(k) if k.delivery == KafkaDelivery::ExactlyOnce => Some((
                k.clone(),
                crate::connectors::sinks::kafka_sink_job(&spec.name, &name),
            )),
            _ => None,
        })
        .collect()
}

/// Before choosing the checkpoint to restore: fences the producers of
/// earlier runs of the job's exactly-once Kafka sinks (which completes a
/// commit they had asked for and aborts the rest), reads which checkpoint
/// committed last, and settles a checkpoint left in doubt by a crash
/// between its Kafka commit and its manifest by that. With several such
/// sinks a checkpoint counts as committed only if all committed it.
fn settle_in_doubt(spec: &JobSpec, store: &CheckpointStore) -> Result<(), JobError> {
    let sinks = exactly_once_kafka_sinks(spec);
    if sinks.is_empty() {
        return Ok(());
    }
    let mut committed = u64::MAX;
    for (sink, job) in &sinks {
        crate::connectors::kafka::SinkTransactions::open(sink, job)?;
        committed = committed.min(crate::connectors::kafka::committed_checkpoint(sink, job)?);
    }
    store.settle_prepared(committed)?;
    Ok(())
}

/// Commits the offsets of each complete checkpoint to the consumer groups
/// of the job's Kafka sources (for lag monitoring).
fn kafka_offset_commits(spec: &JobSpec) -> Option<crate::checkpoint::coordinator::CompleteHook> {
    let mut groups = Vec::new();
    for (name, source) in spec.all_sources() {
        let SourceSpec::Kafka(k) = source else {
            continue;
        };
        match crate::connectors::kafka::GroupOffsets::new(k) {
            Ok(group) => groups.push((name.to_owned(), group)),
            Err(e) => {
                tracing::warn!(job = %spec.name, source = name, error = %e,
                    "checkpointed offsets will not be committed to the consumer group");
            }
        }
    }
    if groups.is_empty() {
        return None;
    }
    Some(Box::new(move |m: &crate::checkpoint::Manifest| {
        for (name, group) in &groups {
            let positions: Vec<_> = m
                .tasks
                .iter()
                .filter_map(|t| t.source.as_ref())
                .filter(|s| s.name == *name)
                .flat_map(|s| s.positions.iter().cloned())
                .collect();
            group.commit(&positions);
        }
    }))
}

/// A task group's name in task names and in the metrics' `task` label
/// (`<name>#<instance>`): for a source group the type of the job's
/// `source` or the name of one of its `sources`, then the names of its
/// operators, joined by `+`.
pub fn group_name(spec: &JobSpec, group: &TaskGroup) -> String {
    let mut parts: Vec<&str> = Vec::new();
    match group.source.as_deref() {
        Some(crate::graph::spec::MAIN_SOURCE) => parts.push(spec.source.kind()),
        Some(name) => parts.push(name),
        None => {}
    }
    parts.extend(
        group
            .operators
            .iter()
            .map(|&i| spec.operators[i].name.as_str()),
    );
    parts.join("+")
}

/// Loads a spec file and runs it.
pub fn run_file(path: &Path, env: &JobEnv) -> Result<JobReport, JobError> {
    let spec = JobSpec::load(path)?;
    run(&spec, env)
}
