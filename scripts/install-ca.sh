#!/usr/bin/env bash
# Makes this client machine trust berth's dev CA, for the system and for Docker:
#   scripts/install-ca.sh [--docker-only] HOST:PORT [CA_FILE]
# copies CA_FILE (default certs/devdockerCA.crt) to /usr/local/share/ca-certificates/docker-dev-cert/ and runs
# update-ca-certificates (skipped with --docker-only), and to /etc/docker/certs.d/HOST:PORT/ca.crt. It prints the
# names the CA can vouch for: a CA made by berth-proxy carries name constraints (only the names it was made for,
# localhost and loopback, on the CA and on the intermediate whose key signs), which Go, OpenSSL, rustls and
# Chromium enforce, so trusting it system-wide lets it vouch for nothing else. Safe to run again.
set -euo pipefail

usage() { echo "usage: $0 [--docker-only] HOST:PORT [CA_FILE]" >&2; exit 2; }
DOCKER_ONLY=
if [ "${1:-}" = "--docker-only" ]; then
  DOCKER_ONLY=1
  shift
fi
[ $# -ge 1 ] && [ $# -le 2 ] || usage
HOSTPORT=$1
case "$HOSTPORT" in
  *:*) ;;
  *) echo "install-ca: give HOST:PORT (e.g. registry.example:5043), not $HOSTPORT" >&2; exit 2 ;;
esac
case "$HOSTPORT" in
  */*|*..*) echo "install-ca: invalid HOST:PORT $HOSTPORT" >&2; exit 2 ;;
esac
CA=${2:-$(cd "$(dirname "$0")/.." && pwd)/certs/devdockerCA.crt}
[ -f "$CA" ] || { echo "install-ca: $CA: no such file" >&2; exit 1; }
grep -q 'BEGIN CERTIFICATE' "$CA" || { echo "install-ca: $CA is not a PEM certificate" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install-ca: run as root (it writes under /usr/local/share and /etc/docker)" >&2; exit 1; }

SYS_DIR=${BERTH_SYSTEM_CA_DIR:-/usr/local/share/ca-certificates/docker-dev-cert}
DOCKER_DIR=${BERTH_DOCKER_CERTS_DIR:-/etc/docker/certs.d}/$HOSTPORT

# What the CA can vouch for (its name constraints), so the operator knows what trusting it means.
if command -v openssl >/dev/null 2>&1; then
  CONSTRAINTS=$(openssl x509 -in "$CA" -noout -ext nameConstraints 2>/dev/null |
    sed -n 's/^ *\(DNS\|IP\):/\1:/p' | tr '\n' ' ')
  if [ -n "$CONSTRAINTS" ]; then
    echo "this CA can vouch only for: $CONSTRAINTS"
  elif [ -z "$DOCKER_ONLY" ]; then
    echo "WARNING: this CA has no name constraints: it can vouch for any site, and whoever holds its key could"
    echo "impersonate any site to this machine. Prefer --docker-only, or make a constrained CA on the registry"
    echo "host (berth-proxy ca init --force --host NAME ...)."
  fi
fi

mkdir -p "$DOCKER_DIR"
if [ -z "$DOCKER_ONLY" ]; then
  mkdir -p "$SYS_DIR"
  install -m 0644 "$CA" "$SYS_DIR/devdockerCA.crt"
  echo "copied $CA to $SYS_DIR/devdockerCA.crt"
  if command -v update-ca-certificates >/dev/null 2>&1; then
    update-ca-certificates >/dev/null 2>&1 && echo "ran update-ca-certificates"
  else
    echo "update-ca-certificates not found: install the ca-certificates package for the system store"
  fi
fi
install -m 0644 "$CA" "$DOCKER_DIR/ca.crt"
echo "copied $CA to $DOCKER_DIR/ca.crt"
echo "Docker reads certs.d on each connection; no restart needed. Restart other programs that cache"
echo "the system store (e.g. a running browser). Then: docker login $HOSTPORT"
