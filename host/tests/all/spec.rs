//! Job specs: every example parses, and bad specs name the field at fault.

use weir::graph::JobSpec;

use crate::support::repo_root;

#[test]
fn every_example_spec_is_valid() {
    let examples = repo_root().join("examples");
    let mut seen = 0;
    for entry in walk(&examples) {
        if entry.extension().is_some_and(|e| e == "yaml") {
            JobSpec::load(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "found {seen} example specs");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.ends_with("target") && !p.ends_with("src") {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn each_wrong_field_is_named() {
    let good = "name: j\nsource: {type: generator, events: 10}\n\
                operators: [{name: a, native: passthrough}]\nsink: {type: discard}\n";
    JobSpec::parse(good).unwrap();
    let cases = [
        ("name: j", "name: ../etc", "name"),
        ("events: 10", "events: ten", "events"),
        ("type: generator", "type: carrier-pigeon", "carrier-pigeon"),
        (
            "native: passthrough",
            "native: teleport",
            "operators[0].native",
        ),
        (
            "{name: a,",
            "{name: a, parallelism: 0,",
            "operators[0].parallelism",
        ),
        ("type: discard", "type: discard, path: x", "path"),
        ("name: j", "name: j\nmax_parallelism: 0", "max_parallelism"),
        ("name: j", "name: j\nbatch: {size: 0}", "batch.size"),
        ("name: j", "name: j\nbatch: {linger: soon}", "soon"),
        ("[{name: a, native: passthrough}]", "[]", "operators"),
        ("name: j", "name: j\nparallelism: 0", "parallelism"),
        ("name: j", "name: j\nparalelism: 2", "paralelism"),
        ("name: j", "name: j\nstate: quantum", "quantum"),
        (
            "name: j",
            "name: j\nrocksdb: {block_cache: 1GiB}",
            "rocksdb",
        ),
        (
            "name: j",
            "name: j\nstate: rocksdb\nrocksdb: {block_cache: 1KiB}",
            "rocksdb.block_cache",
        ),
        (
            "name: j",
            "name: j\nstate: rocksdb\nrocksdb: {write_buffer: lots}",
            "lots",
        ),
        (
            "name: j",
            "name: j\ncheckpoint: {interval: 1ms}",
            "checkpoint.interval",
        ),
        (
            "name: j",
            "name: j\ncheckpoint: {interval: 1s, retain: 0}",
            "checkpoint.retain",
        ),
        (
            "name: j",
            "name: j\ncheckpoint: {interval: 1s, timeout: 0s}",
            "checkpoint.timeout",
        ),
        (
            "name: j",
            "name: j\ncheckpoint: {interval: 99999999999999999h}",
            "longer than 100 years",
        ),
        ("name: j", "name: j\nrestart: {strategy: pray}", "pray"),
        ("name: j", "name: j\non_error: retry", "retry"),
        ("name: j", "name: j\non_error: dead-letter", "dead_letter"),
        (
            "name: j",
            "name: j\ndead_letter: {type: stdout}",
            "dead_letter",
        ),
        (
            "events: 10",
            "events: 10, watermark: {max_out_of_orderness: soon}",
            "soon",
        ),
        ("{name: a,", "{name: a, input: sideways,", "sideways"),
        ("{name: a,", "{name: ../a,", "operators[0].name"),
        (
            "type: generator, events: 10",
            "type: kafka, brokers: '', topic: t",
            "source.brokers",
        ),
        (
            "type: generator, events: 10",
            "type: kafka, brokers: b, topic: t, rate: 0",
            "source.rate",
        ),
        ("type: generator, events: 10", "type: file", "path"),
        (
            "type: discard",
            "type: kafka, brokers: b, topic: t, delivery: exactly-once",
            "sink.delivery",
        ),
        (
            "type: discard",
            "type: kafka, brokers: '', topic: t",
            "sink",
        ),
    ];
    for (from, to, expect) in cases {
        let bad = good.replacen(from, to, 1);
        let err = JobSpec::parse(&bad).expect_err(&bad).to_string();
        assert!(
            err.contains(expect),
            "spec:\n{bad}\nerror: {err}\nshould mention `{expect}`"
        );
    }
}
