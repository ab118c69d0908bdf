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
//! Failure: when a task fails, its channels close, its neighbours stop with
//! `PeerStopped`, and the job reports the first failure that is not
//! `PeerStopped`: the cause, not its echoes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::connectors::{ConnectorError, SinkFactory, Source, build_source};
use crate::graph::spec::{JobSpec, SourceSpec, StateBackendKind, WindowSpec};
use crate::graph::{TaskGroup, key_group_range, plan};
use crate::runtime::latency::LatencyHistogram;
use crate::runtime::operator::{InstanceInfo, Operator, OperatorError};
use crate::runtime::router::{Envelope, Router};
use crate::runtime::task::{Head, SharedCounters, SourceTime, Tail, Task, TaskError, TaskStats};
use crate::state::MemoryBackend;
use crate::time::InputWatermarks;
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
    #[error("state backend `{0:?}` is not available in this build")]
    Unsupported(StateBackendKind),
    #[error("job `{job}`: {message}")]
    Internal { job: String, message: String },
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
        }
    }
}

/// Builds source instance `instance` of `parallelism` for a spec whose
/// source is `embedded`.
pub type EmbeddedSource = Arc<dyn Fn(u32, u32) -> Box<dyn Source> + Send + Sync>;

/// What a job runs with: the Wasm runtime and where module names are looked up.
#[derive(Clone)]
pub struct JobEnv {
    pub wasm: Arc<WasmRuntime>,
    pub module_dirs: Vec<PathBuf>,
    /// The source of specs with `source: {type: embedded}`, for programs
    /// that use Weir as a library.
    pub embedded_source: Option<EmbeddedSource>,
}

