"""Benchmark 6: resident memory after 100,000 completed single-step runs with default retention.

A WorkflowManager with default settings (MemoryStore keeping 10,000 runs, the scheduler keeping 10,000
finished task records) runs a one-step ``core.set`` workflow over and over; RSS is sampled along the
way (after a ``gc.collect()``). Memory is bounded when RSS stops growing once retention is full.
Run in a fresh process (``run_all.py`` does), so nothing else inflates the figure.

    .venv/bin/python bench/bench_memory.py [--runs 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from _common import rss_mib

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager


def run(runs: int = 100_000) -> dict[str, Any]:
    registry = create_registry(load_plugins=False)
    orchestrator = TaskOrchestrator(registry=registry)
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)
    manager.create_workflow(
        {
            "name": "one",
            "steps": [{"name": "only", "module": "core", "action": "set", "parameters": {"x": 1}}],
        }
    )
    checkpoints = sorted({runs // 10, runs // 4, runs // 2, 3 * runs // 4, runs})
    samples: list[dict[str, float]] = []
    gc.collect()
    baseline = rss_mib()
    start = time.perf_counter()
    done = 0
    try:
        for target in checkpoints:
            while done < target:
                record = manager.execute_workflow("one", timeout=60)
                if record.status is not WorkflowStatus.COMPLETED:
                    raise RuntimeError(f"run {done} ended {record.status}: {record.error}")
                done += 1
            gc.collect()
            samples.append({"runs": done, "rss_mib": round(rss_mib(), 1)})
        elapsed = time.perf_counter() - start
        kept_runs = manager.store.stats()["rows"]["runs"] if hasattr(manager.store, "stats") else None
        kept_tasks = orchestrator.get_execution_stats()["records_kept"]
    finally:
        orchestrator.shutdown(wait=True, timeout=60)
    half = next(s for s in samples if s["runs"] >= runs // 2)
    growth = samples[-1]["rss_mib"] - half["rss_mib"]
    return {
        "runs": runs,
        "baseline_rss_mib": round(baseline, 1),
        "samples": samples,
        "final_rss_mib": samples[-1]["rss_mib"],
        "growth_second_half_mib": round(growth, 1),
        "store_runs_kept": kept_runs,
        "scheduler_records_kept": kept_tasks,
        "us_per_run": round(elapsed / runs * 1e6, 1),
    }


def report(f: dict[str, Any]) -> str:
    curve = ", ".join(f"{s['runs']:,}: {s['rss_mib']:.0f}" for s in f["samples"])
    return "\n".join(
        [
            f"Memory: {f['runs']:,} single-step runs, default retention ({f['us_per_run']:.0f} µs/run)",
            f"  RSS MiB at start {f['baseline_rss_mib']:.0f}; after runs {curve}",
            f"  growth over the second half: {f['growth_second_half_mib']:+.1f} MiB; kept: "
            f"{f['store_runs_kept']} runs in the store, {f['scheduler_records_kept']} scheduler records",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.runs)
    print(json.dumps(figures) if args.json else report(figures))


if __name__ == "__main__":
    main()
