"""State-transition throughput: save_step with SqliteStore vs MemoryStore vs no store (figures, not a test).

Each transition builds a StepResult (as the WorkflowManager does) and records it; the SQLite figure
includes the final flush(), so every transition counted is committed to disk.

    .venv/bin/python bench/bench_store.py [--transitions 20000] [--threads 4]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore

_STATUSES = (TaskStatus.RUNNING, TaskStatus.COMPLETED)


def _drive(record: Callable[[str, StepResult], None], transitions: int, threads: int) -> float:
    """Run ``transitions`` step transitions spread over ``threads`` threads; return elapsed seconds."""
    per_thread = transitions // threads
    start = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        run_id = f"run-{t}"
        start.wait()
        for i in range(per_thread):
            status = _STATUSES[i % 2]
            step = StepResult(name=f"s{i // 2}", status=status, output={"i": i}, attempts=1)
            record(run_id, step)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - began


def run(transitions: int = 20_000, threads: int = 4) -> dict[str, Any]:
    n = transitions
    runs = [
        RunRecord(run_id=f"run-{t}", workflow_name="bench", status=WorkflowStatus.RUNNING)
        for t in range(threads)
    ]
    results: list[tuple[str, float]] = []

    live: dict[tuple[str, str], StepResult] = {}
    lock = threading.Lock()

    def no_store(run_id: str, step: StepResult) -> None:
        with lock:  # what the manager does anyway: keep the live record in memory
            live[(run_id, step.name)] = step

    results.append(("no store", _drive(no_store, n, threads)))

    memory = MemoryStore()
    for r in runs:
        memory.save_run(r)
    results.append(("MemoryStore", _drive(memory.save_step, n, threads)))
    memory.close()

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(Path(tmp) / "state.db")
        for r in runs:
            sqlite.save_run(r)
        sqlite.flush()
        began = time.perf_counter()
        elapsed = _drive(sqlite.save_step, n, threads)
        enqueue_only = elapsed
        sqlite.flush()
        results.append(("SqliteStore (enqueue)", enqueue_only))
        results.append(("SqliteStore (+ flush to disk)", time.perf_counter() - began))
        stats = sqlite.stats()
        sqlite.close()

    done = (n // threads) * threads
    return {
        "transitions": done,
        "threads": threads,
        "us_per_transition": {name: round(seconds / done * 1e6, 2) for name, seconds in results},
        "sqlite_commits": stats["batches_committed"],
        "sqlite_writes": done + len(runs),
        "sqlite_step_rows": stats["rows"]["steps"],
    }


def report(f: dict[str, Any]) -> str:
    lines = [
        f"Store: {f['transitions']} step transitions from {f['threads']} threads",
        f"  {'store':32} {'transitions/s':>14} {'us/transition':>14}",
    ]
    for name, us in f["us_per_transition"].items():
        lines.append(f"  {name:32} {1e6 / us:14,.0f} {us:14.1f}")
    lines.append(
        f"  SqliteStore: {f['sqlite_commits']} commits for {f['sqlite_writes']} writes, "
        f"{f['sqlite_step_rows']} step rows"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    print(report(run(args.transitions, args.threads)))


if __name__ == "__main__":
    main()
