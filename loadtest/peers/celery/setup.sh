#!/usr/bin/env bash
# Creates loadtest/peers/celery/.venv and installs the exact pins of requirements.txt
# (Celery 5.7 with the Redis extra). Idempotent: re-running only re-checks the pins.
# Usage: bash loadtest/peers/celery/setup.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version 2>&1)" >&2
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
.venv/bin/python -m pip check --disable-pip-version-check >&2
.venv/bin/python - >&2 <<'EOF'
import sys, celery, kombu, amqp, redis, billiard
print(f"setup: python {sys.version.split()[0]}, celery {celery.__version__}, kombu {kombu.__version__}, "
      f"amqp {amqp.__version__}, redis-py {redis.__version__}, billiard {billiard.__version__}")
EOF
