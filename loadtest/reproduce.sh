#!/usr/bin/env bash
# Every figure of BENCHMARKS.md's load sections in one command: the distributed scenarios, the
# same scenarios embedded, the Celery comparison, then the plots. About 15 minutes on 2 cores
# (the soak is left out: `loadtest/run.sh soak` runs it alone, about 6 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=(chain fanout concurrent concurrent-500 memory validate shapes)
loadtest/run.sh "${scenarios[@]}"
MODE=embedded loadtest/run.sh "${scenarios[@]}"
loadtest/compare.sh 5
python3 loadtest/plots.py
