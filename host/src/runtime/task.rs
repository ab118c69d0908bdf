//! One task: a head (a source instance or an input channel), a chain of
//! operators run back to back on the same thread, and a tail (a sink
//! instance or a router to the next task group).
//!
//! Invariants:
//! - Records pass along the chain in batch order; an operator's outputs of a
//!   batch reach the next operator before the next batch does.
//! - When the task's watermark advances, each operator in chain order fires
//!   its due timers, their outputs run through the rest of the chain, and
//!   only then does the next operator see the new watermark; the watermark
//!   leaves the task after everything it caused.
//! - The task's watermark is the minimum over its inputs that have not ended
//!   and are not idle (a source task: its bounded-out-of-orderness
//!   generator); when every input has ended it is `i64::MAX`, which fires all
//!   event-time timers. It never goes back: records of an input that resumes
//!   behind it are late.
//! - Idleness: a source task that has produced no record for its
//!   `idle_timeout` sends `Idle` downstream; a receiver leaves that input out
//!   of its minimum until records or a watermark arrive from it again. A task
//!   whose inputs are all idle (or ended) forwards `Idle` in turn.
//! - A source record more than `future_horizon` ahead of the wall clock is
//!   processed but not observed by the watermark generator, and counted.
//! - A source instance reading several splits follows the slowest: its
//!   watermark is computed from the lowest of the splits' highest event
//!   times (see `Source::slowest_split_timestamp`).
//! - Checkpoints (see [`crate::checkpoint`]): a source task takes a barrier
//!   between two batches; an input task aligns barriers, holding back the
//!   events of inputs that delivered the barrier until all have (an ended
//!   input counts as delivered), snapshots, forwards the barrier, then
//!   replays what it held in arrival order.
//! - A barrier that carries a module swap replaces the operator's module
//!   right after the task's snapshot and before anything after the barrier:
//!   the checkpoint holds the old version's state, the new version takes the
//!   same state over and sees every later record.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::coordinator::{StatePart, WriteRequest};
use crate::checkpoint::manifest::{SinkSnapshot, SourceSnapshot, TaskSnapshot, encode_state_file};
use crate::checkpoint::{Barrier, CheckpointId};
use crate::connectors::{ConnectorError, Poll, Sink, Source};
use crate::graph::spec::OnError;
use crate::metrics::{OperatorMetrics, TaskMetrics};
use crate::runtime::batch::RecordBatch;
use crate::runtime::latency::LatencyHistogram;
use crate::runtime::operator::{Operator, OperatorError, Output, RejectedRecord};
use crate::runtime::router::{Disconnected, Envelope, Event, Fanout, Recycled};
use crate::state::snapshot::KeyedSnapshot;
use crate::time::{BoundedOutOfOrderness, InputWatermarks, now_millis};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    /// A neighbouring task stopped first; its own error is the cause.
    #[error("task {task}: a connected task stopped")]
    PeerStopped { task: String },
    #[error("task {task}: {message}")]
    Internal { task: String, message: String },
}

/// The name dead-letter parts are listed under in checkpoints.
pub const DEAD_LETTER_SINK: &str = "dead-letter";

/// A finished task's final snapshot, for the job's coordinator.
pub struct FinalSnapshot {
    pub task: usize,
    /// The last checkpoint the task snapshotted at a barrier (0: none).
    pub last: CheckpointId,
    pub snapshot: TaskSnapshot,
    pub state: Option<Arc<[u8]>>,
}

/// How a task takes part in its job's checkpoints.
pub struct TaskLink {
    /// The task's index in the job (the coordinator's numbering).
    pub index: usize,
    pub group: u32,
    pub instance: u32,
    pub operator_names: Vec<String>,
    pub operator_key_groups: Vec<Range<u32>>,
    /// Where snapshots taken at barriers go (checkpoints and savepoints).
    pub writer: Sender<WriteRequest>,
    /// Barriers from the coordinator (source tasks).
    pub triggers: Option<Receiver<Barrier>>,
    /// Where the task reports that it has finished.
    pub finals: Sender<FinalSnapshot>,
    /// Final snapshots carry state (the job takes checkpoints); without
    /// checkpoints they only tell the coordinator the task has finished.
    pub final_state: bool,
    /// Set when the job is being torn down after a failure.
    pub cancel: Arc<AtomicBool>,
    pub shared: SharedCounters,
    pub job: String,
    /// For a source task: which of the job's sources it reads.
    pub source_name: String,
}

/// A task's snapshot and the bytes of its state file, if it has state.
type SnapshotParts = (TaskSnapshot, StatePart);

/// Barrier alignment in progress.
struct Alignment {
    barrier: Barrier,
    /// Per input: its barrier (or its end) has arrived.
    arrived: Vec<bool>,
    started: Instant,
}

impl Alignment {
    fn complete(&self) -> bool {
        self.arrived.iter().all(|&a| a)
    }
}

/// How a source task tracks event time.
pub struct SourceTime {
    pub watermarks: BoundedOutOfOrderness,
    pub interval: Duration,
    pub idle_timeout: Option<Duration>,
    pub future_horizon_ms: i64,
    /// Watermark alignment with the source's other instances.
    pub alignment: Option<Aligned>,
}

/// The watermarks of all instances of one source, for alignment: an
/// instance more than `max_drift_ms` ahead of the slowest waits. An idle or
/// finished instance counts as `i64::MAX` (it holds nobody back).
pub struct AlignmentGroup {
    pub watermarks: Vec<std::sync::atomic::AtomicI64>,
    pub max_drift_ms: i64,
}

