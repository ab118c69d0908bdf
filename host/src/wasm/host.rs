//! The host side of the guest contract's imports, and the per-instance data
//! a [`wasmtime::Store`] carries.
//!
//! Every keyed import names a slot of the batch being processed; the slot
//! table holds each slot's key and key group, so a guest can reach only the
//! keys of its current batch, which all belong to its task. A slot or state id
//! out of range traps with a message that names it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder, format_err};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::weir::operator::{log, output, state, timers, types};
use crate::runtime::batch::RecordBatch;
use crate::runtime::operator::InstanceInfo;
use crate::state::{MapEntries, StateBackend, StateError, StateId};
use crate::time::{TimeDomain, TimerService, now_millis};

/// Lines of guest stderr kept to explain a trap.
const RECENT_LINES: usize = 16;
/// A guest line longer than this is cut into several log lines.
const MAX_LINE: usize = 4096;

/// Guest stdout or stderr: each complete line becomes a host log event tagged
/// with job, operator and instance.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<GuestOutputInner>>,
}

struct GuestOutputInner {
    stream: &'static str,
    info: InstanceInfo,
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl GuestOutput {
    pub fn new(stream: &'static str, info: InstanceInfo) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(GuestOutputInner {
                stream,
                info,
                partial: Vec::new(),
                recent: VecDeque::new(),
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().expect("guest output lock");
        inner.partial.extend_from_slice(bytes);
        while let Some(end) = inner.partial.iter().position(|&b| b == b'\n').or((inner
            .partial
            .len()
            >= MAX_LINE)
            .then_some(MAX_LINE))
        {
            let cut = end.min(inner.partial.len());
            let line: Vec<u8> = inner.partial.drain(..cut).collect();
            if inner.partial.first() == Some(&b'\n') {
                inner.partial.remove(0);
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            tracing::info!(
                target: "weir::guest",
                job = %inner.info.job,
                operator = %inner.info.operator,
                instance = inner.info.instance,
                stream = inner.stream,
                "{line}"
            );
            if inner.recent.len() == RECENT_LINES {
                inner.recent.pop_front();
            }
            inner.recent.push_back(line);
        }
    }

    /// The last lines written, oldest first, including an unfinished one.
    pub fn recent(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("guest output lock");
        let mut lines: Vec<String> = inner.recent.iter().cloned().collect();
        if !inner.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&inner.partial).into_owned());
        }
        lines
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

/// A distinct key of the current batch.
#[derive(Clone, Copy, Debug)]
pub struct SlotKey {
    pub start: u32,
    pub len: u32,
    pub key_group: u32,
}

/// The bytes of `slot`'s key in a slot buffer. A free function rather than a
/// method so callers can borrow the buffer while mutating other fields.
#[inline]
pub fn slot_key_in(slot_bytes: &[u8], slot: SlotKey) -> &[u8] {
    &slot_bytes[slot.start as usize..(slot.start + slot.len) as usize]
}

/// What the imports reach during a call.
pub struct CallState {
    pub info: InstanceInfo,
    pub backend: Box<dyn StateBackend>,
    pub timers: TimerService,
    pub slot_bytes: Vec<u8>,
    pub slots: Vec<SlotKey>,
    pub map_ids: Vec<StateId>,
    pub list_ids: Vec<StateId>,
    pub side_outputs: Vec<String>,
    /// Records emitted through the `output` imports during the current call.
    pub direct_main: RecordBatch,
    pub direct_side: Vec<RecordBatch>,
    pub watermark: i64,
    /// While failures are isolated: what the current call changed through
    /// the imports, so a failed call can be taken back as a whole.
    pub journal: Option<Vec<Undo>>,
}

/// The state a guest call found before it changed it through an import.
#[derive(Debug)]
pub enum Undo {
    MapEntry {
        id: StateId,
        key_group: u32,
        key: Vec<u8>,
        map_key: Vec<u8>,
        old: Option<Vec<u8>>,
    },
    Map {
        id: StateId,
        key_group: u32,
        key: Vec<u8>,
        entries: MapEntries,
    },
    List {
        id: StateId,
        key_group: u32,
        key: Vec<u8>,
        items: Vec<Vec<u8>>,
    },
    TimerAdded {
        domain: TimeDomain,
        time: i64,
        key: Vec<u8>,
    },
    TimerRemoved {
        domain: TimeDomain,
        time: i64,
        key: Vec<u8>,
    },
}

/// Which part of a key's state an import is about to change.
enum Before<'a> {
    MapEntry(&'a [u8]),
    Map,
    List,
}

impl CallState {
    pub fn begin_batch(&mut self) {
        self.slot_bytes.clear();
        self.slots.clear();
        if let Some(journal) = &mut self.journal {
            journal.clear();
        }
    }

