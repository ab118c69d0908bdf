//! The flat batch layout that crosses the Weir Wasm boundary.
//!
//! One `process` or `on-timer` call carries a whole batch in one `list<u8>`
//! and returns one `list<u8>`: a component call costs far more than copying a
//! few kilobytes, and per-record imports cap a keyed operator near an eighth
//! of native speed. Keyed value state travels inside the batch ("slots"), so
//! a keyed counter makes no import call at all.
//!
//! All integers are little-endian; there is no padding or alignment.
//!
//! Input, magic `WIB1`:
//! ```text
//! u32 magic  u16 kind (0 records, 1 timers, 2 window)  u16 input  i64 watermark  i64 processing_time
//! u32 slot_count  u32 entry_count  u32 value_state_count
//! slot_count x { u32 key_len, key, value_state_count x { u32 len | ABSENT, bytes } }
//! records: entry_count x { u32 slot, i64 timestamp, u32 value_len, value }
//! timers:  entry_count x { u32 slot, i64 time, u32 domain (0 event, 1 processing) }
//! window:  entry_count x { u32 slot, u32 op, then by op:
//!            0 add:   i64 timestamp, u32 value_len, value
//!            1 merge: u32 from_slot   (from_slot's accumulator folds into slot's)
//!            2 fire:  nothing         (emit the window's result) }
//! ```
//! `input` is which of the operator's inputs a records batch came from
//! (0-based, in the order of the job spec's `from`; always 0 for an operator
//! with one input and for other kinds): a batch never mixes inputs. Read as
//! one u32 with input 0, the field is the kind alone.
//! In a window batch each slot is one (key, window) pair: its key is
//! [`window_slot_key`] (the record key, then the window's start and end as
//! little-endian i64s) and its one value state is the window's accumulator.
//! Output, magic `WOB1`:
//! ```text
//! u32 magic  u32 emit_count  u32 update_count
//! emit_count x { u32 tag (0 main, n side output n-1), i64 timestamp, u32 key_len, key, u32 value_len, value }
//! update_count x { u32 slot, u32 state, u32 len | ABSENT (clear), bytes }
//! ```
//! Invariants: every slot index in entries and updates is below `slot_count`;
//! every state index is below `value_state_count`; an update for the same
//! (slot, state) later in the list wins. Readers check every length against
//! the buffer and never panic on malformed input: the host reads what an
//! untrusted guest wrote.

#![forbid(unsafe_code)]

/// `"WIB1"` read as a little-endian u32.
pub const INPUT_MAGIC: u32 = u32::from_le_bytes(*b"WIB1");
/// `"WOB1"` read as a little-endian u32.
pub const OUTPUT_MAGIC: u32 = u32::from_le_bytes(*b"WOB1");
/// Length marker for an absent value state (never set, or cleared).
pub const ABSENT: u32 = u32::MAX;
/// Output tag of the main output; side output `n` (0-based) is `n + 1`.
pub const MAIN_OUTPUT: u32 = 0;

const INPUT_HEADER: usize = 36;
const OUTPUT_HEADER: usize = 12;

/// What the entries of an input batch are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchKind {
    Records = 0,
    Timers = 1,
    Window = 2,
}

/// The one value state a window aggregate declares: its accumulator. The
/// host recognises window aggregates by it.
pub const WINDOW_ACC_STATE: &str = "window-acc";

/// The slot key of a (key, window) pair in a window batch.
pub fn window_slot_key(out: &mut Vec<u8>, key: &[u8], start: i64, end: i64) {
    out.extend_from_slice(key);
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&end.to_le_bytes());
}

/// Splits a window slot key into (key, start, end); `None` when too short.
pub fn split_window_slot_key(slot_key: &[u8]) -> Option<(&[u8], i64, i64)> {
    let split = slot_key.len().checked_sub(16)?;
    let (key, window) = slot_key.split_at(split);
    let start = i64::from_le_bytes(window[..8].try_into().ok()?);
    let end = i64::from_le_bytes(window[8..].try_into().ok()?);
    Some((key, start, end))
}