/// Times in a row an aligned source instance that is ahead yields its core
/// before it sleeps between checks.
const ALIGNMENT_YIELDS: u32 = 64;

/// How long an aligned source instance that stays ahead waits between
/// checks.
pub(crate) const ALIGNMENT_SLEEP: Duration = Duration::from_micros(200);

/// What one step of a task's loop came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Worked,
    /// Nothing to do for now: no event waiting, or a source instance too
    /// far ahead of its slowest.
    Waiting,
    /// The task is done (its input ended, or it stopped at a savepoint).
    Finished,
}

/// A source task's loop state between steps.
pub(crate) struct SourceLoop {
    source: Box<dyn Source>,
    time: SourceTime,
    /// Records polled at a time.
    poll_size: usize,
    /// Whether to poll straight into the router (see
    /// [`Source::poll_scattered`]).
    scatter: bool,
    batch: RecordBatch,
    last_watermark: Instant,
    last_record: Instant,
    idle: bool,
    triggers: Option<Receiver<Barrier>>,
}

/// An input task's loop state between steps.
pub(crate) struct InputLoop {
    pub(crate) receiver: Receiver<Envelope>,
    recycled: Option<Recycled>,
    watermarks: InputWatermarks,
    /// Per channel (sending instance): which input of the first operator it
    /// belongs to.
    channel_inputs: Vec<u16>,
    ended: Vec<bool>,
    alignment: Option<Alignment>,
    /// Events of inputs whose barrier has arrived, during alignment.
    held: VecDeque<Envelope>,
    /// Held events, released after the barrier, to handle before new ones.
    replay: VecDeque<Envelope>,
}

/// One source instance's place in its [`AlignmentGroup`].
pub struct Aligned {
    pub group: Arc<AlignmentGroup>,
    pub instance: usize,
}

impl Aligned {
    fn publish(&self, watermark: i64) {
        self.group.watermarks[self.instance].store(watermark, Ordering::Relaxed);
    }

    /// Whether this instance has run too far ahead of the slowest.
    fn ahead(&self, watermark: i64) -> bool {
        let slowest = self
            .group
            .watermarks
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .min()
            .unwrap_or(i64::MAX);
        watermark != i64::MIN && watermark > slowest.saturating_add(self.group.max_drift_ms)
    }
}

impl SourceTime {
    pub fn new(spec: &crate::graph::spec::WatermarkSpec) -> Self {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        SourceTime {
            watermarks: BoundedOutOfOrderness::new(ms(spec.max_out_of_orderness)),
            interval: spec.interval,
            idle_timeout: spec.idle_timeout,
            future_horizon_ms: ms(spec.future_horizon),
            alignment: None,
        }
    }

    /// Event times above this do not move the watermark.
    fn horizon(&self) -> i64 {
        now_millis().saturating_add(self.future_horizon_ms)
    }

    /// Feeds the batch's timestamps to the watermark generator, except those
    /// beyond the horizon; returns how many were beyond it.
    fn observe(&mut self, batch: &RecordBatch) -> u64 {
        let Some(max) = batch.max_timestamp() else {
            return 0;
        };
        let limit = self.horizon();
        if max <= limit {
            self.watermarks.observe(max);
            return 0;
        }
        let mut beyond = 0;
        for r in batch.iter() {
            if r.timestamp > limit {
                beyond += 1;
            } else {
                self.watermarks.observe(r.timestamp);
            }
        }
        beyond
    }
}

pub enum Head {
    Source {
        source: Box<dyn Source>,
        time: SourceTime,
    },
    Input {
        receiver: Receiver<Envelope>,
        /// Where records batches go back to the senders once handled.
        recycled: Option<Recycled>,
        watermarks: InputWatermarks,
        /// Per channel (sending instance): which input of the first
        /// operator it belongs to.
        channel_inputs: Vec<u16>,
    },
}

pub enum Tail {
    Sink(Box<dyn Sink>),
    Router(Fanout),
}

/// Figures every task of a job adds to.
#[derive(Clone, Debug, Default)]
pub struct SharedCounters {
    /// Source-to-sink latency of the batches that reached a sink.
    pub latency: Arc<LatencyHistogram>,
    /// Records emitted to side outputs that have no sink in the spec.
    pub unrouted_side_records: Arc<std::sync::atomic::AtomicU64>,
    /// Records of all tasks taken from their head (source or input).
    pub records: Arc<std::sync::atomic::AtomicU64>,
    /// Source records beyond the future horizon.
    pub far_future_records: Arc<std::sync::atomic::AtomicU64>,
    /// Records too late for every window they belong to.
    pub late_records: Arc<std::sync::atomic::AtomicU64>,
    /// Poison records skipped or sent to the dead-letter sink.
    pub rejected_records: Arc<std::sync::atomic::AtomicU64>,
}

/// Where a task's poison records go, by the job's `on_error`.
pub struct Rejects {
    pub policy: OnError,
    /// The dead-letter sink's instance (`on_error: dead-letter`).
    pub sink: Option<Box<dyn Sink>>,
}

impl Default for Rejects {
    fn default() -> Self {
        Rejects {
            policy: OnError::Fail,
            sink: None,
        }
    }
}

