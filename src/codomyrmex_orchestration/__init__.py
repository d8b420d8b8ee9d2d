"""codomyrmex-orchestration: an MCP server and a synchronous core that run workflows as DAGs of actions.

The core is usable from plain Python::

    from codomyrmex_orchestration import get_workflow_manager

    manager = get_workflow_manager()
    manager.create_workflow("hello", [{"name": "say", "module": "core", "action": "echo",
                                       "parameters": {"message": "hi"}}])
    print(manager.execute_workflow("hello").steps["say"].output)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codomyrmex_orchestration.compose import (
        build_engine,
        configure_engine,
        get_orchestration_engine,
        get_project_manager,
        get_resource_manager,
        get_task_orchestrator,
        get_workflow_manager,
        reset_engine,
    )
    from codomyrmex_orchestration.config import Settings
    from codomyrmex_orchestration.core._health import HealthReport, MetricsReport, SystemStatus
    from codomyrmex_orchestration.core.actions import (
        ActionContext,
        ActionDefinition,
        ActionRegistry,
        create_registry,
    )
    from codomyrmex_orchestration.core.dag import WorkflowDAG
    from codomyrmex_orchestration.core.docs import DocumentationGenerator
    from codomyrmex_orchestration.core.engine import (
        OrchestrationEngine,
        OrchestrationMode,
        Session,
        SessionStatus,
    )
    from codomyrmex_orchestration.core.executor import ExecutionResult, ParallelExecutor
    from codomyrmex_orchestration.core.models import (
        RunRecord,
        StepResult,
        StepSpec,
        TaskPriority,
        TaskRecord,
        TaskSpec,
        TaskStatus,
        WorkflowSpec,
        WorkflowStatus,
    )
    from codomyrmex_orchestration.core.projects import Project, ProjectManager, ProjectStatus, ProjectType
    from codomyrmex_orchestration.core.resources import (
        Allocation,
        Resource,
        ResourceManager,
        ResourceStatus,
        ResourceType,
    )
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
    from codomyrmex_orchestration.core.workflows import WorkflowManager
    from codomyrmex_orchestration.errors import (
        CycleDetectedError,
        DAGValidationError,
        InsufficientResourcesError,
        OrchestrationError,
        TaskNotFoundError,
    )
    from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__version__ = "0.1.0"

__all__ = [
    "ActionContext",
    "ActionDefinition",
    "ActionRegistry",
    "Allocation",
    "CycleDetectedError",
    "DAGValidationError",
    "DocumentationGenerator",
    "ExecutionResult",
    "HealthReport",
    "InsufficientResourcesError",
    "MemoryStore",
    "MetricsReport",
    "OrchestrationEngine",
    "OrchestrationError",
    "OrchestrationMCPTools",
    "OrchestrationMode",
    "ParallelExecutor",
    "Project",
    "ProjectManager",
    "ProjectStatus",
    "ProjectType",
    "Resource",
    "ResourceManager",
    "ResourceStatus",
    "ResourceType",
    "RunRecord",
    "Session",
    "SessionStatus",
    "Settings",
    "SqliteStore",
    "StepResult",
    "StepSpec",
    "SystemStatus",
    "TaskNotFoundError",
    "TaskOrchestrator",
    "TaskPriority",
    "TaskRecord",
    "TaskSpec",
    "TaskStatus",
    "WorkflowDAG",
    "WorkflowManager",
    "WorkflowSpec",
    "WorkflowStatus",
    "__version__",
    "build_engine",
    "configure_engine",
    "create_registry",
    "get_orchestration_engine",
    "get_project_manager",
    "get_resource_manager",
    "get_task_orchestrator",
    "get_workflow_manager",
    "reset_engine",
]


# Each public name is imported on first access (PEP 562), not with the package: ``serve`` and the CLI
# import the package for ``__version__`` and would otherwise load the whole core (networkx, the store,
# the scheduler, every action module) before answering a client's first request. The imports above,
# for type checkers and readers, are the same names from the same modules.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "build_engine",
            "configure_engine",
            "get_orchestration_engine",
            "get_project_manager",
            "get_resource_manager",
            "get_task_orchestrator",
            "get_workflow_manager",
            "reset_engine",
        ),
        "compose",
    ),
    "Settings": "config",
    **dict.fromkeys(("HealthReport", "MetricsReport", "SystemStatus"), "core._health"),
    **dict.fromkeys(
        ("ActionContext", "ActionDefinition", "ActionRegistry", "create_registry"), "core.actions"
    ),
    "WorkflowDAG": "core.dag",
    "DocumentationGenerator": "core.docs",
    **dict.fromkeys(("OrchestrationEngine", "OrchestrationMode", "Session", "SessionStatus"), "core.engine"),
    **dict.fromkeys(("ExecutionResult", "ParallelExecutor"), "core.executor"),
    **dict.fromkeys(
        (
            "RunRecord",
            "StepResult",
            "StepSpec",
            "TaskPriority",
            "TaskRecord",
            "TaskSpec",
            "TaskStatus",
            "WorkflowSpec",
            "WorkflowStatus",
        ),
        "core.models",
    ),
    **dict.fromkeys(("Project", "ProjectManager", "ProjectStatus", "ProjectType"), "core.projects"),
    **dict.fromkeys(
        ("Allocation", "Resource", "ResourceManager", "ResourceStatus", "ResourceType"), "core.resources"
    ),
    "TaskOrchestrator": "core.scheduler",
    **dict.fromkeys(("MemoryStore", "SqliteStore"), "core.store"),
    "WorkflowManager": "core.workflows",
    **dict.fromkeys(
        (
            "CycleDetectedError",
            "DAGValidationError",
            "InsufficientResourcesError",
            "OrchestrationError",
            "TaskNotFoundError",
        ),
        "errors",
    ),
    # The MCP tools need mcp and anyio: they load on first access only, the core never imports them.
    "OrchestrationMCPTools": "server.tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later accesses are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
