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

/// The job environment of in-process tests. With `WEIR_LOG` set, the jobs'
/// logs go to each test's captured output (`--nocapture` shows them).
pub fn env() -> JobEnv {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
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

/// The committed lines of a directory sink, sorted; fails on a leftover
/// in-progress part.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).expect("sink folder exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            !name.ends_with(".inprogress"),
            "in-progress part left behind: {name}"
        );
        if name.starts_with("part-") {
            lines.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    lines.sort();
    lines
}

/// Per key: the counts and the event times keyed-count emitted, sorted.
pub type KeyedOutput = std::collections::BTreeMap<u64, (Vec<u64>, Vec<i64>)>;

pub fn keyed_output(lines: &[String]) -> KeyedOutput {
    let mut m = KeyedOutput::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("sink lines are JSON");
        let e = m.entry(v["key"].as_u64().unwrap()).or_default();
        e.0.push(v["value"].as_u64().unwrap());
        e.1.push(v["timestamp"].as_i64().unwrap());
    }
    for (counts, times) in m.values_mut() {
        counts.sort_unstable();
        times.sort_unstable();
    }
    m
}

/// What keyed-count emits for generator events `0..events` over `keys` keys
/// (event `i` at `i` ms): each key counts 1..n, one output per event of the
/// key. (Which count an event gets depends on how the parallel sources
/// interleave, so counts and times are compared as sets per key.)
pub fn expected_counts(events: u64, keys: u64) -> KeyedOutput {
    let mut m = KeyedOutput::new();
    for i in 0..events {
        let e = m.entry(i % keys).or_default();
        e.0.push(e.0.len() as u64 + 1);
        e.1.push(i as i64);
    }
    m
}

/// Compares without printing millions of lines on a mismatch.
pub fn assert_same_output(actual: &KeyedOutput, expected: &KeyedOutput, context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: number of keys");
    for (key, want) in expected {
        let got = &actual[key];
        assert!(
            got == want,
            "{context}: key {key}: {} outputs, want {}; first counts {:?}",
            got.0.len(),
            want.0.len(),
            &got.0[..got.0.len().min(10)]
        );
    }
}

/// Checks keyed-count output where a second version (keyed-count-v2, which
/// adds 1 000 000 to every count it emits) took over from the first: every
/// key got counts from both, v2's continue exactly where v1's stopped, and
/// with the mark removed the output is exactly the expected counts.
pub fn assert_upgraded_counts(lines: &[String], (events, keys): (u64, u64), context: &str) {
    const MARK: u64 = 1_000_000;
    let mut output = keyed_output(lines);
    let mut continued = 0;
    for (counts, _) in output.values_mut() {
        let v1_max = counts.iter().filter(|&&c| c < MARK).max().copied();
        let v2_min = counts.iter().filter(|&&c| c >= MARK).min().copied();
        if let Some(v2_min) = v2_min {
            assert_eq!(
                v2_min - MARK,
                v1_max.unwrap_or(0) + 1,
                "{context}: v2 continues from v1's state"
            );
            continued += 1;
        }
        for c in counts.iter_mut() {
            *c %= MARK;
        }
        counts.sort_unstable();
    }
    assert_eq!(continued, keys, "{context}: every key got counts from v2");
    assert_same_output(&output, &expected_counts(events, keys), context);
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `weir serve` as a child process on 127.0.0.1:`port`, ready when returned.
pub fn weir_serve(port: u16, data_dir: &Path, token: &str) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token",
            token,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weir serve starts");
    let server = KillOnDrop(child);
    wait_for_port(port, "weir serve");
    server
}

/// Waits until a started job's sources have taken in `records`.
pub fn wait_for_records(handle: &weir::runtime::JobHandle, records: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while handle.records_processed() < records {
        assert!(
            std::time::Instant::now() < deadline,
            "the job makes no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A blocking POST to a server on 127.0.0.1 with a bearer token: the
/// status and the body's text.
pub fn post_with_token(url: &str, token: &str, body: Vec<u8>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
}

/// Runs `spec` from `savepoint` to its end; checks it restored from there.
pub fn resume_from(spec: &weir::graph::JobSpec, savepoint: &Path) -> weir::runtime::JobReport {
    let report = weir::runtime::start(
        spec,
        &env(),
        weir::runtime::StartOptions {
            restore: weir::runtime::RestoreFrom::Savepoint(savepoint.to_owned()),
        },
    )
    .expect("the job starts")
    .wait()
    .expect("the resumed job runs");
    assert_eq!(report.restored_from.as_deref(), Some(savepoint));
    report
}
