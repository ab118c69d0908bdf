//! Keyed event-time windows: the host assigns records to windows, keeps one
//! accumulator per (key, window) in the operator's state backend, fires
//! windows as the watermark passes them and routes late records; the guest
//! (a `weir_sdk::Aggregate`) only adds, merges and produces results.
//!
//! Rules, all in event-time milliseconds, `W` the operator's watermark when
//! the record's batch arrives (records of a batch all see the same `W`):
//! - Window `[start, end)` fires when `W >= end - 1`: its result is emitted
//!   keyed by the record key and stamped `end - 1`.
//! - With allowed lateness `L`, the window's state is kept until
//!   `W >= end - 1 + L` (its cleanup time). A record for a window that has
//!   fired but not been cleaned up updates it and fires it again at once.
//! - A record none of whose windows is before its cleanup time is late: it
//!   goes, unchanged, to the late side output (default name `late`) and is
//!   counted; it is never silently dropped.
//! - Tumbling: `start = floor(t / size) * size`. Sliding: every window of
//!   `size` whose start is a multiple of `slide` and that covers `t`.
//!   Session: each record opens `[t, t + gap)`; windows of a key that
//!   overlap or touch merge into their span (their accumulators folded by
//!   the guest's `merge`), and a merged window is late only if its span's
//!   cleanup time has passed, so a late-but-allowed record can bridge two
//!   sessions.
//!
//! Results therefore depend on event time and the watermark only, not on
//! arrival order or batching, as long as no record is late.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::graph::key_group;
use crate::graph::spec::{WindowKind, WindowSpec};
use crate::runtime::batch::{NO_KEY_GROUP, RecordBatch};
use crate::runtime::operator::{FailureKind, InstanceInfo, Operator, OperatorError, Output};
use crate::state::snapshot::{KeyedSnapshot, SnapshotEntry};
use crate::state::{StateId, StateKind};
use crate::time::{DueTimers, TimeDomain, TimerService};
use crate::wasm::{WasmOperator, WindowBatch};

/// Window timers fired per guest call.
const FIRE_BATCH: usize = 1024;
/// Host-kept state: the session windows of each key.
const SESSIONS_STATE: &str = "window-sessions";

#[derive(Clone, Copy, Debug)]
enum Assigner {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

/// A window `[start, end)`.
type Span = (i64, i64);

impl Assigner {
    fn from_spec(kind: WindowKind) -> Self {
        let ms = |d: std::time::Duration| d.as_millis().min(i64::MAX as u128) as i64;
        match kind {
            WindowKind::Tumbling { size } => Assigner::Tumbling { size: ms(size) },
            WindowKind::Sliding { size, slide } => Assigner::Sliding {
                size: ms(size),
                slide: ms(slide),
            },
            WindowKind::Session { gap } => Assigner::Session { gap: ms(gap) },
        }
    }

