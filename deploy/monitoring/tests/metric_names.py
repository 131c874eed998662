#!/usr/bin/env python3
"""List the gl_* metric names that the alert rules and dashboards query.

    metric_names.py [FILE ...]                      # print the names, sorted, one per line
    metric_names.py --check-against SCRAPE [FILE ...]

Without FILE arguments it reads deploy/monitoring/rules/orchestrator-alerts.rules.yaml,
deploy/monitoring/dashboards/orchestrator-health.json and
deploy/monitoring/dashboards/dag-execution-overview.json (paths relative to this script).

Only PromQL is read: the `expr:` values of a rules file (inline or block scalars) and, in a
dashboard, every "expr" of a target plus the variable queries ("query"/"definition" under
"templating"). Annotations, descriptions and PromQL string literals (label values such as
queue="gl.orchestrator.dead") are ignored, as are `#` comments inside expressions.

--check-against SCRAPE reads a Prometheus text exposition (a saved GET /metrics; "-" for stdin)
and exits 1 after printing, one per line on stdout, every used name that the scrape lacks. A name
is present when a sample line starts with it (followed by "{" or a space), or when the name itself
or the name without a _bucket/_sum/_count suffix has a "# TYPE" line. Note that the Rust client
omits a labelled metric until its first label set is used, so take the scrape after exercising
every metric. Exit status: 0 all present, 1 names missing, 2 usage or input error.

Standard library only.
"""

import argparse
import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
MONITORING = HERE.parent
DEFAULT_FILES = [
    MONITORING / "rules" / "orchestrator-alerts.rules.yaml",
    MONITORING / "dashboards" / "orchestrator-health.json",
    MONITORING / "dashboards" / "dag-execution-overview.json",
]

METRIC = re.compile(r"(?<![A-Za-z0-9_:])gl_[A-Za-z0-9_:]*[A-Za-z0-9_]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_EXPR_KEY = re.compile(r"^(?P<indent>\s*)(?:-\s+)?expr:\s*(?P<rest>.*)$")
_BLOCK = re.compile(r"^[|>][0-9+-]*\s*(#.*)?$")


def strip_promql(expr: str) -> str:
    """Remove string literals and comments, which may mention names that are not queried."""
    out = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if (expr[j] == "\\" and c != "`") else 1
            out.append(" ")
            i = j + 1
        elif c == "#":
            while i < n and expr[i] != "\n":
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _unquote_yaml(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)  # YAML double-quoted escapes are a superset of what rules use
    return re.sub(r"\s+#.*$", "", value)


def yaml_exprs(text: str) -> list:
    """The `expr:` values of a Prometheus rules file (or a PrometheusRule), stdlib only."""
    lines = text.splitlines()
    exprs = []
    i = 0
    while i < len(lines):
        m = _EXPR_KEY.match(lines[i])
        i += 1
        if not m:
            continue
        rest = m.group("rest").strip()
        key_indent = len(m.group("indent"))
        if _BLOCK.match(rest):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > key_indent):
                block.append(lines[i])
                i += 1
            exprs.append("\n".join(block))
        else:
            # a plain or quoted scalar, possibly continued on more-indented lines
            value = [rest]
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > key_indent:
                value.append(lines[i].strip())
                i += 1
            exprs.append(_unquote_yaml(" ".join(value)))
    return exprs


def json_exprs(doc) -> list:
    """Every target "expr" of a Grafana dashboard plus the template-variable queries."""
    exprs = []

    def walk(node, in_templating=False):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                elif in_templating and key in ("query", "definition"):
                    if isinstance(value, str):
                        exprs.append(value)
                    elif isinstance(value, dict) and isinstance(value.get("query"), str):
                        exprs.append(value["query"])
                walk(value, in_templating or key == "templating")
        elif isinstance(node, list):
            for item in node:
                walk(item, in_templating)

    walk(doc)
    return exprs


def exprs_of(path: pathlib.Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json_exprs(json.loads(text))
    return yaml_exprs(text)


def names_in(expr: str) -> set:
    return set(METRIC.findall(strip_promql(expr)))


def used_names(paths) -> set:
    names = set()
    for path in paths:
        for expr in exprs_of(path):
            names |= names_in(expr)
    return names


def scrape_names(text: str):
    """(sample names, names with a # TYPE line) of a Prometheus text exposition."""
    samples, typed = set(), set()
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "TYPE":
                typed.add(parts[2])
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?=[{\s]|$)", line)
        if m:
            samples.add(m.group(1))
    return samples, typed


def present(name: str, samples: set, typed: set) -> bool:
    if name in samples or name in typed:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in typed:
            return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="List the gl_* metric names used by the orchestrator alerts and dashboards.")
    parser.add_argument("files", nargs="*", type=pathlib.Path, help="rules files (.yaml/.yml) or dashboards (.json)")
    parser.add_argument("--check-against", metavar="SCRAPE", help='saved Prometheus text scrape ("-" for stdin)')
    args = parser.parse_args(argv)

    files = args.files or DEFAULT_FILES
    try:
        names = used_names(files)
    except (OSError, ValueError) as e:
        print(f"metric_names.py: {e}", file=sys.stderr)
        return 2
    if not names:
        print("metric_names.py: no gl_* metric found in " + ", ".join(map(str, files)), file=sys.stderr)
        return 2

    if args.check_against is None:
        for name in sorted(names):
            print(name)
        return 0

    try:
        if args.check_against == "-":
            scrape = sys.stdin.read()
        else:
            scrape = pathlib.Path(args.check_against).read_text(encoding="utf-8")
    except OSError as e:
        print(f"metric_names.py: {e}", file=sys.stderr)
        return 2
    samples, typed = scrape_names(scrape)
    missing = sorted(n for n in names if not present(n, samples, typed))
    if missing:
        for name in missing:
            print(name)
        print(f"metric_names.py: {len(missing)} of {len(names)} metric names are not in {args.check_against}", file=sys.stderr)
        return 1
    print(f"metric_names.py: all {len(names)} metric names are in {args.check_against}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
