//! Event-time windows: results depend on event time, not on arrival order,
//! batching or parallelism; late records go to the late side output, exactly
//! those; allowed lateness re-fires; sessions merge; idle and slow inputs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weir::connectors::{ConnectorError, Poll, Source};
use weir::graph::JobSpec;
use weir::runtime::{JobReport, RecordBatch};

use crate::support::{TempDir, env, repo_root};

/// A finished window job: its report, main results and late (key, ts) pairs.
type WindowRun = (JobReport, Vec<(String, Value)>, Vec<(String, i64)>);

/// Window results as (key, value JSON) pairs, sorted.
fn results(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<(String, Value)> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            (
                v["key"].as_str().expect("text key").to_owned(),
                v["value"].clone(),
            )
        })
        .collect();
    out.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
    out
}

fn write_clicks(path: &Path, clicks: &[(String, i64)]) {
    let lines: Vec<String> = clicks
        .iter()
        .map(|(user, ts)| json!({"user": user, "ts": ts}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write input");
}

/// A window job over a clicks file, main and late outputs to files.
fn clicks_job(
    dir: &TempDir,
    input: &Path,
    window: &str,
    parallelism: u32,
    extra_source: &str,
) -> (JobSpec, std::path::PathBuf, std::path::PathBuf) {
    let out = dir.path(&format!("out-{parallelism}-{}.jsonl", window.len()));
    let late = dir.path(&format!("late-{parallelism}-{}.jsonl", window.len()));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&late);
    let yaml = format!(
        "name: windows\nparallelism: {parallelism}\n{extra_source}\
         source: {{type: file, path: {input}, key_field: user, timestamp_field: ts, \
           watermark: {{max_out_of_orderness: 500ms, interval: 0ms}}}}\n\
         operators:\n  - name: clicks\n    module: clicks-per-window\n    input: key\n    \
           window: {window}\n    side_outputs: {{late: {{type: file, path: {late}}}}}\n\
         sink: {{type: file, path: {out}}}\n",
        input = input.display(),
        late = late.display(),
        out = out.display(),
    );
    (JobSpec::parse(&yaml).expect("valid spec"), out, late)
}

/// Deterministic pseudo-random numbers (no dependency for a shuffle).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn shuffled_input_gives_the_sorted_result_at_parallelism_1_and_4() {
    let dir = TempDir::new("win-order");
    // 3000 clicks of 20 users, one every 7 ms, with a 1.5 s pause every 500
    // clicks (so sessions break); then shuffled within runs of 20 clicks
    // (140 ms of event time, never across a pause: inside the 500 ms
    // out-of-orderness bound).
    let sorted: Vec<(String, i64)> = (0..3000i64)
        .map(|i| (format!("user{}", i % 20), i * 7 + (i / 500) * 1500))
        .collect();
    let mut shuffled = sorted.clone();
    let mut rng = Lcg(7);
    for chunk in shuffled.chunks_mut(20) {
        for i in (1..chunk.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            chunk.swap(i, j);
        }
    }
    assert_ne!(sorted, shuffled);
    let sorted_file = dir.path("sorted.jsonl");
    let shuffled_file = dir.path("shuffled.jsonl");
    write_clicks(&sorted_file, &sorted);
    write_clicks(&shuffled_file, &shuffled);

    for window in [
        "{type: tumbling, size: 1s}",
        "{type: sliding, size: 1s, slide: 250ms}",
        "{type: session, gap: 400ms}",
    ] {
        let run = |input: &Path, parallelism: u32, batch: &str| {
            let (spec, out, _) = clicks_job(&dir, input, window, parallelism, batch);
            let report = weir::runtime::run(&spec, &env()).expect("job runs");
            assert_eq!(
                report.late_records,
                0,
                "{window}, {}, p={parallelism} {batch}: nothing is late",
                input.display()
            );
            results(&out)
        };
        let expected = run(&sorted_file, 1, "");
        assert!(!expected.is_empty());
        let clicks: u64 = expected
            .iter()
            .map(|(_, v)| v["clicks"].as_u64().expect("count"))
            .sum();
        let copies = if window.contains("sliding") { 4 } else { 1 };
        assert_eq!(clicks, 3000 * copies, "{window}: every click counted");
        assert_eq!(run(&shuffled_file, 1, ""), expected, "{window}, p=1");
        assert_eq!(run(&shuffled_file, 4, ""), expected, "{window}, p=4");
        assert_eq!(
            run(&shuffled_file, 4, "batch: {size: 7}\n"),
            expected,
            "{window}, p=4, small batches"
        );
    }
}