    /// Takes back what the failed call changed through the imports (its
    /// direct emits and, when journaled, its map, list and timer changes),
    /// newest change first.
    pub fn roll_back(&mut self) -> Result<(), StateError> {
        self.direct_main.clear();
        for side in &mut self.direct_side {
            side.clear();
        }
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        let b = self.backend.as_mut();
        for undo in std::mem::take(journal).into_iter().rev() {
            match undo {
                Undo::MapEntry {
                    id,
                    key_group,
                    key,
                    map_key,
                    old,
                } => match old {
                    Some(v) => b.map_put(id, key_group, &key, &map_key, &v)?,
                    None => b.map_remove(id, key_group, &key, &map_key)?,
                },
                Undo::Map {
                    id,
                    key_group,
                    key,
                    entries,
                } => {
                    b.map_clear(id, key_group, &key)?;
                    for (k, v) in entries {
                        b.map_put(id, key_group, &key, &k, &v)?;
                    }
                }
                Undo::List {
                    id,
                    key_group,
                    key,
                    items,
                } => {
                    b.list_clear(id, key_group, &key)?;
                    for item in items {
                        b.list_append(id, key_group, &key, &item)?;
                    }
                }
                Undo::TimerAdded { domain, time, key } => {
                    self.timers.delete(domain, time, &key);
                }
                Undo::TimerRemoved { domain, time, key } => {
                    self.timers.register(domain, time, &key);
                }
            }
        }
        Ok(())
    }

    /// Journals the state an import is about to change, when journaling.
    fn remember(
        &mut self,
        slot: u32,
        kind: &str,
        state: u32,
        before: Before<'_>,
    ) -> wasmtime::Result<()> {
        if self.journal.is_none() {
            return Ok(());
        }
        let undo = self.with_key(slot, kind, state, |b, id, key_group, key| {
            Ok(match before {
                Before::MapEntry(map_key) => Undo::MapEntry {
                    id,
                    key_group,
                    key: key.to_vec(),
                    map_key: map_key.to_vec(),
                    old: b.map_get(id, key_group, key, map_key)?,
                },
                Before::Map => Undo::Map {
                    id,
                    key_group,
                    key: key.to_vec(),
                    entries: b.map_entries(id, key_group, key)?,
                },
                Before::List => Undo::List {
                    id,
                    key_group,
                    key: key.to_vec(),
                    items: b.list_get(id, key_group, key)?,
                },
            })
        })?;
        if let Some(journal) = &mut self.journal {
            journal.push(undo);
        }
        Ok(())
    }

    pub fn push_slot(&mut self, key: &[u8], key_group: u32) -> u32 {
        self.slots.push(SlotKey {
            start: self.slot_bytes.len() as u32,
            len: key.len() as u32,
            key_group,
        });
        self.slot_bytes.extend_from_slice(key);
        (self.slots.len() - 1) as u32
    }

    #[inline]
    pub fn slot_key(&self, slot: SlotKey) -> &[u8] {
        slot_key_in(&self.slot_bytes, slot)
    }

