//! The checkpoint coordinator of one job run: a state machine driven by the
//! job's runner thread.
//!
//! States: *idle* (no checkpoint in flight) and *pending(n)* (barriers of
//! `n` are travelling, acknowledgements arrive). Transitions:
//! - idle -> pending(n): the interval has passed since the last trigger, or
//!   a savepoint was requested. Sources get the barrier; tasks that have
//!   already finished are acknowledged at once with their final snapshot.
//! - pending(n) -> idle, complete: every task acknowledged. The manifest is
//!   written, sink parts are committed, old checkpoints pruned, a savepoint
//!   requester answered.
//! - pending(n) -> idle, aborted: the timeout passed, or a write failed. Its
//!   folder is deleted; its sink parts stay pending and are listed again by
//!   the next checkpoint.
//!
//! Snapshots reach the coordinator only through the writer thread (after
//! their file is on disk) or as a finished task's final snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::history::{SnapshotKind, history};
use super::manifest::{
    FileEntry, Manifest, ManifestKind, ModuleVersion, TaskSnapshot, encode_state_file,
};
use super::storage::CheckpointStore;
use super::{Barrier, BarrierKind, CheckpointError, CheckpointId, SwapOrder};
use crate::connectors::SinkFactory;
use crate::time::now_millis;

/// A task's snapshot on its way to disk.
pub struct WriteRequest {
    pub task: usize,
    pub checkpoint: CheckpointId,
    pub dir: Arc<PathBuf>,
    pub snapshot: TaskSnapshot,
    pub state: StatePart,
}

/// A task's state file for the writer.
pub enum StatePart {
    /// No keyed state.
    None,
    /// Encoded (the task's `snapshot.state` indexes it).
    Ready(Arc<[u8]>),
    /// Operators' snapshots with entries still to be written from frozen
    /// copies: the writer completes and encodes them into `file`, and
    /// fills in the task's `snapshot.state`.
    Deferred {
        file: String,
        operators: Vec<(
            String,
            std::ops::Range<u32>,
            crate::state::snapshot::KeyedSnapshot,
        )>,
    },
}

/// What the writer thread reports.
pub enum Written {
    Done {
        task: usize,
        checkpoint: CheckpointId,
        snapshot: TaskSnapshot,
        file: Option<FileEntry>,
    },
    Failed {
        task: usize,
        checkpoint: CheckpointId,
        error: CheckpointError,
    },
}

