//! `weir bench`: the same workloads as the Flink comparison job, run in this
//! process with the example Wasm operators, and where a native version
//! exists, the same logic as a native operator through the same runtime path,
//! in the same run, so the ratio is measured under the same conditions.
//!
//! Each measured figure is the median of `runs` runs after one warm-up run.
//! The output's last line is one JSON object.
//!
//! With `--checkpoint-interval`, the Wasm workload also runs with
//! checkpoints every interval (to a temporary folder), in the same process
//! after the runs without, and `checkpoint_vs_none` is the ratio of their
//! throughput.
//!
//! With `--state rocksdb`, the Wasm workload also runs with memory state as
//! the baseline (`rocksdb_vs_memory`). Peak RSS is measured per variant: the
//! kernel's high-water mark is reset before each one.
//!
//! The `nexmark-*` workloads run the Nexmark example jobs (see [`nexmark`])
//! and check their output against a native model of each query: record
//! count and an order-independent digest of (key, value, event time).

pub mod nexmark;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::graph::spec::{CheckpointSpec, JobSpec, RocksDbSpec, SinkSpec, StateBackendKind};
use crate::runtime::{JobEnv, JobError, JobReport, RestoreFrom, StartOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// value + 1, keep 50% (map + filter, chained with the source).
    Passthrough,
    /// Per-key counter in value state, key = i % 10000.
    KeyedCount,
    /// key = i % 10000, event time = i ms, count per key in 1-second
    /// tumbling event-time windows, watermark out-of-orderness 0.
    WindowCount,
    /// Nexmark q0: pass-through (examples/nexmark/q0).
    NexmarkQ0,
    /// Nexmark q1: bids, price in euros.
    NexmarkQ1,
    /// Nexmark q2: bids on every 123rd auction.
    NexmarkQ2,
    /// Nexmark q5: hot items, per 10 s window sliding by 2 s.
    NexmarkQ5,
    /// Nexmark q7: highest bid per 10 s window.
    NexmarkQ7,
    /// Nexmark q8: new users (a two-input join of persons and auctions).
    NexmarkQ8,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub workload: Workload,
    pub events: u64,
    pub parallelism: u32,
    pub state: String,
    pub keys: u64,
    pub checkpoint_interval_ms: u64,
    /// RocksDB checkpoints without shared files.
    pub full_checkpoints: bool,
    pub runs: usize,
    pub batch_size: usize,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub workload: &'static str,
    pub events: u64,
    pub parallelism: u32,
    pub state: String,
    pub keys: u64,
    pub checkpoint_interval_ms: u64,
    pub batch_size: usize,
    pub runs: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub events_per_sec: f64,
    pub events_per_cpu_sec: f64,
    pub p99_latency_ms: f64,
    pub peak_rss_bytes: u64,
    pub native_events_per_sec: Option<f64>,
    pub native_cpu_seconds: Option<f64>,
    pub wasm_vs_native: Option<f64>,
    /// With checkpoints: the Wasm workload's events/s with them, and the
    /// ratio to the same workload without.
    pub checkpointed_events_per_sec: Option<f64>,
    pub checkpoint_vs_none: Option<f64>,
    pub checkpoints_completed: Option<u64>,
    /// Mean full size of a checkpoint, and mean bytes each stored beyond
    /// the files of the one before.
    pub checkpoint_bytes: Option<u64>,
    pub checkpoint_added_bytes: Option<u64>,
    /// With `--state rocksdb`: the same Wasm workload on memory state.
    pub memory_events_per_sec: Option<f64>,
    pub memory_peak_rss_bytes: Option<u64>,
    pub rocksdb_vs_memory: Option<f64>,
    pub output_ok: bool,
}

