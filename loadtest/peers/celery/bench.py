"""Celery peer of the orchestrator's loadtest: the tasks module (for the worker) and the driver.

The worker loads this module with ``celery -A bench worker``; the driver is
``python bench.py chain|fanout|cleanup``. run.sh does both; see README.md.

Broker: RabbitMQ (py-amqp transport). Result backend: Redis (db 5 by default), with every key
under the run's own prefix. Both the worker and the driver read the same environment:

  GLPEER_QUEUE     queue / exchange / key-prefix name of this run (run.sh sets glpeer-<pid>)
  GLPEER_BROKER    default amqp://guest:guest@127.0.0.1:5672//
  GLPEER_BACKEND   default redis://127.0.0.1:6379/5
  GLPEER_PREFETCH  worker_prefetch_multiplier, default 64 (Celery's own default is 4)

Every timing is a ``time.time()`` wall-clock reading; the driver and the worker run on the same
machine, so their clocks are the same clock. All progress goes to stderr; the driver prints one
JSON object on stdout.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import celery
from celery import Celery, chain, chord, group

QUEUE = os.environ.get("GLPEER_QUEUE", "glpeer-default")
BROKER = os.environ.get("GLPEER_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("GLPEER_BACKEND", "redis://127.0.0.1:6379/5")
PREFETCH = int(os.environ.get("GLPEER_PREFETCH", "64"))
KEY_PREFIX = f"{QUEUE}:"
LOAD_AT_START = os.getloadavg()[0]

app = Celery("glpeer", broker=BROKER, backend=BACKEND)
app.conf.update(
    # Isolation: one queue, exchange, control exchange, event exchange and Redis key prefix per run.
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    control_exchange=QUEUE,
    event_exchange=f"{QUEUE}.ev",
    result_backend_transport_options={"global_keyprefix": KEY_PREFIX},
    result_expires=3600,  # the keys also expire by themselves should cleanup not run
    # Fairness with the orchestrator, which acknowledges a node's message after it completed.
    task_acks_late=True,
    # Celery's "Optimizing" guide: for lots of short tasks use a large multiplier ("say 64, or
    # 128") rather than the default 4. GLPEER_PREFETCH overrides it; README.md has the trials.
    worker_prefetch_multiplier=PREFETCH,
    # "Optimizing" guide: disable rate limits when no task uses them (saves a bucket check).
    worker_disable_rate_limits=True,
    # Defaults, stated: JSON, no STARTED state write, no task events, plain result metadata.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    result_extended=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="glpeer.noop")
def noop(prev=None):
    """A no-op node: returns a tiny dict with its own start and end (wall clock, seconds)."""
    s = time.time()
    e = time.time()
    return {"s": s, "e": e}


@app.task(name="glpeer.collect")
def collect(results):
    """The fan-in callback: reduces the header's results to their span and a count."""
    s = time.time()
    n = len(results)
    first = min(r["s"] for r in results) if results else None
    last = max(r["e"] for r in results) if results else None
    e = time.time()
    return {"s": s, "e": e, "n": n, "first_start": first, "last_end": last}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def percentile(values, p):
    """Nearest-rank percentile, the same definition as loadtest/src/lib.rs."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def chain_once(steps, timeout):
    canvas = chain(noop.s(None), *[noop.s() for _ in range(steps - 1)])
    t0 = time.time()  # submission: just before apply_async publishes the first task
    res = canvas.apply_async()
    # follow_parents=False: by default AsyncResult.get() re-checks every parent's state on the
    # backend each poll interval, which makes the driver compete with the worker for the CPU.
    res.get(timeout=timeout, follow_parents=False)
    spans = []
    node = res
    while node is not None:
        r = node.get(timeout=timeout, follow_parents=False)
        spans.append((r["s"], r["e"]))
        node = node.parent
    spans.reverse()
    if len(spans) != steps:
        raise RuntimeError(f"chain returned {len(spans)} results, expected {steps}")
    run_time = sum(e - s for s, e in spans)
    makespan = spans[-1][1] - t0
    makespan_first_start = spans[-1][1] - spans[0][0]
    gaps = [spans[k][0] - spans[k - 1][1] for k in range(1, steps)]
    return {
        "makespan_ms": makespan * 1000,
        "task_time_ms": run_time * 1000,
        "overhead_ms": (makespan - run_time) / steps * 1000,
        "overhead_first_start_ms": (makespan_first_start - run_time) / steps * 1000,
        "submit_to_first_start_ms": (spans[0][0] - t0) * 1000,
        "gaps_ms": [g * 1000 for g in gaps],
    }


def cmd_chain(args):
    for i in range(args.warmup):
        w = chain_once(args.steps, args.timeout)
        log(f"chain warm-up {i + 1}/{args.warmup}: makespan {w['makespan_ms']:.1f} ms")
    runs = []
    for i in range(args.reps):
        r = chain_once(args.steps, args.timeout)
        runs.append(r)
        log(f"chain rep {i + 1}/{args.reps}: makespan {r['makespan_ms']:.1f} ms, "
            f"overhead/step {r['overhead_ms']:.3f} ms")
    gaps = [g for r in runs for g in r["gaps_ms"]]
    out = {
        "peer": "celery",
        "version": celery.__version__,
        "scenario": "chain",
        "steps": args.steps,
        "per_step_overhead_ms_median": round(statistics.median(r["overhead_ms"] for r in runs), 3),
        "dep_to_start_ms_p50": round(percentile(gaps, 50), 3),
        "dep_to_start_ms_p99": round(percentile(gaps, 99), 3),
        "reps": args.reps,
        "warmup": args.warmup,
        "makespan_ms_median": round(statistics.median(r["makespan_ms"] for r in runs), 3),
        "task_time_ms_median": round(statistics.median(r["task_time_ms"] for r in runs), 3),
        "submit_to_first_start_ms_median": round(
            statistics.median(r["submit_to_first_start_ms"] for r in runs), 3),
        # The orchestrator's loadtest takes the makespan from the first node's start instead of
        # from submission; this is the same formula with that makespan.
        "per_step_overhead_first_start_ms_median": round(
            statistics.median(r["overhead_first_start_ms"] for r in runs), 3),
        "dep_to_start_samples": len(gaps),
        **worker_settings(),
    }
    print(json.dumps(out), flush=True)


def cmd_fanout(args):
    n = args.nodes
    log(f"fanout: submitting a chord of {n} no-op tasks + 1 callback")
    canvas = chord(group([noop.s(None) for _ in range(n)]), collect.s())
    t0 = time.time()  # submission: apply_async publishes the N header tasks
    res = canvas.apply_async()
    t_published = time.time()
    log(f"fanout: published in {t_published - t0:.2f} s; waiting for the callback")
    # follow_parents=False: otherwise get() fetches the state of all N header results from Redis
    # every 0.5 s while waiting, burning a core that the worker needs (seen: ~100 s of CPU at
    # N = 10,000). A failed header task still fails the callback (ChordError), which get() raises.
    r = res.get(timeout=args.timeout, follow_parents=False)
    t_seen = time.time()
    if r["n"] != n:
        raise RuntimeError(f"the callback saw {r['n']} results, expected {n}")
    seconds = r["e"] - t0
    fanout_only = r["last_end"] - r["first_start"]
    out = {
        "peer": "celery",
        "version": celery.__version__,
        "scenario": "fanout",
        "nodes": n,
        "nodes_per_second": round(n / seconds, 1),
        "seconds": round(seconds, 3),
        "publish_seconds": round(t_published - t0, 3),
        "callback_done_to_driver_seen_ms": round((t_seen - r["e"]) * 1000, 3),
        # The orchestrator's loadtest rate: first fan-out task start to last fan-out task end.
        "fanout_only_seconds": round(fanout_only, 3),
        "fanout_only_nodes_per_second": round(n / fanout_only, 1) if fanout_only > 0 else None,
        **worker_settings(),
    }
    print(json.dumps(out), flush=True)


def worker_settings():
    return {
        "host_load_1m_at_start": round(LOAD_AT_START, 2),
        "pool": os.environ.get("GLPEER_POOL", "?"),
        "concurrency": int(os.environ.get("GLPEER_CONCURRENCY", "0")) or None,
        "prefetch_multiplier": PREFETCH,
        "acks_late": True,
        "broker": "rabbitmq",
        "result_backend": "redis",
    }


def cmd_cleanup(_args):
    """Deletes this run's queue and exchanges on RabbitMQ and its keys on Redis."""
    with app.connection_for_write() as conn:
        for kind, name in [("queue", QUEUE), ("exchange", QUEUE), ("exchange", f"{QUEUE}.pidbox"),
                           ("exchange", f"reply.{QUEUE}.pidbox"), ("exchange", f"{QUEUE}.ev")]:
            try:
                ch = conn.channel()
                if kind == "queue":
                    ch.queue_delete(name)
                else:
                    ch.exchange_delete(name)
                ch.close()
            except Exception as exc:  # already gone, or never declared
                log(f"cleanup: {kind} {name}: {exc!r}")
    import redis

    r = redis.Redis.from_url(BACKEND)
    deleted = 0
    batch = []
    for key in r.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += r.delete(*batch)
            batch = []
    if batch:
        deleted += r.delete(*batch)
    log(f"cleanup: deleted queue/exchanges of {QUEUE} and {deleted} Redis keys under {KEY_PREFIX}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chain")
    c.add_argument("--steps", type=int, default=40)
    c.add_argument("--reps", type=int, default=20)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--timeout", type=float, default=120)
    f = sub.add_parser("fanout")
    f.add_argument("--nodes", type=int, default=10000)
    f.add_argument("--timeout", type=float, default=1800)
    sub.add_parser("cleanup")
    args = p.parse_args()
    if args.cmd == "chain" and (args.steps < 2 or args.reps < 1):
        p.error("--steps must be >= 2 and --reps >= 1")
    if args.cmd == "fanout" and args.nodes < 1:
        p.error("--nodes must be >= 1")
    {"chain": cmd_chain, "fanout": cmd_fanout, "cleanup": cmd_cleanup}[args.cmd](args)


if __name__ == "__main__":
    main()
