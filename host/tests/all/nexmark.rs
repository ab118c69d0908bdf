//! Nexmark: each query's example job, run on the nexmark source, emits
//! exactly the records a plain Rust model of the query computes over the
//! same events (compared as sorted sets of key, value and event time).

use weir::bench::nexmark::{Query, model};
use weir::graph::spec::{BytesFormat, SinkFormat, SinkSpec};
use weir::runtime::{RestoreFrom, StartOptions};

use crate::support::{TempDir, env};

type Records = Vec<(String, String, i64)>;

/// Runs the query's example job over `events` events into a file and
/// returns its records (hex key, hex value, event time), sorted.
fn run(q: Query, events: u64, parallelism: u32) -> Records {
    let dir = TempDir::new(q.name());
    let out = dir.path("out.jsonl");
    let hex = SinkFormat {
        key: BytesFormat::Hex,
        value: BytesFormat::Hex,
    };
    let spec = q.job(
        events,
        parallelism,
        SinkSpec::File {
            path: out.clone(),
            format: hex,
        },
    );
    let report = weir::runtime::start(
        &spec,
        &env(),
        StartOptions {
            restore: RestoreFrom::Fresh,
        },
    )
    .expect("job starts")
    .wait()
    .expect("job finishes");
    assert_eq!(report.records_in, events);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut records: Records = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (
                v["key"].as_str().expect("hex key").to_owned(),
                v["value"].as_str().expect("hex value").to_owned(),
                v["timestamp"].as_i64().expect("timestamp"),
            )
        })
        .collect();
    records.sort();
    records
}

fn expected(q: Query, events: u64) -> Records {
    let mut records = Records::new();
    model(q, events, q.events_per_ms(), |k, v, t| {
        records.push((hex::encode(k), hex::encode(v), t));
    });
    records.sort();
    records
}

fn check(q: Query, events: u64, parallelism: u32) {
    let got = run(q, events, parallelism);
    let want = expected(q, events);
    assert!(!want.is_empty(), "{}: the model emits nothing", q.name());
    assert_eq!(
        got.len(),
        want.len(),
        "{} at P={parallelism}: record count",
        q.name()
    );
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{} at P={parallelism}: first difference at {i}: got {:?}, want {:?}",
            q.name(),
            got[i],
            want[i]
        );
    }
}

#[test]
fn q0_passes_every_event_through() {
    check(Query::Q0, 20_000, 1);
}

#[test]
fn q1_converts_bid_prices_to_euros() {
    check(Query::Q1, 30_000, 1);
}

#[test]
fn q2_selects_bids_on_every_123rd_auction() {
    check(Query::Q2, 50_000, 1);
}

#[test]
fn q5_finds_the_hottest_auctions_of_each_sliding_window() {
    check(Query::Q5, 50_000, 1);
    check(Query::Q5, 50_000, 2);
}

#[test]
fn q7_finds_the_highest_bids_of_each_window() {
    check(Query::Q7, 50_000, 1);
}

#[test]
fn q8_joins_new_persons_with_their_auctions_in_two_inputs() {
    check(Query::Q8, 50_000, 1);
    check(Query::Q8, 50_000, 2);
}