/// Which variant of a workload a run measures.
#[derive(Clone, Copy)]
struct Variant {
    native: bool,
    checkpoint_interval: Option<Duration>,
    state: StateBackendKind,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("workload {workload}: wrong output: {problem}")]
    WrongOutput { workload: String, problem: String },
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Passthrough => "passthrough",
            Workload::KeyedCount => "keyed-count",
            Workload::WindowCount => "window-count",
            w => w.nexmark().expect("a Nexmark workload").name(),
        }
    }

    /// The Nexmark query of a `nexmark-*` workload.
    fn nexmark(self) -> Option<nexmark::Query> {
        Some(match self {
            Workload::NexmarkQ0 => nexmark::Query::Q0,
            Workload::NexmarkQ1 => nexmark::Query::Q1,
            Workload::NexmarkQ2 => nexmark::Query::Q2,
            Workload::NexmarkQ5 => nexmark::Query::Q5,
            Workload::NexmarkQ7 => nexmark::Query::Q7,
            Workload::NexmarkQ8 => nexmark::Query::Q8,
            _ => return None,
        })
    }

    /// Whether a native twin of the workload's operator exists.
    fn has_native(self) -> bool {
        !matches!(self, Workload::WindowCount) && self.nexmark().is_none()
    }

    fn spec(self, o: &BenchOptions, native: bool) -> JobSpec {
        if let Some(q) = self.nexmark() {
            let mut spec = q.job(o.events, o.parallelism, SinkSpec::Discard { rate: None });
            spec.batch.size = o.batch_size;
            return spec;
        }
        let operator = match (self, native) {
            (Workload::Passthrough, false) => "{name: op, module: passthrough}",
            (Workload::Passthrough, true) => "{name: op, native: passthrough}",
            (Workload::KeyedCount, false) => "{name: op, module: keyed-count, input: key}",
            (Workload::KeyedCount, true) => "{name: op, native: keyed-count, input: key}",
            (Workload::WindowCount, _) => {
                "{name: op, module: window-count, input: key, window: {type: tumbling, size: 1s}}"
            }
            _ => unreachable!("Nexmark workloads returned above"),
        };
        let text = format!(
            "name: bench-{}\nparallelism: {}\nbatch: {{size: {}}}\n\
             source: {{type: generator, events: {}, keys: {}}}\n\
             operators: [{operator}]\nsink: {{type: discard}}\n",
            self.name(),
            o.parallelism,
            o.batch_size,
            o.events,
            o.keys
        );
        JobSpec::parse(&text).expect("bench specs are valid")
    }

    /// Checks count and content of the output against the definition.
    fn check(self, events: u64, keys: u64, report: &JobReport) -> Result<(), String> {
        let (records, sum) = match self {
            Workload::Passthrough => {
                // i odd <=> i + 1 even: keep i + 1 for odd i.
                let odd = events / 2;
                let sum = (0..events)
                    .filter(|i| i % 2 == 1)
                    .fold(0u64, |s, i| s.wrapping_add(i + 1));
                (odd, sum)
            }
            Workload::KeyedCount => {
                let sum = (0..keys.min(events)).fold(0u64, |s, k| {
                    let c = events / keys + u64::from(k < events % keys);
                    s.wrapping_add(c * (c + 1) / 2)
                });
                (events, sum)
            }
            // 1000 events a window over at least 1000 keys: every (key,
            // window) holds exactly one event.
            Workload::WindowCount if keys >= 1000 => (events, events),
            Workload::WindowCount => return Ok(()),
            _ => return Ok(()), // checked by `check_nexmark`
        };
        if report.sink_records != records || report.sink_value_sum != sum {
            return Err(format!(
                "expected {records} records summing to {sum}, got {} summing to {}",
                report.sink_records, report.sink_value_sum
            ));
        }
        Ok(())
    }
}

/// CPU seconds (user + system) used by this process so far.
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer we pass,
    // which points to properly sized and aligned storage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: rc == 0, so getrusage initialised the struct.
    let u = unsafe { usage.assume_init() };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The process's peak resident set size in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Resets the kernel's peak-RSS mark of this process (Linux 4.0+), so the
/// next reading covers only what ran since.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    p99: Option<Duration>,
    checkpoints: u64,
    checkpoint_bytes: u64,
    checkpoint_added_bytes: u64,
    peak_rss: u64,
}

