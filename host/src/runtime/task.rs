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

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::connectors::{ConnectorError, Poll, Sink, Source};
use crate::runtime::batch::RecordBatch;
use crate::runtime::latency::LatencyHistogram;
use crate::runtime::operator::{Operator, OperatorError, Output};
use crate::runtime::router::{Disconnected, Envelope, Event, Router};
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
}

/// How a source task tracks event time.
pub struct SourceTime {
    pub watermarks: BoundedOutOfOrderness,
    pub interval: Duration,
    pub idle_timeout: Option<Duration>,
    pub future_horizon_ms: i64,
}

impl SourceTime {
    pub fn new(spec: &crate::graph::spec::WatermarkSpec) -> Self {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        SourceTime {
            watermarks: BoundedOutOfOrderness::new(ms(spec.max_out_of_orderness)),
            interval: spec.interval,
            idle_timeout: spec.idle_timeout,
            future_horizon_ms: ms(spec.future_horizon),
        }
    }

    /// Feeds the batch's timestamps to the watermark generator, except those
    /// beyond the horizon; returns how many were beyond it.
    fn observe(&mut self, batch: &RecordBatch) -> u64 {
        let Some(max) = batch.max_timestamp() else {
            return 0;
        };
        let limit = now_millis().saturating_add(self.future_horizon_ms);
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
        watermarks: InputWatermarks,
        inputs: usize,
    },
}

pub enum Tail {
    Sink(Box<dyn Sink>),
    Router(Router),
}

/// Figures every task of a job adds to.
#[derive(Clone, Debug, Default)]
pub struct SharedCounters {
    /// Source-to-sink latency of the batches that reached a sink.
    pub latency: Arc<LatencyHistogram>,
    /// Records emitted to side outputs that have no sink in the spec.
    pub unrouted_side_records: Arc<std::sync::atomic::AtomicU64>,
    /// Source records beyond the future horizon.
    pub far_future_records: Arc<std::sync::atomic::AtomicU64>,
    /// Records too late for every window they belong to.
    pub late_records: Arc<std::sync::atomic::AtomicU64>,
}

/// Counters of one finished task.
#[derive(Debug, Default, Clone)]
pub struct TaskStats {
    pub records_in: u64,
    pub blocked: Duration,
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
    outputs: Vec<Output>,
    watermark: i64,
    stats: TaskStats,
}

impl Task {
    pub fn new(
        name: String,
        head: Head,
        operators: Vec<Box<dyn Operator>>,
        side_sinks: Vec<Vec<Option<Box<dyn Sink>>>>,
        tail: Tail,
        batch_size: usize,
        shared: SharedCounters,
    ) -> Self {
        let outputs = operators
            .iter()
            .map(|op| Output {
                main: RecordBatch::with_capacity(batch_size, batch_size * 32),
                side: vec![RecordBatch::new(); op.side_outputs().len()],
            })
            .collect();
        Task {
            name,
            head,
            operators,
            side_sinks,
            tail,
            batch_size,
            shared,
            outputs,
            watermark: i64::MIN,
            stats: TaskStats::default(),
        }
    }

