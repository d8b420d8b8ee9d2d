"""A finished run's state is freed by reference counting, not left for the garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from codomyrmex_orchestration.core._workflow_run import RunState
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.models import WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False)


@pytest.fixture
def orchestrator(registry: ActionRegistry) -> Iterator[TaskOrchestrator]:
    orchestrator = TaskOrchestrator(4, registry=registry)
    yield orchestrator
    orchestrator.shutdown(wait=True, timeout=10)


def _live_runs() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is RunState)


def test_finished_runs_are_freed_without_the_garbage_collector(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    # A reference cycle (a run and one of its parts, or a worker still holding the last step's callable)
    # would keep each finished run, with its record and graph, until the collector's next full pass.
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)
    manager.create_workflow(
        {
            "name": "shapes",
            "steps": [
                {"name": "a", "module": "core", "action": "set", "parameters": {"items": [1, 2, 3]}},
                {"name": "b", "module": "core", "action": "set", "dependencies": ["a"]},
                {
                    "name": "each",
                    "module": "core",
                    "action": "echo",
                    "for_each": "{{steps.a.output.items}}",
                    "parameters": {"message": "{{item}}"},
                },
                {"name": "bad", "module": "core", "action": "fail", "required": False},
                {"name": "after_bad", "module": "core", "action": "set", "dependencies": ["bad"]},
            ],
        }
    )
    gc.collect()
    before = _live_runs()
    gc.disable()
    try:
        for _ in range(3):
            record = manager.execute_workflow("shapes", timeout=10)
            assert record.status is WorkflowStatus.COMPLETED, record.error
        del record
        # The workers may still be returning from the last step's callbacks: let them leave first.
        orchestrator.shutdown(wait=True, timeout=10)
        assert _live_runs() == before
    finally:
        gc.enable()
