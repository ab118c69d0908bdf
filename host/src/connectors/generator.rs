//! The generator source, identical in definition to the benchmark generator
//! of the Flink comparison job: event `i` of `0..events` has key
//! `i % keys`, event time `i / events_per_ms` ms and value `i`; instance `k`
//! of `p` emits `i = k, k + p, k + 2p, ...`, so instances' event times stay
//! aligned.

use super::{ConnectorError, Poll, Source};
use crate::graph::spec::GeneratorFormat;
use crate::runtime::batch::RecordBatch;

pub struct Generator {
    next: u64,
    events: u64,
    keys: u64,
    events_per_ms: u64,
    step: u64,
    format: GeneratorFormat,
    text: String,
}

impl Generator {
    pub fn new(
        events: u64,
        keys: u64,
        events_per_ms: u64,
        format: GeneratorFormat,
        instance: u32,
        parallelism: u32,
    ) -> Self {
        Generator {
            next: u64::from(instance),
            events,
            keys,
            events_per_ms,
            step: u64::from(parallelism),
            format,
            text: String::new(),
        }
    }
}

impl Source for Generator {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        use std::fmt::Write;
        for _ in 0..max {
            if self.next >= self.events {
                return Ok(Poll::End);
            }
            let i = self.next;
            self.next += self.step;
            let key = i % self.keys;
            let ts = (i / self.events_per_ms) as i64;
            match self.format {
                GeneratorFormat::Binary => out.push(&key.to_le_bytes(), &i.to_le_bytes(), ts),
                GeneratorFormat::Text => {
                    self.text.clear();
                    let _ = write!(self.text, "{key}");
                    let split = self.text.len();
                    let _ = write!(self.text, "{i}");
                    let (k, v) = self.text.split_at(split);
                    out.push(k.as_bytes(), v.as_bytes(), ts);
                }
            }
        }
        Ok(if self.next >= self.events {
            Poll::End
        } else {
            Poll::More
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_interleave_and_cover_every_event_once() {
        let mut seen = Vec::new();
        for k in 0..3 {
            let mut g = Generator::new(10, 4, 2, GeneratorFormat::Text, k, 3);
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
}
