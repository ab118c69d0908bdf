#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests of the workspace
# (the integration tests build the guest examples and fixtures from source,
# and start a local S3-compatible server).
cd "$(dirname "$0")/.."
source scripts/env.sh
install_test_tools
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace 2>&1 | tee "$CARGO_TARGET_DIR/last-test.log"
