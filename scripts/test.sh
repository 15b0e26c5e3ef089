#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, starts tansu and LocalStack S3 on
# 127.0.0.1, runs unit and integration tests against them, and stops them again.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LAKEPIPE_DEV_ROOT"
started=$(date +%s)
"$LAKEPIPE_DEV_ROOT/scripts/setup.sh" all
log "building (target dir $CARGO_TARGET_DIR)"
cargo build --tests --bins --locked
trap '"$LAKEPIPE_DEV_ROOT/scripts/services.sh" stop' EXIT
"$LAKEPIPE_DEV_ROOT/scripts/services.sh" start all
source "$RUN_DIR/env"
log "running tests"
cargo test --locked -- --test-threads="${LAKEPIPE_DEV_TEST_THREADS:-2}" "$@"
# The Iggy tests are marked ignored, so that a run without a server lists them as ignored
# rather than passed; with a server they run here.
if [ -n "${IGGY_URL:-}" ]; then
  log "running the Iggy tests against the server at ${IGGY_URL##*@}"
  cargo test --locked -- --ignored --test-threads="${LAKEPIPE_DEV_TEST_THREADS:-2}" iggy "$@"
else
  log "SKIPPED: the Iggy tests (no Iggy server: scripts/setup.sh installs one in this workplace, or set IGGY_URL=iggy://USER:PASSWORD@HOST:PORT)"
fi
log "suite finished in $(( $(date +%s) - started )) s"
