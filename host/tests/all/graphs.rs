//! Job graphs beyond a pipeline: several sources, a stream read by two
//! operators, operators with two inputs (a union, a join through the
//! `join` fixture, which tells its inputs apart by `Record::input`), and
//! their checkpoints: barriers aligned over both inputs, a savepoint
//! resumed at another parallelism.

use std::collections::BTreeMap;
use std::path::Path;

use weir::graph::JobSpec;
use weir::runtime::StartOptions;

use crate::support::{TempDir, committed_lines, env, read_pairs};

const LEFT: (u64, u64) = (2_000, 50);
const RIGHT: (u64, u64) = (300, 50);

/// Every (left, right) pair of generator events with the same key, as the
/// `join` fixture encodes them.
fn expected_join(
    (left, left_keys): (u64, u64),
    (right, right_keys): (u64, u64),
) -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    for l in 0..left {
        for r in (l % left_keys..right).step_by(right_keys as usize) {
            if r % right_keys == l % left_keys {
                pairs.push((l % left_keys, l * 1_000_000 + r));
            }
        }
    }
    pairs.sort();
    pairs
}

fn as_u64_pairs(pairs: Vec<(serde_json::Value, serde_json::Value)>) -> Vec<(u64, u64)> {
    let mut pairs: Vec<(u64, u64)> = pairs
        .into_iter()
        .map(|(k, v)| (k.as_u64().unwrap(), v.as_u64().unwrap()))
        .collect();
    pairs.sort();
    pairs
}

fn join_spec(parallelism: u32, out: &Path, extra: &str) -> JobSpec {
    JobSpec::parse(
        &(format!(
            "name: join\nparallelism: {parallelism}\nbatch: {{size: 64}}\n\
         source: {{type: generator, events: {}, keys: {}}}\n\
         sources:\n  right: {{type: generator, events: {}, keys: {}, parallelism: 1}}\n\
         operators:\n  - {{name: join, module: join, from: [source, right], input: key}}\n\
         {extra}",
            LEFT.0, LEFT.1, RIGHT.0, RIGHT.1,
        ) + &format!(
            "sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
            out.display()
        )),
    )
    .expect("spec is valid")
}

#[test]
fn a_join_of_two_sources_pairs_every_record_with_the_other_inputs_at_any_parallelism() {
    let tmp = TempDir::new("join");
    let expected = expected_join(LEFT, RIGHT);
    assert_eq!(expected.len(), 50 * 40 * 6);
    for parallelism in [1, 2, 3] {
        let out = tmp.path(&format!("p{parallelism}.jsonl"));
        let report = weir::runtime::run(&join_spec(parallelism, &out, ""), &env()).unwrap();
        assert_eq!(report.records_in, LEFT.0 + RIGHT.0, "both sources are read");
        assert!(
            as_u64_pairs(read_pairs(&out)) == expected,
            "parallelism {parallelism}: the join's output differs from every matching pair"
        );
    }
}

#[test]
fn a_stream_read_twice_reaches_both_readers_and_a_union_merges_them() {
    let tmp = TempDir::new("diamond");
    for parallelism in [1, 2] {
        let out = tmp.path(&format!("p{parallelism}.jsonl"));
        // `a` and `b` both read the source (forward, instance to instance);
        // `count` reads both: every odd event arrives twice.
        let spec = JobSpec::parse(&format!(
            "name: diamond\nparallelism: {parallelism}\nbatch: {{size: 32}}\n\
             source: {{type: generator, events: 1000, keys: 10}}\n\
             operators:\n\
             \x20 - {{name: a, native: passthrough}}\n\
             \x20 - {{name: b, native: passthrough, from: source}}\n\
             \x20 - {{name: count, native: keyed-count, from: [a, b], input: key}}\n\
             sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
            out.display()
        ))
        .unwrap();
        weir::runtime::run(&spec, &env()).unwrap();
        let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (k, v) in as_u64_pairs(read_pairs(&out)) {
            counts.entry(k).or_default().push(v);
        }
        // passthrough keeps odd events (value + 1 is even): keys 1, 3, .., 9,
        // 100 events each, seen by both readers.
        let expected: BTreeMap<u64, Vec<u64>> = (1..10)
            .step_by(2)
            .map(|k| (k, (1..=200).collect()))
            .collect();
        assert_eq!(counts, expected, "parallelism {parallelism}");
    }
}

#[test]
fn a_join_stopped_with_a_savepoint_resumes_at_another_parallelism_with_the_full_result() {
    let tmp = TempDir::new("join-savepoint");
    let expected = expected_join(LEFT, RIGHT);
    let first = tmp.path("first");
    // Rate-limited sources, so the savepoint falls in the middle of both.
    let with = |parallelism: u32, out: &Path, rates: bool| {
        let (rate, right_rate) = if rates {
            (", rate: 1000", ", rate: 200")
        } else {
            ("", "")
        };
        JobSpec::parse(&format!(
            "name: join-sp\nparallelism: {parallelism}\nbatch: {{size: 16, linger: 1ms}}\n\
             source: {{type: generator, events: {}, keys: {}{rate}}}\n\
             sources:\n  right: {{type: generator, events: {}, keys: {}, parallelism: 1{right_rate}}}\n\
             operators:\n  - {{name: join, module: join, from: [source, right], input: key}}\n\
             sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
             checkpoint: {{interval: 50ms, dir: {}}}\n",
            LEFT.0,
            LEFT.1,
            RIGHT.0,
            RIGHT.1,
            out.display(),
            tmp.path(&format!("checkpoints-{parallelism}")).display()
        ))
        .unwrap()
    };
    let handle =
        weir::runtime::start(&with(2, &first, true), &env(), StartOptions::default()).unwrap();
    crate::support::wait_for_records(&handle, 700);
    let savepoint = handle
        .stop_with_savepoint(&tmp.path("savepoints"))
        .expect("savepoint");
    let report = handle.wait().unwrap();
    assert!(
        report.records_in < LEFT.0 + RIGHT.0,
        "stopped before the end"
    );
    let manifest = std::fs::read_to_string(savepoint.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"name\": \"right\""),
        "the savepoint holds the named source's position: {manifest}"
    );

    crate::support::resume_from(&with(1, &first, false), &savepoint);
    let mut pairs: Vec<(u64, u64)> = committed_lines(&first)
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["key"].as_u64().unwrap(), v["value"].as_u64().unwrap())
        })
        .collect();
    pairs.sort();
    assert!(
        pairs == expected,
        "stopped at 2, resumed at 1: {} pairs committed, {} expected",
        pairs.len(),
        expected.len()
    );
}

#[test]
fn the_job_graph_of_a_join_shows_both_sources_and_both_edges() {
    let spec = join_spec(2, Path::new("/dev/null"), "");
    let graph = weir::api::view::graph(&spec, &BTreeMap::new());
    let edges: Vec<(String, String)> = graph
        .edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone()))
        .collect();
    assert!(edges.contains(&("source".into(), "operator:join".into())));
    assert!(edges.contains(&("source:right".into(), "operator:join".into())));
    assert!(edges.contains(&("operator:join".into(), "sink".into())));
}
