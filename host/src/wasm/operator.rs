//! Loading guest modules and driving one guest instance as an [`Operator`].
//!
//! Per batch: the records' distinct keys become slots (one hash probe per
//! record), each slot's declared value states are copied from the backend
//! into the input buffer, the guest is called once, and its output buffer is
//! applied: emits to the outputs, value-state updates to the backend. Nothing
//! of the guest's output is applied before the whole buffer has been checked
//! against the batch (slot and state ranges, declared side outputs), except
//! emits already copied to `out`, which the task discards with the failed batch.

use std::hash::Hasher;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Store, Trap};
use weir_abi::{BatchKind, Domain, InputWriter, OutputReader};

use super::bindings::{Operator as OperatorWorld, OperatorPre};
use super::cache::{CacheOutcome, ModuleCache, module_digest};
use super::engine::{SandboxEngine, SandboxPolicy};
use super::host::{HostState, slot_key_in};
use crate::graph::key_group;
use crate::runtime::batch::{NO_KEY_GROUP, RecordBatch};
use crate::runtime::operator::{
    FailureKind, InstanceInfo, Operator, OperatorError, Output, RejectedRecord,
};
use crate::state::memory::MemoryBackend;
use crate::state::snapshot::{KeyedSnapshot, SnapshotEntry, restore_entry};
use crate::state::{StateBackend, StateId, StateKind, ValueHandle};
use crate::time::{DueTimers, TimeDomain, now_millis};

/// Output buffers larger than this fail the batch: a guest cannot make the
/// host copy unbounded data.
const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// Timers handed to the guest per `on-timer` call.
const TIMER_BATCH: usize = 256;

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module `{name}` is {size} bytes, above the limit of {limit} bytes")]
    TooLarge {
        name: String,
        size: usize,
        limit: usize,
    },
    #[error("module `{name}` is not a valid WebAssembly component: {message}")]
    Invalid { name: String, message: String },
    #[error("module `{name}` did not compile within {limit:?}")]
    CompileTimeout { name: String, limit: Duration },
    #[error("module `{name}` does not fit the weir:operator@0.1.0 world: {message}")]
    WrongWorld { name: String, message: String },
    #[error("cannot read module `{name}`: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
}

/// The process-wide Wasm machinery.
pub struct WasmRuntime {
    sandbox: SandboxEngine,
    linker: Linker<HostState>,
    cache: Arc<ModuleCache>,
}

/// A validated, compiled module ready to instantiate.
#[derive(Clone)]
pub struct WasmModule {
    pub name: String,
    pub digest: String,
    pub cache: CacheOutcome,
    pub compile_time: Duration,
    pre: OperatorPre<HostState>,
}

impl WasmRuntime {
    /// `cache_dir: None` keeps compiled modules in memory only.
    pub fn new(policy: SandboxPolicy, cache_dir: Option<&Path>) -> anyhow::Result<Arc<Self>> {
        let sandbox = SandboxEngine::new(policy).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut linker = Linker::new(&sandbox.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        OperatorWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let cache = ModuleCache::new(&sandbox.engine, cache_dir)?;
        Ok(Arc::new(WasmRuntime {
            sandbox,
            linker,
            cache: Arc::new(cache),
        }))
    }

    pub fn policy(&self) -> &SandboxPolicy {
        &self.sandbox.policy
    }

    /// Reads, validates and compiles a module file.
    pub fn load_file(&self, name: &str, path: &Path) -> Result<WasmModule, ModuleError> {
        let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
            name: name.to_owned(),
            source,
        })?;
        self.load(name, &bytes)
    }

    /// Validates and compiles a module: it must be a component, fit the size
    /// limit, import nothing beyond WASI and the operator world, and export
    /// the operator world's functions with their exact types.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<WasmModule, ModuleError> {
        let limit = self.sandbox.policy.max_module_bytes;
        if bytes.len() > limit {
            return Err(ModuleError::TooLarge {
                name: name.to_owned(),
                size: bytes.len(),
                limit,
            });
        }
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(ModuleError::Invalid {
                name: name.to_owned(),
                message: "this is a core WebAssembly module; build a component \
                          (cargo build --target wasm32-wasip2)"
                    .into(),
            });
        }
        let started = Instant::now();
        let (component, cache) = self.compile(name, bytes)?;
        let compile_time = started.elapsed();
        crate::metrics::metrics()
            .module_compile_seconds
            .observe(compile_time.as_secs_f64());
        let pre = self
            .prepare(&component)
            .map_err(|e| ModuleError::WrongWorld {
                name: name.to_owned(),
                message: format!("{e:#}"),
            })?;
        Ok(WasmModule {
            name: name.to_owned(),
            digest: module_digest(bytes),
            cache,
            compile_time,
            pre,
        })
    }

    /// Compiles (or finds compiled) on a thread of its own, so a module
    /// that takes too long is refused instead of holding the caller.
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<(Component, CacheOutcome), ModuleError> {
        let (done, result) = crossbeam_channel::bounded(1);
        let engine = self.sandbox.engine.clone();
        let cache = self.cache.clone();
        let owned = bytes.to_vec();
        std::thread::Builder::new()
            .name("weir-compile".into())
            .spawn(move || {
                let _ = done.send(cache.get_or_compile(&engine, &owned));
            })
            .map_err(|e| ModuleError::Invalid {
                name: name.to_owned(),
                message: format!("cannot start the compiler thread: {e}"),
            })?;
        let limit = self.sandbox.policy.compile_timeout;
        match result.recv_timeout(limit) {
            Ok(compiled) => compiled.map_err(|e| ModuleError::Invalid {
                name: name.to_owned(),
                message: format!("{e:#}"),
            }),
            Err(_) => Err(ModuleError::CompileTimeout {
                name: name.to_owned(),
                limit,
            }),
        }
    }

    fn prepare(&self, component: &Component) -> wasmtime::Result<OperatorPre<HostState>> {
        let pre = self.linker.instantiate_pre(component)?;
        OperatorPre::new(pre)
    }

    /// Instantiates a module for one operator instance and runs its `init`.
    pub fn instantiate(
        &self,
        module: &WasmModule,
        info: InstanceInfo,
        backend: Box<dyn StateBackend>,
        config: &[u8],
    ) -> Result<WasmOperator, OperatorError> {
        let policy = &self.sandbox.policy;
        let deadline_ticks = policy.deadline_ticks();
        let deadline_ms = policy.call_deadline.as_millis() as u64;
        let limits = InstanceLimits {
            memory: policy.memory_limit,
            table_elements: policy.max_table_elements,
            deadline_ticks,
            deadline_ms,
        };
        let (store, guest, declared) = start_instance(
            &self.sandbox.engine,
            &module.pre,
            &info,
            backend,
            config,
            &limits,
        )?;
        WasmOperator::assemble(
            store,
            guest,
            declared,
            info,
            module.pre.clone(),
            config.to_vec(),
            limits,
        )
    }
}