impl JobEnv {
    pub fn new(wasm: Arc<WasmRuntime>, module_dirs: Vec<PathBuf>) -> Self {
        JobEnv {
            wasm,
            module_dirs,
            embedded_source: None,
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
    /// Records per side output (`operator.side-output`) that reached a sink.
    pub side_records: BTreeMap<String, u64>,
    /// Records emitted to side outputs that have no sink in the spec.
    pub unrouted_side_records: u64,
    /// Records too far ahead of the wall clock to move the watermark.
    pub far_future_records: u64,
    /// Records later than their windows' allowed lateness (sent to the
    /// windows' late side outputs).
    pub late_records: u64,
    pub elapsed: Duration,
    /// Time tasks spent blocked on full channels, summed.
    pub blocked: Duration,
    pub latency: Arc<LatencyHistogram>,
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

enum OperatorKind {
    Wasm { module: WasmModule, config: Vec<u8> },
    Native(String),
}

/// Everything a task thread needs to build its operators.
struct OperatorPlan {
    name: String,
    kind: OperatorKind,
    parallelism: u32,
    keyed: bool,
    window: Option<WindowSpec>,
}

fn build_operator(
    wasm: &WasmRuntime,
    plan: &OperatorPlan,
    job: &str,
    instance: u32,
    max_parallelism: u32,
    shared: &SharedCounters,
) -> Result<Box<dyn Operator>, OperatorError> {
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
    let backend = Box::new(MemoryBackend::new(key_groups));
    match &plan.kind {
        OperatorKind::Wasm { module, config } => {
            let guest = wasm.instantiate(module, info.clone(), backend, config)?;
            match &plan.window {
                Some(window) => Ok(Box::new(WindowOperator::new(
                    guest,
                    info,
                    window,
                    shared.late_records.clone(),
                )?)),
                None => Ok(Box::new(guest)),
            }
        }
        OperatorKind::Native(name) => crate::operators::build(name, info, backend),
    }
}

/// Runs a job to completion (all sources exhausted) in this process.
pub fn run(spec: &JobSpec, env: &JobEnv) -> Result<JobReport, JobError> {
    spec.validate()?;
    if spec.state != StateBackendKind::Memory {
        return Err(JobError::Unsupported(spec.state));
    }
    let started = Instant::now();
    let groups = plan(spec);

    let mut operator_plans = Vec::new();
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
            (None, Some(native)) => OperatorKind::Native(native.clone()),
            (None, None) => unreachable!("validate() requires module or native"),
        };
        let group = groups
            .iter()
            .find(|g| g.operators.contains(&i))
            .expect("every operator is planned");
        let keyed = group.operators.first() == Some(&i)
            && group.input == Some(crate::graph::Partitioning::Key);
        operator_plans.push(OperatorPlan {
            name: op.name.clone(),
            kind,
            parallelism: spec.operator_parallelism(i),
            keyed,
            window: op.window.clone(),
        });
    }
    let operator_plans = Arc::new(operator_plans);

    let main_sink = SinkFactory::new(&spec.sink)?;
    let mut side_sinks: Vec<BTreeMap<String, SinkFactory>> = Vec::new();
    for op in &spec.operators {
        let mut m = BTreeMap::new();
        for (name, sink) in &op.side_outputs {
            m.insert(name.clone(), SinkFactory::new(sink)?);
        }
        side_sinks.push(m);
    }
    let side_sinks = Arc::new(side_sinks);

    // Channels: one bounded channel per instance of every group but the first.
    let mut receivers: Vec<Vec<Option<Receiver<Envelope>>>> = vec![Vec::new()];
    let mut senders: Vec<Vec<Sender<Envelope>>> = vec![Vec::new()];
    for g in &groups[1..] {
        let (s, r): (Vec<_>, Vec<_>) = (0..g.parallelism)
            .map(|_| crossbeam_channel::bounded(CHANNEL_BATCHES))
            .unzip();
        senders.push(s);
        receivers.push(r.into_iter().map(Some).collect());
    }

    let shared = SharedCounters::default();
    let watermark_spec = spec.watermark();
    let mut handles = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        for instance in 0..group.parallelism {
            let head = if gi == 0 {
                let source = match (&spec.source, &env.embedded_source) {
                    (SourceSpec::Embedded(_), Some(make)) => make(instance, group.parallelism),
                    _ => build_source(&spec.source, instance, group.parallelism)?,
                };
                Head::Source {
                    source,
                    time: SourceTime::new(&watermark_spec),
                }
            } else {
                let inputs = groups[gi - 1].parallelism as usize;
                Head::Input {
                    receiver: receivers[gi][instance as usize]
                        .take()
                        .expect("each receiver is taken once"),
                    watermarks: InputWatermarks::new(inputs),
                    inputs,
                }
            };
            let tail = if gi + 1 < groups.len() {
                let next: &TaskGroup = &groups[gi + 1];
                Tail::Router(Router::new(
                    instance,
                    senders[gi + 1].clone(),
                    next.input.expect("later groups have an input"),
                    spec.batch.size,
                    spec.batch.linger,
                    spec.max_parallelism,
                ))
            } else {
                Tail::Sink(main_sink.instance())
            };
            let name = format!("{}/{}#{}", spec.name, group_name(spec, group), instance);
            let ops = group.operators.clone();
            let plans = operator_plans.clone();
            let wasm = env.wasm.clone();
            let side_sinks = side_sinks.clone();
            let job = spec.name.clone();
            let max_parallelism = spec.max_parallelism;
            let batch_size = spec.batch.size;
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("weir-{name}"))
                .stack_size(8 << 20)
                .spawn(move || -> Result<TaskStats, TaskError> {
                    let mut operators = Vec::new();
                    let mut sides = Vec::new();
                    for &i in &ops {
                        let op = build_operator(
                            &wasm,
                            &plans[i],
                            &job,
                            instance,
                            max_parallelism,
                            &shared,
                        )?;
                        sides.push(
                            op.side_outputs()
                                .iter()
                                .map(|s| side_sinks[i].get(s).map(SinkFactory::instance))
                                .collect(),
                        );
                        operators.push(op);
                    }
                    Task::new(name, head, operators, sides, tail, batch_size, shared).run()
                })
                .map_err(|e| JobError::Internal {
                    job: spec.name.clone(),
                    message: format!("cannot start a task thread: {e}"),
                })?;
            handles.push(handle);
        }
    }
    drop(senders);

    let mut first_error: Option<JobError> = None;
    let mut echo: Option<JobError> = None;
    let mut records_in = 0;
    let mut blocked = Duration::ZERO;
    for (gi, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(stats)) => {
                if gi < groups[0].parallelism as usize {
                    records_in += stats.records_in;
                }
                blocked += stats.blocked;
            }
            Ok(Err(TaskError::PeerStopped { task })) => {
                echo.get_or_insert(JobError::Internal {
                    job: spec.name.clone(),
                    message: format!("task {task} stopped because a connected task stopped"),
                });
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.into());
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                first_error.get_or_insert(JobError::Internal {
                    job: spec.name.clone(),
                    message: format!("a task panicked: {message}"),
                });
            }
        }
    }
    if let Some(e) = first_error.or(echo) {
        return Err(e);
    }
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
        side_records,
        unrouted_side_records: shared.unrouted_side_records.load(Ordering::Relaxed),
        far_future_records: shared.far_future_records.load(Ordering::Relaxed),
        late_records: shared.late_records.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        blocked,
        latency: shared.latency,
    })
}

fn group_name(spec: &JobSpec, group: &TaskGroup) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if group.input.is_none() {
        parts.push(match spec.source {
            SourceSpec::Generator(_) => "generator",
            SourceSpec::File(_) => "file",
            SourceSpec::Embedded(_) => "embedded",
        });
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
