//! The guest side of a batch: decode the host's `WIB1` buffer, hand each
//! entry to the user's operator, collect emits and value-state writes into a
//! `WOB1` buffer.
//!
//! Invariant: value-state reads see the batch's own earlier writes (a slot's
//! current value lives in [`SlotTable`] until the batch ends); only slots
//! whose value changed are sent back, once each, with their final value.

use std::cell::RefCell;
use std::marker::PhantomData;

use weir_abi::{BatchKind, Domain, Entry, InputReader, MAIN_OUTPUT, OutputWriter};

use crate::bindings::weir::operator::{log as host_log, output as host_output};
use crate::bindings::weir::operator::{state as host_state, timers as host_timers, types};
use crate::{Error, Operator, Result, StateValue, Window, WindowStep};

/// A handle to a keyed value state declared in [`Operator::init`]; its value
/// travels with each batch, so reads and writes cost no host call.
pub struct ValueState<T> {
    id: u32,
    _type: PhantomData<fn() -> T>,
}

/// A handle to a keyed map state (bytes to bytes), read and written through
/// host calls.
pub struct MapState {
    id: u32,
}

/// A handle to a keyed list state, read and written through host calls.
pub struct ListState {
    id: u32,
}

/// A named side output declared in [`Operator::init`].
pub struct SideOutput {
    tag: u32,
}

/// The clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// Fires when the watermark passes the timer's time.
    EventTime,
    /// Fires when the wall clock (ms since the Unix epoch) passes it.
    ProcessingTime,
}

/// Severity of a [`Context::log`] line.
pub use types::LogLevel;

/// One input record.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Event time in milliseconds.
    pub timestamp: i64,
    /// Which of the operator's inputs the record came from, 0-based in the
    /// order of the job spec's `from` (always 0 with one input): a
    /// two-input operator (a join, a co-process function) tells its streams
    /// apart by it.
    pub input: u32,
}

impl<'a> Record<'a> {
    /// The key as UTF-8 text.
    pub fn key_str(&self) -> Result<&'a str> {
        Ok(std::str::from_utf8(self.key)?)
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&'a str> {
        Ok(std::str::from_utf8(self.value)?)
    }

    /// The value as a little-endian `u64` (the benchmark generator's format).
    pub fn value_u64(&self) -> Result<u64> {
        u64::decode(self.value)
    }
}

/// A fired timer.
#[derive(Clone, Copy, Debug)]
pub struct Timer<'a> {
    pub key: &'a [u8],
    pub time: i64,
    pub domain: TimeDomain,
}

/// What [`Operator::init`] declares.
pub struct Setup {
    config: Vec<u8>,
    info: types::OperatorInfo,
}

impl Setup {
    /// The operator's `config` from the job spec, as JSON bytes (empty when none).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Declares a keyed value state shipped with every batch.
    pub fn value_state<T: StateValue>(&mut self, name: &str) -> ValueState<T> {
        ValueState {
            id: declare(&mut self.info.value_states, name),
            _type: PhantomData,
        }
    }

    /// Declares a keyed map state.
    pub fn map_state(&mut self, name: &str) -> MapState {
        MapState {
            id: declare(&mut self.info.map_states, name),
        }
    }

    /// Declares a keyed list state.
    pub fn list_state(&mut self, name: &str) -> ListState {
        ListState {
            id: declare(&mut self.info.list_states, name),
        }
    }

    /// Declares a side output the job spec can route to a sink.
    pub fn side_output(&mut self, name: &str) -> SideOutput {
        SideOutput {
            tag: declare(&mut self.info.side_outputs, name) + 1,
        }
    }
}

fn declare(names: &mut Vec<String>, name: &str) -> u32 {
    let index = names.iter().position(|n| n == name).unwrap_or_else(|| {
        names.push(name.to_owned());
        names.len() - 1
    });
    index as u32
}

/// A value state of one slot: a range of the input buffer (the value the host
/// sent) or of the batch arena (a value written during this batch), or absent.
/// Two words with a flag bit rather than a three-variant enum, which compiles
/// to a jump table: dispatching through it on every read was a fifth of the
/// guest's time per record.
#[derive(Clone, Copy)]
struct Val {
    /// With [`Val::IN_ARENA`] set: an offset into the arena.
    start: u32,
    /// [`Val::ABSENT`] when the state has no value.
    len: u32,
}