/// What each instance of a module may use.
#[derive(Clone, Copy, Debug)]
struct InstanceLimits {
    memory: usize,
    table_elements: usize,
    deadline_ticks: u64,
    deadline_ms: u64,
}

type Declared = super::bindings::weir::operator::types::OperatorInfo;

/// A new store and instance of `pre` holding `backend`, its `init` run.
fn start_instance(
    engine: &wasmtime::Engine,
    pre: &OperatorPre<HostState>,
    info: &InstanceInfo,
    backend: Box<dyn StateBackend>,
    config: &[u8],
    limits: &InstanceLimits,
) -> Result<(Store<HostState>, OperatorWorld, Declared), OperatorError> {
    let host = HostState::new(info.clone(), backend, limits.memory, limits.table_elements);
    let mut store = Store::new(engine, host);
    store.limiter(|h| &mut h.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(limits.deadline_ticks);
    let guest = pre
        .instantiate(&mut store)
        .map_err(|e| OperatorError::new(info, FailureKind::Init(format!("{e:#}"))))?;
    store.set_epoch_deadline(limits.deadline_ticks);
    match guest.call_init(&mut store, config) {
        Ok(Ok(declared)) => Ok((store, guest, declared)),
        Ok(Err(message)) => Err(OperatorError::new(info, FailureKind::Init(message))),
        Err(e) => {
            let kind = trap_kind(&e, &store, limits.deadline_ms);
            Err(OperatorError::new(info, kind))
        }
    }
}

/// Classifies a failed call: deadline, trap (with the guest's last stderr
/// lines, where a panic message lands), or an error raised by an import.
fn trap_kind(e: &wasmtime::Error, store: &Store<HostState>, deadline_ms: u64) -> FailureKind {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Deadline { deadline_ms },
        Some(trap) => {
            let mut message = trap.to_string();
            let recent = store.data().stderr.recent();
            if !recent.is_empty() {
                message.push_str("; guest stderr: ");
                message.push_str(&recent.join(" | "));
            }
            FailureKind::Trap(message)
        }
        None => FailureKind::Trap(format!("{e:#}")),
    }
}

/// One guest instance, driven batch by batch.
/// A guest instance's series, resolved once.
struct WasmMetrics {
    calls: prometheus::IntCounter,
    guest_seconds: prometheus::Counter,
    memory_bytes: prometheus::IntGauge,
}

impl WasmMetrics {
    fn new(info: &InstanceInfo) -> Self {
        let m = crate::metrics::metrics();
        let labels = [info.job.as_str(), info.operator.as_str()];
        WasmMetrics {
            calls: m.wasm_calls.with_label_values(&labels),
            guest_seconds: m.wasm_guest_seconds.with_label_values(&labels),
            memory_bytes: m.wasm_memory_bytes.with_label_values(&[
                info.job.as_str(),
                info.operator.as_str(),
                info.instance.to_string().as_str(),
            ]),
        }
    }

