#!/usr/bin/env bash
# The whole test suite: starts PostgreSQL, RabbitMQ and Redis when they are not running, then runs
# every test of the workspace in one cargo invocation (a separate build step would rebuild crates
# with other features). CI runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# A target directory outside the clone survives between runs on the same machine; cargo tracks its
# inputs, so reuse is always correct.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/services.sh
# Queues and databases a killed test run left behind (each test deletes its own otherwise).
scripts/sweep-test-leftovers.sh
cargo fmt --all -- --check
# Deployment manifests and alert rules (kubernetes-validate --strict, promtool).
scripts/deploy-check.sh
cargo test --workspace --locked
# The live API against its own OpenAPI document (needs the binaries the tests just built).
scripts/schemathesis.sh
# The Celery peer of the load test, small (no thresholds), so it never rots.
bash loadtest/peers/celery/setup.sh >/dev/null
bash loadtest/peers/celery/run.sh all --nodes 200 --reps 2
# The README's first command, exactly as written there (embedded mode), and the same pipeline on
# the distributed deployment.
scripts/readme-first-command.sh
scripts/demo.sh
# glctl as an API client only (feature `embedded` off); last, as it replaces target/debug/glctl.
scripts/glctl-client-only.sh
