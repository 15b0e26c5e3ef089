# Shared paths for lakepipe's scripts. Source it; do not run it.
# Everything installed lives outside the clone, so later runs reuse it.
LAKEPIPE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAKEPIPE_CACHE="${LAKEPIPE_CACHE:-$HOME/.cache/lakepipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LAKEPIPE_CACHE/target}"
TANSU_VERSION=0.6.0
TANSU_BIN="$LAKEPIPE_CACHE/tansu/bin/tansu"
LOCALSTACK_VENV="$LAKEPIPE_CACHE/localstack-venv"
PY_VENV="$LAKEPIPE_CACHE/py"
UI_NODE="$LAKEPIPE_CACHE/ui-node"
PLAYWRIGHT_VERSION=1.65.1
CHROMIUM_BIN="${LAKEPIPE_CHROMIUM:-/usr/bin/chromium}"
STUNNEL_BIN="${LAKEPIPE_STUNNEL:-/usr/bin/stunnel4}"
RUN_DIR="${LAKEPIPE_RUN_DIR:-$LAKEPIPE_CACHE/run}"
LAKEPIPE_BIN="$CARGO_TARGET_DIR/debug/lakepipe"
mkdir -p "$LAKEPIPE_CACHE" "$RUN_DIR"
log() { printf '[lakepipe %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
