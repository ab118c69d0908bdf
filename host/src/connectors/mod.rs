//! Where records come from and where they go.
//!
//! A [`Source`] instance fills batches until it is exhausted; a [`Sink`]
//! instance receives every batch that reaches the end of its task's chain.
//! Sources report bad input as [`ConnectorError::BadRecord`] naming the file,
//! line and problem; nothing is skipped silently. When the job's `on_error`
//! sets poison records aside, a source told so ([`Source::reject_bad_records`])
//! hands such records over instead, with the problem, and goes on.
//!
//! A source is made of *splits* (a generator's interleaved sequences, a
//! file, later a Kafka partition), the unit of position in checkpoints. The
//! number of splits is fixed when a job first starts; a job resumed at
//! another parallelism deals the same splits out anew (split `s` to instance
//! `s % parallelism`), each from its saved position.

pub mod file;
pub mod generator;
pub mod kafka;
pub mod nexmark;
pub mod sinks;

use std::path::PathBuf;

use crate::graph::spec::SourceSpec;
use crate::runtime::batch::RecordBatch;
use crate::runtime::operator::RejectedRecord;
use crate::runtime::router::Scatter;

pub use sinks::{Sink, SinkFactory, SinkMode, SinkTotals, commit_part, recover_directory};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {problem}")]
    BadRecord {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    #[error("the spec's source is `embedded`, but the program running the job supplied none")]
    NoEmbeddedSource,
    #[error("the source cannot resume: {0}")]
    Resume(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

/// Where a split is: enough to continue reading it exactly after the last
/// record taken into a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitPosition {
    pub split: u32,
    /// The split's own notion of offset (a record index, a byte offset, a
    /// Kafka offset).
    pub offset: u64,
    /// Records (lines) taken so far, where the split counts them.
    #[serde(default)]
    pub line: u64,
    /// The highest event time the split has returned, where the source
    /// tracks event time per split.
    #[serde(default)]
    pub max_timestamp: Option<i64>,
}

/// Which splits one source instance reads.
#[derive(Clone, Debug)]
pub struct SourceAssignment {
    pub instance: u32,
    pub parallelism: u32,
    /// `None` on a fresh start.
    pub restored: Option<RestoredSplits>,
}

/// The splits dealt to an instance of a resumed source.
#[derive(Clone, Debug)]
pub struct RestoredSplits {
    /// Splits of the whole source (fixed when the job first started).
    pub split_count: u32,
    /// This instance's splits (possibly none).
    pub positions: Vec<SplitPosition>,
}

impl SourceAssignment {
    pub fn fresh(instance: u32, parallelism: u32) -> Self {
        SourceAssignment {
            instance,
            parallelism,
            restored: None,
        }
    }
}

/// Whether a source has more to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    More,
    End,
}

pub trait Source: Send {
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError>;

    /// Like [`Source::poll`], with each record handed to `out` as it is
    /// made: a source task with no operator of its own then writes it
    /// straight into the batch of the task that reads it, instead of into a
    /// batch of its own first. `None`: not supported (the task polls
    /// instead, and divides the batch).
    fn poll_scattered(
        &mut self,
        out: &mut Scatter<'_>,
        max: usize,
    ) -> Option<Result<Poll, ConnectorError>> {
        let _ = (out, max);
        None
    }

    /// The position of each split this instance reads, after the last record
    /// returned by `poll`; `None` when the source cannot be checkpointed.
    fn positions(&self) -> Option<Vec<SplitPosition>> {
        None
    }

    /// For an instance reading several splits: the lowest, over its splits
    /// that are not exhausted, of the highest event time each has returned
    /// (`i64::MIN` while one has returned nothing). The task's watermark
    /// then follows the slowest split, so a split that lags behind another
    /// does not find its records late, also after the faster splits have
    /// ended. `None`: no per-split tracking (or no split left).
    fn slowest_split_timestamp(&self) -> Option<i64> {
        None
    }

    /// Splits of the whole source, when they are not one per instance (a
    /// Kafka topic's partitions).
    fn split_count(&self) -> Option<u32> {
        None
    }

    /// From now on, a record that cannot be decoded is handed over by
    /// [`Source::take_rejected`] instead of failing `poll`. Its position is
    /// passed either way, so it is not read again after a restore.
    fn reject_bad_records(&mut self) {}

    /// Moves the records rejected since the last call into `into`.
    fn take_rejected(&mut self, into: &mut Vec<RejectedRecord>) {
        let _ = into;
    }
}

/// Commits what a complete checkpoint lists for a sink: a directory sink's
/// part file, or a Kafka sink's transaction.
pub fn commit_pending(item: &std::path::Path, checkpoint: u64) -> Result<(), ConnectorError> {
    match item
        .to_str()
        .and_then(|s| s.strip_prefix(kafka::TRANSACTION_PREFIX))
    {
        Some(marker) => kafka::commit_transaction(marker, checkpoint),
        None => commit_part(item),
    }
}

/// The source instance of `assignment`.
pub fn build_source(
    spec: &SourceSpec,
    assignment: &SourceAssignment,
) -> Result<Box<dyn Source>, ConnectorError> {
    Ok(match spec {
        SourceSpec::Generator(g) => Box::new(
            generator::Generator::new(g.events, g.keys, g.events_per_ms, g.format, assignment)
                .with_rate(g.rate),
        ),
        SourceSpec::File(f) => Box::new(file::FileSource::open(
            &f.path,
            f.format,
            f.key_field.clone(),
            f.timestamp_field.clone(),
            assignment,
        )?),
        SourceSpec::Kafka(k) => Box::new(kafka::KafkaSource::open(k, assignment)?),
        SourceSpec::Nexmark(n) => Box::new(
            nexmark::NexmarkSource::new(n.events, n.events_per_ms, assignment).with_rate(n.rate),
        ),
        SourceSpec::Embedded(_) => return Err(ConnectorError::NoEmbeddedSource),
    })
}
