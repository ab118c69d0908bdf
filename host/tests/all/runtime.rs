//! The runtime under load: backpressure keeps memory bounded behind a slow
//! sink, a hot key neither breaks per-key results nor starves the rest, and
//! a failing operator ends the job whether or not it shares its source's
//! thread.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use weir::graph::JobSpec;

use crate::support::{TempDir, env, read_pairs};

/// Resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn a_slow_sink_holds_back_a_fast_source_and_memory_stays_bounded() {
    let tmp = TempDir::new("backpressure");
    // 200 MB of input: 200 000 lines of 1 KB over 1000 keys.
    let input = tmp.path("in.jsonl");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let pad = "x".repeat(1000);
    let lines = 200_000u64;
    for i in 0..lines {
        writeln!(w, r#"{{"k":"key{}","pad":"{pad}"}}"#, i % 1000).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let spec = tmp.path("job.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: backpressure\nparallelism: 2\n\
             source: {{type: file, path: {}, format: json, key_field: k}}\n\
             operators: [{{name: count, native: keyed-count, input: key}}]\n\
             sink: {{type: discard, rate: 20000}}\n",
            input.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(&spec)
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(rss) = rss_bytes(child.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{lines} records in, {lines} out")),
        "{stderr}"
    );
    let input_size = std::fs::metadata(&input).unwrap().len();
    assert!(
        peak < input_size / 2,
        "peak RSS {peak} bytes for {input_size} bytes of input: the source ran ahead of the sink"
    );
}

#[test]
fn a_key_with_half_the_traffic_keeps_every_key_exact() {
    let tmp = TempDir::new("skew");
    let input = tmp.path("in.jsonl");
    let mut text = String::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..100_000u64 {
        let key = if i % 2 == 0 {
            "hot".to_string()
        } else {
            format!("cold{}", i % 97)
        };
        *expected.entry(key.clone()).or_default() += 1;
        text.push_str(&format!("{{\"k\":\"{key}\",\"i\":{i}}}\n"));
    }
    std::fs::write(&input, text).unwrap();
    let out = tmp.path("out.jsonl");
    let spec = JobSpec::parse(&format!(
        "name: skew\nparallelism: 4\nbatch: {{size: 64}}\n\
         source: {{type: file, path: {}, format: json, key_field: k}}\n\
         operators: [{{name: count, module: keyed-count, input: key}}]\n\
         sink: {{type: file, path: {}, format: {{value: u64}}}}\n",
        input.display(),
        out.display()
    ))
    .unwrap();
    weir::runtime::run(&spec, &env()).unwrap();
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, v) in read_pairs(&out) {
        counts
            .entry(k.as_str().unwrap().to_owned())
            .or_default()
            .push(v.as_u64().unwrap());
    }
    assert_eq!(counts.len(), expected.len());
    for (key, n) in expected {
        let mut got = counts.remove(&key).unwrap();
        got.sort_unstable();
        assert!(
            got == (1..=n).collect::<Vec<_>>(),
            "key {key}: {} outputs, want counts 1..={n}",
            got.len()
        );
    }
}

/// `records` lines of `fine`, the one at `poison` (of instance 0) `boom`.
struct Lines {
    next: u64,
    records: u64,
    poison: Option<u64>,
}

impl weir::connectors::Source for Lines {
    fn poll(
        &mut self,
        out: &mut weir::runtime::RecordBatch,
        max: usize,
    ) -> Result<weir::connectors::Poll, weir::connectors::ConnectorError> {
        for _ in 0..max {
            if self.next == self.records {
                return Ok(weir::connectors::Poll::End);
            }
            let value: &[u8] = if Some(self.next) == self.poison {
                b"boom"
            } else {
                b"fine"
            };
            out.push(&self.next.to_le_bytes(), value, self.next as i64);
            self.next += 1;
        }
        Ok(weir::connectors::Poll::More)
    }
}

#[test]
fn a_reader_failing_while_it_shares_its_sources_thread_fails_the_job_with_the_cause() {
    // Either way, each task of the pair reports its end (the job would wait
    // for a missing report for good) and the cause is the reader's.
    let spec = JobSpec::parse(
        "name: paired-failure\nparallelism: 2\n\
         source: {type: embedded}\n\
         operators: [{name: boom, module: trap, input: rebalance}]\n\
         sink: {type: discard, rate: 200000}\n",
    )
    .unwrap();
    for share in [true, false] {
        let mut env = env();
        env.share_source_threads = Some(share);
        env.embedded_source = Some(std::sync::Arc::new(|assignment| {
            Box::new(Lines {
                next: 0,
                records: 100_000,
                poison: (assignment.instance == 0).then_some(20_000),
            })
        }));
        let (done, result) = std::sync::mpsc::channel();
        let spec = spec.clone();
        std::thread::spawn(move || {
            let _ = done.send(weir::runtime::run(&spec, &env).map(|r| r.records_in));
        });
        let outcome = result
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("shared threads {share}: the job hangs"));
        let err = outcome
            .expect_err("the poison record fails the job")
            .to_string();
        assert!(
            err.contains("poison record"),
            "shared threads {share}: {err}"
        );
    }
}
