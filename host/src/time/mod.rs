//! Event time: watermark generation, min-of-inputs tracking, timers.
//!
//! Watermarks are milliseconds of event time; `i64::MIN` means "nothing yet",
//! `i64::MAX` means "this input has ended". A task's watermark is the minimum
//! over its inputs that have not ended, and it never goes backwards.
//! Timers fire when the watermark (event time) or the wall clock (processing
//! time) reaches them, in timestamp order, once per (key, time).

use std::collections::BTreeMap;

/// Bounded out-of-orderness: watermark = highest event time seen - bound - 1.
#[derive(Clone, Debug)]
pub struct BoundedOutOfOrderness {
    bound_ms: i64,
    max_timestamp: i64,
}

impl BoundedOutOfOrderness {
    pub fn new(bound_ms: i64) -> Self {
        Self::resuming(bound_ms, i64::MIN)
    }

    /// A generator that has already seen `max_timestamp` (from a checkpoint).
    pub fn resuming(bound_ms: i64, max_timestamp: i64) -> Self {
        BoundedOutOfOrderness {
            bound_ms,
            max_timestamp,
        }
    }

    #[inline]
    pub fn observe(&mut self, timestamp: i64) {
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// The highest event time seen: what a checkpoint keeps of the generator.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// The watermark, with the highest time seen capped at `cap` (the
    /// slowest split's, when the source reads several).
    pub fn current_capped(&self, cap: Option<i64>) -> i64 {
        let max = cap.map_or(self.max_timestamp, |c| c.min(self.max_timestamp));
        if max == i64::MIN {
            i64::MIN
        } else {
            max.saturating_sub(self.bound_ms).saturating_sub(1)
        }
    }

    pub fn current(&self) -> i64 {
        if self.max_timestamp == i64::MIN {
            i64::MIN
        } else {
            self.max_timestamp
                .saturating_sub(self.bound_ms)
                .saturating_sub(1)
        }
    }
}

/// The watermarks of a task's inputs and their minimum.
///
/// The minimum is taken over the inputs that are neither idle nor ended; an
/// ended input counts as `i64::MAX`. While every input that has not ended is
/// idle, the watermark holds (an idle input may resume with old data, so
/// nothing may be assumed about it); once all inputs have ended it is
/// `i64::MAX`. The result never goes backwards.
#[derive(Clone, Debug)]
pub struct InputWatermarks {
    marks: Vec<i64>,
    idle: Vec<bool>,
    current: i64,
}

impl InputWatermarks {
    pub fn new(inputs: usize) -> Self {
        Self::starting_at(inputs, i64::MIN)
    }