    fn failed(info: &InstanceInfo, kind: &FailureKind) {
        let m = crate::metrics::metrics();
        let name = match kind {
            FailureKind::Deadline { .. } => {
                m.wasm_deadline_hits
                    .with_label_values(&[info.job.as_str(), info.operator.as_str()])
                    .inc();
                "deadline"
            }
            FailureKind::Trap(message) if message.contains("memory") => "memory",
            FailureKind::Trap(_) => "trap",
            FailureKind::Guest(_) => "error",
            _ => "output",
        };
        m.wasm_traps
            .with_label_values(&[info.job.as_str(), info.operator.as_str(), name])
            .inc();
    }
}

pub struct WasmOperator {
    info: InstanceInfo,
    metrics: WasmMetrics,
    store: Store<HostState>,
    guest: OperatorWorld,
    /// To start a fresh instance after a trap (failure isolation).
    pre: OperatorPre<HostState>,
    config: Vec<u8>,
    limits: InstanceLimits,
    /// Backend ids of the value states shipped with each batch, in guest order.
    value_ids: Vec<StateId>,
    value_state_names: Vec<String>,
    has_state: bool,
    side_outputs: Vec<String>,
    input: Vec<u8>,
    /// Slot of each entry of the batch being encoded.
    entry_slots: Vec<u32>,
    /// Timers being fired, reused from call to call.
    due_timers: DueTimers,
    /// Distinct keys without a stored value in the batch being encoded:
    /// slot indices, hashed by key.
    dedup: HashTable<u32>,
    /// Slots of the batch's keys that have a stored value, by their handle
    /// in the first value state.
    handle_slots: HandleSlots,
    /// Per slot, per value state (slot-major): the stored value's handle.
    slot_handles: Vec<Option<ValueHandle>>,
    /// Which input the records batch being processed came from.
    input_index: u16,
}

/// Slots by value handle for one batch. Backends hand out dense handles
/// (slab or cache indices, fewer than the stored values), so a vector indexed
/// by handle replaces a hash map at 8 bytes per stored value;
/// a batch stamp marks which entries belong to the current batch, so starting
/// a batch clears nothing.
#[derive(Default)]
struct HandleSlots {
    /// Per handle: (batch stamp, slot).
    by_handle: Vec<(u32, u32)>,
    stamp: u32,
}

impl HandleSlots {
    fn begin_batch(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            // Stamps wrapped: old entries could look current.
            self.by_handle.iter_mut().for_each(|e| e.0 = 0);
            self.stamp = 1;
        }
    }

    #[inline]
    fn get(&self, handle: ValueHandle) -> Option<u32> {
        match self.by_handle.get(handle.0 as usize) {
            Some(&(stamp, slot)) if stamp == self.stamp => Some(slot),
            _ => None,
        }
    }

    #[inline]
    fn insert(&mut self, handle: ValueHandle, slot: u32) {
        let at = handle.0 as usize;
        if at >= self.by_handle.len() {
            self.by_handle.resize((at + 1).next_power_of_two(), (0, 0));
        }
        self.by_handle[at] = (self.stamp, slot);
    }
}

fn fx_hash(key: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(key);
    h.finish()
}

impl WasmOperator {
    fn fail(&self, kind: impl Into<FailureKind>) -> OperatorError {
        OperatorError::new(&self.info, kind)
    }

