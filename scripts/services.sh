#!/usr/bin/env bash
# Makes sure PostgreSQL, RabbitMQ and Redis answer on their standard local ports, starting any
# that does not (Debian service layout), and waits for each with a deadline; installs faketime
# (for the fault suite) when missing.
set -euo pipefail

deadline_wait() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then echo "services: $name did not come up within ${seconds}s" >&2; return 1; fi
    sleep 0.5
  done
  echo "services: $name is up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
fi
deadline_wait PostgreSQL 60 psql -h 127.0.0.1 -U postgres -Atc 'select 1'

if ! port_open 6379; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
deadline_wait Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping

if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
fi
deadline_wait RabbitMQ 120 port_open 5672
# The listener opens before the broker has finished booting (queues recover after it); a test that
# starts then sees its first declarations refused. Wait for the node to report itself booted.
deadline_wait "RabbitMQ boot" 120 rabbitmq-diagnostics -q check_running

# The fault suite runs one coordinator under libfaketime (Debian package `faketime`).
if ! command -v faketime >/dev/null; then
  echo "services: installing faketime"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null
fi
