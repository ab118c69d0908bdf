//! Checkpoints, recovery and savepoints: output is exactly once across
//! task failures, SIGKILLs of the process and rescaling; a corrupt
//! checkpoint is skipped in favour of the previous one, with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir::checkpoint::CheckpointStore;
use weir::connectors::{
    ConnectorError, Poll, Source, SourceAssignment, SplitPosition, build_source,
};
use weir::graph::JobSpec;
use weir::runtime::{RecordBatch, RestoreFrom, StartOptions};

use crate::support::{
    TempDir, assert_same_output, assert_upgraded_counts, committed_lines, env, examples_dir,
    expected_counts, keyed_output,
};

/// Reads the generator's events, slowly enough for checkpoints to happen,
/// and fails once (an I/O error) when the job first reaches `fail_at`, once
/// a checkpoint has completed: the coordinator triggers one checkpoint at a
/// time, so a second snapshot of this source means the first completed.
struct FailingOnce {
    inner: Box<dyn Source>,
    taken: u64,
    fail_at: u64,
    failed: Arc<AtomicBool>,
    snapshots: AtomicU64,
}

impl Source for FailingOnce {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        if self.taken >= self.fail_at
            && self.snapshots.load(Ordering::SeqCst) >= 2
            && !self.failed.swap(true, Ordering::SeqCst)
        {
            return Err(ConnectorError::Io {
                path: "flaky-disk".into(),
                source: std::io::Error::other("injected read failure"),
            });
        }
        std::thread::sleep(Duration::from_micros(500));
        let before = out.len();
        // A pace independent of the batch size the runtime asks for.
        let poll = self.inner.poll(out, max.min(100))?;
        self.taken += (out.len() - before) as u64;
        Ok(poll)
    }

    fn positions(&self) -> Option<Vec<SplitPosition>> {
        self.snapshots.fetch_add(1, Ordering::SeqCst);
        self.inner.positions()
    }
}

#[test]
fn a_failed_task_restarts_from_the_last_checkpoint_with_exactly_once_output() {
    failed_task_restarts(None);
}

#[test]
fn a_failed_source_sharing_its_readers_thread_restarts_with_exactly_once_output() {
    failed_task_restarts(Some(true));
}

fn failed_task_restarts(share_source_threads: Option<bool>) {
    let tmp = TempDir::new("restart");
    let out = tmp.path("out");
    let (events, keys) = (120_000, 101);
    let spec = JobSpec::parse(&format!(
        "name: restart\nparallelism: 2\n\
         source: {{type: embedded}}\n\
         operators: [{{name: count, module: keyed-count, input: key}}]\n\
         sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
         checkpoint: {{interval: 40ms, dir: {}}}\n\
         restart: {{strategy: fixed-delay, attempts: 2, delay: 10ms}}\n",
        out.display(),
        tmp.path("checkpoints").display()
    ))
    .unwrap();
    let generator = JobSpec::parse(&format!(
        "name: g\nsource: {{type: generator, events: {events}, keys: {keys}}}\n\
         operators: [{{name: p, native: passthrough}}]\nsink: {{type: discard}}\n"
    ))
    .unwrap()
    .source;
    let failed = Arc::new(AtomicBool::new(false));
    let mut job_env = env();
    job_env.share_source_threads = share_source_threads;
    let flag = failed.clone();
    job_env.embedded_source = Some(Arc::new(move |assignment: &SourceAssignment| {
        Box::new(FailingOnce {
            inner: build_source(&generator, assignment).unwrap(),
            taken: 0,
            fail_at: if assignment.instance == 0 {
                30_000
            } else {
                u64::MAX
            },
            failed: flag.clone(),
            snapshots: AtomicU64::new(0),
        }) as Box<dyn Source>
    }));
    let report = weir::runtime::run(&spec, &job_env).expect("the job recovers");
    assert!(failed.load(Ordering::SeqCst), "the failure was injected");
    assert_eq!(report.restarts, 1);
    assert!(
        report.restored_from.is_some(),
        "a checkpoint completed before the failure"
    );
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        "after a restart",
    );
}

