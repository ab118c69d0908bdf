//! Sinks: stdout, a file, a folder of part files, or nothing (counting only).
//!
//! Lines are JSON objects `{"key":..,"value":..,"timestamp":..}`. Keys and
//! values render by [`BytesFormat`]: text (a value that is itself JSON is
//! embedded as JSON), a little-endian u64 as a number, or hex. All instances
//! of a file sink append whole batches to one file under a lock, so lines
//! never interleave mid-line.
//!
//! Delivery: `stdout` and `file` are at least once across a recovery (a
//! resumed `file` sink appends, and records after the checkpoint are written
//! again). `directory` is exactly once, by two-phase commit: each instance
//! writes a hidden in-progress part file (`.part-*.inprogress`); at a
//! checkpoint barrier it closes it, fsyncs it and hands its path to the
//! checkpoint (pre-commit); only when that checkpoint is complete is it
//! renamed to its final name (commit), by [`commit_part`]. Restoring a
//! checkpoint commits the parts it lists and deletes every other in-progress
//! part ([`recover_directory`]), so output is exactly what the checkpoint
//! covers. Without checkpoints, parts are committed when the job ends.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ConnectorError;
use crate::graph::spec::{BytesFormat, SinkFormat, SinkSpec};
use crate::runtime::batch::RecordBatch;

pub trait Sink: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;

    /// At checkpoint `checkpoint`'s barrier: makes everything written so far
    /// durable and returns what that checkpoint must commit when it
    /// completes (every pre-committed part not yet known to be committed).
    /// Sinks without transactions flush and return nothing.
    fn prepare_commit(&mut self, checkpoint: u64) -> Result<Vec<PathBuf>, ConnectorError>;

    /// The input ended, or the job stopped: flush.
    fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Commits a pre-committed part: renames `.part-X.inprogress` to `part-X`.
/// Idempotent: a part already committed is left alone.
pub fn commit_part(in_progress: &Path) -> Result<(), ConnectorError> {
    let committed = committed_name(in_progress).ok_or_else(|| {
        ConnectorError::Resume(format!(
            "{} is not an in-progress part file name",
            in_progress.display()
        ))
    })?;
    match std::fs::rename(in_progress, &committed) {
        Ok(()) => Ok(()),
        Err(_) if committed.is_file() => Ok(()),
        Err(source) => Err(ConnectorError::Resume(format!(
            "part file {} of a complete checkpoint is missing, so its records are lost: {source}",
            in_progress.display()
        ))),
    }
}

fn committed_name(in_progress: &Path) -> Option<PathBuf> {
    let name = in_progress.file_name()?.to_str()?;
    let base = name.strip_prefix('.')?.strip_suffix(".inprogress")?;
    Some(in_progress.with_file_name(base))
}

/// Brings a directory sink's folder to the state of a restored checkpoint:
/// commits the parts it lists, deletes every other in-progress part (written
/// after it, by a run that failed).
pub fn recover_directory(dir: &Path, keep: &[PathBuf]) -> Result<(), ConnectorError> {
    for part in keep.iter().filter(|p| p.parent() == Some(dir)) {
        // The checkpoint completed, so its parts were committed then; one
        // that is now in neither state was moved or deleted since (say, a
        // savepoint resumed on another machine): say so, do not fail.
        if let Err(e) = commit_part(part) {
            tracing::warn!(error = %e, "a part of the restored checkpoint is gone");
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error(dir, source)),
    };
    for entry in entries {
        let path = entry.map_err(|source| io_error(dir, source))?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".part-") && n.ends_with(".inprogress"));
        if stale {
            std::fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
        }
    }
    Ok(())
}

/// How the sinks of one run of a job behave.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkMode {
    /// Checkpoints commit directory parts (else the end of the job does).
    pub transactional: bool,
    /// The run resumes from a checkpoint: a file sink appends.
    pub resuming: bool,
}