impl Val {
    const ABSENT: u32 = u32::MAX;
    const IN_ARENA: u32 = 1 << 31;
    const NONE: Val = Val {
        start: 0,
        len: Val::ABSENT,
    };

    fn input((start, len): (u32, u32)) -> Val {
        Val { start, len }
    }

    fn arena(start: usize, len: usize) -> Val {
        Val {
            start: start as u32 | Val::IN_ARENA,
            len: len as u32,
        }
    }

    #[inline]
    fn bytes<'a>(self, input: &'a [u8], arena: &'a [u8]) -> Option<&'a [u8]> {
        if self.len == Val::ABSENT {
            return None;
        }
        let (buf, start) = if self.start & Val::IN_ARENA != 0 {
            (arena, self.start & !Val::IN_ARENA)
        } else {
            (input, self.start)
        };
        Some(range(buf, (start, self.len)))
    }
}

/// The batch's distinct keys and their value states.
struct SlotTable {
    keys: Vec<(u32, u32)>,
    values: Vec<Val>,
    dirty: Vec<bool>,
    arena: Vec<u8>,
    states: u32,
}

fn offset_in(base: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, part.len() as u32)
}

fn range(buf: &[u8], (start, len): (u32, u32)) -> &[u8] {
    &buf[start as usize..(start + len) as usize]
}

/// The operator's view of the record or timer being handled.
pub struct Context<'a> {
    input: &'a [u8],
    table: &'a mut SlotTable,
    out: &'a mut OutputWriter,
    slot: u32,
    timestamp: i64,
    watermark: i64,
    processing_time: i64,
    side_outputs: &'a [String],
}