#[test]
fn a_failure_beyond_the_restart_attempts_fails_the_job_with_its_cause() {
    let tmp = TempDir::new("no-restart");
    let input = tmp.path("in.txt");
    std::fs::write(&input, "fine\nboom\n").unwrap();
    let spec = JobSpec::parse(&format!(
        "name: trap\nsource: {{type: file, path: {}, format: lines}}\n\
         operators: [{{name: boom, module: trap}}]\n\
         sink: {{type: discard}}\n\
         checkpoint: {{interval: 1s, dir: {}}}\n\
         restart: {{strategy: fixed-delay, attempts: 2, delay: 1ms}}\n",
        input.display(),
        tmp.path("checkpoints").display()
    ))
    .unwrap();
    let err = weir::runtime::run(&spec, &env()).unwrap_err().to_string();
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("trapped"), "{err}");
}

/// A keyed-count job over paced generated events into a directory sink.
pub fn keyed_count_yaml(
    name: &str,
    parallelism: u32,
    (events, keys, rate): (u64, u64, u64),
    out: &Path,
    checkpoint: &str,
) -> String {
    format!(
        "name: {name}\nparallelism: {parallelism}\n\
         source: {{type: generator, events: {events}, keys: {keys}, rate: {rate}}}\n\
         operators: [{{name: count, module: keyed-count, input: key}}]\n\
         sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
         checkpoint: {checkpoint}\n",
        out.display()
    )
}

/// `weir run SPEC` with the example modules, quiet.
fn weir_run(spec: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    c.arg("run")
        .arg(spec)
        .arg("--module-dir")
        .arg(examples_dir())
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// Runs `weir run` on a spec, killing it with SIGKILL `kills` times at
/// random moments (calling `after_kill` after each), then lets it finish.
pub fn run_with_kills(
    spec: &Path,
    kills: usize,
    seed: u64,
    envs: &[(&str, String)],
    after_kill: &dyn Fn(usize),
) {
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = || {
        weir_run(spec)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("weir starts")
    };
    for kill in 0..kills {
        let mut child = start();
        let wait = Duration::from_millis(700 + next() % 1800);
        std::thread::sleep(wait);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before kill {kill} (seed {seed}); make it longer"
        );
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        after_kill(kill);
    }
    let mut child = start();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the last run failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the last run did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_process_repeatedly_loses_and_duplicates_nothing() {
    let tmp = TempDir::new("chaos");
    let out = tmp.path("out");
    let (events, keys) = (3_000_000, 997);
    let spec = tmp.path("job.yaml");
    let checkpoint = format!(
        "{{interval: 300ms, dir: {}}}",
        tmp.path("checkpoints").display()
    );
    std::fs::write(
        &spec,
        keyed_count_yaml("chaos", 2, (events, keys, 90_000), &out, &checkpoint),
    )
    .unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    run_with_kills(&spec, 5, seed, &[], &|_| {});
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        &format!("after 5 kills (seed {seed})"),
    );
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn state_file(checkpoint: &Path) -> PathBuf {
    std::fs::read_dir(checkpoint)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "state"))
        .expect("the checkpoint has a state file")
}