    fn slot(&self, slot: u32) -> wasmtime::Result<SlotKey> {
        self.slots.get(slot as usize).copied().ok_or_else(|| {
            format_err!(
                "state or timer access for slot {slot}, but the current batch has {} keys: \
                 a guest may only touch the keys of the batch it is processing",
                self.slots.len()
            )
        })
    }

    fn state_id(ids: &[StateId], kind: &str, state: u32) -> wasmtime::Result<StateId> {
        ids.get(state as usize).copied().ok_or_else(|| {
            format_err!(
                "{kind} state {state} was not declared in init ({} declared)",
                ids.len()
            )
        })
    }

    /// Runs a backend call for `slot`'s key with the id of declared state `state`.
    fn with_key<T>(
        &mut self,
        slot: u32,
        kind: &str,
        state: u32,
        f: impl FnOnce(
            &mut dyn StateBackend,
            StateId,
            u32,
            &[u8],
        ) -> Result<T, crate::state::StateError>,
    ) -> wasmtime::Result<T> {
        let s = self.slot(slot)?;
        let ids = if kind == "map" {
            &self.map_ids
        } else {
            &self.list_ids
        };
        let id = Self::state_id(ids, kind, state)?;
        let key = slot_key_in(&self.slot_bytes, s);
        f(self.backend.as_mut(), id, s.key_group, key).map_err(wasmtime::Error::from)
    }
}

/// The store's limits, counting the linear memory they let the guest have
/// (for the memory metric).
pub struct TrackedLimits {
    inner: StoreLimits,
    pub memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for TrackedLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The data of one guest instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: TrackedLimits,
    pub call: CallState,
    pub stderr: GuestOutput,
}

impl HostState {
    pub fn new(
        info: InstanceInfo,
        backend: Box<dyn StateBackend>,
        memory_limit: usize,
        max_table_elements: usize,
    ) -> Self {
        let stdout = GuestOutput::new("stdout", info.clone());
        let stderr = GuestOutput::new("stderr", info.clone());
        // Nothing is granted: no preopened folders, no network, no
        // environment, no arguments; only clocks, randomness and the two
        // output streams, which go to the host log.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .table_elements(max_table_elements)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits: TrackedLimits {
                inner: limits,
                memory_bytes: 0,
            },
            call: CallState {
                info,
                backend,
                timers: TimerService::default(),
                slot_bytes: Vec::new(),
                slots: Vec::new(),
                map_ids: Vec::new(),
                list_ids: Vec::new(),
                side_outputs: Vec::new(),
                direct_main: RecordBatch::new(),
                direct_side: Vec::new(),
                watermark: i64::MIN,
                journal: None,
            },
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn map_get(
        &mut self,
        slot: u32,
        state: u32,
        map_key: Vec<u8>,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        self.call.with_key(slot, "map", state, |b, id, kg, key| {
            b.map_get(id, kg, key, &map_key)
        })
    }

    fn map_put(
        &mut self,
        slot: u32,
        state: u32,
        map_key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<()> {
        self.call
            .remember(slot, "map", state, Before::MapEntry(&map_key))?;
        self.call.with_key(slot, "map", state, |b, id, kg, key| {
            b.map_put(id, kg, key, &map_key, &value)
        })
    }

    fn map_remove(&mut self, slot: u32, state: u32, map_key: Vec<u8>) -> wasmtime::Result<()> {
        self.call
            .remember(slot, "map", state, Before::MapEntry(&map_key))?;
        self.call.with_key(slot, "map", state, |b, id, kg, key| {
            b.map_remove(id, kg, key, &map_key)
        })
    }

    fn map_entries(&mut self, slot: u32, state: u32) -> wasmtime::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.call.with_key(slot, "map", state, |b, id, kg, key| {
            b.map_entries(id, kg, key)
        })
    }

    fn map_clear(&mut self, slot: u32, state: u32) -> wasmtime::Result<()> {
        self.call.remember(slot, "map", state, Before::Map)?;
        self.call.with_key(slot, "map", state, |b, id, kg, key| {
            b.map_clear(id, kg, key)
        })
    }