/// The dead-letter record of a rejected one: the original value (as JSON
/// when it is JSON, else as a string), the error, and where it happened.
pub fn dead_letter_value(job: &str, operator: &str, instance: u32, r: &RejectedRecord) -> Vec<u8> {
    let value = serde_json::from_slice::<serde_json::Value>(&r.value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&r.value).into()));
    let letter = serde_json::json!({
        "job": job,
        "operator": operator,
        "instance": instance,
        "error": r.error,
        "key": String::from_utf8_lossy(&r.key),
        "timestamp": r.timestamp,
        "value": value,
    });
    serde_json::to_vec(&letter).expect("a JSON value serialises")
}

/// Counters of one finished task.
#[derive(Debug, Default, Clone)]
pub struct TaskStats {
    pub records_in: u64,
    pub blocked: Duration,
    /// The task stopped at a stop-with-savepoint barrier instead of finishing.
    pub stopped: bool,
}

pub struct Task {
    pub name: String,
    pub head: Head,
    pub operators: Vec<Box<dyn Operator>>,
    /// Per operator, per declared side output: where it goes (`None`: nowhere
    /// configured; such records are counted and reported).
    pub side_sinks: Vec<Vec<Option<Box<dyn Sink>>>>,
    pub tail: Tail,
    pub batch_size: usize,
    pub shared: SharedCounters,
    link: TaskLink,
    outputs: Vec<Output>,
    watermark: i64,
    stats: TaskStats,
    last_snapshot: CheckpointId,
    operator_metrics: Vec<OperatorMetrics>,
    metrics: TaskMetrics,
    /// Backpressure time already added to the metric.
    blocked_reported: Duration,
    rejects: Rejects,
    rejected: Vec<RejectedRecord>,
    dead_letters: RecordBatch,
    /// Which input of the first operator the batch being run came from.
    head_input: u16,
    /// When the local histograms were last merged into the shared ones.
    metrics_flushed: Instant,
}

/// How often a busy task merges its local histograms into the shared series
/// (see [`OperatorMetrics`]); a task also merges them before it waits.
const METRICS_FLUSH: Duration = Duration::from_millis(200);

impl Task {
    pub fn new(
        name: String,
        head: Head,
        operators: Vec<Box<dyn Operator>>,
        side_sinks: Vec<Vec<Option<Box<dyn Sink>>>>,
        tail: Tail,
        batch_size: usize,
        link: TaskLink,
    ) -> Self {
        let outputs = operators
            .iter()
            .map(|op| Output {
                main: RecordBatch::with_capacity(batch_size, batch_size * 32),
                side: vec![RecordBatch::new(); op.side_outputs().len()],
                rejected: Vec::new(),
            })
            .collect();
        let task_label = name.split_once('/').map_or(name.as_str(), |(_, t)| t);
        let operator_metrics = link
            .operator_names
            .iter()
            .map(|op| OperatorMetrics::new(&link.job, op, link.instance))
            .collect();
        let metrics = TaskMetrics::new(&link.job, task_label);
        Task {
            operator_metrics,
            metrics,
            blocked_reported: Duration::ZERO,
            name,
            head,
            operators,
            side_sinks,
            tail,
            batch_size,
            shared: link.shared.clone(),
            link,
            outputs,
            watermark: i64::MIN,
            stats: TaskStats::default(),
            last_snapshot: 0,
            rejects: Rejects::default(),
            rejected: Vec::new(),
            dead_letters: RecordBatch::new(),
            head_input: 0,
            metrics_flushed: Instant::now(),
        }
    }

    pub fn set_rejects(&mut self, rejects: Rejects) {
        self.rejects = rejects;
    }

    /// Sets aside the records `stage` (an operator, or the source) rejected,
    /// by the job's `on_error`.
    fn reject(&mut self, stage: &str, rejected: &mut Vec<RejectedRecord>) -> Result<(), TaskError> {
        let Some(first) = rejected.first() else {
            return Ok(());
        };
        let outcome = match self.rejects.policy {
            OnError::Skip => "skipped",
            OnError::DeadLetter => "dead_lettered",
            OnError::Fail => {
                return Err(self.internal(format!(
                    "`{stage}` set records aside, but the job's on_error is `fail`"
                )));
            }
        };
        let n = rejected.len() as u64;
        tracing::warn!(task = %self.name, operator = stage, records = n, outcome,
            error = %first.error, "poison records set aside");
        crate::metrics::metrics()
            .rejected_records
            .with_label_values(&[self.link.job.as_str(), stage, outcome])
            .inc_by(n);
        self.shared.rejected_records.fetch_add(n, Ordering::Relaxed);
        if let Some(sink) = &mut self.rejects.sink {
            self.dead_letters.clear();
            for r in rejected.iter() {
                let letter = dead_letter_value(&self.link.job, stage, self.link.instance, r);
                self.dead_letters.push(&r.key, &letter, r.timestamp);
            }
            sink.write(&self.dead_letters)?;
        }
        rejected.clear();
        Ok(())
    }

