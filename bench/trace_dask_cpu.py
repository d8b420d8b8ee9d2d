"""Where the 2-process LocalCluster's time goes on bench_dask's CPU-bound steps: a core-seconds account.

Run: ``.venv/bin/python bench/trace_dask_cpu.py [--rounds 7]`` (needs the dask extra; ~3 s per round).

Each round runs bench_dask's 8 CPU-bound steps on local threads, on the Dask backend and as raw
``Client.submit`` tasks, interleaved, on one 2-process cluster (one thread per worker). Every step
records, inside its task, its process, start, end and thread CPU time. Around each run the script
reads ``/proc/stat`` (the machine's busy and idle time), this process's CPU time and each worker
process's. The ``2 x wall`` core-seconds of a run are split into: the steps' own CPU; the worker
processes' other CPU (Dask's event loop, transitions, messages); this process (Dask's scheduler and
nannies, the client, our scheduler); other processes on the machine; idle (a core with nothing to run,
waiting on dispatch). It also prints how the steps were split between the workers, when each worker
started its first step, the gaps between a worker's steps, how long one worker sat idle at the end
while the other ran its last step, and the tail after the last step ended.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from _cpu_work import traced_spin
from bench_dask import CPU_ROUNDS_PER_STEP, CPU_STEPS, cpu_workflow
from distributed import Client, LocalCluster

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.backends import ExecutionBackend, LocalBackend
from codomyrmex_orchestration.core.backends.dask import DaskBackend
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager

Run = tuple[float, float, list[dict[str, Any]]]  # start (epoch seconds), wall seconds, the steps' records
COLUMNS = ("wall", "capacity", "steps_cpu", "workers_other", "this_process", "other_processes", "idle")


def on_backend(backend: ExecutionBackend) -> Run:
    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(CPU_STEPS, registry=registry, backend=backend, max_finished=CPU_STEPS)
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None, max_steps=CPU_STEPS)
        manager.create_workflow(cpu_workflow("_cpu_work:traced_spin"))
        start = time.time()
        record = manager.execute_workflow("cpu", timeout=600)
        wall = time.time() - start
        return start, wall, [step.output for step in record.steps.values()]
    finally:
        orch.shutdown(wait=True, timeout=60)


def raw_submit(client: Client) -> Run:
    start = time.time()
    futures = [client.submit(traced_spin, CPU_ROUNDS_PER_STEP + i, pure=False) for i in range(CPU_STEPS)]
    outputs = client.gather(futures)
    return start, time.time() - start, outputs


def machine_seconds() -> tuple[float, float]:
    """Seconds of all CPUs since boot: (total, idle + iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return sum(ticks) / hz, (ticks[3] + ticks[4]) / hz


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def account(run: Callable[[], Run], client: Client) -> dict[str, Any]:
    workers_before = client.run(process_cpu)
    total_before, idle_before = machine_seconds()
    here_before = time.process_time()
    start, wall, steps = run()
    here = time.process_time() - here_before
    total, idle = (a - b for a, b in zip(machine_seconds(), (total_before, idle_before), strict=True))
    workers_after = client.run(process_cpu)
    workers = sum(workers_after[w] - workers_before[w] for w in workers_before)
    steps_cpu = sum(s["cpu"] for s in steps)
    in_workers = sum(s["cpu"] for s in steps if s["pid"] != os.getpid())
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for s in sorted(steps, key=lambda s: s["start"]):
        by_pid.setdefault(s["pid"], []).append(s)
    gaps = [b["start"] - a["end"] for runs in by_pid.values() for a, b in itertools.pairwise(runs)]
    return {
        "wall": wall,
        "capacity": total,
        "steps_cpu": steps_cpu,
        "workers_other": workers - in_workers,
        "this_process": here - (steps_cpu - in_workers),
        "other_processes": (total - idle) - here - workers,
        "idle": idle,
        "split": "/".join(str(len(v)) for v in by_pid.values()),
        "first_starts": sorted(v[0]["start"] - start for v in by_pid.values()),
        "gaps": sum(gaps),
        "tail": start + wall - max(s["end"] for s in steps),
        # One worker done while the other still runs its last step.
        "imbalance": max(s["end"] for s in steps) - min(v[-1]["end"] for v in by_pid.values()),
        "step_wall": statistics.median(s["end"] - s["start"] for s in steps),
        "step_cpu": statistics.median(s["cpu"] for s in steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    try:
        client.run(lambda: __import__("_cpu_work"))
        backend = DaskBackend(client=client)
        kinds: dict[str, Callable[[], Run]] = {
            "local threads": lambda: on_backend(LocalBackend()),
            "Dask backend": lambda: on_backend(backend),
            "raw submit": lambda: raw_submit(client),
        }
        for run in kinds.values():  # registries, imports, connections
            run()
        found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind, run in kinds.items():
                found[kind].append(account(run, client))
        print(
            f"per run of {CPU_STEPS} steps, medians of {args.rounds} interleaved rounds: wall seconds, then "
            "the machine's core-seconds in that time (capacity, ~2 x wall) and where they went:"
        )
        print(f"{'':14}" + "".join(f"{c:>16}" for c in COLUMNS))
        for kind, rows in found.items():
            print(f"{kind:14}" + "".join(f"{statistics.median(r[c] for r in rows):16.3f}" for c in COLUMNS))
        print("per step (median), steps per worker, dispatch (medians, seconds):")
        for kind, rows in found.items():
            if kind == "local threads":
                continue
            firsts = [statistics.median(r["first_starts"][i] for r in rows) for i in range(2)]
            print(
                f"  {kind}: wall {statistics.median(r['step_wall'] for r in rows):.3f}, cpu "
                f"{statistics.median(r['step_cpu'] for r in rows):.3f}; split "
                f"{', '.join(sorted({r['split'] for r in rows}))}; first step on each worker after "
                f"{firsts[0]:.3f} / {firsts[1]:.3f}; gaps between a worker's steps "
                f"{statistics.median(r['gaps'] for r in rows):.3f} in all; one worker idle at the end "
                f"{statistics.median(r['imbalance'] for r in rows):.3f}; tail "
                f"{statistics.median(r['tail'] for r in rows):.3f}"
            )
        local = found["local threads"]
        for kind in ("Dask backend", "raw submit"):
            ratios = sorted(lo["wall"] / r["wall"] for lo, r in zip(local, found[kind], strict=True))
            print(
                f"local threads / {kind}: median {statistics.median(ratios):.2f}x "
                f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
            )
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