/// The clock a fired timer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    EventTime = 0,
    ProcessingTime = 1,
}

/// A malformed buffer: what was wrong and at which byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbiError {
    pub what: &'static str,
    pub offset: usize,
}

impl std::fmt::Display for AbiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed batch buffer: {} at byte {}",
            self.what, self.offset
        )
    }
}

impl std::error::Error for AbiError {}

/// A bounds-checked cursor over a buffer.
#[derive(Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AbiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(AbiError {
                what,
                offset: self.pos,
            })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    #[inline]
    pub fn u32(&mut self, what: &'static str) -> Result<u32, AbiError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub fn i64(&mut self, what: &'static str) -> Result<i64, AbiError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    /// A `u32` length followed by that many bytes.
    #[inline]
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], AbiError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    /// Like [`Cursor::bytes`], but [`ABSENT`] reads as `None`.
    #[inline]
    pub fn optional_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, AbiError> {
        let len = self.u32(what)?;
        if len == ABSENT {
            return Ok(None);
        }
        self.take(len as usize, what).map(Some)
    }
}

#[inline]
fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u32(buf, b.len() as u32);
    append(buf, b);
}

/// `extend_from_slice` that copies short slices inline: keys and values are
/// often 8 bytes, and a call into `memcpy` for each costs more than the copy.
#[inline(always)]
pub fn append(buf: &mut Vec<u8>, b: &[u8]) {
    if let Ok(eight) = <&[u8; 8]>::try_from(b) {
        buf.extend_from_slice(eight);
    } else if b.len() < 8 {
        for &byte in b {
            buf.push(byte);
        }
    } else {
        buf.extend_from_slice(b);
    }
}

#[inline]
fn put_optional(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(buf, b),
        None => put_u32(buf, ABSENT),
    }
}

fn patch_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes an input batch: all slots first, then all entries.
pub struct InputWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    slots: u32,
    entries: u32,
}

impl<'a> InputWriter<'a> {
    /// Starts a batch at the end of `buf` (normally an emptied, reused buffer).
    pub fn new(
        buf: &'a mut Vec<u8>,
        kind: BatchKind,
        watermark: i64,
        processing_time: i64,
        value_state_count: u32,
    ) -> Self {
        let start = buf.len();
        put_u32(buf, INPUT_MAGIC);
        put_u32(buf, kind as u32);
        put_i64(buf, watermark);
        put_i64(buf, processing_time);
        put_u32(buf, 0);
        put_u32(buf, 0);
        put_u32(buf, value_state_count);
        InputWriter {
            buf,
            start,
            slots: 0,
            entries: 0,
        }
    }

    /// Begins a slot; follow with exactly `value_state_count` calls of
    /// [`InputWriter::slot_state`].
    /// Marks a records batch as coming from input `input` of the operator.
    pub fn set_input(&mut self, input: u16) {
        let at = self.start + 6;
        self.buf[at..at + 2].copy_from_slice(&input.to_le_bytes());
    }

    #[inline]
    pub fn slot_key(&mut self, key: &[u8]) {
        debug_assert_eq!(self.entries, 0, "slots precede entries");
        put_bytes(self.buf, key);
        self.slots += 1;
    }

    #[inline]
    pub fn slot_state(&mut self, value: Option<&[u8]>) {
        put_optional(self.buf, value);
    }

