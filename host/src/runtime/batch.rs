//! Record batches: the unit that moves between operators and tasks.
//!
//! A batch keeps all keys and values in one byte arena and a fixed-size entry
//! per record, so pushing a record never allocates once the batch has grown,
//! and a batch is reused after it is drained. A record's key group is cached
//! in its entry once a keyed edge has computed it, so the receiving task does
//! not hash the key again.
//!
//! A batch bound for several receivers is not copied apart: each receiver
//! gets the shared batch and the list of its rows ([`SharedRows`]), and reads
//! them through a [`Records`] view. The batch goes back to its sender's pool
//! when the last receiver drops it. Copying each record into a per-receiver
//! batch took 18% of the CPU time of keyed-count at parallelism 2; without
//! the copy, the same time goes to reading the rows, which still cross
//! between the cores, but each batch waits in no per-receiver buffer (p99
//! latency 2-4x lower at parallelism 2).

/// Marks an entry whose key group has not been computed.
pub const NO_KEY_GROUP: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u32,
    key_len: u32,
    value_len: u32,
    key_group: u32,
    timestamp: i64,
}

/// How many records ahead of the one being read a loop over a [`Records`]
/// view asks for with [`Records::prefetch`].
pub const PREFETCH_AHEAD: usize = 16;

/// One record, borrowed from a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Event time in milliseconds.
    pub timestamp: i64,
    /// The cached key group, or [`NO_KEY_GROUP`].
    pub key_group: u32,
}

#[derive(Clone, Debug, Default)]
pub struct RecordBatch {
    data: Vec<u8>,
    entries: Vec<Entry>,
    /// When the oldest record in the batch entered the job (for latency).
    pub origin: Option<std::time::Instant>,
}

impl RecordBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        RecordBatch {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(records),
            origin: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the batch's arena holds without growing.
    pub fn byte_capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Key and value bytes of all records.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
        self.origin = None;
    }

    /// Keeps the first `len` records.
    pub fn truncate(&mut self, len: usize) {
        if let Some(e) = self.entries.get(len) {
            self.data.truncate(e.start as usize);
            self.entries.truncate(len);
        }
    }

    /// Keeps the older of the batch's origin and `other`.
    pub fn merge_origin(&mut self, other: Option<std::time::Instant>) {
        self.origin = match (self.origin, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    #[inline]
    pub fn push(&mut self, key: &[u8], value: &[u8], timestamp: i64) {
        self.push_with_group(key, value, timestamp, NO_KEY_GROUP);
    }

    #[inline]
    pub fn push_with_group(&mut self, key: &[u8], value: &[u8], timestamp: i64, key_group: u32) {
        let start = self.data.len() as u32;
        self.data.reserve(key.len() + value.len());
        weir_abi::append(&mut self.data, key);
        weir_abi::append(&mut self.data, value);
        self.entries.push(Entry {
            start,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
            key_group,
            timestamp,
        });
    }

    /// Appends a record whose value is written by `write_value` straight into
    /// the arena (no intermediate buffer).
    pub fn push_with(
        &mut self,
        key: &[u8],
        timestamp: i64,
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.data.len();
        self.data.extend_from_slice(key);
        write_value(&mut self.data);
        self.entries.push(Entry {
            start: start as u32,
            key_len: key.len() as u32,
            value_len: (self.data.len() - start - key.len()) as u32,
            key_group: NO_KEY_GROUP,
            timestamp,
        });
    }

    #[inline]
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let e = self.entries[i];
        let key_end = (e.start + e.key_len) as usize;
        RecordRef {
            key: &self.data[e.start as usize..key_end],
            value: &self.data[key_end..key_end + e.value_len as usize],
            timestamp: e.timestamp,
            key_group: e.key_group,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The highest event time in the batch.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.timestamp).max()
    }

    /// Caches record `i`'s key group.
    #[inline]
    pub fn set_key_group(&mut self, i: usize, key_group: u32) {
        self.entries[i].key_group = key_group;
    }

    /// Key and value bytes of record `i`.
    #[inline]
    fn record_bytes(&self, i: usize) -> usize {
        let e = &self.entries[i];
        (e.key_len + e.value_len) as usize
    }
}

/// The records an operator or a tail is handed: a whole batch, or the listed
/// rows of one, in the order listed.
#[derive(Clone, Copy, Debug)]
pub struct Records<'a> {
    batch: &'a RecordBatch,
    rows: Option<&'a [u32]>,
}

impl<'a> From<&'a RecordBatch> for Records<'a> {
    fn from(batch: &'a RecordBatch) -> Self {
        Records { batch, rows: None }
    }
}

impl<'a> Records<'a> {
    pub fn rows(batch: &'a RecordBatch, rows: &'a [u32]) -> Self {
        Records {
            batch,
            rows: Some(rows),
        }
    }

