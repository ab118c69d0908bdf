//! Kafka in and out against a real Kafka-protocol broker (tansu, started
//! here on 127.0.0.1): a windowed job reads a 3-partition topic and writes
//! its results through the exactly-once (transactional) sink, and an idle
//! partition does not stall the windows.
//!
//! Broker gap, by name: tansu shows records of aborted transactions to
//! `read_committed` consumers. These tests run without failures, so no
//! transaction is aborted and the output read back is exactly what was
//! committed; the exactly-once claim across a crash cannot be checked on
//! this broker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use weir::graph::JobSpec;
use weir::runtime::StartOptions;

use crate::support::{TempDir, env};

/// A tansu broker on a free port, stopped when dropped.
pub struct Broker {
    child: std::process::Child,
    pub port: u16,
}

fn tansu() -> PathBuf {
    let path = std::env::var_os("WEIR_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/weir/broker/tansu")
        });
    assert!(
        path.is_file(),
        "{} is missing: scripts/test.sh installs the tansu broker (install_kafka_broker)",
        path.display()
    );
    path
}

impl Broker {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args(["broker", "--silent", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .env_clear()
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {name}");
    }

    /// Produces (partition, key, value, timestamp) records and waits for them.
    pub fn produce(&self, topic: &str, records: &[(i32, Vec<u8>, Vec<u8>, i64)]) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("acks", "all")
            .create()
            .unwrap();
        for (partition, key, value, ts) in records {
            let mut record = BaseRecord::to(topic)
                .partition(*partition)
                .key(key)
                .payload(value)
                .timestamp(*ts);
            while let Err((_, back)) = producer.send(record) {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Every record of the topic up to its end, read_committed.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("group.id", "weir-test-reader")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut out = Vec::new();
        let mut ended = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ended.len() < partitions as usize {
            assert!(
                Instant::now() < deadline,
                "reading {topic} did not reach its end"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    ended.remove(&m.partition());
                    out.push((
                        m.key().unwrap_or_default().to_vec(),
                        m.payload().unwrap_or_default().to_vec(),
                        m.timestamp().to_millis().unwrap_or(-1),
                    ));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (key, window end - 1) -> count, for 100 ms tumbling windows.
type WindowCounts = BTreeMap<(u64, i64), u64>;

fn expected_windows(records: &[(i32, Vec<u8>, Vec<u8>, i64)]) -> WindowCounts {
    let mut out = WindowCounts::new();
    for (_, key, _, ts) in records {
        let key = u64::from_le_bytes(key.as_slice().try_into().unwrap());
        *out.entry((key, ts / 100 * 100 + 99)).or_default() += 1;
    }
    out
}

fn windows_read(records: &[(Vec<u8>, Vec<u8>, i64)]) -> Vec<((u64, i64), u64)> {
    let mut out: Vec<_> = records
        .iter()
        .map(|(k, v, ts)| {
            (
                (u64::from_le_bytes(k.as_slice().try_into().unwrap()), *ts),
                u64::from_le_bytes(v.as_slice().try_into().unwrap()),
            )
        })
        .collect();
    out.sort();
    out
}

/// Keyed records in event-time order per partition, keys spread over all
/// partitions: key `k` always in partition `k % 3`.
fn clicks(count: u64, keys: u64) -> Vec<(i32, Vec<u8>, Vec<u8>, i64)> {
    (0..count)
        .map(|i| {
            let key = i % keys;
            (
                (key % 3) as i32,
                key.to_le_bytes().to_vec(),
                i.to_le_bytes().to_vec(),
                1_000_000 + (i as i64) / 4,
            )
        })
        .collect()
}

/// `extra` goes into the source, `watermark` is the source's watermark
/// section; checkpoints go below `tmp`.
fn window_job(
    broker: &Broker,
    name: &str,
    (input, output): (&str, &str),
    (extra, watermark): (&str, &str),
    tmp: &TempDir,
) -> JobSpec {
    JobSpec::parse(&format!(
        "name: {name}\nparallelism: 2\n\
         source: {{type: kafka, brokers: '{b}', topic: {input}{extra},\n\
                   watermark: {{max_out_of_orderness: 0ms, interval: 0ms{watermark}}}}}\n\
         operators: [{{name: count, module: window-count, input: key, window: {{type: tumbling, size: 100ms}}}}]\n\
         sink: {{type: kafka, brokers: '{b}', topic: {output}, delivery: exactly-once}}\n\
         checkpoint: {{interval: 100ms, dir: {}}}\n",
        tmp.path("checkpoints").display(),
        b = broker.address()
    ))
    .expect("valid spec")
}

#[test]
fn a_windowed_job_reads_three_partitions_and_commits_each_result_once() {
    let broker = Broker::start();
    broker.create_topic("clicks", 3);
    broker.create_topic("counts", 3);
    let input = clicks(20_000, 30);
    broker.produce("clicks", &input);
    let tmp = TempDir::new("kafka-windows");
    let spec = window_job(
        &broker,
        "kafka-windows",
        ("clicks", "counts"),
        (", bounded: true", ""),
        &tmp,
    );
    let report = weir::runtime::run(&spec, &env()).expect("the job runs");
    assert_eq!(report.records_in, 20_000);
    assert!(
        report.checkpoints.completed >= 1,
        "{:?}",
        report.checkpoints
    );
    let expected: Vec<_> = expected_windows(&input).into_iter().collect();
    let got = windows_read(&broker.read_all("counts", 3));
    assert_eq!(got.len(), expected.len(), "one result per key and window");
    assert!(got == expected, "window results differ from the input's");

    // The final checkpoint's offsets reached the consumer group, for lag
    // monitoring: every partition's end.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "weir-clicks")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition("clicks", p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    for p in 0..3 {
        let records = input.iter().filter(|(q, ..)| *q == p).count() as i64;
        let offset = committed.find_partition("clicks", p).map(|e| e.offset());
        assert_eq!(offset, Some(Offset::Offset(records)), "partition {p}");
    }
}

#[test]
fn an_idle_partition_does_not_stall_windows() {
    let broker = Broker::start();
    broker.create_topic("sparse", 3);
    broker.create_topic("sparse-counts", 3);
    // Partition 2 never gets a record; the others do.
    let input: Vec<_> = clicks(6_000, 30)
        .into_iter()
        .filter(|(p, ..)| *p != 2)
        .collect();
    broker.produce("sparse", &input);
    let tmp = TempDir::new("kafka-idle");
    let spec = window_job(
        &broker,
        "kafka-idle",
        ("sparse", "sparse-counts"),
        // Longer than a pause in delivery of a partition that still has
        // records: on tansu, pauses of over 2 s were seen mid-partition, and
        // a partition silent that long counts as idle, so its next records
        // would be late for windows the others closed meanwhile.
        ("", ", idle_timeout: 6s"),
        &tmp,
    );
    let handle = weir::runtime::start(&spec, &env(), StartOptions::default()).unwrap();
    // Every window but the last few closes once the idle partition is left
    // out of the watermark; wait for them, then cancel the endless job.
    let expected = expected_windows(&input);
    let last_end = expected.keys().map(|(_, end)| *end).max().unwrap();
    let closed: Vec<_> = expected
        .iter()
        .filter(|((_, end), _)| *end < last_end)
        .map(|(k, v)| (*k, *v))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = windows_read(&broker.read_all("sparse-counts", 3));
        if closed.iter().all(|c| got.contains(c)) {
            break;
        }
        let missing: Vec<_> = closed.iter().filter(|c| !got.contains(c)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|g| !closed.contains(g)).take(5).collect();
        assert!(
            Instant::now() < deadline,
            "windows stalled behind the idle partition: {} results, {} expected; \
             missing {missing:?}, unexpected {extra:?}",
            got.len(),
            closed.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    handle.cancel();
    let _ = handle.wait();
}

#[test]
fn a_killed_process_resumes_offsets_and_state_from_its_checkpoint() {
    let broker = Broker::start();
    broker.create_topic("kill-in", 3);
    broker.create_topic("kill-out", 3);
    let input = clicks(80_000, 30);
    broker.produce("kill-in", &input);
    let tmp = crate::support::TempDir::new("kafka-kill");
    let spec = tmp.path("job.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: kafka-kill\nparallelism: 2\n\
             source: {{type: kafka, brokers: '{b}', topic: kill-in, bounded: true, rate: 10000,\n\
                       watermark: {{max_out_of_orderness: 0ms, interval: 0ms}}}}\n\
             operators: [{{name: count, module: window-count, input: key, window: {{type: tumbling, size: 100ms}}}}]\n\
             sink: {{type: kafka, brokers: '{b}', topic: kill-out, delivery: exactly-once}}\n\
             checkpoint: {{interval: 200ms, dir: {}}}\n",
            tmp.path("checkpoints").display(),
            b = broker.address()
        ),
    )
    .unwrap();
    crate::checkpoints::run_with_kills(&spec, 2, 7, &[], &|_| {});
    let expected = expected_windows(&input);
    let got = windows_read(&broker.read_all("kill-out", 3));
    let distinct: std::collections::BTreeSet<_> = got.iter().cloned().collect();
    // Window results are deterministic, so a result the killed runs emitted
    // in a transaction that was then aborted has the same value as the one
    // emitted again after the restart. A broker that hides aborted records
    // shows each exactly once; tansu shows them too, so on it the check is:
    // every expected result, and no result with a wrong count, missing
    // nothing from the offsets and state restored.
    let expected_set: std::collections::BTreeSet<_> = expected.into_iter().collect();
    let wrong: Vec<_> = distinct.difference(&expected_set).take(5).collect();
    let missing: Vec<_> = expected_set.difference(&distinct).take(5).collect();
    assert!(
        wrong.is_empty() && missing.is_empty(),
        "after two kills: wrong results {wrong:?}, missing {missing:?}"
    );
    eprintln!(
        "kafka kill test: {} results, {} distinct; repeats are records of aborted transactions, \
         which tansu shows to read_committed consumers",
        got.len(),
        distinct.len()
    );
}

/// Runs the windowed job of `a_killed_process...` once with
/// `WEIR_CRASH_AT=<point>@3` (the process aborts at that point of the third
/// checkpoint), then again to the end; returns the second run's log.
fn crash_at_then_finish(broker: &Broker, point: &str, tag: &str) -> String {
    let (input_topic, output_topic) = (format!("{tag}-in"), format!("{tag}-out"));
    broker.create_topic(&input_topic, 3);
    broker.create_topic(&output_topic, 3);
    let input = clicks(40_000, 30);
    broker.produce(&input_topic, &input);
    let tmp = crate::support::TempDir::new(tag);
    let spec = tmp.path("job.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {tag}\nparallelism: 2\n\
             source: {{type: kafka, brokers: '{b}', topic: {input_topic}, bounded: true, rate: 10000,\n\
                       watermark: {{max_out_of_orderness: 0ms, interval: 0ms}}}}\n\
             operators: [{{name: count, module: window-count, input: key, window: {{type: tumbling, size: 100ms}}}}]\n\
             sink: {{type: kafka, brokers: '{b}', topic: {output_topic}, delivery: exactly-once}}\n\
             checkpoint: {{interval: 200ms, dir: {}}}\n",
            tmp.path("checkpoints").display(),
            b = broker.address()
        ),
    )
    .unwrap();
    let run = |crash: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.arg("run")
            .arg(&spec)
            .arg("--module-dir")
            .arg(crate::support::examples_dir())
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(at) = crash {
            c.env("WEIR_CRASH_AT", at);
        }
        let mut child = c.spawn().expect("weir starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "weir run did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, log) = run(Some(&format!("{point}@3")));
    assert!(!status.success(), "the first run crashes: {log}");
    assert!(log.contains(&format!("crashing at `{point}`")), "{log}");
    let (status, log) = run(None);
    assert!(status.success(), "{log}");
    let expected: std::collections::BTreeSet<_> = expected_windows(&input).into_iter().collect();
    let got: std::collections::BTreeSet<_> = windows_read(&broker.read_all(&output_topic, 3))
        .into_iter()
        .collect();
    let wrong: Vec<_> = got.difference(&expected).take(5).collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(
        wrong.is_empty() && missing.is_empty(),
        "crash at {point}: wrong results {wrong:?}, missing {missing:?}"
    );
    log
}

#[test]
fn a_crash_after_the_kafka_commit_and_before_the_manifest_completes_that_checkpoint() {
    let broker = Broker::start();
    let log = crash_at_then_finish(&broker, "after-kafka-commit", "crash-after");
    assert!(
        log.contains("transactions committed before a crash: it is complete"),
        "the restart completes the checkpoint whose transaction committed: {log}"
    );
}

#[test]
fn a_crash_before_the_kafka_commit_drops_that_checkpoint_and_replays_its_output() {
    let broker = Broker::start();
    let log = crash_at_then_finish(&broker, "before-kafka-commit", "crash-before");
    assert!(
        log.contains("transactions did not commit before a crash"),
        "the restart drops the checkpoint whose transaction did not commit: {log}"
    );
}

#[test]
fn a_producer_left_by_an_earlier_run_is_fenced_when_the_job_starts_at_any_parallelism() {
    let broker = Broker::start();
    broker.create_topic("zombie-in", 3);
    broker.create_topic("zombie-out", 3);
    let input = clicks(3_000, 30);
    broker.produce("zombie-in", &input);
    // An earlier run's producer, still alive, with an open transaction on
    // an id of the sink's pool (the pool does not depend on parallelism, so
    // a run at parallelism 1 fences what a run at 3 left).
    let zombie: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("transactional.id", "weir-kafka-zombie-1")
        .create()
        .unwrap();
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    zombie.begin_transaction().unwrap();
    // Shaped like a result (8-byte key and value), so the reader can parse
    // it if the broker shows aborted records, as tansu does.
    let marker = u64::MAX.to_le_bytes();
    let record = BaseRecord::to("zombie-out")
        .partition(0)
        .key(&marker[..])
        .payload(&marker[..]);
    zombie.send(record).map_err(|(e, _)| e).unwrap();
    zombie.flush(Duration::from_secs(30)).unwrap();

    let tmp = TempDir::new("kafka-zombie");
    let mut spec = window_job(
        &broker,
        "kafka-zombie",
        ("zombie-in", "zombie-out"),
        (", bounded: true", ""),
        &tmp,
    );
    spec.parallelism = 1;
    weir::runtime::run(&spec, &env()).expect("the job runs");
    // A broker answers a fenced producer's commit with PRODUCER_FENCED;
    // tansu answers with an error librdkafka retries until the call times
    // out. Either way the zombie's transaction does not commit, which is
    // what exactly-once needs; the job's own commits on the same id did.
    let commit = zombie.commit_transaction(Duration::from_secs(10));
    assert!(
        commit.is_err(),
        "the zombie's transaction cannot commit after the job started: {commit:?}"
    );
    let got = windows_read(&broker.read_all("zombie-out", 3));
    let expected: Vec<_> = expected_windows(&input).into_iter().collect();
    let got_results: std::collections::BTreeSet<_> = got.iter().cloned().collect();
    assert!(
        expected.iter().all(|e| got_results.contains(e)),
        "every result of the job is committed"
    );
}