    /// Writes a slot state whose bytes `fill` appends to the buffer directly;
    /// `fill` returns `false` when the state is absent.
    pub fn slot_state_with<E>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<bool, E>,
    ) -> Result<(), E> {
        let at = self.buf.len();
        put_u32(self.buf, 0);
        let present = fill(self.buf)?;
        if present {
            let len = (self.buf.len() - at - 4) as u32;
            patch_u32(self.buf, at, len);
        } else {
            self.buf.truncate(at);
            put_u32(self.buf, ABSENT);
        }
        Ok(())
    }

    #[inline]
    pub fn record(&mut self, slot: u32, timestamp: i64, value: &[u8]) {
        put_u32(self.buf, slot);
        put_i64(self.buf, timestamp);
        put_bytes(self.buf, value);
        self.entries += 1;
    }

    #[inline]
    pub fn window_add(&mut self, slot: u32, timestamp: i64, value: &[u8]) {
        put_u32(self.buf, slot);
        put_u32(self.buf, 0);
        put_i64(self.buf, timestamp);
        put_bytes(self.buf, value);
        self.entries += 1;
    }

    pub fn window_merge(&mut self, slot: u32, from: u32) {
        put_u32(self.buf, slot);
        put_u32(self.buf, 1);
        put_u32(self.buf, from);
        self.entries += 1;
    }

    pub fn window_fire(&mut self, slot: u32) {
        put_u32(self.buf, slot);
        put_u32(self.buf, 2);
        self.entries += 1;
    }

    #[inline]
    pub fn timer(&mut self, slot: u32, time: i64, domain: Domain) {
        put_u32(self.buf, slot);
        put_i64(self.buf, time);
        put_u32(self.buf, domain as u32);
        self.entries += 1;
    }

    pub fn finish(self) {
        patch_u32(self.buf, self.start + 24, self.slots);
        patch_u32(self.buf, self.start + 28, self.entries);
    }
}

/// The fixed part of an input batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputHeader {
    pub kind: BatchKind,
    /// Which input of a two-input operator a records batch came from.
    pub input: u16,
    pub watermark: i64,
    pub processing_time: i64,
    pub slot_count: u32,
    pub entry_count: u32,
    pub value_state_count: u32,
}

/// One slot of an input batch: a distinct key and its value states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot<'a> {
    pub key: &'a [u8],
    pub states: Vec<Option<&'a [u8]>>,
}

/// One entry of an input batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Record {
        slot: u32,
        timestamp: i64,
        value: &'a [u8],
    },
    Timer {
        slot: u32,
        time: i64,
        domain: Domain,
    },
    /// Fold a record into the slot's window accumulator.
    WindowAdd {
        slot: u32,
        timestamp: i64,
        value: &'a [u8],
    },
    /// Fold `from`'s accumulator into `slot`'s and clear `from`'s (session
    /// windows merging).
    WindowMerge { slot: u32, from: u32 },
    /// Emit the result of the slot's window.
    WindowFire { slot: u32 },
}

/// Reads an input batch; slots are read eagerly by the caller through
/// [`InputReader::next_slot`], entries through [`InputReader::next_entry`].
pub struct InputReader<'a> {
    pub header: InputHeader,
    cursor: Cursor<'a>,
    slots_left: u32,
    entries_left: u32,
}

