# Shared helpers for berth's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

BERTH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_until SECONDS CMD...: run CMD until it succeeds, at most SECONDS seconds.
wait_until() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# Installs Debian packages for the commands that are missing: need CMD:PACKAGE ...
need() {
  local missing=()
  local pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
  info "installing ${missing[*]}"
  if [ -z "${BERTH_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    export BERTH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# start_dockerd DIR [DOCKERD-OPTION...]: a private Docker daemon with its state under DIR; exports DOCKER_HOST.
start_dockerd() {
  local d=$1
  shift
  mkdir -p "$d"
  dockerd --data-root "$d/root" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    --host "unix://$d/docker.sock" --storage-driver vfs "$@" \
    >"$d/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$d/docker.sock"
  wait_until 60 docker version || { tail -20 "$d/dockerd.log" >&2; die "dockerd did not start"; }
}

# stop_dockerd: stops the daemon started by start_dockerd, by its PID.
stop_dockerd() {
  if [ -n "${DOCKERD_PID:-}" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null || true
  fi
  DOCKERD_PID=
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# make_image TAG DIR: builds a local image FROM scratch with two layers of random bytes.
make_image() {
  local tag=$1 ctx=$2
  mkdir -p "$ctx"
  head -c 3000000 /dev/urandom >"$ctx/a.bin"
  head -c 2000000 /dev/urandom >"$ctx/b.bin"
  printf 'FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>&1 || die "docker build of $tag failed"
}
