#!/usr/bin/env bash
# Our `chain` and `fanout` (distributed: one coordinator, two workers) and Celery's equivalents
# (loadtest/peers/celery), back to back on the same RabbitMQ and Redis of this machine, and the
# ratios ours / Celery's. Writes loadtest/results/compare.json. Usage: loadtest/compare.sh [REPS]
# (REPS chain runs of ours; Celery runs REPS x 4 chains after 2 warm-ups, and one fanout each).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-5}
[ -x loadtest/peers/celery/.venv/bin/python ] || bash loadtest/peers/celery/setup.sh >&2
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
chains=()
for _ in $(seq "$reps"); do chains+=(chain); done
RUNS_FILE=$runs loadtest/run.sh "${chains[@]}" fanout >/dev/null
bash loadtest/peers/celery/run.sh all --reps $((reps * 4)) >>"$runs"
python3 - "$runs" <<'PY' | tee loadtest/results/compare.json
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ours_chain = [r for r in rows if r.get("scenario") == "chain" and "peer" not in r]
ours_fanout = [r for r in rows if r.get("scenario") == "fanout" and "peer" not in r][-1]
celery = {r["scenario"]: r for r in rows if r.get("peer") == "celery"}
median = lambda key: statistics.median(r[key] for r in ours_chain)
ours = {
    "chain_overhead_ms": median("overhead_per_step_ms"),
    "chain_dep_to_start_p50_ms": median("dependency_to_start_p50_ms"),
    "chain_dep_to_start_p99_ms": median("dependency_to_start_p99_ms"),
    "fanout_nodes_per_second": ours_fanout["nodes_per_second"],
}
theirs = {
    # Both measured from the first node's start (submission excluded on both sides).
    "chain_overhead_ms": celery["chain"]["per_step_overhead_first_start_ms_median"],
    "chain_dep_to_start_p50_ms": celery["chain"]["dep_to_start_ms_p50"],
    "chain_dep_to_start_p99_ms": celery["chain"]["dep_to_start_ms_p99"],
    "fanout_nodes_per_second": celery["fanout"]["fanout_only_nodes_per_second"],
}
print(json.dumps({
    "ours": ours, "celery": theirs,
    "ratio_ours_to_celery": {k: round(ours[k] / theirs[k], 3) for k in ours},
    "our_chain_runs": len(ours_chain), "celery_version": celery["chain"]["version"],
}, indent=2))
PY
