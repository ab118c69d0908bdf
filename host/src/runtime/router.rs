//! The end of a task whose output feeds another task group: partitions
//! records into per-target batches and sends them over bounded channels.
//!
//! Invariants: a partitioner never changes the number of records (broadcast
//! copies each to every target, by definition); records to one target keep
//! their order; a watermark or end marker is sent only after every record
//! before it has been flushed to that target. A full channel blocks the
//! sender: that is the backpressure that keeps memory bounded.
//!
//! A watermark rides on the next records batch to a target that has records
//! waiting, instead of flushing the batch being filled, and goes alone to a
//! target with none: a target learns of it no later than of the records
//! before it. Delivering a watermark later than issued is always safe (it is
//! a lower bound); delivering it often is what keeps windows small: a window
//! operator holds every record since its last watermark, and at a watermark
//! every 20 ms its state outgrew the caches.
//!
//! A router that shares its thread with a receiver of its own
//! ([`Router::defer_when_full`]) must never wait for a full channel, as the
//! thread that would drain it may be its own: it queues what does not fit,
//! per target and in order, and sends it first once there is room.
//!
//! A sender that is done with its batch hands it over whole
//! ([`Router::write_owned`]): to a single target it becomes that target's
//! batch; among several it is divided in one pass. A source task with no
//! operator divides its records as it makes them ([`Scatter`]), each
//! written once, into the batch of the task that reads it. Either way a
//! divided poll's batches go at the next flush, full or not, as the source
//! polls a batch's worth per target.
//!
//! Batches travel back: a receiver hands each records batch it is done with,
//! emptied, to the senders feeding it ([`Recycled`]), and a sender starts its
//! next batch in one of those before allocating. A fresh allocation per batch
//! made the sending thread write into memory the receiving core had last
//! touched and the allocator had to pass between threads: recycling took 15%
//! of the CPU time of a keyed job.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::graph::{Partitioning, instance_for_key_group, key_group};
use crate::runtime::batch::{NO_KEY_GROUP, RecordBatch};

/// What travels between tasks.
#[derive(Debug)]
pub enum Event {
    /// Records, then (when set) the sender's watermark.
    Records {
        batch: RecordBatch,
        watermark: Option<i64>,
    },
    Watermark(i64),
    /// The sender has had nothing to send for its idle timeout; it becomes
    /// active again with its next records or watermark.
    Idle,
    /// A checkpoint barrier: everything before it is in the checkpoint.
    Barrier(crate::checkpoint::Barrier),
    End,
}

#[derive(Debug)]
pub struct Envelope {
    /// Index of the sending instance among the receiver's inputs.
    pub from: u32,
    pub event: Event,
}

/// First and longest pause of a sender polling a full channel.
const BLOCKED_POLL_MIN: Duration = Duration::from_micros(20);
const BLOCKED_POLL_MAX: Duration = Duration::from_micros(200);

/// Batches a receiver returns are dropped instead when their arena grew past
/// this: one batch of huge records must not stay allocated for good.
const RECYCLED_BATCH_MAX_BYTES: usize = 1 << 20;

/// The receiving end's way to return emptied batches to its senders.
#[derive(Clone, Debug)]
pub struct Recycled {
    to_senders: Sender<RecordBatch>,
}

impl Recycled {
    /// A return path holding up to `batches` batches, and the receiver side
    /// the senders draw from.
    pub fn channel(batches: usize) -> (Recycled, Receiver<RecordBatch>) {
        let (to_senders, from_receiver) = crossbeam_channel::bounded(batches);
        (Recycled { to_senders }, from_receiver)
    }

    /// Returns a batch the receiver is done with; dropped when the senders
    /// already hold enough or it grew too large.
    pub fn give_back(&self, mut batch: RecordBatch) {
        if batch.byte_capacity() > RECYCLED_BATCH_MAX_BYTES {
            return;
        }
        batch.clear();
        let _ = self.to_senders.try_send(batch);
    }
}

/// The receiving task is gone (it failed or was cancelled).
#[derive(Debug, Clone, Copy)]
pub struct Disconnected;

