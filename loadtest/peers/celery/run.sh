#!/usr/bin/env bash
# Runs the Celery peer benchmark against the local RabbitMQ (broker) and Redis (result backend).
# Usage: bash loadtest/peers/celery/run.sh [chain|fanout|all] [--nodes N] [--reps R]
#   defaults: all, --nodes 10000, --reps 20 (after 2 warm-up chains)
# For each scenario: starts a fresh worker (prefork, concurrency 2) on a queue of its own, waits
# until it answers a ping, runs the driver, stops the worker and its children. Prints one JSON
# object per scenario on stdout; everything else goes to stderr.
# Environment: GLPEER_POOL (prefork), GLPEER_CONCURRENCY (2), GLPEER_PREFETCH (64),
# GLPEER_BROKER, GLPEER_BACKEND (see bench.py), GLPEER_READY_TIMEOUT (60 s).
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: $0 [chain|fanout|all] [--nodes N] [--reps R]" >&2; exit 2; }
scenario=all
nodes=10000
reps=20
if [ $# -gt 0 ] && [[ $1 != --* ]]; then scenario=$1; shift; fi
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) [ $# -ge 2 ] || usage; nodes=$2; shift 2 ;;
    --reps) [ $# -ge 2 ] || usage; reps=$2; shift 2 ;;
    *) usage ;;
  esac
done
case $scenario in
  chain) scenarios=(chain) ;;
  fanout) scenarios=(fanout) ;;
  all) scenarios=(chain fanout) ;;
  *) usage ;;
esac
[ -x .venv/bin/celery ] || { echo "run: .venv missing; run setup.sh first" >&2; exit 1; }

export GLPEER_QUEUE=glpeer-$$
export GLPEER_POOL=${GLPEER_POOL:-prefork}
export GLPEER_CONCURRENCY=${GLPEER_CONCURRENCY:-2}
export GLPEER_PREFETCH=${GLPEER_PREFETCH:-64}
export PYTHONDONTWRITEBYTECODE=1
py=.venv/bin/python
celery=.venv/bin/celery
node=$GLPEER_QUEUE@bench
logdir=$(mktemp -d -t glpeer.XXXXXX)
worker_pid=

# True while a process of group $1 is alive (zombies awaiting wait do not count).
group_alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'; }

stop_worker() {
  [ -n "$worker_pid" ] || return 0
  # The worker was started with setsid: its pid is its process group, holding its pool children.
  kill -TERM -- "-$worker_pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while group_alive "$worker_pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -KILL -- "-$worker_pid" 2>/dev/null || true
  wait "$worker_pid" 2>/dev/null || true
  worker_pid=
}

cleanup() {
  local rc=$?
  stop_worker
  "$py" bench.py cleanup || true
  if [ $rc -ne 0 ]; then echo "run: failed (rc $rc); worker logs kept in $logdir" >&2; else rm -rf "$logdir"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_worker() {
  local log=$logdir/worker-$1.log
  setsid "$celery" -A bench worker -n "$node" -Q "$GLPEER_QUEUE" \
    --pool "$GLPEER_POOL" --concurrency "$GLPEER_CONCURRENCY" --prefetch-multiplier "$GLPEER_PREFETCH" \
    --loglevel WARNING --without-gossip --without-mingle --without-heartbeat >"$log" 2>&1 &
  worker_pid=$!
  local started=$SECONDS deadline=$((SECONDS + ${GLPEER_READY_TIMEOUT:-60}))
  until "$celery" -A bench inspect ping -d "$node" --timeout 1 >/dev/null 2>&1; do
    if ! kill -0 "$worker_pid" 2>/dev/null; then
      echo "run: the worker exited during start-up:" >&2; cat "$log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "run: the worker did not answer a ping within ${GLPEER_READY_TIMEOUT:-60} s:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "run: worker $node ready (pool $GLPEER_POOL, concurrency $GLPEER_CONCURRENCY, prefetch x$GLPEER_PREFETCH) after $((SECONDS - started)) s" >&2
}

for s in "${scenarios[@]}"; do
  echo "run: scenario $s" >&2
  start_worker "$s"
  case $s in
    chain) "$py" bench.py chain --reps "$reps" ;;
    fanout) "$py" bench.py fanout --nodes "$nodes" ;;
  esac
  stop_worker
  if grep -E "ERROR|CRITICAL|Traceback" "$logdir/worker-$s.log" >&2; then
    echo "run: the worker logged errors during $s (above)" >&2
  fi
done
