# Sourced by the other scripts: one build cache outside the checkout, and the
# wasm32-wasip2 target that guest operators compile to.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export WEIR_GUEST_TARGET_DIR="${WEIR_GUEST_TARGET_DIR:-$HOME/.cache/weir/guests}"
export WEIR_MODULE_DIR="${WEIR_MODULE_DIR:-$WEIR_GUEST_TARGET_DIR/wasm32-wasip2/release}"
export WEIR_CACHE_DIR="${WEIR_CACHE_DIR:-$HOME/.cache/weir/compiled}"
mkdir -p "$CARGO_TARGET_DIR" "$WEIR_GUEST_TARGET_DIR"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "[weir] installing the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

build_guests() {
  echo "[weir] building example operators (wasm32-wasip2)" >&2
  cargo build --release --quiet --target wasm32-wasip2 \
    --manifest-path examples/Cargo.toml --target-dir "$WEIR_GUEST_TARGET_DIR"
}

# Installs Debian packages when they are missing (as root, or through sudo).
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# What the native dependencies build with: RocksDB's bindings are generated
# by bindgen, which needs libclang; RocksDB needs a C++ compiler; librdkafka
# builds with cmake.
install_build_deps() {
  if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ! command -v g++ >/dev/null \
    || ! command -v cmake >/dev/null; then
    echo "[weir] installing libclang-dev, g++ and cmake (for RocksDB and librdkafka)" >&2
    apt_install libclang-dev g++ cmake
  fi
}
install_build_deps

# cargo fuzz (libFuzzer), for scripts/fuzz.sh.
install_fuzz_tools() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[weir] installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz@0.13.2
  fi
}

# Servers the tests start: moto, a local S3-compatible server for checkpoints
# in object storage, in a virtualenv of its own under ~/.cache/weir.
install_test_tools() {
  local venv="$HOME/.cache/weir/venv"
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "[weir] installing moto (S3-compatible test server) into $venv" >&2
    if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
      apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]==5.2.1'
  fi
  export PATH="$venv/bin:$PATH"
  # Prometheus and promtool, for the metrics tests.
  if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    echo "[weir] installing prometheus (promtool and a server for the metrics tests)" >&2
    apt_install prometheus
  fi
  # Headless Chromium and its WebDriver, for the dashboard test.
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "[weir] installing chromium and chromium-driver (for the dashboard test)" >&2
    apt_install chromium chromium-driver
  fi
}
