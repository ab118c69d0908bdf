//! Uploaded module bytes: validation and compilation refuse anything that
//! is not a component of the operator world, with an error, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir::wasm::{SandboxPolicy, WasmRuntime};

fn runtime() -> &'static Arc<WasmRuntime> {
    static RT: OnceLock<Arc<WasmRuntime>> = OnceLock::new();
    RT.get_or_init(|| WasmRuntime::new(SandboxPolicy::default(), None).expect("runtime starts"))
}

fuzz_target!(|data: &[u8]| {
    let _ = runtime().load("fuzzed", data);
});
