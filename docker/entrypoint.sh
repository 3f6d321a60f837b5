#!/bin/sh
# Entry point of the berth images. Started as root, it makes the writable folders (data, certs, the
# htpasswd file's folder) belong to the unprivileged `berth` user, then runs the command as that user.
# Started as another user (docker run --user ...), it runs the command as it is.
# Arguments that do not start with a command are given to the image's berth binary, so
# `docker-compose run --rm proxy user add NAME` runs `berth-proxy user add NAME`.
set -e

if [ $# -eq 0 ] || ! command -v "$1" >/dev/null 2>&1; then
  for bin in /usr/local/bin/berth-proxy /usr/local/bin/berth-registry; do
    if [ -x "$bin" ]; then
      set -- "$bin" "$@"
      break
    fi
  done
fi

if [ "$(id -u)" = 0 ]; then
  for dir in "${REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY:-}" "${BERTH_CERTS_DIR:-}" \
             "$(dirname "${BERTH_HTPASSWD:-/nonexistent/x}")"; do
    case "$dir" in ""|/|/nonexistent) continue ;; esac
    mkdir -p "$dir"
    # Only when needed, so a large data directory is not walked at every start.
    if [ "$(stat -c %u "$dir")" != "$(id -u berth)" ]; then
      chown -R berth:berth "$dir"
    fi
  done
  exec setpriv --reuid=berth --regid=berth --init-groups -- "$@"
fi
exec "$@"
