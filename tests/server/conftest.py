"""Server fixtures: the anyio backend, and tools whose engine cannot start (for paths that never reach it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from codomyrmex_orchestration.server.app import build_server
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


# --------------------------------------------------------------------------- the engine behind the tools


def make_engine(root: Path, policy: ServerPolicy, *, durable: bool = False) -> Any:
    """A real engine rooted in ``root`` (no config workflows, packaged templates); in memory unless
    ``durable``."""
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    return OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=root / "templates",
        max_workers=8,
        allow_code_execution=policy.allow_code_execution,
        durable=durable,
    )


@pytest.fixture
async def client(tools: OrchestrationMCPTools) -> AsyncIterator[Client]:
    """The real MCP client, in process, on a server over ``tools``."""
    async with Client(build_server(tools)) as the_client:
        yield the_client


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[OrchestrationMCPTools]:
    """Tools over a real engine in ``tmp_path``; shut down after the test."""
    the_tools = OrchestrationMCPTools(engine_factory=lambda policy: make_engine(tmp_path, policy))
    yield the_tools
    the_tools.close()