/// Writes snapshots until every sender is gone.
pub fn spawn_writer(
    store: CheckpointStore,
    requests: crossbeam_channel::Receiver<WriteRequest>,
    done: impl Fn(Written) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weir-checkpoint-writer".into())
        .spawn(move || {
            for mut r in requests {
                let ready = match std::mem::replace(&mut r.state, StatePart::None) {
                    StatePart::Deferred {
                        file,
                        mut operators,
                    } => {
                        let completed = operators.iter_mut().try_for_each(|(_, _, s)| {
                            s.complete().map_err(|e| CheckpointError::Snapshot {
                                task: r.task,
                                message: e.to_string(),
                            })?;
                            match s.native_mut() {
                                Some(copy) => store.put_native(copy),
                                None => Ok(()),
                            }
                        });
                        if let Err(error) = completed {
                            done(Written::Failed {
                                task: r.task,
                                checkpoint: r.checkpoint,
                                error,
                            });
                            continue;
                        }
                        encode_state_file(file, &operators).map(|(bytes, index)| {
                            r.snapshot.state = Some(index);
                            Arc::<[u8]>::from(bytes)
                        })
                    }
                    StatePart::Ready(bytes) => Some(bytes),
                    StatePart::None => None,
                };
                let file = match (&ready, &r.snapshot.state) {
                    (Some(bytes), Some(state)) => {
                        match store.put_file(&r.dir, &state.file, bytes) {
                            Ok(entry) => Some(entry),
                            Err(error) => {
                                done(Written::Failed {
                                    task: r.task,
                                    checkpoint: r.checkpoint,
                                    error,
                                });
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                done(Written::Done {
                    task: r.task,
                    checkpoint: r.checkpoint,
                    snapshot: r.snapshot,
                    file,
                });
            }
        })
}

struct Final {
    /// The last checkpoint the task snapshotted at a barrier.
    last: CheckpointId,
    snapshot: TaskSnapshot,
    state: Option<Arc<[u8]>>,
}

struct Pending {
    id: CheckpointId,
    kind: BarrierKind,
    dir: Arc<PathBuf>,
    started: Instant,
    acks: Vec<Option<(TaskSnapshot, Option<FileEntry>)>>,
    reply: Option<Sender<Result<PathBuf, CheckpointError>>>,
    /// A savepoint to object storage: its folder's URL. `dir` is then a
    /// local staging folder, uploaded (manifest last) once complete.
    upload: Option<String>,
}

/// A savepoint or module swap asked for while another checkpoint was in
/// flight.
enum Request {
    Savepoint {
        target: PathBuf,
        stop: bool,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    },
    Swap {
        swap: Arc<SwapOrder>,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    },
}

impl Request {
    fn refuse(self, error: CheckpointError) {
        let (Request::Savepoint { reply, .. } | Request::Swap { reply, .. }) = self;
        let _ = reply.send(Err(error));
    }
}

/// Settings and facts of the job the coordinator needs.
pub struct CoordinatorConfig {
    pub job: String,
    pub store: CheckpointStore,
    /// `None`: savepoints only.
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub retain: usize,
    pub max_parallelism: u32,
    /// Split count of each source, by name.
    pub source_splits: BTreeMap<String, u32>,
    pub modules: Vec<ModuleVersion>,
    /// `memory` or `rocksdb`, for the state-size metric.
    pub state_backend: &'static str,
    /// Told of every complete checkpoint after its sinks committed (a Kafka
    /// source reports its offsets to its consumer group).
    pub on_complete: Option<CompleteHook>,
    /// An aborted checkpoint fails the run (exactly-once Kafka output).
    pub restart_on_abort: bool,
}

/// Called with the manifest of each complete checkpoint.
pub type CompleteHook = Box<dyn FnMut(&Manifest) + Send>;

/// Counters a job reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointCounts {
    pub completed: u64,
    pub aborted: u64,
    pub last_completed: Option<CheckpointId>,
    pub last_duration: Option<Duration>,
    /// Full sizes of the completed checkpoints, summed.
    pub bytes: u64,
    /// Bytes the completed checkpoints added, summed (see `sizes`).
    pub added_bytes: u64,
}

pub struct Coordinator {
    config: CoordinatorConfig,
    /// Per task: where to send barriers (source tasks only).
    triggers: Vec<Option<Sender<Barrier>>>,
    writer: Sender<WriteRequest>,
    sinks: Vec<Arc<SinkFactory>>,
    next_id: CheckpointId,
    last_trigger: Instant,
    pending: Option<Pending>,
    queued: VecDeque<Request>,
    finals: Vec<Option<Final>>,
    /// Tasks that are gone without finishing (stopped, failed).
    gone: Vec<bool>,
    /// The run is ending: no more checkpoints.
    abandoned: bool,
    /// Shared files the last complete checkpoint listed.
    previous_shared: std::collections::BTreeSet<String>,
    pub counts: CheckpointCounts,
    /// Set when the run must restart for the checkpoints' sake.
    failure: Option<String>,
}

impl Coordinator {
    pub fn new(
        config: CoordinatorConfig,
        triggers: Vec<Option<Sender<Barrier>>>,
        writer: Sender<WriteRequest>,
        sinks: Vec<Arc<SinkFactory>>,
    ) -> Result<Self, CheckpointError> {
        config.store.remove_incomplete()?;
        // Nothing is in flight yet, so every shared file no complete
        // checkpoint lists is left over (from an aborted or dropped one).
        config.store.remove_unused_shared()?;
        let next_id = config.store.next_id()?;
        let tasks = triggers.len();
        Ok(Coordinator {
            config,
            triggers,
            writer,
            sinks,
            next_id,
            last_trigger: Instant::now(),
            pending: None,
            queued: VecDeque::new(),
            finals: (0..tasks).map(|_| None).collect(),
            gone: vec![false; tasks],
            abandoned: false,
            previous_shared: Default::default(),
            failure: None,
            counts: CheckpointCounts::default(),
        })
    }

    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn all_finished(&self) -> bool {
        self.finals.iter().all(Option::is_some)
    }

    /// When [`Self::tick`] has something to do next.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.pending {
            Some(p) => Some(p.started + self.config.timeout),
            None => self.config.interval.map(|i| self.last_trigger + i),
        }
    }

    /// Triggers a due checkpoint, aborts an overdue one.
    pub fn tick(&mut self, now: Instant) {
        if self.abandoned {
            return;
        }
        if let Some(p) = &self.pending {
            if now >= p.started + self.config.timeout {
                let timeout = self.config.timeout;
                self.abort(format!("not complete after {timeout:?}"));
            }
            return;
        }
        if let Some(r) = self.queued.pop_front() {
            match r {
                Request::Savepoint {
                    target,
                    stop,
                    reply,
                } => self.trigger_savepoint(target, stop, reply),
                Request::Swap { swap, reply } => self.trigger_swap(swap, reply),
            }
            return;
        }
        if let Some(interval) = self.config.interval
            && now >= self.last_trigger + interval
            && !self.all_finished()
            && !self.gone.iter().any(|&g| g)
        {
            let dir = self.config.store.checkpoint_dir(self.next_id);
            self.trigger(BarrierKind::Checkpoint, dir, None, None);
        }
    }

    /// Asks for a checkpoint whose barrier swaps an operator's module (see
    /// [`SwapOrder`]); the answer is the checkpoint's folder once complete.
    /// The checkpoint is the swap's fallback: it holds the old version's
    /// state.
    pub fn request_swap(
        &mut self,
        swap: Arc<SwapOrder>,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    ) {
        if self.abandoned || self.all_finished() || self.gone.iter().any(|&g| g) {
            let _ = reply.send(Err(CheckpointError::NotRunning));
            return;
        }
        if self.pending.is_some() {
            self.queued.push_back(Request::Swap { swap, reply });
        } else {
            self.trigger_swap(swap, reply);
        }
    }

    fn trigger_swap(
        &mut self,
        swap: Arc<SwapOrder>,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    ) {
        let dir = self.config.store.checkpoint_dir(self.next_id);
        self.trigger(BarrierKind::Checkpoint, dir, Some(reply), Some(swap));
    }

    /// The module an operator runs from now on, as later manifests record it.
    pub fn set_module(&mut self, version: ModuleVersion) {
        match self
            .config
            .modules
            .iter_mut()
            .find(|m| m.operator == version.operator)
        {
            Some(m) => *m = version,
            None => self.config.modules.push(version),
        }
    }

    /// Asks for a savepoint in a folder of its own below `target`; the
    /// answer is its path once complete.
    pub fn request_savepoint(
        &mut self,
        target: PathBuf,
        stop: bool,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    ) {
        if self.abandoned || self.all_finished() || self.gone.iter().any(|&g| g) {
            let _ = reply.send(Err(CheckpointError::NotRunning));
            return;
        }
        if self.pending.is_some() {
            self.queued.push_back(Request::Savepoint {
                target,
                stop,
                reply,
            });
        } else {
            self.trigger_savepoint(target, stop, reply);
        }
    }

    fn trigger_savepoint(
        &mut self,
        target: PathBuf,
        stop: bool,
        reply: Sender<Result<PathBuf, CheckpointError>>,
    ) {
        let name = format!("savepoint-{}-{}", self.config.job, self.next_id);
        if super::storage::is_remote(&target) {
            let url = format!("{}/{name}", target.to_string_lossy().trim_end_matches('/'));
            let staging = savepoint_staging().join(&name);
            let _ = std::fs::remove_dir_all(&staging);
            self.trigger(BarrierKind::Savepoint { stop }, staging, Some(reply), None);
            if let Some(p) = &mut self.pending {
                p.upload = Some(url);
            }
            return;
        }
        self.trigger(
            BarrierKind::Savepoint { stop },
            target.join(name),
            Some(reply),
            None,
        );
    }

    fn trigger(
        &mut self,
        kind: BarrierKind,
        dir: PathBuf,
        reply: Option<Sender<Result<PathBuf, CheckpointError>>>,
        swap: Option<Arc<SwapOrder>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Instant::now();
        let job = self.config.job.as_str();
        history().started(job, id, snapshot_kind(kind), now_millis());
        if let Err(e) = std::fs::create_dir_all(&dir) {
            let error = CheckpointError::Io {
                path: dir.clone(),
                source: e,
            };
            tracing::warn!(job = %self.config.job, checkpoint = id, error = %error, "cannot start a checkpoint");
            history().aborted(job, id, Duration::ZERO, &error.to_string());
            self.counts.aborted += 1;
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
            return;
        }
        let dir = Arc::new(dir);
        let barrier = Barrier {
            id,
            kind,
            dir: dir.clone(),
            swap,
        };
        tracing::debug!(job = %self.config.job, checkpoint = id, ?kind, "checkpoint triggered");
        for trigger in self.triggers.iter().flatten() {
            // A source that has just finished reports its final snapshot instead.
            let _ = trigger.send(barrier.clone());
        }
        self.pending = Some(Pending {
            id,
            kind,
            dir: dir.clone(),
            started: Instant::now(),
            acks: (0..self.finals.len()).map(|_| None).collect(),
            reply,
            upload: None,
        });
        for task in 0..self.finals.len() {
            self.write_final_for_pending(task);
        }
    }

    /// A finished task that did not see the pending barrier is part of it
    /// with its final snapshot.
    fn write_final_for_pending(&mut self, task: usize) {
        let (Some(p), Some(f)) = (&self.pending, &self.finals[task]) else {
            return;
        };
        if f.last >= p.id {
            return;
        }
        let _ = self.writer.send(WriteRequest {
            task,
            checkpoint: p.id,
            dir: p.dir.clone(),
            snapshot: f.snapshot.clone(),
            state: match &f.state {
                Some(bytes) => StatePart::Ready(bytes.clone()),
                None => StatePart::None,
            },
        });
    }

    pub fn on_written(&mut self, written: Written) {
        match written {
            Written::Done {
                task,
                checkpoint,
                snapshot,
                file,
            } => {
                let Some(p) = &mut self.pending else { return };
                if p.id != checkpoint || p.acks[task].is_some() {
                    return;
                }
                p.acks[task] = Some((snapshot, file));
                if p.acks.iter().all(Option::is_some) {
                    self.complete();
                }
            }
            Written::Failed {
                checkpoint, error, ..
            } => {
                if self.pending.as_ref().is_some_and(|p| p.id == checkpoint) {
                    self.abort(error.to_string());
                }
            }
        }
    }

    /// A task's input ended; `last` is the last checkpoint it snapshotted.
    pub fn on_finished(
        &mut self,
        task: usize,
        last: CheckpointId,
        snapshot: TaskSnapshot,
        state: Option<Arc<[u8]>>,
    ) {
        self.triggers[task] = None;
        self.finals[task] = Some(Final {
            last,
            snapshot,
            state,
        });
        self.write_final_for_pending(task);
    }

    /// A task is gone without finishing: no checkpoint can complete now.
    pub fn on_gone(&mut self, task: usize) {
        if self.finals[task].is_none() {
            self.gone[task] = true;
            self.triggers[task] = None;
        }
    }

    /// Every task has finished: writes the last checkpoint, marked finished,
    /// made of the final snapshots. Drive [`Self::on_written`] until
    /// [`Self::is_pending`] is false.
    pub fn final_checkpoint(&mut self) {
        if self.pending.is_some() {
            // Its missing acknowledgements are final snapshots, on their way.
            return;
        }
        let dir = self.config.store.checkpoint_dir(self.next_id);
        self.trigger(BarrierKind::Checkpoint, dir, None, None);
    }

    fn count_failure(&mut self) {
        self.counts.aborted += 1;
        crate::metrics::metrics()
            .checkpoints
            .with_label_values(&[self.config.job.as_str(), "failed"])
            .inc();
    }

    /// With exactly-once Kafka output an aborted checkpoint fails the run:
    /// its transaction can only be committed together with a later one,
    /// and two commits are not atomic (a crash between them would lose
    /// output), so the job restarts from the last complete checkpoint
    /// instead, as Flink does by default.
    fn in_doubt_abort(&mut self, id: CheckpointId, reason: &str) {
        if self.config.restart_on_abort {
            self.failure.get_or_insert(format!(
                "checkpoint {id} was aborted ({reason}); with exactly-once Kafka output the job restarts from its last complete checkpoint"
            ));
        }
    }

    /// Why the run must restart, if the checkpoints say so.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    fn abort(&mut self, reason: String) {
        let Some(p) = self.pending.take() else { return };
        tracing::warn!(job = %self.config.job, checkpoint = p.id, %reason, "checkpoint aborted");
        history().aborted(&self.config.job, p.id, p.started.elapsed(), &reason);
        self.count_failure();
        let _ = std::fs::remove_dir_all(&*p.dir);
        self.in_doubt_abort(p.id, &reason);
        if let Some(reply) = p.reply {
            let _ = reply.send(Err(CheckpointError::Aborted { id: p.id, reason }));
        }
    }

    /// Gives up the pending checkpoint (the run is ending without it), and
    /// triggers no more: tasks told to stop may still take a barrier but
    /// would not acknowledge it, leaving it pending until its timeout.
    pub fn abandon(&mut self, reason: &str) {
        self.abandoned = true;
        self.abort(reason.to_owned());
        for r in self.queued.drain(..) {
            r.refuse(CheckpointError::NotRunning);
        }
    }

    /// A checkpoint's full size, and the bytes it added: its own files and
    /// the shared files the previous complete checkpoint did not list.
    fn sizes(&self, manifest: &Manifest) -> (u64, u64) {
        let own: u64 = manifest.files.iter().map(|f| f.size).sum();
        let (mut full, mut added) = (own, own);
        for file in manifest.shared_files() {
            full += file.size;
            if !self.previous_shared.contains(&file.name) {
                added += file.size;
            }
        }
        (full, added)
    }

    fn record_metrics(&mut self, manifest: &Manifest, took: Duration) {
        let m = crate::metrics::metrics();
        let job = self.config.job.as_str();
        m.checkpoints.with_label_values(&[job, "completed"]).inc();
        m.checkpoint_seconds
            .with_label_values(&[job])
            .observe(took.as_secs_f64());
        let (size, added) = self.sizes(manifest);
        history().completed(job, manifest.checkpoint, took, size);
        m.checkpoint_bytes
            .with_label_values(&[job])
            .set(size as i64);
        m.checkpoint_added_bytes
            .with_label_values(&[job])
            .set(added as i64);
        self.counts.bytes += size;
        self.counts.added_bytes += added;
        self.previous_shared = manifest.shared_files().map(|f| f.name.clone()).collect();
        m.last_checkpoint_id
            .with_label_values(&[job])
            .set(manifest.checkpoint as i64);
        m.last_checkpoint_timestamp
            .with_label_values(&[job])
            .set(manifest.created_ms as f64 / 1e3);
        for task in &manifest.tasks {
            let bytes = task.state.as_ref().map_or(0, |state| {
                manifest
                    .files
                    .iter()
                    .find(|f| f.name == state.file)
                    .map_or(0, |f| f.size)
            });
            let label = format!("{}#{}", task.group, task.instance);
            m.state_bytes
                .with_label_values(&[job, label.as_str(), self.config.state_backend])
                .set(bytes as i64);
        }
    }

    fn complete(&mut self) {
        let p = self
            .pending
            .take()
            .expect("complete() has a pending checkpoint");
        let finished = p.acks.iter().flatten().all(|(s, _)| s.finished);
        let mut tasks = Vec::new();
        let mut files = Vec::new();
        for (snapshot, file) in p.acks.into_iter().flatten() {
            tasks.push(snapshot);
            files.extend(file);
        }
        let native = tasks
            .iter()
            .filter_map(|t| t.state.as_ref())
            .flat_map(|s| s.operators.iter())
            .any(|o| o.native.is_some());
        let manifest = Manifest {
            format: if native {
                super::manifest::FORMAT_VERSION_NATIVE
            } else {
                super::manifest::FORMAT_VERSION
            },
            job: self.config.job.clone(),
            checkpoint: p.id,
            kind: match p.kind {
                BarrierKind::Checkpoint => ManifestKind::Checkpoint,
                BarrierKind::Savepoint { .. } => ManifestKind::Savepoint,
            },
            finished,
            created_ms: now_millis(),
            max_parallelism: self.config.max_parallelism,
            source_splits: self
                .config
                .source_splits
                .get(crate::graph::spec::MAIN_SOURCE)
                .copied()
                .unwrap_or(0),
            named_source_splits: self
                .config
                .source_splits
                .iter()
                .filter(|(name, _)| *name != crate::graph::spec::MAIN_SOURCE)
                .map(|(name, &n)| (name.clone(), n))
                .collect(),
            modules: self.config.modules.clone(),
            tasks,
            files,
        };
        // Kafka transactions commit between the prepared manifest and the
        // manifest: a crash in between leaves the checkpoint in doubt, and
        // the restart settles it by what Kafka committed
        // (`CheckpointStore::settle_prepared`).
        let is_transaction = |part: &PathBuf| {
            part.to_str()
                .is_some_and(|s| s.starts_with(crate::connectors::kafka::TRANSACTION_PREFIX))
        };
        let mut transactions: Vec<&PathBuf> = manifest
            .tasks
            .iter()
            .flat_map(|t| &t.sinks)
            .flat_map(|s| &s.pending)
            .filter(|part| is_transaction(part))
            .collect();
        transactions.sort();
        transactions.dedup();
        if !transactions.is_empty() {
            let prepared = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
            if let Err(e) =
                self.config
                    .store
                    .put_file(&p.dir, super::manifest::PREPARED_MANIFEST, &prepared)
            {
                self.pending = None;
                self.count_failure();
                tracing::warn!(job = %self.config.job, checkpoint = p.id, error = %e, "checkpoint aborted");
                history().aborted(&self.config.job, p.id, p.started.elapsed(), &e.to_string());
                let _ = std::fs::remove_dir_all(&*p.dir);
                self.in_doubt_abort(p.id, &e.to_string());
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(e));
                }
                return;
            }
            super::crash_point("before-kafka-commit", p.id);
            for part in transactions {
                if let Err(e) = crate::connectors::commit_pending(part, p.id) {
                    // The outcome is unknown: only a restart, which fences
                    // the producers and reads what committed, can tell.
                    tracing::error!(job = %self.config.job, checkpoint = p.id, error = %e, "commit failed");
                    self.pending = None;
                    self.count_failure();
                    self.failure.get_or_insert(format!(
                        "checkpoint {} is in doubt: committing its Kafka transaction failed: {e}",
                        p.id
                    ));
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Err(CheckpointError::Aborted {
                            id: p.id,
                            reason: e.to_string(),
                        }));
                    }
                    return;
                }
            }
            super::crash_point("after-kafka-commit", p.id);
        }
        let written = self
            .config
            .store
            .put_manifest(&p.dir, &manifest)
            .and_then(|()| match &p.upload {
                Some(url) => super::remote::Remote::folder(url)?.upload_folder(
                    &p.dir,
                    "",
                    super::manifest::MANIFEST,
                ),
                None => Ok(()),
            });
        if let Err(e) = written {
            self.pending = None;
            self.count_failure();
            tracing::warn!(job = %self.config.job, checkpoint = p.id, error = %e, "checkpoint aborted");
            history().aborted(&self.config.job, p.id, p.started.elapsed(), &e.to_string());
            let _ = std::fs::remove_dir_all(&*p.dir);
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(e));
            }
            return;
        }
        let took = p.started.elapsed();
        self.counts.completed += 1;
        self.counts.last_completed = Some(p.id);
        self.counts.last_duration = Some(took);
        tracing::info!(job = %self.config.job, checkpoint = p.id, ms = took.as_millis() as u64,
            finished, "checkpoint complete");
        self.record_metrics(&manifest, took);
        for part in manifest
            .tasks
            .iter()
            .flat_map(|t| &t.sinks)
            .flat_map(|s| &s.pending)
            .filter(|part| !is_transaction(part))
        {
            if let Err(e) = crate::connectors::commit_pending(part, p.id) {
                tracing::error!(job = %self.config.job, checkpoint = p.id, error = %e, "commit failed");
            }
        }
        for sink in &self.sinks {
            sink.mark_committed(p.id);
        }
        if let Some(notify) = &mut self.config.on_complete {
            notify(&manifest);
        }
        if p.kind == BarrierKind::Checkpoint
            && let Err(e) = self.config.store.prune(self.config.retain)
        {
            tracing::warn!(job = %self.config.job, error = %e, "cannot delete old checkpoints");
        }
        let location = match &p.upload {
            Some(url) => {
                let _ = std::fs::remove_dir_all(&*p.dir);
                PathBuf::from(url)
            }
            None => (*p.dir).clone(),
        };
        if let Some(reply) = p.reply {
            let _ = reply.send(Ok(location));
        }
    }
}