    /// Inputs whose watermark is already `watermark` (a restored task:
    /// event time does not go back across a recovery).
    pub fn starting_at(inputs: usize, watermark: i64) -> Self {
        InputWatermarks {
            marks: vec![watermark; inputs],
            idle: vec![false; inputs],
            current: watermark,
        }
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    fn recompute(&mut self) -> Option<i64> {
        let mut min = i64::MAX;
        let mut active = false;
        let mut waiting = false;
        for (&mark, &idle) in self.marks.iter().zip(&self.idle) {
            if mark == i64::MAX {
                continue;
            }
            if idle {
                waiting = true;
            } else {
                active = true;
                min = min.min(mark);
            }
        }
        if !active && waiting {
            return None;
        }
        if min > self.current {
            self.current = min;
            Some(min)
        } else {
            None
        }
    }

    /// Records an input's watermark; returns the task watermark if it advanced.
    pub fn update(&mut self, input: usize, watermark: i64) -> Option<i64> {
        self.idle[input] = false;
        let mark = &mut self.marks[input];
        *mark = (*mark).max(watermark);
        self.recompute()
    }

    /// Records from an input make it active again (its old watermark counts
    /// until it sends a newer one).
    pub fn activate(&mut self, input: usize) {
        self.idle[input] = false;
    }

    /// An idle input stops holding the minimum back.
    pub fn set_idle(&mut self, input: usize) -> Option<i64> {
        self.idle[input] = true;
        self.recompute()
    }

    /// Inputs currently idle (excluded from the minimum).
    pub fn idle_count(&self) -> usize {
        self.idle.iter().filter(|&&i| i).count()
    }

    /// True when no input that has not ended is active.
    pub fn all_idle(&self) -> bool {
        self.marks
            .iter()
            .zip(&self.idle)
            .all(|(&m, &idle)| m == i64::MAX || idle)
            && self.idle.iter().any(|&i| i)
    }

    /// An ended input no longer holds the minimum back.
    pub fn end(&mut self, input: usize) -> Option<i64> {
        self.idle[input] = false;
        self.update(input, i64::MAX)
    }
}

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

/// Timers of one operator instance, deduplicated per (time, key).
///
/// Timers are kept in buckets by time: many keys usually share a time (every
/// key's window ends together), so registering is a hash insert into its
/// time's bucket instead of an ordered insert comparing keys. Within a time,
/// timers fire in the order they were registered. A bucket's keys live back
/// to back in one buffer, and emptied buckets are kept for the next times,
/// so a steady stream of timers allocates nothing.
#[derive(Debug, Default)]
pub struct TimerService {
    event: BTreeMap<i64, Bucket>,
    processing: BTreeMap<i64, Bucket>,
    spare: Vec<Bucket>,
    len: usize,
}

/// Emptied buckets kept for reuse.
const SPARE_BUCKETS: usize = 8;
/// A bucket whose buffers grew past room for this many keys, or this many
/// key bytes, is not kept for reuse (it would pin the memory of one
/// unusually busy time).
const SPARE_BUCKET_KEYS: usize = 1 << 16;
const SPARE_BUCKET_BYTES: usize = 4 << 20;
/// `Bucket::spans` length of a deleted key (no key is that long: a
/// bucket's keys together stay under 4 GiB).
const DELETED: u32 = u32::MAX;

/// The keys of the timers of one time, in registration order, with an
/// index for deduplication and deletion.
#[derive(Debug, Default)]
struct Bucket {
    bytes: Vec<u8>,
    /// (start in `bytes`, length) of each registered key, in registration
    /// order; a deleted key's length is [`DELETED`] until the next
    /// compaction.
    spans: Vec<(u32, u32)>,
    /// Positions in `spans` of the live keys, by key hash.
    index: hashbrown::HashTable<u32>,
    /// Keys before this position have been popped.
    head: usize,
    /// Deleted keys at or after `head`.
    deleted: usize,
}

fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

fn span_key<'a>(bytes: &'a [u8], spans: &[(u32, u32)], at: u32) -> &'a [u8] {
    let (start, len) = spans[at as usize];
    &bytes[start as usize..start as usize + len as usize]
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.index.clear();
        self.head = 0;
        self.deleted = 0;
    }

    fn insert(&mut self, key: &[u8]) -> bool {
        let Bucket {
            bytes,
            spans,
            index,
            ..
        } = self;
        let hash = key_hash(key);
        if index
            .find(hash, |&i| span_key(bytes, spans, i) == key)
            .is_some()
        {
            return false;
        }
        let at = u32::try_from(spans.len()).expect("under 2^32 timers at one time");
        // Offsets are u32, and a length of `DELETED` marks a deleted key.
        assert!(
            bytes.len() + key.len() < DELETED as usize,
            "under 4 GiB of timer keys at one time"
        );
        spans.push((bytes.len() as u32, key.len() as u32));
        bytes.extend_from_slice(key);
        index.insert_unique(hash, at, |&i| key_hash(span_key(bytes, spans, i)));
        true
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let Bucket {
            bytes,
            spans,
            index,
            ..
        } = self;
        let Ok(found) = index.find_entry(key_hash(key), |&i| span_key(bytes, spans, i) == key)
        else {
            return false;
        };
        let (at, _) = found.remove();
        spans[at as usize].1 = DELETED;
        self.deleted += 1;
        if self.deleted > 64 && self.deleted > self.index.len() && !self.index.is_empty() {
            self.compact();
        }
        true
    }

    /// Drops popped and deleted keys from the buffers. Called once deleted
    /// keys outnumber the live ones, so its cost is amortised over the
    /// deletions; popped keys go when the bucket empties.
    fn compact(&mut self) {
        let live_bytes: usize = self.live().map(<[u8]>::len).sum();
        let mut bytes = Vec::with_capacity(live_bytes);
        let mut spans = Vec::with_capacity(self.index.len());
        for &(start, len) in &self.spans[self.head..] {
            if len != DELETED {
                spans.push((bytes.len() as u32, len));
                bytes.extend_from_slice(&self.bytes[start as usize..(start + len) as usize]);
            }
        }
        self.index.clear();
        for i in 0..spans.len() as u32 {
            self.index
                .insert_unique(key_hash(span_key(&bytes, &spans, i)), i, |&j| {
                    key_hash(span_key(&bytes, &spans, j))
                });
        }
        self.bytes = bytes;
        self.spans = spans;
        self.head = 0;
        self.deleted = 0;
    }

    /// Moves up to `max` keys, oldest first, into `out` as timers of `time`.
    fn pop_into(&mut self, time: i64, max: usize, out: &mut DueTimers) {
        if self.index.len() <= max {
            // All of them: the index goes as a whole, not key by key.
            for &(start, len) in &self.spans[self.head..] {
                if len != DELETED {
                    out.push(time, &self.bytes[start as usize..(start + len) as usize]);
                }
            }
            self.clear();
            return;
        }
        let mut taken = 0;
        while taken < max && self.head < self.spans.len() {
            let at = self.head;
            self.head += 1;
            let (start, len) = self.spans[at];
            if len == DELETED {
                self.deleted -= 1;
                continue;
            }
            let key = &self.bytes[start as usize..(start + len) as usize];
            let entry = self
                .index
                .find_entry(key_hash(key), |&i| i as usize == at)
                .expect("a live key is indexed");
            entry.remove();
            out.push(time, key);
            taken += 1;
        }
    }

    fn live(&self) -> impl Iterator<Item = &[u8]> {
        self.spans[self.head..]
            .iter()
            .filter(|(_, len)| *len != DELETED)
            .map(|&(start, len)| &self.bytes[start as usize..(start + len) as usize])
    }
}

