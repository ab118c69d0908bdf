#!/usr/bin/env bash
# The demo: builds the example operators and the host, then runs the example
# jobs in-process on the embedded defaults (memory state, checkpoints to a
# local folder) and shows their results.
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
echo "== clicks-per-window: 10 s tumbling event-time windows per user, late clicks to a side output, checkpointed"
WEIR_LOG=info "$WEIR" run --fresh examples/clicks-per-window/job.yaml 2> >(grep -E "checkpoint complete" >&2)
echo
echo "== keyed-count: 40 generated events over 4 keys at parallelism 2"
"$WEIR" run examples/keyed-count/job.yaml | tail -n 4
echo
echo "== exactly once across kill -9: keyed-count, 600k events, checkpoints every 500 ms"
EO=examples/keyed-count/exactly-once.yaml
rm -rf examples/keyed-count/weir-data
"$WEIR" run "$EO" 2>/dev/null &
sleep 2.5
kill -9 $! 2>/dev/null || true
wait $! 2>/dev/null || true
echo "killed the job with SIGKILL after 2.5 s; running it again:"
"$WEIR" run "$EO" 2>&1 | grep -E "resumed from|checkpoints:|job finished" || true
OUT=examples/keyed-count/weir-data/out
echo "committed records: $(cat "$OUT"/part-* | wc -l) (expected 600000)," \
  "duplicated (key, count) pairs: $(cat "$OUT"/part-* | awk -F'[:,]' '{print $2","$4}' | sort | uniq -d | wc -l) (expected 0)"
echo
echo "== the server: weir serve, upload the clicks-per-window module, run the windowed job through the REST API"
DATA="$(mktemp -d)"
"$WEIR" serve --listen 127.0.0.1:0 --data-dir "$DATA" --token demo-token 2> "$DATA/serve.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q "serving on" "$DATA/serve.log" 2>/dev/null && break; sleep 0.1; done
export WEIR_SERVER="$(grep -o 'http://[0-9.:]*' "$DATA/serve.log" | head -n 1)" WEIR_TOKEN=demo-token
"$WEIR" module upload "$WEIR_MODULE_DIR/clicks_per_window.wasm" --name clicks-per-window
cat > "$DATA/job.yaml" <<EOF
name: clicks-per-window
batch: {size: 1}
source:
  type: file
  path: $PWD/examples/clicks-per-window/clicks.jsonl
  key_field: user
  timestamp_field: ts
  watermark: {max_out_of_orderness: 1s, interval: 0ms}
operators:
  - name: clicks
    module: clicks-per-window
    input: key
    window: {type: tumbling, size: 10s, late_output: late}
    side_outputs:
      late: {type: directory, path: $DATA/late}
sink: {type: directory, path: $DATA/out}
checkpoint: {interval: 1s, dir: $DATA/checkpoints}
EOF
"$WEIR" job run "$DATA/job.yaml"
for _ in $(seq 100); do "$WEIR" job show clicks-per-window --json | grep -q '"state": "running"' || break; sleep 0.1; done
"$WEIR" job show clicks-per-window
echo "window results (committed part files):"
cat "$DATA"/out/part-*
echo "late clicks (side output):"
cat "$DATA"/late/part-*
command -v curl >/dev/null || apt_install curl
echo "metrics of the job (GET /metrics, Prometheus text format; excerpt):"
curl -s "$WEIR_SERVER/metrics" | grep -E '^weir_(operator_records_(in|out)_total|late_records_total|checkpoints_total|last_checkpoint_id|wasm_calls_total|watermark_seconds)\{job="clicks-per-window"' || true
echo
echo "== benchmark: keyed-count, 2M events, Wasm vs the same logic native"
"$WEIR" bench keyed-count --events 2000000 --runs 1 | tail -n 1