impl<'a> InputReader<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, AbiError> {
        let mut c = Cursor::new(buf);
        if c.u32("input magic")? != INPUT_MAGIC {
            return Err(AbiError {
                what: "input magic is not WIB1",
                offset: 0,
            });
        }
        let kind_and_input = c.u32("batch kind")?;
        let input = (kind_and_input >> 16) as u16;
        let kind = match kind_and_input & 0xffff {
            0 => BatchKind::Records,
            1 => BatchKind::Timers,
            2 => BatchKind::Window,
            _ => {
                return Err(AbiError {
                    what: "unknown batch kind",
                    offset: 4,
                });
            }
        };
        if input != 0 && kind != BatchKind::Records {
            return Err(AbiError {
                what: "only a records batch names an input",
                offset: 6,
            });
        }
        let header = InputHeader {
            kind,
            input,
            watermark: c.i64("watermark")?,
            processing_time: c.i64("processing time")?,
            slot_count: c.u32("slot count")?,
            entry_count: c.u32("entry count")?,
            value_state_count: c.u32("value state count")?,
        };
        debug_assert_eq!(c.position(), INPUT_HEADER);
        Ok(InputReader {
            header,
            cursor: c,
            slots_left: header.slot_count,
            entries_left: header.entry_count,
        })
    }

    /// The next slot's key, after handing each of its states in order to
    /// `each_state`.
    #[inline]
    pub fn next_slot_with(
        &mut self,
        mut each_state: impl FnMut(Option<&'a [u8]>),
    ) -> Result<Option<&'a [u8]>, AbiError> {
        if self.slots_left == 0 {
            return Ok(None);
        }
        self.slots_left -= 1;
        let key = self.cursor.bytes("slot key")?;
        for _ in 0..self.header.value_state_count {
            each_state(self.cursor.optional_bytes("slot state")?);
        }
        Ok(Some(key))
    }

    pub fn next_slot(&mut self) -> Result<Option<Slot<'a>>, AbiError> {
        let mut states = Vec::new();
        Ok(self
            .next_slot_with(|state| states.push(state))?
            .map(|key| Slot { key, states }))
    }

    /// The next entry; all slots must have been read first.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>, AbiError> {
        if self.slots_left != 0 {
            return Err(AbiError {
                what: "entries read before all slots",
                offset: self.cursor.position(),
            });
        }
        if self.entries_left == 0 {
            return Ok(None);
        }
        self.entries_left -= 1;
        let at = self.cursor.position();
        let slot = self.cursor.u32("entry slot")?;
        if slot >= self.header.slot_count {
            return Err(AbiError {
                what: "entry slot out of range",
                offset: at,
            });
        }
        Ok(Some(match self.header.kind {
            BatchKind::Records => Entry::Record {
                slot,
                timestamp: self.cursor.i64("record timestamp")?,
                value: self.cursor.bytes("record value")?,
            },
            BatchKind::Timers => Entry::Timer {
                slot,
                time: self.cursor.i64("timer time")?,
                domain: match self.cursor.u32("timer domain")? {
                    0 => Domain::EventTime,
                    1 => Domain::ProcessingTime,
                    _ => {
                        return Err(AbiError {
                            what: "unknown timer domain",
                            offset: at,
                        });
                    }
                },
            },
            BatchKind::Window => match self.cursor.u32("window op")? {
                0 => Entry::WindowAdd {
                    slot,
                    timestamp: self.cursor.i64("record timestamp")?,
                    value: self.cursor.bytes("record value")?,
                },
                1 => {
                    let from = self.cursor.u32("merge source slot")?;
                    if from >= self.header.slot_count || from == slot {
                        return Err(AbiError {
                            what: "merge source slot out of range",
                            offset: at,
                        });
                    }
                    Entry::WindowMerge { slot, from }
                }
                2 => Entry::WindowFire { slot },
                _ => {
                    return Err(AbiError {
                        what: "unknown window op",
                        offset: at,
                    });
                }
            },
        }))
    }
}

/// Writes an output batch: emits as they happen, then state updates.
pub struct OutputWriter {
    buf: Vec<u8>,
    emits: u32,
    updates: u32,
}

