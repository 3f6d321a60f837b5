#!/usr/bin/env bash
# Makes a minimal Debian bookworm image named $1 (default berth-base:bookworm) with debootstrap, for machines
# that cannot pull images. The root filesystem tarball is cached in $BERTH_CACHE_DIR (default
# /var/cache/berth), so later runs only import it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NAME=${1:-berth-base:bookworm}
CACHE=${BERTH_CACHE_DIR:-/var/cache/berth}
TARBALL=$CACHE/bookworm-minbase.tar

if docker image inspect "$NAME" >/dev/null 2>&1; then
  exit 0
fi
if [ ! -s "$TARBALL" ]; then
  need debootstrap:debootstrap
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  step "debootstrap bookworm from $MIRROR (cached in $TARBALL)"
  mkdir -p "$CACHE"
  ROOTFS=$(mktemp -d)
  trap 'rm -rf "$ROOTFS"' EXIT
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  # mktemp made the folder 0700; it becomes the image's /, which every user must traverse.
  chmod 0755 "$ROOTFS"
  tar -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
step "importing $TARBALL as $NAME"
docker import "$TARBALL" "$NAME" >/dev/null
