#!/usr/bin/env bash
# Fuzzes what Weir reads from outside (job specs, checkpoints and savepoints,
# guest output batches, module uploads) with cargo fuzz and libFuzzer.
#   bash scripts/fuzz.sh                 # every target for 20 s (the test suite's run)
#   bash scripts/fuzz.sh 600 checkpoint  # one target for 10 minutes
# A crash fails the run; libFuzzer saves the input under host/fuzz/artifacts/.
# The corpus grows across runs in ~/.cache/weir/fuzz/corpus/.
cd "$(dirname "$0")/.."
source scripts/env.sh
install_fuzz_tools
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(job_spec checkpoint guest_output module)
work="$HOME/.cache/weir/fuzz"
for target in "${targets[@]}"; do
  corpus="$work/corpus/$target"
  mkdir -p "$corpus"
  seeds=()
  [ -d "host/fuzz/seeds/$target" ] && seeds+=("host/fuzz/seeds/$target")
  case "$target" in
    job_spec)
      for spec in examples/*/job.yaml; do
        cp "$spec" "$corpus/$(basename "$(dirname "$spec")").yaml"
      done ;;
    module)
      build_guests
      cp "$WEIR_MODULE_DIR"/{passthrough,keyed_count}.wasm "$corpus/" ;;
  esac
  echo "[weir] fuzzing $target for ${seconds}s" >&2
  # No sanitizer: the host's one unsafe block reads its own compiled-module
  # cache, which no fuzz input reaches, and instrumenting wasmtime and
  # RocksDB's C++ would triple the build.
  log="$work/$target.log"
  if ! cargo fuzz run --fuzz-dir host/fuzz --sanitizer none --target-dir "$work/target" \
    "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[weir] fuzz target $target failed (log above); a crashing input is kept under host/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" | sed "s/^/[weir] $target /" >&2
done
