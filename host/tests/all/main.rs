//! The host's integration tests: one binary, one module per topic. Guest
//! operators are built from source (examples/ and tests/fixtures/) by
//! `support` before the first test that needs them.

mod api;
mod checkpoints;
mod examples;
mod keyed;
mod runtime;
mod sandbox;
mod spec;
mod support;
mod windows;
