//! A checkpoint or savepoint folder is untrusted (savepoints are copied
//! between machines): its manifest and state file are checked and restored
//! into operators with errors for anything wrong, never a panic.
//!
//! Input: the manifest's JSON, a NUL byte, then the state file's bytes. The
//! checksums and sizes of the listed files are set to match the state file
//! first, so the fuzzer gets past them to the structure behind.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir::checkpoint::LoadedCheckpoint;
use weir::runtime::InstanceInfo;
use weir::state::memory::MemoryBackend;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (json, state) = (&data[..split], &data[split + 1..]);
    let Ok(mut manifest) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    if let Some(files) = manifest.get_mut("files").and_then(Value::as_array_mut) {
        for file in files {
            if let Some(file) = file.as_object_mut() {
                file.insert("size".into(), Value::from(state.len() as u64));
                let sum = hex::encode(Sha256::digest(state));
                file.insert("sha256".into(), Value::from(sum));
            }
        }
    }
    let json = serde_json::to_vec(&manifest).expect("a JSON value serialises");
    let Ok(loaded) =
        LoadedCheckpoint::verify(Path::new("fuzzed"), &json, &mut |_| Ok(state.to_vec()))
    else {
        return;
    };
    let max_parallelism = loaded.manifest.max_parallelism.clamp(1, 32_768);
    let operators: std::collections::BTreeSet<String> = loaded
        .manifest
        .tasks
        .iter()
        .flat_map(|t| t.state.iter())
        .flat_map(|s| s.operators.iter().map(|o| o.operator.clone()))
        .collect();
    for operator in operators {
        let info = InstanceInfo {
            job: "fuzzed".into(),
            operator,
            instance: 0,
            parallelism: 1,
            max_parallelism,
            key_groups: 0..max_parallelism,
            keyed: true,
        };
        let backend = Box::new(MemoryBackend::new(0..max_parallelism));
        if let Ok(mut op) = weir::operators::build("keyed-count", info.clone(), backend) {
            // Native state (RocksDB's own files, checksummed like the rest)
            // is left out: `verify` above already decoded its meta blob,
            // and opening fuzzed RocksDB files would test RocksDB.
            let _ = loaded.restore_operator(&info, op.as_mut(), true);
        }
    }
});
