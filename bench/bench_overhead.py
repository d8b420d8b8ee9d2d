"""Benchmarks 1 and 2: per-step overhead of WorkflowManager runs against the physical floor, same process.

Workflows of N no-op steps (``core.set`` with no parameters) in three shapes — all independent, one chain,
a 100-wide x 100-deep grid (each step depends on the step above it and on its left neighbour above) —
run with the in-memory store and with the SQLite store (default settings, in a temporary directory;
the figure includes the final commit). ``core.set`` is instant (``ActionDefinition.instant``: the
scheduler runs the instant work queued behind it on the worker running it); the same no-op registered
without that flag (``bench.noop``, "may block") is run in memory too, to show what a step pays when the
scheduler must assume it can block. Floors, same worker count: a raw ``ThreadPoolExecutor``
submitting N no-ops, and a minimal ``graphlib.TopologicalSorter`` + ``ThreadPoolExecutor`` runner on
the same shape. Best of R rounds, interleaved.

    .venv/bin/python bench/bench_overhead.py [--steps 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import graphlib
import json
import math
import queue
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from _common import WORKERS, best_of, timed

from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition, create_registry
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import SqliteStore, StateStore
from codomyrmex_orchestration.core.workflows import WorkflowManager

HERE = Path(__file__).resolve().parent
#: New interpreters that each measure the raw-pool floor and the in-memory shapes once (see fresh_processes).
FRESH_PROCESSES = 5

Shape = dict[str, list[str]]  # step -> its dependencies, in declaration (topological) order


def shape_independent(n: int) -> Shape:
    return {f"s{i}": [] for i in range(n)}


def shape_chain(n: int) -> Shape:
    return {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}


def shape_grid(n: int) -> Shape:
    """``width`` x ``depth`` (100 x 100 for 10,000): step (r, c) waits for (r-1, c) and (r-1, c-1)."""
    width = math.isqrt(n)
    depth = n // width
    steps: Shape = {}
    for r in range(depth):
        for c in range(width):
            deps = [f"r{r - 1}c{c}"] if r else []
            if r and c:
                deps.append(f"r{r - 1}c{c - 1}")
            steps[f"r{r}c{c}"] = deps
    return steps


SHAPES: dict[str, Callable[[int], Shape]] = {
    "independent": shape_independent,
    "chain": shape_chain,
    "grid": shape_grid,
}


def _noop() -> None:
    return None


def raw_pool(n: int) -> float:
    """The floor: seconds for a ThreadPoolExecutor to run ``n`` submitted no-ops."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        pool.submit(_noop).result()
        return timed(lambda: wait([pool.submit(_noop) for _ in range(n)]))


def fresh_processes(n: int, processes: int = FRESH_PROCESSES) -> list[dict[str, float]]:
    """Seconds of :func:`raw_pool` and of one in-memory run of each shape, in ``processes`` new
    interpreters, one set each.

    Both have two modes on the dev machine (the raw pool 6-12 or 28-35 µs/task), and a process keeps the
    one it falls into; rounds inside one process cannot show which mode that is. A few new processes give
    the fast mode its chance, to the floor and to our runs alike, so that a ratio is never taken between a
    floor and a run measured in different modes (docs/PERFORMANCE.md).
    """
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_overhead as b;"
        f" print(json.dumps(b.one_process({n})))"
    )
    return [
        json.loads(
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        )
        for _ in range(processes)
    ]


def one_process(n: int) -> dict[str, float]:
    """What one of :func:`fresh_processes` measures: the raw pool, then each shape in memory (after a
    warm-up run)."""
    figures = {"raw_pool": raw_pool(n)}
    shapes = {label: make(n) for label, make in SHAPES.items()}
    memory = _Manager(shapes, None)
    try:
        for label in shapes:
            memory.run(label)
            figures[f"memory/{label}"] = memory.run(label)
            figures[f"switches/{label}"] = memory.runs[-1][2]
    finally:
        memory.close()
    return figures


