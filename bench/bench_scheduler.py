"""Per-task overhead of TaskOrchestrator against a raw ThreadPoolExecutor, same workers, same process.

Run: ``.venv/bin/python bench/bench_scheduler.py [--tasks N] [--workers W] [--repeat R]``. Prints µs/task for
each and the ratio (best of R rounds each, interleaved, after a warm-up). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor, wait

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, w = args.tasks, args.workers
    cases = {
        "ThreadPoolExecutor": raw_pool,
        "TaskOrchestrator": orchestrator,
        "TaskOrchestrator+on_done": orchestrator_with_on_done,
        "TaskOrchestrator+output_cap": orchestrator_output_cap,
    }
    best = dict.fromkeys(cases, float("inf"))
    raw_pool(1000, w)
    orchestrator(1000, w)
    for _ in range(args.repeat):
        for label, fn in cases.items():
            best[label] = min(best[label], fn(n, w))
    floor = best["ThreadPoolExecutor"]
    print(f"{n} no-op tasks, {w} workers, best of {args.repeat}")
    for label, seconds in best.items():
        print(f"  {label:<26} {seconds / n * 1e6:8.2f} µs/task   ratio {seconds / floor:5.2f}x")


if __name__ == "__main__":
    main()