    fn peer_stopped(&self, _: Disconnected) -> TaskError {
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
                        self.shared
                            .latency
                            .record(origin.elapsed(), batch.len() as u64);
                    }
                }
                Ok(())
            }
            Tail::Router(router) => router.write(batch).map_err(|d| TaskError::PeerStopped {
                task: format!("{}: {d:?}", self.name),
            }),
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
            self.operators[i].process(source, out)?;
            out.main.origin = source.origin;
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
    fn fire_in_order(
        &mut self,
        fire: &dyn Fn(&mut dyn Operator, &mut Output) -> Result<(), OperatorError>,
    ) -> Result<(), TaskError> {
        for i in 0..self.operators.len() {
            let mut out = std::mem::take(&mut self.outputs[i]);
            out.clear();
            let r = fire(self.operators[i].as_mut(), &mut out);
            out.main.origin = Some(Instant::now());
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

    fn advance_watermark(&mut self, watermark: i64) -> Result<(), TaskError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        self.fire_in_order(&|op, out| op.advance_watermark(watermark, out))?;
        if let Tail::Router(router) = &mut self.tail {
            router
                .broadcast(|| Event::Watermark(watermark))
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
            self.fire_in_order(&|op, out| op.advance_processing_time(now, out))?;
        }
        Ok(())
    }

    fn flush_due(&mut self) -> Result<(), TaskError> {
        if let Tail::Router(router) = &mut self.tail {
            router
                .flush_due(Instant::now())
                .map_err(|_| TaskError::PeerStopped {
                    task: String::new(),
                })?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), TaskError> {
        self.advance_watermark(i64::MAX)?;
        match &mut self.tail {
            Tail::Router(router) => {
                router
                    .broadcast(|| Event::End)
                    .map_err(|_| TaskError::PeerStopped {
                        task: String::new(),
                    })?
            }
            Tail::Sink(sink) => sink.close()?,
        }
        for sinks in &mut self.side_sinks {
            for sink in sinks.iter_mut().flatten() {
                sink.close()?;
            }
        }
        Ok(())
    }

    /// Runs until every input has ended, or the first failure.
    pub fn run(mut self) -> Result<TaskStats, TaskError> {
        let head = std::mem::replace(
            &mut self.head,
            Head::Input {
                receiver: crossbeam_channel::never(),
                watermarks: InputWatermarks::new(0),
                inputs: 0,
            },
        );
        let result = match head {
            Head::Source { source, time } => self.run_source(source, time),
            Head::Input {
                receiver,
                watermarks,
                inputs,
            } => self.run_input(receiver, watermarks, inputs),
        };
        let result = result.map_err(|e| match e {
            TaskError::PeerStopped { .. } => TaskError::PeerStopped {
                task: self.name.clone(),
            },
            other => other,
        });
        if let Tail::Router(router) = &self.tail {
            self.stats.blocked = router.blocked;
        }
        result.map(|()| self.stats.clone())
    }

    fn broadcast_idle(&mut self) -> Result<(), TaskError> {
        if let Tail::Router(router) = &mut self.tail {
            router
                .broadcast(|| Event::Idle)
                .map_err(|d| self.peer_stopped(d))?;
        }
        Ok(())
    }

    fn run_source(
        &mut self,
        mut source: Box<dyn Source>,
        mut time: SourceTime,
    ) -> Result<(), TaskError> {
        let mut batch = RecordBatch::with_capacity(self.batch_size, self.batch_size * 32);
        let mut last_watermark = Instant::now();
        let mut last_record = Instant::now();
        let mut idle = false;
        loop {
            batch.clear();
            batch.origin = Some(Instant::now());
            let poll = source.poll(&mut batch, self.batch_size)?;
            let beyond = time.observe(&batch);
            if beyond > 0 {
                self.shared
                    .far_future_records
                    .fetch_add(beyond, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(task = %self.name, records = beyond,
                    "records more than the future horizon ahead of the clock do not move the watermark");
            }
            self.stats.records_in += batch.len() as u64;
            if !batch.is_empty() {
                last_record = Instant::now();
                idle = false;
            }
            self.run_chain(0, &batch)?;
            if poll == Poll::End {
                return self.finish();
            }
            if last_watermark.elapsed() >= time.interval {
                last_watermark = Instant::now();
                self.advance_watermark(time.watermarks.current())?;
            }
            if let Some(timeout) = time.idle_timeout
                && !idle
                && last_record.elapsed() >= timeout
            {
                idle = true;
                self.flush_due()?;
                self.broadcast_idle()?;
            }
            self.flush_due()?;
            self.fire_processing_timers()?;
        }
    }

    fn run_input(
        &mut self,
        receiver: Receiver<Envelope>,
        mut watermarks: InputWatermarks,
        inputs: usize,
    ) -> Result<(), TaskError> {
        let mut ended = 0;
        loop {
            let router_deadline = match &self.tail {
                Tail::Router(r) => r.deadline(),
                Tail::Sink(_) => None,
            };
            let timer_deadline = self.next_processing_timer().map(|t| {
                let wait = (t - now_millis()).max(0) as u64;
                Instant::now() + Duration::from_millis(wait)
            });
            let deadline = match (router_deadline, timer_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let message = match deadline {
                Some(d) => receiver.recv_deadline(d),
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match message {
                Ok(Envelope { from, event }) => match event {
                    Event::Records(batch) => {
                        watermarks.activate(from as usize);
                        self.stats.records_in += batch.len() as u64;
                        self.run_chain(0, &batch)?;
                    }
                    Event::Watermark(w) => {
                        if let Some(w) = watermarks.update(from as usize, w) {
                            self.advance_watermark(w)?;
                        }
                    }
                    Event::Idle => {
                        let was_idle = watermarks.all_idle();
                        if let Some(w) = watermarks.set_idle(from as usize) {
                            self.advance_watermark(w)?;
                        }
                        if !was_idle && watermarks.all_idle() {
                            self.broadcast_idle()?;
                        }
                    }
                    Event::End => {
                        ended += 1;
                        if let Some(w) = watermarks.end(from as usize) {
                            self.advance_watermark(w)?;
                        }
                        if ended == inputs {
                            return self.finish();
                        }
                    }
                },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.peer_stopped(Disconnected));
                }
            }
            self.flush_due()?;
            self.fire_processing_timers()?;
        }
    }
}