fn clicks_example(dir: &TempDir, window: &str) -> (JobReport, Vec<(String, Value)>, String) {
    let input = repo_root().join("examples/clicks-per-window/clicks.jsonl");
    let (mut spec, out, late) = clicks_job(dir, &input, window, 1, "batch: {size: 1}\n");
    // The example's own timing: watermark 1 s behind, after every record.
    if let weir::graph::spec::SourceSpec::File(f) = &mut spec.source {
        f.watermark.max_out_of_orderness = Duration::from_secs(1);
    }
    let report = weir::runtime::run(&spec, &env()).expect("job runs");
    let late = std::fs::read_to_string(late).unwrap_or_default();
    (report, results(&out), late)
}

fn window_result(user: &str, start: i64, end: i64, clicks: u64) -> (String, Value) {
    (
        user.to_owned(),
        json!({"user": user, "start": start, "end": end, "clicks": clicks}),
    )
}

fn late_lines(late: &str) -> Vec<(String, i64)> {
    late.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            (
                v["key"].as_str().expect("key").to_owned(),
                v["value"]["ts"].as_i64().expect("ts"),
            )
        })
        .collect()
}

#[test]
fn records_beyond_allowed_lateness_go_to_the_late_output_exactly() {
    let dir = TempDir::new("win-late");
    let (report, main, late) = clicks_example(&dir, "{type: tumbling, size: 10s}");
    assert_eq!(report.late_records, 2);
    assert_eq!(
        late_lines(&late),
        vec![("bob".to_owned(), 9000), ("alice".to_owned(), 3000)]
    );
    let mut expected = vec![
        window_result("alice", 0, 10000, 2),
        window_result("bob", 0, 10000, 1),
        window_result("carol", 0, 10000, 1),
        window_result("alice", 10000, 20000, 1),
        window_result("bob", 10000, 20000, 1),
        window_result("carol", 10000, 20000, 1),
        window_result("alice", 20000, 30000, 1),
    ];
    expected.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
    assert_eq!(main, expected);
}

#[test]
fn allowed_lateness_updates_and_refires_the_window() {
    let dir = TempDir::new("win-lateness");
    let (report, main, late) =
        clicks_example(&dir, "{type: tumbling, size: 10s, allowed_lateness: 5s}");
    // bob's 9 s click arrives at watermark 10.999 s, within 5 s of the
    // window's end: [0, 10 s) fires again with 2. alice's 3 s click arrives
    // at 23.999 s, after the window's cleanup at 14.999 s: late.
    assert_eq!(report.late_records, 1);
    assert_eq!(late_lines(&late), vec![("alice".to_owned(), 3000)]);
    assert!(main.contains(&window_result("bob", 0, 10000, 1)));
    assert!(main.contains(&window_result("bob", 0, 10000, 2)));
    assert_eq!(main.len(), 8);
}

#[test]
fn a_late_allowed_record_bridges_two_sessions() {
    let dir = TempDir::new("win-session");
    let input = dir.path("sessions.jsonl");
    write_clicks(
        &input,
        &[
            ("a".into(), 0),     // session [0, 5 s)
            ("a".into(), 8000),  // session [8 s, 13 s)
            ("b".into(), 20000), // watermark 19.999 s: both of a's fire
            ("a".into(), 4500),  // [4.5 s, 9.5 s) touches both: [0, 13 s), 3 clicks
        ],
    );
    let (mut spec, out, late) = clicks_job(
        &dir,
        &input,
        "{type: session, gap: 5s, allowed_lateness: 1m}",
        1,
        "batch: {size: 1}\n",
    );
    if let weir::graph::spec::SourceSpec::File(f) = &mut spec.source {
        f.watermark.max_out_of_orderness = Duration::ZERO;
    }
    let report = weir::runtime::run(&spec, &env()).expect("job runs");
    assert_eq!(report.late_records, 0);
    assert_eq!(std::fs::read_to_string(late).unwrap_or_default(), "");
    let mut expected = vec![
        window_result("a", 0, 5000, 1),
        window_result("a", 8000, 13000, 1),
        window_result("a", 0, 13000, 3),
        window_result("b", 20000, 25000, 1),
    ];
    expected.sort_by_key(|(k, v)| (k.clone(), v.to_string()));
    assert_eq!(results(&out), expected);
}

