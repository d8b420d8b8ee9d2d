"""The package's public surface: ``__all__`` is exactly what it exports, and every name resolves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import codomyrmex_orchestration as pkg


def test_all_names_resolve_and_are_unique() -> None:
    assert len(pkg.__all__) == len(set(pkg.__all__))
    for name in pkg.__all__:
        assert hasattr(pkg, name), name


def test_all_matches_public_module_attributes() -> None:
    public = {
        name
        for name, value in vars(pkg).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("codomyrmex_orchestration")
    }
    assert public <= set(pkg.__all__), sorted(public - set(pkg.__all__))


def test_nothing_the_core_logs_reaches_stdout(tmp_path: Path) -> None:
    """stdout is the MCP stdio wire: a submodule imported first must still log to stderr."""
    script = (
        "import sys; from codomyrmex_orchestration.core.store import SqliteStore; "
        "SqliteStore(sys.argv[1]).close()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout == ""
    assert "state_store_migrated" in proc.stderr


def test_the_singletons_are_exported() -> None:
    for name in (
        "get_orchestration_engine",
        "get_workflow_manager",
        "get_task_orchestrator",
        "get_resource_manager",
        "get_project_manager",
    ):
        assert callable(getattr(pkg, name))


def test_the_mcp_tools_are_exported_lazily_so_the_package_alone_loads_neither_mcp_nor_anyio() -> None:
    script = (
        "import sys, json\n"
        "import codomyrmex_orchestration as pkg\n"
        "before = sorted(m for m in ('mcp', 'anyio') if m in sys.modules)\n"
        "from codomyrmex_orchestration import OrchestrationMCPTools\n"
        "from codomyrmex_orchestration.server.tools import OrchestrationMCPTools as direct\n"
        "print(json.dumps([before, OrchestrationMCPTools is direct, 'mcp' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stdout) == [[], True, True]
    assert "OrchestrationMCPTools" in pkg.__all__