/// Timers taken by [`TimerService::pop_due`], in firing order; the keys sit
/// back to back in one buffer that is reused from call to call.
#[derive(Debug, Default)]
pub struct DueTimers {
    bytes: Vec<u8>,
    /// (time, start in `bytes`, length).
    timers: Vec<(i64, u32, u32)>,
}

impl DueTimers {
    fn push(&mut self, time: i64, key: &[u8]) {
        self.timers
            .push((time, self.bytes.len() as u32, key.len() as u32));
        self.bytes.extend_from_slice(key);
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.timers.clear();
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// (time, key) of each timer, in firing order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (i64, &[u8])> + Clone {
        self.timers.iter().map(|&(time, start, len)| {
            (
                time,
                &self.bytes[start as usize..start as usize + len as usize],
            )
        })
    }
}

fn flatten(
    domain: TimeDomain,
    map: &BTreeMap<i64, Bucket>,
) -> impl Iterator<Item = (TimeDomain, i64, &[u8])> {
    map.iter()
        .flat_map(move |(t, b)| b.live().map(move |k| (domain, *t, k)))
}

impl TimerService {
    /// The domain's buckets, and the spare ones.
    fn buckets(&mut self, domain: TimeDomain) -> (&mut BTreeMap<i64, Bucket>, &mut Vec<Bucket>) {
        let map = match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        };
        (map, &mut self.spare)
    }

    /// Keeps an emptied bucket's buffers for a later time.
    fn recycle(spare: &mut Vec<Bucket>, mut bucket: Bucket) {
        if spare.len() < SPARE_BUCKETS
            && bucket.spans.capacity() <= SPARE_BUCKET_KEYS
            && bucket.bytes.capacity() <= SPARE_BUCKET_BYTES
        {
            bucket.clear();
            spare.push(bucket);
        }
    }

    /// Returns whether the timer is new.
    pub fn register(&mut self, domain: TimeDomain, time: i64, key: &[u8]) -> bool {
        let (map, spare) = self.buckets(domain);
        let new = map
            .entry(time)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .insert(key);
        self.len += usize::from(new);
        new
    }

    /// Returns whether there was such a timer.
    pub fn delete(&mut self, domain: TimeDomain, time: i64, key: &[u8]) -> bool {
        let (map, spare) = self.buckets(domain);
        let Some(bucket) = map.get_mut(&time) else {
            return false;
        };
        let removed = bucket.remove(key);
        if bucket.is_empty() {
            let bucket = map.remove(&time).expect("found above");
            Self::recycle(spare, bucket);
        }
        self.len -= usize::from(removed);
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces `out` with up to `max` timers due at `now`, removed from
    /// the service, in time order.
    pub fn pop_due(&mut self, domain: TimeDomain, now: i64, max: usize, out: &mut DueTimers) {
        out.clear();
        let (map, spare) = self.buckets(domain);
        while out.len() < max {
            let Some(mut first) = map.first_entry() else {
                break;
            };
            let time = *first.key();
            if time > now {
                break;
            }
            first.get_mut().pop_into(time, max - out.len(), out);
            if first.get().is_empty() {
                Self::recycle(spare, first.remove());
            }
        }
        self.len -= out.len();
    }

    /// Every registered timer, event time first, each in time order.
    pub fn iter(&self) -> impl Iterator<Item = (TimeDomain, i64, &[u8])> {
        flatten(TimeDomain::EventTime, &self.event)
            .chain(flatten(TimeDomain::ProcessingTime, &self.processing))
    }

    /// The earliest processing-time timer.
    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing.keys().next().copied()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_dedup_delete_and_fire_in_time_then_registration_order() {
        let mut t = TimerService::default();
        let e = TimeDomain::EventTime;
        assert!(t.register(e, 10, b"b"));
        assert!(t.register(e, 10, b"a"));
        assert!(!t.register(e, 10, b"b"), "deduplicated");
        assert!(t.register(e, 5, b"c"));
        assert!(t.register(e, 10, b"d"));
        assert!(t.delete(e, 10, b"b"));
        assert!(!t.delete(e, 10, b"b"));
        assert!(t.register(TimeDomain::ProcessingTime, 1, b"p"));
        assert_eq!(t.len(), 4);
        // Two at a time: a bucket split keeps the rest findable.
        let mut due = DueTimers::default();
        t.pop_due(e, 10, 2, &mut due);
        let first: Vec<_> = due.iter().collect();
        assert_eq!(first, vec![(5, &b"c"[..]), (10, &b"a"[..])]);
        assert!(
            t.delete(e, 10, b"d"),
            "the rest of a split bucket is indexed"
        );
        t.pop_due(e, 10, 2, &mut due);
        assert!(due.is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_processing_time(), Some(1));
    }

    #[test]
    fn min_of_inputs_and_ended_inputs() {
        let mut w = InputWatermarks::new(2);
        assert_eq!(w.update(0, 10), None);
        assert_eq!(w.update(1, 5), Some(5));
        assert_eq!(w.update(1, 3), None, "watermarks never go back");
        assert_eq!(w.end(1), Some(10));
        assert_eq!(w.end(0), Some(i64::MAX));
    }

    #[test]
    fn idle_inputs_leave_the_minimum_until_they_resume() {
        let mut w = InputWatermarks::new(3);
        w.update(0, 10);
        w.update(1, 20);
        assert_eq!(w.current(), i64::MIN, "input 2 has said nothing yet");
        assert_eq!(w.set_idle(2), Some(10));
        assert_eq!(w.update(0, 30), Some(20));
        w.activate(2);
        assert_eq!(w.update(1, 40), None, "resumed input 2 holds it again");
        assert_eq!(w.update(2, 5), None, "and it never goes back");
        assert_eq!(w.update(2, 35), Some(30));
        w.set_idle(0);
        w.set_idle(1);
        assert!(!w.all_idle());
        w.set_idle(2);
        assert!(w.all_idle());
        assert_eq!(w.current(), 35, "all idle: the watermark holds");
        assert_eq!(w.end(0), None);
        assert_eq!(w.end(1), None);
        assert_eq!(w.end(2), Some(i64::MAX));
    }

    #[test]
    fn timers_fire_in_order_once() {
        let mut t = TimerService::default();
        t.register(TimeDomain::EventTime, 20, b"b");
        t.register(TimeDomain::EventTime, 10, b"a");
        t.register(TimeDomain::EventTime, 10, b"a");
        t.register(TimeDomain::EventTime, 30, b"c");
        t.delete(TimeDomain::EventTime, 30, b"c");
        let mut due = DueTimers::default();
        t.pop_due(TimeDomain::EventTime, 25, 100, &mut due);
        assert_eq!(due.len(), 2);
        assert_eq!(due.iter().next(), Some((10, &b"a"[..])));
        assert!(t.is_empty());
    }

    #[test]
    fn many_deletions_keep_the_survivors_in_order_and_reused_buckets_start_empty() {
        let mut t = TimerService::default();
        let e = TimeDomain::EventTime;
        for round in 0..3i64 {
            let time = 100 * round;
            for k in 0..1000u32 {
                assert!(t.register(e, time, &k.to_le_bytes()));
            }
            // Enough deletions to compact the bucket more than once.
            for k in (0..1000u32).filter(|k| k % 10 != 0) {
                assert!(t.delete(e, time, &k.to_le_bytes()));
                assert!(!t.delete(e, time, &k.to_le_bytes()));
            }
            assert!(!t.register(e, time, &0u32.to_le_bytes()), "still there");
            assert_eq!(t.len(), 100);
            let mut due = DueTimers::default();
            let mut fired = Vec::new();
            loop {
                t.pop_due(e, time, 7, &mut due);
                if due.is_empty() {
                    break;
                }
                fired.extend(due.iter().map(|(at, key)| {
                    assert_eq!(at, time);
                    u32::from_le_bytes(key.try_into().unwrap())
                }));
            }
            let expected: Vec<u32> = (0..1000).step_by(10).collect();
            assert_eq!(fired, expected, "registration order, round {round}");
            assert!(t.is_empty());
            assert_eq!(t.iter().count(), 0);
        }
    }

    #[test]
    fn bounded_out_of_orderness() {
        let mut g = BoundedOutOfOrderness::new(5);
        assert_eq!(g.current(), i64::MIN);
        g.observe(100);
        g.observe(90);
        assert_eq!(g.current(), 94);
    }
}
