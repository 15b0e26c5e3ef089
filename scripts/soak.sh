#!/usr/bin/env bash
# The kill -9 soak: an ingest killed LAKEPIPE_DEV_SOAK_KILLS times (50 by default) at random
# moments against a LocalStack S3 lake, then checked row by row. Starts and stops the same
# services as the test suite; takes about a minute per ten kills.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LAKEPIPE_DEV_ROOT"
"$LAKEPIPE_DEV_ROOT/scripts/setup.sh" all
cargo build --tests --bins --locked
trap '"$LAKEPIPE_DEV_ROOT/scripts/services.sh" stop' EXIT
"$LAKEPIPE_DEV_ROOT/scripts/services.sh" start all
source "$RUN_DIR/env"
log "soak: ${LAKEPIPE_DEV_SOAK_KILLS:-50} kills"
cargo test --locked --test it -- --ignored --exact kill::kill_nine_soak --nocapture
