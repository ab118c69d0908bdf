//! Guest faults are user errors that name the operator, never host panics;
//! modules that do not fit the contract are refused with the reason.

use std::time::{Duration, Instant};

use weir::graph::JobSpec;
use weir::runtime::{FailureKind, JobError};
use weir::wasm::ModuleError;

use crate::support::{env, fixtures_dir, runtime};

fn run_one(operator_yaml: &str, source_yaml: &str) -> Result<weir::runtime::JobReport, JobError> {
    let spec = JobSpec::parse(&format!(
        "name: bad\nsource: {source_yaml}\noperators: [{operator_yaml}]\nsink: {{type: discard}}\n"
    ))
    .expect("spec is valid");
    weir::runtime::run(&spec, &env())
}

/// Runs one operator under its own sandbox policy.
fn run_in(
    policy: weir::wasm::SandboxPolicy,
    operator_yaml: &str,
    source_yaml: &str,
) -> Result<weir::runtime::JobReport, JobError> {
    let runtime = weir::wasm::WasmRuntime::new(policy, None).unwrap();
    let env = weir::runtime::JobEnv::new(runtime, vec![fixtures_dir().to_owned()]);
    let spec = JobSpec::parse(&format!(
        "name: bad\nsource: {source_yaml}\noperators: [{operator_yaml}]\nsink: {{type: discard}}\n"
    ))
    .expect("spec is valid");
    weir::runtime::run(&spec, &env)
}

fn operator_failure(
    result: Result<weir::runtime::JobReport, JobError>,
) -> weir::runtime::OperatorError {
    match result {
        Err(JobError::Operator(e)) => e,
        other => panic!("expected an operator failure, got {other:?}"),
    }
}

#[test]
fn a_panicking_guest_fails_the_job_with_the_operator_and_the_panic_message() {
    let dir = crate::support::TempDir::new("trap");
    let input = dir.path("in.jsonl");
    std::fs::write(&input, "fine\nboom\n").unwrap();
    let e = operator_failure(run_one(
        "{name: boom-op, module: trap}",
        &format!("{{type: file, path: {}, format: lines}}", input.display()),
    ));
    assert_eq!(e.operator, "boom-op");
    assert_eq!(e.job, "bad");
    assert!(e.is_user_error());
    let FailureKind::Trap(message) = &e.kind else {
        panic!("expected a trap, got {:?}", e.kind)
    };
    assert!(
        message.contains("poison record reached the operator"),
        "{message}"
    );
    assert!(e.to_string().contains("operator `boom-op`"), "{e}");
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let started = Instant::now();
    let e = operator_failure(run_one(
        "{name: spin, module: endless-loop}",
        "{type: generator, events: 10}",
    ));
    assert!(
        matches!(e.kind, FailureKind::Deadline { deadline_ms: 500 }),
        "{e}"
    );
    // The policy's deadline is 500 ms; allow generously for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn keyed_state_without_a_keyed_input_is_refused_at_init() {
    let e = operator_failure(run_one(
        "{name: count, module: keyed-count}",
        "{type: generator, events: 10}",
    ));
    assert!(matches!(e.kind, FailureKind::Init(_)));
    assert!(e.to_string().contains("input: key"), "{e}");
}

#[test]
fn emitting_to_an_undeclared_side_output_fails_with_its_name() {
    let e = operator_failure(run_one(
        "{name: sneaky, module: undeclared-side-output}",
        "{type: generator, events: 10}",
    ));
    assert!(e.to_string().contains("`nowhere` was not declared"), "{e}");
}

#[test]
fn a_component_of_another_world_is_refused() {
    let err = runtime()
        .load_file("wrong", &fixtures_dir().join("wrong_world.wasm"))
        .err()
        .expect("refused");
    assert!(matches!(err, ModuleError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("weir:operator"), "{err}");
}

#[test]
fn malformed_bytes_and_core_modules_are_refused() {
    let err = runtime()
        .load("junk", b"definitely not wasm")
        .err()
        .unwrap();
    assert!(matches!(err, ModuleError::Invalid { .. }), "{err}");
    let core = b"\0asm\x01\0\0\0";
    let err = runtime().load("core", core).err().unwrap();
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
}

#[test]
fn a_missing_module_names_the_operator_and_where_it_looked() {
    let err = run_one(
        "{name: ghost, module: no-such-module}",
        "{type: generator, events: 1}",
    )
    .err()
    .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("ghost") && text.contains("no-such-module"),
        "{text}"
    );
}