impl Context<'_> {
    /// The key being handled.
    pub fn key(&self) -> &[u8] {
        range(self.input, self.table.keys[self.slot as usize])
    }

    /// The record's event time, or the fired timer's time.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The operator's event-time watermark when the batch started.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The current event-time watermark, asked of the host now.
    pub fn current_watermark(&self) -> i64 {
        host_timers::current_watermark()
    }

    /// Wall-clock milliseconds since the Unix epoch when the batch started.
    pub fn processing_time(&self) -> i64 {
        self.processing_time
    }

    fn value_index(&self, id: u32) -> usize {
        self.value_index_at(self.slot, id)
    }

    fn value_index_at(&self, slot: u32, id: u32) -> usize {
        assert!(id < self.table.states, "value state {id} was not declared");
        (slot * self.table.states + id) as usize
    }

    /// A value state of another slot of the batch (window merges).
    pub(crate) fn get_at<T: StateValue>(
        &self,
        slot: u32,
        state: &ValueState<T>,
    ) -> Result<Option<T>> {
        self.table.values[self.value_index_at(slot, state.id)]
            .bytes(self.input, &self.table.arena)
            .map(T::decode)
            .transpose()
    }

    pub(crate) fn clear_at<T>(&mut self, slot: u32, state: &ValueState<T>) {
        let index = self.value_index_at(slot, state.id);
        self.table.values[index] = Val::NONE;
        self.table.dirty[index] = true;
    }

    /// The raw bytes of a value state for the current key.
    pub fn get_bytes<T>(&self, state: &ValueState<T>) -> Option<&[u8]> {
        self.table.values[self.value_index(state.id)].bytes(self.input, &self.table.arena)
    }

    /// A value state for the current key.
    pub fn get<T: StateValue>(&self, state: &ValueState<T>) -> Result<Option<T>> {
        self.get_bytes(state).map(T::decode).transpose()
    }

    /// Sets a value state for the current key.
    pub fn set<T: StateValue>(&mut self, state: &ValueState<T>, value: &T) {
        let index = self.value_index(state.id);
        let start = self.table.arena.len();
        value.encode(&mut self.table.arena);
        let len = self.table.arena.len() - start;
        self.table.values[index] = Val::arena(start, len);
        self.table.dirty[index] = true;
    }

    /// Clears a value state for the current key.
    pub fn clear<T>(&mut self, state: &ValueState<T>) {
        let index = self.value_index(state.id);
        self.table.values[index] = Val::NONE;
        self.table.dirty[index] = true;
    }

    /// Emits to the main output, stamped with the current timestamp.
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.out
            .emit(MAIN_OUTPUT, self.timestamp, key.as_ref(), value.as_ref());
    }

    /// Emits to the main output with an explicit event time.
    pub fn emit_at(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, timestamp: i64) {
        self.out
            .emit(MAIN_OUTPUT, timestamp, key.as_ref(), value.as_ref());
    }

    /// Emits to a declared side output, stamped with the current timestamp.
    pub fn emit_side(&mut self, side: &SideOutput, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.out
            .emit(side.tag, self.timestamp, key.as_ref(), value.as_ref());
    }

    /// Emits to a side output by name, through a host call. The host rejects
    /// names that were not declared.
    pub fn emit_side_named(&mut self, name: &str, key: &[u8], value: &[u8]) -> Result<()> {
        host_output::emit_side(name, key, value, self.timestamp).map_err(Error::from)
    }

    /// Side outputs declared in `init`, in tag order.
    pub fn side_outputs(&self) -> &[String] {
        self.side_outputs
    }

    /// Registers a timer for the current key; the same (key, time, domain)
    /// registered twice fires once.
    pub fn register_timer(&mut self, time: i64, domain: TimeDomain) {
        host_timers::register_timer(self.slot, time, domain.into());
    }

    /// Registers an event-time timer for the current key.
    pub fn register_event_timer(&mut self, time: i64) {
        self.register_timer(time, TimeDomain::EventTime);
    }

    /// Registers a processing-time timer for the current key.
    pub fn register_processing_timer(&mut self, time: i64) {
        self.register_timer(time, TimeDomain::ProcessingTime);
    }

    /// Deletes a timer of the current key, if registered.
    pub fn delete_timer(&mut self, time: i64, domain: TimeDomain) {
        host_timers::delete_timer(self.slot, time, domain.into());
    }

    pub fn map_get(&self, state: &MapState, key: &[u8]) -> Option<Vec<u8>> {
        host_state::map_get(self.slot, state.id, key)
    }

    pub fn map_put(&mut self, state: &MapState, key: &[u8], value: &[u8]) {
        host_state::map_put(self.slot, state.id, key, value)
    }

    pub fn map_remove(&mut self, state: &MapState, key: &[u8]) {
        host_state::map_remove(self.slot, state.id, key)
    }

    pub fn map_entries(&self, state: &MapState) -> Vec<(Vec<u8>, Vec<u8>)> {
        host_state::map_entries(self.slot, state.id)
    }

    pub fn map_clear(&mut self, state: &MapState) {
        host_state::map_clear(self.slot, state.id)
    }

    pub fn list_get(&self, state: &ListState) -> Vec<Vec<u8>> {
        host_state::list_get(self.slot, state.id)
    }

    pub fn list_append(&mut self, state: &ListState, value: &[u8]) {
        host_state::list_append(self.slot, state.id, value)
    }

    pub fn list_clear(&mut self, state: &ListState) {
        host_state::list_clear(self.slot, state.id)
    }

    /// A log line; the host tags it with job, operator and task.
    pub fn log(&self, level: LogLevel, message: &str) {
        host_log::log(level, message);
    }
}

impl From<TimeDomain> for types::TimeDomain {
    fn from(d: TimeDomain) -> Self {
        match d {
            TimeDomain::EventTime => types::TimeDomain::EventTime,
            TimeDomain::ProcessingTime => types::TimeDomain::ProcessingTime,
        }
    }
}

struct Live<O> {
    operator: O,
    value_states: u32,
    side_outputs: Vec<String>,
}

/// The one operator of this component instance.
pub struct Instance<O> {
    live: RefCell<Option<Live<O>>>,
}

impl<O> Instance<O> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Instance {
            live: RefCell::new(None),
        }
    }
}

pub fn init<O: Operator>(
    instance: &Instance<O>,
    config: Vec<u8>,
) -> std::result::Result<types::OperatorInfo, String> {
    let mut setup = Setup {
        config,
        info: types::OperatorInfo {
            value_states: Vec::new(),
            map_states: Vec::new(),
            list_states: Vec::new(),
            side_outputs: Vec::new(),
        },
    };
    let operator = O::init(&mut setup).map_err(|e| e.to_string())?;
    *instance.live.borrow_mut() = Some(Live {
        operator,
        value_states: setup.info.value_states.len() as u32,
        side_outputs: setup.info.side_outputs.clone(),
    });
    Ok(setup.info)
}

