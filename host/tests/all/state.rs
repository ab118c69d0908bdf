//! State backends: every stateful job here runs on memory and on RocksDB
//! state and must give the same output, which a model computed here also
//! checks. RocksDB runs with a 4 KiB value cache, so almost every access
//! goes through RocksDB itself rather than the cache in front of it.

use std::collections::BTreeMap;
use std::path::Path;

use weir::graph::JobSpec;
use weir::runtime::StartOptions;

use crate::support::{TempDir, committed_lines, env, read_pairs};

const BACKENDS: [&str; 2] = ["memory", "rocksdb"];

/// The spec's YAML with the given state backend (RocksDB files under `dir`).
fn with_state(yaml: &str, backend: &str, dir: &Path) -> JobSpec {
    let state = match backend {
        "memory" => "state: memory\n".to_owned(),
        _ => format!(
            "state: rocksdb\nrocksdb: {{dir: {}, value_cache: 4KiB, block_cache: 8MiB, write_buffer: 1MiB}}\n",
            dir.display()
        ),
    };
    JobSpec::parse(&format!("{yaml}{state}")).expect("spec is valid")
}

/// What the state-mix fixture emits for generator records `0..events`
/// with `keys` keys: per key, the JSON lines in order.
fn state_mix_model(events: u64, keys: u64) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    // Per key: seen, residue counts, recent values.
    type KeyState = (u64, BTreeMap<u8, u64>, Vec<u64>);
    let mut state: BTreeMap<u64, KeyState> = BTreeMap::new();
    for i in 0..events {
        let key = i % keys;
        let (seen, residues, recent) = state.entry(key).or_default();
        *seen += 1;
        *residues.entry((i % 5) as u8).or_default() += 1;
        if recent.len() >= 4 {
            recent.clear();
        }
        recent.push(i);
        let residues: Vec<String> = residues.iter().map(|(r, c)| format!("[{r},{c}]")).collect();
        let recent: Vec<String> = recent.iter().map(u64::to_string).collect();
        let line = format!(
            "{{\"seen\":{seen},\"residues\":[{}],\"recent\":[{}]}}",
            residues.join(","),
            recent.join(",")
        );
        // As the sink's JSON comes back: parsed and printed again.
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        out.entry(key).or_default().push(line.to_string());
    }
    out
}

/// Per key, the emitted JSON lines in the order emitted.
fn per_key_lines(pairs: &[(serde_json::Value, serde_json::Value)]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        out.entry(k.as_u64().expect("u64 key"))
            .or_default()
            .push(v.to_string());
    }
    for lines in out.values_mut() {
        // Each line carries its `seen` count: order by it.
        lines.sort_by_key(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["seen"].as_u64().unwrap()
        });
    }
    out
}