    /// Assigns slots to the keys of the entries: one per distinct key when
    /// value states are shipped, one per entry otherwise (nothing to share).
    ///
    /// With value states, each record costs one backend lookup: a key with a
    /// stored value is recognised by its handle (an integer), and only keys
    /// without one are compared by bytes. The handles found here serve the
    /// reads in [`Self::begin_input`] and the writes in `apply_output`.
    fn assign_slots<'k>(
        &mut self,
        keys: impl Iterator<Item = (&'k [u8], u32)>,
    ) -> Result<(), OperatorError> {
        let max_parallelism = self.info.max_parallelism;
        let has_state = self.has_state;
        let call = &mut self.store.data_mut().call;
        call.begin_batch();
        call.backend
            .release_handles()
            .map_err(|e| OperatorError::new(&self.info, e))?;
        self.entry_slots.clear();
        self.dedup.clear();
        self.handle_slots.begin_batch();
        self.slot_handles.clear();
        let Some((&first_state, other_states)) = self.value_ids.split_first() else {
            for (key, cached_group) in keys {
                let group = if !has_state {
                    NO_KEY_GROUP
                } else if cached_group != NO_KEY_GROUP {
                    cached_group
                } else {
                    key_group(key, max_parallelism)
                };
                self.entry_slots.push(call.push_slot(key, group));
            }
            return Ok(());
        };
        let fail = |e| OperatorError::new(&self.info, e);
        for (key, cached_group) in keys {
            let group = if cached_group != NO_KEY_GROUP {
                cached_group
            } else {
                key_group(key, max_parallelism)
            };
            let handle = call
                .backend
                .value_find(first_state, group, key)
                .map_err(fail)?;
            let existing = match handle {
                Some(h) => self.handle_slots.get(h),
                None => {
                    let hash = fx_hash(key);
                    self.dedup
                        .find(hash, |&s| call.slot_key(call.slots[s as usize]) == key)
                        .copied()
                }
            };
            let slot = match existing {
                Some(s) => s,
                None => {
                    let s = call.push_slot(key, group);
                    match handle {
                        Some(h) => {
                            self.handle_slots.insert(h, s);
                        }
                        None => {
                            let slots = &call.slots;
                            let bytes = &call.slot_bytes;
                            self.dedup.insert_unique(fx_hash(key), s, |&t| {
                                fx_hash(slot_key_in(bytes, slots[t as usize]))
                            });
                        }
                    }
                    self.slot_handles.push(handle);
                    for &id in other_states {
                        let h = call.backend.value_find(id, group, key).map_err(fail)?;
                        self.slot_handles.push(h);
                    }
                    s
                }
            };
            self.entry_slots.push(slot);
        }
        Ok(())
    }

