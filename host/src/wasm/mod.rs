//! Wasm operators: engine and sandbox policy, compile cache, the host side of
//! the guest contract, and the operator that drives a guest instance.
//!
//! One [`WasmRuntime`] per process holds the engine, the linker with every
//! import defined once, and the compile cache. A [`WasmModule`] is a
//! validated, compiled component ready to instantiate (an `InstancePre`);
//! each parallel instance of an operator gets its own [`WasmOperator`] with
//! its own store, memory and state.

pub mod cache;
pub mod engine;
pub mod host;
pub mod operator;

pub use engine::{SandboxEngine, SandboxPolicy};
pub use operator::{ModuleError, WasmModule, WasmOperator, WasmRuntime, WindowBatch};

/// Generated bindings of the `weir:operator` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "operator",
        path: "../guest-sdk/wit",
        imports: { default: trappable },
    });
}
