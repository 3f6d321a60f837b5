#!/usr/bin/env bash
# Builds the berth-registry and berth-proxy images.
#   scripts/build-images.sh                 from source, on official base images (../Dockerfile)
#   scripts/build-images.sh --prebuilt DIR  from binaries in DIR (e.g. target/release) on the base image in
#                                           $BERTH_BASE_IMAGE (default debian:bookworm-slim); with
#                                           BERTH_BASE_IMAGE=local a Debian base is made here with debootstrap,
#                                           for machines that cannot pull images.
# Tags: ${BERTH_IMAGE_PREFIX:-berth}-registry:${BERTH_IMAGE_TAG:-latest} and ...-proxy:...
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

PREFIX=${BERTH_IMAGE_PREFIX:-berth}
TAG=${BERTH_IMAGE_TAG:-latest}

if [ "${1:-}" != "--prebuilt" ]; then
  for target in registry proxy; do
    step "building $PREFIX-$target:$TAG from source"
    docker build --target "$target" -t "$PREFIX-$target:$TAG" .
  done
  exit 0
fi

BIN=${2:?usage: $0 --prebuilt DIR}
BASE=${BERTH_BASE_IMAGE:-debian:bookworm-slim}
if [ "$BASE" = local ]; then
  BASE=berth-base:bookworm
  scripts/base-image.sh "$BASE"
fi
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp docker/Dockerfile.prebuilt "$CTX/Dockerfile"
cp docker/entrypoint.sh "$CTX/entrypoint.sh"
for target in registry proxy; do
  install -m 0755 "$BIN/berth-$target" "$CTX/berth-$target"
  # Debug information is for developers' machines, not images.
  strip "$CTX/berth-$target" 2>/dev/null || true
done
for target in registry proxy; do
  step "building $PREFIX-$target:$TAG from $BIN on $BASE"
  DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$BASE" --build-arg "TARGET=$target" \
    -t "$PREFIX-$target:$TAG" "$CTX" >"$CTX/build.log" 2>&1 || { cat "$CTX/build.log" >&2; die "docker build failed"; }
  info "$(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$PREFIX-$target:$TAG")"
done
