//! Where records come from and where they go.
//!
//! A [`Source`] instance fills batches until it is exhausted; a [`Sink`]
//! instance receives every batch that reaches the end of its task's chain.
//! Sources report bad input as [`ConnectorError::BadRecord`] naming the file,
//! line and problem; nothing is skipped silently.

pub mod file;
pub mod generator;
pub mod sinks;

use std::path::PathBuf;

use crate::graph::spec::SourceSpec;
use crate::runtime::batch::RecordBatch;

pub use sinks::{Sink, SinkFactory, SinkTotals};

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
}

/// The source instance `instance` of `parallelism`.
pub fn build_source(
    spec: &SourceSpec,
    instance: u32,
    parallelism: u32,
) -> Result<Box<dyn Source>, ConnectorError> {
    Ok(match spec {
        SourceSpec::Generator(g) => Box::new(generator::Generator::new(
            g.events,
            g.keys,
            g.events_per_ms,
            g.format,
            instance,
            parallelism,
        )),
        SourceSpec::File(f) => Box::new(file::FileSource::open(
            &f.path,
            f.format,
            f.key_field.clone(),
            f.timestamp_field.clone(),
        )?),
        SourceSpec::Embedded(_) => return Err(ConnectorError::NoEmbeddedSource),
    })
}