    /// Starts at a restored watermark: operators learn it (nothing fires, as
    /// timers at or before it fired before the checkpoint), and it is not
    /// sent on, since downstream tasks restore their own.
    pub fn resume_at(&mut self, watermark: i64) -> Result<(), TaskError> {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire_in_order(&|op, out| op.advance_watermark(watermark, out), None)?;
        }
        Ok(())
    }

    fn internal(&self, message: impl Into<String>) -> TaskError {
        TaskError::Internal {
            task: self.name.clone(),
            message: message.into(),
        }
    }

    /// Snapshots the operators and pre-commits the sinks. With `defer`,
    /// state a backend froze is left for the checkpoint writer to write;
    /// with `incremental`, possibly as the backend's own files.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        finished: bool,
        source: Option<SourceSnapshot>,
        defer: bool,
        incremental: bool,
    ) -> Result<SnapshotParts, TaskError> {
        let mut operators = Vec::new();
        let task = &self.name;
        for (i, op) in self.operators.iter_mut().enumerate() {
            let range = self.link.operator_key_groups[i].clone();
            let mut snapshot = if incremental {
                KeyedSnapshot::incremental(range.clone())
            } else {
                KeyedSnapshot::new(range.clone())
            };
            op.snapshot(&mut snapshot)?;
            if !defer {
                snapshot.complete().map_err(|e| TaskError::Internal {
                    task: task.clone(),
                    message: format!("snapshot: {e}"),
                })?;
            }
            operators.push((self.link.operator_names[i].clone(), range, snapshot));
        }
        let file = format!("task-{}-{}.state", self.link.group, self.link.instance);
        let (state, bytes) = if operators.iter().any(|(_, _, s)| s.is_deferred()) {
            (None, StatePart::Deferred { file, operators })
        } else {
            match encode_state_file(file, &operators) {
                Some((bytes, state)) => (Some(state), StatePart::Ready(Arc::from(bytes))),
                None => (None, StatePart::None),
            }
        };
        let mut sinks = Vec::new();
        if let Tail::Sink(sink) = &mut self.tail {
            let pending = sink.prepare_commit(checkpoint)?;
            if !pending.is_empty() {
                sinks.push(SinkSnapshot {
                    sink: "main".into(),
                    pending,
                });
            }
        }
        if let Some(sink) = &mut self.rejects.sink {
            let pending = sink.prepare_commit(checkpoint)?;
            if !pending.is_empty() {
                sinks.push(SinkSnapshot {
                    sink: DEAD_LETTER_SINK.into(),
                    pending,
                });
            }
        }
        for (i, list) in self.side_sinks.iter_mut().enumerate() {
            for (j, sink) in list.iter_mut().enumerate() {
                let Some(sink) = sink else { continue };
                let pending = sink.prepare_commit(checkpoint)?;
                if !pending.is_empty() {
                    let side = &self.operators[i].side_outputs()[j];
                    sinks.push(SinkSnapshot {
                        sink: format!("{}.{side}", self.link.operator_names[i]),
                        pending,
                    });
                }
            }
        }
        let snapshot = TaskSnapshot {
            group: self.link.group,
            instance: self.link.instance,
            operators: self.link.operator_names.clone(),
            watermark: self.watermark,
            finished,
            source,
            sinks,
            state,
        };
        Ok((snapshot, bytes))
    }

    /// The source's positions; `required` at a barrier, where a source
    /// that cannot report them fails the task.
    fn source_snapshot(
        &self,
        source: &dyn Source,
        time: &SourceTime,
        required: bool,
    ) -> Result<Option<SourceSnapshot>, TaskError> {
        let Some(positions) = source.positions() else {
            if required {
                return Err(
                    self.internal("a checkpoint or savepoint needs source positions, but this source cannot report them"),
                );
            }
            return Ok(None);
        };
        Ok(Some(SourceSnapshot {
            name: self.link.source_name.clone(),
            positions,
            max_timestamp: time.watermarks.max_timestamp(),
        }))
    }

    /// At a barrier: snapshot, hand the snapshot to the writer, pass the
    /// barrier on.
    fn checkpoint(
        &mut self,
        barrier: &Barrier,
        source: Option<SourceSnapshot>,
    ) -> Result<(), TaskError> {
        let (snapshot, state) = self.snapshot(
            barrier.id,
            false,
            source,
            true,
            barrier.kind == crate::checkpoint::BarrierKind::Checkpoint,
        )?;
        self.last_snapshot = barrier.id;
        // The writer is gone only when the job is being torn down.
        let _ = self.link.writer.send(WriteRequest {
            task: self.link.index,
            checkpoint: barrier.id,
            dir: barrier.dir.clone(),
            snapshot,
            state,
        });
        if let Tail::Router(router) = &mut self.tail {
            router
                .broadcast(|| Event::Barrier(barrier.clone()))
                .map_err(|d| TaskError::PeerStopped {
                    task: format!("{d:?}"),
                })?;
        }
        if let Some(swap) = &barrier.swap {
            for (i, name) in self.link.operator_names.iter().enumerate() {
                if *name == swap.operator {
                    self.operators[i].swap_module(&swap.module, &swap.config)?;
                    tracing::info!(task = %self.name, operator = %name, module = %swap.module.name,
                        checkpoint = barrier.id, "module swapped at the barrier");
                }
            }
        }
        Ok(())
    }

    /// After a stop-with-savepoint barrier: flush and leave.
    fn stop(&mut self) -> Result<(), TaskError> {
        self.stats.stopped = true;
        self.close_sinks()
    }

    fn close_sinks(&mut self) -> Result<(), TaskError> {
        if let Tail::Sink(sink) = &mut self.tail {
            sink.close()?;
        }
        for sinks in &mut self.side_sinks {
            for sink in sinks.iter_mut().flatten() {
                sink.close()?;
            }
        }
        if let Some(sink) = &mut self.rejects.sink {
            sink.close()?;
        }
        Ok(())
    }

    pub(crate) fn peer_stopped(&self, _: Disconnected) -> TaskError {
        TaskError::PeerStopped {
            task: self.name.clone(),
        }
    }

    fn emit_tail(&mut self, batch: &RecordBatch) -> Result<(), TaskError> {
        match &mut self.tail {
            Tail::Sink(sink) => {
                if !batch.is_empty() {
                    sink.write(batch)?;
                    if let Some(origin) = batch.origin {
                        let elapsed = origin.elapsed();
                        self.shared.latency.record(elapsed, batch.len() as u64);
                        self.metrics
                            .latency_ingestion
                            .observe(elapsed.as_secs_f64());
                    }
                    // Event time is wall-clock time only for some sources:
                    // a lag beyond a day means it is not, and is not shown.
                    if let Some(t) = batch.max_timestamp() {
                        let lag = now_millis().saturating_sub(t);
                        if (0..86_400_000).contains(&lag) {
                            self.metrics.latency_event_time.observe(lag as f64 / 1e3);
                        }
                    }
                }
                Ok(())
            }
            Tail::Router(router) => {
                let r = router.write(batch).map_err(|d| TaskError::PeerStopped {
                    task: format!("{}: {d:?}", self.name),
                });
                self.report_blocked();
                r
            }
        }
    }

    fn report_blocked(&mut self) {
        if let Tail::Router(router) = &self.tail
            && router.blocked() > self.blocked_reported
        {
            let delta = router.blocked() - self.blocked_reported;
            self.blocked_reported = router.blocked();
            self.metrics.backpressure.inc_by(delta.as_secs_f64());
        }
    }

    fn route_side_outputs(&mut self, op: usize) -> Result<(), TaskError> {
        for (i, batch) in self.outputs[op].side.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            match self.side_sinks[op].get_mut(i).and_then(Option::as_mut) {
                Some(sink) => sink.write(batch)?,
                None => {
                    self.shared
                        .unrouted_side_records
                        .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            batch.clear();
        }
        Ok(())
    }

    /// Runs `input` through operators `from..` and into the tail.
    fn run_chain(&mut self, from: usize, input: &RecordBatch) -> Result<(), TaskError> {
        if from == self.operators.len() {
            return self.emit_tail(input);
        }
        for i in from..self.operators.len() {
            let (done, rest) = self.outputs.split_at_mut(i);
            let out = &mut rest[0];
            out.clear();
            let source = if i == from { input } else { &done[i - 1].main };
            let started = Instant::now();
            if i == 0 && self.head_input != 0 {
                self.operators[i].process_from(self.head_input, source, out)?;
            } else {
                self.operators[i].process(source, out)?;
            }
            let m = &self.operator_metrics[i];
            m.batch_seconds.observe(started.elapsed().as_secs_f64());
            m.records_in.inc_by(source.len() as u64);
            m.bytes_in.inc_by(source.byte_len() as u64);
            m.records_out.inc_by(out.main.len() as u64);
            m.bytes_out.inc_by(out.main.byte_len() as u64);
            out.main.origin = source.origin;
            if !out.rejected.is_empty() {
                let mut rejected = std::mem::take(&mut out.rejected);
                let stage = self.link.operator_names[i].clone();
                self.reject(&stage, &mut rejected)?;
                self.outputs[i].rejected = rejected;
            }
            self.route_side_outputs(i)?;
            if self.outputs[i].main.is_empty() {
                return Ok(());
            }
        }
        let last = std::mem::take(&mut self.outputs[self.operators.len() - 1]);
        let r = self.emit_tail(&last.main);
        self.outputs[self.operators.len() - 1] = last;
        r
    }

    /// Lets each operator in order react to time (`fire`), running what it
    /// emits through the rest of the chain before the next operator reacts.
    /// What fires is stamped with `origin` for latency (the source time of
    /// the batch that carried the watermark releasing it: the results were
    /// waiting for that batch), or with now when time came on its own.
    fn fire_in_order(
        &mut self,
        fire: &dyn Fn(&mut dyn Operator, &mut Output) -> Result<(), OperatorError>,
        origin: Option<Instant>,
    ) -> Result<(), TaskError> {
        for i in 0..self.operators.len() {
            let mut out = std::mem::take(&mut self.outputs[i]);
            out.clear();
            let r = fire(self.operators[i].as_mut(), &mut out);
            // What timers and the watermark release (window results) is
            // output of the operator too.
            let m = &self.operator_metrics[i];
            m.records_out.inc_by(out.main.len() as u64);
            m.bytes_out.inc_by(out.main.byte_len() as u64);
            out.main.origin = Some(origin.unwrap_or_else(Instant::now));
            self.outputs[i] = out;
            r?;
            self.route_side_outputs(i)?;
            if !self.outputs[i].main.is_empty() {
                let emitted = std::mem::take(&mut self.outputs[i]);
                let r = self.run_chain(i + 1, &emitted.main);
                self.outputs[i] = emitted;
                r?;
            }
        }
        Ok(())
    }

    /// `origin`: the source time of the record batch that carried the
    /// watermark, if one did.
    fn advance_watermark(
        &mut self,
        watermark: i64,
        origin: Option<Instant>,
    ) -> Result<(), TaskError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if watermark != i64::MAX {
            self.metrics.watermark.set(watermark as f64 / 1e3);
            self.metrics
                .watermark_lag
                .set(now_millis().saturating_sub(watermark) as f64 / 1e3);
        }
        self.fire_in_order(&|op, out| op.advance_watermark(watermark, out), origin)?;
        if let Tail::Router(router) = &mut self.tail {
            router
                .watermark(watermark)
                .map_err(|d| TaskError::PeerStopped {
                    task: format!("{d:?}"),
                })?;
        }
        Ok(())
    }

    fn next_processing_timer(&self) -> Option<i64> {
        self.operators
            .iter()
            .filter_map(|o| o.next_processing_timer())
            .min()
    }

    fn fire_processing_timers(&mut self) -> Result<(), TaskError> {
        let now = now_millis();
        if self.next_processing_timer().is_some_and(|t| t <= now) {
            self.fire_in_order(&|op, out| op.advance_processing_time(now, out), None)?;
        }
        Ok(())
    }

    /// Merges the local histograms into the shared series.
    pub(crate) fn flush_metrics(&mut self) {
        for m in &self.operator_metrics {
            m.flush();
        }
        self.metrics.flush();
        self.metrics_flushed = Instant::now();
    }

    fn flush_due(&mut self) -> Result<(), TaskError> {
        let now = Instant::now();
        if now.duration_since(self.metrics_flushed) >= METRICS_FLUSH {
            self.flush_metrics();
        }
        if let Tail::Router(router) = &mut self.tail {
            router.flush_due(now).map_err(|_| TaskError::PeerStopped {
                task: String::new(),
            })?;
            self.report_blocked();
        }
        Ok(())
    }

    /// The input ended: fire everything, pass the end on, hand the final
    /// snapshot to the coordinator, close the sinks.
    fn finish(&mut self, source: Option<SourceSnapshot>) -> Result<(), TaskError> {
        self.advance_watermark(i64::MAX, None)?;
        if let Tail::Router(router) = &mut self.tail {
            router
                .broadcast(|| Event::End)
                .map_err(|_| TaskError::PeerStopped {
                    task: String::new(),
                })?
        }
        let (snapshot, state) = if self.link.final_state {
            match self.snapshot(CheckpointId::MAX, true, source, false, false)? {
                (snapshot, StatePart::Ready(bytes)) => (snapshot, Some(bytes)),
                (snapshot, _) => (snapshot, None),
            }
        } else {
            (TaskSnapshot::default(), None)
        };
        let _ = self.link.finals.send(FinalSnapshot {
            task: self.link.index,
            last: self.last_snapshot,
            snapshot,
            state,
        });
        self.close_sinks()
    }

    /// Runs until every input has ended, or the first failure.
    pub fn run(mut self) -> Result<TaskStats, TaskError> {
        let result = match self.take_head() {
            Head::Source { source, time } => {
                let s = self.source_loop(source, time);
                self.run_source(s)
            }
            Head::Input {
                receiver,
                recycled,
                watermarks,
                channel_inputs,
            } => self.run_input(Task::input_loop(
                receiver,
                recycled,
                watermarks,
                channel_inputs,
            )),
        };
        self.outcome(result)
    }

    pub(crate) fn take_head(&mut self) -> Head {
        std::mem::replace(
            &mut self.head,
            Head::Input {
                receiver: crossbeam_channel::never(),
                recycled: None,
                watermarks: InputWatermarks::new(0),
                channel_inputs: Vec::new(),
            },
        )
    }

    /// The task's index in its job.
    pub(crate) fn index(&self) -> usize {
        self.link.index
    }

    /// What the task reports once its loop has ended.
    pub(crate) fn outcome(
        &mut self,
        result: Result<(), TaskError>,
    ) -> Result<TaskStats, TaskError> {
        let result = result.map_err(|e| match e {
            TaskError::PeerStopped { .. } => TaskError::PeerStopped {
                task: self.name.clone(),
            },
            other => other,
        });
        if let Tail::Router(router) = &self.tail {
            self.stats.blocked = router.blocked();
        }
        result.map(|()| self.stats.clone())
    }

    /// The router of a task that feeds another task group.
    pub(crate) fn router(&mut self) -> Option<&mut Fanout> {
        match &mut self.tail {
            Tail::Router(router) => Some(router),
            Tail::Sink(_) => None,
        }
    }

    fn broadcast_idle(&mut self) -> Result<(), TaskError> {
        if let Tail::Router(router) = &mut self.tail {
            router
                .broadcast(|| Event::Idle)
                .map_err(|d| self.peer_stopped(d))?;
        }
        Ok(())
    }

    /// Readies a source head for [`Task::source_step`].
    pub(crate) fn source_loop(&mut self, source: Box<dyn Source>, time: SourceTime) -> SourceLoop {
        // A resumed task starts at its checkpoint's watermark (that of the
        // operators chained to it); unpublished, it would be ahead of the
        // group's initial minimum for good and never poll.
        if let Some(a) = &time.alignment
            && self.watermark != i64::MIN
        {
            a.publish(self.watermark);
        }
        // Each receiver of a divided poll gets a full batch's worth: what a
        // batch costs downstream (a guest call, a channel message) does not
        // shrink with it.
        let dividing_targets = match &self.tail {
            Tail::Router(router) if self.operators.is_empty() => router.dividing_targets(),
            _ => 1,
        };
        let poll_size = self.batch_size * dividing_targets;
        SourceLoop {
            source,
            time,
            poll_size,
            scatter: dividing_targets > 1,
            // Unused while the source writes straight into the router.
            batch: if dividing_targets > 1 {
                RecordBatch::new()
            } else {
                RecordBatch::with_capacity(poll_size, poll_size * 32)
            },
            last_watermark: Instant::now(),
            last_record: Instant::now(),
            idle: false,
            triggers: self.link.triggers.take(),
        }
    }

    pub(crate) fn run_source(&mut self, mut s: SourceLoop) -> Result<(), TaskError> {
        let mut held_back = 0;
        loop {
            match self.source_step(&mut s)? {
                Step::Worked => held_back = 0,
                // The slowest instance usually needs only a moment (a batch
                // or a time slice): yielding hands it the core at once,
                // where a sleep would keep this instance's share of the
                // input from its consumers for longer than that. An
                // instance held back for long (a rate-limited or stalled
                // slowest) sleeps instead of spinning.
                Step::Waiting if held_back < ALIGNMENT_YIELDS => {
                    held_back += 1;
                    std::thread::yield_now();
                }
                Step::Waiting => std::thread::sleep(ALIGNMENT_SLEEP),
                Step::Finished => return Ok(()),
            }
        }
    }

    /// Takes a barrier if one is due, then polls one batch and runs it
    /// through; `Waiting` when the instance is too far ahead of the
    /// source's slowest to poll.
    pub(crate) fn source_step(&mut self, s: &mut SourceLoop) -> Result<Step, TaskError> {
        if self.link.cancel.load(Ordering::Relaxed) {
            return Err(self.peer_stopped(Disconnected));
        }
        if let Some(barrier) = s.triggers.as_ref().and_then(|t| t.try_recv().ok()) {
            let position = self.source_snapshot(s.source.as_ref(), &s.time, true)?;
            self.checkpoint(&barrier, position)?;
            if barrier.stops() {
                self.stop()?;
                return Ok(Step::Finished);
            }
        }
        if let Some(a) = &s.time.alignment
            && a.ahead(self.watermark)
        {
            // Hold back, but keep flushing, firing timers and taking
            // barriers.
            self.fire_processing_timers()?;
            self.flush_due()?;
            return Ok(Step::Waiting);
        }
        let origin = Some(Instant::now());
        let scattered = self.poll_scattered(s, origin)?;
        let (poll, records, beyond) = match scattered {
            Some(polled) => polled,
            None => {
                let batch = &mut s.batch;
                batch.clear();
                batch.origin = origin;
                let poll = s.source.poll(batch, s.poll_size)?;
                (poll, batch.len() as u64, s.time.observe(batch))
            }
        };
        s.source.take_rejected(&mut self.rejected);
        if !self.rejected.is_empty() {
            let mut rejected = std::mem::take(&mut self.rejected);
            self.reject("source", &mut rejected)?;
            self.rejected = rejected;
        }
        if beyond > 0 {
            self.shared
                .far_future_records
                .fetch_add(beyond, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::metrics()
                .far_future_records
                .with_label_values(&[self.link.job.as_str()])
                .inc_by(beyond);
            tracing::warn!(task = %self.name, records = beyond,
                "records more than the future horizon ahead of the clock do not move the watermark");
        }
        self.stats.records_in += records;
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        if records > 0 {
            s.last_record = Instant::now();
            s.idle = false;
        }
        if scattered.is_none() {
            self.run_source_batch(&mut s.batch)?;
        }
        if poll == Poll::End {
            if let Some(a) = &s.time.alignment {
                a.publish(i64::MAX);
            }
            let required = self.link.final_state;
            let position = self.source_snapshot(s.source.as_ref(), &s.time, required)?;
            self.finish(position)?;
            return Ok(Step::Finished);
        }
        if s.last_watermark.elapsed() >= s.time.interval {
            s.last_watermark = Instant::now();
            let cap = s.source.slowest_split_timestamp();
            self.advance_watermark(s.time.watermarks.current_capped(cap), origin)?;
            if let Some(a) = &s.time.alignment {
                a.publish(self.watermark);
            }
        }
        if let Some(timeout) = s.time.idle_timeout
            && !s.idle
            && s.last_record.elapsed() >= timeout
        {
            s.idle = true;
            if let Some(a) = &s.time.alignment {
                a.publish(i64::MAX);
            }
            self.flush_due()?;
            self.broadcast_idle()?;
        }
        self.fire_processing_timers()?;
        self.flush_due()?;
        Ok(Step::Worked)
    }

    /// Polls the source straight into the router when it can (see
    /// [`Source::poll_scattered`]): the poll's result, the records taken,
    /// and how many were beyond the future horizon.
    fn poll_scattered(
        &mut self,
        s: &mut SourceLoop,
        origin: Option<Instant>,
    ) -> Result<Option<(Poll, u64, u64)>, TaskError> {
        let router = match &mut self.tail {
            Tail::Router(fanout) if s.scatter => fanout.scattering(),
            _ => None,
        };
        let Some(router) = router else {
            return Ok(None);
        };
        let mut into = router.scatter_into(origin, s.time.horizon());
        let taken = match s.source.poll_scattered(&mut into, s.poll_size) {
            Some(poll) => into.finish().map(|taken| Some((poll, taken))),
            None => Ok(None),
        };
        self.report_blocked();
        let Some((poll, taken)) = taken.map_err(|d| self.peer_stopped(d))? else {
            s.scatter = false;
            return Ok(None);
        };
        let poll = poll?;
        if let Some(max) = taken.max_timestamp {
            s.time.watermarks.observe(max);
        }
        Ok(Some((poll, taken.records, taken.beyond_horizon)))
    }

    /// Runs a polled batch through the chain; with no operator to run, hands
    /// it to the router whole instead of having it copied (see
    /// [`Router::write_owned`](crate::runtime::router::Router::write_owned)),
    /// which leaves an empty batch in its place.
    fn run_source_batch(&mut self, batch: &mut RecordBatch) -> Result<(), TaskError> {
        match &mut self.tail {
            Tail::Router(router) if self.operators.is_empty() => {
                let r = router
                    .write_owned(batch)
                    .map_err(|d| TaskError::PeerStopped {
                        task: format!("{}: {d:?}", self.name),
                    });
                self.report_blocked();
                r
            }
            _ => self.run_chain(0, &*batch),
        }
    }

    /// Readies an input head for [`Task::input_step`].
    pub(crate) fn input_loop(
        receiver: Receiver<Envelope>,
        recycled: Option<Recycled>,
        watermarks: InputWatermarks,
        channel_inputs: Vec<u16>,
    ) -> InputLoop {
        InputLoop {
            receiver,
            recycled,
            watermarks,
            ended: vec![false; channel_inputs.len()],
            channel_inputs,
            alignment: None,
            held: VecDeque::new(),
            replay: VecDeque::new(),
        }
    }

    pub(crate) fn run_input(&mut self, mut input: InputLoop) -> Result<(), TaskError> {
        while self.input_step(&mut input, true)? != Step::Finished {}
        Ok(())
    }

    /// Handles the next event; with `wait`, waits for one (at most until a
    /// batch must be flushed or a processing-time timer is due), else
    /// returns `Waiting` when there is none.
    pub(crate) fn input_step(&mut self, l: &mut InputLoop, wait: bool) -> Result<Step, TaskError> {
        let message = match l.replay.pop_front() {
            Some(envelope) => Ok(envelope),
            None if wait => self.receive(&l.receiver),
            None => l.receiver.try_recv().map_err(|e| match e {
                crossbeam_channel::TryRecvError::Empty => RecvTimeoutError::Timeout,
                crossbeam_channel::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        };
        let Envelope { from, event } = match message {
            Ok(envelope) => envelope,
            Err(RecvTimeoutError::Timeout) => {
                self.fire_processing_timers()?;
                self.flush_due()?;
                return Ok(Step::Waiting);
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(self.peer_stopped(Disconnected));
            }
        };
        let input = from as usize;
        if l.alignment.as_ref().is_some_and(|a| a.arrived[input]) {
            l.held.push_back(Envelope { from, event });
            return Ok(Step::Worked);
        }
        match event {
            Event::Records { batch, watermark } => {
                self.run_input_records(l, input, &batch)?;
                let origin = batch.origin;
                if let Some(recycled) = &l.recycled {
                    recycled.give_back(batch);
                }
                if let Some(w) = watermark.and_then(|w| l.watermarks.update(input, w)) {
                    self.advance_watermark(w, origin)?;
                }
            }
            Event::Watermark(w) => {
                if let Some(w) = l.watermarks.update(input, w) {
                    self.advance_watermark(w, None)?;
                }
            }
            Event::Idle => {
                let was_idle = l.watermarks.all_idle();
                if let Some(w) = l.watermarks.set_idle(input) {
                    self.advance_watermark(w, None)?;
                }
                self.metrics
                    .idle_inputs
                    .set(l.watermarks.idle_count() as i64);
                if !was_idle && l.watermarks.all_idle() {
                    self.broadcast_idle()?;
                }
            }
            Event::Barrier(barrier) => {
                let a = l.alignment.get_or_insert_with(|| Alignment {
                    barrier: barrier.clone(),
                    arrived: l.ended.clone(),
                    started: Instant::now(),
                });
                if a.barrier.id != barrier.id {
                    return Err(self.internal(format!(
                        "barrier {} arrived while aligning barrier {}",
                        barrier.id, a.barrier.id
                    )));
                }
                a.arrived[input] = true;
            }
            Event::End => {
                l.ended[input] = true;
                if let Some(a) = &mut l.alignment {
                    a.arrived[input] = true;
                }
                if let Some(w) = l.watermarks.end(input) {
                    self.advance_watermark(w, None)?;
                }
            }
        }
        if let Some(a) = l.alignment.take_if(|a| a.complete()) {
            self.metrics
                .alignment
                .observe(a.started.elapsed().as_secs_f64());
            self.checkpoint(&a.barrier, None)?;
            if a.barrier.stops() {
                self.stop()?;
                return Ok(Step::Finished);
            }
            l.replay.extend(l.held.drain(..));
        }
        if l.alignment.is_none() && l.ended.iter().all(|&e| e) {
            self.finish(None)?;
            return Ok(Step::Finished);
        }
        self.fire_processing_timers()?;
        self.flush_due()?;
        Ok(Step::Worked)
    }

    /// Runs records from channel `input` through the chain.
    fn run_input_records(
        &mut self,
        l: &mut InputLoop,
        input: usize,
        records: &RecordBatch,
    ) -> Result<(), TaskError> {
        l.watermarks.activate(input);
        self.metrics
            .idle_inputs
            .set(l.watermarks.idle_count() as i64);
        self.stats.records_in += records.len() as u64;
        self.head_input = l.channel_inputs[input];
        let r = self.run_chain(0, records);
        self.head_input = 0;
        r
    }

    /// When the task must act even if no event comes: a batch must be
    /// flushed or a processing-time timer is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let router_deadline = match &self.tail {
            Tail::Router(r) => r.deadline(),
            Tail::Sink(_) => None,
        };
        let timer_deadline = self.next_processing_timer().map(|t| {
            let wait = (t - now_millis()).max(0) as u64;
            Instant::now() + Duration::from_millis(wait)
        });
        match (router_deadline, timer_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event, waiting at most until the task's deadline.
    fn receive(&mut self, receiver: &Receiver<Envelope>) -> Result<Envelope, RecvTimeoutError> {
        if let Ok(envelope) = receiver.try_recv() {
            return Ok(envelope);
        }
        self.flush_metrics();
        match self.deadline() {
            Some(d) => receiver.recv_deadline(d),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        }
    }
}
