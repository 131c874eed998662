#!/usr/bin/env python3
"""Submits a DAG file and an input to a running orchestrator, shows progress, prints the result.

Standard library only. Usage: demo_client.py BASE_URL DAG_FILE INPUT_JSON
Exit code 0 only when the execution completed.
"""
import json
import sys
import time
import urllib.error
import urllib.request


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main():
    base, dag_file, input_file = sys.argv[1:4]
    for _ in range(100):  # wait for the API
        try:
            if call(base, "GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    text = open(dag_file, encoding="utf-8").read()
    status, body = call(base, "POST", "/dags/import", {"yaml_content": text})
    if status not in (201, 409):
        sys.exit(f"cannot store the DAG ({status}): {json.dumps(body, indent=2)}")
    dag_id = body["dag"]["dag_id"] if status == 201 else body_dag_id(text)
    inputs = json.load(open(input_file, encoding="utf-8"))
    status, body = call(base, "POST", f"/dags/{dag_id}/execute", {"input_data": inputs})
    if status != 202:
        sys.exit(f"cannot start the execution ({status}): {body}")
    execution_id = body["execution_id"]
    print(f"execution {execution_id} of {dag_id}")
    started = time.time()
    while True:
        execution = call(base, "GET", f"/executions/{execution_id}")[1]["execution"]
        done = execution["completed_nodes"] + execution["failed_nodes"] + execution["skipped_nodes"]
        print(f"\r  {execution['status']:<10} {done}/{execution['total_nodes']} nodes  "
              f"{time.time() - started:5.1f}s", end="", flush=True)
        if execution["status"] in ("completed", "failed", "cancelled"):
            print()
            break
        time.sleep(0.2)
    trace = call(base, "GET", f"/executions/{execution_id}/trace")[1]
    print(f"\n  {'node':<12} {'status':<16} {'attempts':>8} {'ms':>6}  worker")
    for node in sorted(trace["nodes"], key=lambda n: (n["level_index"], n["node_id"])):
        print(f"  {node['node_id']:<12} {node['status']:<16} {node['attempt_count']:>8} "
              f"{node['duration_ms'] or 0:>6}  {node['worker_id'] or '-'}")
    outputs = {n["node_id"]: n["outputs"] for n in trace["nodes"]}
    if "aggregate" in outputs and outputs["aggregate"]:
        print(f"\n  total emissions: {outputs['aggregate']['total']:.2f} tCO2e "
              f"(by scope: {json.dumps(outputs['aggregate']['parts'])})")
    provenance = call(base, "GET", f"/executions/{execution_id}/provenance")[1]
    print(f"\n  provenance_chain_hash: {provenance['provenance_chain_hash']}")
    print(f"  chain_valid: {provenance['chain_valid']}")
    if execution["error"]:
        print(f"  error: {execution['error']}")
    sys.exit(0 if execution["status"] == "completed" else 1)


def body_dag_id(text):
    for line in text.splitlines():
        if line.startswith("dag_id:"):
            return line.split(":", 1)[1].strip()
    sys.exit("the DAG exists already and its file names no dag_id")


if __name__ == "__main__":
    main()
