#!/usr/bin/env bash
# Validates deploy/: every Kubernetes manifest with kubernetes-validate --strict (through
# deploy/validate.sh), and the alert rules with promtool (check and unit tests). Installs what is
# missing: the Python tools into a virtual environment, promtool from Debian's `prometheus`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GL_DEPLOY_VENV:-$HOME/.cache/greenlang-orchestrator/deploy-tools}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kubernetes-validate==1.37.0" "PyYAML==6.0.3"
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
PATH="$venv/bin:$PATH" deploy/validate.sh 1.33.0 1.37.0
shopt -s nullglob
tests=(deploy/monitoring/tests/*.test.yaml)
if [ ${#tests[@]} -gt 0 ]; then
  (cd deploy/monitoring && promtool test rules tests/*.test.yaml)
fi
# The PrometheusRule is generated from the plain rules file; the checker ties every metric and
# label the rules and dashboards use to coordinator/src/metrics.rs.
"$venv/bin/python" deploy/monitoring/tests/make_prometheusrule.py --check
"$venv/bin/python" deploy/monitoring/tests/check_monitoring.py
