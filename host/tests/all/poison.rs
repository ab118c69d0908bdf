//! Poison records under `on_error: skip | dead-letter`: records an operator
//! fails on (an error it returns, a panic, an endless loop) and records the
//! source cannot decode are set aside one by one, none of their state
//! changes remain, and every other record takes effect exactly once.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use weir::graph::JobSpec;
use weir::runtime::JobError;

use crate::support::{TempDir, committed_lines, env, read_pairs};

const USERS: u64 = 7;
const RECORDS: u64 = 400;

/// What record `i` asks the `poison-pill` operator to do.
fn command(i: u64) -> &'static str {
    match i {
        301 => "loop",
        _ if i % 37 == 5 => "error",
        _ if i % 53 == 7 => "panic",
        _ => "ok",
    }
}

/// Lines the source cannot decode, and where they go in the input.
const BAD_LINES: [(u64, &str); 3] = [
    (10, "this is not json"),
    (150, r#"{"n": 5, "cmd": "ok", "ts": 5}"#),
    (390, r#"{"user": "u1", "n": 6, "cmd": "ok", "ts": "soon"}"#),
];

fn user(i: u64) -> String {
    format!("u{}", i % USERS)
}

/// The input file; a user that only ever sends a poison record is added,
/// so no trace of it may show in the output.
fn write_input(dir: &TempDir) -> std::path::PathBuf {
    let mut text = String::new();
    for i in 0..RECORDS {
        for (at, bad) in BAD_LINES {
            if at == i {
                text.push_str(bad);
                text.push('\n');
            }
        }
        let line = json!({"user": user(i), "n": i, "cmd": command(i), "ts": i * 10});
        text.push_str(&format!("{line}\n"));
    }
    text.push_str(&format!(
        "{}\n",
        json!({"user": "only-bad", "n": RECORDS, "cmd": "error", "ts": RECORDS * 10})
    ));
    let path = dir.path("in.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn poison_count() -> usize {
    (0..RECORDS).filter(|&i| command(i) != "ok").count() + 1
}

/// The output the operator gives when exactly the poison records are left
/// out: per good record the key's state, per key and good record a timer.
fn expected_output() -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    let mut ns: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut timers = BTreeSet::new();
    for i in (0..RECORDS).filter(|&i| command(i) == "ok") {
        let seen = ns.entry(user(i)).or_default();
        seen.push(i);
        out.push((
            json!(user(i)),
            json!({"count": seen.len(), "commands": {"ok": seen.len()}, "ns": seen}),
        ));
        timers.insert((user(i), i * 10 + 1000));
    }
    for (u, t) in timers {
        out.push((json!(u), json!({ "timer": t })));
    }
    out.sort_by_key(|(k, v)| (k.to_string(), v.to_string()));
    out
}

fn spec(dir: &TempDir, input: &std::path::Path, on_error: &str) -> JobSpec {
    let dead_letter = if on_error == "dead-letter" {
        format!(
            "dead_letter: {{type: directory, path: {}}}\ncheckpoint: {{interval: 100ms, dir: {}}}\n",
            dir.path("dead").display(),
            dir.path("checkpoints").display()
        )
    } else {
        String::new()
    };
    JobSpec::parse(&format!(
        "name: poison-{on_error}\n\
         parallelism: 2\n\
         batch: {{size: 32}}\n\
         on_error: {on_error}\n\
         {dead_letter}\
         source: {{type: file, path: {}, key_field: user, timestamp_field: ts, \
                   watermark: {{max_out_of_orderness: 0s}}}}\n\
         operators: [{{name: pill, module: poison-pill, input: key}}]\n\
         sink: {{type: file, path: {}}}\n",
        input.display(),
        dir.path("out.jsonl").display()
    ))
    .expect("spec is valid")
}

#[test]
fn skip_leaves_out_exactly_the_poison_records_and_their_state_changes() {
    let dir = TempDir::new("poison-skip");
    let input = write_input(&dir);
    let report = weir::runtime::run(&spec(&dir, &input, "skip"), &env()).expect("job runs");
    assert_eq!(
        report.rejected_records as usize,
        poison_count() + BAD_LINES.len()
    );
    assert_eq!(report.dead_letter_records, 0);
    assert_eq!(read_pairs(&dir.path("out.jsonl")), expected_output());
}

#[test]
fn dead_letter_sends_each_poison_record_with_its_error_and_keeps_the_rest_exact() {
    let dir = TempDir::new("poison-dlq");
    let input = write_input(&dir);
    let report = weir::runtime::run(&spec(&dir, &input, "dead-letter"), &env()).expect("job runs");
    assert_eq!(read_pairs(&dir.path("out.jsonl")), expected_output());
    let letters: Vec<Value> = committed_lines(&dir.path("dead"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(letters.len(), poison_count() + BAD_LINES.len());
    assert_eq!(report.dead_letter_records as usize, letters.len());

    // Operator rejects: the original record, and the error by kind.
    let mut from_operator: Vec<(u64, &str)> = letters
        .iter()
        .filter(|l| l["operator"] == "pill")
        .map(|l| {
            assert_eq!(l["job"], "poison-dead-letter");
            let n = l["value"]["n"]
                .as_u64()
                .expect("the original record is kept");
            assert_eq!(l["value"]["cmd"], command_of(n));
            (n, l["error"].as_str().unwrap())
        })
        .collect();
    from_operator.sort();
    let expected: Vec<u64> = (0..=RECORDS)
        .filter(|&i| i == RECORDS || command(i) != "ok")
        .collect();
    assert_eq!(
        from_operator.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected
    );
    for (n, error) in from_operator {
        assert!(error.contains("operator `pill`"), "{error}");
        let wanted = match command_of(n) {
            "error" => format!("the operator returned an error: poison record n={n}"),
            "panic" => format!("poison record n={n}"),
            _ => "longer than the deadline".to_owned(),
        };
        assert!(error.contains(&wanted), "record {n}: {error}");
    }

    // Source rejects: the raw line and the problem, naming the line.
    let mut from_source: Vec<String> = letters
        .iter()
        .filter(|l| l["operator"] == "source")
        .map(|l| l["error"].as_str().unwrap().to_owned())
        .collect();
    from_source.sort();
    assert_eq!(from_source.len(), 3, "{from_source:?}");
    assert!(from_source.iter().any(|e| e.contains("not a JSON object")));
    assert!(
        from_source
            .iter()
            .any(|e| e.contains("key field `user` is missing"))
    );
    assert!(
        from_source
            .iter()
            .any(|e| e.contains("timestamp field `ts`"))
    );
    assert!(from_source.iter().all(|e| e.contains("line ")));
}

fn command_of(n: u64) -> &'static str {
    if n == RECORDS { "error" } else { command(n) }
}

#[test]
fn fail_stops_the_job_at_the_first_poison_record() {
    let dir = TempDir::new("poison-fail");
    let input = write_input(&dir);
    let err = weir::runtime::run(&spec(&dir, &input, "fail"), &env()).expect_err("the job fails");
    assert!(
        matches!(err, JobError::Connector(_) | JobError::Operator(_)),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("line") || text.contains("operator `pill`"),
        "{text}"
    );
}

#[test]
fn a_dead_letter_policy_needs_a_dead_letter_sink() {
    let base = "name: j\nsource: {type: generator, events: 1}\n\
                operators: [{name: p, module: passthrough}]\nsink: {type: discard}\n";
    let err = JobSpec::parse(&format!("{base}on_error: dead-letter\n"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("`dead_letter`"), "{err}");
    let err = JobSpec::parse(&format!("{base}dead_letter: {{type: stdout}}\n"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("only used with `on_error: dead-letter`"),
        "{err}"
    );
    let err = JobSpec::parse(&format!("{base}on_error: retry\n"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("retry"), "{err}");
}
