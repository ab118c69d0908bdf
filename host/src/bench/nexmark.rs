//! The Nexmark workloads of `weir bench`: the example jobs of
//! `examples/nexmark/` (their `job.yaml`, compiled in, so the bench runs
//! exactly what the examples show) on the `nexmark` source, and a native
//! Rust model of each query over the same generated events, which the
//! output is checked against (record count and order-independent digest).
//!
//! The models are written the plain way (hash maps over all events), not
//! the way the operators are, so that they check the operators.

use std::collections::{BTreeMap, HashMap, HashSet};

use weir_nexmark::{Bid, Event};

use crate::connectors::nexmark::NexmarkGenerator;
use crate::connectors::sinks::record_digest;
use crate::graph::spec::{JobSpec, NexmarkSource, SinkSpec, SourceSpec};

/// The Nexmark queries Weir runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q5,
    Q7,
    Q8,
}

pub const ALL: [Query; 6] = [
    Query::Q0,
    Query::Q1,
    Query::Q2,
    Query::Q5,
    Query::Q7,
    Query::Q8,
];

const WINDOW_MS: i64 = 10_000;
const Q5_SLIDE_MS: i64 = 2_000;

impl Query {
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "nexmark-q0",
            Query::Q1 => "nexmark-q1",
            Query::Q2 => "nexmark-q2",
            Query::Q5 => "nexmark-q5",
            Query::Q7 => "nexmark-q7",
            Query::Q8 => "nexmark-q8",
        }
    }

    /// The example's job spec as written in `examples/nexmark/*/job.yaml`.
    pub fn example_yaml(self) -> &'static str {
        match self {
            Query::Q0 => include_str!("../../../examples/nexmark/q0/job.yaml"),
            Query::Q1 => include_str!("../../../examples/nexmark/q1/job.yaml"),
            Query::Q2 => include_str!("../../../examples/nexmark/q2/job.yaml"),
            Query::Q5 => include_str!("../../../examples/nexmark/q5/job.yaml"),
            Query::Q7 => include_str!("../../../examples/nexmark/q7/job.yaml"),
            Query::Q8 => include_str!("../../../examples/nexmark/q8/job.yaml"),
        }
    }

    /// The example job over `events` events at `parallelism`, into `sink`.
    pub fn job(self, events: u64, parallelism: u32, sink: SinkSpec) -> JobSpec {
        let mut spec = JobSpec::parse(self.example_yaml()).expect("example jobs are valid");
        let SourceSpec::Nexmark(source) = &spec.source else {
            unreachable!("the Nexmark examples read the nexmark source")
        };
        spec.source = SourceSpec::Nexmark(NexmarkSource {
            events,
            parallelism: None,
            ..source.clone()
        });
        spec.parallelism = parallelism;
        for op in &mut spec.operators {
            op.parallelism = None;
        }
        spec.sink = sink;
        spec
    }

    /// The events per ms of the example job's source.
    pub fn events_per_ms(self) -> u64 {
        match JobSpec::parse(self.example_yaml()).map(|s| s.source) {
            Ok(SourceSpec::Nexmark(n)) => n.events_per_ms,
            _ => 1,
        }
    }
}

