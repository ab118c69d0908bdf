//! The host's integration tests: one binary, one module per topic. Guest
//! operators are built from source (examples/ and tests/fixtures/) by
//! `support` before the first test that needs them.

mod api;
mod checkpoints;
mod dashboard;
mod deploy;
mod examples;
mod graphs;
mod hotswap;
mod kafka;
mod keyed;
mod metrics;
mod nexmark;
mod poison;
mod runtime;
mod sandbox;
mod spec;
mod state;
mod support;
mod windows;
