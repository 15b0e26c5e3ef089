#!/usr/bin/env bash
# Install what lakepipe's demo and tests need, into the cache outside the clone (idempotent).
#   scripts/setup.sh            tansu + Python readers + LocalStack + Chromium/playwright-core + Iggy
#   scripts/setup.sh broker     tansu only (enough for the demo)
set -euo pipefail
source "$(dirname "$0")/common.sh"
what="${1:-all}"

install_tansu() {
  if [ -x "$TANSU_BIN" ]; then return; fi
  log "installing tansu $TANSU_VERSION (Kafka-protocol broker; ~12 min on 2 cores, once)"
  CARGO_TARGET_DIR="$LAKEPIPE_DEV_CACHE/tansu-target" cargo install tansu --version "$TANSU_VERSION" \
    --features dynostore --locked --root "$LAKEPIPE_DEV_CACHE/tansu" >"$LAKEPIPE_DEV_CACHE/tansu-install.log" 2>&1 \
    || { tail -30 "$LAKEPIPE_DEV_CACHE/tansu-install.log" >&2; exit 1; }
  rm -rf "$LAKEPIPE_DEV_CACHE/tansu-target"
}

install_py() {
  local req="$LAKEPIPE_DEV_ROOT/scripts/requirements-readers.txt" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$PY_VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then return; fi
  log "installing Python readers for cross-checks (deltalake, duckdb + delta extension, notebook runner)"
  [ -x "$PY_VENV/bin/python" ] || python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install -q -r "$req"
  echo "$want" >"$PY_VENV/.requirements.sha256"
}

install_localstack() {
  if "$LOCALSTACK_VENV/bin/python" -c 'import localstack' 2>/dev/null; then return; fi
  log "installing LocalStack (host mode, S3 only)"
  python3 -m venv "$LOCALSTACK_VENV"
  "$LOCALSTACK_VENV/bin/pip" install -q -r "$LAKEPIPE_DEV_ROOT/localstack/requirements-host.txt"
}

# Debian packages, installed once (apt-get update only when the package lists are stale).
install_apt() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "$@" >"$LAKEPIPE_DEV_CACHE/apt.log" 2>&1 \
    || { $sudo apt-get update -q >>"$LAKEPIPE_DEV_CACHE/apt.log" 2>&1 && $sudo apt-get install -y -q "$@" >>"$LAKEPIPE_DEV_CACHE/apt.log" 2>&1; } \
    || { tail -20 "$LAKEPIPE_DEV_CACHE/apt.log" >&2; exit 1; }
}

install_tls() {
  if [ -x "$STUNNEL_BIN" ] && command -v openssl >/dev/null; then return; fi
  log "installing stunnel4 and openssl (Debian packages) for the TLS test"
  install_apt stunnel4 openssl
}

install_compose() {
  if command -v docker-compose >/dev/null; then return; fi
  log "installing docker-compose (Debian package) to validate docker-compose.yml (no Docker engine is needed)"
  install_apt docker-compose
}

install_ui() {
  if [ ! -x "$CHROMIUM_BIN" ]; then
    log "installing Chromium (Debian package) for the web UI test"
    install_apt chromium
  fi
  if [ "$(node -p "require('$UI_NODE/node_modules/playwright-core/package.json').version" 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
    log "installing playwright-core $PLAYWRIGHT_VERSION (drives Chromium in the UI test)"
    mkdir -p "$UI_NODE"
    npm install --prefix "$UI_NODE" --no-save --no-package-lock --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >"$LAKEPIPE_DEV_CACHE/npm.log" 2>&1 \
      || { tail -20 "$LAKEPIPE_DEV_CACHE/npm.log" >&2; exit 1; }
  fi
}

# The Iggy server for the Iggy tests: the shared ready binary when its sha256 matches, else a
# build from the shared source (about 25 min on 2 cores, once). Without either (a clone outside
# this workplace), the Iggy tests report SKIPPED unless IGGY_URL names a server.
install_iggy() {
  if [ -x "$IGGY_BIN" ]; then return; fi
  local shared
  if ! shared=$(shared_dir); then
    log "no Iggy server here (no shared folder): the Iggy tests will report SKIPPED unless IGGY_URL is set"
    return 0
  fi
  mkdir -p "$(dirname "$IGGY_BIN")"
  if [ -f "$shared/prebuilt/iggy-server" ] && [ "$(sha256sum "$shared/prebuilt/iggy-server" | cut -d' ' -f1)" = "$IGGY_SHA256" ]; then
    log "installing the ready Iggy server 0.8.0 (and the libraries it needs: libhwloc15, libudev1)"
    if ! ldconfig -p | grep -q libhwloc.so.15 || ! ldconfig -p | grep -q libudev.so.1; then install_apt libhwloc15 libudev1; fi
    cp "$shared/prebuilt/iggy-server" "$IGGY_BIN.part" && chmod +x "$IGGY_BIN.part" && mv "$IGGY_BIN.part" "$IGGY_BIN"
  elif [ -x "$shared/iggy/build.sh" ]; then
    log "building the Iggy server 0.8.0 from source (about 25 min on 2 cores, once)"
    install_apt libhwloc-dev libudev-dev pkg-config
    built=$("$shared/iggy/build.sh" "$LAKEPIPE_DEV_CACHE/iggy-build" 2>"$LAKEPIPE_DEV_CACHE/iggy-build.log") \
      || { tail -30 "$LAKEPIPE_DEV_CACHE/iggy-build.log" >&2; exit 1; }
    cp "$built" "$IGGY_BIN"
  else
    log "the shared folder has no Iggy server: the Iggy tests will report SKIPPED unless IGGY_URL is set"
  fi
}

case "$what" in
  broker) install_tansu ;;
  all) install_tansu; install_py; install_localstack; install_ui; install_tls; install_compose; install_iggy ;;
  *) echo "usage: $0 [all|broker]" >&2; exit 2 ;;
esac