fn window_start(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

/// Calls `out(key, value, timestamp)` for every record the query emits over
/// events `0..events`, in no particular order.
pub fn model(q: Query, events: u64, events_per_ms: u64, mut out: impl FnMut(&[u8], &[u8], i64)) {
    let mut g = NexmarkGenerator::new(events_per_ms);
    let mut value = Vec::with_capacity(256);
    // q5: (window start, auction) -> bids; q7: window start -> best bids;
    // q8: person id -> (window start, name), and (seller, window start).
    let mut counts: HashMap<(i64, u64), u64> = HashMap::new();
    let mut best: BTreeMap<i64, (u64, Vec<Vec<u8>>)> = BTreeMap::new();
    let mut persons: HashMap<u64, (i64, String)> = HashMap::new();
    let mut sellers: HashSet<(u64, i64)> = HashSet::new();
    for n in 0..events {
        let ts = g.timestamp(n);
        let event = g.event(n);
        match (q, &event) {
            (Query::Q0, e) => {
                value.clear();
                e.encode(&mut value);
                out(
                    &crate::connectors::nexmark::record_key(e).to_le_bytes(),
                    &value,
                    ts,
                );
            }
            (Query::Q1, Event::Bid(b)) => {
                value.clear();
                Bid {
                    price: b.price * 908 / 1000,
                    ..b.clone()
                }
                .encode(&mut value);
                out(&b.auction.to_le_bytes(), &value, ts);
            }
            (Query::Q2, Event::Bid(b)) if b.auction % 123 == 0 => {
                out(&b.auction.to_le_bytes(), &b.price.to_le_bytes(), ts);
            }
            (Query::Q5, Event::Bid(b)) => {
                // Every 10 s window starting at a multiple of 2 s that holds ts.
                let mut start = window_start(ts, Q5_SLIDE_MS);
                while start > ts - WINDOW_MS {
                    *counts.entry((start, b.auction)).or_default() += 1;
                    start -= Q5_SLIDE_MS;
                }
            }
            (Query::Q7, Event::Bid(b)) => {
                let entry = best.entry(window_start(ts, WINDOW_MS)).or_default();
                if entry.1.is_empty() || b.price > entry.0 {
                    *entry = (b.price, Vec::new());
                }
                if b.price == entry.0 {
                    entry.1.push(event.to_bytes());
                }
            }
            (Query::Q8, Event::Person(p)) => {
                persons.insert(p.id, (window_start(ts, WINDOW_MS), p.name.to_owned()));
            }
            (Query::Q8, Event::Auction(a)) => {
                sellers.insert((a.seller, window_start(ts, WINDOW_MS)));
            }
            _ => {}
        }
    }
    match q {
        Query::Q5 => {
            let mut windows: BTreeMap<i64, (u64, Vec<u64>)> = BTreeMap::new();
            for ((start, auction), count) in counts {
                let w = windows.entry(start).or_default();
                if count > w.0 {
                    *w = (count, Vec::new());
                }
                if count == w.0 {
                    w.1.push(auction);
                }
            }
            for (start, (count, auctions)) in windows {
                for a in auctions {
                    out(
                        &a.to_le_bytes(),
                        &count.to_le_bytes(),
                        start + WINDOW_MS - 1,
                    );
                }
            }
        }
        Query::Q7 => {
            for (start, (_, bids)) in best {
                for bid in bids {
                    let Ok(Event::Bid(b)) = Event::decode(&bid) else {
                        unreachable!("encoded above")
                    };
                    out(&b.auction.to_le_bytes(), &bid, start + WINDOW_MS - 1);
                }
            }
        }
        Query::Q8 => {
            for (id, (start, name)) in persons {
                if sellers.contains(&(id, start)) {
                    let mut v = start.to_le_bytes().to_vec();
                    v.extend_from_slice(name.as_bytes());
                    out(&id.to_le_bytes(), &v, start + WINDOW_MS - 1);
                }
            }
        }
        _ => {}
    }
}

/// The records the query emits over `0..events`, and their digest as the
/// sink computes it: (records, wrapping sum of `record_digest`).
pub fn expected(q: Query, events: u64) -> (u64, u64) {
    let (mut records, mut digest) = (0u64, 0u64);
    model(q, events, q.events_per_ms(), |k, v, t| {
        records += 1;
        digest = digest.wrapping_add(record_digest(k, v, t));
    });
    (records, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_jobs_parse_and_models_produce_output() {
        for q in ALL {
            let spec = q.job(20_000, 2, SinkSpec::Discard { rate: None });
            assert_eq!(spec.source_parallelism(), 2);
            let (records, _) = expected(q, 20_000);
            assert!(records > 0, "{}", q.name());
        }
        assert_eq!(expected(Query::Q0, 20_000).0, 20_000);
        assert_eq!(expected(Query::Q1, 20_000).0, 18_400);
    }
}