/// Records that reached a sink, and the sum of their values read as
/// little-endian u64s where they are 8 bytes long (a cheap content check
/// for benchmarks).
#[derive(Debug, Default)]
pub struct SinkTotals {
    pub records: AtomicU64,
    pub value_sum: AtomicU64,
    /// The wrapping sum of [`record_digest`] over the records: equal for
    /// equal multisets of records, whatever their order.
    pub digest: AtomicU64,
}

/// A hash of one record (key, value and event time), summed into
/// [`SinkTotals::digest`].
pub fn record_digest(key: &[u8], value: &[u8], timestamp: i64) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    xxh3_64_with_seed(value, xxh3_64_with_seed(key, timestamp as u64))
}

enum Target {
    Stdout,
    File {
        path: PathBuf,
        writer: Mutex<BufWriter<File>>,
    },
    Directory {
        dir: PathBuf,
        /// Distinguishes this run's part names from every other run's.
        run: String,
        transactional: bool,
    },
    Discard,
    Kafka {
        spec: crate::graph::spec::KafkaSinkSpec,
        job: String,
        /// The run's transactions (exactly-once), shared by the instances.
        transactions: Option<Arc<super::kafka::SinkTransactions>>,
    },
}

/// The name a Kafka sink's transactional ids and commit witness derive
/// from: the job's for the main sink, `<job>-<sink>` for the others.
pub fn kafka_sink_job(job: &str, sink: &str) -> String {
    if sink == "main" {
        job.to_owned()
    } else {
        format!("{job}-{sink}")
    }
}

/// Makes the instances of one sink; they share its file and totals.
pub struct SinkFactory {
    target: Arc<Target>,
    format: SinkFormat,
    /// Records per second per instance at most.
    rate: Option<u64>,
    pub totals: Arc<SinkTotals>,
    /// Keep [`SinkTotals::digest`] (two hashes per record: benchmarks only).
    pub digest: bool,
    instances: AtomicU32,
    /// The newest checkpoint known complete: parts it covered are committed.
    committed: Arc<AtomicU64>,
}