#[test]
fn a_corrupt_checkpoint_is_skipped_for_the_previous_one_with_the_reason() {
    let tmp = TempDir::new("corrupt");
    let checkpoints = tmp.path("checkpoints");
    let (events, keys) = (60_000, 50);
    let spec_for = |out: &Path, dir: &Path| {
        JobSpec::parse(&format!(
            "name: corrupt\n\
             source: {{type: generator, events: {events}, keys: {keys}, rate: 60000}}\n\
             operators: [{{name: count, native: keyed-count, input: key}}]\n\
             sink: {{type: file, path: {}, format: {{key: u64, value: u64}}}}\n\
             checkpoint: {{interval: 30ms, dir: {}, retain: 10}}\n",
            out.display(),
            dir.display()
        ))
        .unwrap()
    };
    // Run until a few checkpoints exist, then cancel.
    let handle = weir::runtime::start(
        &spec_for(&tmp.path("first.jsonl"), &checkpoints),
        &env(),
        StartOptions::default(),
    )
    .unwrap();
    let store = CheckpointStore::new(&checkpoints, "corrupt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.complete().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no checkpoints were taken");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.cancel();
    assert!(handle.wait().is_err(), "a cancelled job reports it");

    let ids = store.complete().unwrap();
    let (newest, previous) = (ids[ids.len() - 1], ids[ids.len() - 2]);
    type Damage = fn(&Path);
    let damages: [(&str, Damage, &str); 3] = [
        (
            "truncated",
            |p| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len / 2).unwrap();
            },
            "truncated",
        ),
        (
            "flipped",
            |p| {
                let mut b = std::fs::read(p).unwrap();
                let i = b.len() - 3;
                b[i] ^= 0x40;
                std::fs::write(p, b).unwrap();
            },
            "checksum",
        ),
        (
            "missing",
            |p| std::fs::remove_file(p).unwrap(),
            "cannot read",
        ),
    ];
    for (name, damage, reason) in damages {
        let copy = tmp.path(&format!("copy-{name}"));
        copy_dir(&checkpoints, &copy);
        let copied = CheckpointStore::new(&copy, "corrupt");
        damage(&state_file(&copied.checkpoint_dir(newest)));
        let (usable, skipped) = copied.latest_usable().unwrap();
        assert_eq!(
            usable.expect("a usable checkpoint").id(),
            previous,
            "{name}"
        );
        assert_eq!(skipped.len(), 1, "{name}");
        let why = skipped[0].to_string();
        assert!(
            why.contains(reason) && why.contains(".state"),
            "{name}: {why}"
        );

        // Resuming takes the previous checkpoint and completes the counts.
        let out = tmp.path(&format!("{name}.jsonl"));
        std::fs::copy(tmp.path("first.jsonl"), &out).unwrap();
        let report = weir::runtime::start(&spec_for(&out, &copy), &env(), StartOptions::default())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(report.restored_from, Some(copied.checkpoint_dir(previous)));
        // A file sink is at least once: the records after the checkpoint
        // are written again. Every key still counts each event once: its
        // highest count is its number of events.
        let lines: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let output = keyed_output(&lines);
        for (key, (want, _)) in expected_counts(events, keys) {
            let (got, _) = &output[&key];
            assert_eq!(got.last(), want.last(), "{name}: key {key}");
            let mut distinct = got.clone();
            distinct.dedup();
            assert_eq!(distinct, want, "{name}: key {key}");
        }
    }
}

fn window_spec(parallelism: u32, out: &Path, checkpoints: &Path, rate: Option<u64>) -> JobSpec {
    let rate = rate.map(|r| format!(", rate: {r}")).unwrap_or_default();
    JobSpec::parse(&format!(
        "name: windows\nparallelism: {parallelism}\n\
         source: {{type: generator, events: 200000, keys: 40{rate},\n\
                   watermark: {{max_out_of_orderness: 1s}}}}\n\
         operators:\n\
           - {{name: count, module: window-count, input: key,\n\
               window: {{type: tumbling, size: 50ms}}}}\n\
         sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
         checkpoint: {{interval: 100ms, dir: {}}}\n",
        out.display(),
        checkpoints.display()
    ))
    .unwrap()
}

/// Runs the paced window job at parallelism 2 into `first` and stops it
/// with a savepoint part way through: the output folder, the savepoint.
fn stop_part_way(
    tmp: &TempDir,
    env: &weir::runtime::JobEnv,
) -> (PathBuf, PathBuf, weir::runtime::JobReport) {
    // Paced, so that checkpoints complete before the stop.
    let first = tmp.path("first");
    let handle = weir::runtime::start(
        &window_spec(2, &first, &tmp.path("ck-first"), Some(100_000)),
        env,
        StartOptions::default(),
    )
    .unwrap();
    crate::support::wait_for_records(&handle, 60_000);
    let savepoint = handle
        .stop_with_savepoint(&tmp.path("savepoints"))
        .expect("savepoint");
    let report = handle.wait().unwrap();
    assert_eq!(report.stopped_with_savepoint.as_ref(), Some(&savepoint));
    assert!(report.records_in < 200_000, "stopped before the end");
    (first, savepoint, report)
}

