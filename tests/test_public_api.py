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


def test_a_store_or_an_action_plugin_is_written_from_public_modules_alone() -> None:
    """The docs point plugin authors at ParameterReaders and store authors at the StateStore contracts;
    both used to need underscore modules (``actions._params``, ``_step_cache``, ``_store_tool_tasks``)."""
    import codomyrmex_orchestration.core.actions as actions
    import codomyrmex_orchestration.core.store as store

    for name in ("CacheTable", "MemoryCacheTable", "ToolTaskStore", "MemoryToolTasks"):
        assert name in store.__all__, name
    memory = store.MemoryStore()
    try:
        assert isinstance(memory.step_cache, store.MemoryCacheTable)
        assert isinstance(memory.tool_tasks, store.MemoryToolTasks)
    finally:
        memory.close()
    for name in ("ParameterReaders", "get_bool", "get_number", "get_str", "get_str_map"):
        assert name in actions.__all__, name
    readers = actions.ParameterReaders(
        "mine.greet", {"name": "who"}, name=(("name",), lambda p: actions.get_str(p, "name", "mine.greet"))
    )
    assert readers.read({"name": "ada"}) == {"name": "ada"}
    assert readers.check({"name": 3}) != []  # what the step would refuse, found at validation
