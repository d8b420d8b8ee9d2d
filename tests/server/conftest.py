"""Server fixtures: the anyio backend, and tools whose engine cannot start (for paths that never reach it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.server.tools import OrchestrationMCPTools, ServerPolicy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class EngineUnavailableError(RuntimeError):
    """Raised by an engine factory that cannot build an engine (like a broken state directory would)."""


def no_engine(policy: ServerPolicy) -> Any:
    raise EngineUnavailableError("engine start failed: /secret/path/state.db is locked")


@pytest.fixture
def tools_without_engine() -> OrchestrationMCPTools:
    """Tools whose engine fails to start: validation paths must never need it."""
    return OrchestrationMCPTools(engine_factory=no_engine)


# --------------------------------------------------------------------------- the core behind the tools

try:
    from codomyrmex_orchestration.core import engine as engine_module
except ImportError:  # core/engine.py has not landed on this branch yet
    engine_module = None


class CoreParts:
    """Until ``core/engine.py`` lands: the engine contract's workflow, task, project and action surface
    (docs/ARCHITECTURE.md), composed of the real core parts and forwarding to them. Sessions, resources,
    health and status need the real engine; their tests import it. Delete this when the engine lands."""

    def __init__(self, root: Path, *, allow_code_execution: bool) -> None:
        from codomyrmex_orchestration.core.actions import create_registry
        from codomyrmex_orchestration.core.projects import ProjectManager
        from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
        from codomyrmex_orchestration.core.workflows import WorkflowManager

        self.registry = create_registry(allow_code_execution=allow_code_execution)
        self.task_orchestrator = TaskOrchestrator(8, registry=self.registry)
        self.workflow_manager = WorkflowManager(
            orchestrator=self.task_orchestrator, registry=self.registry, config_dir=None
        )
        self.project_manager = ProjectManager(
            root / "projects", templates_dir=root / "templates", workflow_manager=self.workflow_manager
        )

    def execute_workflow(
        self,
        name: str,
        *,
        parameters: Any = None,
        session_id: Any = None,
        wait: bool = True,
        timeout: float | None = None,
        on_step: Any = None,
    ) -> Any:
        return self.workflow_manager.execute_workflow(
            name, parameters, wait=wait, timeout=timeout, session_id=session_id, on_step=on_step
        )

    def execute_complex_workflow(
        self,
        definition: Any,
        *,
        name: str,
        parameters: Any = None,
        session_id: Any = None,
        wait: bool = True,
        timeout: float | None = None,
        on_step: Any = None,
    ) -> Any:
        extra = definition.get("dependencies", {})
        steps = [
            {**step, "dependencies": sorted({*step.get("dependencies", []), *extra.get(step["name"], [])})}
            for step in definition["steps"]
        ]
        self.workflow_manager.create_workflow({"name": name, "steps": steps}, overwrite=True)
        return self.execute_workflow(
            name, parameters=parameters, session_id=session_id, wait=wait, timeout=timeout, on_step=on_step
        )

    def execute_task(
        self, spec: Any, *, session_id: Any = None, wait: bool = True, timeout: float | None = None
    ) -> Any:
        task_id = self.task_orchestrator.submit_task(spec)
        if wait:
            return self.task_orchestrator.wait(task_id, timeout)
        return self.task_orchestrator.get_task(task_id)

    def shutdown(self) -> None:
        from codomyrmex_orchestration.core.models import TaskStatus

        self.workflow_manager.shutdown()
        for task in self.task_orchestrator.list_tasks(TaskStatus.RUNNING, limit=10_000):
            self.task_orchestrator.cancel_task(task.task_id, "server shutting down")
        self.task_orchestrator.shutdown(wait=True, cancel_pending=True, timeout=10)


def make_engine(root: Path, policy: ServerPolicy) -> Any:
    if engine_module is not None:
        return engine_module.OrchestrationEngine(
            state_dir=root / "state",
            config_dir=root / "config",
            projects_dir=root / "projects",
            max_workers=8,
            allow_code_execution=policy.allow_code_execution,
            durable=False,
        )
    return CoreParts(root, allow_code_execution=policy.allow_code_execution)


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[OrchestrationMCPTools]:
    """Tools over a real core in ``tmp_path`` (the engine once it lands); shut down after the test."""
    the_tools = OrchestrationMCPTools(engine_factory=lambda policy: make_engine(tmp_path, policy))
    yield the_tools
    the_tools.close()
