#!/usr/bin/env bash
# Installs what berth's tests use on a fresh Debian machine (only what is missing).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need curl:curl skopeo:skopeo docker-registry:docker-registry htpasswd:apache2-utils \
  dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap ip:iproute2 \
  update-ca-certificates:ca-certificates strip:binutils podman:podman containerd:containerd ctr:containerd \
  chromium:chromium chromedriver:chromium-driver certutil:libnss3-tools promtool:prometheus redis-server:redis-server
command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
# oras-py, pinned: scripts/oci-artifact-push.py relies on how this version sends its requests (each one without
# credentials first, then again with Basic credentials after the 401).
python3 -c 'import sys, oras.version; sys.exit(oras.version.__version__ != "0.2.43")' >/dev/null 2>&1 ||
  python3 -m pip install -q 'oras==0.2.43'
# The token server of the mirror tests (registry/tests/fixtures/token_server.py) signs JWTs with it (moto brings it
# too; this says so).
python3 -c 'import cryptography' >/dev/null 2>&1 || python3 -m pip install -q cryptography
# The web interface's browser test (scripts/ui-test.py) drives Debian's chromium through chromedriver.
python3 -c 'import selenium' >/dev/null 2>&1 || python3 -m pip install -q 'selenium>=4.20'