#[test]
fn sources_sharing_their_readers_threads_checkpoint_stop_and_resume_with_the_uninterrupted_result()
{
    let tmp = TempDir::new("shared-threads");
    let own = tmp.path("own");
    let own_env = weir::runtime::JobEnv {
        share_source_threads: Some(false),
        ..env()
    };
    let shared_env = weir::runtime::JobEnv {
        share_source_threads: Some(true),
        ..env()
    };
    weir::runtime::run(&window_spec(2, &own, &tmp.path("ck-own"), None), &own_env).unwrap();
    let expected = committed_lines(&own);
    assert!(!expected.is_empty());

    let shared = tmp.path("shared");
    let report = weir::runtime::run(
        &window_spec(2, &shared, &tmp.path("ck-shared"), None),
        &shared_env,
    )
    .unwrap();
    assert_eq!(report.late_records, 0);
    assert!(
        committed_lines(&shared) == expected,
        "shared threads change the output"
    );

    let (first, savepoint, report) = stop_part_way(&tmp, &shared_env);
    assert!(report.checkpoints.completed > 0);
    let resumed = weir::runtime::start(
        &window_spec(2, &first, &tmp.path("ck-resumed"), None),
        &shared_env,
        StartOptions {
            restore: RestoreFrom::Savepoint(savepoint),
        },
    )
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(resumed.late_records, 0);
    assert!(
        committed_lines(&first) == expected,
        "resumed: output differs from the uninterrupted run"
    );
}

#[test]
fn a_savepoint_at_parallelism_2_resumes_at_3_and_at_1_with_the_uninterrupted_result() {
    let tmp = TempDir::new("rescale");
    let reference = tmp.path("reference");
    let report = weir::runtime::run(
        &window_spec(2, &reference, &tmp.path("ck-ref"), None),
        &env(),
    )
    .unwrap();
    assert_eq!(report.late_records, 0);
    let expected = committed_lines(&reference);
    assert!(!expected.is_empty());

    let (first, savepoint, _) = stop_part_way(&tmp, &env());
    let before = committed_lines(&first);
    assert!(before.len() < expected.len());

    for parallelism in [3, 1] {
        let out = tmp.path(&format!("resumed-{parallelism}"));
        copy_dir(&first, &out);
        let report = crate::support::resume_from(
            &window_spec(
                parallelism,
                &out,
                &tmp.path(&format!("ck-{parallelism}")),
                None,
            ),
            &savepoint,
        );
        assert_eq!(report.late_records, 0);
        assert!(
            committed_lines(&out) == expected,
            "resumed at {parallelism}: output differs from the uninterrupted run"
        );
    }
}

/// A local S3-compatible server (moto), stopped when dropped.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server runs (scripts/test.sh installs it: pip install 'moto[server]')");
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A bare HTTP request (moto does not check signatures); the response.
    fn request(&self, method: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn incremental_rocksdb_checkpoints_in_an_s3_compatible_store_restore_after_kills_with_or_without_local_copies()
 {
    let s3 = S3Server::start();
    assert!(s3.request("PUT", "/weir").starts_with("HTTP/1.1 200"));
    let tmp = TempDir::new("s3");
    let out = tmp.path("out");
    let cache = tmp.path("cache");
    let (events, keys) = (600_000, 211);
    let spec = tmp.path("job.yaml");
    let checkpoint = format!(
        "{{interval: 250ms, dir: s3://weir/checkpoints, local_dir: {}}}",
        cache.display()
    );
    let rocksdb = format!(
        "state: rocksdb\nrocksdb: {{dir: {}}}\n",
        tmp.path("rocks").display()
    );
    std::fs::write(
        &spec,
        keyed_count_yaml("s3job", 2, (events, keys, 60_000), &out, &checkpoint) + &rocksdb,
    )
    .unwrap();
    let envs = [
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3.port)),
    ];
    // After the first kill the local copies go: the restart must download
    // its checkpoint, shared SST files included; after the second they stay
    // (local recovery).
    let drop_cache = |kill: usize| {
        if kill == 0 {
            std::fs::remove_dir_all(&cache).expect("the local staging copy exists");
        }
    };
    run_with_kills(&spec, 2, 0x5eed, &envs, &drop_cache);
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        "with checkpoints in S3",
    );
    let listing = s3.request("GET", "/weir?list-type=2&prefix=checkpoints/s3job/");
    assert!(listing.contains("manifest.json"), "{listing}");
    assert!(listing.contains(".state"), "{listing}");
    assert!(listing.contains("s3job/shared/count-"), "{listing}");
}

