"""The state store's figures (not tests): step-transition throughput, and a run's cost as history grows.

1. Each transition builds a StepResult (as the WorkflowManager does) and records it, with SqliteStore,
   MemoryStore and no store; the SQLite figure includes the final flush(), so every transition counted
   is committed to disk.
2. History growth: single-step workflows run one after another through the engine (events included),
   durable and in memory, timed per batch of 1,000 runs while the store fills from 0 to 50,000 runs
   (retention raised to keep them all). A per-run cost that grows with the stored history shows as a
   last batch slower than the first.
3. Big history: 200,000 finished runs stored; engine start-up against an empty store's, list_runs by
   workflow and time window, and get_run.

    .venv/bin/python bench/bench_store.py [--transitions 20000] [--threads 4] [--history 50000]
        [--big-history 200000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


def history(runs: int = 50_000, batch: int = 1_000) -> dict[str, Any]:
    """Median µs per single-step run, per batch of ``batch`` runs, as ``runs`` runs fill each store."""
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    figures: dict[str, Any] = {"runs": runs, "batch": batch}
    for label, durable in (("durable", True), ("memory", False)):
        with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
            engine = OrchestrationEngine(
                state_dir=Path(tmp) / "state",
                config_dir=None,
                durable=durable,
                retention_runs=runs,
                retention_events=3 * runs,
            )
            try:
                engine.workflow_manager.create_workflow(
                    {"name": "one", "steps": [{"name": "s", "module": "core", "action": "set"}]}
                )
                medians: list[float] = []
                means: list[float] = []
                for _ in range(runs // batch):
                    took: list[float] = []
                    for _ in range(batch):
                        began = time.perf_counter()
                        engine.execute_workflow("one", timeout=60)
                        took.append(time.perf_counter() - began)
                    # The median: a load spike from another process on a shared machine moves a
                    # batch's mean, not its median.
                    medians.append(round(statistics.median(took) * 1e6, 1))
                    means.append(round(statistics.fmean(took) * 1e6, 1))
                stored = sum(engine.store.count_runs().values())
            finally:
                engine.shutdown()
        figures[label] = {
            "us_per_run_by_batch": medians,
            "mean_us_per_run_by_batch": means,
            "first_batch_us": medians[0],
            "last_batch_us": medians[-1],
            "last_vs_first": round(medians[-1] / medians[0], 2),
            "runs_stored_at_end": stored,
        }
    figures["durable_vs_memory_last_batch"] = round(
        figures["durable"]["last_batch_us"] / figures["memory"]["last_batch_us"], 2
    )
    return figures


def big_history(runs: int = 200_000, repeat: int = 5, samples: int = 200) -> dict[str, Any]:
    """Start-up, filtered listing and lookup with ``runs`` finished runs stored, against an empty store.

    The history is written through the store's own writer (one step per run, 20 workflows, one run a
    second), then: engine start-up (median of ``repeat``) with that file and with an empty one;
    ``list_runs`` by workflow and a one-hour window (limit 50) and ``get_run``, p50 of ``samples``.
    """
    import random

    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    def start_up(state: Path) -> float:
        took = []
        for _ in range(repeat):
            began = time.perf_counter()
            engine = OrchestrationEngine(
                state_dir=state, config_dir=None, retention_runs=runs, retention_events=runs
            )
            took.append(time.perf_counter() - began)
            engine.shutdown()
        return statistics.median(took)

    rng = random.Random(7)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="bench-big-history-") as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        began = time.perf_counter()
        with SqliteStore(full / "state.db", retention_runs=runs) as store:
            for i in range(runs):
                record = RunRecord(
                    run_id=f"run-{i:07d}",
                    workflow_name=f"wf{i % 20}",
                    status=WorkflowStatus.COMPLETED,
                    created_at=t0 + timedelta(seconds=i),
                    parameters={"i": i},
                )
                record.steps["s"] = StepResult(name="s", status=TaskStatus.COMPLETED, output={"i": i})
                store.save_run(record)
            store.flush()
        fill = time.perf_counter() - began
        empty_start, full_start = start_up(empty), start_up(full)
        with SqliteStore(full / "state.db", retention_runs=runs) as store:
            listing, lookup = [], []
            for _ in range(samples):
                at = t0 + timedelta(seconds=rng.randrange(runs))
                began = time.perf_counter()
                page = store.list_runs(
                    workflow_name=f"wf{rng.randrange(20)}", since=at, until=at + timedelta(hours=1), limit=50
                )
                listing.append(time.perf_counter() - began)
                run_id = f"run-{rng.randrange(runs):07d}"
                began = time.perf_counter()
                found = store.get_run(run_id)
                lookup.append(time.perf_counter() - began)
                assert found is not None and len(page) <= 50
    return {
        "runs": runs,
        "fill_seconds": round(fill, 1),
        "startup_empty_ms": round(empty_start * 1e3, 1),
        "startup_full_ms": round(full_start * 1e3, 1),
        "startup_ratio": round(full_start / empty_start, 2),
        "list_runs_p50_ms": round(statistics.median(listing) * 1e3, 2),
        "get_run_p50_ms": round(statistics.median(lookup) * 1e3, 2),
    }


def big_history_report(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Big history: {f['runs']} finished runs stored (written in {f['fill_seconds']} s)",
            f"  engine start-up: {f['startup_full_ms']} ms against {f['startup_empty_ms']} ms empty"
            f" = {f['startup_ratio']}x",
            f"  list_runs by workflow and a one-hour window, limit 50: p50 {f['list_runs_p50_ms']} ms",
            f"  get_run: p50 {f['get_run_p50_ms']} ms",
        ]
    )


def history_report(f: dict[str, Any]) -> str:
    lines = [
        f"History growth: single-step runs through the engine, median per batch of {f['batch']},"
        f" store filling 0 -> {f['runs']} runs",
        f"  {'store':8} {'first µs':>9} {'last µs':>9} {'last/first':>10} {'stored':>8}",
    ]
    for label in ("durable", "memory"):
        g = f[label]
        lines.append(
            f"  {label:8} {g['first_batch_us']:9.1f} {g['last_batch_us']:9.1f} {g['last_vs_first']:10.2f}"
            f" {g['runs_stored_at_end']:8}"
        )
    every = max(1, len(f["durable"]["us_per_run_by_batch"]) // 10)
    for label in ("durable", "memory"):
        shown = f[label]["us_per_run_by_batch"][::every]
        lines.append(f"  {label} every {every * f['batch']} runs: " + " ".join(f"{v:.0f}" for v in shown))
        means = f[label]["mean_us_per_run_by_batch"][::every]
        lines.append(f"  {label} (means, load-sensitive): " + " ".join(f"{v:.0f}" for v in means))
    lines.append(f"  durable / memory, last batch: {f['durable_vs_memory_last_batch']:.2f}x")
    return "\n".join(lines)


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
    parser.add_argument(
        "--history", type=int, default=50_000, help="runs stored by the growth bench (0: skip it)"
    )
    parser.add_argument(
        "--big-history", type=int, default=200_000, help="runs stored for start-up and reads (0: skip it)"
    )
    args = parser.parse_args()
    print(report(run(args.transitions, args.threads)))
    if args.history:
        print(history_report(history(args.history)))
    if args.big_history:
        print(big_history_report(big_history(args.big_history)))


if __name__ == "__main__":
    main()
