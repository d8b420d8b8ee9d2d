"""The Dask backend against its floor: no-op steps vs raw ``Client.submit``, and CPU-bound steps vs threads.

Run: ``.venv/bin/python bench/bench_dask.py [--steps N] [--rounds R] [--json]`` (needs the dask extra).

1. Per-step overhead, on one LocalCluster (2 workers, threads in this process, as a server started
   with ``--executor dask`` on a small machine would have): each round times N raw
   ``client.submit(noop, i)`` tasks (submitted in a loop, then waited for and gathered) and an
   N-step workflow of independent ``core.echo`` steps (plus one step joining a tenth of them) on the
   Dask backend over the same client, interleaved; the figure is the median of the per-round ratios.
2. Parallel CPU work: 8 ``python.call`` steps of pure-Python arithmetic (~0.15 s each on the dev
   machine, holding the GIL), on local threads (8 slots) and on a 2-process LocalCluster, interleaved.
   The same loop takes 0.13-0.17 s of CPU depending on the process and even the thread that runs it
   (steady within one thread, different across threads and processes), so a figure taken in one bench
   process with one pair of workers carries that luck: the comparison runs in ``--cpu-sets`` fresh
   processes, each with its own cluster, and the figure is the median speed-up over all their rounds
   (``trace_dask_cpu.py`` shows where the cluster's time goes). The local backend's 10,000-step time is
   printed for reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _cpu_work import spin
from distributed import Client, LocalCluster, wait

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.backends import ExecutionBackend, LocalBackend
from codomyrmex_orchestration.core.backends.dask import DaskBackend
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager

HERE = Path(__file__).resolve().parent
SLOTS = 16
CPU_STEPS = 8
CPU_ROUNDS_PER_STEP = 4_000_000
#: CPU seconds of this process per timed run, appended by run_workflow and raw_submit.
CPU_SPENT: list[float] = []


def noop(x: int) -> int:
    return x


def echo_workflow(steps: int) -> dict[str, object]:
    body: list[dict[str, object]] = [
        {"name": f"s{i}", "module": "core", "action": "echo", "parameters": {"message": i}}
        for i in range(steps - 1)
    ]
    body.append(
        {
            "name": "join",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "done"},
            "dependencies": [f"s{i}" for i in range(0, steps - 1, 10)],
        }
    )
    return {"name": "bench", "steps": body}


def cpu_workflow(function: str = "_cpu_work:spin") -> dict[str, object]:
    """The CPU-bound workflow: ``CPU_STEPS`` independent ``python.call`` steps of ``function``."""
    return {
        "name": "cpu",
        "steps": [
            {
                "name": f"spin{i}",
                "module": "python",
                "action": "call",
                "parameters": {"function": function, "args": [CPU_ROUNDS_PER_STEP + i]},
            }
            for i in range(CPU_STEPS)
        ],
    }


def run_workflow(backend: ExecutionBackend, workflow: dict[str, object], slots: int) -> float:
    """Seconds to run ``workflow`` through the scheduler on ``backend`` (set-up excluded).

    Also adds the CPU seconds this process spent to ``CPU_SPENT`` (with an in-process cluster that is
    the client's, the scheduler's and the workers' work together, and it moves far less with the
    machine's load than wall time does)."""
    steps = len(workflow["steps"])  # type: ignore[arg-type]
    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(slots, registry=registry, backend=backend, max_finished=steps)
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None, max_steps=steps)
        manager.create_workflow(workflow)
        start, cpu = time.perf_counter(), time.process_time()
        record = manager.execute_workflow(str(workflow["name"]), timeout=600)
        elapsed = time.perf_counter() - start
        CPU_SPENT.append(time.process_time() - cpu)
        assert record.status is WorkflowStatus.COMPLETED, record.error
        return elapsed
    finally:
        orch.shutdown(wait=True, timeout=60)


def raw_submit(client: Client, n: int) -> float:
    """Seconds for ``n`` no-op tasks through plain ``Client.submit``: submitted, waited for, gathered."""
    start, cpu = time.perf_counter(), time.process_time()
    futures = [client.submit(noop, i, pure=False) for i in range(n)]
    wait(futures)
    client.gather(futures)
    elapsed = time.perf_counter() - start
    CPU_SPENT.append(time.process_time() - cpu)
    client.cancel(futures)
    return elapsed


