//! Recent log lines of each job, for `GET /v1/jobs/{name}/logs` and the
//! dashboard: what its guests wrote (the `log` import, and their stdout and
//! stderr, which reach `tracing` with target `weir::guest`), and the host's
//! warnings and errors about it (a failed task, a restart, an aborted
//! checkpoint: events at `WARN` or above that carry a `job` field).
//!
//! Filled by [`layer`], a `tracing` layer that `weir serve` installs beside
//! its log output with a filter of its own, so that a quiet `WEIR_LOG` does
//! not hide guest lines from the page and a verbose one does not flood it.
//!
//! Invariant: bounded memory. A job keeps its last [`LINES_PER_JOB`] lines,
//! the oldest dropped first, each message cut to [`MAX_MESSAGE_BYTES`]; jobs
//! are keyed by name, so there are as many as the distinct job names this
//! process ran (the same bound as the metrics' `job` label). Lines live in
//! memory only: the process's log output is the durable record.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;

/// Lines kept per job.
pub const LINES_PER_JOB: usize = 200;
/// Longest message kept; longer ones are cut at a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The `tracing` target of what guests write.
pub const GUEST_TARGET: &str = "weir::guest";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Who wrote a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOrigin {
    /// An operator's code.
    Guest,
    /// The runtime, about the job.
    Host,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogLine {
    /// Unix time in milliseconds.
    pub time_ms: i64,
    pub level: LogLevel,
    pub origin: LogOrigin,
    pub operator: Option<String>,
    /// The operator's parallel instance.
    pub instance: Option<u64>,
    /// `stdout` or `stderr` for what a guest printed.
    pub stream: Option<String>,
    /// The message, followed by the event's other fields as `key=value`.
    pub message: String,
}

#[derive(Default)]
pub struct JobLogs {
    jobs: Mutex<HashMap<String, VecDeque<LogLine>>>,
}

impl JobLogs {
    pub fn push(&self, job: &str, mut line: LogLine) {
        cut(&mut line.message, MAX_MESSAGE_BYTES);
        let mut jobs = self.jobs.lock().expect("job logs lock");
        let lines = jobs.entry(job.to_owned()).or_default();
        if lines.len() == LINES_PER_JOB {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// A job's lines, oldest first.
    pub fn of(&self, job: &str) -> Vec<LogLine> {
        let jobs = self.jobs.lock().expect("job logs lock");
        jobs.get(job)
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// The process's job logs.
pub fn job_logs() -> &'static JobLogs {
    static LOGS: OnceLock<JobLogs> = OnceLock::new();
    LOGS.get_or_init(JobLogs::default)
}

/// Takes what a job's page shows: guest lines at `INFO` or above (a guest
/// logging at `DEBUG` per record must not evict everything else) and the
/// host's warnings and errors.
fn wanted(meta: &tracing::Metadata<'_>) -> bool {
    let level = *meta.level();
    meta.is_event()
        && (level <= Level::WARN || (level <= Level::INFO && meta.target() == GUEST_TARGET))
}

/// The layer that fills [`job_logs`], with its own filter.
pub fn layer<S>() -> Filtered<JobLogLayer, FilterFn, S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    JobLogLayer { logs: job_logs() }
        .with_filter(FilterFn::new(wanted as fn(&tracing::Metadata<'_>) -> bool))
}

pub struct JobLogLayer {
    logs: &'static JobLogs,
}

impl<S: Subscriber> Layer<S> for JobLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(job) = fields.job else {
            return;
        };
        let meta = event.metadata();
        let mut message = fields.message;
        if !fields.rest.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&fields.rest);
        }
        self.logs.push(
            &job,
            LogLine {
                time_ms: crate::time::now_millis(),
                level: (*meta.level()).into(),
                origin: if meta.target() == GUEST_TARGET {
                    LogOrigin::Guest
                } else {
                    LogOrigin::Host
                },
                operator: fields.operator,
                instance: fields.instance,
                stream: fields.stream,
                message,
            },
        );
    }
}

#[derive(Default)]
struct Fields {
    job: Option<String>,
    operator: Option<String>,
    instance: Option<u64>,
    stream: Option<String>,
    message: String,
    /// Every other field, `key=value` separated by spaces.
    rest: String,
}

impl Fields {
    fn text(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "job" => self.job = Some(value),
            "operator" => self.operator = Some(value),
            "stream" => self.stream = Some(value),
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value}");
            }
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "instance" {
            self.instance = Some(value);
        } else {
            self.text(field, value.to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match u64::try_from(value) {
            Ok(v) if field.name() == "instance" => self.instance = Some(v),
            _ => self.text(field, value.to_string()),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_guest_lines_and_host_errors_of_a_job_within_bounds() {
        let logs: &'static JobLogs = Box::leak(Box::default());
        let subscriber = tracing_subscriber::registry().with(
            JobLogLayer { logs }
                .with_filter(FilterFn::new(wanted as fn(&tracing::Metadata<'_>) -> bool)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "weir::guest", job = "s", operator = "count", instance = 0u32, stream = "stderr", "printed");
            for i in 0..LINES_PER_JOB + 3 {
                tracing::info!(target: "weir::guest", job = "j", operator = "count", instance = 1u32, "line {i}");
            }
            tracing::debug!(target: "weir::guest", job = "j", operator = "count", instance = 1u32, "too chatty");
            tracing::info!(job = "j", "host info is not kept");
            tracing::warn!("no job, not kept");
            tracing::error!(job = %"j", error = "guest trapped", "task failed");
            tracing::info!(target: "weir::guest", job = "k", operator = "x", instance = 0u32, "{}", "é".repeat(MAX_MESSAGE_BYTES));
        });
        let lines = logs.of("j");
        assert_eq!(lines.len(), LINES_PER_JOB);
        assert_eq!(lines[0].message, "line 4", "the oldest were dropped");
        assert_eq!(lines[0].origin, LogOrigin::Guest);
        assert_eq!(lines[0].operator.as_deref(), Some("count"));
        assert_eq!(lines[0].instance, Some(1));
        let last = lines.last().unwrap();
        assert_eq!(last.origin, LogOrigin::Host);
        assert_eq!(last.level, LogLevel::Error);
        assert_eq!(last.message, "task failed error=guest trapped");
        let printed = &logs.of("s")[0];
        assert_eq!(printed.message, "printed");
        assert_eq!(printed.stream.as_deref(), Some("stderr"));
        let long = &logs.of("k")[0].message;
        assert!(long.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8() && long.ends_with('…'));
    }
}
