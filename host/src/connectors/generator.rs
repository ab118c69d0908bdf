//! The generator source, identical in definition to the benchmark generator
//! of the Flink comparison job: event `i` of `0..events` has key
//! `i % keys`, event time `i / events_per_ms` ms and value `i`. The events
//! form `S` splits, `S` the parallelism the job first ran at: split `s` is
//! `i = s, s + S, s + 2S, ...`. An instance reads its splits in turn, one
//! event from each, so instances' event times stay aligned; a split's
//! position is the next `i` it will emit.

use super::{ConnectorError, Poll, Source, SourceAssignment, SplitPosition};
use crate::graph::spec::GeneratorFormat;
use crate::runtime::batch::RecordBatch;
use crate::runtime::router::Scatter;

pub struct Generator {
    splits: GeneratedSplits,
    keys: u64,
    events_per_ms: u64,
    format: GeneratorFormat,
    text: String,
    /// Events per second at most, and the pacing clock.
    rate: Option<Pacer>,
}

impl Generator {
    pub fn new(
        events: u64,
        keys: u64,
        events_per_ms: u64,
        format: GeneratorFormat,
        assignment: &SourceAssignment,
    ) -> Self {
        Generator {
            splits: GeneratedSplits::new(assignment, events),
            keys,
            events_per_ms,
            format,
            text: String::new(),
            rate: None,
        }
    }

    /// Paces the generator to at most `rate` events per second.
    pub fn with_rate(mut self, rate: Option<u64>) -> Self {
        self.rate = rate.map(Pacer::new);
        self
    }

    /// Sleeps until `max` more events are due; returns how many may go now.
    fn pace(&mut self, max: usize) -> usize {
        self.rate.as_mut().map_or(max, |p| p.allow(max))
    }
}

/// At most `rate` events per second, for the generated sources.
pub(crate) struct Pacer {
    rate: u64,
    since: std::time::Instant,
    sent: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u64) -> Self {
        Pacer {
            rate: rate.max(1),
            since: std::time::Instant::now(),
            sent: 0,
        }
    }

    /// Sleeps until `max` more events are due; returns how many may go now.
    pub(crate) fn allow(&mut self, max: usize) -> usize {
        let due = (self.since.elapsed().as_secs_f64() * self.rate as f64) as u64;
        if due <= self.sent {
            // Come back when the next event is due, but stay responsive.
            let wait = std::time::Duration::from_secs_f64(1.0 / self.rate as f64);
            std::thread::sleep(wait.min(std::time::Duration::from_millis(5)));
            return 0;
        }
        let n = ((due - self.sent) as usize).min(max);
        self.sent += n as u64;
        n
    }
}

/// The splits a generated source's instance works through, taken in turn:
/// its own split on a fresh start, the restored ones (dealt out by split
/// count) on a resume. Split `s` of `n` holds events `s, s + n, s + 2n, ...`
/// below `events`.
pub(crate) struct GeneratedSplits {
    /// (split, next event, highest event time returned) of the splits not
    /// yet exhausted, in split order.
    splits: Vec<(u32, u64, i64)>,
    /// Splits of the whole source, the stride of each split's sequence.
    step: u64,
    cursor: usize,
    events: u64,
}

impl GeneratedSplits {
    pub(crate) fn new(assignment: &SourceAssignment, events: u64) -> Self {
        let (mut splits, step) = match &assignment.restored {
            None => (
                vec![(
                    assignment.instance,
                    u64::from(assignment.instance),
                    i64::MIN,
                )],
                u64::from(assignment.parallelism),
            ),
            Some(restored) => (
                restored
                    .positions
                    .iter()
                    .map(|p| (p.split, p.offset, p.max_timestamp.unwrap_or(i64::MIN)))
                    .collect(),
                u64::from(restored.split_count.max(1)),
            ),
        };
        splits.sort_unstable();
        splits.retain(|&(_, next, _)| next < events);
        GeneratedSplits {
            splits,
            step,
            cursor: 0,
            events,
        }
    }

    /// The next event (its number and event time, from `timestamp`), from
    /// the next split in turn; `None` once every split is exhausted.
    #[inline]
    pub(crate) fn next(&mut self, timestamp: impl Fn(u64) -> i64) -> Option<(u64, i64)> {
        if self.splits.is_empty() {
            return None;
        }
        if self.cursor >= self.splits.len() {
            self.cursor = 0;
        }
        let (_, next, max) = &mut self.splits[self.cursor];
        let n = *next;
        let ts = timestamp(n);
        *next += self.step;
        *max = ts;
        if *next >= self.events {
            self.splits.remove(self.cursor);
        } else {
            self.cursor += 1;
        }
        Some((n, ts))
    }

    pub(crate) fn poll_result(&self) -> Poll {
        if self.splits.is_empty() {
            Poll::End
        } else {
            Poll::More
        }
    }

    /// Also with one split left: the others may have ended ahead of it.
    pub(crate) fn slowest_timestamp(&self) -> Option<i64> {
        self.splits.iter().map(|&(_, _, max)| max).min()
    }

