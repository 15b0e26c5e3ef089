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
if [ -z "${IGGY_URL:-}" ]; then
  log "Iggy tests will report SKIPPED: IGGY_URL is not set (start the docker-compose iggy service and set IGGY_URL=iggy://iggy:iggy@127.0.0.1:8090)"
fi
cargo test --locked -- --test-threads="${LAKEPIPE_DEV_TEST_THREADS:-2}" "$@"
log "suite finished in $(( $(date +%s) - started )) s"