#[test]
fn a_guest_that_grows_memory_without_end_traps_at_its_limit() {
    // The default 10 s deadline: filling 256 MiB on a loaded machine can
    // take longer than the tests' short one, and the limit must be what
    // stops it.
    let e = operator_failure(run_in(
        weir::wasm::SandboxPolicy::default(),
        "{name: hoard, module: memory-bomb}",
        "{type: generator, events: 10}",
    ));
    assert_eq!(e.operator, "hoard");
    let FailureKind::Trap(message) = &e.kind else {
        panic!("expected a trap, got {:?}", e.kind)
    };
    // The Rust guest's allocator aborts when memory.grow is refused.
    assert!(
        message.contains("memory") || message.contains("alloc"),
        "{message}"
    );
    // The host's memory is untouched: the limit is 256 MiB per instance.
    assert!(
        weir::bench::peak_rss_bytes() < 2 << 30,
        "peak RSS {}",
        weir::bench::peak_rss_bytes()
    );
}

#[test]
fn deep_recursion_is_a_trap_not_a_process_abort() {
    let e = operator_failure(run_one(
        "{name: deep, module: deep-recursion}",
        "{type: generator, events: 10}",
    ));
    assert_eq!(e.operator, "deep");
    let FailureKind::Trap(message) = &e.kind else {
        panic!("expected a trap, got {:?}", e.kind)
    };
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[test]
fn output_beyond_the_per_call_limit_fails_the_operator_by_name() {
    // A guest memory limit above the 64 MiB output limit, so the output
    // check, not the memory limit, is what stops it.
    let policy = weir::wasm::SandboxPolicy {
        memory_limit: 1 << 30,
        ..weir::wasm::SandboxPolicy::default()
    };
    let e = operator_failure(run_in(
        policy,
        "{name: flood, module: huge-output}",
        "{type: generator, events: 1}",
    ));
    assert_eq!(e.operator, "flood");
    let FailureKind::BadOutput(message) = &e.kind else {
        panic!("expected a bad output, got {:?}", e.kind)
    };
    assert!(message.contains("exceeds the limit"), "{message}");
}

#[test]
fn a_component_missing_an_export_is_refused_by_naming_it() {
    let err = runtime()
        .load_file("partial", &fixtures_dir().join("missing_export.wasm"))
        .err()
        .expect("refused");
    assert!(matches!(err, ModuleError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("window"), "{err}");
}

#[test]
fn state_access_outside_the_batch_fails_the_operator_by_naming_the_slot() {
    let e = operator_failure(run_one(
        "{name: thief, module: state-outside-key, input: key}",
        "{type: generator, events: 10}",
    ));
    assert_eq!(e.operator, "thief");
    let FailureKind::Trap(message) = &e.kind else {
        panic!("expected a trap, got {:?}", e.kind)
    };
    assert!(
        message.contains("slot 1000000") && message.contains("only touch the keys of the batch"),
        "{message}"
    );
}

#[test]
fn a_module_that_does_not_compile_in_time_is_refused_with_the_limit() {
    let policy = weir::wasm::SandboxPolicy {
        compile_timeout: Duration::from_millis(1),
        ..weir::wasm::SandboxPolicy::default()
    };
    // A runtime of its own: nothing compiled yet, in memory or on disk.
    let runtime = weir::wasm::WasmRuntime::new(policy, None).unwrap();
    let err = runtime
        .load_file(
            "slow",
            &crate::support::examples_dir().join("keyed_count.wasm"),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, ModuleError::CompileTimeout { .. }), "{err}");
    assert!(
        err.to_string().contains("did not compile within 1ms"),
        "{err}"
    );
}
