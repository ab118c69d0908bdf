//! The example jobs produce exactly the expected output on known input.

use serde_json::json;
use weir::graph::JobSpec;

use crate::support::{TempDir, env, read_pairs, repo_root};

/// Loads an example's spec and sends its main output to a file.
fn example_to_file(example: &str, out: &std::path::Path) -> JobSpec {
    let mut spec = JobSpec::load(&repo_root().join(format!("examples/{example}/job.yaml")))
        .expect("example spec is valid");
    spec.sink = weir::graph::spec::SinkSpec::File {
        path: out.to_owned(),
        format: match spec.sink {
            weir::graph::spec::SinkSpec::Stdout { format } => format,
            _ => Default::default(),
        },
    };
    spec
}

#[test]
fn word_count_counts_every_word_once_per_occurrence() {
    let dir = TempDir::new("wc");
    let out = dir.path("out.jsonl");
    let spec = example_to_file("word-count", &out);
    let report = weir::runtime::run(&spec, &env()).expect("job runs");
    assert_eq!(report.records_in, 3);
    let totals = [
        ("the", 5),
        ("fox", 3),
        ("dog", 3),
        ("a", 2),
        ("quick", 1),
        ("brown", 1),
        ("jumps", 1),
        ("over", 1),
        ("lazy", 1),
        ("barks", 1),
        ("runs", 1),
        ("and", 1),
        ("end", 1),
    ];
    // Each word's running count goes 1..=total: state is per word, and every
    // occurrence was routed to the instance holding that word's state.
    let mut expected: Vec<_> = totals
        .iter()
        .flat_map(|(w, n)| (1..=*n).map(move |i| (json!(w), json!(i))))
        .collect();
    expected.sort_by_key(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(read_pairs(&out), expected);
}

#[test]
fn passthrough_adds_one_and_keeps_even_values() {
    let dir = TempDir::new("pt");
    let out = dir.path("out.jsonl");
    let spec = example_to_file("passthrough", &out);
    weir::runtime::run(&spec, &env()).expect("job runs");
    let mut expected: Vec<_> = (0u64..20)
        .filter(|i| (i + 1) % 2 == 0)
        .map(|i| (json!(i % 5), json!(i + 1)))
        .collect();
    expected.sort_by_key(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(read_pairs(&out), expected);
}

#[test]
fn fraud_detector_flags_only_a_small_then_large_pair_within_a_minute() {
    let dir = TempDir::new("fraud");
    let out = dir.path("out.jsonl");
    let spec = example_to_file("fraud-detector", &out);
    weir::runtime::run(&spec, &env()).expect("job runs");
    let pairs = read_pairs(&out);
    assert_eq!(
        pairs,
        vec![(
            json!("alice"),
            json!({"account": "alice", "small_at": 1000, "large_at": 30000, "amount": 900})
        )]
    );
}
