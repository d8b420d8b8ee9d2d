"""MCP tasks from the TypeScript SDK's client (``@modelcontextprotocol/sdk``, its experimental tasks client
``client.experimental.tasks``) against the installed console script, over stdio and streamable HTTP: a
20-step workflow as a task yields ``taskCreated``, status updates and the plain call's result; a task
cancelled with ``tasks/cancel`` ends ``cancelled``; ``tasks/list`` shows both.

``make test`` installs the SDK and Node 22 into ``.tools/`` first (``make conformance-tools``); run alone,
this test is skipped when they are missing, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.served import SCRIPT, served, server_env

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".tools" / "node_modules"
NODE = NODE_MODULES / ".bin" / "node"
CLIENT = Path(__file__).with_name("tasks_client.cjs")
VOLATILE = {"run_id", "started_at", "finished_at", "created_at", "updated_at", "duration_seconds"}


@pytest.fixture(scope="module")
def node() -> Path:
    if not (NODE_MODULES / "@modelcontextprotocol" / "sdk").exists() or not NODE.exists():
        message = f"the TypeScript SDK is not installed in {NODE_MODULES}: run `make conformance-tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return NODE


def _drive(node: Path, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(node), str(CLIENT), *args],
        capture_output=True,
        text=True,
        env={**env, "NODE_PATH": str(NODE_MODULES)},
        cwd=cwd,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _without_ids(handle: dict[str, Any]) -> dict[str, Any]:
    steps = {n: {k: v for k, v in s.items() if k not in VOLATILE} for n, s in handle["steps"].items()}
    return {**{k: v for k, v in handle.items() if k not in VOLATILE}, "steps": steps}


def _check(seen: dict[str, Any]) -> None:
    assert seen["capabilities"]["requests"]["tools"]["call"] == {}
    run = seen["run"]
    kinds = [m["type"] for m in run]
    assert kinds[0] == "taskCreated" and kinds[-1] == "result", run
    working = [m for m in run if m["type"] == "taskStatus" and m["status"] == "working"]
    assert working and all(m["statusMessage"].endswith(" of 20 steps completed") for m in working), run
    assert run[-2] == {
        "type": "taskStatus",
        "status": "completed",
        "statusMessage": "20 of 20 steps completed",
    }
    task_id = run[0]["taskId"]
    result = run[-1]
    assert result["meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
    assert result["structuredContent"]["run_id"] == task_id
    assert seen["plain"]["status"] == "completed"
    assert _without_ids(result["structuredContent"]) == _without_ids(seen["plain"])

    cancel = seen["cancel"]
    assert cancel[0]["type"] == "taskCreated" and seen["cancelled"] == "cancelled"
    assert cancel[-1]["type"] == "error" and "cancelled" in cancel[-1]["error"], cancel
    listed = {t["taskId"]: t["status"] for t in seen["listed"]}
    assert listed == {task_id: "completed", cancel[0]["taskId"]: "cancelled"}


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "server").mkdir()
    yield tmp_path / "server"


def test_the_typescript_client_runs_a_workflow_as_a_task_over_stdio(node: Path, root: Path) -> None:
    env = server_env(root)
    seen = _drive(node, ["stdio", str(SCRIPT), "serve", "--transport", "stdio"], env, root)
    _check(seen)


def test_the_typescript_client_runs_a_workflow_as_a_task_over_streamable_http(node: Path, root: Path) -> None:
    with served(root) as server:
        seen = _drive(node, ["http", server.url], dict(os.environ), root)
    _check(seen)
    assert set(seen["statusNotifications"]) <= {"working", "completed", "cancelled"}
