"""codomyrmex-orchestration: an MCP server and a synchronous core that run workflows as DAGs of actions."""

from __future__ import annotations

from codomyrmex_orchestration import logs as _logs
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
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
from codomyrmex_orchestration.errors import (
    CycleDetectedError,
    DAGValidationError,
    OrchestrationError,
)

__version__ = "0.1.0"

_logs.ensure_stderr_default()

__all__ = [
    "ActionContext",
    "ActionDefinition",
    "ActionRegistry",
    "CycleDetectedError",
    "DAGValidationError",
    "OrchestrationError",
    "RunRecord",
    "Settings",
    "StepResult",
    "StepSpec",
    "TaskPriority",
    "TaskRecord",
    "TaskSpec",
    "TaskStatus",
    "WorkflowSpec",
    "WorkflowStatus",
    "__version__",
    "create_registry",
]