    /// Writes the header and the slots (with their value states) of a batch.
    fn begin_input(&mut self, kind: BatchKind) -> Result<InputWriter<'_>, OperatorError> {
        self.input.clear();
        let call = &mut self.store.data_mut().call;
        let mut w = InputWriter::new(
            &mut self.input,
            kind,
            call.watermark,
            now_millis(),
            self.value_ids.len() as u32,
        );
        if kind == BatchKind::Records && self.input_index != 0 {
            w.set_input(self.input_index);
        }
        let states = self.value_ids.len();
        for (i, &slot) in call.slots.iter().enumerate() {
            w.slot_key(slot_key_in(&call.slot_bytes, slot));
            for (s, &id) in self.value_ids.iter().enumerate() {
                let value = match self.slot_handles[i * states + s] {
                    Some(h) => Some(
                        call.backend
                            .value_read(id, h)
                            .map_err(|e| OperatorError::new(&self.info, e))?,
                    ),
                    None => None,
                };
                w.slot_state(value);
            }
        }
        Ok(w)
    }

    /// Calls the guest with the encoded input and applies its output.
    fn call_guest(&mut self, kind: BatchKind, out: &mut Output) -> Result<(), OperatorError> {
        self.store.set_epoch_deadline(self.limits.deadline_ticks);
        let started = std::time::Instant::now();
        let result = match kind {
            BatchKind::Records => self.guest.call_process(&mut self.store, &self.input),
            BatchKind::Timers => self.guest.call_on_timer(&mut self.store, &self.input),
            BatchKind::Window => self.guest.call_window(&mut self.store, &self.input),
        };
        self.metrics.calls.inc();
        self.metrics
            .guest_seconds
            .inc_by(started.elapsed().as_secs_f64());
        self.metrics
            .memory_bytes
            .set(self.store.data().limits.memory_bytes as i64);
        let failure = match result {
            Ok(Ok(bytes)) if bytes.len() > MAX_OUTPUT_BYTES => FailureKind::BadOutput(format!(
                "output of {} bytes exceeds the limit of {MAX_OUTPUT_BYTES}",
                bytes.len()
            )),
            Ok(Ok(bytes)) => return self.apply_output(&bytes, out),
            Ok(Err(message)) => FailureKind::Guest(message),
            Err(e) => trap_kind(&e, &self.store, self.limits.deadline_ms),
        };
        WasmMetrics::failed(&self.info, &failure);
        Err(self.fail(failure))
    }

    /// Checks a whole output buffer against the batch without applying
    /// anything, so that an isolated call is applied entirely or not at all.
    fn check_output(&self, bytes: &[u8]) -> Result<(), OperatorError> {
        let bad = |what: String| OperatorError::new(&self.info, FailureKind::BadOutput(what));
        let slots = self.store.data().call.slots.len();
        let mut reader = OutputReader::new(bytes).map_err(|e| bad(e.to_string()))?;
        while let Some(e) = reader.next_emit().map_err(|e| bad(e.to_string()))? {
            if e.tag != weir_abi::MAIN_OUTPUT && e.tag as usize > self.side_outputs.len() {
                return Err(bad(format!(
                    "emitted to side output tag {}, but the operator declared {} side outputs",
                    e.tag,
                    self.side_outputs.len()
                )));
            }
        }
        while let Some(u) = reader.next_update().map_err(|e| bad(e.to_string()))? {
            if u.slot as usize >= slots {
                return Err(bad(format!("state update for slot {} of {slots}", u.slot)));
            }
            if u.state as usize >= self.value_ids.len() {
                return Err(bad(format!("update of undeclared value state {}", u.state)));
            }
        }
        Ok(())
    }

    fn apply_output(&mut self, bytes: &[u8], out: &mut Output) -> Result<(), OperatorError> {
        if self.isolating() {
            self.check_output(bytes)?;
        }
        let bad = |what: String| FailureKind::BadOutput(what);
        let call = &mut self.store.data_mut().call;
        // Emits made through imports came first in the guest's own order.
        if !call.direct_main.is_empty() {
            for r in call.direct_main.iter() {
                out.main.push(r.key, r.value, r.timestamp);
            }
            call.direct_main.clear();
        }
        for (i, side) in call.direct_side.iter_mut().enumerate() {
            for r in side.iter() {
                out.side[i].push(r.key, r.value, r.timestamp);
            }
            side.clear();
        }
        let mut reader = OutputReader::new(bytes)
            .map_err(|e| OperatorError::new(&self.info, bad(e.to_string())))?;
        while let Some(e) = reader
            .next_emit()
            .map_err(|e| OperatorError::new(&self.info, bad(e.to_string())))?
        {
            if e.tag == weir_abi::MAIN_OUTPUT {
                out.main.push(e.key, e.value, e.timestamp);
            } else if e.tag as usize <= self.side_outputs.len() {
                out.side[e.tag as usize - 1].push(e.key, e.value, e.timestamp);
            } else {
                return Err(OperatorError::new(
                    &self.info,
                    bad(format!(
                        "emitted to side output tag {}, but the operator declared {} side outputs",
                        e.tag,
                        self.side_outputs.len()
                    )),
                ));
            }
        }
        while let Some(u) = reader
            .next_update()
            .map_err(|e| OperatorError::new(&self.info, bad(e.to_string())))?
        {
            let slot = call.slots.get(u.slot as usize).copied().ok_or_else(|| {
                OperatorError::new(
                    &self.info,
                    bad(format!(
                        "state update for slot {} of {}",
                        u.slot,
                        call.slots.len()
                    )),
                )
            })?;
            let id = *self.value_ids.get(u.state as usize).ok_or_else(|| {
                OperatorError::new(
                    &self.info,
                    bad(format!("update of undeclared value state {}", u.state)),
                )
            })?;
            let at = u.slot as usize * self.value_ids.len() + u.state as usize;
            let r = match (self.slot_handles[at], u.value) {
                (Some(h), value) => {
                    // A removed value's handle may be reused by the next
                    // insert: a later update of this slot must not reach it.
                    if value.is_none() {
                        self.slot_handles[at] = None;
                    }
                    call.backend.value_write(id, h, value)
                }
                // The key had no value when the batch began (or an update
                // of this buffer removed it), and a key has one slot: nothing
                // stored it since, except an earlier update of this same
                // buffer, which left its handle here.
                (None, Some(v)) => {
                    let key = slot_key_in(&call.slot_bytes, slot);
                    call.backend
                        .value_insert(id, slot.key_group, key, v)
                        .map(|h| self.slot_handles[at] = h)
                }
                (None, None) => Ok(()),
            };
            r.map_err(|e| OperatorError::new(&self.info, e))?;
        }
        Ok(())
    }

    fn fire_timers(
        &mut self,
        domain: TimeDomain,
        now: i64,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        let mut due = std::mem::take(&mut self.due_timers);
        let r = self.fire_due_timers(domain, now, &mut due, out);
        self.due_timers = due;
        r
    }

    fn fire_due_timers(
        &mut self,
        domain: TimeDomain,
        now: i64,
        due: &mut DueTimers,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        loop {
            self.store
                .data_mut()
                .call
                .timers
                .pop_due(domain, now, TIMER_BATCH, due);
            if due.is_empty() {
                return Ok(());
            }
            self.assign_slots(due.iter().map(|(_, k)| (k, NO_KEY_GROUP)))?;
            let abi_domain = match domain {
                TimeDomain::EventTime => Domain::EventTime,
                TimeDomain::ProcessingTime => Domain::ProcessingTime,
            };
            let slots = std::mem::take(&mut self.entry_slots);
            let mut w = self.begin_input(BatchKind::Timers)?;
            for ((time, _), slot) in due.iter().zip(&slots) {
                w.timer(*slot, time, abi_domain);
            }
            w.finish();
            self.entry_slots = slots;
            self.call_guest(BatchKind::Timers, out)?;
        }
    }
}