pub struct Router {
    from: u32,
    /// The sending task's instance index (a forward edge keeps it).
    instance: u32,
    targets: Vec<Sender<Envelope>>,
    /// Per target: emptied batches it returned, when it returns them.
    recycled: Vec<Receiver<RecordBatch>>,
    mode: Partitioning,
    buffers: Vec<RecordBatch>,
    oldest: Option<Instant>,
    batch_size: usize,
    linger: Duration,
    max_parallelism: u32,
    /// Per key group, the target that owns it (a keyed router).
    target_of_group: Vec<u16>,
    round_robin: usize,
    /// The latest watermark issued, and per target the latest one sent.
    watermark: i64,
    sent_watermarks: Vec<i64>,
    /// Time spent waiting for full channels.
    pub blocked: Duration,
    /// Block on a full channel instead of polling it (when the job has more
    /// task threads than the machine has cores).
    pub block_when_full: bool,
    /// Queue what a full channel does not take instead of waiting.
    defer_when_full: bool,
    /// Per target: events waiting for room, oldest first.
    deferred: Vec<VecDeque<Envelope>>,
    /// Since when something has been waiting in `deferred`.
    deferred_since: Option<Instant>,
    /// The targets' batches hold what a scatter divided among them: they go
    /// at the next flush, full or not.
    handed_over: bool,
}

impl Router {
    /// `from` is the sender's channel index at the receivers (its instance,
    /// after the instances of the receivers' earlier inputs).
    pub fn new(
        from: u32,
        instance: u32,
        targets: Vec<Sender<Envelope>>,
        mode: Partitioning,
        batch_size: usize,
        linger: Duration,
        max_parallelism: u32,
    ) -> Self {
        let sent_watermarks = vec![i64::MIN; targets.len()];
        let target_of_group = match mode {
            Partitioning::Key => (0..max_parallelism)
                .map(|g| {
                    let t = instance_for_key_group(g, max_parallelism, targets.len() as u32);
                    u16::try_from(t).expect("parallelism is at most 32768")
                })
                .collect(),
            _ => Vec::new(),
        };
        let buffers = (0..targets.len())
            .map(|_| RecordBatch::with_capacity(batch_size, batch_size * 32))
            .collect();
        Router {
            from,
            instance,
            targets,
            recycled: Vec::new(),
            mode,
            buffers,
            oldest: None,
            batch_size,
            linger,
            max_parallelism,
            target_of_group,
            round_robin: from as usize,
            watermark: i64::MIN,
            sent_watermarks,
            blocked: Duration::ZERO,
            block_when_full: false,
            defer_when_full: false,
            deferred: Vec::new(),
            deferred_since: None,
            handed_over: false,
        }
    }

    /// From now on, queue what a full channel does not take (`true`), or
    /// wait for room again (`false`, after sending what is queued).
    pub fn defer_when_full(&mut self, defer: bool) -> Result<(), Disconnected> {
        self.defer_when_full = defer;
        if defer {
            self.deferred.resize_with(self.targets.len(), VecDeque::new);
            return Ok(());
        }
        for t in 0..self.deferred.len() {
            while let Some(envelope) = self.deferred[t].pop_front() {
                self.send_envelope(t, envelope)?;
            }
        }
        self.note_deferral_over();
        Ok(())
    }

