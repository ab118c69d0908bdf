//! Prometheus metrics of the process, served as text by `GET /metrics`.
//!
//! One registry per process, since a server runs many jobs: every series
//! carries a `job` label, and where it applies `operator` and `task` (the
//! parallel instance, `0..parallelism`). Cardinality is therefore bounded by
//! jobs × operators × parallelism; trap kinds and checkpoint outcomes are
//! small fixed sets. Names follow Prometheus conventions: the `weir_`
//! prefix, base units (seconds, bytes) and `_total` on counters.
//!
//! The record path never looks a label up: a task resolves its series once
//! ([`OperatorMetrics`], [`TaskMetrics`]) and adds to them once per batch,
//! which costs a few relaxed atomic adds per batch, not per record.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder, local::LocalHistogram,
};

pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub batch_seconds: HistogramVec,
    pub latency_seconds: HistogramVec,
    pub watermark_seconds: GaugeVec,
    pub watermark_lag_seconds: GaugeVec,
    pub idle_inputs: IntGaugeVec,
    pub late_records: IntCounterVec,
    pub far_future_records: IntCounterVec,
    pub rejected_records: IntCounterVec,
    pub backpressure_seconds: CounterVec,
    pub checkpoint_seconds: HistogramVec,
    pub checkpoint_bytes: IntGaugeVec,
    pub checkpoint_added_bytes: IntGaugeVec,
    pub checkpoint_alignment_seconds: HistogramVec,
    pub checkpoints: IntCounterVec,
    pub last_checkpoint_id: IntGaugeVec,
    pub last_checkpoint_timestamp: GaugeVec,
    pub restarts: IntCounterVec,
    pub jobs_running: IntGauge,
    pub state_bytes: IntGaugeVec,
    pub wasm_calls: IntCounterVec,
    pub wasm_guest_seconds: CounterVec,
    pub wasm_traps: IntCounterVec,
    pub wasm_deadline_hits: IntCounterVec,
    pub wasm_memory_bytes: IntGaugeVec,
    pub module_compile_seconds: Histogram,
    pub hot_swaps: IntCounterVec,
}

const JOB: &[&str] = &["job"];
const JOB_OPERATOR: &[&str] = &["job", "operator"];
const JOB_OPERATOR_TASK: &[&str] = &["job", "operator", "task"];
const JOB_TASK: &[&str] = &["job", "task"];

