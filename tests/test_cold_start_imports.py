"""What a cold server imports before its first answer: only what initialize and tools/list need (the
engine, the store, the DAG library and the action modules come with the first tool call)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.served import INITIALIZE, reap, server_env

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
    "codomyrmex_orchestration.core.actions",
    "codomyrmex_orchestration.core.actions.http",
    "codomyrmex_orchestration.core.actions.shell",
    "codomyrmex_orchestration.core._store_codec",
    "codomyrmex_orchestration.core.templating",
    "codomyrmex_orchestration.connectors",
    # The tools' argument and result models (and the core models only they use): the definitions are
    # read from the cache, the models come with the first call.
    "codomyrmex_orchestration.server._models",
    "codomyrmex_orchestration.core._health",
    "codomyrmex_orchestration.core._resource_types",
    "codomyrmex_orchestration.core._sessions",
)

#: Run records, built on their first use (``defer_build``): listing the tools validates none.
RECORDS = (
    "WorkflowInfo",
    "ErrorInfo",
    "ItemResult",
    "MapItems",
    "StepResult",
    "InputRequest",
    "RunRecord",
    "TaskRecord",
)


def _loaded_after(code: str) -> set[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


def test_building_the_stdio_server_loads_no_engine_store_or_action_module() -> None:
    build = (
        "from codomyrmex_orchestration.cli import build_parser\n"
        "from codomyrmex_orchestration.server.app import build_server\n"
        "from codomyrmex_orchestration.server.tools import OrchestrationMCPTools\n"
        "build_parser(); build_server(OrchestrationMCPTools())"
    )
    _loaded_after(build)  # the first start ever writes the cached tool definitions
    loaded = _loaded_after(build)
    assert "codomyrmex_orchestration.server.app" in loaded
    assert loaded.isdisjoint(NOT_BEFORE_THE_FIRST_CALL), sorted(loaded & set(NOT_BEFORE_THE_FIRST_CALL))


def test_building_the_stdio_server_builds_no_run_record() -> None:
    script = (
        "import json\n"
        "from codomyrmex_orchestration.server.app import build_server\n"
        "from codomyrmex_orchestration.server.tools import OrchestrationMCPTools\n"
        "from codomyrmex_orchestration.core import models\n"
        "build_server(OrchestrationMCPTools())\n"
        f"print(json.dumps([n for n in {RECORDS!r} if getattr(models, n).__pydantic_complete__]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stdout) == []


def test_threads_racing_to_the_first_use_of_a_record_all_get_valid_records() -> None:
    # A fresh interpreter, so the first use is the race: every thread validates at the same moment.
    script = (
        "import threading\n"
        "from codomyrmex_orchestration.core.models import RunRecord, StepResult\n"
        "barrier = threading.Barrier(16)\n"
        "records, errors = [], []\n"
        "def first_use(i):\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        records.append(RunRecord.model_validate({'run_id': f'r{i}', 'workflow_name': 'w',\n"
        "            'steps': {'a': {'name': 'a', 'status': 'completed', 'output': i}}}))\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=first_use, args=(i,)) for i in range(16)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "assert not errors, errors\n"
        "assert sorted(r.steps['a'].output for r in records) == list(range(16))\n"
        "assert all(type(r.steps['a']) is StepResult for r in records)\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_package_loads_a_public_name_on_first_access() -> None:
    assert "codomyrmex_orchestration.core.scheduler" not in _loaded_after("import codomyrmex_orchestration")
    loaded = _loaded_after("import codomyrmex_orchestration as c; c.TaskOrchestrator")
    assert "codomyrmex_orchestration.core.scheduler" in loaded


def test_a_registry_still_holds_every_built_in_action_module() -> None:
    from codomyrmex_orchestration.core.actions import create_registry

    modules = {name.split(".")[0] for name in create_registry(load_plugins=False).known()}
    assert {"core", "shell", "python", "http", "workflow"} <= modules


#: structlog imports rich (and through it pygments) for pretty tracebacks its JSON or plain lines never
#: use; a server started by the CLI imports it without them. (The engine, built in the background once the
#: server listens, may still import rich: httpx loads it for its command line when it is installed.)
_SERVE_AND_RECORD = """
import json, sys
from codomyrmex_orchestration.cli import main
code = main(["serve", "--transport", "stdio"])
import structlog.dev
with open(sys.argv[1], "w") as out:
    json.dump({"modules": sorted(sys.modules), "structlog_rich": structlog.dev.rich is not None}, out)