    /// Sends what was queued, as far as there is room; whether all went.
    pub fn send_deferred(&mut self) -> Result<bool, Disconnected> {
        if self.deferred_since.is_none() {
            return Ok(true);
        }
        let mut all = true;
        for (queue, target) in self.deferred.iter_mut().zip(&self.targets) {
            while let Some(envelope) = queue.pop_front() {
                match target.try_send(envelope) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(back)) => {
                        queue.push_front(back);
                        all = false;
                        break;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        return Err(Disconnected);
                    }
                }
            }
        }
        if all {
            self.note_deferral_over();
        }
        Ok(all)
    }

    /// A channel that has events queued for it, if any.
    pub fn deferred_target(&self) -> Option<&Sender<Envelope>> {
        self.deferred
            .iter()
            .position(|q| !q.is_empty())
            .map(|t| &self.targets[t])
    }

    fn note_deferral_over(&mut self) {
        if let Some(since) = self.deferred_since.take() {
            self.blocked += since.elapsed();
        }
    }

    /// Starts new batches for target `i` in the batches `recycled[i]` returns.
    pub fn recycle_from(&mut self, recycled: Vec<Receiver<RecordBatch>>) {
        debug_assert_eq!(recycled.len(), self.targets.len());
        self.recycled = recycled;
    }

    fn send(&mut self, target: usize, event: Event) -> Result<(), Disconnected> {
        let envelope = Envelope {
            from: self.from,
            event,
        };
        self.send_envelope(target, envelope)
    }

    fn send_envelope(&mut self, target: usize, envelope: Envelope) -> Result<(), Disconnected> {
        if self.defer_when_full && !self.deferred[target].is_empty() {
            self.deferred[target].push_back(envelope);
            return Ok(());
        }
        let envelope = match self.targets[target].try_send(envelope) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(envelope)) => envelope,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(Disconnected),
        };
        if self.defer_when_full {
            self.deferred[target].push_back(envelope);
            self.deferred_since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        self.wait_and_send(target, envelope)
    }

    fn wait_and_send(&mut self, target: usize, mut envelope: Envelope) -> Result<(), Disconnected> {
        let sender = &self.targets[target];
        // With a core to spare, polling with short sleeps instead of a
        // blocking send: a blocked sender registered in the channel makes
        // the receiver (the slow side, by definition) pay a futex wake for
        // every batch it takes, which cost the bottleneck thread about 10 µs
        // per batch here (Wasm keyed-count at P=1: 4.83 M events/s polling,
        // 3.92 blocking). With more task threads than cores the sleeper's
        // wake-ups take time slices from the threads doing the work, and a
        // blocking send wins (P=2 on 2 cores: 8.70 against 6.02); see
        // `block_when_full`. The channel holds many batches of work, so a
        // sleep of a fraction of that drains nothing the receiver needs.
        let started = Instant::now();
        if self.block_when_full {
            let r = sender.send(envelope).map_err(|_| Disconnected);
            self.blocked += started.elapsed();
            return r;
        }
        let mut pause = BLOCKED_POLL_MIN;
        let result = loop {
            std::thread::sleep(pause);
            match sender.try_send(envelope) {
                Ok(()) => break Ok(()),
                Err(crossbeam_channel::TrySendError::Full(back)) => envelope = back,
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => break Err(Disconnected),
            }
            pause = (pause * 2).min(BLOCKED_POLL_MAX);
        };
        self.blocked += started.elapsed();
        result
    }

    /// Sends target's records with the watermark it has not been sent yet;
    /// with no records, the watermark alone.
    fn flush_target(&mut self, target: usize) -> Result<(), Disconnected> {
        let watermark = (self.watermark > self.sent_watermarks[target]).then(|| {
            self.sent_watermarks[target] = self.watermark;
            self.watermark
        });
        if self.buffers[target].is_empty() {
            return match watermark {
                Some(w) => self.send(target, Event::Watermark(w)),
                None => Ok(()),
            };
        }
        let fresh = self
            .recycled
            .get(target)
            .and_then(|r| r.try_recv().ok())
            .unwrap_or_else(|| RecordBatch::with_capacity(self.batch_size, self.batch_size * 32));
        let full = std::mem::replace(&mut self.buffers[target], fresh);
        self.send(
            target,
            Event::Records {
                batch: full,
                watermark,
            },
        )
    }

    /// A target's batch is sent when the next record for it finds it full,
    /// not as soon as it fills: a watermark issued after this write then
    /// rides on it (see [`Router::watermark`]; [`Router::flush_due`] sends
    /// what no watermark took).
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
                    let t = usize::from(self.target_of_group[group as usize]);
                    self.make_room(t)?;
                    self.buffers[t].push_with_group(r.key, r.value, r.timestamp, group);
                    self.buffers[t].merge_origin(batch.origin);
                }
                Partitioning::Forward if n > 1 => {
                    // Planned only between equal parallelisms.
                    let t = self.instance as usize % n;
                    self.make_room(t)?;
                    self.buffers[t].push(r.key, r.value, r.timestamp);
                    self.buffers[t].merge_origin(batch.origin);
                }
                Partitioning::Rebalance | Partitioning::Forward => {
                    let t = self.round_robin % n;
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.make_room(t)?;
                    self.buffers[t].push(r.key, r.value, r.timestamp);
                    self.buffers[t].merge_origin(batch.origin);
                }
                Partitioning::Broadcast => {
                    for t in 0..n {
                        self.make_room(t)?;
                        self.buffers[t].push(r.key, r.value, r.timestamp);
                        self.buffers[t].merge_origin(batch.origin);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands over `batch`, leaving an empty batch in its place: see the
    /// module documentation.
    pub fn write_owned(&mut self, batch: &mut RecordBatch) -> Result<(), Disconnected> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = self.targets.len();
        let single = match self.mode {
            Partitioning::Broadcast => {
                self.write(&*batch)?;
                batch.clear();
                return Ok(());
            }
            _ if n == 1 => 0,
            Partitioning::Forward => self.instance as usize % n,
            Partitioning::Key | Partitioning::Rebalance => return self.scatter(batch),
        };
        self.flush_waiting(single)?;
        std::mem::swap(&mut self.buffers[single], batch);
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Sends what waits for `target`, so that what is handed over next
    /// comes after it.
    fn flush_waiting(&mut self, target: usize) -> Result<(), Disconnected> {
        if !self.buffers[target].is_empty() {
            self.flush_target(target)?;
        }
        Ok(())
    }

    /// How many targets a batch handed over whole is divided among (1: it
    /// is not divided).
    pub fn dividing_targets(&self) -> usize {
        match self.mode {
            Partitioning::Key | Partitioning::Rebalance => self.targets.len(),
            _ => 1,
        }
    }

    /// Divides `batch` among the targets' batches in one pass (see the
    /// module documentation).
    fn scatter(&mut self, batch: &mut RecordBatch) -> Result<(), Disconnected> {
        let mut into = self.scatter_into(batch.origin, i64::MAX);
        for i in 0..batch.len() {
            let r = batch.get(i);
            into.push_with_group(r.key, r.value, r.timestamp, r.key_group);
        }
        batch.clear();
        into.finish().map(drop)
    }

    /// Starts taking records one at a time into the targets' batches (see
    /// [`Scatter`]); event times above `horizon` are counted apart.
    pub fn scatter_into(&mut self, origin: Option<Instant>, horizon: i64) -> Scatter<'_> {
        debug_assert!(
            matches!(self.mode, Partitioning::Key | Partitioning::Rebalance)
                || self.targets.len() == 1,
            "a scatter divides by key or in turn"
        );
        Scatter {
            router: self,
            origin,
            failed: None,
            horizon,
            taken: Scattered {
                records: 0,
                beyond_horizon: 0,
                max_timestamp: None,
            },
        }
    }

    /// Appends a record to target `t`'s batch, sending that first if full;
    /// a batch started here is as old as `origin`.
    #[inline(always)]
    fn push_to(
        &mut self,
        t: usize,
        key: &[u8],
        value: &[u8],
        timestamp: i64,
        group: u32,
        origin: Option<Instant>,
    ) -> Result<(), Disconnected> {
        if self.buffers[t].len() >= self.batch_size {
            self.flush_target(t)?;
        }
        let buffer = &mut self.buffers[t];
        if buffer.is_empty() {
            buffer.origin = origin;
        }
        buffer.push_with_group(key, value, timestamp, group);
        Ok(())
    }

    #[inline]
    fn make_room(&mut self, target: usize) -> Result<(), Disconnected> {
        if self.buffers[target].len() >= self.batch_size {
            self.flush_target(target)?;
        }
        Ok(())
    }

    /// Whether target's batch is to go at the next flush.
    #[inline]
    fn ready(&self, target: usize) -> bool {
        let waiting = self.buffers[target].len();
        waiting >= self.batch_size || (self.handed_over && waiting > 0)
    }

    /// Sends full batches, and those holding what was handed over.
    fn flush_full(&mut self) -> Result<(), Disconnected> {
        for t in 0..self.targets.len() {
            if self.ready(t) {
                self.flush_target(t)?;
            }
        }
        self.handed_over = false;
        Ok(())
    }

    /// Issues a watermark: now, on a full batch or alone, to a target with
    /// a full batch or none; with the next batch to a target whose batch is
    /// still filling. (So with batches of one record, every record is
    /// followed by its watermark.)
    pub fn watermark(&mut self, watermark: i64) -> Result<(), Disconnected> {
        if watermark <= self.watermark {
            return self.flush_full();
        }
        self.watermark = watermark;
        for t in 0..self.targets.len() {
            if self.buffers[t].is_empty() || self.ready(t) {
                self.flush_target(t)?;
            }
        }
        self.handed_over = false;
        Ok(())
    }

    /// When buffered records must be sent at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.linger)
    }

    /// Sends full batches, and every batch once the oldest record waiting
    /// has waited the linger time.
    pub fn flush_due(&mut self, now: Instant) -> Result<(), Disconnected> {
        match self.deadline() {
            Some(d) if d <= now => self.flush_all(),
            _ => self.flush_full(),
        }
    }

    pub fn flush_all(&mut self) -> Result<(), Disconnected> {
        for t in 0..self.targets.len() {
            self.flush_target(t)?;
        }
        self.oldest = None;
        self.handed_over = false;
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

/// Records taken one at a time into a keyed or rebalancing router's
/// per-target batches, as a source makes them (or from a batch handed over
/// whole): each is written once, into the batch of the task that reads it.
/// Those batches go at the router's next flush, as the source polls about
/// a batch's worth per target.
pub struct Scatter<'a> {
    router: &'a mut Router,
    origin: Option<Instant>,
    /// A receiver gone: the rest is dropped, and [`Scatter::finish`] says so
    /// (the job fails and restarts from its last checkpoint).
    failed: Option<Disconnected>,
    horizon: i64,
    taken: Scattered,
}

