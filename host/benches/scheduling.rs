//! Dedicated threads or tokio tasks for the dataflow's tasks: the measurement
//! behind the choice in `weir::runtime` (see its module doc).
//!
//! Both variants run the same keyed job as `weir bench keyed-count` without
//! the Wasm operator: P source tasks generate `RecordBatch`es (key = i % 10000,
//! value = i), route each record by key group into per-target batches of 256
//! and send them over bounded channels of 16 batches to P tasks running the
//! native `keyed-count` operator on the memory state backend. Only the
//! scheduling differs:
//! - `threads`: one OS thread per task, the runtime's own `Router` and
//!   crossbeam channels (a full channel is polled with short sleeps), a
//!   blocking receive: the runtime's model;
//! - `tokio`: one async task per task on a multi-threaded tokio runtime with
//!   one worker per core, tokio's bounded mpsc channels (`send().await`
//!   suspends a producer whose channel is full), records partitioned into
//!   per-target batches by a loop written for the benchmark (leaner than the
//!   router, which favours tokio if anything).
//!
//! Run: `cargo bench -p weir --bench scheduling -- [EVENTS] [RUNS]`. Prints
//! one JSON line per (variant, parallelism) with the median events/s and CPU
//! seconds of `RUNS` runs, then a table.

use std::time::{Duration, Instant};

use weir::graph::{Partitioning, instance_for_key_group, key_group, key_group_range};
use weir::runtime::router::{Envelope, Event, Router};
use weir::runtime::{InstanceInfo, Operator, Output, RecordBatch};
use weir::state::MemoryBackend;

const KEYS: u64 = 10_000;
const BATCH: usize = 256;
const CHANNEL_BATCHES: usize = 16;
const MAX_PARALLELISM: u32 = 128;

fn counter(instance: u32, parallelism: u32) -> Box<dyn Operator> {
    let key_groups = key_group_range(instance, MAX_PARALLELISM, parallelism);
    let info = InstanceInfo {
        job: "scheduling".into(),
        operator: "count".into(),
        instance,
        parallelism,
        max_parallelism: MAX_PARALLELISM,
        key_groups: key_groups.clone(),
        keyed: true,
    };
    weir::operators::build(
        "keyed-count",
        info,
        Box::new(MemoryBackend::new(key_groups)),
    )
    .expect("native keyed-count builds")
}

fn count_batch(op: &mut dyn Operator, out: &mut Output, batch: &RecordBatch) -> u64 {
    out.clear();
    op.process(batch, out).expect("keyed-count runs");
    out.main.len() as u64
}

fn run_threads(parallelism: u32, events: u64, cores: usize) -> u64 {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..parallelism)
        .map(|_| crossbeam_channel::bounded::<Envelope>(CHANNEL_BATCHES))
        .unzip();
    let consumers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(instance, rx)| {
            std::thread::spawn(move || {
                let mut op = counter(instance as u32, parallelism);
                let mut out = Output::default();
                let mut emitted = 0;
                let mut ended = 0;
                while ended < parallelism {
                    let envelope = rx.recv().expect("producers end with End");
                    match envelope.event {
                        Event::Records { batch, .. } => {
                            emitted += count_batch(op.as_mut(), &mut out, &batch);
                        }
                        Event::End => ended += 1,
                        _ => {}
                    }
                }
                emitted
            })
        })
        .collect();
    let producers: Vec<_> = (0..parallelism)
        .map(|instance| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                // The runtime's own router: per-target batches, a sender
                // that polls a full channel with short sleeps.
                let mut router = Router::new(
                    instance,
                    instance,
                    senders,
                    Partitioning::Key,
                    BATCH,
                    Duration::from_millis(5),
                    MAX_PARALLELISM,
                );
                // The runtime's rule: block on a full channel when there are
                // more task threads than cores.
                router.block_when_full = 2 * parallelism as usize > cores;
                let mut batch = RecordBatch::with_capacity(BATCH, BATCH * 32);
                let mut i = u64::from(instance);
                while i < events {
                    batch.clear();
                    while i < events && batch.len() < BATCH {
                        batch.push(&(i % KEYS).to_le_bytes(), &i.to_le_bytes(), i as i64);
                        i += u64::from(parallelism);
                    }
                    router.write(&batch).expect("consumers run");
                }
                router.broadcast(|| Event::End).expect("consumers run");
            })
        })
        .collect();
    drop(senders);
    for p in producers {
        p.join().unwrap();
    }
    consumers.into_iter().map(|c| c.join().unwrap()).sum()
}

