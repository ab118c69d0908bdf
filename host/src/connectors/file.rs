//! The file source: one record per line, read once from the start.
//!
//! `format: json`: each line is a JSON object and becomes the record's value
//! unchanged; `key_field` names the field whose value is the key (strings as
//! their text, other values as their JSON), `timestamp_field` the field with
//! the event time in milliseconds. `format: lines`: the line is the value,
//! the key is empty and the event time is the line number.
//! A line that is not JSON, or lacks a named field, fails the job with the
//! file, line number and problem, or is handed over as rejected (see
//! [`Source::reject_bad_records`]).
//!
//! The file is one split; its position is the byte offset after the last
//! line read, and the line count.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{ConnectorError, Poll, Source, SourceAssignment, SplitPosition};
use crate::graph::spec::FileFormat;
use crate::runtime::batch::RecordBatch;
use crate::runtime::operator::RejectedRecord;

pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    format: FileFormat,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    line_number: u64,
    offset: u64,
    line: String,
    /// False for an instance that was dealt no split on a restore.
    has_split: bool,
    reject_bad: bool,
    rejected: Vec<RejectedRecord>,
}

impl FileSource {
    pub fn open(
        path: &Path,
        format: FileFormat,
        key_field: Option<String>,
        timestamp_field: Option<String>,
        assignment: &SourceAssignment,
    ) -> Result<Self, ConnectorError> {
        let io = |source| ConnectorError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let (has_split, offset, line_number) = match &assignment.restored {
            None => (assignment.instance == 0, 0, 0),
            Some(r) => match r.positions.iter().find(|p| p.split == 0) {
                Some(p) => (true, p.offset, p.line),
                None => (false, 0, 0),
            },
        };
        if offset > 0 {
            let len = file.metadata().map_err(io)?.len();
            if offset > len {
                return Err(ConnectorError::Resume(format!(
                    "{}: the checkpoint's position is byte {offset}, but the file has only {len} \
                     bytes (was it replaced?)",
                    path.display()
                )));
            }
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
        }
        Ok(FileSource {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, file),
            format,
            key_field,
            timestamp_field,
            line_number,
            offset,
            line: String::new(),
            has_split,
            reject_bad: false,
            rejected: Vec::new(),
        })
    }

    fn bad(&self, problem: String) -> ConnectorError {
        ConnectorError::BadRecord {
            path: self.path.clone(),
            line: self.line_number,
            problem,
        }
    }

    fn push_json(&self, text: &str, out: &mut RecordBatch) -> Result<(), ConnectorError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| self.bad(format!("not a JSON object: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| self.bad("not a JSON object".into()))?;
        let key = match &self.key_field {
            None => Vec::new(),
            Some(field) => match object.get(field) {
                Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
                Some(serde_json::Value::Null) | None => {
                    return Err(self.bad(format!("key field `{field}` is missing")));
                }
                Some(other) => other.to_string().into_bytes(),
            },
        };
        let timestamp = match &self.timestamp_field {
            None => self.line_number as i64,
            Some(field) => match object.get(field) {
                Some(v) => v.as_i64().ok_or_else(|| {
                    self.bad(format!(
                        "timestamp field `{field}` is {v}, not an integer of milliseconds"
                    ))
                })?,
                None => return Err(self.bad(format!("timestamp field `{field}` is missing"))),
            },
        };
        out.push(&key, text.as_bytes(), timestamp);
        Ok(())
    }
}

impl Source for FileSource {
    fn reject_bad_records(&mut self) {
        self.reject_bad = true;
    }

    fn take_rejected(&mut self, into: &mut Vec<RejectedRecord>) {
        into.append(&mut self.rejected);
    }

    fn positions(&self) -> Option<Vec<SplitPosition>> {
        Some(if self.has_split {
            vec![SplitPosition {
                split: 0,
                offset: self.offset,
                line: self.line_number,
                max_timestamp: None,
            }]
        } else {
            Vec::new()
        })
    }

    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        if !self.has_split {
            return Ok(Poll::End);
        }
        for _ in 0..max {
            self.line.clear();
            let n = self
                .reader
                .read_line(&mut self.line)
                .map_err(|source| ConnectorError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(Poll::End);
            }
            self.offset += n as u64;
            self.line_number += 1;
            let text = self.line.trim_end_matches(['\n', '\r']);
            match self.format {
                FileFormat::Lines => out.push(b"", text.as_bytes(), self.line_number as i64),
                FileFormat::Json => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    match self.push_json(text, out) {
                        Ok(()) => {}
                        Err(e) if self.reject_bad => self.rejected.push(RejectedRecord {
                            key: Vec::new(),
                            value: text.as_bytes().to_vec(),
                            timestamp: self.line_number as i64,
                            error: e.to_string(),
                        }),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(Poll::More)
    }
}
