"""Server fixtures: the anyio backend, and tools whose engine cannot start (for paths that never reach it)."""

from __future__ import annotations

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