    pub fn len(&self) -> usize {
        match self.rows {
            Some(rows) => rows.len(),
            None => self.batch.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th record of the view. Always inlined: called as a function,
    /// it cost a keyed job at parallelism 1 about 5% of its throughput.
    #[inline(always)]
    pub fn get(&self, i: usize) -> RecordRef<'a> {
        match self.rows {
            Some(rows) => self.batch.get(rows[i] as usize),
            None => self.batch.get(i),
        }
    }

    /// Asks the cache for what reading the view's record `i` soon will
    /// touch: its entry, and the key and value of the record `DATA_LEAD`
    /// rows before it, whose entry an earlier call asked for. Only a view of
    /// rows does: a whole batch is read in order, which the hardware
    /// prefetches by itself, while the rows of a shared batch skip around
    /// memory another core wrote.
    #[inline(always)]
    pub fn prefetch(&self, i: usize) {
        const DATA_LEAD: usize = 8;
        let Some(rows) = self.rows else { return };
        if let Some(&row) = rows.get(i) {
            prefetch_read(std::ptr::from_ref(&self.batch.entries[row as usize]).cast());
        }
        if let Some(&row) = i.checked_sub(DATA_LEAD).and_then(|j| rows.get(j)) {
            let start = self.batch.entries[row as usize].start as usize;
            if let Some(byte) = self.batch.data.get(start) {
                prefetch_read(std::ptr::from_ref(byte));
            }
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'a>> + 'a {
        let view = *self;
        (0..view.len()).map(move |i| view.get(i))
    }

    pub fn origin(&self) -> Option<std::time::Instant> {
        self.batch.origin
    }

    /// Key and value bytes of the records in view.
    pub fn byte_len(&self) -> usize {
        match self.rows {
            Some(rows) => rows
                .iter()
                .map(|&i| self.batch.record_bytes(i as usize))
                .sum(),
            None => self.batch.byte_len(),
        }
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.iter().map(|r| r.timestamp).max()
    }

    /// The whole batch, when the view is all of it.
    pub fn whole(&self) -> Option<&'a RecordBatch> {
        self.rows.is_none().then_some(self.batch)
    }

    /// Copies the records in view to the end of `out`.
    pub fn copy_to(&self, out: &mut RecordBatch) {
        for r in self.iter() {
            out.push_with_group(r.key, r.value, r.timestamp, r.key_group);
        }
        out.merge_origin(self.origin());
    }
}

#[inline(always)]
fn prefetch_read(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults or changes memory; the
    // pointer is in bounds anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// A batch several receivers read, which returns to its sender's pool when
/// the last of them drops it.
#[derive(Debug)]
pub struct PooledBatch {
    batch: RecordBatch,
    home: crossbeam_channel::Sender<RecordBatch>,
}

impl PooledBatch {
    pub fn new(batch: RecordBatch, home: crossbeam_channel::Sender<RecordBatch>) -> Self {
        PooledBatch { batch, home }
    }
}

impl Drop for PooledBatch {
    fn drop(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        // A full pool means the sender holds enough already.
        let _ = self.home.try_send(batch);
    }
}

/// One receiver's rows of a shared batch.
#[derive(Debug)]
pub struct SharedRows {
    batch: std::sync::Arc<PooledBatch>,
    rows: Vec<u32>,
}

impl SharedRows {
    pub fn new(batch: std::sync::Arc<PooledBatch>, rows: Vec<u32>) -> Self {
        SharedRows { batch, rows }
    }

    pub fn records(&self) -> Records<'_> {
        Records::rows(&self.batch.batch, &self.rows)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_read_back() {
        let mut b = RecordBatch::new();
        b.push(b"k1", b"v1", 5);
        b.push_with(b"k2", 7, |out| out.extend_from_slice(b"value2"));
        b.push_with_group(b"", b"", -1, 3);
        assert_eq!(b.len(), 3);
        assert_eq!(b.get(0).value, b"v1");
        assert_eq!(b.get(1).key, b"k2");
        assert_eq!(b.get(1).value, b"value2");
        assert_eq!(b.get(2).key_group, 3);
        assert_eq!(b.max_timestamp(), Some(7));
    }

    #[test]
    fn a_view_of_rows_reads_them_in_the_order_listed() {
        let mut b = RecordBatch::new();
        for i in 0..5u8 {
            b.push(&[i], &[i, i], i64::from(i));
        }
        let rows = [3, 0, 4];
        let view = Records::rows(&b, &rows);
        let keys: Vec<u8> = view.iter().map(|r| r.key[0]).collect();
        assert_eq!(keys, vec![3, 0, 4]);
        assert_eq!(view.byte_len(), 9);
        assert_eq!(view.max_timestamp(), Some(4));
        let mut copy = RecordBatch::new();
        view.copy_to(&mut copy);
        assert_eq!(copy.len(), 3);
        assert_eq!(copy.get(1).value, &[0, 0]);
    }

    #[test]
    fn a_shared_batch_returns_to_its_pool_when_its_last_reader_drops_it() {
        let (home, pool) = crossbeam_channel::bounded(4);
        let mut b = RecordBatch::with_capacity(8, 64);
        b.push(b"k", b"v", 1);
        let shared = std::sync::Arc::new(PooledBatch::new(b, home));
        let first = SharedRows::new(shared.clone(), vec![0]);
        let second = SharedRows::new(shared, vec![]);
        drop(first);
        assert!(pool.try_recv().is_err(), "still read by the second");
        assert_eq!(second.records().len(), 0);
        drop(second);
        let back = pool.try_recv().expect("returned");
        assert!(back.is_empty());
        assert!(back.byte_capacity() >= 64);
    }
}