/// Milliseconds to minutes: batches, guest calls, checkpoints.
fn duration_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ]
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(duration_buckets()),
                labels,
            )
        };
        Ok(Metrics {
            records_in: register!(counter(
                "weir_operator_records_in_total",
                "Records an operator instance received.",
                JOB_OPERATOR_TASK
            )?),
            records_out: register!(counter(
                "weir_operator_records_out_total",
                "Records an operator instance emitted to its main output.",
                JOB_OPERATOR_TASK
            )?),
            bytes_in: register!(counter(
                "weir_operator_bytes_in_total",
                "Key and value bytes an operator instance received.",
                JOB_OPERATOR_TASK
            )?),
            bytes_out: register!(counter(
                "weir_operator_bytes_out_total",
                "Key and value bytes an operator instance emitted to its main output.",
                JOB_OPERATOR_TASK
            )?),
            batch_seconds: register!(histogram(
                "weir_operator_batch_duration_seconds",
                "Time an operator took to process one batch.",
                JOB_OPERATOR
            )?),
            latency_seconds: register!(HistogramVec::new(
                HistogramOpts::new(
                    "weir_end_to_end_latency_seconds",
                    "From a record's ingestion (or event time) to its arrival at a sink; \
                     for a result a watermark released (a window's), from the ingestion of \
                     the batch that carried that watermark."
                )
                .buckets(duration_buckets()),
                &["job", "from"],
            )?),
            watermark_seconds: register!(GaugeVec::new(
                Opts::new(
                    "weir_watermark_seconds",
                    "Current event-time watermark of a task, as Unix time."
                ),
                JOB_TASK
            )?),
            watermark_lag_seconds: register!(GaugeVec::new(
                Opts::new(
                    "weir_watermark_lag_seconds",
                    "Wall-clock time minus the task's watermark."
                ),
                JOB_TASK
            )?),
            idle_inputs: register!(gauge(
                "weir_idle_inputs",
                "Inputs of a task currently excluded from its watermark as idle.",
                JOB_TASK
            )?),
            late_records: register!(counter(
                "weir_late_records_total",
                "Records later than every window they belong to (sent to the late output).",
                JOB
            )?),
            far_future_records: register!(counter(
                "weir_far_future_records_total",
                "Records beyond the future horizon, which do not move the watermark.",
                JOB
            )?),
            rejected_records: register!(counter(
                "weir_rejected_records_total",
                "Poison records set aside by the job's on_error policy (operator `source`: \
                 records the source could not decode), by outcome (skipped, dead_lettered).",
                &["job", "operator", "outcome"]
            )?),
            backpressure_seconds: register!(CounterVec::new(
                Opts::new(
                    "weir_backpressure_seconds_total",
                    "Time a task spent blocked on a full output channel."
                ),
                JOB_TASK
            )?),
            checkpoint_seconds: register!(histogram(
                "weir_checkpoint_duration_seconds",
                "From a checkpoint's trigger to its completion.",
                JOB
            )?),
            checkpoint_bytes: register!(gauge(
                "weir_checkpoint_size_bytes",
                "Size of the last completed checkpoint, shared files it lists included.",
                JOB
            )?),
            checkpoint_added_bytes: register!(gauge(
                "weir_checkpoint_added_bytes",
                "Bytes the last completed checkpoint stored beyond the files of the one before (all of it unless RocksDB checkpoints are incremental).",
                JOB
            )?),
            checkpoint_alignment_seconds: register!(histogram(
                "weir_checkpoint_alignment_duration_seconds",
                "Time a task with several inputs held inputs back while aligning a barrier.",
                JOB
            )?),
            checkpoints: register!(counter(
                "weir_checkpoints_total",
                "Checkpoints by outcome (completed, failed).",
                &["job", "outcome"]
            )?),
            last_checkpoint_id: register!(gauge(
                "weir_last_checkpoint_id",
                "Id of the last completed checkpoint.",
                JOB
            )?),
            last_checkpoint_timestamp: register!(GaugeVec::new(
                Opts::new(
                    "weir_last_checkpoint_timestamp_seconds",
                    "Unix time the last checkpoint completed (its age: time() minus this)."
                ),
                JOB
            )?),
            restarts: register!(counter(
                "weir_job_restarts_total",
                "Restarts of a job after a task failed.",
                JOB
            )?),
            jobs_running: register!(IntGauge::new(
                "weir_jobs_running",
                "Jobs running in this process."
            )?),
            state_bytes: register!(IntGaugeVec::new(
                Opts::new(
                    "weir_state_size_bytes",
                    "Keyed state of a task at its last snapshot, by backend."
                ),
                &["job", "task", "backend"]
            )?),
            wasm_calls: register!(counter(
                "weir_wasm_calls_total",
                "Calls into a guest (one per batch, timer firing or window result).",
                JOB_OPERATOR
            )?),
            wasm_guest_seconds: register!(CounterVec::new(
                Opts::new(
                    "weir_wasm_guest_seconds_total",
                    "Time spent inside guest calls."
                ),
                JOB_OPERATOR
            )?),
            wasm_traps: register!(counter(
                "weir_wasm_traps_total",
                "Guest calls that failed, by kind (trap, deadline, memory, error, output).",
                &["job", "operator", "kind"]
            )?),
            wasm_deadline_hits: register!(counter(
                "weir_wasm_deadline_hits_total",
                "Guest calls stopped for running past the call deadline.",
                JOB_OPERATOR
            )?),
            wasm_memory_bytes: register!(gauge(
                "weir_wasm_memory_bytes",
                "Linear memory of a guest instance.",
                JOB_OPERATOR_TASK
            )?),
            module_compile_seconds: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "weir_module_compile_duration_seconds",
                    "Time to compile (or load from the compile cache) an uploaded module."
                )
                .buckets(duration_buckets())
            )?),
            hot_swaps: register!(counter(
                "weir_hot_swaps_total",
                "Operators whose module was replaced while keeping their state.",
                JOB_OPERATOR
            )?),
            registry,
        })
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
    }
}

/// One job's current per-operator and per-task values.
#[derive(Debug, Default)]
pub struct JobValues {
    /// By (operator, instance): records in and out.
    pub records: BTreeMap<(String, u32), (u64, u64)>,
    /// The following by `task` label (`<task group>#<instance>`).
    pub watermark_seconds: BTreeMap<String, f64>,
    pub backpressure_seconds: BTreeMap<String, f64>,
    pub idle_inputs: BTreeMap<String, i64>,
}