def overhead(steps: int, rounds: int) -> dict[str, Any]:
    cluster = LocalCluster(n_workers=2, processes=False, dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    raw: list[float] = []
    ours: list[float] = []
    raw_cpu: list[float] = []
    ours_cpu: list[float] = []
    try:
        backend = DaskBackend(client=client)
        workflow = echo_workflow(steps)
        run_workflow(backend, echo_workflow(200), SLOTS)  # warm both paths up
        raw_submit(client, 200)
        for _ in range(rounds):
            raw.append(raw_submit(client, steps) / steps)
            raw_cpu.append(CPU_SPENT[-1] / steps)
            ours.append(run_workflow(backend, workflow, SLOTS) / steps)
            ours_cpu.append(CPU_SPENT[-1] / steps)
        threads = sum(client.nthreads().values())
    finally:
        client.close()
        cluster.close()
    ratios = sorted(o / r for o, r in zip(ours, raw, strict=True))
    return {
        "steps": steps,
        "rounds": rounds,
        "cluster": f"LocalCluster, 2 workers, {threads} threads, in this process",
        "slots": SLOTS,
        "raw_submit_us_per_task": round(statistics.median(raw) * 1e6),
        "dask_backend_us_per_step": round(statistics.median(ours) * 1e6),
        "ratio": round(statistics.median(ratios), 2),
        "round_ratio_range": [round(ratios[0], 2), round(ratios[-1], 2)],
        "dask_backend_seconds": round(statistics.median(ours) * steps, 2),
        "raw_submit_cpu_us_per_task": round(statistics.median(raw_cpu) * 1e6),
        "dask_backend_cpu_us_per_step": round(statistics.median(ours_cpu) * 1e6),
        "cpu_ratio": round(statistics.median(o / r for o, r in zip(ours_cpu, raw_cpu, strict=True)), 2),
    }


def cpu_parallel(rounds: int) -> dict[str, Any]:
    """One set: local threads in this process against a fresh 2-process cluster, ``rounds`` interleaved."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    local: list[float] = []
    dask: list[float] = []
    raw: list[float] = []
    try:
        client.run(lambda: __import__("_cpu_work"))  # the workers import the helper once, outside the timing
        backend = DaskBackend(client=client)
        # Each worker process builds its action registry on its first step: start-up, not step cost.
        run_workflow(backend, cpu_workflow(), CPU_STEPS)
        for _ in range(rounds):
            local.append(run_workflow(LocalBackend(), cpu_workflow(), CPU_STEPS))
            dask.append(run_workflow(backend, cpu_workflow(), CPU_STEPS))
            start = time.perf_counter()
            spins = [client.submit(spin, CPU_ROUNDS_PER_STEP + i, pure=False) for i in range(CPU_STEPS)]
            client.gather(spins)
            raw.append(time.perf_counter() - start)
    finally:
        client.close()
        cluster.close()
    return {"local": local, "dask": dask, "raw": raw}


def cpu_sets(sets: int, rounds: int) -> dict[str, Any]:
    """:func:`cpu_parallel` in ``sets`` fresh processes, one after another; the rounds pooled."""
    runs = []
    for _ in range(sets):
        out = subprocess.run(
            [sys.executable, __file__, "--cpu-set", "--cpu-rounds", str(rounds)],
            check=True,
            capture_output=True,
            text=True,
            cwd=HERE,
            timeout=600,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    local = [x for r in runs for x in r["local"]]
    dask = [x for r in runs for x in r["dask"]]
    raw = [x for r in runs for x in r["raw"]]
    speedups = sorted(lo / da for lo, da in zip(local, dask, strict=True))
    return {
        "steps": CPU_STEPS,
        "rounds": len(speedups),
        "process_sets": sets,
        "local_threads_seconds": round(statistics.median(local), 3),
        "dask_2_processes_seconds": round(statistics.median(dask), 3),
        "raw_submit_2_processes_seconds": round(statistics.median(raw), 3),
        "speedup": round(statistics.median(speedups), 2),
        "round_speedup_range": [round(speedups[0], 2), round(speedups[-1], 2)],
        "raw_speedup": round(statistics.median(lo / ra for lo, ra in zip(local, raw, strict=True)), 2),
        "set_speedups": [
            round(statistics.median(lo / da for lo, da in zip(r["local"], r["dask"], strict=True)), 2)
            for r in runs
        ],
    }


def run(steps: int, rounds: int, cpu_sets_: int, cpu_rounds: int) -> dict[str, Any]:
    logging.getLogger("distributed").setLevel(logging.ERROR)
    local = run_workflow(LocalBackend(), echo_workflow(steps), SLOTS)
    return {
        "overhead": overhead(steps, rounds),
        "cpu": cpu_sets(cpu_sets_, cpu_rounds),
        "local_seconds": round(local, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def report(f: dict[str, Any]) -> str:
    o, c = f["overhead"], f["cpu"]
    return (
        f"No-op steps, {o['steps']} per round, {o['cluster']}, {o['slots']} scheduler slots "
        f"(median of {o['rounds']} interleaved rounds):\n"
        f"  Dask backend {o['dask_backend_us_per_step']} µs/step ({o['dask_backend_seconds']} s), raw "
        f"Client.submit {o['raw_submit_us_per_task']} µs/task: {o['ratio']}x "
        f"(per round {o['round_ratio_range'][0]}-{o['round_ratio_range'][1]}x); local backend "
        f"{f['local_seconds']} s\n"
        f"  CPU time of the process (client, scheduler and workers): {o['dask_backend_cpu_us_per_step']} "
        f"vs {o['raw_submit_cpu_us_per_task']} µs: {o['cpu_ratio']}x\n"
        f"{c['steps']} CPU-bound python.call steps (median of {c['rounds']} rounds in {c['process_sets']} "
        f"fresh processes, each with its own cluster): local threads {c['local_threads_seconds']} s, "
        f"2-process LocalCluster {c['dask_2_processes_seconds']} s: {c['speedup']}x faster (per round "
        f"{c['round_speedup_range'][0]}-{c['round_speedup_range'][1]}x; per process "
        f"{', '.join(f'{x}x' for x in c['set_speedups'])}; raw Client.submit of the same work on the "
        f"cluster {c['raw_submit_2_processes_seconds']} s, {c['raw_speedup']}x); "
        f"load average {f['load_average']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cpu-sets", type=int, default=3, help="fresh processes for the CPU-bound part")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="interleaved rounds in each of them")
    # One set, printed as JSON: how cpu_sets runs each fresh process.
    parser.add_argument("--cpu-set", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    if args.cpu_set:
        logging.getLogger("distributed").setLevel(logging.ERROR)
        print(json.dumps(cpu_parallel(args.cpu_rounds)))
        return
    figures = run(args.steps, args.rounds, args.cpu_sets, args.cpu_rounds)
    print(json.dumps(figures) if args.json else report(figures))


if __name__ == "__main__":
    main()