/// What a [`Scatter`] took.
#[derive(Clone, Copy, Debug)]
pub struct Scattered {
    pub records: u64,
    /// Records whose event time was above the horizon.
    pub beyond_horizon: u64,
    /// The highest event time not above the horizon.
    pub max_timestamp: Option<i64>,
}

impl Scatter<'_> {
    #[inline]
    pub fn push(&mut self, key: &[u8], value: &[u8], timestamp: i64) {
        self.push_with_group(key, value, timestamp, NO_KEY_GROUP);
    }

    #[inline]
    fn push_with_group(&mut self, key: &[u8], value: &[u8], timestamp: i64, group: u32) {
        if self.failed.is_some() {
            return;
        }
        self.taken.records += 1;
        if timestamp > self.horizon {
            self.taken.beyond_horizon += 1;
        } else if self.taken.max_timestamp.is_none_or(|max| timestamp > max) {
            self.taken.max_timestamp = Some(timestamp);
        }
        let router = &mut *self.router;
        let (t, group) = if router.mode == Partitioning::Key {
            let group = if group == NO_KEY_GROUP {
                key_group(key, router.max_parallelism)
            } else {
                group
            };
            (usize::from(router.target_of_group[group as usize]), group)
        } else {
            let t = router.round_robin % router.targets.len();
            router.round_robin = router.round_robin.wrapping_add(1);
            (t, group)
        };
        if let Err(e) = router.push_to(t, key, value, timestamp, group, self.origin) {
            self.failed = Some(e);
        }
    }

    /// Marks the targets' batches for sending at the next flush.
    pub fn finish(self) -> Result<Scattered, Disconnected> {
        if self.taken.records > 0 {
            self.router.handed_over = true;
            self.router.oldest.get_or_insert_with(Instant::now);
        }
        self.failed.map_or(Ok(self.taken), Err)
    }
}

