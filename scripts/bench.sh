#!/usr/bin/env bash
# berth side by side with the stack it replaces (nginx + registry:2, from Debian), on this machine, in one run.
#
#   scripts/bench.sh [--smoke] [--out FILE.json] [more options: bench/bench.py --help]
#
# Installs what it uses (nginx, docker-registry, apache2-utils, skopeo, nghttp2-client, curl, openssl; docker.io
# and iproute2 for the docker section), builds the release binaries, then runs bench/bench.py: both stacks as child
# processes on loopback ports in a temporary directory, the same clients, credentials and data, alternating runs;
# prints a table and the targets, writes JSON with --out. --smoke (what CI runs) uses small sizes and short
# durations, finishes in a few minutes and exits non-zero if either stack fails to serve. The method and the last
# measured figures are in bench/README.md.
#   BERTH_BIN_DIR=DIR  use these binaries instead of building
#   TROW_SRC=DIR       also measure Trow (a registry in Rust, github.com/Trow-Registry/trow) in the raw section,
#                      next to berth-registry reached directly: builds it in that source folder
#                      (SQLX_OFFLINE=true cargo build --release --locked) and passes DIR/target/release/trow to
#                      bench.py --trow. Without it (or BERTH_BENCH_TROW), Trow is skipped with a note.
#   BERTH_BENCH_TROW=FILE  use this Trow binary instead (bench.py's default for --trow; TROW_SRC is not built)
#
#   scripts/bench.sh --soak DURATION [--s3] [--clients N] [--out FILE.json] [more: bench/soak.py --help]
#
# The soak instead: berth alone under 32 clients of mixed load (pushes, pulls, listings, deletes with the collector
# running, wrong passwords, aborted uploads, dropped connections) for DURATION (600, 10m), on the filesystem or on
# a moto_server bucket (--s3); records every failure, latency per operation over time and the RSS and open files
# of both processes every second; writes JSON and a PNG of them; exits non-zero on any failure or, for runs of
# 5 minutes or more, when memory, file descriptors or latency drift.
#
#   scripts/bench.sh --s3-cache [--smoke] [--out FILE.json] [more: bench/s3cache.py --help]
#
# The metadata cache on S3 instead: moto_server reached through a relay that adds 10 ms each way (bench/relay.py),
# a local redis-server, and five stacks on their own buckets: berth with the cache off, in memory and in Redis,
# nginx + registry:2 with its in-memory and its Redis blob descriptor cache. HEAD blob and GET manifest rates
# (h2load over HTTP/2) and the time of a 20-layer pull, one stack at a time; prints the table and the targets,
# writes JSON with --out; exits non-zero on any error, not on a missed target. --smoke: a quick end-to-end form.
#
#   scripts/bench.sh --mirror [--smoke] [--out FILE.json] [more: bench/mirror.py --help]
#
# Pull-through mirrors instead: two berth stacks on loopback (TLS, basic auth), a remote holding a one-layer image
# of 1 GiB and a mirror of it (berth-registry --config with [[mirrors]] prefix = "hub"). The first pull through the
# mirror (a cache miss: the mirror forgets the image before each) against the same pull straight from the remote,
# and the cached pull against one of a local repository of the mirror stack, skopeo copy to dir:, alternating runs;
# the mirror registry's peak RSS. Prints the table and the targets, writes JSON with --out; exits non-zero on any
# error (a failed pull, a digest mismatch, an error in berth's logs), not on a missed target. --smoke: a 64 MiB
# layer, one run.
#
#   scripts/bench.sh --ui [--smoke] [--out FILE.json] [more: bench/ui.py --help]
#
# The web interface instead: one berth stack on loopback, a repository of 10,000 tags (one small image pushed to
# the registry, its manifest tagged t00000 .. t09999), a login, then the server time (the client's, on one
# keep-alive HTTPS connection) of the repository page (first page by name, sort=-pushed, a middle page), an image
# page and the repository list, 50 requests each after a warm-up: p50, p95 and max per page. Prints the table and
# the target (the repository page under 100 ms at p50), writes JSON with --out; exits non-zero on any error (a
# request that did not answer 200 with the expected page, an error in berth's logs), not on a missed target.
# --smoke: 500 tags, 5 requests per page.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

if [ "${1:-}" = "--soak" ]; then
  shift
  step "soak: tools"
  need openssl:openssl python3:python3 htpasswd:apache2-utils
  python3 -c 'import matplotlib' >/dev/null 2>&1 || python3 -m pip install -q matplotlib
  command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
  if [ -z "${BERTH_BIN_DIR:-}" ]; then
    step "soak: release binaries"
    cargo build --release --locked --bins
  fi
  exec python3 bench/soak.py --bin-dir "${BERTH_BIN_DIR:-target/release}" "$@"
fi

if [ "${1:-}" = "--s3-cache" ]; then
  shift
  step "s3 cache: tools"
  need curl:curl openssl:openssl python3:python3 htpasswd:apache2-utils nginx:nginx docker-registry:docker-registry \
    skopeo:skopeo h2load:nghttp2-client redis-server:redis-server
  command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'
  if [ -z "${BERTH_BIN_DIR:-}" ]; then
    step "s3 cache: release binaries"
    cargo build --release --locked --bins
  fi
  exec python3 bench/s3cache.py --bin-dir "${BERTH_BIN_DIR:-target/release}" "$@"
fi

if [ "${1:-}" = "--mirror" ]; then
  shift
  step "mirror: tools"
  need curl:curl openssl:openssl python3:python3 htpasswd:apache2-utils skopeo:skopeo
  if [ -z "${BERTH_BIN_DIR:-}" ]; then
    step "mirror: release binaries"
    cargo build --release --locked --bins
  fi
  exec python3 bench/mirror.py --bin-dir "${BERTH_BIN_DIR:-target/release}" "$@"
fi

if [ "${1:-}" = "--ui" ]; then
  shift
  step "web interface: tools"
  need curl:curl openssl:openssl python3:python3 htpasswd:apache2-utils
  if [ -z "${BERTH_BIN_DIR:-}" ]; then
    step "web interface: release binaries"
    cargo build --release --locked --bins
  fi
  exec python3 bench/ui.py --bin-dir "${BERTH_BIN_DIR:-target/release}" "$@"
fi

step "bench: tools"
need curl:curl openssl:openssl python3:python3 nginx:nginx docker-registry:docker-registry \
  htpasswd:apache2-utils skopeo:skopeo h2load:nghttp2-client dockerd:docker.io docker:docker.io ip:iproute2

if [ -z "${BERTH_BIN_DIR:-}" ]; then
  step "bench: release binaries"
  cargo build --release --locked --bins
  BIN=target/release
else
  BIN=$BERTH_BIN_DIR
fi

trow=()
if [ -z "${BERTH_BENCH_TROW:-}" ] && [ -n "${TROW_SRC:-}" ]; then
  step "bench: Trow from $TROW_SRC"
  # its own target folder, whatever CARGO_TARGET_DIR says for berth's
  (cd "$TROW_SRC" && SQLX_OFFLINE=true CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked)
  trow=(--trow "$TROW_SRC/target/release/trow")
fi

exec python3 bench/bench.py --bin-dir "$BIN" "${trow[@]}" "$@"
