#!/usr/bin/env bash
# Runs one integration test binary of the `tests` crate N times in a row, each run bounded by a
# timeout, and prints one line per run (exit status, seconds, the figures the test printed):
#   scripts/repeat-test.sh fault_rabbitmq 20
#   scripts/repeat-test.sh suite 10 durability::   (one area of the suite: a test-name filter)
# A hang shows as exit status 124. The outputs stay in $OUT (default /tmp/repeat-<test>).
set -euo pipefail
cd "$(dirname "$0")/.."
test_name=$1
runs=${2:-20}
filter=${3:-}
limit=${LIMIT_SECONDS:-600}
out=${OUT:-/tmp/repeat-$test_name${filter:+-${filter//:/}}}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}"

scripts/services.sh >/dev/null
binary=$(cargo test -p tests --test "$test_name" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["executable"])' | tail -1)
mkdir -p "$out"
passed=0
for i in $(seq 1 "$runs"); do
  started=$(date +%s.%N)
  status=0
  (cd tests && timeout "$limit" "$binary" --nocapture ${filter:+"$filter"} >"$out/run-$i.log" 2>&1) || status=$?
  seconds=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  [ "$status" = 0 ] && passed=$((passed + 1))
  figures=$(grep -E 'declared in|took|whole test|paused for|panicked' "$out/run-$i.log" | tr '\n' ' ' | cut -c1-300 || true)
  echo "run $i: exit $status, ${seconds}s $figures"
done
echo "$passed of $runs passed (logs in $out)"
[ "$passed" = "$runs" ]