impl Default for OutputWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl OutputWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(OUTPUT_HEADER));
        put_u32(&mut buf, OUTPUT_MAGIC);
        put_u32(&mut buf, 0);
        put_u32(&mut buf, 0);
        OutputWriter {
            buf,
            emits: 0,
            updates: 0,
        }
    }

    #[inline]
    pub fn emit(&mut self, tag: u32, timestamp: i64, key: &[u8], value: &[u8]) {
        debug_assert_eq!(self.updates, 0, "emits precede updates");
        // One capacity check for the whole record, and the fixed-size fields
        // in as few appends as the variable-size ones allow: in a guest each
        // append reloads the vector's length and pointer from memory.
        self.buf.reserve(24 + key.len() + value.len());
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(&tag.to_le_bytes());
        head[4..12].copy_from_slice(&timestamp.to_le_bytes());
        head[12..].copy_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&head);
        append(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
        self.emits += 1;
    }

    #[inline]
    pub fn update(&mut self, slot: u32, state: u32, value: Option<&[u8]>) {
        self.buf.reserve(12 + value.map_or(0, <[u8]>::len));
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&slot.to_le_bytes());
        head[4..8].copy_from_slice(&state.to_le_bytes());
        head[8..].copy_from_slice(&value.map_or(ABSENT, |v| v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&head);
        if let Some(v) = value {
            append(&mut self.buf, v);
        }
        self.updates += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        patch_u32(&mut self.buf, 4, self.emits);
        patch_u32(&mut self.buf, 8, self.updates);
        self.buf
    }
}

/// One emitted record of an output batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emit<'a> {
    pub tag: u32,
    pub timestamp: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// One value-state update of an output batch; `value: None` clears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update<'a> {
    pub slot: u32,
    pub state: u32,
    pub value: Option<&'a [u8]>,
}

/// Reads an output batch written by an untrusted guest.
pub struct OutputReader<'a> {
    cursor: Cursor<'a>,
    emits_left: u32,
    updates_left: u32,
}

