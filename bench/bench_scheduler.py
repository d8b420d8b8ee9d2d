"""Per-task overhead of TaskOrchestrator against a raw ThreadPoolExecutor, same workers, same process.

Run: ``.venv/bin/python bench/bench_scheduler.py [--tasks N] [--workers W] [--repeat R]``. Prints µs/task for
each and the ratio (best of R rounds each, interleaved, after a warm-up). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from _common import best_of

from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core.actions import ActionContext
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator


def _noop() -> None:
    return None


def _noop_ctx(ctx: ActionContext) -> None:
    return None


def raw_pool(n: int, workers: int) -> float:
    """Seconds to submit ``n`` no-ops to a ThreadPoolExecutor and see them all done."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pool.submit(_noop).result()  # warm: thread started
        start = time.perf_counter()
        futures = [pool.submit(_noop) for _ in range(n)]
        wait(futures)
        return time.perf_counter() - start


def orchestrator(n: int, workers: int) -> float:
    """Seconds to submit ``n`` no-ops to a TaskOrchestrator and wait for them all."""
    with TaskOrchestrator(max_workers=workers, max_finished=n) as orch:
        orch.wait(orch.submit(_noop_ctx, name="warm"))
        start = time.perf_counter()
        ids = [orch.submit(_noop_ctx, name="noop") for _ in range(n)]
        orch.wait_all(ids, timeout=120)
        return time.perf_counter() - start


def orchestrator_with_on_done(n: int, workers: int) -> float:
    """As :func:`orchestrator`, with an ``on_done`` callback per task (what a workflow run uses)."""
    done: list[object] = []
    with TaskOrchestrator(max_workers=workers, max_finished=n) as orch:
        orch.wait(orch.submit(_noop_ctx, name="warm"))
        start = time.perf_counter()
        ids = [orch.submit(_noop_ctx, name="noop", on_done=done.append) for _ in range(n)]
        orch.wait_all(ids, timeout=120)
        return time.perf_counter() - start


def _small_ctx(ctx: ActionContext) -> dict[str, object]:
    return {"exit_code": 0, "stdout": "ok\n", "stderr": ""}


def orchestrator_output_cap(n: int, workers: int) -> float:
    """As :func:`orchestrator`, with the engine's 1 MiB output cap and a small dict output per task."""
    limiter = OutputLimiter(1024 * 1024)
    with TaskOrchestrator(max_workers=workers, max_finished=n, output_limit=limiter) as orch:
        orch.wait(orch.submit(_small_ctx, name="warm"))
        start = time.perf_counter()
        ids = [orch.submit(_small_ctx, name="small") for _ in range(n)]
        orch.wait_all(ids, timeout=120)
        return time.perf_counter() - start


def run(tasks: int = 10_000, workers: int = 4, repeat: int = 3) -> dict[str, Any]:
    n, w = tasks, workers
    raw_pool(1000, w)
    orchestrator(1000, w)
    best = best_of(
        repeat,
        {
            "ThreadPoolExecutor": lambda: raw_pool(n, w),
            "TaskOrchestrator": lambda: orchestrator(n, w),
            "TaskOrchestrator+on_done": lambda: orchestrator_with_on_done(n, w),
            "TaskOrchestrator+output_cap": lambda: orchestrator_output_cap(n, w),
        },
    )
    floor = best["ThreadPoolExecutor"]
    return {
        "tasks": n,
        "workers": w,
        "repeat": repeat,
        "us_per_task": {label: round(seconds / n * 1e6, 2) for label, seconds in best.items()},
        "ratio": {label: round(seconds / floor, 2) for label, seconds in best.items()},
    }


def report(f: dict[str, Any]) -> str:
    lines = [f"Scheduler: {f['tasks']} no-op tasks, {f['workers']} workers, best of {f['repeat']}"]
    for label, us in f["us_per_task"].items():
        lines.append(f"  {label:<26} {us:8.2f} µs/task   ratio {f['ratio'][label]:5.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(report(run(args.tasks, args.workers, args.repeat)))


if __name__ == "__main__":
    main()