/// Bytes per completed checkpoint over all runs.
fn per_checkpoint(runs: &[Measured], bytes: impl Fn(&Measured) -> u64) -> u64 {
    let checkpoints: u64 = runs.iter().map(|m| m.checkpoints).sum();
    runs.iter().map(bytes).sum::<u64>() / checkpoints.max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs a spec from the start (never resuming an earlier run's checkpoint).
fn run_fresh(spec: &JobSpec, env: &JobEnv) -> Result<JobReport, JobError> {
    if let Some(c) = &spec.checkpoint {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    let report = crate::runtime::start(
        spec,
        env,
        StartOptions {
            restore: RestoreFrom::Fresh,
        },
    )?
    .wait();
    if let Some(c) = &spec.checkpoint {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    if let Some(r) = &spec.rocksdb {
        let _ = std::fs::remove_dir_all(&r.dir);
    }
    report
}

fn measure(
    workload: Workload,
    o: &BenchOptions,
    env: &JobEnv,
    variant: Variant,
) -> Result<Vec<Measured>, BenchError> {
    let native = variant.native;
    // Nexmark output is checked by digest; the others by count and sum.
    let env = &JobEnv {
        digest_sink_records: workload.nexmark().is_some(),
        ..env.clone()
    };
    let mut spec = workload.spec(o, native);
    spec.state = variant.state;
    if variant.state == StateBackendKind::Rocksdb {
        spec.rocksdb = Some(RocksDbSpec {
            dir: std::env::temp_dir().join(format!("weir-bench-state-{}", std::process::id())),
            incremental: !o.full_checkpoints,
            ..RocksDbSpec::default()
        });
    }
    spec.checkpoint = variant.checkpoint_interval.map(|interval| CheckpointSpec {
        interval,
        dir: std::env::temp_dir().join(format!("weir-bench-{}", std::process::id())),
        local_dir: std::env::temp_dir().join(format!("weir-bench-cache-{}", std::process::id())),
        retain: 2,
        timeout: Duration::from_secs(600),
    });
    let warmup = JobSpec {
        source: match &spec.source {
            crate::graph::spec::SourceSpec::Generator(_)
            | crate::graph::spec::SourceSpec::Nexmark(_) => {
                workload
                    .spec(
                        &BenchOptions {
                            events: (o.events / 10).max(10_000),
                            ..o.clone()
                        },
                        native,
                    )
                    .source
            }
            other => other.clone(),
        },
        ..spec.clone()
    };
    run_fresh(&warmup, env)?;
    // The model's count and digest, computed once (it generates every event).
    let expected = workload
        .nexmark()
        .map(|q| (q, nexmark::expected(q, o.events)));
    let mut out = Vec::new();
    for _ in 0..o.runs.max(1) {
        reset_peak_rss();
        let cpu0 = cpu_seconds();
        let report = run_fresh(&spec, env)?;
        let cpu = cpu_seconds() - cpu0;
        let peak_rss = peak_rss_bytes();
        let checked = match expected {
            Some((q, (records, digest))) => {
                if report.sink_records == records && report.sink_digest == digest {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {records} records with digest {digest:x} (native model of {}), \
                         got {} with digest {:x}",
                        q.name(),
                        report.sink_records,
                        report.sink_digest
                    ))
                }
            }
            None => workload.check(o.events, o.keys, &report),
        };
        checked.map_err(|problem| BenchError::WrongOutput {
            workload: format!(
                "{}{}",
                workload.name(),
                if native { " (native)" } else { "" }
            ),
            problem,
        })?;
        out.push(Measured {
            seconds: report.elapsed.as_secs_f64(),
            cpu_seconds: cpu,
            p99: report.latency.quantile(0.99),
            checkpoints: report.checkpoints.completed,
            checkpoint_bytes: report.checkpoints.bytes,
            checkpoint_added_bytes: report.checkpoints.added_bytes,
            peak_rss,
        });
    }
    Ok(out)
}

pub fn run(o: &BenchOptions, env: &JobEnv) -> Result<BenchResult, BenchError> {
    let state = match o.state.as_str() {
        "memory" => StateBackendKind::Memory,
        "rocksdb" => StateBackendKind::Rocksdb,
        other => {
            return Err(BenchError::Unsupported(format!(
                "unknown state backend `{other}`: use memory or rocksdb"
            )));
        }
    };
    if o.keys == 0 {
        return Err(BenchError::Unsupported("--keys must be at least 1".into()));
    }
    let plain = Variant {
        native: false,
        checkpoint_interval: None,
        state,
    };
    let wasm = measure(o.workload, o, env, plain)?;
    let memory = if state == StateBackendKind::Rocksdb {
        Some(measure(
            o.workload,
            o,
            env,
            Variant {
                state: StateBackendKind::Memory,
                ..plain
            },
        )?)
    } else {
        None
    };
    let native = if o.workload.has_native() {
        Some(measure(
            o.workload,
            o,
            env,
            Variant {
                native: true,
                ..plain
            },
        )?)
    } else {
        None
    };
    let checkpointed = if o.checkpoint_interval_ms > 0 {
        Some(measure(
            o.workload,
            o,
            env,
            Variant {
                checkpoint_interval: Some(Duration::from_millis(o.checkpoint_interval_ms)),
                ..plain
            },
        )?)
    } else {
        None
    };
    let checkpointed_eps = checkpointed
        .as_ref()
        .map(|c| o.events as f64 / median(c.iter().map(|m| m.seconds).collect()));
    let seconds = median(wasm.iter().map(|m| m.seconds).collect());
    let cpu = median(wasm.iter().map(|m| m.cpu_seconds).collect());
    let p99 = median(
        wasm.iter()
            .map(|m| m.p99.map_or(0.0, |d| d.as_secs_f64() * 1e3))
            .collect(),
    );
    let eps = o.events as f64 / seconds;
    let memory_eps = memory
        .as_ref()
        .map(|m| o.events as f64 / median(m.iter().map(|m| m.seconds).collect()));
    let peak = |runs: &[Measured]| runs.iter().map(|m| m.peak_rss).max().unwrap_or(0);
    let native_eps = native
        .as_ref()
        .map(|n| o.events as f64 / median(n.iter().map(|m| m.seconds).collect()));
    let native_cpu = native
        .as_ref()
        .map(|n| median(n.iter().map(|m| m.cpu_seconds).collect()));
    Ok(BenchResult {
        workload: o.workload.name(),
        events: o.events,
        parallelism: o.parallelism,
        state: o.state.clone(),
        keys: o.keys,
        checkpoint_interval_ms: o.checkpoint_interval_ms,
        batch_size: o.batch_size,
        runs: o.runs.max(1),
        seconds,
        cpu_seconds: cpu,
        events_per_sec: eps,
        events_per_cpu_sec: o.events as f64 / cpu.max(1e-9),
        p99_latency_ms: p99,
        peak_rss_bytes: peak(&wasm),
        native_events_per_sec: native_eps,
        native_cpu_seconds: native_cpu,
        wasm_vs_native: native_eps.map(|n| eps / n),
        checkpointed_events_per_sec: checkpointed_eps,
        checkpoint_vs_none: checkpointed_eps.map(|c| c / eps),
        checkpoints_completed: checkpointed
            .as_ref()
            .map(|c| median(c.iter().map(|m| m.checkpoints as f64).collect()) as u64),
        checkpoint_bytes: checkpointed
            .as_deref()
            .map(|c| per_checkpoint(c, |m| m.checkpoint_bytes)),
        checkpoint_added_bytes: checkpointed
            .as_deref()
            .map(|c| per_checkpoint(c, |m| m.checkpoint_added_bytes)),
        memory_events_per_sec: memory_eps,
        memory_peak_rss_bytes: memory.as_deref().map(peak),
        rocksdb_vs_memory: memory_eps.map(|m| eps / m),
        output_ok: true,
    })
}

/// Where the bench looks for example modules when none are given.
pub fn default_module_dirs() -> Vec<PathBuf> {
    std::env::var_os("WEIR_MODULE_DIR")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default()
}
