//! Keyed state and key routing: per-key results do not depend on parallelism,
//! and a key's state is never seen by another key.

use std::collections::BTreeMap;

use weir::graph::JobSpec;

use crate::support::{TempDir, env, read_pairs};

fn keyed_count_spec(parallelism: u32, out: &std::path::Path, native: bool) -> JobSpec {
    let op = if native {
        "native: keyed-count"
    } else {
        "module: keyed-count"
    };
    JobSpec::parse(&format!(
        "name: kc\nparallelism: {parallelism}\nbatch: {{size: 64}}\n\
         source: {{type: generator, events: 20000, keys: 97}}\n\
         operators: [{{name: count, {op}, input: key}}]\n\
         sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
        out.display()
    ))
    .expect("spec is valid")
}

/// Per key: every count from 1 to its total, exactly once.
fn per_key_counts(out: &std::path::Path) -> BTreeMap<u64, Vec<u64>> {
    let mut m: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, v) in read_pairs(out) {
        m.entry(k.as_u64().unwrap())
            .or_default()
            .push(v.as_u64().unwrap());
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

#[test]
fn keyed_count_is_identical_at_parallelism_1_2_and_4() {
    let dir = TempDir::new("par");
    let mut results = Vec::new();
    for p in [1, 2, 4] {
        let out = dir.path(&format!("p{p}.jsonl"));
        weir::runtime::run(&keyed_count_spec(p, &out, false), &env()).expect("job runs");
        results.push(per_key_counts(&out));
    }
    assert_eq!(results[0].len(), 97);
    for (key, counts) in &results[0] {
        let total = 20000 / 97 + u64::from(*key < 20000 % 97);
        assert_eq!(counts, &(1..=total).collect::<Vec<_>>(), "key {key}");
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn wasm_and_native_keyed_count_agree() {
    let dir = TempDir::new("native");
    let wasm = dir.path("wasm.jsonl");
    let native = dir.path("native.jsonl");
    weir::runtime::run(&keyed_count_spec(2, &wasm, false), &env()).unwrap();
    weir::runtime::run(&keyed_count_spec(2, &native, true), &env()).unwrap();
    assert_eq!(read_pairs(&wasm), read_pairs(&native));
}

#[test]
fn a_batch_with_repeated_keys_sees_its_own_writes() {
    // batch size 1000 and 3 keys: every batch holds each key many times, so
    // the guest must read back values written earlier in the same batch.
    let dir = TempDir::new("repeat");
    let out = dir.path("out.jsonl");
    let spec = JobSpec::parse(&format!(
        "name: rep\nbatch: {{size: 1000}}\n\
         source: {{type: generator, events: 3000, keys: 3}}\n\
         operators: [{{name: count, module: keyed-count, input: key}}]\n\
         sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
        out.display()
    ))
    .unwrap();
    weir::runtime::run(&spec, &env()).unwrap();
    let counts = per_key_counts(&out);
    for k in 0..3 {
        assert_eq!(counts[&k], (1..=1000).collect::<Vec<_>>());
    }
}

#[test]
fn key_groups_are_owned_by_exactly_the_instance_that_receives_them() {
    use weir::graph::{instance_for_key_group, key_group, key_group_range};
    for p in [1u32, 2, 3, 4, 7] {
        for k in 0..1000u64 {
            let g = key_group(&k.to_le_bytes(), 128);
            let i = instance_for_key_group(g, 128, p);
            assert!(key_group_range(i, 128, p).contains(&g));
        }
    }
}