    pub(crate) fn positions(&self) -> Vec<SplitPosition> {
        self.splits
            .iter()
            .map(|&(split, next, max)| SplitPosition {
                split,
                offset: next,
                line: 0,
                max_timestamp: (max != i64::MIN).then_some(max),
            })
            .collect()
    }
}

impl Generator {
    #[inline(always)]
    fn fill(&mut self, max: usize, mut push: impl FnMut(&[u8], &[u8], i64)) -> Poll {
        use std::fmt::Write;
        let max = self.pace(max);
        let events_per_ms = self.events_per_ms;
        for _ in 0..max {
            let Some((i, ts)) = self.splits.next(|i| (i / events_per_ms) as i64) else {
                return Poll::End;
            };
            let key = i % self.keys;
            match self.format {
                GeneratorFormat::Binary => push(&key.to_le_bytes(), &i.to_le_bytes(), ts),
                GeneratorFormat::Text => {
                    self.text.clear();
                    let _ = write!(self.text, "{key}");
                    let split = self.text.len();
                    let _ = write!(self.text, "{i}");
                    let (k, v) = self.text.split_at(split);
                    push(k.as_bytes(), v.as_bytes(), ts);
                }
            }
        }
        self.splits.poll_result()
    }
}

impl Source for Generator {
    fn slowest_split_timestamp(&self) -> Option<i64> {
        self.splits.slowest_timestamp()
    }

    fn positions(&self) -> Option<Vec<SplitPosition>> {
        Some(self.splits.positions())
    }

    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        Ok(self.fill(max, |k, v, ts| out.push(k, v, ts)))
    }

    fn poll_scattered(
        &mut self,
        out: &mut Scatter<'_>,
        max: usize,
    ) -> Option<Result<Poll, ConnectorError>> {
        Some(Ok(self.fill(max, |k, v, ts| out.push(k, v, ts))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::RestoredSplits;

    #[test]
    fn instances_interleave_and_cover_every_event_once() {
        let mut seen = Vec::new();
        for k in 0..3 {
            let mut g = Generator::new(
                10,
                4,
                2,
                GeneratorFormat::Text,
                &SourceAssignment::fresh(k, 3),
            );
            let mut b = RecordBatch::new();
            while g.poll(&mut b, 2).unwrap() == Poll::More {}
            for r in b.iter() {
                let i: u64 = std::str::from_utf8(r.value).unwrap().parse().unwrap();
                assert_eq!(i % 3, u64::from(k));
                assert_eq!(std::str::from_utf8(r.key).unwrap(), (i % 4).to_string());
                assert_eq!(r.timestamp, (i / 2) as i64);
                seen.push(i);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    fn values(g: &mut Generator, max: usize) -> Vec<u64> {
        let mut b = RecordBatch::new();
        g.poll(&mut b, max).unwrap();
        b.iter()
            .map(|r| std::str::from_utf8(r.value).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn resumes_from_positions_at_another_parallelism() {
        // Two instances take 3 events each, then the job resumes at 1 and 3.
        let mut positions = Vec::new();
        for k in 0..2 {
            let mut g = Generator::new(
                20,
                4,
                1,
                GeneratorFormat::Text,
                &SourceAssignment::fresh(k, 2),
            );
            values(&mut g, 3);
            positions.extend(g.positions().unwrap());
        }
        for p in [1u32, 3] {
            let mut rest = Vec::new();
            for k in 0..p {
                let mine = positions
                    .iter()
                    .filter(|s| s.split % p == k)
                    .cloned()
                    .collect();
                let assignment = SourceAssignment {
                    instance: k,
                    parallelism: p,
                    restored: Some(RestoredSplits {
                        split_count: 2,
                        positions: mine,
                    }),
                };
                let mut g = Generator::new(20, 4, 1, GeneratorFormat::Text, &assignment);
                rest.extend(values(&mut g, 100));
            }
            rest.sort();
            assert_eq!(rest, (6..20).collect::<Vec<_>>(), "resumed at {p}");
        }
    }

    #[test]
    fn an_instance_reading_two_splits_reports_the_slower_one() {
        let restored = RestoredSplits {
            split_count: 2,
            positions: vec![
                SplitPosition {
                    split: 0,
                    offset: 10,
                    line: 0,
                    max_timestamp: Some(8),
                },
                SplitPosition {
                    split: 1,
                    offset: 41,
                    line: 0,
                    max_timestamp: Some(39),
                },
            ],
        };
        let assignment = SourceAssignment {
            instance: 0,
            parallelism: 1,
            restored: Some(restored),
        };
        let mut g = Generator::new(100, 4, 1, GeneratorFormat::Text, &assignment);
        assert_eq!(g.slowest_split_timestamp(), Some(8));
        assert_eq!(values(&mut g, 2), vec![10, 41]);
        assert_eq!(g.slowest_split_timestamp(), Some(10));
        let positions = g.positions().unwrap();
        assert_eq!(positions[1].max_timestamp, Some(41));
        // Once the faster split is exhausted, the slower one still rules.
        let mut short = Generator::new(42, 4, 1, GeneratorFormat::Text, &assignment);
        assert_eq!(values(&mut short, 2), vec![10, 41]);
        assert_eq!(short.slowest_split_timestamp(), Some(10));
    }
}
