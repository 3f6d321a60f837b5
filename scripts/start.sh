#!/usr/bin/env bash
# Runs the berth stack on this machine without Docker: builds release binaries, creates the dev CA and the
# server certificate if missing, creates a first user if there is no htpasswd file (its password is printed
# once), then runs berth-registry and berth-proxy in the foreground until Ctrl-C, which stops both.
#
# Settings (environment):
#   BERTH_LISTEN      proxy address                  (default 0.0.0.0:5043)
#   BERTH_TLS_HOSTS   names/IPs in the server cert   (default: hostname, localhost, 127.0.0.1)
#   BERTH_DATA_DIR    registry data directory        (default ./data)
#   BERTH_CERTS_DIR   CA and certificates            (default ./certs)
#   BERTH_HTPASSWD    htpasswd file                  (default ./auth/htpasswd)
#   BERTH_USER        first user's name              (default admin)
#   REGISTRY_HTTP_ADDR registry address, loopback only (default 127.0.0.1:5000)
#   BERTH_BIN_DIR     use these binaries instead of building (e.g. target/debug)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

export BERTH_LISTEN=${BERTH_LISTEN:-0.0.0.0:5043}
export BERTH_CERTS_DIR=${BERTH_CERTS_DIR:-$BERTH_ROOT/certs}
export BERTH_HTPASSWD=${BERTH_HTPASSWD:-$BERTH_ROOT/auth/htpasswd}
export REGISTRY_HTTP_ADDR=${REGISTRY_HTTP_ADDR:-127.0.0.1:5000}
export REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=${BERTH_DATA_DIR:-$BERTH_ROOT/data}
export BERTH_UPSTREAM=${BERTH_UPSTREAM:-http://$REGISTRY_HTTP_ADDR}
USER_NAME=${BERTH_USER:-admin}

if [ -z "${BERTH_BIN_DIR:-}" ]; then
  step "building release binaries"
  cargo build --release --locked --bins
  BIN=target/release
else
  BIN=$BERTH_BIN_DIR
fi

mkdir -p "$REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY" "$BERTH_CERTS_DIR" "$(dirname "$BERTH_HTPASSWD")"

if [ ! -f "$BERTH_CERTS_DIR/domain.crt" ] || [ ! -f "$BERTH_CERTS_DIR/domain.key" ]; then
  step "creating the dev CA and server certificate in $BERTH_CERTS_DIR"
  if [ -f "$BERTH_CERTS_DIR/devdockerCA.key" ]; then
    "$BIN/berth-proxy" ca issue --dir "$BERTH_CERTS_DIR"
  else
    "$BIN/berth-proxy" ca init --dir "$BERTH_CERTS_DIR"
  fi
fi

if [ ! -f "$BERTH_HTPASSWD" ]; then
  step "creating the first user"
  PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
  printf '%s\n' "$PASSWORD" | "$BIN/berth-proxy" user add "$USER_NAME" --password-stdin --file "$BERTH_HTPASSWD" >/dev/null
  info "user:     $USER_NAME"
  info "password: $PASSWORD"
  info "(shown once; change it with: $BIN/berth-proxy user add $USER_NAME --file $BERTH_HTPASSWD)"
fi

REG_PID=
PROXY_PID=
stop_all() {
  trap - INT TERM EXIT
  [ -n "$PROXY_PID" ] && stop_pid "$PROXY_PID"
  [ -n "$REG_PID" ] && stop_pid "$REG_PID"
  wait 2>/dev/null || true
  info "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

step "starting berth-registry on $REGISTRY_HTTP_ADDR (data: $REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY)"
"$BIN/berth-registry" &
REG_PID=$!
wait_until 20 curl -sf "http://$REGISTRY_HTTP_ADDR/v2/" || die "berth-registry did not start"

step "starting berth-proxy on $BERTH_LISTEN"
"$BIN/berth-proxy" serve &
PROXY_PID=$!

PORT=${BERTH_LISTEN##*:}
info "trust the CA on a client:  scripts/install-ca.sh HOST:$PORT $BERTH_CERTS_DIR/devdockerCA.crt"
info "then:                      docker login HOST:$PORT"
info "Ctrl-C stops both."
# Whichever stops first ends the stack.
wait -n "$REG_PID" "$PROXY_PID" || true
die "a berth process exited; stopping the other"
