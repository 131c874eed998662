#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md: release builds, then each scenario against one
# deployment on this machine. Distributed (default): a fresh PostgreSQL database, one coordinator
# and two workers; results in loadtest/results/<scenario>.json (and soak.svg). With MODE=embedded:
# one `coordinator dev --memory --workers 2` process; results in loadtest/results/embedded/.
# Usage: [MODE=embedded] loadtest/run.sh [chain fanout concurrent concurrent-500 memory amplify
# validate shapes soak]; SOAK_EXECUTIONS sets the soak's size (default 10,000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}
cargo build -q --release --locked -p embedded -p worker -p loadtest
bin=$CARGO_TARGET_DIR/release
mode=${MODE:-distributed}
tag=bench_$(date +%s)
[ "$mode" = embedded ] || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $tag"
export GL_ORCHESTRATOR_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$tag
export GL_ORCHESTRATOR_QUEUE_PREFIX=gl.$tag GL_ORCHESTRATOR_REDIS_PREFIX=gl:$tag:
export GL_ORCHESTRATOR_AUTH=disabled GL_ORCHESTRATOR_HTTP_ADDR=127.0.0.1:18080
export GL_ORCHESTRATOR_MAX_DAG_NODES=100000 GL_ORCHESTRATOR_MAX_PARALLEL_NODES=500
export GL_ORCHESTRATOR_MAX_BODY_BYTES=33554432 GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS=1000
export GL_ORCHESTRATOR_LOG_LEVEL=warn GL_ORCHESTRATOR_WORKER_CONCURRENCY=8
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$mode" = embedded ] || psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $tag WITH (FORCE)" || true
}
trap cleanup EXIT
if [ "$mode" = embedded ]; then
  "$bin/coordinator" dev --memory --workers 2 & pids+=($!)
  out=loadtest/results/embedded
  watch="coordinator=${pids[0]}"
else
  "$bin/coordinator" migrate
  "$bin/coordinator" serve & pids+=($!)
  GL_ORCHESTRATOR_WORKER_ID=w1 GL_ORCHESTRATOR_WORKER_METRICS_ADDR=127.0.0.1:0 "$bin/worker" & pids+=($!)
  GL_ORCHESTRATOR_WORKER_ID=w2 GL_ORCHESTRATOR_WORKER_METRICS_ADDR=127.0.0.1:0 "$bin/worker" & pids+=($!)
  out=loadtest/results
  watch="coordinator=${pids[0]},worker-1=${pids[1]},worker-2=${pids[2]}"
fi
base=http://127.0.0.1:18080/api/v1/orchestrator
for _ in $(seq 100); do curl -sf "$base/ready" >/dev/null && break; sleep 0.2; done
mkdir -p "$out"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(chain fanout concurrent concurrent-500)
for s in "${scenarios[@]}"; do
  case $s in
    concurrent-500) args=(concurrent --n 500) ;;
    memory) args=(memory --executions 1000 --pid "${pids[0]}" --metrics "http://127.0.0.1:18080/metrics") ;;
    amplify) args=(amplify --pid "${pids[0]}") ;;
    soak) args=(soak --executions "${SOAK_EXECUTIONS:-10000}" --in-flight 100 --metrics "http://127.0.0.1:18080/metrics"
                --watch "$watch" --svg "$out/soak.svg") ;;
    # 2 workers x GL_ORCHESTRATOR_WORKER_CONCURRENCY=8 worker slots, in both modes.
    shapes) args=(shapes --slots 16 --files loadtest/shapes/instances/*.json) ;;
    *) args=("$s") ;;
  esac
  echo "loadtest: $s" >&2
  "$bin/loadtest" --base "$base" "${args[@]}" | tee "$out/$s.json"
  # Every result also as one line of $RUNS_FILE when set (loadtest/compare.sh repeats scenarios).
  [ -z "${RUNS_FILE:-}" ] || python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$out/$s.json" >>"$RUNS_FILE"
done
