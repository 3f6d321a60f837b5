#!/usr/bin/env bash
# End-to-end: the Docker daemon against berth-registry on loopback (plain HTTP; TLS is the proxy's job):
# push an image with two layers of random data, remove it, pull it back, compare the image id, search.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

BIN=${BERTH_BIN_DIR:-target/debug}
WORK=$(mktemp -d /tmp/berth-e2e-registry.XXXXXX)
REG_PID=
cleanup() {
  [ -n "$REG_PID" ] && stop_pid "$REG_PID"
  stop_dockerd
  rm -rf "$WORK"
}
trap cleanup EXIT

step "registry e2e: start a private Docker daemon"
start_dockerd "$WORK/docker"

step "registry e2e: start berth-registry"
PORT=$(free_port)
REGISTRY_HTTP_ADDR=127.0.0.1:$PORT REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$WORK/data" \
  "$BIN/berth-registry" >"$WORK/registry.out" 2>"$WORK/registry.log" &
REG_PID=$!
wait_until 20 curl -sf "http://127.0.0.1:$PORT/v2/" || die "berth-registry did not answer on 127.0.0.1:$PORT"
HOST=127.0.0.1:$PORT

step "registry e2e: build an image with two random layers"
make_image berth-e2e:src "$WORK/ctx"
SRC_ID=$(docker image inspect -f '{{.Id}}' berth-e2e:src)
[ "$(docker image inspect -f '{{len .RootFS.Layers}}' berth-e2e:src)" = 2 ] || die "image does not have two layers"
info "image $SRC_ID"

step "registry e2e: docker push $HOST/e2e/webapp:1"
docker tag berth-e2e:src "$HOST/e2e/webapp:1"
docker push "$HOST/e2e/webapp:1" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log"; die "docker push failed"; }

step "registry e2e: remove locally, docker pull, compare image id"
docker rmi "$HOST/e2e/webapp:1" berth-e2e:src >/dev/null
docker pull "$HOST/e2e/webapp:1" >"$WORK/pull.log" 2>&1 || { cat "$WORK/pull.log"; die "docker pull failed"; }
GOT_ID=$(docker image inspect -f '{{.Id}}' "$HOST/e2e/webapp:1")
[ "$GOT_ID" = "$SRC_ID" ] || die "pulled image id $GOT_ID differs from pushed $SRC_ID"
info "pulled image id matches"

step "registry e2e: docker search $HOST/webapp"
docker search "$HOST/webapp" >"$WORK/search.log" 2>&1 || { cat "$WORK/search.log"; die "docker search failed"; }
grep -q '^e2e/webapp ' "$WORK/search.log" || { cat "$WORK/search.log"; die "docker search did not find e2e/webapp"; }
info "found: $(grep '^e2e/webapp ' "$WORK/search.log")"

step "registry e2e: passed"