/// Source instance 2 (whose `progress` is the minimum step of the others)
/// sends one click at 0 ms, then nothing until the others
/// have reached 2.5 s of event time (and it has been silent for 300 ms),
/// then a click at 100 ms (behind the others) and one at 4.1 s. Instances 0
/// and 1 send a click every 100 ms of event time, 40 of them, 25 ms apart.
struct Scripted {
    instance: u32,
    step: i64,
    progress: Arc<AtomicU64>,
    silent_since: Option<std::time::Instant>,
}

impl Source for Scripted {
    fn poll(&mut self, out: &mut RecordBatch, _max: usize) -> Result<Poll, ConnectorError> {
        let key = format!("u{}", self.instance);
        let click = |ts: i64| json!({"user": key, "ts": ts}).to_string();
        if self.instance < 2 {
            if self.step == 40 {
                return Ok(Poll::End);
            }
            std::thread::sleep(Duration::from_millis(25));
            let ts = self.step * 100;
            out.push(key.as_bytes(), click(ts).as_bytes(), ts);
            self.step += 1;
            return Ok(Poll::More);
        }
        match self.step {
            0 => {
                out.push(key.as_bytes(), click(0).as_bytes(), 0);
                self.step = 1;
                self.silent_since = Some(std::time::Instant::now());
                Ok(Poll::More)
            }
            1 => {
                let caught_up = self.progress.load(Ordering::SeqCst) >= 25;
                let quiet = self
                    .silent_since
                    .is_some_and(|t| t.elapsed() >= Duration::from_millis(300));
                if caught_up && quiet {
                    out.push(key.as_bytes(), click(100).as_bytes(), 100);
                    out.push(key.as_bytes(), click(4100).as_bytes(), 4100);
                    self.step = 2;
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(Poll::More)
            }
            _ => Ok(Poll::End),
        }
    }
}

/// Runs the scripted three-input job; `progress` is the minimum step of
/// instances 0 and 1.
fn run_scripted(idle_timeout: &str) -> WindowRun {
    let dir = TempDir::new("win-idle");
    let out = dir.path("out.jsonl");
    let late = dir.path("late.jsonl");
    let yaml = format!(
        "name: idle\nparallelism: 2\n\
         source: {{type: embedded, parallelism: 3, \
           watermark: {{interval: 0ms{idle_timeout}}}}}\n\
         operators:\n  - name: clicks\n    module: clicks-per-window\n    input: key\n    \
           window: {{type: tumbling, size: 1s}}\n    \
           side_outputs: {{late: {{type: file, path: {late}}}}}\n\
         sink: {{type: file, path: {out}}}\n",
        late = late.display(),
        out = out.display(),
    );
    let spec = JobSpec::parse(&yaml).expect("valid spec");
    let steps: Arc<[Arc<AtomicU64>; 2]> =
        Arc::new([Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))]);
    let progress = Arc::new(AtomicU64::new(0));
    let mut job_env = env();
    {
        let progress = progress.clone();
        let steps = steps.clone();
        job_env.embedded_source = Some(Arc::new(move |assignment| {
            let instance = assignment.instance;
            let own = if instance < 2 {
                steps[instance as usize].clone()
            } else {
                progress.clone()
            };
            Box::new(Tracked {
                inner: Scripted {
                    instance,
                    step: 0,
                    progress: own,
                    silent_since: None,
                },
                steps: steps.clone(),
                progress: progress.clone(),
            })
        }));
    }
    let report = weir::runtime::run(&spec, &job_env).expect("job runs");
    let late = late_lines(&std::fs::read_to_string(&late).unwrap_or_default());
    (report, results(&out), late)
}

