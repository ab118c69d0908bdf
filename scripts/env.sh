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