impl Metrics {
    /// Reads one job's series without creating any (looking a series up by
    /// its labels would add it, at zero, to the exposition).
    pub fn job_values(&self, job: &str) -> JobValues {
        use prometheus::core::Collector;
        use prometheus::proto::{LabelPair, Metric};
        fn label<'a>(labels: &'a [LabelPair], name: &str) -> Option<&'a str> {
            labels.iter().find(|l| l.name() == name).map(|l| l.value())
        }
        fn each(collector: &dyn Collector, job: &str, mut f: impl FnMut(&[LabelPair], &Metric)) {
            for family in collector.collect() {
                for m in family.get_metric() {
                    if label(m.get_label(), "job") == Some(job) {
                        f(m.get_label(), m);
                    }
                }
            }
        }
        let mut v = JobValues::default();
        let operator_task = |labels: &[LabelPair]| {
            let operator = label(labels, "operator")?.to_owned();
            let task = label(labels, "task")?.parse().ok()?;
            Some((operator, task))
        };
        each(&self.records_in, job, |labels, m| {
            if let Some(key) = operator_task(labels) {
                v.records.entry(key).or_default().0 = m.get_counter().get_value() as u64;
            }
        });
        each(&self.records_out, job, |labels, m| {
            if let Some(key) = operator_task(labels) {
                v.records.entry(key).or_default().1 = m.get_counter().get_value() as u64;
            }
        });
        let by_task = |labels: &[LabelPair]| label(labels, "task").map(str::to_owned);
        each(&self.watermark_seconds, job, |labels, m| {
            if let Some(task) = by_task(labels) {
                v.watermark_seconds.insert(task, m.get_gauge().get_value());
            }
        });
        each(&self.backpressure_seconds, job, |labels, m| {
            if let Some(task) = by_task(labels) {
                v.backpressure_seconds
                    .insert(task, m.get_counter().get_value());
            }
        });
        each(&self.idle_inputs, job, |labels, m| {
            if let Some(task) = by_task(labels) {
                v.idle_inputs.insert(task, m.get_gauge().get_value() as i64);
            }
        });
        v
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().expect("metric names and labels are valid"))
}

/// The series of one operator instance, resolved once.
///
/// Histograms shared by all instances are observed through a local copy
/// that [`OperatorMetrics::flush`] merges: an observation on the shared one
/// is several atomic updates to cache lines every instance writes, and at a
/// few per batch that contention cost a keyed job at parallelism 2 about
/// 1.5% of its CPU time.
pub struct OperatorMetrics {
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub batch_seconds: LocalHistogram,
}

impl OperatorMetrics {
    pub fn new(job: &str, operator: &str, task: u32) -> Self {
        let m = metrics();
        let task = task.to_string();
        let labels = [job, operator, task.as_str()];
        OperatorMetrics {
            records_in: m.records_in.with_label_values(&labels),
            records_out: m.records_out.with_label_values(&labels),
            bytes_in: m.bytes_in.with_label_values(&labels),
            bytes_out: m.bytes_out.with_label_values(&labels),
            batch_seconds: m.batch_seconds.with_label_values(&[job, operator]).local(),
        }
    }

    /// Merges the local observations into the shared series.
    pub fn flush(&self) {
        self.batch_seconds.flush();
    }
}

/// The series of one task, resolved once (histograms shared by all tasks
/// local, as in [`OperatorMetrics`]).
pub struct TaskMetrics {
    pub watermark: prometheus::Gauge,
    pub watermark_lag: prometheus::Gauge,
    pub idle_inputs: IntGauge,
    pub backpressure: prometheus::Counter,
    pub alignment: Histogram,
    pub latency_ingestion: LocalHistogram,
    pub latency_event_time: LocalHistogram,
}

impl TaskMetrics {
    pub fn new(job: &str, task: &str) -> Self {
        let m = metrics();
        TaskMetrics {
            watermark: m.watermark_seconds.with_label_values(&[job, task]),
            watermark_lag: m.watermark_lag_seconds.with_label_values(&[job, task]),
            idle_inputs: m.idle_inputs.with_label_values(&[job, task]),
            backpressure: m.backpressure_seconds.with_label_values(&[job, task]),
            alignment: m.checkpoint_alignment_seconds.with_label_values(&[job]),
            latency_ingestion: m
                .latency_seconds
                .with_label_values(&[job, "ingestion"])
                .local(),
            latency_event_time: m
                .latency_seconds
                .with_label_values(&[job, "event_time"])
                .local(),
        }
    }

    /// Merges the local observations into the shared series.
    pub fn flush(&self) {
        self.latency_ingestion.flush();
        self.latency_event_time.flush();
    }
}