/// Publishes the minimum progress of instances 0 and 1 for instance 2.
struct Tracked {
    inner: Scripted,
    steps: Arc<[Arc<AtomicU64>; 2]>,
    progress: Arc<AtomicU64>,
}

impl Source for Tracked {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        if self.inner.instance < 2 {
            let r = self.inner.poll(out, max);
            self.steps[self.inner.instance as usize]
                .store(self.inner.step as u64, Ordering::SeqCst);
            let min = self.steps.iter().map(|s| s.load(Ordering::SeqCst)).min();
            self.progress.store(min.unwrap_or(0), Ordering::SeqCst);
            return r;
        }
        self.inner.poll(out, max)
    }
}

fn clicks_of(main: &[(String, Value)], user: &str) -> u64 {
    main.iter()
        .filter(|(k, _)| k == user)
        .map(|(_, v)| v["clicks"].as_u64().expect("count"))
        .sum()
}

#[test]
fn an_idle_input_does_not_stall_windows_and_its_late_return_is_handled() {
    let (report, main, late) = run_scripted(", idle_timeout: 150ms");
    // While instance 2 was silent, the others' watermark closed [0, 1 s):
    // its click at 100 ms comes back late, its click at 4.1 s is counted.
    assert_eq!(late, vec![("u2".to_owned(), 100)]);
    assert_eq!(report.late_records, 1);
    assert!(main.contains(&window_result("u2", 0, 1000, 1)));
    assert!(main.contains(&window_result("u2", 4000, 5000, 1)));
    assert_eq!(clicks_of(&main, "u0"), 40);
    assert_eq!(clicks_of(&main, "u1"), 40);
}

#[test]
fn a_slow_input_holds_the_watermark_back() {
    // No idle timeout: instance 2's watermark (from its click at 0 ms) holds
    // the minimum, so no window closes before it speaks again and its click
    // at 100 ms still counts.
    let (report, main, late) = run_scripted("");
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(report.late_records, 0);
    assert!(main.contains(&window_result("u2", 0, 1000, 2)));
    assert_eq!(clicks_of(&main, "u0"), 40);
}

#[test]
fn a_far_future_timestamp_does_not_move_the_watermark() {
    let dir = TempDir::new("win-future");
    let input = dir.path("future.jsonl");
    let years_ahead = weir::time::now_millis() + 10 * 365 * 24 * 3600 * 1000;
    write_clicks(
        &input,
        &[
            ("a".into(), 1000),
            ("bad".into(), years_ahead),
            ("a".into(), 1500),
            ("a".into(), 1200),
            ("b".into(), 2500),
        ],
    );
    let (mut spec, out, _) = clicks_job(
        &dir,
        &input,
        "{type: tumbling, size: 1s}",
        1,
        "batch: {size: 1}\n",
    );
    if let weir::graph::spec::SourceSpec::File(f) = &mut spec.source {
        f.watermark.max_out_of_orderness = Duration::ZERO;
    }
    let report = weir::runtime::run(&spec, &env()).expect("job runs");
    // Had the bad record moved the watermark, every later click would be late.
    assert_eq!(report.far_future_records, 1);
    assert_eq!(report.late_records, 0);
    let main = results(&out);
    assert!(main.contains(&window_result("a", 1000, 2000, 3)));
    assert!(main.contains(&window_result("b", 2000, 3000, 1)));
    // It is processed, not dropped: its window fires when the input ends.
    assert_eq!(clicks_of(&main, "bad"), 1);
}

/// Generator events for one instance, each poll of the slow instance taking
/// a millisecond; records the highest event time each instance has emitted.
struct Paced {
    inner: Box<dyn Source>,
    instance: usize,
    emitted: Arc<[AtomicU64; 2]>,
}

impl Source for Paced {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        if self.instance == 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let poll = self.inner.poll(out, max)?;
        if let Some(t) = out.max_timestamp() {
            self.emitted[self.instance].fetch_max(t as u64, Ordering::Relaxed);
        }
        Ok(poll)
    }

    fn positions(&self) -> Option<Vec<weir::connectors::SplitPosition>> {
        self.inner.positions()
    }
}

