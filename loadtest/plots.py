"""Draws the bar charts of BENCHMARKS.md from loadtest/results/*.json (standard library only).

    python3 loadtest/plots.py    # writes loadtest/results/compare.svg and shapes.svg
"""

import json
import pathlib

RESULTS = pathlib.Path(__file__).parent / "results"
COLOURS = ["#2b6cb0", "#dd6b20", "#38a169"]


def bars(title, groups, series, unit, path):
    """Grouped horizontal bars: groups = [(label, [value per series])], series = names."""
    row, bar, left, width = 22, 9, 190, 420
    top = 40 + 16 * len(series)
    height = top + len(groups) * (row + bar * len(series)) + 20
    peak = max(v for _, values in groups for v in values) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    for k, name in enumerate(series):
        y = 34 + 16 * k
        out.append(f'<rect x="10" y="{y - 9}" width="10" height="10" fill="{COLOURS[k]}"/>')
        out.append(f'<text x="26" y="{y}">{name}</text>')
    y = top
    for label, values in groups:
        out.append(f'<text x="10" y="{y + bar * len(series) / 2 + 4}">{label}</text>')
        for k, v in enumerate(values):
            w = width * v / peak
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" fill="{COLOURS[k]}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 1}" font-size="10">{v:.3g} {unit}</text>')
            y += bar
        y += row
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    compare = json.loads((RESULTS / "compare.json").read_text())
    ours, celery = compare["ours"], compare["celery"]
    bars("chain of 40 no-op steps: ours (distributed) vs Celery " + compare["celery_version"],
         [("overhead per step", [ours["chain_overhead_ms"], celery["chain_overhead_ms"]]),
          ("dep-to-start p50", [ours["chain_dep_to_start_p50_ms"], celery["chain_dep_to_start_p50_ms"]]),
          ("dep-to-start p99", [ours["chain_dep_to_start_p99_ms"], celery["chain_dep_to_start_p99_ms"]])],
         ["GreenLang Orchestrator", "Celery"], "ms", RESULTS / "compare.svg")
    distributed = json.loads((RESULTS / "shapes.json").read_text())
    embedded = {r["instance"]: r for r in json.loads((RESULTS / "embedded" / "shapes.json").read_text())}
    bars("workflow shapes: makespan / zero-overhead simulation (16 slots)",
         [(r["instance"], [r["ratio_to_simulation"], embedded[r["instance"]]["ratio_to_simulation"]])
          for r in distributed],
         ["distributed", "embedded"], "x", RESULTS / "shapes.svg")


if __name__ == "__main__":
    main()
