"""What a cold server imports before its first answer: only what initialize and tools/list need (the
engine, the store, the DAG library and the action modules come with the first tool call)."""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules serving initialize and tools/list must not load (each costs start-up time; see issue 23).
NOT_BEFORE_THE_FIRST_CALL = (
    "networkx",
    "sqlite3",
    "httpx",
    "dask",
    "codomyrmex_orchestration.compose",
    "codomyrmex_orchestration.core.engine",
    "codomyrmex_orchestration.core.scheduler",
    "codomyrmex_orchestration.core.store",
    "codomyrmex_orchestration.core.workflows",
    "codomyrmex_orchestration.core.resources",
    "codomyrmex_orchestration.core.actions.http",
    "codomyrmex_orchestration.core.actions.shell",
)


def _loaded_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


def test_building_the_stdio_server_loads_no_engine_store_or_action_module() -> None:
    loaded = _loaded_after(
        "from codomyrmex_orchestration.cli import build_parser\n"
        "from codomyrmex_orchestration.server.app import build_server\n"
        "from codomyrmex_orchestration.server.tools import OrchestrationMCPTools\n"
        "build_parser(); build_server(OrchestrationMCPTools())"
    )
    assert "codomyrmex_orchestration.server.app" in loaded
    assert loaded.isdisjoint(NOT_BEFORE_THE_FIRST_CALL), sorted(loaded & set(NOT_BEFORE_THE_FIRST_CALL))


def test_the_package_loads_a_public_name_on_first_access() -> None:
    assert "codomyrmex_orchestration.core.scheduler" not in _loaded_after("import codomyrmex_orchestration")
    loaded = _loaded_after("import codomyrmex_orchestration as c; c.TaskOrchestrator")
    assert "codomyrmex_orchestration.core.scheduler" in loaded


def test_a_registry_still_holds_every_built_in_action_module() -> None:
    from codomyrmex_orchestration.core.actions import create_registry

    modules = {name.split(".")[0] for name in create_registry(load_plugins=False).known()}
    assert {"core", "shell", "python", "http", "workflow"} <= modules
