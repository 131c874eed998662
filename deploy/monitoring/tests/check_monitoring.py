#!/usr/bin/env python3
"""Offline checks of deploy/monitoring (alerts, their tests, the PrometheusRule, dashboards).

    python3 deploy/monitoring/tests/check_monitoring.py

Needs promtool (Debian: apt-get install prometheus) and PyYAML. Checks:
 1. promtool check rules on the rules file, promtool test rules on the unit tests;
 2. the PrometheusRule is up to date (make_prometheusrule.py --check);
 3. every alert has labels severity/team/component, annotations summary/description/runbook_url,
    and both a firing and a silent test case; OrchestratorServiceDown has the runbook's expression;
 4. every gl_* metric in the rules and dashboards is defined in coordinator/src/metrics.rs, and
    every label matcher on a gl_* selector uses one of its labels (or a target label);
    the other metrics are only `up` and cAdvisor's container_*;
 5. the dashboards: uid, title, schemaVersion 39, a `datasource` variable of type prometheus used
    by every panel and target, unique panel ids, no panel without a metric query, and every
    query (Grafana variables substituted) accepted by promtool.
Exit status 0 when everything passes, 1 otherwise.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
MONITORING = HERE.parent
REPO = MONITORING.parent.parent
RULES = MONITORING / "rules" / "orchestrator-alerts.rules.yaml"
TESTS = HERE / "orchestrator-alerts.test.yaml"
METRICS_RS = REPO / "coordinator" / "src" / "metrics.rs"
DASHBOARDS = {
    "orchestrator-health.json": ("orchestrator-health", "Orchestrator Service Health"),
    "dag-execution-overview.json": ("dag-execution-overview", "DAG Execution Overview"),
}
SERVICE_DOWN = 'absent(up{job="orchestrator-service"} == 1) or sum(up{job="orchestrator-service"}) == 0'
RUNBOOK_PREFIX = "https://github.com/greenlang/orchestrator/blob/main/docs/runbooks/"
# Labels Prometheus attaches to every scraped series (compose static labels, Prometheus Operator).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "component"}
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "dag_id": ".*", "namespace": "greenlang"}

sys.path.insert(0, str(HERE))
import metric_names  # noqa: E402

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = (p.stdout + p.stderr).strip()
    print("$", " ".join(map(str, cmd)))
    print("  " + out.replace("\n", "\n  "))
    if p.returncode:
        fail(f"{' '.join(map(str, cmd))} exited {p.returncode}")


def emitted_metrics():
    """{name: set(labels)} from coordinator/src/metrics.rs, histogram series included."""
    src = METRICS_RS.read_text(encoding="utf-8")
    variables = {"dag": {"dag_id"}, "node": {"dag_id", "node_id"}}
    metrics = {}
    pattern = re.compile(
        r'\b(counter|histogram|gauge_vec|gauge)\(\s*&r,\s*"(gl_\w+)",\s*"(?:[^"\\]|\\.)*"\s*,?\s*(&\[[^\]]*\]|dag|node)?'
    )
    for kind, name, labels in pattern.findall(src):
        if labels in variables:
            label_set = set(variables[labels])
        else:
            label_set = set(re.findall(r'"(\w+)"', labels or ""))
        if kind == "histogram":
            metrics[name + "_bucket"] = label_set | {"le"}
            metrics[name + "_sum"] = label_set
            metrics[name + "_count"] = label_set
        else:
            metrics[name] = label_set
    if len(metrics) < 19:
        fail(f"found only {len(metrics)} metric definitions in {METRICS_RS}: the parser needs updating")
    return metrics


def check_expr(where, expr, emitted):
    clean = metric_names.strip_promql(expr)
    for name in metric_names.names_in(expr):
        if name not in emitted:
            fail(f"{where}: {name} is not emitted by coordinator/src/metrics.rs")
    # selectors with matchers: name{...}
    for name, body in re.findall(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        if name.startswith("gl_"):
            allowed = emitted.get(name, set()) | TARGET_LABELS
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body):
                if label not in allowed:
                    fail(f"{where}: label {label} is not a label of {name}")
        elif name != "up" and not name.startswith("container_"):
            fail(f"{where}: metric {name} is neither emitted nor up/container_*")
    if not re.search(r"(?<![\w:])(gl_\w+|up|container_\w+)(?![\w:(])", clean):
        fail(f"{where}: no metric in expression (constant panel?): {expr!r}")


def check_rules(emitted):
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    tests = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    firing, silent = set(), set()
    for case in tests["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else silent).add(t["alertname"])
    alerts = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            alerts.append(name)
            labels, ann = rule.get("labels", {}), rule.get("annotations", {})
            if labels.get("team") != "platform-data" or labels.get("component") != "orchestrator":
                fail(f"{name}: labels team/component")
            if labels.get("severity") not in ("critical", "warning", "info"):
                fail(f"{name}: severity {labels.get('severity')!r}")
            for key in ("summary", "description", "runbook_url"):
                if not ann.get(key):
                    fail(f"{name}: annotation {key} missing")
            if not str(ann.get("runbook_url", "")).startswith(RUNBOOK_PREFIX):
                fail(f"{name}: runbook_url must start with {RUNBOOK_PREFIX}")
            if name not in firing:
                fail(f"{name}: no test case where it fires")
            if name not in silent:
                fail(f"{name}: no test case where it stays silent")
            check_expr(f"rule {name}", rule["expr"], emitted)
    service_down = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "OrchestratorServiceDown"]
    if not service_down or service_down[0]["expr"].strip() != SERVICE_DOWN or service_down[0].get("for") != "5m":
        fail("OrchestratorServiceDown must be the runbook's expression, for 5m")
    for name in (firing | silent) - set(alerts):
        fail(f"test file names an alert that does not exist: {name}")
    print(f"ok: {len(alerts)} alerts, each with a firing and a silent test case")


def substitute(expr, where):
    def repl(m):
        var = m.group(1) or m.group(2)
        if var not in GRAFANA_VARS:
            fail(f"{where}: unknown Grafana variable ${var}")
            return ".*"
        return GRAFANA_VARS[var]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def check_dashboards(emitted):
    records = []
    for filename, (uid, title) in DASHBOARDS.items():
        path = MONITORING / "dashboards" / filename
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("uid") != uid or d.get("title") != title:
            fail(f"{filename}: uid/title {d.get('uid')!r}/{d.get('title')!r}")
        if d.get("schemaVersion") != 39:
            fail(f"{filename}: schemaVersion {d.get('schemaVersion')}")
        variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
        ds = variables.get("datasource", {})
        if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            fail(f"{filename}: needs a template variable datasource of type prometheus")
        if uid == "dag-execution-overview":
            q = variables.get("dag_id", {}).get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q != "label_values(gl_orchestrator_dag_executions_total, dag_id)":
                fail(f"{filename}: variable dag_id must query label_values(gl_orchestrator_dag_executions_total, dag_id)")
        for name, var in variables.items():
            if var.get("type") == "query" and var.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{filename}: variable {name} must use ${{datasource}}")
        ids = set()
        panels = [p for p in d["panels"]] + [c for p in d["panels"] for c in p.get("panels", [])]
        for p in panels:
            if p["id"] in ids:
                fail(f"{filename}: duplicate panel id {p['id']}")
            ids.add(p["id"])
            g = p["gridPos"]
            if g["x"] + g["w"] > 24:
                fail(f"{filename}: panel {p['title']!r} wider than the grid")
            if p["type"] == "row":
                continue
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{filename}: panel {p['title']!r} does not use ${{datasource}}")
            if not p.get("targets"):
                fail(f"{filename}: panel {p['title']!r} has no query")
            for t in p.get("targets", []):
                where = f"{filename}: {p['title']} / {t.get('refId')}"
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    fail(f"{where}: target does not use ${{datasource}}")
                check_expr(where, t["expr"], emitted)
                records.append((where, substitute(t["expr"], where)))
        print(f"ok: {filename}: {len([p for p in panels if p['type'] != 'row'])} panels")
    # Let promtool parse every query, as recording rules.
    with tempfile.TemporaryDirectory() as tmp:
        f = pathlib.Path(tmp) / "dashboard-queries.yaml"
        rules = [{"record": f"dashboard:query:{i}", "expr": e} for i, (_, e) in enumerate(records)]
        f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}), encoding="utf-8")
        p = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True)
        if p.returncode:
            print(p.stdout + p.stderr)
            for i in sorted({int(n) for n in re.findall(r'"dashboard:query:(\d+)"', p.stdout + p.stderr)}):
                fail(f"{records[i][0]}: promtool rejects the query")
            fail("promtool rejects dashboard queries")
        else:
            print(f"ok: promtool parses all {len(records)} dashboard queries")


def main():
    run(["promtool", "check", "rules", RULES])
    run(["promtool", "test", "rules", TESTS])
    run([sys.executable, HERE / "make_prometheusrule.py", "--check"])
    emitted = emitted_metrics()
    check_rules(emitted)
    check_dashboards(emitted)
    if failures:
        print(f"\n{len(failures)} check(s) failed")
        return 1
    print("\nall monitoring checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
