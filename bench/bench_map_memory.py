"""Benchmark (issue 23): one map step of 100,000 ``core.echo`` items in memory: peak RSS per item above
the idle manager, and time per item against a raw ``ThreadPoolExecutor`` floor in the same process.

The manager (MemoryStore, ``WORKERS`` scheduler threads, default retention) is built and the item list
made before the idle figure is read, so the figure counts what the run itself costs (the item list
is the run's input; the peak includes the finished record with its 100,000 item results). Peak RSS is the
kernel's high-water mark, ``VmHWM`` in ``/proc/self/status``, reset to the current RSS just before the run
by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); where that reset is refused the figure is
the process's whole peak, which only overstates it. The map has no ``max_parallel``: all items are
cleared to run at once, the case that holds most at the same time. The floor submits the same number
of no-ops to a ``ThreadPoolExecutor`` with the same worker count and waits for them all. Time is the
best of ``--rounds`` interleaved rounds of each, every map round on a fresh manager; memory is read in
the first round.
Run in a fresh process (``run_all.py`` does), so nothing else inflates the figures.

    .venv/bin/python bench/bench_map_memory.py [--items 100000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

from _common import WORKERS
from bench_overhead import raw_pool

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {_STATUS}")


def _reset_peak() -> bool:
    """Set VmHWM to the current RSS; False where the kernel refuses (the peak is then the process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _manager(items: int) -> tuple[TaskOrchestrator, WorkflowManager]:
    registry = create_registry(load_plugins=False)
    orchestrator = TaskOrchestrator(WORKERS, registry=registry)
    manager = WorkflowManager(
        orchestrator=orchestrator, registry=registry, config_dir=None, max_map_items=items
    )
    manager.create_workflow(
        {
            "name": "big_map",
            "parameters": {"items": []},
            "steps": [
                {
                    "name": "each",
                    "module": "core",
                    "action": "echo",
                    "for_each": "{{params.items}}",
                    "parameters": {"message": "{{item}}"},
                }
            ],
        }
    )
    manager.execute_workflow("big_map", {"items": list(range(10))}, timeout=60)  # warm every code path
    return orchestrator, manager


def _map_run(items: int, measure_memory: bool) -> dict[str, Any]:
    """One run on a fresh manager: seconds, and (first round) idle and peak RSS in KiB."""
    values = list(range(items))
    orchestrator, manager = _manager(items)
    try:
        gc.collect()
        idle_kib = _status_kib("VmRSS")
        reset = _reset_peak() if measure_memory else False
        start = time.perf_counter()
        record = manager.execute_workflow("big_map", {"items": values}, timeout=3600)
        elapsed = time.perf_counter() - start
        peak_kib = _status_kib("VmHWM")
        if record.status is not WorkflowStatus.COMPLETED:
            raise RuntimeError(f"the map run ended {record.status}: {record.error}")
        if len(record.steps["each"].output) != items:
            raise RuntimeError("the map step's output does not hold every item")
    finally:
        orchestrator.shutdown(wait=True, timeout=60)
    return {"seconds": elapsed, "idle_kib": idle_kib, "peak_kib": peak_kib, "reset": reset}


def run(items: int = 100_000, rounds: int = 3) -> dict[str, Any]:
    first: dict[str, Any] = {}
    ours: list[float] = []
    floors: list[float] = []
    for round_ in range(rounds):  # interleaved: a load spike hits both alike
        one = _map_run(items, measure_memory=round_ == 0)
        first = first or one
        ours.append(one["seconds"])
        gc.collect()
        floors.append(raw_pool(items))
    best, floor = min(ours), min(floors)
    per_item_bytes = (first["peak_kib"] - first["idle_kib"]) * 1024 / items
    return {
        "items": items,
        "workers": WORKERS,
        "rounds": rounds,
        "idle_rss_mib": round(first["idle_kib"] / 1024, 1),
        "peak_rss_mib": round(first["peak_kib"] / 1024, 1),
        "peak_reset": first["reset"],
        "peak_bytes_per_item": round(per_item_bytes),
        "seconds": round(best, 3),
        "seconds_per_round": [round(s, 3) for s in ours],
        "us_per_item": round(best / items * 1e6, 1),
        "raw_pool_us_per_item": round(floor / items * 1e6, 1),
        "raw_pool_us_per_round": [round(s / items * 1e6, 1) for s in floors],
        "vs_raw_pool": round(best / floor, 2),
    }


def report(f: dict[str, Any]) -> str:
    how = "VmHWM reset before the run" if f["peak_reset"] else "VmHWM of the whole process (reset refused)"
    return "\n".join(
        [
            f"Map step of {f['items']:,} core.echo items in memory ({f['workers']} workers, "
            "bench_map_memory.py):",
            f"  peak RSS {f['peak_rss_mib']:.1f} MiB over {f['idle_rss_mib']:.1f} idle = "
            f"{f['peak_bytes_per_item'] / 1024:.2f} KiB/item ({how})",
            f"  {f['seconds']:.2f} s = {f['us_per_item']:.1f} µs/item; raw ThreadPoolExecutor "
            f"{f['raw_pool_us_per_item']:.1f} µs/task = {f['vs_raw_pool']}x (best of {f['rounds']} "
            f"interleaved rounds; ours {f['seconds_per_round']} s, floor {f['raw_pool_us_per_round']} µs)",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    figures = run(args.items, args.rounds)
    print(json.dumps(figures) if args.json else report(figures))
