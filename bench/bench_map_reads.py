"""Reads of big map runs: a page of a map step's items against the whole record, summaries against whole
listings, on the durable (SQLite) store, in process.

Two cases. **Finished**: one run of one map step of ``--items`` (100,000) ``core.echo`` items, read
back from the store: ``get_run`` whole (every item row decoded and built), a page
(``items=ItemWindow()``: the first 100), a page from the middle, the failed items only; ``list_runs``
whole and as summaries (``steps=False``: what ``list_workflow_runs`` shows). **Live**: a run of
``--live-items`` (20,000) items read while it runs, as a client polling ``get_workflow_run`` would:
the snapshot (built under the run's lock) whole and as a page, and the listing whole and as summaries.
Each figure is the median of the reads' CPU time on the reading thread (SQLite works on it too), and
their median wall time; the machine's load moves the wall times more than the CPU times.

    .venv/bin/python bench/bench_map_reads.py [--items 100000] [--live-items 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import ItemWindow, WorkflowSpec


def _engine(root: Path, items: int) -> OrchestrationEngine:
    engine = OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=root / "templates",
        max_workers=8,
        durable=True,
    )
    step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{index}}"}}
    spec = {"name": "big", "steps": [{**step, "for_each": list(range(items))}]}
    engine.workflow_manager.create_workflow(WorkflowSpec.model_validate(spec))
    return engine


def _measure(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median CPU seconds (this thread) and median wall seconds of ``rounds`` calls."""
    cpu, wall = [], []
    for _ in range(rounds):
        start_cpu, start = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return statistics.median(cpu), statistics.median(wall)


def _line(label: str, figures: tuple[float, float]) -> None:
    print(f"  {label:44s} CPU {figures[0] * 1000:9.2f} ms   wall {figures[1] * 1000:9.2f} ms")


def finished(items: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        engine = _engine(Path(root), items)
        manager = engine.workflow_manager
        try:
            started = time.perf_counter()
            run_id = manager.execute_workflow("big").run_id
            print(f"finished run of {items:,} items (ran in {time.perf_counter() - started:.1f} s):")
            manager.store.flush()
            cases: dict[str, Callable[[], object]] = {
                "get_run, whole record": lambda: manager.get_run(run_id),
                "get_run, first page (100 items)": lambda: manager.get_run(run_id, items=ItemWindow()),
                "get_run, 100 items from the middle": lambda: manager.get_run(
                    run_id, items=ItemWindow(offset=items // 2)
                ),
                "get_run, failed items only": lambda: manager.get_run(
                    run_id, items=ItemWindow(statuses=["failed", "timed_out"])
                ),
                "list_runs(limit=5), whole records": lambda: manager.list_runs(limit=5),
                "list_runs(limit=5, steps=False), summaries": lambda: manager.list_runs(limit=5, steps=False),
            }
            for label, case in cases.items():
                _line(label, _measure(case, 1 if "whole" in label else rounds))
        finally:
            engine.shutdown()


def live(items: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        engine = _engine(Path(root), items)
        manager = engine.workflow_manager
        try:
            run_id = manager.start_workflow("big")
            seen: dict[str, list[tuple[float, float]]] = {}
            cases: dict[str, Callable[[], object]] = {
                "get_run, whole snapshot": lambda: manager.get_run(run_id),
                "get_run, first page (100 items)": lambda: manager.get_run(run_id, items=ItemWindow()),
                "list_runs(limit=2), whole records": lambda: manager.list_runs(limit=2),
                "list_runs(limit=2, steps=False), summaries": lambda: manager.list_runs(limit=2, steps=False),
            }
            while manager.is_active(run_id):
                for label, case in cases.items():
                    seen.setdefault(label, []).append(_measure(case, 1))
                time.sleep(0.2)  # a poller's pause: the run goes on meanwhile
            print(f"live run of {items:,} items, read {len(seen.get('get_run, whole snapshot', []))} times:")
            for label, figures in seen.items():
                cpu = statistics.median(f[0] for f in figures)
                _line(label, (cpu, statistics.median(f[1] for f in figures)))
        finally:
            engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="items of the finished run's map step")
    parser.add_argument("--live-items", type=int, default=20_000, help="items of the live run's map step")
    parser.add_argument("--rounds", type=int, default=5, help="reads of each page and summary case")
    args = parser.parse_args()
    finished(args.items, args.rounds)
    live(args.live_items)


if __name__ == "__main__":
    main()
