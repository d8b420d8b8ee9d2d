"""Workflow secrets: ``{{secrets.NAME}}`` from the environment or a 0600 secrets file, resolved when the
step starts, and never written to the state, spill files, logs or results."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pytest

from codomyrmex_orchestration._redact import redact_text, register_secret
from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._secrets import SecretSource
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.models import InputRequest, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import SqliteStore
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import DAGValidationError, SecretsFileError
from codomyrmex_orchestration.logs import configure_logging
from tests.helpers.loopback_http import serving

TOKEN = "tok-9f8e7d6c5b4a-secret"


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False, allow_code_execution=True)


@pytest.fixture
def store(state_dir: Path) -> Iterator[SqliteStore]:
    the_store = SqliteStore(state_dir / "state.db")
    yield the_store
    the_store.close()


@pytest.fixture
def orchestrator(registry: ActionRegistry, store: SqliteStore, state_dir: Path) -> Iterator[TaskOrchestrator]:
    # A small output cap, so that an echoed secret also goes to a spill file.
    limiter = OutputLimiter(2048, spill_dir=state_dir / "outputs", budget=store)
    orch = TaskOrchestrator(4, registry=registry, output_limit=limiter)
    yield orch
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


@pytest.fixture
def manager(orchestrator: TaskOrchestrator, registry: ActionRegistry, store: SqliteStore) -> WorkflowManager:
    return WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)


def echo_workflow(message: str, name: str = "uses_secret") -> dict[str, Any]:
    return {
        "name": name,
        "steps": [{"name": "say", "module": "core", "action": "echo", "parameters": {"message": message}}],
    }


def secrets_file(path: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text(json.dumps(values))
    path.chmod(mode)
    return path


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_secret_echoed_back_is_redacted_in_the_run_and_absent_from_the_db_spill_files_and_logs(
    manager: WorkflowManager, store: SqliteStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODOMYRMEX_SECRET_API_TOKEN", TOKEN)
    logs = io.StringIO()
    configure_logging("debug", "json", stream=logs)
    manager.create_workflow(
        {
            "name": "child",
            "parameters": {"token": ""},
            "steps": [
                {
                    "name": "got",
                    "module": "core",
                    "action": "echo",
                    "parameters": {"message": "{{params.token}}"},
                }
            ],
        }
    )
    manager.create_workflow(
        {
            "name": "leaky",
            "steps": [
                {
                    "name": "say",
                    "module": "core",
                    "action": "echo",
                    "parameters": {"message": "Bearer {{secrets.API_TOKEN}}"},
                },
                {
                    "name": "shell",
                    "module": "shell",
                    "action": "run",
                    "parameters": {"command": ["echo", "{{secrets.API_TOKEN}}"]},
                },
                # a large output holding the secret: cut by the cap and spilled to a file
                {
                    "name": "big",
                    "module": "core",
                    "action": "echo",
                    "parameters": {"message": "{{secrets.API_TOKEN}} " * 400},
                },
                # the secret in an error message
                {
                    "name": "fails",
                    "module": "shell",
                    "action": "run",
                    "required": False,
                    "parameters": {"command": "echo {{secrets.API_TOKEN}} >&2; exit 3", "shell": True},
                },
                # the secret as a sub-run's parameter: the child's run record is stored too
                {
                    "name": "sub",
                    "module": "workflow",
                    "action": "run",
                    "parameters": {"workflow": "child", "parameters": {"token": "{{secrets.API_TOKEN}}"}},
                },
            ],
        }
    )
    run = manager.execute_workflow("leaky", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED, run.error
    steps = run.steps
    assert steps["say"].output == "Bearer [secret:API_TOKEN]"
    assert steps["shell"].output["stdout"].strip() == "[secret:API_TOKEN]"
    assert steps["big"].output["truncated"] is True and steps["big"].output["spilled_to"]
    assert steps["fails"].status is TaskStatus.FAILED and "[secret:API_TOKEN]" in steps["fails"].error.message
    assert "[secret:API_TOKEN]" in json.dumps(steps["sub"].output)
    child = manager.list_runs(workflow_name="child")[0]
    assert child.parameters == {"token": "[secret:API_TOKEN]"}

    store.flush()
    assert (state_dir / "outputs").is_dir()
    on_disk = every_byte_under(state_dir)  # state.db, its -wal, the spill files
    assert TOKEN.encode() not in on_disk and b"[secret:API_TOKEN]" in on_disk
    assert TOKEN not in json.dumps([r.model_dump(mode="json") for r in manager.list_runs()])
    assert TOKEN not in json.dumps(store.list_events(limit=1000))
    assert TOKEN not in logs.getvalue()
    # the definition keeps the template, never the value
    assert manager.get_workflow("leaky").steps[0].parameters["message"] == "Bearer {{secrets.API_TOKEN}}"


def test_a_secret_is_read_from_a_file_only_its_owner_can_read(
    manager: WorkflowManager, tmp_path: Path
) -> None:
    path = secrets_file(tmp_path / "secrets.json", {"DB_PASSWORD": "pw-from-the-file-1"})
    manager.secrets = SecretSource(path, environ={})
    manager.create_workflow(echo_workflow("{{secrets.DB_PASSWORD}}"))
    run = manager.execute_workflow("uses_secret", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED and run.steps["say"].output == "[secret:DB_PASSWORD]"

    # the file changed: read again
    secrets_file(path, {"DB_PASSWORD": "pw-from-the-file-2"})
    run = manager.execute_workflow("uses_secret", timeout=30)
    assert run.steps["say"].output == "[secret:DB_PASSWORD]"
    assert redact_text("pw-from-the-file-2") == "[secret:DB_PASSWORD]"


def test_a_secrets_file_others_may_read_is_refused_naming_its_path_and_mode(
    manager: WorkflowManager, tmp_path: Path
) -> None:
    path = secrets_file(tmp_path / "secrets.json", {"DB_PASSWORD": "pw-readable-by-all"}, mode=0o644)
    manager.secrets = SecretSource(path, environ={})
    manager.create_workflow(echo_workflow("{{secrets.DB_PASSWORD}}"))
    run = manager.execute_workflow("uses_secret", timeout=30)
    assert run.status is WorkflowStatus.FAILED
    error = run.steps["say"].error
    assert error is not None and error.type == "SecretsFileError"
    assert str(path) in error.message and "0644" in error.message and "chmod 600" in error.message
    assert "pw-readable-by-all" not in error.message
    with pytest.raises(SecretsFileError, match="0644"):
        SecretSource(path, environ={}).get("DB_PASSWORD")


def test_the_environment_wins_over_the_file_and_a_bad_file_is_not_read_when_it_is_not_needed(
    tmp_path: Path,
) -> None:
    path = secrets_file(tmp_path / "secrets.json", {"X": "from-the-file"}, mode=0o640)
    source = SecretSource(path, environ={"CODOMYRMEX_SECRET_X": "from-the-env"})
    assert source.get("X") == "from-the-env"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[1, 2]", "must hold a JSON object"),
        ('{"X": 5}', "value of 'X' must be a string"),
        ('{"bad-name": "value-1"}', "not a secret name"),
        ('{"X": "value-with-no-end', "not valid UTF-8 JSON (line 1"),
    ],
)
def test_a_malformed_secrets_file_is_refused_without_quoting_its_values(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SecretsFileError) as caught:
        SecretSource(path, environ={}).get("X")
    assert reason in str(caught.value) and "value-with-no-end" not in str(caught.value)


def test_a_secret_set_nowhere_fails_its_step_saying_where_to_set_it(
    manager: WorkflowManager, tmp_path: Path
) -> None:
    manager.secrets = SecretSource(tmp_path / "absent.json", environ={})
    manager.create_workflow(echo_workflow("{{secrets.NOPE}}"))
    run = manager.execute_workflow("uses_secret", timeout=30)
    error = run.steps["say"].error
    assert run.status is WorkflowStatus.FAILED and error is not None
    assert "CODOMYRMEX_SECRET_NOPE" in error.message and str(tmp_path / "absent.json") in error.message


def test_a_secret_too_short_to_redact_is_refused(manager: WorkflowManager) -> None:
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_PIN": "123"})
    manager.create_workflow(echo_workflow("{{secrets.PIN}}"))
    run = manager.execute_workflow("uses_secret", timeout=30)
    error = run.steps["say"].error
    assert run.status is WorkflowStatus.FAILED and error is not None and "shorter than 4" in error.message


def test_validation_names_the_secrets_set_nowhere_and_never_shows_a_value(
    manager: WorkflowManager, tmp_path: Path
) -> None:
    path = secrets_file(tmp_path / "secrets.json", {"IN_FILE": "value-in-the-file"})
    manager.secrets = SecretSource(path, environ={"CODOMYRMEX_SECRET_IN_ENV": "value-in-the-env"})
    spec = {
        "name": "three",
        "steps": [
            {
                "name": "a",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "{{secrets.IN_ENV}} {{secrets.IN_FILE}} {{secrets.MISSING}}"},
            },
            {
                "name": "b",
                "module": "core",
                "action": "echo",
                "parameters": {"message": {"nested": ["{{secrets.ALSO_MISSING}}"]}},
            },
        ],
    }
    validation = manager.validate_workflow(spec)
    assert validation.missing_secrets == ["ALSO_MISSING", "MISSING"]
    shown = validation.model_dump_json()
    assert "value-in-the" not in shown
    with pytest.raises(DAGValidationError, match=r"secrets\.<NAME>"):
        manager.validate_workflow(echo_workflow("{{secrets.TOKEN.field}}"))


def test_a_registered_workflow_secret_is_replaced_by_its_name() -> None:
    register_secret("named-secret-value-1", "MY_NAME")
    assert redact_text("x named-secret-value-1 y") == "x [secret:MY_NAME] y"


def test_each_item_of_a_map_step_gets_the_secret_and_none_of_them_shows_it(
    manager: WorkflowManager, store: SqliteStore, state_dir: Path
) -> None:
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_API_TOKEN": TOKEN})
    manager.create_workflow(
        {
            "name": "mapped",
            "steps": [
                {
                    "name": "each",
                    "module": "core",
                    "action": "echo",
                    "for_each": ["a", "b"],
                    "parameters": {"message": "{{item}}:{{secrets.API_TOKEN}}"},
                }
            ],
        }
    )
    run = manager.execute_workflow("mapped", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED
    assert run.steps["each"].output == ["a:[secret:API_TOKEN]", "b:[secret:API_TOKEN]"]
    store.flush()
    assert TOKEN.encode() not in every_byte_under(state_dir)


def test_a_condition_or_a_list_reading_a_secret_is_refused_by_validation_naming_the_step(
    manager: WorkflowManager,
) -> None:
    # Whether a step runs is visible: run_if "secrets.API >= '<guess>'" recovered a secret prefix by prefix.
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_API": TOKEN})
    echo = {"module": "core", "action": "echo", "parameters": {"message": 1}}
    spec = {
        "name": "probes",
        "steps": [
            {"name": "compares", **echo, "run_if": "secrets.API >= 'tok-9'"},
            {"name": "contains", **echo, "run_if": "'secret' in {{secrets.API}}"},
            {"name": "maps", **echo, "for_each": ["{{secrets.API}}"], "run_if": "item >= 'tok'"},
        ],
    }
    with pytest.raises(DAGValidationError) as refused:
        manager.validate_workflow(spec)
    message = str(refused.value)
    for step, where in (("compares", "run_if"), ("contains", "run_if"), ("maps", "for_each")):
        assert f"step {step!r} {where}: cannot read a secret" in message
    assert "would disclose the value" in message and TOKEN not in message
    with pytest.raises(DAGValidationError, match="cannot read a secret"):
        manager.create_workflow(spec)
    assert "probes" not in [w.name for w in manager.list_workflows()]


def test_a_secret_passed_to_a_sub_run_is_redacted_from_what_its_conditions_read(
    manager: WorkflowManager,
) -> None:
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_API": TOKEN})
    echo = {"module": "core", "action": "echo", "parameters": {"message": "{{params.token}}"}}
    manager.create_workflow(
        {
            "name": "child",
            "parameters": {"token": "", "tokens": []},
            "steps": [
                {"name": "guessed", **echo, "run_if": f"params.token == '{TOKEN}'"},
                {"name": "prefix", **echo, "run_if": "params.token >= 'tok-9'"},
                {"name": "each", **echo, "for_each": "{{params.tokens}}", "run_if": f"item == '{TOKEN}'"},
                {"name": "named", **echo, "run_if": "params.token == '[secret:API]'"},
            ],
        }
    )
    manager.create_workflow(
        {
            "name": "parent",
            "steps": [
                {
                    "name": "sub",
                    "module": "workflow",
                    "action": "run",
                    "parameters": {
                        "workflow": "child",
                        "parameters": {"token": "{{secrets.API}}", "tokens": ["{{secrets.API}}"]},
                    },
                }
            ],
        }
    )
    run = manager.execute_workflow("parent", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED, run.error
    child = manager.list_runs(workflow_name="child")[0]
    statuses = {name: row.status for name, row in child.steps.items()}
    # The conditions saw [secret:API], whatever the value: their outcome tells nothing about it.
    assert statuses["guessed"] is statuses["prefix"] is TaskStatus.SKIPPED
    assert statuses["named"] is TaskStatus.COMPLETED
    items = child.steps["each"].items
    assert items is not None and items.counts == {"skipped": 1}
    # ... while the steps that run still get the value itself (redacted in what they return).
    assert child.steps["named"].output == "[secret:API]"


class _Reflector(BaseHTTPRequestHandler):
    """Answers with the request's path in a JSON-looking text body (``?status=N`` sets the status)."""

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        status = int(parts.query.removeprefix("status=") or 200)
        body = json.dumps({"path": parts.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def reflector() -> Iterator[str]:
    with serving(_Reflector, name="test-reflector") as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


def readable_parts(secret: str, text: str) -> list[str]:
    """The pieces of ``secret`` of 4 characters or more that ``text`` shows, in any case."""
    low = text.lower()
    return [secret[i : i + 4] for i in range(len(secret) - 3) if secret[i : i + 4].lower() in low]


def test_a_secret_a_server_reflects_is_not_left_partly_readable_when_the_body_is_cut(
    manager: WorkflowManager, reflector: str
) -> None:
    secret = "Zq7Wm3Kp9Vt2LxUf"
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_API": secret})
    url = reflector + "/k/{{secrets.API}}"
    get = {"module": "http", "action": "request"}
    # The body is {"path": "/k/<secret>"}: the first 13 bytes come before the secret.
    steps = [
        {"name": f"cut{cap}", **get, "parameters": {"url": url, "max_output_bytes": cap}}
        for cap in (15, 20, 25, 28, 30)
    ]
    # A non-2xx error quotes the body's first 500 characters: let that cut fall inside the secret.
    for before in (480, 490, 495):
        padded = f"{reflector}/{'a' * before}{{{{secrets.API}}}}?status=500"
        steps.append({"name": f"tail{before}", **get, "required": False, "parameters": {"url": padded}})
    manager.create_workflow({"name": "reflected", "steps": steps})
    run = manager.execute_workflow("reflected", timeout=30)
    for before in (480, 490, 495):
        error = run.steps[f"tail{before}"].error
        assert error is not None and "HTTP 500" in error.message
    for cap in (15, 20, 25, 28, 30):
        assert "truncated" in run.steps[f"cut{cap}"].output["text"]
    shown = run.model_dump_json()
    assert readable_parts(secret, shown) == []


def test_the_error_of_a_request_to_a_url_made_of_the_secret_shows_no_form_of_it(
    manager: WorkflowManager,
) -> None:
    host, path = "Qv8Rn4Jt6Yb1Dm", 'p@ss w0rd"<x>|é'
    manager.secrets = SecretSource(
        None, environ={"CODOMYRMEX_SECRET_HOST": host, "CODOMYRMEX_SECRET_PATH": path}
    )
    get = {"module": "http", "action": "request", "required": False}
    manager.create_workflow(
        {
            "name": "unreachable",
            "steps": [
                # .invalid never resolves; port 9 (discard) on loopback refuses the connection
                {
                    "name": "host",
                    **get,
                    "parameters": {"url": "http://{{secrets.HOST}}.invalid/", "timeout": 10},
                },
                {
                    "name": "path",
                    **get,
                    "parameters": {"url": "http://127.0.0.1:9/{{secrets.PATH}}", "timeout": 10},
                },
            ],
        }
    )
    run = manager.execute_workflow("unreachable", timeout=30)
    host_error, path_error = run.steps["host"].error, run.steps["path"].error
    assert host_error is not None and "GET http://[secret:HOST].invalid/ failed" in host_error.message
    assert path_error is not None and "GET http://127.0.0.1:9/[secret:PATH] failed" in path_error.message
    shown = run.model_dump_json()
    assert readable_parts(host, shown) == []
    for form in (path, quote(path), quote_plus(path), json.dumps(path)[1:-1]):
        assert form not in shown


def test_a_question_holding_a_secret_is_asked_with_the_secret_redacted(manager: WorkflowManager) -> None:
    secret = "Qx9-approve-value"
    manager.secrets = SecretSource(None, environ={"CODOMYRMEX_SECRET_Q": secret})
    asked: list[str] = []

    def broker(run_id: str, step: str, question: InputRequest, client: str | None) -> bool:
        asked.append(question.message)  # what the client, and the person, are shown
        asked.extend(q.message for q in manager.get_run(run_id).pending_inputs)
        manager.inputs.respond(run_id, step, "decline")
        return True

    manager.inputs.broker = broker
    manager.create_workflow(
        {
            "name": "ask",
            "steps": [
                {
                    "name": "confirm",
                    "module": "core",
                    "action": "approve",
                    "parameters": {"message": "deploy with {{secrets.Q}}?"},
                }
            ],
        }
    )
    run = manager.execute_workflow("ask", timeout=30)
    assert run.status.is_terminal
    assert asked == ["deploy with [secret:Q]?", "deploy with [secret:Q]?"]
