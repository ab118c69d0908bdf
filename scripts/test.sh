#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests of the workspace
# (the integration tests build the guest examples and fixtures from source,
# and start a local S3-compatible server, Prometheus and a Kafka-protocol
# broker).
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/kafka_broker.sh
install_test_tools
install_kafka_broker
cargo fmt --all -- --check
# Release profile throughout: the demo and the bench build the same
# artifacts, so RocksDB's C++ and wasmtime compile once, not twice.
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo test --release --workspace 2>&1 | tee "$CARGO_TARGET_DIR/last-test.log"
bash scripts/fuzz.sh 20
