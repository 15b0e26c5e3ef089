# Shared paths for lakepipe's scripts. Source it; do not run it.
# Everything installed lives outside the clone, so later runs reuse it.
LAKEPIPE_DEV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAKEPIPE_DEV_CACHE="${LAKEPIPE_DEV_CACHE:-$HOME/.cache/lakepipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LAKEPIPE_DEV_CACHE/target}"
TANSU_VERSION=0.6.0
TANSU_BIN="$LAKEPIPE_DEV_CACHE/tansu/bin/tansu"
LOCALSTACK_VENV="$LAKEPIPE_DEV_CACHE/localstack-venv"
PY_VENV="$LAKEPIPE_DEV_CACHE/py"
UI_NODE="$LAKEPIPE_DEV_CACHE/ui-node"
PLAYWRIGHT_VERSION=1.65.1
CHROMIUM_BIN="${LAKEPIPE_DEV_CHROMIUM:-/usr/bin/chromium}"
STUNNEL_BIN="${LAKEPIPE_DEV_STUNNEL:-/usr/bin/stunnel4}"
RUN_DIR="${LAKEPIPE_DEV_RUN_DIR:-$LAKEPIPE_DEV_CACHE/run}"
# Apache Iggy server 0.8.0 (the protocol of the pinned `iggy` 0.10.0 crate): no registry has
# it, so it comes from the workplace's shared folder (a ready binary, or its source), cached here.
IGGY_BIN="$LAKEPIPE_DEV_CACHE/iggy/bin/iggy-server"
IGGY_SHA256=2eeeffec22b050b3f68d93b75a0e34f9e3e176bd36aeba6671bafc6679e15042
LAKEPIPE_DEV_BIN="$CARGO_TARGET_DIR/debug/lakepipe"
mkdir -p "$LAKEPIPE_DEV_CACHE" "$RUN_DIR"
log() { printf '[lakepipe %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# The workplace's shared folder (ready binaries, Iggy's source), if there is one.
shared_dir() {
  local d
  for d in "${LAKEPIPE_DEV_SHARED:-}" "$LAKEPIPE_DEV_ROOT/../shared" /work/shared; do
    if [ -n "$d" ] && { [ -d "$d/prebuilt" ] || [ -d "$d/iggy" ]; }; then (cd "$d" && pwd); return 0; fi
  done
  return 1
}