/// Window steps for one guest call, built by the window operator: slot keys
/// (key plus window, see [`weir_abi::window_slot_key`]) are referenced by
/// index, so a merge names two of them.
#[derive(Debug, Default)]
pub struct WindowBatch {
    keys: Vec<u8>,
    /// (start in `keys`, length, key group) of each referenced slot key.
    refs: Vec<(u32, u32, u32)>,
    values: Vec<u8>,
    entries: Vec<WindowEntry>,
    /// Slot refs whose accumulator is removed once the batch has run.
    drops: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
enum WindowEntry {
    Add {
        slot: u32,
        timestamp: i64,
        value: (u32, u32),
    },
    Merge {
        into: u32,
        from: u32,
    },
    Fire {
        slot: u32,
    },
}

impl WindowBatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.refs.clear();
        self.values.clear();
        self.entries.clear();
        self.drops.clear();
    }

    fn slot_ref(&mut self, key: &[u8], start: i64, end: i64, key_group: u32) -> u32 {
        let at = self.keys.len();
        weir_abi::window_slot_key(&mut self.keys, key, start, end);
        self.refs
            .push((at as u32, (self.keys.len() - at) as u32, key_group));
        (self.refs.len() - 1) as u32
    }

    pub fn add(
        &mut self,
        key: &[u8],
        window: (i64, i64),
        key_group: u32,
        timestamp: i64,
        value: &[u8],
    ) {
        let slot = self.slot_ref(key, window.0, window.1, key_group);
        let at = self.values.len();
        self.values.extend_from_slice(value);
        self.entries.push(WindowEntry::Add {
            slot,
            timestamp,
            value: (at as u32, value.len() as u32),
        });
    }

    /// Folds window `from`'s accumulator into `into`'s (same key).
    pub fn merge(&mut self, key: &[u8], into: (i64, i64), from: (i64, i64), key_group: u32) {
        let into = self.slot_ref(key, into.0, into.1, key_group);
        let from = self.slot_ref(key, from.0, from.1, key_group);
        self.entries.push(WindowEntry::Merge { into, from });
    }

    pub fn fire(&mut self, key: &[u8], window: (i64, i64), key_group: u32) {
        let slot = self.slot_ref(key, window.0, window.1, key_group);
        self.entries.push(WindowEntry::Fire { slot });
    }

    /// Fires the window, then removes its accumulator (its cleanup time is
    /// its firing time): one state lookup serves both.
    pub fn fire_and_drop(&mut self, key: &[u8], window: (i64, i64), key_group: u32) {
        let slot = self.slot_ref(key, window.0, window.1, key_group);
        self.entries.push(WindowEntry::Fire { slot });
        self.drops.push(slot);
    }
}

impl WasmOperator {
    /// Names of the value states the guest declared, in order.
    pub fn value_state_names(&self) -> &[String] {
        &self.value_state_names
    }

    /// The backend the guest's state lives in (the window operator keeps its
    /// own bookkeeping there too, so snapshots hold both).
    pub fn backend_mut(&mut self) -> &mut dyn StateBackend {
        self.store.data_mut().call.backend.as_mut()
    }

    pub fn set_watermark(&mut self, watermark: i64) {
        self.store.data_mut().call.watermark = watermark;
    }

    /// Runs a batch of window steps through the guest's `window` export.
    pub fn run_window(
        &mut self,
        batch: &WindowBatch,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        if batch.is_empty() {
            return Ok(());
        }
        let keys = &batch.keys;
        self.assign_slots(
            batch
                .refs
                .iter()
                .map(|&(at, len, group)| (&keys[at as usize..(at + len) as usize], group)),
        )?;
        let slots = std::mem::take(&mut self.entry_slots);
        let mut w = self.begin_input(BatchKind::Window)?;
        for entry in &batch.entries {
            match *entry {
                WindowEntry::Add {
                    slot,
                    timestamp,
                    value: (at, len),
                } => w.window_add(
                    slots[slot as usize],
                    timestamp,
                    &batch.values[at as usize..(at + len) as usize],
                ),
                WindowEntry::Merge { into, from } => {
                    w.window_merge(slots[into as usize], slots[from as usize])
                }
                WindowEntry::Fire { slot } => w.window_fire(slots[slot as usize]),
            }
        }
        w.finish();
        self.entry_slots = slots;
        self.call_guest(BatchKind::Window, out)?;
        let states = self.value_ids.len();
        for &slot_ref in &batch.drops {
            let slot = self.entry_slots[slot_ref as usize] as usize;
            let id = self.value_ids[0];
            let call = &mut self.store.data_mut().call;
            let r = match self.slot_handles[slot * states].take() {
                Some(handle) => call.backend.value_write(id, handle, None),
                None => {
                    let (at, len, group) = batch.refs[slot_ref as usize];
                    let key = &batch.keys[at as usize..(at + len) as usize];
                    call.backend.value_remove(id, group, key)
                }
            };
            r.map_err(|e| OperatorError::new(&self.info, e))?;
        }
        Ok(())
    }
}