impl SinkFactory {
    /// `name`: `main`, `<operator>.<side output>` or `dead-letter`; a Kafka
    /// sink other than the main one gets transactional ids of its own.
    pub fn new(
        spec: &SinkSpec,
        mode: SinkMode,
        job: &str,
        name: &str,
    ) -> Result<Self, ConnectorError> {
        let (target, format) = match spec {
            SinkSpec::Kafka(k) => {
                let job = kafka_sink_job(job, name);
                let transactions = match k.delivery {
                    crate::graph::spec::KafkaDelivery::ExactlyOnce => {
                        Some(super::kafka::SinkTransactions::open(k, &job)?)
                    }
                    crate::graph::spec::KafkaDelivery::AtLeastOnce => None,
                };
                (
                    Target::Kafka {
                        spec: k.clone(),
                        job,
                        transactions,
                    },
                    SinkFormat::default(),
                )
            }
            SinkSpec::Stdout { format } => (Target::Stdout, *format),
            SinkSpec::Directory { path, format } => {
                std::fs::create_dir_all(path).map_err(|source| io_error(path, source))?;
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                (
                    Target::Directory {
                        dir: path.clone(),
                        run: format!("{:x}", nanos & ((1u128 << 64) - 1)),
                        transactional: mode.transactional,
                    },
                    *format,
                )
            }
            SinkSpec::File { path, format } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| ConnectorError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let file = if mode.resuming {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                } else {
                    File::create(path)
                }
                .map_err(|source| ConnectorError::Io {
                    path: path.clone(),
                    source,
                })?;
                (
                    Target::File {
                        path: path.clone(),
                        writer: Mutex::new(BufWriter::with_capacity(1 << 16, file)),
                    },
                    *format,
                )
            }
            SinkSpec::Discard { .. } => (Target::Discard, SinkFormat::default()),
        };
        let rate = match spec {
            SinkSpec::Discard { rate } => rate.filter(|&r| r > 0),
            _ => None,
        };
        Ok(SinkFactory {
            target: Arc::new(target),
            format,
            rate,
            totals: Arc::new(SinkTotals::default()),
            digest: false,
            instances: AtomicU32::new(0),
            committed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The folder of a directory sink.
    pub fn directory(&self) -> Option<&Path> {
        match &*self.target {
            Target::Directory { dir, .. } => Some(dir),
            _ => None,
        }
    }

    /// Checkpoint `id` is complete and its parts are committed.
    pub fn mark_committed(&self, id: u64) {
        self.committed.fetch_max(id, Ordering::Relaxed);
    }

    /// A new instance.
    pub fn instance(&self) -> Result<Box<dyn Sink>, ConnectorError> {
        let number = self.instances.fetch_add(1, Ordering::Relaxed);
        if let Target::Kafka {
            spec,
            job,
            transactions,
        } = &*self.target
        {
            return Ok(Box::new(super::kafka::KafkaSink::open(
                spec,
                job,
                transactions.clone(),
                self.totals.clone(),
            )?));
        }
        Ok(Box::new(SinkInstance {
            target: self.target.clone(),
            format: self.format,
            totals: self.totals.clone(),
            digest: self.digest,
            lines: Vec::new(),
            number,
            part: None,
            parts_started: 0,
            pending: Vec::new(),
            committed: self.committed.clone(),
            pace: self.rate.map(|r| (r, std::time::Instant::now(), 0)),
        }))
    }
}

struct SinkInstance {
    target: Arc<Target>,
    format: SinkFormat,
    totals: Arc<SinkTotals>,
    digest: bool,
    lines: Vec<u8>,
    /// Directory sinks: this instance's number among the sink's instances.
    number: u32,
    /// The open in-progress part.
    part: Option<(PathBuf, BufWriter<File>)>,
    parts_started: u64,
    /// Pre-committed parts and the checkpoint that pre-committed them.
    pending: Vec<(u64, PathBuf)>,
    committed: Arc<AtomicU64>,
    /// (records per second, since, records taken): a deliberately slow sink.
    pace: Option<(u64, std::time::Instant, u64)>,
}

impl SinkInstance {
    fn write_part(&mut self) -> Result<(), ConnectorError> {
        let Target::Directory { dir, run, .. } = &*self.target else {
            unreachable!("only directory sinks have parts")
        };
        if self.part.is_none() {
            let path = dir.join(format!(
                ".part-{run}-{:03}-{:05}.jsonl.inprogress",
                self.number, self.parts_started
            ));
            self.parts_started += 1;
            let file = File::create(&path).map_err(|source| io_error(&path, source))?;
            self.part = Some((path, BufWriter::with_capacity(1 << 16, file)));
        }
        let (path, writer) = self.part.as_mut().expect("opened above");
        writer
            .write_all(&self.lines)
            .map_err(|source| io_error(path, source))
    }

    /// Closes the open part, durably; returns its path.
    fn close_part(&mut self) -> Result<Option<PathBuf>, ConnectorError> {
        let Some((path, writer)) = self.part.take() else {
            return Ok(None);
        };
        let file = writer
            .into_inner()
            .map_err(|e| io_error(&path, e.into_error()))?;
        file.sync_all().map_err(|source| io_error(&path, source))?;
        Ok(Some(path))
    }
}

impl Sink for SinkInstance {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (mut sum, mut digest) = (0u64, 0u64);
        for r in batch.iter() {
            if let Ok(v) = <[u8; 8]>::try_from(r.value) {
                sum = sum.wrapping_add(u64::from_le_bytes(v));
            }
        }
        if self.digest {
            for r in batch.iter() {
                digest = digest.wrapping_add(record_digest(r.key, r.value, r.timestamp));
            }
        }
        self.totals
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.totals.value_sum.fetch_add(sum, Ordering::Relaxed);
        self.totals.digest.fetch_add(digest, Ordering::Relaxed);
        if let Some((rate, since, taken)) = &mut self.pace {
            *taken += batch.len() as u64;
            let due = std::time::Duration::from_secs_f64(*taken as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(since.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if matches!(*self.target, Target::Discard) {
            return Ok(());
        }
        self.lines.clear();
        for r in batch.iter() {
            self.lines.extend_from_slice(b"{\"key\":");
            render(&mut self.lines, r.key, self.format.key);
            self.lines.extend_from_slice(b",\"value\":");
            render(&mut self.lines, r.value, self.format.value);
            self.lines.extend_from_slice(b",\"timestamp\":");
            self.lines
                .extend_from_slice(r.timestamp.to_string().as_bytes());
            self.lines.extend_from_slice(b"}\n");
        }
        match &*self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.lines)
                    .map_err(|source| io_error(Path::new("<stdout>"), source))
            }
            Target::File { path, writer } => writer
                .lock()
                .expect("sink lock")
                .write_all(&self.lines)
                .map_err(|source| io_error(path, source)),
            Target::Directory { .. } => self.write_part(),
            Target::Discard | Target::Kafka { .. } => Ok(()),
        }
    }

    fn prepare_commit(&mut self, checkpoint: u64) -> Result<Vec<PathBuf>, ConnectorError> {
        match *self.target {
            Target::Directory { .. } => {
                let committed = self.committed.load(Ordering::Relaxed);
                self.pending.retain(|(id, _)| *id > committed);
                if let Some(part) = self.close_part()? {
                    self.pending.push((checkpoint, part));
                }
                Ok(self.pending.iter().map(|(_, p)| p.clone()).collect())
            }
            _ => {
                self.close()?;
                Ok(Vec::new())
            }
        }
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        if let Target::Directory { transactional, .. } = *self.target {
            // Under checkpoints, the task's final pre-commit closed the part
            // and the job's final checkpoint commits it.
            if !transactional && let Some(part) = self.close_part()? {
                commit_part(&part)?;
            }
            return Ok(());
        }
        match &*self.target {
            Target::File { path, writer } => writer
                .lock()
                .expect("sink lock")
                .flush()
                .map_err(|source| io_error(path, source)),
            Target::Stdout => std::io::stdout()
                .flush()
                .map_err(|source| io_error(Path::new("<stdout>"), source)),
            Target::Directory { .. } | Target::Discard | Target::Kafka { .. } => Ok(()),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> ConnectorError {
    ConnectorError::Io {
        path: path.to_owned(),
        source,
    }
}

fn render(out: &mut Vec<u8>, bytes: &[u8], format: BytesFormat) {
    match format {
        BytesFormat::U64 => match <[u8; 8]>::try_from(bytes) {
            Ok(b) => out.extend_from_slice(u64::from_le_bytes(b).to_string().as_bytes()),
            Err(_) => render(out, bytes, BytesFormat::Hex),
        },
        BytesFormat::Hex => {
            out.push(b'"');
            out.extend_from_slice(hex::encode(bytes).as_bytes());
            out.push(b'"');
        }
        BytesFormat::Text => {
            let embeddable = matches!(bytes.first(), Some(b'{' | b'[' | b'0'..=b'9' | b'-'))
                && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
            if embeddable {
                out.extend_from_slice(bytes);
            } else {
                let text = String::from_utf8_lossy(bytes);
                out.extend_from_slice(
                    serde_json::to_string(&text)
                        .expect("strings serialize")
                        .as_bytes(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        let mut out = Vec::new();
        render(&mut out, b"word", BytesFormat::Text);
        render(&mut out, b"3", BytesFormat::Text);
        render(&mut out, &7u64.to_le_bytes(), BytesFormat::U64);
        render(&mut out, b"\x01", BytesFormat::Hex);
        render(&mut out, br#"{"a":1}"#, BytesFormat::Text);
        assert_eq!(String::from_utf8(out).unwrap(), r#""word"37"01"{"a":1}"#);
    }
}