impl<'a> OutputReader<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, AbiError> {
        let mut c = Cursor::new(buf);
        if c.u32("output magic")? != OUTPUT_MAGIC {
            return Err(AbiError {
                what: "output magic is not WOB1",
                offset: 0,
            });
        }
        let emits_left = c.u32("emit count")?;
        let updates_left = c.u32("update count")?;
        Ok(OutputReader {
            cursor: c,
            emits_left,
            updates_left,
        })
    }

    pub fn emit_count(&self) -> u32 {
        self.emits_left
    }

    #[inline]
    pub fn next_emit(&mut self) -> Result<Option<Emit<'a>>, AbiError> {
        if self.emits_left == 0 {
            return Ok(None);
        }
        self.emits_left -= 1;
        Ok(Some(Emit {
            tag: self.cursor.u32("emit tag")?,
            timestamp: self.cursor.i64("emit timestamp")?,
            key: self.cursor.bytes("emit key")?,
            value: self.cursor.bytes("emit value")?,
        }))
    }

    /// The next update; all emits must have been read first. Slot and state
    /// ranges are the caller's to check: only it knows the batch.
    #[inline]
    pub fn next_update(&mut self) -> Result<Option<Update<'a>>, AbiError> {
        if self.emits_left != 0 {
            return Err(AbiError {
                what: "updates read before all emits",
                offset: self.cursor.position(),
            });
        }
        if self.updates_left == 0 {
            if !self.cursor.is_empty() {
                return Err(AbiError {
                    what: "trailing bytes after the last update",
                    offset: self.cursor.position(),
                });
            }
            return Ok(None);
        }
        self.updates_left -= 1;
        Ok(Some(Update {
            slot: self.cursor.u32("update slot")?,
            state: self.cursor.u32("update state")?,
            value: self.cursor.optional_bytes("update value")?,
        }))
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn window_batch_round_trip_and_bad_merge() {
        let mut key = Vec::new();
        window_slot_key(&mut key, b"user", -5, 10);
        assert_eq!(split_window_slot_key(&key), Some((&b"user"[..], -5, 10)));
        assert_eq!(split_window_slot_key(b"short"), None);
        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Window, 0, 0, 1);
        w.slot_key(&key);
        w.slot_state(None);
        w.slot_key(&key);
        w.slot_state(Some(b"acc"));
        w.window_add(0, 3, b"v");
        w.window_merge(0, 1);
        w.window_fire(0);
        w.finish();
        let mut r = InputReader::new(&buf).unwrap();
        while r.next_slot().unwrap().is_some() {}
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::WindowAdd {
                slot: 0,
                timestamp: 3,
                value: b"v"
            })
        );
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::WindowMerge { slot: 0, from: 1 })
        );
        assert_eq!(r.next_entry().unwrap(), Some(Entry::WindowFire { slot: 0 }));
        assert_eq!(r.next_entry().unwrap(), None);

        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Window, 0, 0, 1);
        w.slot_key(&key);
        w.slot_state(None);
        w.window_merge(0, 0);
        w.finish();
        let mut r = InputReader::new(&buf).unwrap();
        while r.next_slot().unwrap().is_some() {}
        assert_eq!(
            r.next_entry().unwrap_err().what,
            "merge source slot out of range"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_round_trip() {
        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Records, 7, 9, 2);
        w.slot_key(b"a");
        w.slot_state(Some(b"1"));
        w.slot_state(None);
        w.slot_key(b"bb");
        w.slot_state(None);
        w.slot_state(Some(b""));
        w.record(1, -5, b"x");
        w.record(0, 6, b"yz");
        w.finish();
        let mut r = InputReader::new(&buf).unwrap();
        assert_eq!(r.header.slot_count, 2);
        assert_eq!(r.header.watermark, 7);
        assert_eq!(r.header.input, 0);
        let s0 = r.next_slot().unwrap().unwrap();
        assert_eq!(
            (s0.key, s0.states),
            (&b"a"[..], vec![Some(&b"1"[..]), None])
        );
        let s1 = r.next_slot().unwrap().unwrap();
        assert_eq!(s1.states, vec![None, Some(&b""[..])]);
        assert!(r.next_slot().unwrap().is_none());
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::Record {
                slot: 1,
                timestamp: -5,
                value: b"x"
            })
        );
        assert!(r.next_entry().unwrap().is_some());
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn a_records_batch_names_its_input_and_no_other_kind_may() {
        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Records, 0, 0, 0);
        w.set_input(1);
        w.finish();
        let r = InputReader::new(&buf).unwrap();
        assert_eq!((r.header.kind, r.header.input), (BatchKind::Records, 1));

        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Timers, 0, 0, 0);
        w.set_input(1);
        w.finish();
        let e = InputReader::new(&buf).err().unwrap();
        assert_eq!(e.what, "only a records batch names an input");
    }

    #[test]
    fn output_round_trip_and_truncation_is_an_error() {
        let mut w = OutputWriter::default();
        w.emit(0, 3, b"k", b"v");
        w.update(0, 0, Some(b"s"));
        w.update(0, 1, None);
        let buf = w.finish();
        let mut r = OutputReader::new(&buf).unwrap();
        assert_eq!(r.next_emit().unwrap().unwrap().value, b"v");
        assert!(r.next_emit().unwrap().is_none());
        assert_eq!(r.next_update().unwrap().unwrap().value, Some(&b"s"[..]));
        assert_eq!(r.next_update().unwrap().unwrap().value, None);
        assert!(r.next_update().unwrap().is_none());
        for cut in 0..buf.len() {
            let mut ok = true;
            match OutputReader::new(&buf[..cut]) {
                Err(_) => ok = false,
                Ok(mut r) => {
                    while let Ok(Some(_)) = r.next_emit() {}
                    loop {
                        match r.next_update() {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                    }
                }
            }
            assert!(!ok, "a buffer cut at {cut} must not read as complete");
        }
    }

    #[test]
    fn out_of_range_slot_is_rejected() {
        let mut buf = Vec::new();
        let mut w = InputWriter::new(&mut buf, BatchKind::Timers, 0, 0, 0);
        w.slot_key(b"a");
        w.timer(3, 1, Domain::EventTime);
        w.finish();
        let mut r = InputReader::new(&buf).unwrap();
        r.next_slot().unwrap();
        assert!(r.next_entry().is_err());
    }
}