impl WasmOperator {
    /// An operator around a started instance: checks and registers the
    /// states it declared in the backend its store holds (by name, so a
    /// state that exists keeps its data).
    fn assemble(
        mut store: Store<HostState>,
        guest: OperatorWorld,
        declared: Declared,
        info: InstanceInfo,
        pre: OperatorPre<HostState>,
        config: Vec<u8>,
        limits: InstanceLimits,
    ) -> Result<WasmOperator, OperatorError> {
        let has_state = !(declared.value_states.is_empty()
            && declared.map_states.is_empty()
            && declared.list_states.is_empty());
        if has_state && !info.keyed {
            return Err(OperatorError::new(
                &info,
                FailureKind::Init(
                    "the operator declares keyed state, but its input is not partitioned by key; \
                     set `input: key` on it in the job spec"
                        .into(),
                ),
            ));
        }
        let register = |store: &mut Store<HostState>, names: &[String], kind: StateKind| {
            names
                .iter()
                .map(|n| store.data_mut().call.backend.register(n, kind))
                .collect::<Result<Vec<StateId>, _>>()
        };
        let value_ids = register(&mut store, &declared.value_states, StateKind::Value)
            .map_err(|e| OperatorError::new(&info, e))?;
        let map_ids = register(&mut store, &declared.map_states, StateKind::Map)
            .map_err(|e| OperatorError::new(&info, e))?;
        let list_ids = register(&mut store, &declared.list_states, StateKind::List)
            .map_err(|e| OperatorError::new(&info, e))?;
        let call = &mut store.data_mut().call;
        call.map_ids = map_ids;
        call.list_ids = list_ids;
        call.side_outputs = declared.side_outputs.clone();
        call.direct_side = vec![RecordBatch::new(); declared.side_outputs.len()];
        Ok(WasmOperator {
            metrics: WasmMetrics::new(&info),
            info,
            store,
            guest,
            pre,
            config,
            limits,
            value_ids,
            value_state_names: declared.value_states,
            has_state,
            side_outputs: declared.side_outputs,
            input: Vec::new(),
            entry_slots: Vec::new(),
            due_timers: DueTimers::default(),
            dedup: HashTable::new(),
            handle_slots: HandleSlots::default(),
            slot_handles: Vec::new(),
            input_index: 0,
        })
    }

    /// Hot swap: a fresh instance of `module` takes over this one's state
    /// backend (its states found again by name), timers and failure
    /// isolation. States the new version no longer declares stay in the
    /// backend untouched; new ones start empty. Side outputs must not
    /// change, since the task has wired them to sinks.
    pub fn replace_module(
        &mut self,
        module: &WasmModule,
        config: &[u8],
    ) -> Result<(), OperatorError> {
        let engine = self.store.engine().clone();
        let placeholder = Box::new(MemoryBackend::new(0..0));
        let (mut store, guest, declared) = start_instance(
            &engine,
            &module.pre,
            &self.info,
            placeholder,
            config,
            &self.limits,
        )?;
        if declared.side_outputs != self.side_outputs {
            return Err(self.fail(FailureKind::Init(format!(
                "the new version declares side outputs {:?}, the running one {:?}; \
                 a swap cannot rewire them",
                declared.side_outputs, self.side_outputs
            ))));
        }
        std::mem::swap(&mut store.data_mut().call, &mut self.store.data_mut().call);
        *self = WasmOperator::assemble(
            store,
            guest,
            declared,
            self.info.clone(),
            module.pre.clone(),
            config.to_vec(),
            self.limits,
        )?;
        Ok(())
    }
}

/// Failure isolation, for `on_error: skip | dead-letter`.
///
/// A batch whose call fails by the guest's fault (an error it returns, a
/// trap, the deadline, a malformed output) is taken back as a whole: its
/// emits are dropped, the map, list and timer changes it made through the
/// imports are undone from the journal, value states were not yet written,
/// and an instance that trapped is replaced by a fresh one of the same
/// module holding the same state. Then each half of the batch runs on its
/// own, down to the single records that fail alone: those are the poison
/// records, handed to the task in `Output::rejected`. Every other record
/// takes effect exactly once. A batch of `n` records with one poison record
/// costs about `2 log2(n)` extra calls; with an endless loop, each of the
/// `log2(n) + 1` calls that holds the record waits out the deadline.
///
/// Timers and window steps are not isolated (no single record is to blame):
/// their failures fail the task as with `on_error: fail`.
impl WasmOperator {
    /// Turns isolation on: from now on each call journals what it changes.
    pub fn isolate_failures(&mut self) {
        self.store.data_mut().call.journal = Some(Vec::new());
    }

    fn isolating(&self) -> bool {
        self.store.data().call.journal.is_some()
    }

