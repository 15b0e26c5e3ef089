#!/usr/bin/env bash
# The demo on embedded defaults: starts a local broker, generates data for all five topics,
# ingests it exactly once into a local-directory lake (./lake-demo), and prints a query.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LAKEPIPE_DEV_ROOT"
"$LAKEPIPE_DEV_ROOT/scripts/setup.sh" broker
cargo build --locked --bin lakepipe
trap '"$LAKEPIPE_DEV_ROOT/scripts/services.sh" stop' EXIT
"$LAKEPIPE_DEV_ROOT/scripts/services.sh" start broker
source "$RUN_DIR/env"
LAKE="${1:-$LAKEPIPE_DEV_ROOT/lake-demo}"
# The broker keeps its data in memory, so every demo starts with new topics: start the demo
# lake afresh too (stored offsets from an earlier run would point into the old topics).
if [ -z "${1:-}" ]; then rm -rf "$LAKE"; fi
"$LAKEPIPE_DEV_BIN" demo --brokers "$LAKEPIPE_DEV_TEST_BROKERS" --lake "$LAKE" --count "${DEMO_COUNT:-2000}"
echo "Lake written to $LAKE. Try: $LAKEPIPE_DEV_BIN sql --lake $LAKE \"SELECT * FROM dead_letters LIMIT 5\""
