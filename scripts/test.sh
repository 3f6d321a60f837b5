#!/usr/bin/env bash
# berth's whole test suite: installs what the tests need, runs every cargo test, then the end-to-end scripts.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

step "installing test dependencies (only what is missing)"
scripts/install-test-deps.sh

step "cargo test --workspace"
# Binaries first: tests of one crate start the other's binary too (the registry's replica tests run the proxy).
cargo build --workspace --locked --bins
cargo test --workspace --locked

step "fuzz targets, a few seconds each (scripts/fuzz.sh 600 is the long run)"
scripts/fuzz.sh 5

step "release binaries for the end-to-end suite"
cargo build --release --locked --bins

step "end-to-end"
BERTH_BIN_DIR=target/release scripts/e2e-registry.sh
BERTH_BIN_DIR=target/release scripts/e2e.sh

step "web interface in a real browser (chromium + chromedriver + Selenium; screenshots in target/ui-test)"
BERTH_BIN_DIR=target/release python3 scripts/ui-test.py --out target/ui-test

step "benchmark smoke run (both stacks serve; figures are not checked)"
BENCH_OUT=$(mktemp /tmp/berth-bench-smoke.XXXXXX.json)
BERTH_BIN_DIR=target/release scripts/bench.sh --smoke --out "$BENCH_OUT"
rm -f "$BENCH_OUT"

step "S3 metadata cache smoke run: five stacks on a bucket 20 ms away (any error fails; figures are not checked)"
BENCH_OUT=$(mktemp /tmp/berth-s3cache-smoke.XXXXXX.json)
BERTH_BIN_DIR=target/release scripts/bench.sh --s3-cache --smoke --out "$BENCH_OUT"
rm -f "$BENCH_OUT"

step "pull-through mirror benchmark smoke run: a 64 MiB layer through a mirror of a second berth stack (any error fails)"
BENCH_OUT=$(mktemp /tmp/berth-mirror-smoke.XXXXXX.json)
BERTH_BIN_DIR=target/release scripts/bench.sh --mirror --smoke --out "$BENCH_OUT"
rm -f "$BENCH_OUT"

step "web interface benchmark smoke run: pages of a repository with 500 tags (any error fails; figures are not checked)"
BENCH_OUT=$(mktemp /tmp/berth-ui-smoke.XXXXXX.json)
BERTH_BIN_DIR=target/release scripts/bench.sh --ui --smoke --out "$BENCH_OUT"
rm -f "$BENCH_OUT"

step "soak smoke runs: 30 s of mixed load on the filesystem and on S3 (any failed operation fails the suite)"
SOAK_DIR=$(mktemp -d /tmp/berth-soak-smoke.XXXXXX)
# The collector runs every 5 s; its grace must outlast the longest push (a push on moto_server takes tens of
# seconds), so it sweeps retention's deletes on the filesystem and only marks on S3.
for storage in fs s3; do
  extra=(--gc-grace 15s)
  [ "$storage" = s3 ] && extra=(--s3 --gc-grace 120s)
  BERTH_BIN_DIR=target/release scripts/bench.sh --soak 30s "${extra[@]}" --clients 16 --max-layer 8M \
    --gc-interval 5s --out "$SOAK_DIR/soak-$storage.json"
  [ -s "$SOAK_DIR/soak-$storage.png" ] || die "the soak wrote no PNG"
done
rm -rf "$SOAK_DIR"