fn run_tokio(runtime: &tokio::runtime::Runtime, parallelism: u32, events: u64) -> u64 {
    runtime.block_on(async {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..parallelism)
            .map(|_| tokio::sync::mpsc::channel::<RecordBatch>(CHANNEL_BATCHES))
            .unzip();
        let consumers: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(instance, mut rx)| {
                tokio::spawn(async move {
                    let mut op = counter(instance as u32, parallelism);
                    let mut out = Output::default();
                    let mut emitted = 0;
                    while let Some(batch) = rx.recv().await {
                        emitted += count_batch(op.as_mut(), &mut out, &batch);
                    }
                    emitted
                })
            })
            .collect();
        let producers: Vec<_> = (0..parallelism)
            .map(|instance| {
                let senders = senders.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    for (from, to) in chunks(events, parallelism) {
                        generate_range(instance, parallelism, from, to, &mut pending);
                        for (t, b) in pending.drain(..) {
                            senders[t].send(b).await.expect("consumer runs");
                        }
                    }
                })
            })
            .collect();
        drop(senders);
        for p in producers {
            p.await.unwrap();
        }
        let mut emitted = 0;
        for c in consumers {
            emitted += c.await.unwrap();
        }
        emitted
    })
}

/// The event ranges a source works through, each giving every target a few
/// full batches, so both variants send the same batches.
fn chunks(events: u64, parallelism: u32) -> impl Iterator<Item = (u64, u64)> {
    let chunk = (BATCH as u64) * u64::from(parallelism) * 4;
    (0..events.div_ceil(chunk)).map(move |c| (c * chunk, ((c + 1) * chunk).min(events)))
}

/// The events `instance` owns in `[from, to)`, as full or final per-target
/// batches.
fn generate_range(
    instance: u32,
    parallelism: u32,
    from: u64,
    to: u64,
    out: &mut Vec<(usize, RecordBatch)>,
) {
    let mut buffers: Vec<RecordBatch> = (0..parallelism)
        .map(|_| RecordBatch::with_capacity(BATCH, BATCH * 32))
        .collect();
    let p = u64::from(parallelism);
    let mut i = from + (u64::from(instance) + p - from % p) % p;
    while i < to {
        let key = (i % KEYS).to_le_bytes();
        let group = key_group(&key, MAX_PARALLELISM);
        let t = instance_for_key_group(group, MAX_PARALLELISM, parallelism) as usize;
        buffers[t].push_with_group(&key, &i.to_le_bytes(), i as i64, group);
        i += p;
    }
    out.extend(
        buffers
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty()),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(10_000_000);
    let runs = args.get(1).copied().unwrap_or(3) as usize;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .expect("tokio runtime starts");
    let mut rows = Vec::new();
    for parallelism in [1u32, 2] {
        for variant in ["threads", "tokio"] {
            let run = |n: u64| match variant {
                "threads" => run_threads(parallelism, n, cores),
                _ => run_tokio(&runtime, parallelism, n),
            };
            assert_eq!(run(events / 10), events / 10, "warm-up output");
            let mut rates = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..runs {
                let cpu_before = weir::bench::cpu_seconds();
                let started = Instant::now();
                let emitted = run(events);
                let seconds = started.elapsed().as_secs_f64();
                assert_eq!(emitted, events, "every event is counted once");
                rates.push(events as f64 / seconds);
                cpu.push(weir::bench::cpu_seconds() - cpu_before);
            }
            let (rate, cpu) = (median(rates), median(cpu));
            println!(
                "{{\"variant\":\"{variant}\",\"parallelism\":{parallelism},\"events\":{events},\"runs\":{runs},\"events_per_sec\":{rate:.0},\"cpu_seconds\":{cpu:.3},\"events_per_cpu_sec\":{:.0}}}",
                events as f64 / cpu
            );
            rows.push((variant, parallelism, rate, events as f64 / cpu));
        }
    }
    println!("\n| variant | P | M events/s | M events per CPU-s |\n|---|---:|---:|---:|");
    for (variant, p, rate, per_cpu) in &rows {
        println!(
            "| {variant} | {p} | {:.2} | {:.2} |",
            rate / 1e6,
            per_cpu / 1e6
        );
    }
    for p in [1, 2] {
        let of = |v: &str| {
            rows.iter()
                .find(|r| r.0 == v && r.1 == p)
                .map_or(0.0, |r| r.2)
        };
        println!(
            "P={p}: tokio / threads = {:.2}",
            of("tokio") / of("threads")
        );
    }
}
