#!/usr/bin/env bash
# Installs what berth's tests use on a fresh Debian machine (only what is missing).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need curl:curl skopeo:skopeo docker-registry:docker-registry htpasswd:apache2-utils \
  dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap ip:iproute2 \
  update-ca-certificates:ca-certificates strip:binutils
command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