#[test]
fn sigterm_stops_weir_run_with_a_savepoint_that_resumes_at_another_parallelism() {
    let tmp = TempDir::new("sigterm");
    let savepoints = tmp.path("savepoints");
    let savepoint = stop_by_sigterm_and_resume(&tmp, savepoints.to_str().unwrap(), &[]);
    assert!(
        savepoint.starts_with(savepoints.to_str().unwrap()),
        "{savepoint}"
    );
}

#[test]
fn a_savepoint_in_an_s3_compatible_store_resumes_at_another_parallelism() {
    let s3 = S3Server::start();
    assert!(s3.request("PUT", "/weir").starts_with("HTTP/1.1 200"));
    let tmp = TempDir::new("sigterm-s3");
    let envs = [
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3.port)),
    ];
    let savepoint = stop_by_sigterm_and_resume(&tmp, "s3://weir/savepoints", &envs);
    assert!(
        savepoint.starts_with("s3://weir/savepoints/savepoint-sigterm-"),
        "{savepoint}"
    );
    let listing = s3.request("GET", "/weir?list-type=2&prefix=savepoints/");
    assert!(listing.contains("/manifest.json"), "{listing}");
    assert!(listing.contains(".state"), "{listing}");
    let name = savepoint.rsplit('/').next().unwrap();
    assert!(
        !std::env::temp_dir()
            .join("weir-savepoint-staging")
            .join(name)
            .exists(),
        "the staging copy is removed after the upload"
    );
}

/// Runs a keyed count with `weir run --savepoint-on-signal TARGET` at
/// parallelism 2, stops it with SIGTERM part way, resumes the savepoint at
/// 3 and checks the whole output; returns the savepoint's location.
fn stop_by_sigterm_and_resume(tmp: &TempDir, target: &str, envs: &[(&str, String)]) -> String {
    let out = tmp.path("out");
    let (events, keys) = (400_000, 59);
    let checkpoint = format!(
        "{{interval: 10s, dir: {}}}",
        tmp.path("checkpoints").display()
    );
    let spec_text = |parallelism: u32| {
        keyed_count_yaml(
            "sigterm",
            parallelism,
            (events, keys, 40_000),
            &out,
            &checkpoint,
        )
    };
    let spec = tmp.path("job.yaml");
    std::fs::write(&spec, spec_text(2)).unwrap();
    let child = weir_run(&spec)
        .arg("--savepoint-on-signal")
        .arg(target)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let savepoint = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stopped with savepoint "))
        .unwrap_or_else(|| panic!("no savepoint written; stderr: {stderr}"))
        .trim()
        .to_owned();
    let partial = committed_lines(&out).len();
    assert!(
        partial > 0 && partial < events as usize,
        "{partial} records before the stop"
    );

    std::fs::write(&spec, spec_text(3)).unwrap();
    let status = weir_run(&spec)
        .arg("--from-savepoint")
        .arg(&savepoint)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        "stopped at 2 by SIGTERM, resumed at 3",
    );
    savepoint
}

#[test]
fn a_savepoint_resumes_with_a_newer_module_version_that_keeps_the_state() {
    let tmp = TempDir::new("upgrade");
    let out = tmp.path("out");
    let (events, keys) = (200_000, 41);
    let checkpoint = format!(
        "{{interval: 10s, dir: {}}}",
        tmp.path("checkpoints").display()
    );
    let v1 = keyed_count_yaml("upgrade", 2, (events, keys, 40_000), &out, &checkpoint);
    let handle = weir::runtime::start(
        &JobSpec::parse(&v1).unwrap(),
        &env(),
        StartOptions::default(),
    )
    .unwrap();
    crate::support::wait_for_records(&handle, 30_000);
    let savepoint = handle.stop_with_savepoint(&tmp.path("savepoints")).unwrap();
    handle.wait().unwrap();
    let manifest = std::fs::read_to_string(savepoint.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"module\": \"keyed-count\""),
        "{manifest}"
    );

    let v2 = v1.replace("module: keyed-count", "module: keyed-count-v2");
    weir::runtime::start(
        &JobSpec::parse(&v2).unwrap(),
        &env(),
        StartOptions {
            restore: RestoreFrom::Savepoint(savepoint),
        },
    )
    .unwrap()
    .wait()
    .unwrap();

    assert_upgraded_counts(
        &committed_lines(&out),
        (events, keys),
        "stopped on v1, resumed on v2",
    );
}
