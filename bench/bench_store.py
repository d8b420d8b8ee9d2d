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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    n, threads = args.transitions, args.threads
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
    print(f"{done} step transitions from {threads} threads")
    print(f"{'store':32} {'transitions/s':>14} {'us/transition':>14}")
    for name, seconds in results:
        print(f"{name:32} {done / seconds:14,.0f} {seconds / done * 1e6:14.1f}")
    print(
        f"SqliteStore: {stats['batches_committed']} commits for {done + len(runs)} writes, "
        f"{stats['rows']['steps']} step rows"
    )


if __name__ == "__main__":
    main()
