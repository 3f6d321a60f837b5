#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a while each (stable toolchain, no sanitizer):
#   scripts/fuzz.sh [SECONDS]        (default 60 per target)
# Installs cargo-fuzz when missing. A crash stops the run; its input stays in fuzz/artifacts/TARGET/ (turn it into
# a test next to the parser before fixing it). The corpus grows in fuzz/corpus/TARGET/ (not tracked).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT/fuzz"
SECS=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in $(cargo fuzz list); do
  step "fuzz $target for ${SECS}s"
  log=$(mktemp)
  rc=0
  cargo fuzz run -s none "$target" -- -max_total_time="$SECS" >"$log" 2>&1 || rc=$?
  grep -E '^Done|panicked|SUMMARY|Test unit' "$log" | sed 's/^/    /' || true
  rm -f "$log"
  [ "$rc" = 0 ] || die "fuzz target $target failed (exit $rc): the input is in fuzz/artifacts/$target/"
done
step "fuzz: every target ran ${SECS}s without a failure"