    /// The fixed windows (tumbling, sliding) covering `t`, latest first.
    fn fixed_windows(self, t: i64, out: &mut Vec<Span>) {
        out.clear();
        match self {
            Assigner::Tumbling { size } => {
                let start = t - t.rem_euclid(size);
                out.push((start, start.saturating_add(size)));
            }
            Assigner::Sliding { size, slide } => {
                let mut start = t - t.rem_euclid(slide);
                while start > t - size {
                    out.push((start, start.saturating_add(size)));
                    start -= slide;
                }
            }
            Assigner::Session { .. } => unreachable!("sessions are merged, not assigned"),
        }
    }
}

fn encode_sessions(sessions: &[Span], out: &mut Vec<u8>) {
    out.clear();
    for (s, e) in sessions {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
}

fn decode_sessions(bytes: &[u8], out: &mut Vec<Span>) -> Result<(), String> {
    out.clear();
    if !bytes.len().is_multiple_of(16) {
        return Err(format!("session list of {} bytes", bytes.len()));
    }
    for pair in bytes.chunks_exact(16) {
        let s = i64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
        let e = i64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
        out.push((s, e));
    }
    Ok(())
}

/// A keyed window operator around a Wasm aggregate.
pub struct WindowOperator {
    inner: WasmOperator,
    info: InstanceInfo,
    assigner: Assigner,
    lateness: i64,
    acc_state: StateId,
    sessions_state: StateId,
    timers: TimerService,
    due: DueTimers,
    watermark: i64,
    /// The guest's side outputs, then the late output.
    side_outputs: Vec<String>,
    late_records: Arc<AtomicU64>,
    batch: WindowBatch,
    purge: Vec<(Box<[u8]>, Span)>,
    windows: Vec<Span>,
    sessions: Vec<Span>,
    scratch: Vec<u8>,
}

impl WindowOperator {
    pub fn new(
        mut inner: WasmOperator,
        info: InstanceInfo,
        spec: &WindowSpec,
        late_records: Arc<AtomicU64>,
    ) -> Result<Self, OperatorError> {
        let fail = |m: String| OperatorError::new(&info, FailureKind::Init(m));
        let declared = inner.value_state_names();
        if declared != [weir_abi::WINDOW_ACC_STATE] {
            return Err(fail(
                "the job spec gives this operator a window, but its module is not a window \
                 aggregate (export it with weir_sdk::export_aggregate!)"
                    .into(),
            ));
        }
        let backend = inner.backend_mut();
        let acc_state = backend
            .register(weir_abi::WINDOW_ACC_STATE, StateKind::Value)
            .map_err(|e| OperatorError::new(&info, e))?;
        let sessions_state = backend
            .register(SESSIONS_STATE, StateKind::Value)
            .map_err(|e| OperatorError::new(&info, e))?;
        let mut side_outputs = inner.side_outputs().to_vec();
        if side_outputs.contains(&spec.late_output) {
            return Err(fail(format!(
                "the module declares a side output `{}`, the window's late output; \
                 choose another `late_output`",
                spec.late_output
            )));
        }
        side_outputs.push(spec.late_output.clone());
        Ok(WindowOperator {
            inner,
            info,
            assigner: Assigner::from_spec(spec.kind),
            lateness: spec.allowed_lateness.as_millis().min(i64::MAX as u128) as i64,
            acc_state,
            sessions_state,
            timers: TimerService::default(),
            due: DueTimers::default(),
            watermark: i64::MIN,
            side_outputs,
            late_records,
            batch: WindowBatch::default(),
            purge: Vec::new(),
            windows: Vec::new(),
            sessions: Vec::new(),
            scratch: Vec::new(),
        })
    }

    fn cleanup_time(&self, (_, end): Span) -> i64 {
        end.saturating_sub(1).saturating_add(self.lateness)
    }

    /// Leaves the (key, window) slot key, which timers name, in `scratch`.
    fn timer_key(&mut self, key: &[u8], window: Span) {
        self.scratch.clear();
        weir_abi::window_slot_key(&mut self.scratch, key, window.0, window.1);
    }

    /// Fires the window now if the watermark has passed its end (a late but
    /// allowed update), else schedules its firing; schedules its cleanup.
    fn schedule(&mut self, key: &[u8], window: Span, group: u32) {
        let fire_at = window.1.saturating_sub(1);
        self.timer_key(key, window);
        if fire_at <= self.watermark {
            self.batch.fire(key, window, group);
        } else {
            self.timers
                .register(TimeDomain::EventTime, fire_at, &self.scratch);
        }
        if self.lateness > 0 {
            let cleanup = self.cleanup_time(window);
            self.timers
                .register(TimeDomain::EventTime, cleanup, &self.scratch);
        }
    }

    fn unschedule(&mut self, key: &[u8], window: Span) {
        self.timer_key(key, window);
        self.timers.delete(
            TimeDomain::EventTime,
            window.1.saturating_sub(1),
            &self.scratch,
        );
        let cleanup = self.cleanup_time(window);
        self.timers
            .delete(TimeDomain::EventTime, cleanup, &self.scratch);
    }

    fn load_sessions(&mut self, key: &[u8], group: u32) -> Result<(), OperatorError> {
        self.scratch.clear();
        let backend = self.inner.backend_mut();
        backend
            .value_get_into(self.sessions_state, group, key, &mut self.scratch)
            .map_err(|e| OperatorError::new(&self.info, e))?;
        decode_sessions(&self.scratch, &mut self.sessions)
            .map_err(|m| OperatorError::new(&self.info, FailureKind::Init(m)))
    }

    fn store_sessions(&mut self, key: &[u8], group: u32) -> Result<(), OperatorError> {
        encode_sessions(&self.sessions, &mut self.scratch);
        let backend = self.inner.backend_mut();
        let r = if self.sessions.is_empty() {
            backend.value_remove(self.sessions_state, group, key)
        } else {
            backend.value_put(self.sessions_state, group, key, &self.scratch)
        };
        r.map_err(|e| OperatorError::new(&self.info, e))
    }

    /// Adds one record to its windows; `false` when it is late for all of them.
    fn assign(
        &mut self,
        key: &[u8],
        value: &[u8],
        t: i64,
        group: u32,
    ) -> Result<bool, OperatorError> {
        match self.assigner {
            Assigner::Session { gap } => {
                self.load_sessions(key, group)?;
                let proto = (t, t.saturating_add(gap));
                let mut merged = proto;
                for &(s, e) in &self.sessions {
                    if s <= proto.1 && e >= proto.0 {
                        merged = (merged.0.min(s), merged.1.max(e));
                    }
                }
                if self.cleanup_time(merged) <= self.watermark {
                    return Ok(false);
                }
                // Sessions inside the merged span fold into it (merging is
                // transitive through the proto window).
                let mut absorbed = Vec::new();
                self.sessions.retain(|&(s, e)| {
                    let inside = s >= merged.0 && e <= merged.1;
                    if inside {
                        absorbed.push((s, e));
                    }
                    !inside
                });
                for old in absorbed {
                    if old != merged {
                        self.unschedule(key, old);
                        self.batch.merge(key, merged, old, group);
                    }
                }
                self.sessions.push(merged);
                self.sessions.sort_unstable();
                self.store_sessions(key, group)?;
                self.batch.add(key, merged, group, t, value);
                self.schedule(key, merged, group);
                Ok(true)
            }
            fixed => {
                let mut windows = std::mem::take(&mut self.windows);
                fixed.fixed_windows(t, &mut windows);
                let mut accepted = false;
                for &w in &windows {
                    if self.cleanup_time(w) <= self.watermark {
                        continue;
                    }
                    accepted = true;
                    self.batch.add(key, w, group, t, value);
                    self.schedule(key, w, group);
                }
                self.windows = windows;
                Ok(accepted)
            }
        }
    }

    fn fail_state(&self, e: crate::state::StateError) -> OperatorError {
        OperatorError::new(&self.info, e)
    }

    /// Removes the state of windows whose cleanup time has passed.
    fn run_purges(&mut self) -> Result<(), OperatorError> {
        let purge = std::mem::take(&mut self.purge);
        for (slot_key, window) in &purge {
            let (key, _, _) = weir_abi::split_window_slot_key(slot_key).expect("built by us");
            let group = key_group(key, self.info.max_parallelism);
            self.inner
                .backend_mut()
                .value_remove(self.acc_state, group, slot_key)
                .map_err(|e| self.fail_state(e))?;
            if let Assigner::Session { .. } = self.assigner {
                self.load_sessions(key, group)?;
                self.sessions.retain(|w| w != window);
                self.store_sessions(key, group)?;
            }
        }
        self.purge = purge;
        self.purge.clear();
        Ok(())
    }
}

impl Operator for WindowOperator {
    fn side_outputs(&self) -> &[String] {
        &self.side_outputs
    }

    fn process(&mut self, input: &RecordBatch, out: &mut Output) -> Result<(), OperatorError> {
        self.batch.clear();
        let late_index = self.side_outputs.len() - 1;
        let mut late = 0u64;
        for i in 0..input.len() {
            let r = input.get(i);
            let group = if r.key_group == NO_KEY_GROUP {
                key_group(r.key, self.info.max_parallelism)
            } else {
                r.key_group
            };
            if !self.assign(r.key, r.value, r.timestamp, group)? {
                out.side[late_index].push(r.key, r.value, r.timestamp);
                late += 1;
            }
        }
        if late > 0 {
            self.late_records.fetch_add(late, Ordering::Relaxed);
            crate::metrics::metrics()
                .late_records
                .with_label_values(&[self.info.job.as_str()])
                .inc_by(late);
        }
        let batch = std::mem::take(&mut self.batch);
        let r = self.inner.run_window(&batch, out);
        self.batch = batch;
        r
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<(), OperatorError> {
        self.watermark = watermark;
        self.inner.set_watermark(watermark);
        loop {
            self.timers
                .pop_due(TimeDomain::EventTime, watermark, FIRE_BATCH, &mut self.due);
            if self.due.is_empty() {
                return Ok(());
            }
            self.batch.clear();
            for (time, slot_key) in self.due.iter() {
                let (key, start, end) =
                    weir_abi::split_window_slot_key(slot_key).expect("built by us");
                let window = (start, end);
                let group = key_group(key, self.info.max_parallelism);
                let fire_at = end.saturating_sub(1);
                let cleanup = time == self.cleanup_time(window);
                let fixed = !matches!(self.assigner, Assigner::Session { .. });
                if time == fire_at && cleanup && fixed {
                    self.batch.fire_and_drop(key, window, group);
                    continue;
                }
                if time == fire_at {
                    self.batch.fire(key, window, group);
                }
                if cleanup {
                    self.purge.push((slot_key.into(), window));
                }
            }
            let batch = std::mem::take(&mut self.batch);
            let r = self.inner.run_window(&batch, out);
            self.batch = batch;
            r?;
            self.run_purges()?;
        }
    }

    fn snapshot(&mut self, out: &mut KeyedSnapshot) -> Result<(), OperatorError> {
        self.inner.snapshot(out)?;
        for (domain, time, slot_key) in self.timers.iter() {
            let (key, _, _) = weir_abi::split_window_slot_key(slot_key).expect("built by us");
            let group = key_group(key, self.info.max_parallelism);
            out.push(
                group,
                SnapshotEntry::Timer {
                    domain,
                    time,
                    key: slot_key,
                },
            )
            .map_err(|e| OperatorError::new(&self.info, e))?;
        }
        Ok(())
    }

    fn swap_module(
        &mut self,
        module: &crate::wasm::WasmModule,
        config: &[u8],
    ) -> Result<(), OperatorError> {
        self.inner.replace_module(module, config)?;
        if self.inner.value_state_names() != [weir_abi::WINDOW_ACC_STATE] {
            return Err(OperatorError::new(
                &self.info,
                FailureKind::Init("the new version is not a window aggregate".into()),
            ));
        }
        Ok(())
    }

    fn restore(&mut self, key_group: u32, entry: SnapshotEntry<'_>) -> Result<(), OperatorError> {
        match entry {
            SnapshotEntry::Timer { domain, time, key } => {
                if weir_abi::split_window_slot_key(key).is_none() {
                    return Err(OperatorError::new(
                        &self.info,
                        FailureKind::Restore(
                            "a window timer's key is not a window slot key".into(),
                        ),
                    ));
                }
                self.timers.register(domain, time, key);
                Ok(())
            }
            state => self.inner.restore(key_group, state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_assignment() {
        let mut w = Vec::new();
        Assigner::Tumbling { size: 10 }.fixed_windows(25, &mut w);
        assert_eq!(w, vec![(20, 30)]);
        Assigner::Tumbling { size: 10 }.fixed_windows(-1, &mut w);
        assert_eq!(w, vec![(-10, 0)]);
        Assigner::Sliding { size: 10, slide: 5 }.fixed_windows(12, &mut w);
        assert_eq!(w, vec![(10, 20), (5, 15)]);
        Assigner::Sliding { size: 10, slide: 5 }.fixed_windows(10, &mut w);
        assert_eq!(w, vec![(10, 20), (5, 15)]);
    }

    #[test]
    fn session_list_round_trip_and_corruption() {
        let mut bytes = Vec::new();
        encode_sessions(&[(1, 5), (10, 20)], &mut bytes);
        let mut back = Vec::new();
        decode_sessions(&bytes, &mut back).unwrap();
        assert_eq!(back, vec![(1, 5), (10, 20)]);
        assert!(decode_sessions(&bytes[..5], &mut back).is_err());
    }
}
