#!/usr/bin/env bash
# Runs the example emissions pipeline end to end on the real services: starts PostgreSQL,
# RabbitMQ and Redis if needed, builds the binaries, starts one coordinator and two workers on a
# fresh database, submits the pipeline, shows progress, and prints the result and its
# provenance hash. Everything it started is stopped on exit.
#
#   scripts/demo.sh [DAG_FILE] [INPUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
dag="${1:-examples/emissions-pipeline.yaml}"
input="${2:-examples/inputs/emissions.json}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}"

scripts/services.sh >/dev/null
echo "building coordinator and worker (first time: a few minutes)..."
cargo build --quiet -p embedded -p worker
bin="$CARGO_TARGET_DIR/debug"

db="gl_demo_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
export GL_ORCHESTRATOR_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export GL_ORCHESTRATOR_QUEUE_PREFIX="gl.demo.$$"
export GL_ORCHESTRATOR_HTTP_ADDR="127.0.0.1:$port"
export GL_ORCHESTRATOR_AUTH=disabled
export GL_ORCHESTRATOR_LOG_LEVEL=warn
logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$bin/coordinator" migrate
"$bin/coordinator" serve >"$logs/coordinator.log" 2>&1 & pids+=($!)
for w in 1 2; do
  GL_ORCHESTRATOR_WORKER_ID="worker-$w" GL_ORCHESTRATOR_WORKER_METRICS_ADDR="127.0.0.1:0" \
    "$bin/worker" >"$logs/worker-$w.log" 2>&1 & pids+=($!)
done
python3 scripts/demo_client.py "http://127.0.0.1:$port/api/v1/orchestrator" "$dag" "$input"