sys.exit(code)
"""


def _message(message: dict[str, object]) -> bytes:
    return (json.dumps(message) + "\n").encode()


def test_a_server_started_by_the_cli_answers_tools_list_with_structlog_imported_without_rich(
    tmp_path: Path,
) -> None:
    recorded = tmp_path / "modules.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_AND_RECORD, str(recorded)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(tmp_path),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(_message(INITIALIZE))
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 1
        proc.stdin.write(_message({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        proc.stdin.write(_message({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        proc.stdin.flush()
        assert "execute_workflow" in {
            tool["name"] for tool in json.loads(proc.stdout.readline())["result"]["tools"]
        }
        proc.stdin.close()  # EOF: the server stops and the script records what it loaded
        assert proc.wait(timeout=60) == 0
        logs = proc.stderr.read().decode()
    finally:
        reap(proc)
    record = json.loads(recorded.read_text())
    assert "structlog" in record["modules"]  # the log lines are still structlog's
    assert "server.start" in logs
    assert record["structlog_rich"] is False


def test_the_cli_logs_an_exception_with_its_traceback_and_rich_stays_importable() -> None:
    script = (
        "import io, sys\n"
        "from codomyrmex_orchestration.logs import configure_logging, get_logger, import_structlog_plain\n"
        "import_structlog_plain()\n"
        "out = io.StringIO()\n"
        "configure_logging('info', 'console', stream=out)\n"
        "try:\n"
        "    raise KeyError('the-missing-key')\n"
        "except KeyError:\n"
        "    get_logger('test').exception('lookup.failed')\n"
        "import rich.console\n"
        "sys.stdout.write(out.getvalue())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "lookup.failed" in proc.stdout
    assert "Traceback (most recent call last)" in proc.stdout
    assert "KeyError: 'the-missing-key'" in proc.stdout


def test_a_program_importing_the_package_keeps_structlog_with_rich() -> None:
    loaded = _loaded_after(
        "from codomyrmex_orchestration.core.store import SqliteStore\n"
        "import structlog.dev\n"
        "assert structlog.dev.rich is not None, 'structlog was imported without rich'"
    )
    assert "rich" in loaded


def test_threads_racing_to_the_first_tool_call_share_one_table_and_one_models_module() -> None:
    script = (
        "import threading\n"
        "from codomyrmex_orchestration.server import tools\n"
        "barrier = threading.Barrier(16)\n"
        "seen = []\n"
        "def first_use():\n"
        "    barrier.wait()\n"
        "    seen.append((tools._tool_table(), tools.m.RunHandle, tools.m.NoArgs))\n"
        "threads = [threading.Thread(target=first_use) for _ in range(16)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "from codomyrmex_orchestration.server import _models\n"
        "table = seen[0][0]\n"
        "assert all(s[0] is table for s in seen), 'the table was built more than once'\n"
        "assert all(s[1] is _models.RunHandle and s[2] is _models.NoArgs for s in seen)\n"
        "assert table['execute_workflow'].result is _models.RunHandle\n"
        "print(len(seen))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "16"


def _help(parser: argparse.ArgumentParser, words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(words)
    return out.getvalue()


def test_the_parser_of_one_command_parses_it_as_the_whole_cli_does() -> None:
    from codomyrmex_orchestration.cli import _COMMANDS, build_parser

    for command in _COMMANDS:
        assert _help(build_parser(command), [command, "--help"]) == _help(build_parser(), [command, "--help"])
    words = ["serve", "--transport", "stdio", "--log-format", "json"]
    assert build_parser("serve").parse_args(words) == build_parser().parse_args(words)
