//! The file source: one record per line, read once from the start.
//!
//! `format: json`: each line is a JSON object and becomes the record's value
//! unchanged; `key_field` names the field whose value is the key (strings as
//! their text, other values as their JSON), `timestamp_field` the field with
//! the event time in milliseconds. `format: lines`: the line is the value,
//! the key is empty and the event time is the line number.
//! A line that is not JSON, or lacks a named field, fails the job with the
//! file, line number and problem.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{ConnectorError, Poll, Source};
use crate::graph::spec::FileFormat;
use crate::runtime::batch::RecordBatch;

pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    format: FileFormat,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    line_number: u64,
    line: String,
}

impl FileSource {
    pub fn open(
        path: &Path,
        format: FileFormat,
        key_field: Option<String>,
        timestamp_field: Option<String>,
    ) -> Result<Self, ConnectorError> {
        let file = File::open(path).map_err(|source| ConnectorError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(FileSource {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, file),
            format,
            key_field,
            timestamp_field,
            line_number: 0,
            line: String::new(),
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
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
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
            self.line_number += 1;
            let text = self.line.trim_end_matches(['\n', '\r']);
            match self.format {
                FileFormat::Lines => out.push(b"", text.as_bytes(), self.line_number as i64),
                FileFormat::Json => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    self.push_json(text, out)?;
                }
            }
        }
        Ok(Poll::More)
    }
}
