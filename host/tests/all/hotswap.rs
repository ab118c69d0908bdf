//! Hot swap inside the running tasks: a new module version takes over an
//! operator at a checkpoint barrier with its state as it is, the job does
//! not restart, and no record is lost or seen twice; a version that fails
//! before a checkpoint confirms it is rolled back to the checkpoint taken
//! at the swap, on the old version.

use weir::graph::JobSpec;
use weir::runtime::{JobHandle, StartOptions, SwapError, SwapOutcome};

use crate::checkpoints::keyed_count_yaml;
use crate::support::{
    TempDir, assert_same_output, assert_upgraded_counts, committed_lines, env, expected_counts,
    fixtures_dir, keyed_output, runtime,
};

const EVENTS: u64 = 200_000;
const KEYS: u64 = 41;

fn start(tmp: &TempDir, name: &str, restart: &str) -> JobHandle {
    let checkpoint = format!(
        "{{interval: 200ms, dir: {}}}\nrestart: {restart}",
        tmp.path("checkpoints").display()
    );
    let yaml = keyed_count_yaml(
        name,
        2,
        (EVENTS, KEYS, 40_000),
        &tmp.path("out"),
        &checkpoint,
    );
    weir::runtime::start(
        &JobSpec::parse(&yaml).unwrap(),
        &env(),
        StartOptions::default(),
    )
    .unwrap()
}

fn module(name: &str) -> weir::wasm::WasmModule {
    let file = format!("{}.wasm", name.replace('-', "_"));
    runtime()
        .load_file(name, &fixtures_dir().join(file))
        .unwrap()
}

#[test]
fn a_new_version_takes_over_at_a_barrier_with_the_state_and_without_a_restart() {
    let tmp = TempDir::new("hotswap");
    let handle = start(&tmp, "hotswap", "{strategy: none}");
    crate::support::wait_for_records(&handle, 30_000);
    let outcome = handle
        .control()
        .swap_operator("count", module("keyed-count-v2"), None)
        .expect("the swap starts");
    let SwapOutcome::Committed {
        swapped_at,
        confirmed_by,
    } = outcome
    else {
        panic!("expected the swap to commit, got {outcome:?}")
    };
    assert!(confirmed_by > swapped_at);
    // The checkpoint taken at the swap records the old version, the ones
    // after it the new.
    let manifest = |id: u64| {
        std::fs::read_to_string(
            tmp.path("checkpoints/hotswap")
                .join(format!("chk-{id:010}"))
                .join("manifest.json"),
        )
        .unwrap_or_default()
    };
    let after = manifest(confirmed_by);
    assert!(after.contains("keyed-count-v2"), "{after}");
    let report = handle.wait().expect("the job runs to its end");
    assert_eq!(report.restarts, 0, "a hot swap does not restart the job");
    assert_upgraded_counts(
        &committed_lines(&tmp.path("out")),
        (EVENTS, KEYS),
        "swapped from v1 to v2 in the running tasks",
    );
}

#[test]
fn a_version_that_fails_before_its_first_checkpoint_is_rolled_back() {
    let tmp = TempDir::new("hotswap-rollback");
    let handle = start(
        &tmp,
        "hotswap-rollback",
        "{strategy: fixed-delay, attempts: 3, delay: 10ms}",
    );
    crate::support::wait_for_records(&handle, 30_000);
    let outcome = handle
        .control()
        .swap_operator("count", module("keyed-count-broken"), None)
        .expect("the swap starts");
    let SwapOutcome::RolledBack { reason } = outcome else {
        panic!("expected a rollback, got {outcome:?}")
    };
    assert!(reason.contains("cannot handle count"), "{reason}");
    let report = handle.wait().expect("the job recovers on the old version");
    assert_eq!(report.restarts, 1);
    // Only v1 ever emitted committed output, exactly once.
    assert_same_output(
        &keyed_output(&committed_lines(&tmp.path("out"))),
        &expected_counts(EVENTS, KEYS),
        "rolled back from the broken version",
    );
}

#[test]
fn a_swap_is_refused_by_name_when_it_cannot_roll_back_or_has_no_target() {
    let tmp = TempDir::new("hotswap-refused");
    let handle = start(&tmp, "hotswap-refused", "{strategy: none}");
    crate::support::wait_for_records(&handle, 10_000);
    let control = handle.control();
    let err = control
        .swap_operator("nope", module("keyed-count-v2"), None)
        .unwrap_err();
    assert!(
        matches!(err, SwapError::NoOperator(ref o) if o == "nope"),
        "{err}"
    );
    handle.cancel();
    let _ = handle.wait();

    let yaml = "name: no-checkpoints\nsource: {type: generator, events: 100000000, rate: 1000}\n\
                operators: [{name: pass, module: passthrough}]\nsink: {type: discard}\n";
    let handle = weir::runtime::start(
        &JobSpec::parse(yaml).unwrap(),
        &env(),
        StartOptions::default(),
    )
    .unwrap();
    let err = handle
        .control()
        .swap_operator("pass", module("keyed-count-v2"), None)
        .unwrap_err();
    assert!(matches!(err, SwapError::NoCheckpoints), "{err}");
    assert!(err.to_string().contains("checkpoint"), "{err}");
    handle.cancel();
    let _ = handle.wait();
}
