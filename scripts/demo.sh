#!/usr/bin/env bash
# The demo: builds the example operators and the host, then runs three jobs
# in-process on the embedded defaults (memory state) and shows their results.
cd "$(dirname "$0")/.."
source scripts/env.sh
build_guests
echo "[weir] building the weir binary (release; the first build takes a while)" >&2
cargo build --release --quiet -p weir
WEIR="$CARGO_TARGET_DIR/release/weir"
export WEIR_LOG="${WEIR_LOG:-warn}"

echo
echo "== word-count: split lines into words (re-key), count per word (keyed state), parallelism 2"
"$WEIR" run examples/word-count/job.yaml | sort -t'"' -k4,4 -k7n
echo
echo "== fraud-detector: keyed state + event-time timers over JSON transactions"
"$WEIR" run examples/fraud-detector/job.yaml
echo
echo "== clicks-per-window: 10 s tumbling event-time windows per user, late clicks to a side output"
"$WEIR" run examples/clicks-per-window/job.yaml
echo
echo "== keyed-count: 40 generated events over 4 keys at parallelism 2"
"$WEIR" run examples/keyed-count/job.yaml | tail -n 4
echo
echo "== benchmark: keyed-count, 2M events, Wasm vs the same logic native"
"$WEIR" bench keyed-count --events 2000000 --runs 1 | tail -n 1