pub fn process<O: Operator>(
    instance: &Instance<O>,
    batch: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    run_batch(instance, &batch, BatchKind::Records).map_err(|e| e.to_string())
}

pub fn window<O: Operator>(
    instance: &Instance<O>,
    batch: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    run_batch(instance, &batch, BatchKind::Window).map_err(|e| e.to_string())
}

fn window_of(slot_key: &[u8]) -> Result<(&[u8], i64, i64)> {
    weir_abi::split_window_slot_key(slot_key)
        .ok_or_else(|| "window slot key shorter than a window".into())
}

pub fn on_timer<O: Operator>(
    instance: &Instance<O>,
    batch: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    run_batch(instance, &batch, BatchKind::Timers).map_err(|e| e.to_string())
}

fn run_batch<O: Operator>(
    instance: &Instance<O>,
    input: &[u8],
    kind: BatchKind,
) -> Result<Vec<u8>> {
    let mut live = instance.live.borrow_mut();
    let live = live
        .as_mut()
        .ok_or("the host called the operator before init")?;
    let mut reader = InputReader::new(input)?;
    let header = reader.header;
    if header.kind != kind {
        return Err("batch kind does not match the export called".into());
    }
    if header.value_state_count != live.value_states {
        return Err(format!(
            "host sent {} value states per key, the operator declared {}",
            header.value_state_count, live.value_states
        )
        .into());
    }
    let slots = header.slot_count as usize;
    let states = header.value_state_count;
    let mut table = SlotTable {
        keys: Vec::with_capacity(slots),
        values: Vec::with_capacity(slots * states as usize),
        dirty: vec![false; slots * states as usize],
        arena: Vec::new(),
        states,
    };
    let values = &mut table.values;
    while let Some(key) = reader.next_slot_with(|state| {
        values.push(match state {
            Some(v) => Val::input(offset_in(input, v)),
            None => Val::NONE,
        })
    })? {
        table.keys.push(offset_in(input, key));
    }
    let mut out = OutputWriter::with_capacity(input.len() + 64);
    while let Some(entry) = reader.next_entry()? {
        let (slot, timestamp) = match entry {
            Entry::Record {
                slot, timestamp, ..
            }
            | Entry::WindowAdd {
                slot, timestamp, ..
            } => (slot, timestamp),
            Entry::Timer { slot, time, .. } => (slot, time),
            Entry::WindowMerge { slot, .. } | Entry::WindowFire { slot } => {
                (slot, header.watermark)
            }
        };
        let mut ctx = Context {
            input,
            table: &mut table,
            out: &mut out,
            slot,
            timestamp,
            watermark: header.watermark,
            processing_time: header.processing_time,
            side_outputs: &live.side_outputs,
        };
        let key = range(input, ctx.table.keys[slot as usize]);
        match entry {
            Entry::Record { value, .. } => {
                let record = Record {
                    key,
                    value,
                    timestamp,
                    input: u32::from(header.input),
                };
                live.operator.process(record, &mut ctx)?;
            }
            Entry::Timer { time, domain, .. } => {
                let timer = Timer {
                    key,
                    time,
                    domain: match domain {
                        Domain::EventTime => TimeDomain::EventTime,
                        Domain::ProcessingTime => TimeDomain::ProcessingTime,
                    },
                };
                live.operator.on_timer(timer, &mut ctx)?;
            }
            Entry::WindowAdd { value, .. } => {
                let (key, start, end) = window_of(key)?;
                let record = Record {
                    key,
                    value,
                    timestamp,
                    input: 0,
                };
                let window = Window { key, start, end };
                live.operator
                    .window(WindowStep::Add(record), window, &mut ctx)?;
            }
            Entry::WindowMerge { from, .. } => {
                let (key, start, end) = window_of(key)?;
                let window = Window { key, start, end };
                live.operator
                    .window(WindowStep::Merge { from }, window, &mut ctx)?;
            }
            Entry::WindowFire { .. } => {
                let (key, start, end) = window_of(key)?;
                let window = Window { key, start, end };
                live.operator.window(WindowStep::Fire, window, &mut ctx)?;
            }
        }
    }
    for (index, dirty) in table.dirty.iter().enumerate() {
        if !*dirty {
            continue;
        }
        let slot = index as u32 / states;
        let state = index as u32 % states;
        out.update(slot, state, table.values[index].bytes(input, &table.arena));
    }
    Ok(out.finish())
}