/// Where savepoints bound for object storage are written before the upload.
fn savepoint_staging() -> PathBuf {
    std::env::temp_dir().join("weir-savepoint-staging")
}

fn snapshot_kind(kind: BarrierKind) -> SnapshotKind {
    match kind {
        BarrierKind::Checkpoint => SnapshotKind::Checkpoint,
        BarrierKind::Savepoint { stop: false } => SnapshotKind::Savepoint,
        BarrierKind::Savepoint { stop: true } => SnapshotKind::StopSavepoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(task: usize, checkpoint: CheckpointId) -> Written {
        Written::Done {
            task,
            checkpoint,
            snapshot: TaskSnapshot::default(),
            file: None,
        }
    }

    #[test]
    fn late_checkpoints_abort_finished_tasks_are_acknowledged_for_them() {
        let root = std::env::temp_dir().join(format!("weir-coordinator-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = CheckpointStore::new(&root, "job");
        let (trigger, barriers) = crossbeam_channel::unbounded();
        let (writer, writes) = crossbeam_channel::unbounded();
        let config = CoordinatorConfig {
            job: "job".into(),
            store: store.clone(),
            interval: Some(Duration::from_millis(5)),
            timeout: Duration::from_millis(40),
            retain: 1,
            max_parallelism: 128,
            source_splits: BTreeMap::from([("source".to_owned(), 1)]),
            modules: Vec::new(),
            state_backend: "memory",
            on_complete: None,
            restart_on_abort: false,
        };
        let mut c =
            Coordinator::new(config, vec![Some(trigger), None], writer, Vec::new()).unwrap();

        // Checkpoint 1: the second task never answers; it is aborted.
        std::thread::sleep(Duration::from_millis(10));
        c.tick(Instant::now());
        let barrier = barriers.try_recv().expect("the source got a barrier");
        assert_eq!(barrier.id, 1);
        c.on_written(done(0, 1));
        assert!(c.is_pending());
        std::thread::sleep(Duration::from_millis(50));
        c.tick(Instant::now());
        assert!(!c.is_pending());
        assert_eq!(c.counts.aborted, 1);
        assert!(
            !store.checkpoint_dir(1).exists(),
            "an aborted checkpoint's folder goes"
        );

        // The second task finishes; checkpoint 2 takes its final snapshot.
        c.on_finished(1, 0, TaskSnapshot::default(), None);
        std::thread::sleep(Duration::from_millis(10));
        c.tick(Instant::now());
        assert_eq!(barriers.try_recv().unwrap().id, 2);
        let final_write = writes
            .try_recv()
            .expect("the final snapshot is written for it");
        assert_eq!((final_write.task, final_write.checkpoint), (1, 2));
        c.on_written(done(1, 2));
        c.on_written(done(0, 1)); // late, for the aborted one: ignored
        assert!(c.is_pending());
        c.on_written(done(0, 2));
        assert!(!c.is_pending());
        assert_eq!(c.counts.completed, 1);
        assert_eq!(store.complete().unwrap(), vec![2]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