def _switches() -> int:
    """Voluntary and involuntary context switches of this process's threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def graphlib_runner(shape: Shape) -> float:
    """The DAG floor: graphlib's prepare/get_ready/done driving a ThreadPoolExecutor from one thread."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        pool.submit(_noop).result()

        def run() -> None:
            sorter = graphlib.TopologicalSorter(shape)
            sorter.prepare()
            finished: queue.SimpleQueue[str] = queue.SimpleQueue()
            while sorter.is_active():
                for node in sorter.get_ready():
                    future: Future[None] = pool.submit(_noop)
                    future.add_done_callback(lambda _f, node=node: finished.put(node))
                sorter.done(finished.get())
                while not finished.empty():
                    sorter.done(finished.get_nowait())

        return timed(run)


def workflow_spec(name: str, shape: Shape, action: str = "core.set") -> dict[str, Any]:
    module, _, verb = action.partition(".")
    steps = [
        {"name": step, "module": module, "action": verb, "dependencies": deps} for step, deps in shape.items()
    ]
    return {"name": name, "steps": steps}


#: The workflow names of the "may block" variant: the same shapes with ``bench.noop`` steps.
MAY_BLOCK = "{}-may-block"


def _noop_action(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return dict(params)  # what core.set does, without being declared instant


class _Manager:
    """A WorkflowManager on its own scheduler and store, holding one workflow per shape."""

    def __init__(self, shapes: dict[str, Shape], store: StateStore | None) -> None:
        registry = create_registry(load_plugins=False)
        registry.register(ActionDefinition("bench", "noop", _noop_action))
        self.orchestrator = TaskOrchestrator(WORKERS, registry=registry, max_finished=10_000)
        self.manager = WorkflowManager(
            orchestrator=self.orchestrator,
            registry=registry,
            store=store,
            config_dir=None,
            max_steps=1_000_000,
        )
        for label, shape in shapes.items():
            self.manager.create_workflow(workflow_spec(label, shape))
            self.manager.create_workflow(workflow_spec(MAY_BLOCK.format(label), shape, "bench.noop"))
        self.store = store
        # Each run: (shape, seconds, context switches of the whole process meanwhile). Four workers on
        # two cores either run a shape at one worker's pace or fall into a lock convoy, which costs
        # about two switches per step (docs/PERFORMANCE.md): the count says which a figure is.
        self.runs: list[tuple[str, float, int]] = []

    def run(self, label: str) -> float:
        def go() -> None:
            record = self.manager.execute_workflow(label, timeout=600)
            if record.status is not WorkflowStatus.COMPLETED:
                raise RuntimeError(f"benchmark run {label} ended {record.status}: {record.error}")

        before = _switches()
        elapsed = timed(go)  # execute_workflow flushes the store when the run ends
        self.runs.append((label, elapsed, _switches() - before))
        return elapsed

    def switches_of_best(self, label: str) -> tuple[float, int]:
        """(seconds, thread switches of the process) of the fastest run of ``label``."""
        return min((elapsed, switches) for name, elapsed, switches in self.runs if name == label)

    def close(self) -> None:
        self.orchestrator.shutdown(wait=True, timeout=60)
        if self.store is not None:
            self.store.close()


def run(steps: int = 10_000, repeat: int = 3) -> dict[str, Any]:
    shapes = {label: make(steps) for label, make in SHAPES.items()}
    n = {label: len(shape) for label, shape in shapes.items()}
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as tmp:
        memory = _Manager(shapes, None)
        durable = _Manager(shapes, SqliteStore(Path(tmp) / "state.db"))
        try:
            # Warm-up: threads started, plans cached, SQLite file grown once.
            for label in shapes:
                memory.run(label)
                memory.run(MAY_BLOCK.format(label))
                durable.run(label)
            cases: dict[str, Callable[[], float]] = {"raw_pool": lambda: raw_pool(steps)}
            for label, shape in shapes.items():
                cases[f"graphlib/{label}"] = lambda shape=shape: graphlib_runner(shape)
                cases[f"memory/{label}"] = lambda label=label: memory.run(label)
                cases[f"may-block/{label}"] = lambda label=label: memory.run(MAY_BLOCK.format(label))
                cases[f"durable/{label}"] = lambda label=label: durable.run(label)
            best = best_of(repeat, cases)
        finally:
            memory.close()
            durable.close()
    in_process = dict(best)
    fresh = fresh_processes(steps)
    for label in fresh[0]:  # each figure: the lowest of this process's and the new ones'
        if label in best:
            best[label] = min(in_process[label], *(f[label] for f in fresh))
    memory_switches = {name: memory.switches_of_best(name)[1] for name in {r[0] for r in memory.runs}}
    switches = {  # of the run each memory figure comes from
        label: min(
            [memory.switches_of_best(label), *((f[f"memory/{label}"], f[f"switches/{label}"]) for f in fresh)]
        )[1]
        for label in shapes
    }
    us = {
        label: seconds / (n[label.split("/")[-1]] if "/" in label else steps) * 1e6
        for label, seconds in best.items()
    }
    raw = us["raw_pool"]
    figures: dict[str, Any] = {
        "steps": steps,
        "workers": WORKERS,
        "repeat": repeat,
        "raw_pool_us_per_step": round(raw, 2),  # the lowest of the two below
        "raw_pool_in_process_us_per_step": round(in_process["raw_pool"] / steps * 1e6, 2),
        "raw_pool_fresh_processes_us_per_step": [round(f["raw_pool"] / steps * 1e6, 2) for f in fresh],
        "shapes": {},
    }
    for label in shapes:
        floor = us[f"graphlib/{label}"]
        figures["shapes"][label] = {
            "steps": n[label],
            "graphlib_us_per_step": round(floor, 2),
            "memory_us_per_step": round(us[f"memory/{label}"], 2),  # the lowest of the two below
            "memory_in_process_us_per_step": round(in_process[f"memory/{label}"] / n[label] * 1e6, 2),
            "memory_fresh_processes_us_per_step": [
                round(f[f"memory/{label}"] / n[label] * 1e6, 2) for f in fresh
            ],
            "memory_vs_raw_pool": round(us[f"memory/{label}"] / raw, 2),
            "memory_switches_per_step": round(switches[label] / n[label], 2),
            "memory_vs_graphlib": round(us[f"memory/{label}"] / floor, 2),
            # The same no-op not declared instant (this process only).
            "may_block_us_per_step": round(us[f"may-block/{label}"], 2),
            "may_block_vs_raw_pool": round(us[f"may-block/{label}"] / raw, 2),
            "may_block_switches_per_step": round(memory_switches[MAY_BLOCK.format(label)] / n[label], 2),
            "durable_us_per_step": round(us[f"durable/{label}"], 2),
            "durable_vs_raw_pool": round(us[f"durable/{label}"] / raw, 2),
        }
    return figures


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"Step overhead: {figures['steps']} no-op steps, {figures['workers']} workers,"
        f" best of {figures['repeat']}",
        f"  raw ThreadPoolExecutor floor: {figures['raw_pool_us_per_step']:.2f} µs/step (lowest of this"
        f" process's {figures['raw_pool_in_process_us_per_step']:.2f} and"
        f" {len(figures['raw_pool_fresh_processes_us_per_step'])} fresh processes'"
        f" {figures['raw_pool_fresh_processes_us_per_step']})",
        f"  {'shape':<12} {'graphlib':>9} {'memory':>9} {'x raw':>6} {'x glib':>7} {'switches':>9}"
        f" {'may block':>10} {'x raw':>6} {'switches':>9} {'durable':>9} {'x raw':>6}",
    ]
    for label, f in figures["shapes"].items():
        lines.append(
            f"  {label:<12} {f['graphlib_us_per_step']:9.2f} {f['memory_us_per_step']:9.2f}"
            f" {f['memory_vs_raw_pool']:6.2f} {f['memory_vs_graphlib']:7.2f}"
            f" {f['memory_switches_per_step']:9.2f}"
            f" {f['may_block_us_per_step']:10.2f} {f['may_block_vs_raw_pool']:6.2f}"
            f" {f['may_block_switches_per_step']:9.2f}"
            f" {f['durable_us_per_step']:9.2f} {f['durable_vs_raw_pool']:6.2f}"
        )
    lines.append(
        "  (µs/step; 'x raw' and 'x glib' are ratios to the two floors; 'memory' (core.set, instant) is the"
        " lowest of this process's and the fresh processes'; 'may block': the same no-op not declared"
        " instant, this process; 'switches': the process's thread switches per step in that run, about 2"
        " when four workers fell into a lock convoy, near 0 when not)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.steps, args.repeat)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


if __name__ == "__main__":
    main()
