#!/usr/bin/env bash
# Deletes what earlier test runs left behind: their orphaned coordinator and worker processes,
# and on the shared services `gltest.*` and `glqc.*`
# queues on RabbitMQ and `gl_test_*` databases on PostgreSQL. Each test deletes its own, even when
# it fails; this catches a test process that was killed (a cancelled CI job, a kill -9), so that
# leftovers never pile up and slow the broker's restarts (issue 25). Normally there are none, and
# this costs one listing of each.
set -euo pipefail

# Coordinator and worker processes whose test is gone (their parent is no longer a test binary
# under target/*/deps/): a test's processes carry its queue prefix `gltest.*` in their
# environment, so nothing else is touched.
orphans=0
for pid in $(pgrep -f 'gl-coordinator|gl-worker' || true); do
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^GL_ORCHESTRATOR_QUEUE_PREFIX=gltest\.' || continue
  parent=$(ps -o ppid= -p "$pid" | tr -d ' ')
  case "$(readlink "/proc/$parent/exe" 2>/dev/null)" in
    */deps/*) ;;
    *) kill -9 "$pid" 2>/dev/null && orphans=$((orphans + 1)) ;;
  esac
done

queues=$(rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep -E '^(gltest|glqc)\.' || true)
for q in $queues; do
  rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
done
databases=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'gl\_test\_%'" 2>/dev/null || true)
for d in $databases; do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" >/dev/null 2>&1 || true
done
echo "swept $orphans orphaned processes, $(echo -n "$queues" | grep -c . || true) queues, $(echo -n "$databases" | grep -c . || true) databases"
