//! Recent checkpoints and savepoints of each job in this process, for the
//! API and the dashboard: when each started, how long it took, how large it
//! was, and whether it completed or why it was aborted.
//!
//! The coordinator reports every transition of its state machine here
//! (triggered, complete, aborted), so an entry is `in-progress` exactly while
//! its checkpoint is pending: every run ends by abandoning what is pending.
//!
//! Invariant: bounded memory. A job keeps its last [`KEPT`] entries, the
//! oldest dropped first; jobs are keyed by name, so there are as many as the
//! distinct job names this process ran (the same bound as the metrics' `job`
//! label). Entries live in memory only: a checkpoint's durable record is its
//! manifest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use super::CheckpointId;

/// Entries kept per job.
pub const KEPT: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointStatus {
    InProgress,
    Completed,
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
    /// The savepoint of a stop-with-savepoint.
    StopSavepoint,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointRecord {
    pub id: CheckpointId,
    pub kind: SnapshotKind,
    pub status: CheckpointStatus,
    /// Unix time in milliseconds when it was triggered.
    pub started_ms: i64,
    /// From trigger to completion or abort.
    pub duration_ms: Option<u64>,
    /// Bytes of its files, once complete.
    pub size_bytes: Option<u64>,
    /// Why it was aborted.
    pub reason: Option<String>,
}

#[derive(Default)]
pub struct CheckpointHistory {
    jobs: Mutex<HashMap<String, VecDeque<CheckpointRecord>>>,
}

impl CheckpointHistory {
    pub fn started(&self, job: &str, id: CheckpointId, kind: SnapshotKind, started_ms: i64) {
        let mut jobs = self.jobs.lock().expect("checkpoint history lock");
        let entries = jobs.entry(job.to_owned()).or_default();
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(CheckpointRecord {
            id,
            kind,
            status: CheckpointStatus::InProgress,
            started_ms,
            duration_ms: None,
            size_bytes: None,
            reason: None,
        });
    }

    pub fn completed(&self, job: &str, id: CheckpointId, took: Duration, size_bytes: u64) {
        self.finish(job, id, took, |r| {
            r.status = CheckpointStatus::Completed;
            r.size_bytes = Some(size_bytes);
        });
    }

    pub fn aborted(&self, job: &str, id: CheckpointId, took: Duration, reason: &str) {
        self.finish(job, id, took, |r| {
            r.status = CheckpointStatus::Aborted;
            r.reason = Some(reason.to_owned());
        });
    }

    /// Updates the newest in-progress entry of `id`: an aborted checkpoint's
    /// id can be taken again by the run after a restart.
    fn finish(
        &self,
        job: &str,
        id: CheckpointId,
        took: Duration,
        update: impl FnOnce(&mut CheckpointRecord),
    ) {
        let mut jobs = self.jobs.lock().expect("checkpoint history lock");
        let entry = jobs.get_mut(job).and_then(|entries| {
            entries
                .iter_mut()
                .rev()
                .find(|r| r.id == id && r.status == CheckpointStatus::InProgress)
        });
        if let Some(r) = entry {
            r.duration_ms = Some(took.as_millis() as u64);
            update(r);
        }
    }

    /// A job's entries, newest first.
    pub fn of(&self, job: &str) -> Vec<CheckpointRecord> {
        let jobs = self.jobs.lock().expect("checkpoint history lock");
        jobs.get(job)
            .map(|entries| entries.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// The process's checkpoint history.
pub fn history() -> &'static CheckpointHistory {
    static HISTORY: OnceLock<CheckpointHistory> = OnceLock::new();
    HISTORY.get_or_init(CheckpointHistory::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_and_finishes_the_pending_one() {
        let h = CheckpointHistory::default();
        for id in 0..(KEPT as u64 + 5) {
            h.started("j", id, SnapshotKind::Checkpoint, id as i64);
            h.completed("j", id, Duration::from_millis(3), 10);
        }
        let entries = h.of("j");
        assert_eq!(entries.len(), KEPT);
        assert_eq!(entries[0].id, KEPT as u64 + 4, "newest first");
        assert_eq!(entries[0].status, CheckpointStatus::Completed);
        assert_eq!(entries[0].size_bytes, Some(10));

        // Aborted, then the same id again after a restart.
        h.started("k", 7, SnapshotKind::Checkpoint, 1);
        h.aborted("k", 7, Duration::from_millis(5), "a task failed");
        h.started("k", 7, SnapshotKind::Savepoint, 2);
        h.completed("k", 7, Duration::from_millis(1), 4);
        let entries = h.of("k");
        assert_eq!(entries[0].status, CheckpointStatus::Completed);
        assert_eq!(entries[0].kind, SnapshotKind::Savepoint);
        assert_eq!(entries[1].status, CheckpointStatus::Aborted);
        assert_eq!(entries[1].reason.as_deref(), Some("a task failed"));
        assert!(h.of("other").is_empty());
    }
}
