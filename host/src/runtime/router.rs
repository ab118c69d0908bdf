//! The end of a task whose output feeds another task group: partitions
//! records into per-target batches and sends them over bounded channels.
//!
//! Invariants: a partitioner never changes the number of records (broadcast
//! copies each to every target, by definition); records to one target keep
//! their order; a watermark or end marker is sent only after every record
//! before it has been flushed to that target. A full channel blocks the
//! sender: that is the backpressure that keeps memory bounded.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::graph::{Partitioning, instance_for_key_group, key_group};
use crate::runtime::batch::{NO_KEY_GROUP, RecordBatch};

/// What travels between tasks.
#[derive(Debug)]
pub enum Event {
    Records(RecordBatch),
    Watermark(i64),
    End,
}

#[derive(Debug)]
pub struct Envelope {
    /// Index of the sending instance among the receiver's inputs.
    pub from: u32,
    pub event: Event,
}

/// The receiving task is gone (it failed or was cancelled).
#[derive(Debug, Clone, Copy)]
pub struct Disconnected;

pub struct Router {
    from: u32,
    targets: Vec<Sender<Envelope>>,
    mode: Partitioning,
    buffers: Vec<RecordBatch>,
    oldest: Option<Instant>,
    batch_size: usize,
    linger: Duration,
    max_parallelism: u32,
    round_robin: usize,
    /// Time spent waiting for full channels.
    pub blocked: Duration,
}

impl Router {
    pub fn new(
        from: u32,
        targets: Vec<Sender<Envelope>>,
        mode: Partitioning,
        batch_size: usize,
        linger: Duration,
        max_parallelism: u32,
    ) -> Self {
        let buffers = (0..targets.len())
            .map(|_| RecordBatch::with_capacity(batch_size, batch_size * 32))
            .collect();
        Router {
            from,
            targets,
            mode,
            buffers,
            oldest: None,
            batch_size,
            linger,
            max_parallelism,
            round_robin: from as usize,
            blocked: Duration::ZERO,
        }
    }

    fn send(&mut self, target: usize, event: Event) -> Result<(), Disconnected> {
        let envelope = Envelope {
            from: self.from,
            event,
        };
        let sender = &self.targets[target];
        match sender.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(envelope)) => {
                let started = Instant::now();
                let r = sender.send(envelope).map_err(|_| Disconnected);
                self.blocked += started.elapsed();
                r
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(Disconnected),
        }
    }

    fn flush_target(&mut self, target: usize) -> Result<(), Disconnected> {
        if self.buffers[target].is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(
            &mut self.buffers[target],
            RecordBatch::with_capacity(self.batch_size, self.batch_size * 32),
        );
        self.send(target, Event::Records(full))
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), Disconnected> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        let n = self.targets.len();
        for r in batch.iter() {
            match self.mode {
                Partitioning::Key => {
                    let group = if r.key_group == NO_KEY_GROUP {
                        key_group(r.key, self.max_parallelism)
                    } else {
                        r.key_group
                    };
                    let t = instance_for_key_group(group, self.max_parallelism, n as u32) as usize;
                    self.buffers[t].push_with_group(r.key, r.value, r.timestamp, group);
                    self.buffers[t].merge_origin(batch.origin);
                    if self.buffers[t].len() >= self.batch_size {
                        self.flush_target(t)?;
                    }
                }
                Partitioning::Rebalance | Partitioning::Forward => {
                    let t = self.round_robin % n;
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.buffers[t].push(r.key, r.value, r.timestamp);
                    self.buffers[t].merge_origin(batch.origin);
                    if self.buffers[t].len() >= self.batch_size {
                        self.flush_target(t)?;
                    }
                }
                Partitioning::Broadcast => {
                    for t in 0..n {
                        self.buffers[t].push(r.key, r.value, r.timestamp);
                        self.buffers[t].merge_origin(batch.origin);
                        if self.buffers[t].len() >= self.batch_size {
                            self.flush_target(t)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// When buffered records must be sent at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.linger)
    }

    pub fn flush_due(&mut self, now: Instant) -> Result<(), Disconnected> {
        match self.deadline() {
            Some(d) if d <= now => self.flush_all(),
            _ => Ok(()),
        }
    }

    pub fn flush_all(&mut self) -> Result<(), Disconnected> {
        for t in 0..self.targets.len() {
            self.flush_target(t)?;
        }
        self.oldest = None;
        Ok(())
    }

    /// Flushes, then sends a control event to every target.
    pub fn broadcast(&mut self, event: impl Fn() -> Event) -> Result<(), Disconnected> {
        self.flush_all()?;
        for t in 0..self.targets.len() {
            self.send(t, event())?;
        }
        Ok(())
    }
}
