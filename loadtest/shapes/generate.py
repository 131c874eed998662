"""Generates the workflow instances the `shapes` load scenario replays.

Each instance is built by a wfcommons WfChef recipe (task graphs and runtime distributions taken
from real executions of the scientific workflow) with a fixed seed, then written in our own small
format: {"name", "recipe", "wfcommons_version", "tasks": [{"id", "runtime_s", "parents"}]}.

    bash loadtest/shapes/setup.sh && loadtest/shapes/.venv/bin/python loadtest/shapes/generate.py
"""

import json
import pathlib
import random
import re
import sys

import numpy
import wfcommons
from wfcommons import WorkflowGenerator
from wfcommons.wfchef import recipes

# (recipe, tasks wanted); each recipe has a minimum size, so the counts are approximate.
WANTED = [
    ("Montage", 200),
    ("Epigenomics", 200),
    ("Genome", 200),
    ("Cycles", 200),
    ("Seismology", 200),
    ("Blast", 200),
]
SEED = 42
OUT = pathlib.Path(__file__).parent / "instances"


def node_id(name):
    """Ids in the orchestrator's alphabet, at most 128 characters."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:128]


def build(recipe_name, n):
    random.seed(SEED)
    numpy.random.seed(SEED)
    recipe = getattr(recipes, f"{recipe_name}Recipe")
    workflow = WorkflowGenerator(recipe.from_num_tasks(n)).build_workflow()
    ids = {key: node_id(key) for key in workflow.tasks}
    if len(set(ids.values())) != len(ids):
        sys.exit(f"{recipe_name}: task ids collide after sanitising")
    tasks = [
        {
            "id": ids[key],
            "runtime_s": max(0.0, float(task.runtime or 0.0)),
            "parents": sorted(ids[p] for p in workflow.predecessors(key)),
        }
        for key, task in workflow.tasks.items()
    ]
    return {
        "name": f"{recipe_name.lower()}-{len(tasks)}",
        "recipe": recipe_name,
        "wfcommons_version": wfcommons.__version__ if hasattr(wfcommons, "__version__") else "unknown",
        "seed": SEED,
        "tasks": tasks,
    }


def stats(instance):
    """Tasks, edges, total work, critical path and levels; fails on a cycle."""
    tasks = {t["id"]: t for t in instance["tasks"]}
    waiting = {i: len(t["parents"]) for i, t in tasks.items()}
    children = {i: [] for i in tasks}
    for t in tasks.values():
        for p in t["parents"]:
            children[p].append(t["id"])
    ready = [i for i, w in waiting.items() if w == 0]
    finish, level, seen = {}, {}, 0
    while ready:
        i = ready.pop()
        seen += 1
        t = tasks[i]
        finish[i] = max((finish[p] for p in t["parents"]), default=0.0) + t["runtime_s"]
        level[i] = max((level[p] + 1 for p in t["parents"]), default=0)
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
    if seen != len(tasks):
        sys.exit(f"{instance['name']}: the graph has a cycle")
    edges = sum(len(t["parents"]) for t in tasks.values())
    work = sum(t["runtime_s"] for t in tasks.values())
    return len(tasks), edges, work, max(finish.values()), max(level.values()) + 1


def main():
    OUT.mkdir(exist_ok=True)
    print("| instance | tasks | edges | total work (s) | critical path (s) | levels |")
    print("|---|---|---|---|---|---|")
    for recipe_name, n in WANTED:
        instance = build(recipe_name, n)
        path = OUT / f"{instance['name']}.json"
        path.write_text(json.dumps(instance, indent=0, sort_keys=True) + "\n")
        tasks, edges, work, critical, levels = stats(instance)
        print(f"| {instance['name']} | {tasks} | {edges} | {work:.0f} | {critical:.0f} | {levels} |")


if __name__ == "__main__":
    main()
