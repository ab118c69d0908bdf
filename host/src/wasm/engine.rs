//! The whole sandbox policy of Weir's Wasm layer, in one place.
//!
//! One [`wasmtime::Engine`] per process, configured here and nowhere else:
//! - Cranelift compiles each module once; the component model is on, its
//!   async machinery off (`concurrency_support(false)`: a synchronous call
//!   with it on pays about 2.5x on an empty call).
//! - Deadlines by epoch interruption: a ticker thread advances the epoch every
//!   [`SandboxPolicy::epoch_tick`]; each call gets
//!   `call_deadline / epoch_tick` ticks, after which the guest traps. A guest
//!   in an endless loop is therefore stopped between `call_deadline` and
//!   `call_deadline + epoch_tick` after its call began. Fuel is not used: it
//!   costs about 12% of throughput where epochs cost 1-8%.
//! - Memory: each instance's linear memories are capped by `memory_limit`
//!   through the pooling allocator's slot size and the store's limiter, and a
//!   failed grow is a trap rather than an error value the guest could ignore.
//! - Stack: `max_wasm_stack` bounds guest recursion; overflowing it is a trap.
//! - No filesystem, network, environment or arguments: the WASI context
//!   grants nothing; guest stdout and stderr go to the host log.
//! - Instances come from the pooling allocator through an `InstancePre`, so
//!   a new task instantiates in microseconds.
//!
//! `WEIR_WASM_PROFILE=perfmap` makes the engine write `/tmp/perf-<pid>.map`,
//! so `perf report` names guest functions instead of showing JIT addresses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ProfilingStrategy,
};

/// Limits applied to every guest instance.
#[derive(Clone, Debug)]
pub struct SandboxPolicy {
    /// Bytes of linear memory one instance may grow to.
    pub memory_limit: usize,
    /// Longest time one call into a guest may run.
    pub call_deadline: Duration,
    /// Granularity of deadlines.
    pub epoch_tick: Duration,
    /// Bytes of native stack a guest may use.
    pub max_stack: usize,
    /// Instances that can be alive at once in this process.
    pub max_instances: u32,
    /// Largest module accepted for compilation.
    pub max_module_bytes: usize,
    /// Longest a module's validation and compilation may take before the
    /// upload is refused (the compiler thread then finishes in the
    /// background, its work bounded by `max_module_bytes`).
    pub compile_timeout: Duration,
    /// Elements a guest table may hold.
    pub max_table_elements: usize,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            memory_limit: 256 << 20,
            call_deadline: Duration::from_secs(10),
            epoch_tick: Duration::from_millis(10),
            max_stack: 1 << 20,
            max_instances: 256,
            max_module_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(120),
            max_table_elements: 100_000,
        }
    }
}

impl SandboxPolicy {
    /// Epoch ticks a call may take.
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_deadline.as_nanos() / self.epoch_tick.as_nanos().max(1)).max(1) as u64
    }
}

/// Advances the engine's epoch until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process's engine and the ticker that enforces deadlines.
pub struct SandboxEngine {
    pub engine: Engine,
    pub policy: SandboxPolicy,
    _ticker: Ticker,
}

impl SandboxEngine {
    pub fn new(policy: SandboxPolicy) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        let n = policy.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_memory_size(policy.memory_limit)
            .table_elements(policy.max_table_elements);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .max_wasm_stack(policy.max_stack)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if std::env::var("WEIR_WASM_PROFILE").as_deref() == Ok("perfmap") {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;

        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = policy.epoch_tick;
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(wasmtime::Error::from)?
        };
        Ok(SandboxEngine {
            engine,
            policy,
            _ticker: Ticker {
                stop,
                thread: Some(thread),
            },
        })
    }
}
