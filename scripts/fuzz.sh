#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a while each (stable toolchain, no sanitizer):
#   scripts/fuzz.sh [SECONDS]        (default 60 per target)
# Installs cargo-fuzz when missing. A crash stops the run; its input stays in fuzz/artifacts/TARGET/ and is copied
# into fuzz/seeds/TARGET/ (tracked): every later run, the test suite's included, replays it first, so once
# committed it is a regression test (add a unit test next to the parser too when fixing it). The corpus grows in
# fuzz/corpus/TARGET/ (not tracked), starting from the small real examples in fuzz/seeds/TARGET/. The test suite
# runs it for a few seconds per target so that the targets keep building and the seeds keep passing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT/fuzz"
SECS=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in $(cargo fuzz list); do
  step "fuzz $target for ${SECS}s"
  log=$(mktemp)
  rc=0
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  cargo fuzz run -s none "$target" "corpus/$target" "${seeds[@]}" -- -max_total_time="$SECS" >"$log" 2>&1 || rc=$?
  grep -E '^Done|panicked|SUMMARY|Test unit' "$log" | sed 's/^/    /' || true
  rm -f "$log"
  if [ "$rc" != 0 ]; then
    mkdir -p "seeds/$target"
    for f in "artifacts/$target"/crash-* "artifacts/$target"/oom-* "artifacts/$target"/timeout-*; do
      [ -f "$f" ] && cp "$f" "seeds/$target/" && echo "    kept as a regression input: fuzz/seeds/$target/$(basename "$f")"
    done
    die "fuzz target $target failed (exit $rc): the input is in fuzz/artifacts/$target/"
  fi
done
step "fuzz: every target ran ${SECS}s without a failure"
