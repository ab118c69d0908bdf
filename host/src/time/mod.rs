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
/// timers fire in the order they were registered.
#[derive(Debug, Default)]
pub struct TimerService {
    event: BTreeMap<i64, Bucket>,
    processing: BTreeMap<i64, Bucket>,
    len: usize,
}

/// The keys of the timers of one time, in registration order, with an
/// index for deduplication and deletion.
#[derive(Debug, Default)]
struct Bucket {
    keys: Vec<Box<[u8]>>,
    index: hashbrown::HashTable<u32>,
}

fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Bucket {
    fn insert(&mut self, key: &[u8]) -> bool {
        let keys = &self.keys;
        let hash = key_hash(key);
        if self
            .index
            .find(hash, |&i| &*keys[i as usize] == key)
            .is_some()
        {
            return false;
        }
        let at = self.keys.len() as u32;
        self.keys.push(key.into());
        let keys = &self.keys;
        self.index
            .insert_unique(hash, at, |&i| key_hash(&keys[i as usize]));
        true
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let keys = &self.keys;
        let Ok(found) = self
            .index
            .find_entry(key_hash(key), |&i| &*keys[i as usize] == key)
        else {
            return false;
        };
        let (at, _) = found.remove();
        let last = self.keys.len() as u32 - 1;
        if at != last {
            // The last key moves into the hole: re-point its index entry.
            let moved = key_hash(&self.keys[last as usize]);
            if let Some(slot) = self.index.find_mut(moved, |&i| i == last) {
                *slot = at;
            }
        }
        self.keys.swap_remove(at as usize);
        true
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, key) in self.keys.iter().enumerate() {
            let keys = &self.keys;
            self.index
                .insert_unique(key_hash(key), i as u32, |&j| key_hash(&keys[j as usize]));
        }
    }
}

fn flatten(
    domain: TimeDomain,
    map: &BTreeMap<i64, Bucket>,
) -> impl Iterator<Item = (TimeDomain, i64, &[u8])> {
    map.iter()
        .flat_map(move |(t, b)| b.keys.iter().map(move |k| (domain, *t, &k[..])))
}

impl TimerService {
    fn map(&mut self, domain: TimeDomain) -> &mut BTreeMap<i64, Bucket> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Returns whether the timer is new.
    pub fn register(&mut self, domain: TimeDomain, time: i64, key: &[u8]) -> bool {
        let new = self.map(domain).entry(time).or_default().insert(key);
        self.len += usize::from(new);
        new
    }

    /// Returns whether there was such a timer.
    pub fn delete(&mut self, domain: TimeDomain, time: i64, key: &[u8]) -> bool {
        let map = self.map(domain);
        let Some(bucket) = map.get_mut(&time) else {
            return false;
        };
        let removed = bucket.remove(key);
        if bucket.keys.is_empty() {
            map.remove(&time);
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

    /// Removes and returns, in time order, up to `max` timers due at `now`.
    pub fn pop_due(&mut self, domain: TimeDomain, now: i64, max: usize) -> Vec<(i64, Box<[u8]>)> {
        let map = self.map(domain);
        let mut due = Vec::new();
        while due.len() < max {
            let Some(mut first) = map.first_entry() else {
                break;
            };
            let time = *first.key();
            if time > now {
                break;
            }
            let room = max - due.len();
            let bucket = first.get_mut();
            if bucket.keys.len() <= room {
                let bucket = first.remove();
                due.extend(bucket.keys.into_iter().map(|k| (time, k)));
            } else {
                let rest = bucket.keys.split_off(room);
                let taken = std::mem::replace(&mut bucket.keys, rest);
                bucket.reindex();
                due.extend(taken.into_iter().map(|k| (time, k)));
            }
        }
        self.len -= due.len();
        due
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
        let first = t.pop_due(e, 10, 2);
        assert_eq!(first, vec![(5, b"c"[..].into()), (10, b"d"[..].into())]);
        assert!(
            t.delete(e, 10, b"a"),
            "the rest of a split bucket is indexed"
        );
        assert!(t.pop_due(e, 10, 2).is_empty());
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
        let due = t.pop_due(TimeDomain::EventTime, 25, 100);
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].0, 10);
        assert!(t.is_empty());
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
