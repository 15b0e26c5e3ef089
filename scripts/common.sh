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
LAKEPIPE_DEV_BIN="$CARGO_TARGET_DIR/debug/lakepipe"
mkdir -p "$LAKEPIPE_DEV_CACHE" "$RUN_DIR"
log() { printf '[lakepipe %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
