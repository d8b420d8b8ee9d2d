"""Benchmark 3: validating a 100,000-step random DAG (~3 dependencies each) against graphlib, same graph.

Ours: ``WorkflowDAG(steps, registry=...)`` + ``validate()`` + ``execution_levels()`` over prebuilt
``StepSpec`` objects. Floor: ``graphlib.TopologicalSorter(graph).static_order()`` over the same
step -> dependencies dict. Parsing the JSON-shaped spec into pydantic models is reported on its own.

    .venv/bin/python bench/bench_validation.py [--steps 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import graphlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

from _common import best_of, timed

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.models import WorkflowSpec


def random_dag(n: int, deps: int = 3, seed: int = 7) -> dict[str, list[str]]:
    """Step i depends on up to ``deps`` distinct earlier steps, picked at random (so it is acyclic)."""
    rng = random.Random(seed)
    graph: dict[str, list[str]] = {}
    for i in range(n):
        picks = rng.sample(range(i), min(i, deps)) if i else []
        graph[f"s{i}"] = [f"s{j}" for j in picks]
    return graph


def run(steps: int = 100_000, repeat: int = 3) -> dict[str, Any]:
    graph = random_dag(steps)
    document = {
        "name": "big",
        "steps": [
            {"name": name, "module": "core", "action": "set", "dependencies": deps}
            for name, deps in graph.items()
        ],
    }
    registry = create_registry(load_plugins=False)
    parse_seconds = min(timed(lambda: WorkflowSpec.model_validate(document)) for _ in range(repeat))
    spec = WorkflowSpec.model_validate(document)
    levels: list[list[str]] = []

    def ours() -> None:
        dag = WorkflowDAG(spec.steps, registry=registry, workflow_name=spec.name)
        dag.validate()
        levels[:] = dag.execution_levels()

    def floor() -> None:
        list(graphlib.TopologicalSorter(graph).static_order())

    # Single-threaded work: CPU time is reported too, as it is far less sensitive to a loaded machine.
    cpu = {"ours": float("inf"), "graphlib": float("inf")}

    def measure(label: str, fn: Callable[[], None]) -> float:
        start = time.process_time()
        wall = timed(fn)
        cpu[label] = min(cpu[label], time.process_time() - start)
        return wall

    best = best_of(
        repeat, {"ours": lambda: measure("ours", ours), "graphlib": lambda: measure("graphlib", floor)}
    )
    return {
        "steps": steps,
        "edges": sum(len(d) for d in graph.values()),
        "repeat": repeat,
        "levels": len(levels),
        "ours_seconds": round(best["ours"], 4),
        "graphlib_seconds": round(best["graphlib"], 4),
        "ratio_to_graphlib": round(best["ours"] / best["graphlib"], 2),
        "ours_cpu_seconds": round(cpu["ours"], 4),
        "graphlib_cpu_seconds": round(cpu["graphlib"], 4),
        "cpu_ratio_to_graphlib": round(cpu["ours"] / cpu["graphlib"], 2),
        "spec_parse_seconds": round(parse_seconds, 4),
    }


def report(f: dict[str, Any]) -> str:
    head = f"Validation: {f['steps']} steps, {f['edges']} edges, {f['levels']} levels"
    return "\n".join(
        [
            f"{head}, best of {f['repeat']}",
            f"  {'':28} {'wall s':>8} {'cpu s':>8}",
            f"  {'build + validate + levels':28} {f['ours_seconds']:8.3f} {f['ours_cpu_seconds']:8.3f}",
            f"  {'graphlib static_order':28} {f['graphlib_seconds']:8.3f} {f['graphlib_cpu_seconds']:8.3f}",
            f"  {'ratio':28} {f['ratio_to_graphlib']:7.2f}x {f['cpu_ratio_to_graphlib']:7.2f}x",
            f"  (parsing the spec into pydantic models, not included: {f['spec_parse_seconds']:.3f} s)",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.steps, args.repeat)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


if __name__ == "__main__":
    main()
