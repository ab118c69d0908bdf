//! Sinks: stdout, a file, or nothing (counting only).
//!
//! Lines are JSON objects `{"key":..,"value":..,"timestamp":..}`. Keys and
//! values render by [`BytesFormat`]: text (a value that is itself JSON is
//! embedded as JSON), a little-endian u64 as a number, or hex. All instances
//! of a file sink append whole batches to one file under a lock, so lines
//! never interleave mid-line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ConnectorError;
use crate::graph::spec::{BytesFormat, SinkFormat, SinkSpec};
use crate::runtime::batch::RecordBatch;

pub trait Sink: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;
    fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Records that reached a sink, and the sum of their values read as
/// little-endian u64s where they are 8 bytes long (a cheap content check
/// for benchmarks).
#[derive(Debug, Default)]
pub struct SinkTotals {
    pub records: AtomicU64,
    pub value_sum: AtomicU64,
}

enum Target {
    Stdout,
    File {
        path: PathBuf,
        writer: Mutex<BufWriter<File>>,
    },
    Discard,
}

/// Makes the instances of one sink; they share its file and totals.
pub struct SinkFactory {
    target: Arc<Target>,
    format: SinkFormat,
    pub totals: Arc<SinkTotals>,
}

impl SinkFactory {
    pub fn new(spec: &SinkSpec) -> Result<Self, ConnectorError> {
        let (target, format) = match spec {
            SinkSpec::Stdout { format } => (Target::Stdout, *format),
            SinkSpec::File { path, format } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| ConnectorError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let file = File::create(path).map_err(|source| ConnectorError::Io {
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
            SinkSpec::Discard => (Target::Discard, SinkFormat::default()),
        };
        Ok(SinkFactory {
            target: Arc::new(target),
            format,
            totals: Arc::new(SinkTotals::default()),
        })
    }

    pub fn instance(&self) -> Box<dyn Sink> {
        Box::new(SinkInstance {
            target: self.target.clone(),
            format: self.format,
            totals: self.totals.clone(),
            lines: Vec::new(),
        })
    }
}

struct SinkInstance {
    target: Arc<Target>,
    format: SinkFormat,
    totals: Arc<SinkTotals>,
    lines: Vec<u8>,
}

impl Sink for SinkInstance {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sum = 0u64;
        for r in batch.iter() {
            if let Ok(v) = <[u8; 8]>::try_from(r.value) {
                sum = sum.wrapping_add(u64::from_le_bytes(v));
            }
        }
        self.totals
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.totals.value_sum.fetch_add(sum, Ordering::Relaxed);
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
            Target::Discard => Ok(()),
        }
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        match &*self.target {
            Target::File { path, writer } => writer
                .lock()
                .expect("sink lock")
                .flush()
                .map_err(|source| io_error(path, source)),
            Target::Stdout => std::io::stdout()
                .flush()
                .map_err(|source| io_error(Path::new("<stdout>"), source)),
            Target::Discard => Ok(()),
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
