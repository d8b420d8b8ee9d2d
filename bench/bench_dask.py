"""The same 10,000-step workflow on the local backend and on a Dask LocalCluster.

Run: ``.venv/bin/python bench/bench_dask.py [--steps N] [--slots S] [--dask-workers W] [--processes]``
(needs the dask extra). The workflow is N independent ``core.echo`` steps plus one step depending on a
tenth of them, so the scheduler's dependency path is exercised too. Prints wall time and steps/s for
each backend. A benchmark, not a test: per-step overhead, not a workload where Dask pays off.
"""

from __future__ import annotations

import argparse
import time

from codomyrmex_orchestration.core.actions import create_registry
from codomyrmex_orchestration.core.backends import ExecutionBackend, LocalBackend, create_backend
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager


def workflow(steps: int) -> dict[str, object]:
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


def run(backend: ExecutionBackend, steps: int, slots: int) -> float:
    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(slots, registry=registry, backend=backend, max_finished=steps)
    try:
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None, max_steps=steps)
        manager.create_workflow(workflow(steps))
        start = time.perf_counter()
        record = manager.execute_workflow("bench", timeout=600)
        elapsed = time.perf_counter() - start
        assert record.status is WorkflowStatus.COMPLETED, record.error
        return elapsed
    finally:
        orch.shutdown(wait=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=16, help="scheduler worker threads (dispatch slots)")
    parser.add_argument("--dask-workers", type=int, default=2)
    parser.add_argument("--processes", action="store_true", help="Dask workers as processes")
    parser.add_argument("--saturation", type=float, default=None, help="worker-saturation (e.g. inf)")
    args = parser.parse_args()
    n = args.steps
    local = run(LocalBackend(), n, args.slots)
    started = time.perf_counter()
    backend = create_backend(
        "dask",
        dask_n_workers=args.dask_workers,
        dask_processes=args.processes,
        dask_worker_saturation=args.saturation,
    )
    startup = time.perf_counter() - started
    info = backend.describe()
    dask_time = run(backend, n, args.slots)
    kind = "processes" if args.processes else "threads in this process"
    print(f"{n}-step workflow, {args.slots} scheduler slots")
    print(f"  local                        {local:7.2f} s   {n / local:8.0f} steps/s")
    print(
        f"  dask ({info['workers']} workers, {info['threads']} threads, {kind}, saturation "
        f"{args.saturation or 'default'}; cluster start {startup:.1f} s)"
    )
    print(f"                               {dask_time:7.2f} s   {n / dask_time:8.0f} steps/s")


if __name__ == "__main__":
    main()
