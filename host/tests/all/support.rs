//! Builds the guest crates once per test run and sets up runtimes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use weir::runtime::JobEnv;
use weir::wasm::{SandboxPolicy, WasmRuntime};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guest_target_dir() -> PathBuf {
    std::env::var_os("WEIR_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guests"))
}

fn build_guests(manifest: &str) -> PathBuf {
    let target = guest_target_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(repo_root().join(manifest))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building guests of {manifest} failed");
    target.join("wasm32-wasip2/release")
}

/// Folder holding the example operators' `.wasm` files.
pub fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_guests("examples/Cargo.toml"))
}

/// Folder holding the misbehaving fixtures' `.wasm` files.
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        examples_dir();
        build_guests("host/tests/fixtures/Cargo.toml")
    })
}

/// A runtime with a short call deadline, shared by the tests.
pub fn runtime() -> Arc<WasmRuntime> {
    static RT: OnceLock<Arc<WasmRuntime>> = OnceLock::new();
    RT.get_or_init(|| {
        let policy = SandboxPolicy {
            call_deadline: Duration::from_millis(500),
            ..SandboxPolicy::default()
        };
        WasmRuntime::new(policy, None).expect("runtime starts")
    })
    .clone()
}

pub fn env() -> JobEnv {
    JobEnv::new(
        runtime(),
        vec![examples_dir().to_owned(), fixtures_dir().to_owned()],
    )
}

/// Reads a file sink's JSON lines as (key, value) pairs, sorted.
pub fn read_pairs(path: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    let text = std::fs::read_to_string(path).expect("sink output exists");
    let mut pairs: Vec<_> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("sink writes JSON lines");
            (v["key"].clone(), v["value"].clone())
        })
        .collect();
    pairs.sort_by_key(|(k, v)| (k.to_string(), v.to_string()));
    pairs
}

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("weir-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