/// A task's output to every task group that reads it: each gets every
/// record, partitioned its own way.
pub struct Fanout {
    routers: Vec<Router>,
}

impl Fanout {
    pub fn new(routers: Vec<Router>) -> Self {
        Fanout { routers }
    }

    pub fn write(&mut self, records: &RecordBatch) -> Result<(), Disconnected> {
        for r in &mut self.routers {
            r.write(records)?;
        }
        Ok(())
    }

    /// See [`Router::dividing_targets`]; 1 with several readers (a batch for
    /// several is copied).
    pub fn dividing_targets(&self) -> usize {
        match self.routers.as_slice() {
            [router] => router.dividing_targets(),
            _ => 1,
        }
    }

    /// Hands `batch` over when there is one reader, else copies it; either
    /// way leaves `batch` empty.
    pub fn write_owned(&mut self, batch: &mut RecordBatch) -> Result<(), Disconnected> {
        if let [router] = self.routers.as_mut_slice() {
            return router.write_owned(batch);
        }
        self.write(&*batch)?;
        batch.clear();
        Ok(())
    }

    /// The router a source can write its records straight into, record by
    /// record: the only one, when it divides them among several readers.
    pub fn scattering(&mut self) -> Option<&mut Router> {
        match self.routers.as_mut_slice() {
            [router] if router.dividing_targets() > 1 => Some(router),
            _ => None,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.routers.iter().filter_map(Router::deadline).min()
    }

    pub fn flush_due(&mut self, now: Instant) -> Result<(), Disconnected> {
        for r in &mut self.routers {
            r.flush_due(now)?;
        }
        Ok(())
    }

    pub fn broadcast(&mut self, event: impl Fn() -> Event) -> Result<(), Disconnected> {
        for r in &mut self.routers {
            r.broadcast(&event)?;
        }
        Ok(())
    }

    pub fn watermark(&mut self, watermark: i64) -> Result<(), Disconnected> {
        for r in &mut self.routers {
            r.watermark(watermark)?;
        }
        Ok(())
    }

    /// See [`Router::defer_when_full`].
    pub fn defer_when_full(&mut self, defer: bool) -> Result<(), Disconnected> {
        for r in &mut self.routers {
            r.defer_when_full(defer)?;
        }
        Ok(())
    }

    /// Sends what was queued, as far as there is room; whether all went.
    pub fn send_deferred(&mut self) -> Result<bool, Disconnected> {
        let mut all = true;
        for r in &mut self.routers {
            all &= r.send_deferred()?;
        }
        Ok(all)
    }

    /// A channel that has events queued for it, if any.
    pub fn deferred_target(&self) -> Option<&Sender<Envelope>> {
        self.routers.iter().find_map(Router::deferred_target)
    }

    /// Time spent waiting for full channels, over all readers.
    pub fn blocked(&self) -> Duration {
        self.routers.iter().map(|r| r.blocked).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(targets: usize, batch_size: usize) -> (Router, Vec<Receiver<Envelope>>) {
        let (senders, receivers) = (0..targets).map(|_| crossbeam_channel::unbounded()).unzip();
        let router = Router::new(
            0,
            0,
            senders,
            Partitioning::Rebalance,
            batch_size,
            Duration::from_secs(60),
            128,
        );
        (router, receivers)
    }

    fn records(timestamps: &[i64]) -> RecordBatch {
        let mut batch = RecordBatch::new();
        for &t in timestamps {
            batch.push(b"k", b"v", t);
        }
        batch
    }

    /// Per message: the records' timestamps and the watermark after them.
    fn received(receiver: &Receiver<Envelope>) -> Vec<(Vec<i64>, Option<i64>)> {
        receiver
            .try_iter()
            .map(|e| match e.event {
                Event::Records { batch, watermark } => {
                    (batch.iter().map(|r| r.timestamp).collect(), watermark)
                }
                Event::Watermark(w) => (Vec::new(), Some(w)),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_watermark_waits_for_a_filling_batch_and_goes_alone_to_an_empty_target() {
        let (mut router, receivers) = router(2, 4);
        // Round robin from target 0: three records, two to target 0.
        router.write(&records(&[1, 2, 3])).unwrap();
        router.write(&records(&[4])).unwrap();
        router.watermark(3).unwrap();
        assert_eq!(received(&receivers[0]), vec![]);
        assert_eq!(received(&receivers[1]), vec![]);
        router.write(&records(&[5, 6])).unwrap();
        router.watermark(4).unwrap();
        // Three of four records each: both batches still filling.
        assert_eq!(received(&receivers[0]), vec![]);
        router.flush_all().unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![1, 3, 5], Some(4))]);
        assert_eq!(received(&receivers[1]), vec![(vec![2, 4, 6], Some(4))]);
        router.watermark(9).unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![], Some(9))]);
        assert_eq!(received(&receivers[1]), vec![(vec![], Some(9))]);
    }

    #[test]
    fn a_full_batch_carries_the_watermark_issued_after_it() {
        let (mut router, receivers) = router(1, 2);
        router.write(&records(&[1, 2])).unwrap();
        assert_eq!(
            received(&receivers[0]),
            vec![],
            "full, but sent with what follows"
        );
        router.watermark(2).unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![1, 2], Some(2))]);
        router.write(&records(&[3, 4, 5])).unwrap();
        router.flush_due(Instant::now()).unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![3, 4], None)]);
        router.flush_all().unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![5], None)]);
    }

    #[test]
    fn a_batch_handed_to_keyed_targets_is_divided_with_its_key_groups() {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..2).map(|_| crossbeam_channel::unbounded()).unzip();
        let mut router = Router::new(
            0,
            0,
            senders,
            Partitioning::Key,
            64,
            Duration::from_secs(60),
            128,
        );
        let mut batch = RecordBatch::new();
        for i in 0..40u64 {
            batch.push(&i.to_le_bytes(), b"v", i as i64);
        }
        router.write_owned(&mut batch).unwrap();
        assert!(batch.is_empty());
        router.watermark(39).unwrap();
        let mut seen = Vec::new();
        for (target, receiver) in receivers.iter().enumerate() {
            let envelope = receiver.try_recv().expect("a batch for each target");
            let Event::Records { batch, watermark } = envelope.event else {
                panic!("expected records");
            };
            assert_eq!(watermark, Some(39), "the watermark rides on the batch");
            let mut last = -1;
            for r in batch.iter() {
                let group = key_group(r.key, 128);
                assert_eq!(r.key_group, group, "the key group is cached");
                assert_eq!(instance_for_key_group(group, 128, 2) as usize, target);
                assert!(r.timestamp > last, "in order");
                last = r.timestamp;
                seen.push(r.timestamp);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..40).collect::<Vec<_>>(), "every record once");
    }

    #[test]
    fn records_scattered_by_a_source_go_at_the_next_flush_with_what_it_saw() {
        let (mut router, receivers) = router(2, 4);
        let mut into = router.scatter_into(None, 100);
        for t in [5, 200, 7, 9, 8] {
            into.push(b"k", b"v", t);
        }
        let taken = into.finish().unwrap();
        assert_eq!(taken.records, 5);
        assert_eq!(taken.beyond_horizon, 1, "200 is beyond the horizon");
        assert_eq!(taken.max_timestamp, Some(9));
        // Round robin: target 0 took 5, 7 and 8; target 1 took 200 and 9.
        router.flush_due(Instant::now()).unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![5, 7, 8], None)]);
        assert_eq!(received(&receivers[1]), vec![(vec![200, 9], None)]);
    }

    #[test]
    fn a_scatter_sends_full_batches_as_it_goes_and_stops_once_a_target_is_gone() {
        let (mut router, mut receivers) = router(2, 2);
        let mut into = router.scatter_into(None, i64::MAX);
        for t in 0..6 {
            into.push(b"k", b"v", t);
        }
        into.finish().unwrap();
        assert_eq!(received(&receivers[0]), vec![(vec![0, 2], None)]);
        drop(receivers.remove(1));
        let mut into = router.scatter_into(None, i64::MAX);
        for t in 6..12 {
            into.push(b"k", b"v", t);
        }
        assert!(into.finish().is_err(), "the gone target is reported");
    }

    #[test]
    fn a_batch_handed_to_a_single_target_becomes_its_batch() {
        let (mut router, receivers) = router(1, 4);
        let mut owned = records(&[1, 2]);
        router.write_owned(&mut owned).unwrap();
        assert!(owned.is_empty());
        router.write(&records(&[3, 4, 5])).unwrap();
        router.flush_all().unwrap();
        assert_eq!(
            received(&receivers[0]),
            vec![(vec![1, 2, 3, 4], None), (vec![5], None)]
        );
    }

    #[test]
    fn a_watermark_never_overtakes_records_written_before_it() {
        let (mut router, receivers) = router(3, 5);
        let mut issued = Vec::new();
        let mut t = 0;
        for round in 0..200 {
            let n = round % 7 + 1;
            let ts: Vec<i64> = (t..t + n).collect();
            t += n;
            if round % 3 == 0 {
                let mut owned = records(&ts);
                router.write_owned(&mut owned).unwrap();
                assert!(owned.is_empty(), "handed over");
            } else {
                router.write(&records(&ts)).unwrap();
            }
            router.watermark(t - 1).unwrap();
            issued.push(t - 1);
            if round % 11 == 0 {
                router.flush_due(Instant::now()).unwrap();
            }
        }
        router.flush_all().unwrap();
        for receiver in &receivers {
            let mut watermark = i64::MIN;
            let mut seen_max = i64::MIN;
            for (timestamps, w) in received(receiver) {
                for ts in timestamps {
                    assert!(ts > watermark, "record {ts} after watermark {watermark}");
                    seen_max = seen_max.max(ts);
                }
                if let Some(w) = w {
                    assert!(w > watermark, "watermarks rise");
                    watermark = w;
                }
            }
            assert_eq!(watermark, *issued.last().unwrap(), "the last one arrives");
            assert!(seen_max <= watermark);
        }
    }
}