/// How far (in event-time ms) the fast instance of a two-instance source
/// got ahead of the slow one at most, with the given watermark settings.
fn largest_lead(watermark: &str) -> u64 {
    let events = 60_000;
    let spec = JobSpec::parse(&format!(
        "name: drift\nparallelism: 2\nbatch: {{size: 16, linger: 1ms}}\n\
         source: {{type: embedded, watermark: {{interval: 0ms{watermark}}}}}\n\
         operators: [{{name: count, module: window-count, input: key, window: {{type: tumbling, size: 100ms}}}}]\n\
         sink: {{type: discard}}\n"
    ))
    .unwrap();
    let generator = JobSpec::parse(&format!(
        "name: g\nsource: {{type: generator, events: {events}, keys: 50}}\n\
         operators: [{{name: p, native: passthrough}}]\nsink: {{type: discard}}\n"
    ))
    .unwrap()
    .source;
    let emitted: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut job_env = env();
    let seen = emitted.clone();
    job_env.embedded_source = Some(Arc::new(move |a: &weir::connectors::SourceAssignment| {
        Box::new(Paced {
            inner: weir::connectors::build_source(&generator, a).unwrap(),
            instance: a.instance as usize,
            emitted: seen.clone(),
        })
    }));
    let handle = weir::runtime::start(&spec, &job_env, Default::default()).unwrap();
    let mut lead = 0;
    while !handle.is_finished() {
        let (fast, slow) = (
            emitted[0].load(Ordering::Relaxed),
            emitted[1].load(Ordering::Relaxed),
        );
        if slow < events as u64 - 2_000 {
            lead = lead.max(fast.saturating_sub(slow));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let report = handle.wait().unwrap();
    assert_eq!(report.records_in, events as u64, "every event read");
    assert_eq!(report.late_records, 0);
    lead
}

#[test]
fn watermark_alignment_holds_a_fast_source_instance_near_the_slowest() {
    let free = largest_lead("");
    let aligned = largest_lead(", max_drift: 100ms");
    assert!(
        free > 5_000,
        "without alignment the fast instance runs ahead: {free} ms"
    );
    // The bound plus what a batch and a watermark interval add.
    assert!(
        aligned <= 400,
        "aligned, the lead stays near the drift bound: {aligned} ms"
    );
}

/// Generator events whose every poll takes `delay` before it returns.
struct Slow {
    inner: Box<dyn Source>,
    delay: Duration,
}

impl Source for Slow {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        std::thread::sleep(self.delay);
        self.inner.poll(out, max)
    }

    fn positions(&self) -> Option<Vec<weir::connectors::SplitPosition>> {
        self.inner.positions()
    }
}

#[test]
fn window_results_count_their_latency_from_the_source_batch_that_closed_them() {
    // Every batch leaves the source at least `delay` after its clock
    // started, so every result a watermark releases is at least that old
    // at the sink; stamped when it fired, it would read microseconds.
    let delay = Duration::from_millis(30);
    let spec = JobSpec::parse(
        "name: latency\nbatch: {size: 100}\n\
         source: {type: embedded, watermark: {interval: 0ms}}\n\
         operators: [{name: count, module: window-count, input: key, window: {type: tumbling, size: 100ms}}]\n\
         sink: {type: discard}\n",
    )
    .unwrap();
    let generator = JobSpec::parse(
        "name: g\nsource: {type: generator, events: 2000, keys: 5}\n\
         operators: [{name: p, native: passthrough}]\nsink: {type: discard}\n",
    )
    .unwrap()
    .source;
    let mut job_env = env();
    job_env.embedded_source = Some(Arc::new(move |a: &weir::connectors::SourceAssignment| {
        Box::new(Slow {
            inner: weir::connectors::build_source(&generator, a).unwrap(),
            delay,
        })
    }));
    let report = weir::runtime::run(&spec, &job_env).expect("job runs");
    // 20 windows of 5 keys; the last fires at the end of input.
    assert_eq!(report.sink_records, 100);
    let median = report.latency.quantile(0.5).expect("results were timed");
    assert!(
        median >= delay,
        "window results timed from their firing, not from the source: {median:?}"
    );
}