    fn process_range(
        &mut self,
        input: &RecordBatch,
        range: Range<usize>,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        self.assign_slots(range.clone().map(|i| {
            let r = input.get(i);
            (r.key, r.key_group)
        }))?;
        let slots = std::mem::take(&mut self.entry_slots);
        let mut w = self.begin_input(BatchKind::Records)?;
        for (i, slot) in range.zip(&slots) {
            let r = input.get(i);
            w.record(*slot, r.timestamp, r.value);
        }
        w.finish();
        self.entry_slots = slots;
        self.call_guest(BatchKind::Records, out)
    }

    fn process_isolated(
        &mut self,
        input: &RecordBatch,
        range: Range<usize>,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        let mark = out.mark();
        let error = match self.process_range(input, range.clone(), out) {
            Ok(()) => return Ok(()),
            Err(e) if !e.kind.is_guest_fault() => return Err(e),
            Err(e) => e,
        };
        out.truncate(&mark);
        let call = &mut self.store.data_mut().call;
        call.roll_back()
            .map_err(|e| OperatorError::new(&self.info, e))?;
        if matches!(
            error.kind,
            FailureKind::Trap(_) | FailureKind::Deadline { .. }
        ) {
            self.replace_instance()?;
        }
        if range.len() == 1 {
            let r = input.get(range.start);
            out.rejected.push(RejectedRecord {
                key: r.key.to_vec(),
                value: r.value.to_vec(),
                timestamp: r.timestamp,
                error: error.to_string(),
            });
            return Ok(());
        }
        let middle = range.start + range.len() / 2;
        self.process_isolated(input, range.start..middle, out)?;
        self.process_isolated(input, middle..range.end, out)
    }

    /// A trap leaves a component instance unusable: a fresh instance of the
    /// same module, initialised with the same config, takes over this one's
    /// state, timers and slot tables.
    fn replace_instance(&mut self) -> Result<(), OperatorError> {
        let engine = self.store.engine().clone();
        let placeholder = Box::new(MemoryBackend::new(0..0));
        let (mut store, guest, declared) = start_instance(
            &engine,
            &self.pre,
            &self.info,
            placeholder,
            &self.config,
            &self.limits,
        )?;
        if declared.value_states != self.value_state_names
            || declared.side_outputs != self.side_outputs
        {
            return Err(self.fail(FailureKind::Init(
                "after a trap, a fresh instance declared other states or side outputs than \
                 the first; the operator cannot go on"
                    .into(),
            )));
        }
        std::mem::swap(&mut store.data_mut().call, &mut self.store.data_mut().call);
        self.store = store;
        self.guest = guest;
        Ok(())
    }
}

impl Operator for WasmOperator {
    fn side_outputs(&self) -> &[String] {
        &self.side_outputs
    }

    fn process(&mut self, input: &RecordBatch, out: &mut Output) -> Result<(), OperatorError> {
        if input.is_empty() {
            return Ok(());
        }
        if self.isolating() {
            return self.process_isolated(input, 0..input.len(), out);
        }
        self.process_range(input, 0..input.len(), out)
    }

    fn process_from(
        &mut self,
        input: u16,
        batch: &RecordBatch,
        out: &mut Output,
    ) -> Result<(), OperatorError> {
        self.input_index = input;
        let r = self.process(batch, out);
        self.input_index = 0;
        r
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<(), OperatorError> {
        self.store.data_mut().call.watermark = watermark;
        self.fire_timers(TimeDomain::EventTime, watermark, out)
    }

    fn advance_processing_time(&mut self, now: i64, out: &mut Output) -> Result<(), OperatorError> {
        self.fire_timers(TimeDomain::ProcessingTime, now, out)
    }

    fn next_processing_timer(&self) -> Option<i64> {
        self.store.data().call.timers.next_processing_time()
    }

    fn snapshot(&mut self, out: &mut KeyedSnapshot) -> Result<(), OperatorError> {
        let info = &self.info;
        let call = &mut self.store.data_mut().call;
        out.add_backend(call.backend.as_mut())
            .map_err(|e| OperatorError::new(info, e))?;
        let call = &self.store.data().call;
        for (domain, time, key) in call.timers.iter() {
            let group = key_group(key, self.info.max_parallelism);
            out.push(group, SnapshotEntry::Timer { domain, time, key })
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn swap_module(&mut self, module: &WasmModule, config: &[u8]) -> Result<(), OperatorError> {
        self.replace_module(module, config)
    }

    fn restore(&mut self, key_group: u32, entry: SnapshotEntry<'_>) -> Result<(), OperatorError> {
        let call = &mut self.store.data_mut().call;
        let r = match entry {
            SnapshotEntry::State(e) => restore_entry(call.backend.as_mut(), key_group, e),
            SnapshotEntry::Timer { domain, time, key } => {
                call.timers.register(domain, time, key);
                Ok(())
            }
        };
        r.map_err(|e| self.fail(e))
    }
}