    fn list_get(&mut self, slot: u32, state: u32) -> wasmtime::Result<Vec<Vec<u8>>> {
        self.call.with_key(slot, "list", state, |b, id, kg, key| {
            b.list_get(id, kg, key)
        })
    }

    fn list_append(&mut self, slot: u32, state: u32, value: Vec<u8>) -> wasmtime::Result<()> {
        self.call.remember(slot, "list", state, Before::List)?;
        self.call.with_key(slot, "list", state, |b, id, kg, key| {
            b.list_append(id, kg, key, &value)
        })
    }

    fn list_clear(&mut self, slot: u32, state: u32) -> wasmtime::Result<()> {
        self.call.remember(slot, "list", state, Before::List)?;
        self.call.with_key(slot, "list", state, |b, id, kg, key| {
            b.list_clear(id, kg, key)
        })
    }
}

fn domain(d: types::TimeDomain) -> TimeDomain {
    match d {
        types::TimeDomain::EventTime => TimeDomain::EventTime,
        types::TimeDomain::ProcessingTime => TimeDomain::ProcessingTime,
    }
}

impl timers::Host for HostState {
    fn register_timer(
        &mut self,
        slot: u32,
        time: i64,
        d: types::TimeDomain,
    ) -> wasmtime::Result<()> {
        let s = self.call.slot(slot)?;
        let key = slot_key_in(&self.call.slot_bytes, s);
        let domain = domain(d);
        if self.call.timers.register(domain, time, key)
            && let Some(journal) = &mut self.call.journal
        {
            journal.push(Undo::TimerAdded {
                domain,
                time,
                key: key.to_vec(),
            });
        }
        Ok(())
    }

    fn delete_timer(&mut self, slot: u32, time: i64, d: types::TimeDomain) -> wasmtime::Result<()> {
        let s = self.call.slot(slot)?;
        let key = slot_key_in(&self.call.slot_bytes, s);
        let domain = domain(d);
        if self.call.timers.delete(domain, time, key)
            && let Some(journal) = &mut self.call.journal
        {
            journal.push(Undo::TimerRemoved {
                domain,
                time,
                key: key.to_vec(),
            });
        }
        Ok(())
    }

    fn current_watermark(&mut self) -> wasmtime::Result<i64> {
        Ok(self.call.watermark)
    }

    fn current_processing_time(&mut self) -> wasmtime::Result<i64> {
        Ok(now_millis())
    }
}

impl output::Host for HostState {
    fn emit(&mut self, key: Vec<u8>, value: Vec<u8>, timestamp: i64) -> wasmtime::Result<()> {
        self.call.direct_main.push(&key, &value, timestamp);
        Ok(())
    }

    fn emit_side(
        &mut self,
        name: String,
        key: Vec<u8>,
        value: Vec<u8>,
        timestamp: i64,
    ) -> wasmtime::Result<Result<(), String>> {
        match self.call.side_outputs.iter().position(|s| *s == name) {
            Some(i) => {
                self.call.direct_side[i].push(&key, &value, timestamp);
                Ok(Ok(()))
            }
            None => Ok(Err(format!(
                "side output `{name}` was not declared in init (declared: {:?})",
                self.call.side_outputs
            ))),
        }
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let i = &self.call.info;
        macro_rules! event {
            ($lvl:expr) => {
                tracing::event!(target: "weir::guest", $lvl, job = %i.job, operator = %i.operator, instance = i.instance, "{message}")
            };
        }
        match level {
            types::LogLevel::Trace => event!(tracing::Level::TRACE),
            types::LogLevel::Debug => event!(tracing::Level::DEBUG),
            types::LogLevel::Info => event!(tracing::Level::INFO),
            types::LogLevel::Warn => event!(tracing::Level::WARN),
            types::LogLevel::Error => event!(tracing::Level::ERROR),
        }
        Ok(())
    }
}
