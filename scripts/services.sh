#!/usr/bin/env bash
# Start or stop the local services on 127.0.0.1: tansu (Kafka protocol), LocalStack S3 and,
# when scripts/setup.sh could install it and IGGY_URL names no other, an Iggy server.
#   scripts/services.sh start [broker|all]   writes $RUN_DIR/env with the addresses
#   scripts/services.sh stop
set -euo pipefail
source "$(dirname "$0")/common.sh"
BROKER_PORT="${LAKEPIPE_DEV_BROKER_PORT:-19092}"
S3_PORT="${LAKEPIPE_DEV_S3_PORT:-4566}"
IGGY_PORT="${LAKEPIPE_DEV_IGGY_PORT:-18090}"
BUCKET=data-pipeline-bucket

wait_port() { # host port seconds name
  for _ in $(seq 1 $(( $3 * 5 ))); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "$4 did not open $1:$2 within $3 s"; return 1
}

start_broker() {
  [ -x "$TANSU_BIN" ] || { log "tansu is not installed: run scripts/setup.sh"; exit 1; }
  if (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; then
    log "port $BROKER_PORT is taken; set LAKEPIPE_DEV_BROKER_PORT"; exit 1
  fi
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" --storage-engine memory://tansu/ \
    >"$RUN_DIR/tansu.log" 2>&1 &
  echo $! >"$RUN_DIR/tansu.pid"
  wait_port 127.0.0.1 "$BROKER_PORT" 30 tansu || { tail -20 "$RUN_DIR/tansu.log" >&2; exit 1; }
  log "tansu on 127.0.0.1:$BROKER_PORT"
}

start_s3() {
  [ -x "$LOCALSTACK_VENV/bin/python" ] || { log "LocalStack is not installed: run scripts/setup.sh"; exit 1; }
  if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
    log "port $S3_PORT is taken; set LAKEPIPE_DEV_S3_PORT"; exit 1
  fi
  mkdir -p "$RUN_DIR/tmp"
  ( cd "$RUN_DIR" && TMPDIR="$RUN_DIR/tmp" SERVICES=s3 GATEWAY_LISTEN="127.0.0.1:$S3_PORT" DNS_ADDRESS=0 EAGER_SERVICE_LOADING=1 \
      LOCALSTACK_VOLUME_DIR="$RUN_DIR/localstack-volume" \
      exec "$LOCALSTACK_VENV/bin/python" -m localstack.runtime.main ) >"$RUN_DIR/localstack.log" 2>&1 &
  echo $! >"$RUN_DIR/localstack.pid"
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$S3_PORT/_localstack/health" 2>/dev/null | grep -q '"s3": *"\(running\|available\)"'; then break; fi
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$S3_PORT/_localstack/health" >/dev/null || { tail -30 "$RUN_DIR/localstack.log" >&2; exit 1; }
  AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" "$LOCALSTACK_VENV/bin/python" "$LAKEPIPE_DEV_ROOT/localstack/create_bucket.py" "$BUCKET"
  log "LocalStack S3 on 127.0.0.1:$S3_PORT, bucket $BUCKET"
}

# Iggy with the settings that make an acknowledged message survive a SIGKILL: fsync on every
# save, and a save after every message (its defaults save every 1,024 messages, unsynced).
iggy_env() { # data-dir port
  echo IGGY_SYSTEM_PATH="$1" IGGY_TCP_ADDRESS="127.0.0.1:$2" IGGY_QUIC_ENABLED=false IGGY_HTTP_ENABLED=false \
    IGGY_WEBSOCKET_ENABLED=false IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=true IGGY_SYSTEM_PARTITION_MESSAGES_REQUIRED_TO_SAVE=1
}

start_iggy() {
  if [ -n "${IGGY_URL:-}" ]; then log "Iggy: using IGGY_URL"; return; fi
  if [ ! -x "$IGGY_BIN" ]; then log "no Iggy server installed: the Iggy tests will report SKIPPED"; return; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$IGGY_PORT") 2>/dev/null; then
    log "port $IGGY_PORT is taken; set LAKEPIPE_DEV_IGGY_PORT"; exit 1
  fi
  rm -rf "$RUN_DIR/iggy-data"
  # shellcheck disable=SC2046 # word splitting of the settings is intended
  ( cd "$RUN_DIR" && exec env $(iggy_env "$RUN_DIR/iggy-data" "$IGGY_PORT") "$IGGY_BIN" --with-default-root-credentials ) >"$RUN_DIR/iggy.log" 2>&1 &
  echo $! >"$RUN_DIR/iggy.pid"
  wait_port 127.0.0.1 "$IGGY_PORT" 30 iggy || { tail -20 "$RUN_DIR/iggy.log" >&2; exit 1; }
  STARTED_IGGY=1
  log "Iggy on 127.0.0.1:$IGGY_PORT (fsync on every message)"
}

write_env() {
  {
    echo "export LAKEPIPE_DEV_TEST_BROKERS=127.0.0.1:$BROKER_PORT"
    # tansu 0.6 holds every fetch for the whole fetch.wait.max.ms, data or not; librdkafka's
    # 500 ms (lakepipe's default, right for Kafka) would throttle every consumer against it.
    echo "export LAKEPIPE_KAFKA__FETCH_WAIT_MAX_MS=10"
    if [ "$1" = all ]; then
      echo "export LAKEPIPE_DEV_TEST_S3=s3://$BUCKET"
      echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
      echo "export AWS_ALLOW_HTTP=true"
      echo "export AWS_REGION=us-east-1"
      echo "export AWS_ACCESS_KEY_ID=test"
      echo "export AWS_SECRET_ACCESS_KEY=test"
    fi
    echo "export LAKEPIPE_DEV_PY=$PY_VENV/bin/python"
    echo "export LAKEPIPE_DEV_TANSU_BIN=$TANSU_BIN"
    echo "export LAKEPIPE_DEV_UI_NODE_PATH=$UI_NODE/node_modules"
    echo "export LAKEPIPE_DEV_CHROMIUM=$CHROMIUM_BIN"
    echo "export LAKEPIPE_DEV_STUNNEL=$STUNNEL_BIN"
    echo "export LAKEPIPE_DEV_UI_SHOTS=$LAKEPIPE_DEV_CACHE/artifacts/ui"
    if [ -n "${STARTED_IGGY:-}" ]; then
      echo "export IGGY_URL=iggy://iggy:iggy@127.0.0.1:$IGGY_PORT"
    fi
    # For tests that start (and kill) servers of their own.
    if [ -x "$IGGY_BIN" ]; then echo "export LAKEPIPE_DEV_IGGY_BIN=$IGGY_BIN"; fi
  } >"$RUN_DIR/env"
}

stop() {
  for name in tansu localstack iggy; do
    if [ -f "$RUN_DIR/$name.pid" ]; then
      pid=$(cat "$RUN_DIR/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$RUN_DIR/$name.pid"
    fi
  done
  rm -rf "$RUN_DIR/localstack-volume" "$RUN_DIR/tmp" "$RUN_DIR/iggy-data"
}

case "${1:-}" in
  start)
    what="${2:-all}"
    stop
    start_broker
    if [ "$what" = all ]; then start_s3; start_iggy; fi
    write_env "$what"
    ;;
  stop) stop ;;
  *) echo "usage: $0 start [broker|all] | stop" >&2; exit 2 ;;
esac