#[test]
fn value_map_and_list_state_give_the_modelled_result_on_both_backends_at_1_2_and_4() {
    let tmp = TempDir::new("state-mix");
    // One source instance, so each key's records arrive in generation order
    // (the list state depends on it) whatever the operator's parallelism.
    let (events, keys) = (6_000, 37);
    let model = state_mix_model(events, keys);
    for backend in BACKENDS {
        for parallelism in [1, 2, 4] {
            let out = tmp.path(&format!("{backend}-{parallelism}.jsonl"));
            let yaml = format!(
                "name: mix\nparallelism: {parallelism}\nbatch: {{size: 50}}\n\
                 source: {{type: generator, events: {events}, keys: {keys}, parallelism: 1}}\n\
                 operators: [{{name: mix, module: state-mix, input: key}}]\n\
                 sink: {{type: file, path: {}, format: {{key: u64, value: text}}}}\n",
                out.display()
            );
            weir::runtime::run(&with_state(&yaml, backend, &tmp.path("rocks")), &env())
                .unwrap_or_else(|e| panic!("{backend} at {parallelism}: {e}"));
            let actual = per_key_lines(&read_pairs(&out));
            if let Some((key, lines)) = actual.iter().find(|(k, l)| model.get(k) != Some(l)) {
                let expected = model.get(key).cloned().unwrap_or_default();
                let at = lines.iter().zip(&expected).position(|(a, b)| a != b);
                panic!(
                    "{backend} at parallelism {parallelism}: key {key} differs from the model \
                     ({} lines, {} expected) first at line {at:?}: {:?} vs {:?}",
                    lines.len(),
                    expected.len(),
                    at.map(|i| &lines[i]),
                    at.map(|i| &expected[i])
                );
            }
            assert_eq!(
                actual.len(),
                model.len(),
                "{backend} at {parallelism}: keys"
            );
        }
    }
    let leftovers = std::fs::read_dir(tmp.path("rocks").join("mix"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "every instance removed its working files");
}

#[test]
fn state_updates_in_any_order_land_on_their_own_keys_on_both_backends() {
    // The fixture removes every existing count before storing new keys'
    // counts and then re-stores the removed ones: a freed place reused by a
    // new key must not receive the re-stored count of the key that left it.
    let tmp = TempDir::new("state-order");
    let (events, keys) = (20_000u64, 97u64);
    for backend in BACKENDS {
        let out = tmp.path(&format!("{backend}.jsonl"));
        let yaml = format!(
            "name: order\nparallelism: 2\nbatch: {{size: 64}}\n\
             source: {{type: generator, events: {events}, keys: {keys}}}\n\
             operators: [{{name: count, module: update-order, input: key}}]\n\
             sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
            out.display()
        );
        weir::runtime::run(&with_state(&yaml, backend, &tmp.path("rocks")), &env())
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (k, v) in read_pairs(&out) {
            counts
                .entry(k.as_u64().unwrap())
                .or_default()
                .push(v.as_u64().unwrap());
        }
        assert_eq!(counts.len() as u64, keys, "{backend}: keys");
        for (key, mut seen) in counts {
            seen.sort_unstable();
            let total = events / keys + u64::from(key < events % keys);
            assert_eq!(
                seen,
                (1..=total).collect::<Vec<_>>(),
                "{backend}: key {key}"
            );
        }
    }
}

#[test]
fn keyed_counts_and_every_window_kind_agree_between_backends() {
    let tmp = TempDir::new("state-agree");
    let jobs = [
        (
            "counts",
            "batch: {size: 1000}\nsource: {type: generator, events: 30000, keys: 3}\n\
             operators: [{name: count, module: keyed-count, input: key}]\n",
        ),
        (
            "tumbling",
            "source: {type: generator, events: 40000, keys: 50, events_per_ms: 2}\n\
             operators: [{name: w, module: window-count, input: key, window: {type: tumbling, size: 100ms}}]\n",
        ),
        (
            "sliding",
            "source: {type: generator, events: 40000, keys: 50, events_per_ms: 2}\n\
             operators: [{name: w, module: window-count, input: key, window: {type: sliding, size: 100ms, slide: 30ms}}]\n",
        ),
        (
            "session",
            "source: {type: generator, events: 40000, keys: 50, events_per_ms: 2}\n\
             operators: [{name: w, module: window-count, input: key, window: {type: session, gap: 10ms}}]\n",
        ),
    ];
    for (name, body) in jobs {
        let mut outputs = Vec::new();
        for backend in BACKENDS {
            let out = tmp.path(&format!("{name}-{backend}.jsonl"));
            let yaml = format!(
                "name: {name}\nparallelism: 2\n{body}\
                 sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n",
                out.display()
            );
            weir::runtime::run(&with_state(&yaml, backend, &tmp.path("rocks")), &env())
                .unwrap_or_else(|e| panic!("{name} on {backend}: {e}"));
            outputs.push(read_pairs(&out));
        }
        assert!(!outputs[0].is_empty(), "{name} produced output");
        assert!(outputs[0] == outputs[1], "{name}: backends disagree");
    }
}

#[test]
fn a_rocksdb_savepoint_resumes_on_rocksdb_at_3_and_on_memory_at_1() {
    let tmp = TempDir::new("state-savepoint");
    let spec = |backend: &str, parallelism: u32, out: &Path, rate: &str| {
        let yaml = format!(
            "name: rescale\nparallelism: {parallelism}\n\
             source: {{type: generator, events: 100000, keys: 40{rate},\n\
                       watermark: {{max_out_of_orderness: 1s}}}}\n\
             operators:\n\
               - {{name: count, module: window-count, input: key,\n\
                   window: {{type: tumbling, size: 50ms}}}}\n\
             sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
             checkpoint: {{interval: 100ms, dir: {}}}\n",
            out.display(),
            tmp.path(&format!("ck-{backend}-{parallelism}-{}", rate.len()))
                .display()
        );
        with_state(&yaml, backend, &tmp.path("rocks"))
    };
    let reference = tmp.path("reference");
    weir::runtime::run(&spec("memory", 2, &reference, ""), &env()).unwrap();
    let expected = committed_lines(&reference);

    let first = tmp.path("first");
    let handle = weir::runtime::start(
        &spec("rocksdb", 2, &first, ", rate: 50000"),
        &env(),
        StartOptions::default(),
    )
    .unwrap();
    crate::support::wait_for_records(&handle, 30_000);
    let savepoint = handle
        .stop_with_savepoint(&tmp.path("savepoints"))
        .expect("savepoint");
    let report = handle.wait().unwrap();
    assert!(report.records_in < 100_000, "stopped before the end");

    for (backend, parallelism) in [("rocksdb", 3), ("memory", 1)] {
        let out = tmp.path(&format!("resumed-{backend}"));
        crate::checkpoints::copy_dir(&first, &out);
        crate::support::resume_from(&spec(backend, parallelism, &out, ""), &savepoint);
        assert!(
            committed_lines(&out) == expected,
            "resumed on {backend} at {parallelism}: output differs from the uninterrupted run"
        );
    }
}

/// The manifests of a job's complete checkpoints, oldest first.
fn manifests(root: &Path, job: &str) -> Vec<weir::checkpoint::Manifest> {
    let store = weir::checkpoint::CheckpointStore::new(root, job);
    store
        .complete()
        .unwrap()
        .into_iter()
        .map(|id| {
            let json = std::fs::read(store.checkpoint_dir(id).join("manifest.json")).unwrap();
            serde_json::from_slice(&json).unwrap()
        })
        .collect()
}

fn shared_names(m: &weir::checkpoint::Manifest) -> std::collections::BTreeSet<String> {
    m.shared_files().map(|f| f.name.clone()).collect()
}

#[test]
fn incremental_rocksdb_checkpoints_share_files_and_restore_as_files_or_rescaled() {
    let tmp = TempDir::new("state-incremental");
    let spec = |backend: &str, parallelism: u32, out: &Path, checkpoints: &Path, rate: &str| {
        let yaml = format!(
            "name: incr\nparallelism: {parallelism}\n\
             source: {{type: generator, events: 120000, keys: 2000{rate},\n\
                       watermark: {{max_out_of_orderness: 1s}}}}\n\
             operators:\n\
               - {{name: count, module: window-count, input: key,\n\
                   window: {{type: tumbling, size: 50ms}}}}\n\
             sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
             checkpoint: {{interval: 100ms, dir: {}, retain: 3}}\n",
            out.display(),
            checkpoints.display()
        );
        with_state(
            &yaml,
            backend,
            &tmp.path(&format!("rocks-{backend}-{parallelism}")),
        )
    };
    let reference = tmp.path("reference");
    weir::runtime::run(
        &spec("memory", 2, &reference, &tmp.path("ck-reference"), ""),
        &env(),
    )
    .unwrap();
    let expected = committed_lines(&reference);

    // A run on RocksDB, stopped without a savepoint once it has a few
    // checkpoints: what remains is what a crash leaves.
    let (first, checkpoints) = (tmp.path("first"), tmp.path("ck"));
    let handle = weir::runtime::start(
        &spec("rocksdb", 2, &first, &checkpoints, ", rate: 40000"),
        &env(),
        StartOptions::default(),
    )
    .unwrap();
    crate::support::wait_for_records(&handle, 20_000);
    let store = weir::checkpoint::CheckpointStore::new(&checkpoints, "incr");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.complete().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "three checkpoints");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    handle.cancel();
    let _ = handle.wait();

    let kept = manifests(&checkpoints, "incr");
    assert_eq!(kept.len(), 3, "retain: 3");
    let shared_dir = checkpoints.join("incr").join("shared");
    for m in &kept {
        assert_eq!(m.format, 2, "incremental checkpoints have format 2");
        assert!(shared_names(m).len() >= 2, "both instances list SST files");
        for name in shared_names(m) {
            assert!(shared_dir.join(&name).is_file(), "{name} is stored");
        }
    }
    let shared_by_a_pair = kept
        .windows(2)
        .any(|w| !shared_names(&w[0]).is_disjoint(&shared_names(&w[1])));
    assert!(
        shared_by_a_pair,
        "consecutive checkpoints list some of the same files instead of copies"
    );

    // A flipped byte in a file only the newest checkpoint lists: the
    // restore falls back to the one before and names the file.
    let corrupt = tmp.path("ck-corrupt");
    crate::checkpoints::copy_dir(&checkpoints, &corrupt);
    let (newest, previous) = (&kept[2], &kept[1]);
    let only_newest = shared_names(newest)
        .difference(&shared_names(previous))
        .next()
        .cloned()
        .expect("the newest checkpoint stored new files");
    let path = corrupt.join("incr").join("shared").join(&only_newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let (usable, skipped) = weir::checkpoint::CheckpointStore::new(&corrupt, "incr")
        .latest_usable()
        .unwrap();
    assert_eq!(usable.unwrap().id(), previous.checkpoint);
    let reason = skipped[0].to_string();
    assert!(
        reason.contains(&only_newest) && reason.contains("checksum"),
        "{reason}"
    );

    // Resumed from the newest checkpoint: at the same parallelism each
    // instance opens its old files; at 3 and on memory at 1 the entries are
    // read out of them by key group. Every way gives the uninterrupted
    // run's output exactly.
    for (backend, parallelism) in [("rocksdb", 2), ("rocksdb", 3), ("memory", 1)] {
        let out = tmp.path(&format!("out-{backend}-{parallelism}"));
        let ck = tmp.path(&format!("ck-{backend}-{parallelism}"));
        crate::checkpoints::copy_dir(&first, &out);
        crate::checkpoints::copy_dir(&checkpoints, &ck);
        let report = weir::runtime::run(&spec(backend, parallelism, &out, &ck, ""), &env())
            .unwrap_or_else(|e| panic!("{backend} at {parallelism}: {e}"));
        assert!(report.restored_from.is_some(), "resumed from a checkpoint");
        assert!(
            committed_lines(&out) == expected,
            "resumed on {backend} at {parallelism}: output differs from the uninterrupted run"
        );
        // Pruning kept exactly the shared files a kept checkpoint lists.
        let listed: std::collections::BTreeSet<String> = manifests(&ck, "incr")
            .iter()
            .flat_map(shared_names)
            .collect();
        let stored: std::collections::BTreeSet<String> =
            std::fs::read_dir(ck.join("incr").join("shared"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
        assert_eq!(stored, listed, "{backend} at {parallelism}: shared files");
    }
}
