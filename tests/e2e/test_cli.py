"""The installed console script, driven as a subprocess with its own state and config directories.

Each test runs real commands (real engine, real SQLite state, real signals); output is parsed, not
eyeballed: ``--json`` is loaded, tables and progress lines are matched, exit codes are checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.cli import main
from codomyrmex_orchestration.core._store_readonly import ReadOnlyStore
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import SqliteStore
from tests.helpers import sigint_steps
from tests.helpers.served import INITIALIZE, reap

SCRIPT = Path(sys.executable).with_name("codomyrmex-orchestration")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "codomyrmex_orchestration"]
COMMANDS = ["run", "validate", "graph", "runs", "show", "resume", "cancel", "status", "health"]

DEMO = {
    "name": "demo",
    "parameters": {"n": 3},
    "steps": [
        {"name": "fetch", "module": "core", "action": "echo",
         "parameters": {"message": {"n": "{{params.n}}"}}},
        {"name": "double", "module": "core", "action": "echo", "dependencies": ["fetch"],
         "parameters": {"message": "{{steps.fetch.output.n}}"}},
    ],
}  # fmt: skip

SLOW = {
    "name": "slow",
    "steps": [
        {"name": "first", "module": "core", "action": "echo", "parameters": {"message": 1}},
        {"name": "nap", "module": "core", "action": "sleep", "parameters": {"seconds": 60},
         "dependencies": ["first"]},
        {"name": "after", "module": "core", "action": "echo", "parameters": {"message": 2},
         "dependencies": ["nap"]},
    ],
}  # fmt: skip

BAD = {
    "name": "bad",
    "steps": [
        {"name": "a", "module": "core", "action": "nope"},
        {
            "name": "b",
            "module": "core",
            "action": "echo",
            "parameters": {"message": 1},
            "dependencies": ["zzz"],
        },
        {
            "name": "c",
            "module": "core",
            "action": "echo",
            "parameters": {"message": 1},
            "dependencies": ["d"],
        },
        {
            "name": "d",
            "module": "core",
            "action": "echo",
            "parameters": {"message": 1},
            "dependencies": ["c"],
        },
    ],
}


def flaky(marker: Path) -> dict[str, Any]:
    """Fails at ``check`` until ``marker`` exists."""
    return {
        "name": "flaky",
        "parameters": {"marker": str(marker)},
        "steps": [
            {"name": "prepare", "module": "core", "action": "echo", "parameters": {"message": "ready"}},
            {"name": "check", "module": "shell", "action": "run", "dependencies": ["prepare"],
             "parameters": {"command": ["test", "-f", "{{params.marker}}"]}},
            {"name": "report", "module": "core", "action": "echo", "dependencies": ["check"],
             "parameters": {"message": "done"}},
        ],
    }  # fmt: skip


@dataclass
class Cli:
    root: Path
    env: dict[str, str]

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def write(self, name: str, document: Any) -> Path:
        path = self.root / name
        path.write_text(json.dumps(document), encoding="utf-8")
        return path

    def __call__(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *map(str, args)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*COMMAND, *map(str, args)],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def json(self, *args: str | Path) -> Any:
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def json_any(self, *args: str | Path) -> Any:
        """``--json`` output whatever the exit code (a failed run prints its record too)."""
        result = self(*args, "--json")
        assert result.stdout, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env.update(
        CODOMYRMEX_STATE_DIR=str(tmp_path / "state"),
        CODOMYRMEX_CONFIG_DIR=str(tmp_path / "config"),
        CODOMYRMEX_PROJECTS_DIR=str(tmp_path / "projects"),
        CODOMYRMEX_TEMPLATES_DIR=str(tmp_path / "templates"),
        CODOMYRMEX_MAX_WORKERS="4",
    )
    (tmp_path / "config").mkdir()
    return Cli(tmp_path, env)


def wait_for_line(proc: subprocess.Popen[str], *words: str) -> list[str]:
    """Read the process's stdout until a line holds every word (pytest-timeout bounds it)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if all(w in line for w in words):
            return seen
    raise AssertionError(f"no line with {words} before the output ended: {seen}")


def single_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------------- usage


def test_version_and_help_are_offered_by_the_program_and_every_command(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"codomyrmex-orchestration {__version__}"
    helped = cli("run", "--help")
    assert helped.returncode == 0
    assert "usage: codomyrmex-orchestration run" in helped.stdout
    # The rest in-process: each subprocess pays the package import, and parsing is all that runs.
    for command in COMMANDS:
        for flag in ("--help", "--version"):
            with pytest.raises(SystemExit) as exited:
                main([command, flag])
            assert exited.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: codomyrmex-orchestration {command}" in out
        assert out.rstrip().endswith(__version__)


def test_usage_errors_exit_2_with_one_readable_line_and_no_traceback(cli: Cli) -> None:
    demo = cli.write("demo.json", DEMO)
    no_args = cli("run")
    assert no_args.returncode == 2
    assert single_error_line(no_args.stderr) == (
        "error: the following arguments are required: FILE|NAME (see codomyrmex-orchestration run --help)"
    )
    unknown_command = cli("nope")
    assert unknown_command.returncode == 2
    assert "invalid choice: 'nope'" in single_error_line(unknown_command.stderr)

    bad_param = cli("run", demo, "--param", "no-equals-sign")
    assert bad_param.returncode == 2
    assert "expected KEY=VALUE" in single_error_line(bad_param.stderr)

    missing = cli("run", "missing.json")
    assert missing.returncode == 2
    assert "missing.json: cannot read the file" in single_error_line(missing.stderr)

    unknown = cli("run", "no_such_workflow")
    assert unknown.returncode == 2
    assert "workflow 'no_such_workflow' not found" in single_error_line(unknown.stderr)

    assert "run 'nope' not found" in single_error_line(cli("show", "nope").stderr)
    assert cli("runs", "--limit", "0").returncode == 2


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CODOMYRMEX_MAX_WORKERS", "0", "Input should be greater than or equal to 1"),
        ("CODOMYRMEX_SESSION_IDLE_TIMEOUT", "nan", "Input should be a finite number"),
        ("CODOMYRMEX_DASK_SCHEDULER", "notaurl", "'notaurl' is not the address of a Dask scheduler"),
        ("CODOMYRMEX_DASK_RESOURCE_MAP", "garbage", "expected name=value entries separated by commas"),
        ("CODOMYRMEX_DASK_WORKER_RESOURCES", "GPU", "expected name=value entries separated by commas"),
        ("CODOMYRMEX_DASK_WORKER_RESOURCES", "GPU=lots", "'GPU=lots': the amount must be a number"),
        ("CODOMYRMEX_DASK_WORKER_SATURATION", "nan", "must be a number above 0 (inf: no limit), not NaN"),
    ],
)
def test_a_bad_setting_is_one_error_line_naming_the_variable_not_the_field(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["paths"]) == 2
    line = single_error_line(capsys.readouterr().err)
    assert line == f"error: {variable}: {says}" or line.startswith(f"error: {variable}: {says}"), line
    field = variable.removeprefix("CODOMYRMEX_").lower()
    assert f"{field}:" not in line


def test_an_unreadable_token_file_is_refused_naming_its_flag_and_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-token"
    code = main(["serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "0",
                 "--auth-token-file", str(missing)])  # fmt: skip
    assert code == 2
    line = single_error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: --auth-token-file (CODOMYRMEX_AUTH_TOKEN_FILE): cannot read {missing}: No such file"
    ), line
    # Given by the variable alone, the variable alone is named.
    monkeypatch.setenv("CODOMYRMEX_AUTH_TOKEN_FILE", str(missing))
    assert main(["serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "0"]) == 2
    line = single_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: CODOMYRMEX_AUTH_TOKEN_FILE: cannot read {missing}"), line


def test_a_bad_value_given_by_a_flag_names_the_flag_with_its_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was "error: CODOMYRMEX_PORT: ...", a variable the user never set.
    monkeypatch.delenv("CODOMYRMEX_PORT", raising=False)
    assert main(["serve", "--transport", "streamable-http", "--port", "99999"]) == 2
    line = single_error_line(capsys.readouterr().err)
    assert line == "error: --port (CODOMYRMEX_PORT): Input should be less than or equal to 65535"
    monkeypatch.setenv("CODOMYRMEX_PORT", "99999")
    assert main(["serve", "--transport", "streamable-http"]) == 2
    line = single_error_line(capsys.readouterr().err)
    assert line == "error: CODOMYRMEX_PORT: Input should be less than or equal to 65535"


def test_run_on_an_unusable_dask_scheduler_is_a_configuration_error_naming_the_setting(cli: Cli) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    demo = cli.write("demo.json", DEMO)
    cli.env.update(CODOMYRMEX_EXECUTOR="dask", CODOMYRMEX_DASK_SCHEDULER="notaurl")
    malformed = cli("run", demo)
    assert malformed.returncode == 2, malformed.stderr
    assert "error: CODOMYRMEX_DASK_SCHEDULER: 'notaurl' is not the address" in single_error_line(
        malformed.stderr
    )
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    cli.env.update(CODOMYRMEX_DASK_SCHEDULER=address, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    unreachable = cli("run", demo)
    assert unreachable.returncode == 2, unreachable.stderr
    line = single_error_line(unreachable.stderr)
    assert line.startswith(
        f"error: CODOMYRMEX_DASK_SCHEDULER: cannot connect to a Dask scheduler at {address!r}"
    )
    # A well-formed tls:// address without Dask's TLS settings was an internal error (TypeError), exit 1.
    cli.env.update(CODOMYRMEX_DASK_SCHEDULER=address.replace("tcp://", "tls://"))
    no_tls = cli("run", demo)
    assert no_tls.returncode == 2, no_tls.stderr
    line = single_error_line(no_tls.stderr)
    assert (
        line.startswith("error: CODOMYRMEX_DASK_SCHEDULER: ")
        and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in line
    )


def test_debug_shows_the_traceback_that_is_otherwise_hidden(cli: Cli) -> None:
    result = cli("show", "nope", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "RunNotFoundError" in result.stderr


def test_paths_prints_every_path_with_a_note_and_the_variable_that_moves_it(cli: Cli) -> None:
    listed = cli.json("paths")
    result = cli("paths")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(listed)  # a path line and a note line for each path
    for index, (name, path) in enumerate(listed.items()):
        assert lines[2 * index].split()[:2] == [name, path]
        note = lines[2 * index + 1].strip()
        assert note and not note.startswith("["), (name, note)  # every path says what it is for
    assert "[CODOMYRMEX_MCP_SERVERS_FILE]" in result.stdout


# ---------------------------------------------------------------------- run


def test_run_prints_one_line_per_step_transition_when_stdout_is_not_a_terminal(cli: Cli) -> None:
    result = cli("run", cli.write("demo.json", DEMO), "--param", "n=21")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ") and lines[0].endswith(" of demo: 2 steps")
    transitions = [line.split()[1:3] for line in lines[1:5]]
    assert transitions == [
        ["fetch", "running"],
        ["fetch", "completed"],
        ["double", "running"],
        ["double", "completed"],
    ]
    assert "of demo completed in" in lines[5]
    assert lines[-1] == "21"  # the last step's output: the param went through the templates
    assert "\x1b[" not in result.stdout  # no terminal control codes in a pipe


def test_run_json_prints_only_the_final_record_and_the_run_is_kept_in_the_state_dir(cli: Cli) -> None:
    record = cli.json("run", cli.write("demo.json", DEMO))
    assert record["status"] == "completed"
    assert record["steps"]["double"]["output"] == 3
    listed = cli.json("runs")
    assert [r["run_id"] for r in listed] == [record["run_id"]]
    shown = cli.json("show", record["run_id"])
    assert shown["steps"]["fetch"]["output"] == {"n": 3}


def test_a_misspelt_param_exits_2_naming_it_and_the_accepted_names_and_runs_nothing(cli: Cli) -> None:
    result = cli("run", cli.write("demo.json", DEMO), "--param", "nn=21")
    assert result.returncode == 2
    assert single_error_line(result.stderr).startswith(
        "error: parameters.nn: workflow 'demo' neither declares nor uses parameter 'nn' (did you mean 'n'?); "
        "accepted parameters: n"
    )
    assert cli.json("runs") == []


def test_a_registered_workflow_runs_by_name_from_the_config_dir(cli: Cli) -> None:
    (cli.root / "config" / "demo.json").write_text(json.dumps(DEMO), encoding="utf-8")
    record = cli.json("run", "demo", "--param", "n=5")
    assert record["status"] == "completed"
    assert record["steps"]["double"]["output"] == 5


def test_a_failed_run_exits_1_and_resume_completes_it_once_the_cause_is_fixed(cli: Cli) -> None:
    marker = cli.root / "marker"
    failed = cli("run", cli.write("flaky.json", flaky(marker)))
    assert failed.returncode == 1
    assert "of flaky failed" in failed.stdout
    assert "check" in failed.stdout and "exited with code 1" in failed.stdout

    [record] = cli.json("runs", "--status", "failed")
    run_id = record["run_id"]
    assert record["steps"]["check"]["status"] == "failed"
    assert record["steps"]["report"]["status"] == "skipped"
    assert f"resume {run_id}" in failed.stdout

    marker.touch()
    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "prepare" not in resumed.stdout.split("\n", 1)[1]  # not run again: only check and report
    after = cli.json("show", run_id)
    assert after["status"] == "completed"
    assert after["steps"]["prepare"] == record["steps"]["prepare"]  # its first result, kept
    assert after["steps"]["report"]["output"] == "done"

    again = cli("resume", run_id)
    assert again.returncode == 1
    assert "nothing to resume" in single_error_line(again.stderr)


def test_run_timeout_cancels_the_run_and_exits_1(cli: Cli) -> None:
    result = cli("run", cli.write("slow.json", SLOW), "--timeout", "0.5")
    assert result.returncode == 1
    assert "did not finish within 0.5s" in result.stderr
    assert "cancelled" in result.stdout and "(timed out)" in result.stdout
    assert "not run: after" in result.stdout


GATED = {
    "name": "gated",
    "steps": [
        {"name": "plan", "module": "core", "action": "set", "parameters": {"files": 3}},
        {
            "name": "approve",
            "module": "core",
            "action": "approve",
            "parameters": {
                "message": "Delete {{steps.plan.output.files}} files?",
                "schema": {
                    "type": "object",
                    "properties": {"reason": {"type": "string"}},
                    "required": ["reason"],
                },
            },
        },
        {
            "name": "act",
            "module": "core",
            "action": "echo",
            "parameters": {"message": "{{steps.approve.output.content.reason}}"},
        },
    ],
}


def test_run_of_a_run_waiting_for_a_person_names_the_question_exits_3_and_a_server_answers_it_later(
    cli: Cli,
) -> None:
    result = cli("run", cli.write("gated.json", GATED), timeout=30)
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    head = next(line for line in lines if "is waiting for input" in line)
    run_id = head.split()[1]
    assert "  step 'approve' asks: Delete 3 files?" in lines
    assert "    answer: accept with reason (string, required), or decline" in lines
    assert "respond_to_run" in result.stdout
    assert cli.json("show", run_id)["status"] == "waiting_for_input"
    listed = cli("runs")
    assert "waiting_for_input (answered over MCP: respond_to_run)" in listed.stdout, listed.stdout

    # What the message promises: the next process that owns the state (a server) continues it and
    # takes the answer.
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    engine = OrchestrationEngine(
        state_dir=cli.state_dir, config_dir=None, projects_dir=cli.root / "projects", templates_dir=None
    )
    try:
        manager = engine.workflow_manager
        manager.inputs.respond(run_id, "approve", "accept", {"reason": "tidy"})
        final = manager.wait_run(run_id, 30)
    finally:
        engine.shutdown()
    assert final.status is WorkflowStatus.COMPLETED
    assert final.steps["act"].output == "tidy"


def test_cancel_of_a_run_left_waiting_cancels_it_unless_a_server_holds_the_state_directory(cli: Cli) -> None:
    from codomyrmex_orchestration.core._serving_lock import ServingLock

    result = cli("run", "--json", cli.write("gated.json", GATED), timeout=30)
    assert result.returncode == 3, result.stderr
    run_id = json.loads(result.stdout)["run_id"]

    with ServingLock(cli.state_dir):  # as a server holds it: that server continues the run
        refused = cli("cancel", run_id)
    assert refused.returncode == 1
    assert "waits for an answer in the server of this state directory" in refused.stderr, refused.stderr
    assert "cancel_workflow_run" in refused.stderr
    assert cli.json("show", run_id)["status"] == "waiting_for_input"

    # Before: "running in another process (not a CLI `run`, e.g. the MCP server)", exit 1, nothing done.
    cancelled = cli("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run {run_id}: cancelled" in cancelled.stdout
    shown = cli.json("show", run_id)
    assert shown["status"] == "cancelled"
    assert shown["steps"]["approve"]["status"] == "cancelled"
    assert shown["steps"]["plan"]["status"] == "completed"  # kept


SNAP = {
    "name": "snap",
    "steps": [
        {"name": "q", "module": "core", "action": "approve", "parameters": {"message": "ok?"}},
        {"name": "a", "module": "core", "action": "echo", "parameters": {"message": "a"}},
        {"name": "b", "module": "core", "action": "echo", "parameters": {"message": "{{a.output}}"}},
        {"name": "c", "module": "core", "action": "set", "parameters": {"x": 1}},
    ],
}


def test_a_run_exiting_3_first_finishes_what_needs_no_answer_and_prints_what_it_stored(cli: Cli) -> None:
    # Before: `run --json` printed the record the moment q parked (a, b, c pending), and the shutdown then
    # raced the steps still going (some completed, some cancelled "the engine is shutting down").
    for _ in range(3):
        result = cli("run", "--json", cli.write("snap.json", SNAP), timeout=30)
        assert result.returncode == 3, result.stderr
        printed = json.loads(result.stdout)
        assert {n: s["status"] for n, s in printed["steps"].items()} == {
            "q": "running",
            "a": "completed",
            "b": "completed",
            "c": "completed",
        }
        assert printed["steps"]["b"]["output"] == "a"
        assert cli.json("show", printed["run_id"]) == printed
        assert "shutdown stage failed" not in result.stderr


def test_run_of_a_parent_whose_sub_run_asks_prints_the_question_exits_3_and_a_server_continues_it(
    cli: Cli,
) -> None:
    child = {"name": "ch_appr", "steps": [
        {"name": "q", "module": "core", "action": "approve", "parameters": {"message": "child asks"}}
    ]}  # fmt: skip
    parent = {"name": "pa_appr", "steps": [
        {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "ch_appr"}}
    ]}  # fmt: skip
    assert cli("run", cli.write("ch.json", child), timeout=30).returncode == 3  # registers ch_appr too
    result = cli("run", cli.write("pa.json", parent), timeout=30)  # before the fix: it never returned
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    run_id = next(line for line in lines if "pa_appr is waiting for input" in line).split()[1]
    record = cli.json("show", run_id)
    assert record["status"] == "waiting_for_input"
    [question] = record["pending_inputs"]
    child_id = question["run_id"]
    assert child_id != run_id
    assert f"  step 'q' of sub-run {child_id} asks: child asks" in lines
    assert cli.json("show", child_id)["status"] == "waiting_for_input"

    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    engine = OrchestrationEngine(
        state_dir=cli.state_dir, config_dir=None, projects_dir=cli.root / "projects", templates_dir=None
    )
    try:  # as `serve` starts: the parent continues, its step takes over the same sub-run, which asks again
        manager = engine.workflow_manager
        assert manager.inputs.wait(run_id, 30).status is WorkflowStatus.WAITING_FOR_INPUT
        manager.inputs.respond(run_id, "q", "accept")
        final = manager.wait_run(run_id, 30)
    finally:
        engine.shutdown()
    assert final.status is WorkflowStatus.COMPLETED, final.error
    assert final.steps["sub"].output["run_id"] == child_id


def test_a_run_waiting_for_a_person_with_state_in_memory_is_cancelled_saying_why(cli: Cli) -> None:
    cli.env["CODOMYRMEX_DURABLE"] = "0"
    result = cli("run", cli.write("gated.json", GATED), timeout=30)
    assert result.returncode == 1, result.stderr
    assert "waits for an answer; its state is in memory: cancelling it" in result.stderr
    assert "it waited for an answer (a core.approve step)" in result.stdout
    assert "resume it with" not in result.stdout  # its state went with the process: nothing to resume


def test_a_timeout_beyond_what_a_thread_can_wait_is_no_limit_and_infinity_is_refused(cli: Cli) -> None:
    demo = cli.write("demo.json", DEMO)
    far = cli("run", demo, "--timeout", "1e10", "--json")
    assert far.returncode == 0, far.stderr
    assert json.loads(far.stdout)["status"] == "completed"
    for flag, value in (("--timeout", "inf"), ("--timeout", "nan"), ("--wait", "inf")):
        command = ["cancel", "some_run"] if flag == "--wait" else ["run", demo]
        refused = cli(*command, flag, value)
        assert refused.returncode == 2, refused.stderr
        line = single_error_line(refused.stderr)
        assert f"argument {flag}: {value!r} is not a finite number of seconds" in line
        # Leaving --wait out means 30 s, not no limit: the message says what does mean no limit.
        assert "about 292 years, means no limit" in line and "leave the option out" not in line
    assert not (cli.state_dir / "state.db").exists() or len(cli.json("runs")) == 1  # nothing else ran


def test_ctrl_c_cancels_the_run_cleanly_reports_what_was_left_and_exits_130(cli: Cli) -> None:
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    wait_for_line(proc, "nap", "running")
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: cancelling run" in err
    assert "Traceback" not in err
    assert "(interrupted)" in rest
    assert "  completed: first" in rest
    assert "  cancelled while running: nap" in rest
    assert "  not run: after" in rest
    [record] = cli.json("runs")
    assert record["status"] == "cancelled"
    assert record["steps"]["first"]["status"] == "completed"


def _gated_run(cli: Cli, monkeypatch: pytest.MonkeyPatch, function: str) -> Path:
    """A workflow whose one step is ``tests.helpers.sigint_steps:<function>``, for ``main`` run in this
    process (the test's main thread) on ``cli``'s directories."""
    for name in [n for n in os.environ if n.startswith("CODOMYRMEX_")]:
        monkeypatch.delenv(name)
    for name, value in cli.env.items():
        if name.startswith("CODOMYRMEX_"):
            monkeypatch.setenv(name, value)
    sigint_steps.STARTED.clear()
    sigint_steps.RETURNED.clear()
    function = f"tests.helpers.sigint_steps:{function}"
    step = {
        "name": "gate",
        "module": "python",
        "action": "call",
        "parameters": {"function": function, "args": [30]},
    }
    return cli.write("gated_step.json", {"name": "gated_step", "steps": [step]})


def _stored_status(cli: Cli, run_id: str) -> str:
    with ReadOnlyStore(cli.state_dir / "state.db") as store:
        record = store.get_run(run_id)
    assert record is not None
    return record.status.value


def test_a_ctrl_c_that_another_thread_takes_cancels_the_run_at_once(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The kernel hands a process its SIGINT on any thread that does not block it: the one forking a
    # shell.run command at that moment, or after SIGCONT whichever runs first. CPython runs the handler on
    # the main thread only, once that thread runs again; it waited, without a limit, for the run to end:
    # the run went on (a `cancel` waiting for it gave up) until its step ended on its own, here after 30 s.
    workflow = _gated_run(cli, monkeypatch, "wait_for_cancel")

    def press_ctrl_c_here() -> None:
        if sigint_steps.STARTED.wait(30):
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # taken here, not on the main thread

    presser = threading.Thread(target=press_ctrl_c_here)
    presser.start()
    try:
        code = main(["run", str(workflow), "--json"])
    finally:
        presser.join()
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert code == 130, err
    assert "interrupted: cancelling run" in err
    assert record["status"] == "cancelled", record
    assert record["steps"]["gate"]["status"] == "cancelled"
    assert _stored_status(cli, record["run_id"]) == "cancelled"


def test_a_second_ctrl_c_while_the_first_cancel_is_processed_quits_leaving_the_run_cancelled(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first Ctrl-C cancelled the run on a thread of its own; a second one meanwhile quit the main
    # thread, whose engine shutdown closed the store under that thread: the run's end was never written,
    # and the run stayed `running (its CLI process is gone)` in the state directory. The step's cancel
    # callback presses the second Ctrl-C from the cancelling thread and holds it there until main returns.
    workflow = _gated_run(cli, monkeypatch, "ctrl_c_again_while_cancelled")

    def press_ctrl_c() -> None:
        if sigint_steps.STARTED.wait(30):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        code = main(["run", str(workflow)])
    finally:
        sigint_steps.RETURNED.set()
        presser.join()
    out, err = capsys.readouterr()
    assert code == 130, err
    assert err.rstrip().endswith("interrupted"), err  # quit: no report of the run
    run_id = out.split()[1]
    assert _stored_status(cli, run_id) == "cancelled"


# ---------------------------------------------------------------------- runs, show, cancel


def test_runs_and_show_print_tables_filtered_by_status_and_workflow(cli: Cli) -> None:
    ok = cli.json("run", cli.write("demo.json", DEMO))
    cli("run", cli.write("flaky.json", flaky(cli.root / "absent")))

    table = cli("runs").stdout.splitlines()
    assert table[0].split() == ["RUN", "ID", "WORKFLOW", "STATUS", "DONE", "CREATED", "DURATION"]
    assert len(table) == 3
    assert table[1].split()[1:4] == ["flaky", "failed", "3/3"]  # newest first
    assert table[2].split()[:4] == [ok["run_id"], "demo", "completed", "2/2"]
    # CREATED is local time with its offset named (it had been a local time with no zone).
    cli.env["TZ"] = "Asia/Kolkata"
    created = cli("runs").stdout.splitlines()[2].split()[5]
    assert created.endswith("+05:30"), created
    del cli.env["TZ"]

    assert [r["workflow_name"] for r in cli.json("runs", "--status", "completed")] == ["demo"]
    assert [r["workflow_name"] for r in cli.json("runs", "--workflow", "flaky", "--limit", "1")] == ["flaky"]

    for filters in (["--workflow", "nosuch"], ["--status", "cancelled"]):
        none = cli("runs", *filters)
        assert none.returncode == 0
        assert none.stdout.startswith("no runs match these filters (2 runs recorded in "), none.stdout

    shown = cli("show", ok["run_id"]).stdout
    assert f"run       {ok['run_id']}" in shown
    assert "status    completed" in shown
    steps = shown[shown.index("STEP") :].splitlines()
    assert steps[0].split() == ["STEP", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"]
    assert steps[1].split()[:3] == ["fetch", "completed", "1"]
    assert steps[1].split()[-1] == '{"n":3}'


_NO_ROOT_POWERS = ["dac_override", "dac_read_search", "fowner"]


def _without_root_powers(cli: Cli, *, readable: bool) -> list[str]:
    """Take the state directory away from this user (readable: still listable, not writable), and
    return the command prefix that runs the CLI without the powers that would ignore it: as root,
    setpriv drops the capabilities that override file permissions (the directory goes to nobody)."""
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif (setpriv := shutil.which("setpriv")) is not None:
        caps = ",".join(f"-{cap}" for cap in _NO_ROOT_POWERS)
        prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
        for path in (cli.state_dir, *cli.state_dir.rglob("*")):
            os.chown(path, 65534, -1)  # nobody: root's own files would still be its own
    else:
        pytest.skip("running as root without setpriv: permissions cannot be taken away")
    for path in cli.state_dir.rglob("*"):
        path.chmod(0o444 if path.is_file() else 0o555)
    cli.state_dir.chmod(0o555 if readable else 0o000)
    return prefix


def _as(prefix: list[str], cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *COMMAND, *args],
        cwd=cli.root,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_state_directory_that_cannot_be_read_is_one_clear_error_for_every_command(cli: Cli) -> None:
    # Exit 2, bad configuration, as serve exits for the same cause (before: 1, as for a failed run).
    ok = cli.json("run", cli.write("demo.json", DEMO))
    prefix = _without_root_powers(cli, readable=False)
    try:
        for args in (["runs"], ["show", ok["run_id"]], ["health"], ["status"], ["run", "demo.json"]):
            result = _as(prefix, cli, *args)
            assert result.returncode == 2, (args, result.stderr)
            line = single_error_line(result.stderr)
            assert "internal error" not in line, args
            assert f"cannot read the state directory {cli.state_dir}: Permission denied" in line, args
        served = _as(prefix, cli, "serve")
        assert served.returncode == 2, served.stderr
        assert f"state store {cli.state_dir}: cannot create" in single_error_line(served.stderr)
    finally:
        cli.state_dir.chmod(0o700)


def test_runs_and_show_read_a_state_directory_they_cannot_write(cli: Cli) -> None:
    ok = cli.json("run", cli.write("demo.json", DEMO))
    prefix = _without_root_powers(cli, readable=True)
    try:
        listed = _as(prefix, cli, "runs", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["run_id"] for r in json.loads(listed.stdout)] == [ok["run_id"]]
        shown = _as(prefix, cli, "show", ok["run_id"])
        assert shown.returncode == 0, shown.stderr
        assert "status    completed" in shown.stdout
    finally:
        cli.state_dir.chmod(0o700)


def test_runs_says_what_is_wrong_when_the_state_paths_are_of_the_wrong_kind(cli: Cli) -> None:
    cli.state_dir.mkdir()
    (cli.state_dir / "state.db").mkdir()  # the database file is a directory
    result = cli("runs")
    assert result.returncode == 2
    assert "state.db: exists but is not a regular file" in single_error_line(result.stderr)
    (cli.state_dir / "state.db").rmdir()
    cli.state_dir.rmdir()
    cli.state_dir.write_text("")  # the state directory is a file
    result = cli("runs")
    assert result.returncode == 2
    assert f"{cli.state_dir} exists but is not a directory" in single_error_line(result.stderr)


def test_runs_done_counts_the_finished_steps_whatever_their_outcome_as_the_live_display_does(
    cli: Cli,
) -> None:
    gated = {
        "name": "gated",
        "steps": [
            {"name": "ran", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "passed_over", "module": "core", "action": "echo", "parameters": {"message": 2},
             "run_if": "1 > 2"},
        ],
    }  # fmt: skip
    skipped = cli.json("run", cli.write("gated.json", gated))
    assert [s["status"] for s in skipped["steps"].values()] == ["completed", "skipped"]
    failed = cli.json_any("run", cli.write("flaky.json", flaky(cli.root / "absent")))
    assert [s["status"] for s in failed["steps"].values()] == ["completed", "failed", "skipped"]
    store = SqliteStore(cli.state_dir / "state.db")
    store.save_run(
        RunRecord(
            run_id="cut-short",
            workflow_name="slow",
            status=WorkflowStatus.INTERRUPTED,
            steps={
                "first": StepResult(name="first", status=TaskStatus.COMPLETED, attempts=1),
                "nap": StepResult(name="nap", status=TaskStatus.RUNNING, attempts=1),
                "after": StepResult(name="after"),
            },
        )
    )
    store.close()

    done = {row.split()[0]: row.split()[3] for row in cli("runs").stdout.splitlines()[1:]}
    assert done == {skipped["run_id"]: "2/2", failed["run_id"]: "3/3", "cut-short": "1/3"}


def test_runs_counts_the_steps_from_the_listing_without_decoding_a_step_or_item_row(cli: Cli) -> None:
    # It read every run whole (every step and map item decoded) only to count the steps done.
    step = {"name": "m", "module": "core", "action": "echo", "parameters": {"message": "{{item}}"}}
    mapped = {"name": "mapped", "steps": [{**step, "for_each": list(range(500))}, {**step, "name": "one",
              "for_each": None, "parameters": {"message": "{{steps.m.output}}"}}]}  # fmt: skip
    run_id = cli.json("run", cli.write("mapped.json", mapped))["run_id"]
    conn = sqlite3.connect(cli.state_dir / "state.db")
    try:
        with conn:  # a read that decoded any step or item row would now fail
            updated = conn.execute("UPDATE steps SET result = 'not JSON' WHERE run_id = ?", (run_id,))
            assert updated.rowcount == 502
    finally:
        conn.close()
    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert (row[0], row[2], row[3]) == (run_id, "completed", "2/2")


def test_cancel_reaches_a_run_that_a_cli_process_is_running(cli: Cli) -> None:
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    first = wait_for_line(proc, "nap", "running")[0]
    run_id = first.split()[1]

    listed = cli("runs").stdout
    assert f"running (pid {proc.pid})" in listed

    refused = cli("resume", run_id)
    assert refused.returncode == 1
    assert f"is running in process {proc.pid}" in single_error_line(refused.stderr)

    cancelled = cli("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.splitlines() == [
        f"asked process {proc.pid} to cancel run {run_id}",
        f"run {run_id}: cancelled",
    ]
    proc.communicate(timeout=30)
    assert proc.returncode == 130


def test_read_only_commands_never_mark_another_process_run_interrupted(cli: Cli) -> None:
    cli.write("slow.json", SLOW)
    store = SqliteStore(cli.state_dir / "state.db")
    store.save_run(
        RunRecord(
            run_id="elsewhere",
            workflow_name="slow",
            status=WorkflowStatus.RUNNING,
            steps={"first": StepResult(name="first")},
        )
    )
    store.close()

    for command in (["runs"], ["status"], ["health"]):
        assert cli(*command).returncode == 0, command
    shown = cli("show", "elsewhere").stdout
    assert "status    running (another process)" in shown
    cancel = cli("cancel", "elsewhere")
    assert cancel.returncode == 1
    assert "is running in another process" in single_error_line(cancel.stderr)
    resume = cli("resume", "elsewhere")
    assert resume.returncode == 1
    assert "pass --force" in single_error_line(resume.stderr)

    store = SqliteStore(cli.state_dir / "state.db")
    try:
        record = store.get_run("elsewhere")
    finally:
        store.close()
    assert record is not None and record.status is WorkflowStatus.RUNNING


def test_a_server_starting_on_the_state_leaves_a_live_cli_run_running(cli: Cli) -> None:
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    run_id = wait_for_line(proc, "nap", "running")[0].split()[1]
    server = subprocess.Popen(
        [*COMMAND, "serve"], cwd=cli.root, env=cli.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdin is not None and server.stdout is not None
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "get_system_status", "arguments": {}}}  # fmt: skip
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call):
            server.stdin.write(json.dumps(message) + "\n")
            server.stdin.flush()
        reply: dict[str, Any] = {}
        while reply.get("id") != 2:  # notifications may come first
            reply = json.loads(server.stdout.readline())
        assert "result" in reply, reply  # the server's engine has started (and recovered the state)
        server.stdin.close()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for pipe in (server.stdout, server.stderr):
            assert pipe is not None
            pipe.close()

    assert cli.json("show", run_id)["status"] == "running"
    assert f"running (pid {proc.pid})" in cli("runs").stdout
    cancelled = cli("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert cli.json("show", run_id)["status"] == "cancelled"


@dataclass
class StdioServer:
    proc: subprocess.Popen[str]
    call: Callable[[str, dict[str, Any]], dict[str, Any]]  # (tool, arguments) -> the tool's result


@contextlib.contextmanager
def serving(cli: Cli) -> Iterator[StdioServer]:
    """A real stdio server on ``cli``'s state, initialized."""
    server = subprocess.Popen(
        [*COMMAND, "serve"], cwd=cli.root, env=cli.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout
    ids = iter(range(2, 1_000))

    def send(message: dict[str, Any]) -> None:
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        request_id = next(ids)
        send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
              "params": {"name": tool, "arguments": arguments}})  # fmt: skip
        reply: dict[str, Any] = {}
        while reply.get("id") != request_id:  # notifications may come first
            reply = json.loads(stdout.readline())
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    try:
        send(INITIALIZE)
        assert json.loads(stdout.readline())["id"] == 1
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield StdioServer(server, call)
    finally:
        stdin.close()
        try:
            server.wait(timeout=30)
        finally:
            reap(server)


def test_the_server_refuses_to_resume_a_live_cli_run_naming_the_process_and_what_to_do(cli: Cli) -> None:
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    run_id = wait_for_line(proc, "nap", "running")[0].split()[1]
    try:
        with serving(cli) as server:
            call = server.call
            assert call("get_workflow_run", {"run_id": run_id})["structuredContent"]["status"] == "running"
            refused = call("resume_workflow_run", {"run_id": run_id, "wait": False})
            assert refused["isError"] is True
            text = refused["content"][0]["text"]
            assert f"is running in CLI process {proc.pid}" in text, text
            assert f"codomyrmex-orchestration cancel {run_id}" in text, text
        # Nothing of the run started a second time: the CLI still runs it, alone.
        assert f"running (pid {proc.pid})" in cli("runs").stdout
        record = cli.json("show", run_id)
        assert record["steps"]["nap"]["attempts"] == 1 and record["steps"]["after"]["status"] == "pending"
    finally:
        cli("cancel", run_id)
        try:
            proc.communicate(timeout=30)
        finally:
            reap(proc)
    assert proc.returncode == 130


def test_the_server_cancels_a_live_cli_run_by_asking_its_process_as_cli_cancel_does(cli: Cli) -> None:
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    run_id = wait_for_line(proc, "nap", "running")[0].split()[1]
    try:
        with serving(cli) as server:
            call = server.call
            cancelled = call("cancel_workflow_run", {"run_id": run_id})
            assert cancelled["isError"] is False, cancelled
            assert cancelled["structuredContent"]["status"] == "cancelled"
            again = call("cancel_workflow_run", {"run_id": run_id})
            assert again["isError"] is True
            assert "is cancelled; only a running run can be cancelled" in again["content"][0]["text"]
        proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 130
    assert cli.json("show", run_id)["status"] == "cancelled"


def test_a_second_server_on_a_served_state_directory_exits_2_naming_it_and_the_first_server_pid(
    cli: Cli,
) -> None:
    with serving(cli) as first:
        second = cli("serve")
        assert second.returncode == 2
        line = single_error_line(second.stderr)
        assert str(cli.state_dir) in line and f"another server (process {first.proc.pid})" in line, line
        # The first server still serves, and CLI runs and readers still work beside it.
        assert first.call("list_workflows", {})["isError"] is False
        assert cli.json("run", cli.write("demo.json", DEMO))["status"] == "completed"
        assert cli("runs").returncode == 0 and cli("status").returncode == 0
        first.proc.kill()  # kill -9: the kernel drops its lock, nothing stale is left
        first.proc.wait(timeout=30)
    with serving(cli) as third:
        assert third.call("list_workflows", {})["isError"] is False


def test_run_holds_its_owner_lock_from_before_the_run_is_first_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server (or any engine that recovers the state directory) may start at any moment of a CLI run;
    here one recovers it the moment the run is first recorded (its ``run.started``, before any step)."""
    from codomyrmex_orchestration import cli as command_line
    from codomyrmex_orchestration.compose import build_engine
    from codomyrmex_orchestration.config import Settings
    from codomyrmex_orchestration.core._run_owners import owner_alive

    settings = Settings(data_dir=tmp_path)
    engine = build_engine(settings, recover=False)  # as `run` opens it
    seen: list[tuple[bool, list[str]]] = []

    def server_starts(event: str, payload: dict[str, Any]) -> None:
        if event != "run.started":
            return
        engine.store.flush()  # the run's first record is committed: what a starting server reads
        server_store = SqliteStore(settings.state_db)
        try:
            seen.append((owner_alive(settings.state_dir, payload["run_id"]), server_store.recover()))
        finally:
            server_store.close()

    engine.workflow_manager.add_listener(server_starts)
    try:
        engine.workflow_manager.create_workflow(DEMO)
        args = command_line.build_parser("run").parse_args(["run", "demo", "--json"])
        code = command_line._run_workflow(engine, settings, args, "demo", {}, command_line._Sigint(engine))
    finally:
        engine.shutdown()
    assert seen == [(True, [])]  # owned already: the recovery left the run alone
    assert code == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"


def test_a_sub_run_of_a_killed_cli_run_reads_as_gone_and_resuming_the_parent_resumes_it(cli: Cli) -> None:
    effects, gate, fifo = cli.root / "effects.txt", cli.root / "gate", cli.root / "started.fifo"
    os.mkfifo(fifo)
    gate.touch()
    wait = f"if [ -e {gate} ]; then echo $$ > {fifo}; exec sleep 60; fi"
    inner = {"name": "inner", "steps": [
        {"name": "first", "module": "shell", "action": "run",
         "parameters": {"shell": True, "command": f"echo first >> {effects}"}},
        {"name": "wait", "module": "shell", "action": "run", "dependencies": ["first"],
         "parameters": {"shell": True, "command": wait}},
    ]}  # fmt: skip
    (cli.root / "config" / "inner.json").write_text(json.dumps(inner), encoding="utf-8")
    outer = {"name": "outer", "steps": [
        {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "inner"}},
        {"name": "done", "module": "core", "action": "echo", "parameters": {"message": 1},
         "dependencies": ["sub"]},
    ]}  # fmt: skip
    proc = cli.popen("run", cli.write("outer.json", outer))
    sleeper = int(fifo.read_text())  # the sub-run's `wait` step has started (its parents committed)
    try:
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        os.kill(sleeper, signal.SIGKILL)
    runs = {r["workflow_name"]: r["run_id"] for r in cli.json("runs")}
    parent, child = runs["outer"], runs["inner"]

    # Nothing runs it: it reads as its top-level run does, and says what to do.
    assert "status    running (its CLI process is gone)" in cli("show", child).stdout
    cancel = cli("cancel", child)
    assert cancel.returncode == 1
    line = single_error_line(cancel.stderr)
    assert f"sub-run of run {parent}, started by a CLI process that is gone" in line, line
    assert f"resume {parent}" in line

    gate.unlink()
    resumed = cli.json_any("resume", parent)
    assert resumed["status"] == "completed", resumed
    assert resumed["steps"]["sub"]["output"]["run_id"] == child
    assert [(r["run_id"], r["status"]) for r in cli.json("runs", "--workflow", "inner")] == [
        (child, "completed")
    ]
    assert effects.read_text().splitlines() == ["first"]  # kept, not run again


def test_cancel_of_a_finished_run_says_there_is_nothing_to_cancel(cli: Cli) -> None:
    record = cli.json("run", cli.write("demo.json", DEMO))
    result = cli("cancel", record["run_id"])
    assert result.returncode == 1
    assert "already ended (completed); nothing to cancel" in single_error_line(result.stderr)


def effect(record: Path) -> dict[str, Any]:
    """One shell step that appends a line to ``record`` each time it runs, then fails (so the run stays
    resumable); it first sleeps 5 s when a file named ``slow`` exists next to ``record``."""
    command = f"echo $$ >> {record}; if [ -f {record.parent / 'slow'} ]; then sleep 5; fi; exit 1"
    step = {
        "name": "effect",
        "module": "shell",
        "action": "run",
        "parameters": {"shell": True, "command": command},
    }
    return {"name": "effect", "steps": [step]}


def test_resume_is_refused_before_it_runs_anything_while_another_process_owns_the_run(cli: Cli) -> None:
    from codomyrmex_orchestration.core._run_owners import RunOwnership

    effects = cli.root / "effects.txt"
    failed = cli.json_any("run", cli.write("effect.json", effect(effects)))
    run_id = failed["run_id"]
    assert failed["status"] == "failed"
    # The lock is what another `resume` holds from before it starts the run until it ends: the record
    # still says failed, and the lock alone must decide who resumes.
    with RunOwnership(cli.state_dir, run_id):
        refused = cli("resume", run_id)
    assert refused.returncode == 1
    line = single_error_line(refused.stderr)
    assert f"run {run_id} is running in process {os.getpid()}" in line, line
    assert refused.stdout == ""
    assert effects.read_text().count("\n") == 1  # the step never ran again
    assert cli.json_any("show", run_id)["steps"]["effect"]["attempts"] == 1


def test_two_resumes_started_at_once_run_the_steps_once(cli: Cli) -> None:
    effects = cli.root / "effects.txt"
    run_id = cli.json_any("run", cli.write("effect.json", effect(effects)))["run_id"]
    (cli.root / "slow").touch()  # the resumed step lasts 5 s: both processes start within it
    procs = [cli.popen("resume", run_id) for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate(timeout=30)) for p in procs]
    assert effects.read_text().count("\n") == 2, results  # the first run and exactly one resume
    [loser] = [r for r in results if not r[1]]
    assert loser[0] == 1
    assert f"run {run_id} is running in process" in single_error_line(loser[2])
    [winner] = [r for r in results if r[1]]
    assert "of effect failed" in winner[1] and "Traceback" not in winner[2]


@dataclass
class GatedSubRun:
    """A failed run of ``outer`` (``parent``) whose sub-run of ``inner`` (``child``) failed at its one
    step. That step appends a line to ``effects`` each time it runs and passes from now on; the first
    run of it waits at a gate: :meth:`at_gate` returns once it is there, :meth:`release` lets it go."""

    parent: str
    child: str
    effects: Path
    started: Path
    release_fifo: Path

    def at_gate(self) -> None:
        self.started.read_text()  # the gated step writes its pid once it holds the gate

    def release(self) -> None:
        self.release_fifo.write_text("go\n")

    def runs_of_the_step(self) -> int:
        return self.effects.read_text().count("\n")


def gated_sub_run(cli: Cli) -> GatedSubRun:
    effects, gate, ok = cli.root / "effects.txt", cli.root / "gate", cli.root / "ok"
    started, release = cli.root / "started.fifo", cli.root / "release.fifo"
    os.mkfifo(started)
    os.mkfifo(release)
    command = (
        f"echo $$ >> {effects}; if mv {gate} {gate}.taken 2>/dev/null; then echo $$ > {started}; "
        f"read x < {release}; fi; test -f {ok}"
    )
    inner = {"name": "inner", "steps": [
        {"name": "effect", "module": "shell", "action": "run",
         "parameters": {"shell": True, "command": command}},
    ]}  # fmt: skip
    (cli.root / "config" / "inner.json").write_text(json.dumps(inner), encoding="utf-8")
    outer = {"name": "outer", "steps": [
        {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "inner"}},
        {"name": "done", "module": "core", "action": "echo", "parameters": {"message": 1},
         "dependencies": ["sub"]},
    ]}  # fmt: skip
    failed = cli.json_any("run", cli.write("outer.json", outer))
    assert failed["status"] == "failed", failed
    [child] = [r["run_id"] for r in cli.json("runs", "--workflow", "inner")]
    ok.touch()
    gate.touch()
    return GatedSubRun(failed["run_id"], child, effects, started, release)


@pytest.mark.parametrize("first", ["sub-run", "parent"])
def test_resumes_of_a_sub_run_and_of_its_parent_at_once_run_the_sub_run_once(cli: Cli, first: str) -> None:
    """The parent's resume takes its failed sub-run over in place; a resume of the sub-run itself must
    not run it beside that, whichever starts first."""
    runs = gated_sub_run(cli)
    first_id, second_id = (runs.child, runs.parent) if first == "sub-run" else (runs.parent, runs.child)
    proc = cli.popen("resume", first_id)
    try:
        runs.at_gate()  # the first resume runs the sub-run's step and holds it there
        second = cli("resume", second_id)
        runs.release()
        out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, (out, err)
    assert second.returncode == 1, (second.stdout, second.stderr)
    line = single_error_line(second.stderr)
    assert f"process {proc.pid}" in line, line
    assert second.stdout == ""
    assert runs.runs_of_the_step() == 2  # the first run and exactly one resume
    # The loser marked nothing: the parent resumes to completion with the sub-run the winner completed.
    resumed = cli.json_any("resume", runs.parent) if first == "sub-run" else cli.json("show", runs.parent)
    assert resumed["status"] == "completed", resumed
    assert resumed["steps"]["sub"]["output"]["run_id"] == runs.child
    assert runs.runs_of_the_step() == 2


@pytest.mark.parametrize(("first", "run"), [
    ("cli", "sub-run"), ("cli", "parent"), ("server", "sub-run"), ("server", "parent"),
])  # fmt: skip
def test_a_server_and_a_cli_resuming_a_sub_run_and_its_parent_at_once_run_the_sub_run_once(
    cli: Cli, first: str, run: str
) -> None:
    """``first`` resumes ``run`` and holds the sub-run's step at the gate; the other kind of process then
    resumes the other run and is refused, naming who runs it."""
    with serving(cli) as server:
        runs = gated_sub_run(cli)
        first_id, second_id = (runs.child, runs.parent) if run == "sub-run" else (runs.parent, runs.child)
        resumed: list[dict[str, Any]] = []
        if first == "cli":
            proc = cli.popen("resume", first_id)
            owner = f"process {proc.pid}"
        else:
            worker = threading.Thread(
                target=lambda: resumed.append(server.call("resume_workflow_run", {"run_id": first_id}))
            )
            worker.start()
            owner = f"process {server.proc.pid}"
        try:
            runs.at_gate()
            if first == "cli":
                result = server.call("resume_workflow_run", {"run_id": second_id})
                assert result["isError"] is True, result
                message = result["content"][0]["text"]
            else:
                second = cli("resume", second_id)
                assert second.returncode == 1, (second.stdout, second.stderr)
                message = single_error_line(second.stderr)
            runs.release()
        finally:
            if first == "cli":
                out, err = proc.communicate(timeout=60)
                reap(proc)
            else:
                worker.join(60)
        assert owner in message, message
        if first == "cli":
            assert proc.returncode == 0, (out, err)
        else:
            [record] = resumed
            assert record["isError"] is False and record["structuredContent"]["status"] == "completed", record
        assert runs.runs_of_the_step() == 2  # the first run and exactly one resume
    final = cli.json_any("resume", runs.parent) if run == "sub-run" else cli.json("show", runs.parent)
    assert final["status"] == "completed", final
    assert final["steps"]["sub"]["output"]["run_id"] == runs.child
    assert runs.runs_of_the_step() == 2


# ---------------------------------------------------------------------- validate and graph


def test_validate_lists_every_problem_with_its_file_and_step_and_exits_1(cli: Cli) -> None:
    good = cli.write("demo.json", DEMO)
    bad = cli.write("bad.json", BAD)
    result = cli("validate", good, bad)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{good}: demo: ok (2 steps, 2 levels)"
    problems = [line for line in lines if line.startswith(f"{bad}: bad: ")]
    assert len(problems) == 3
    assert any("dependency cycle: c -> d -> c" in p for p in problems)
    assert any("step 'b' depends on unknown step 'zzz'" in p for p in problems)
    assert any("step 'a'" in p and "unknown action core.nope" in p for p in problems)
    assert "1 of 2 files have problems" in result.stderr

    schema = cli.write(
        "schema.json", {"name": "s", "steps": [{"name": "x", "module": "core"}, {"module": 1}]}
    )
    listed = cli("validate", schema).stdout
    assert listed.startswith(f"{schema}: s: ")
    assert "steps.0.action" in listed and "steps.1.name" in listed  # both missing fields, by path

    assert cli("validate", good).returncode == 0

    # A schema problem hides none of the others.
    typo = {**BAD, "steps": [{**BAD["steps"][0], "paramters": {}}, *BAD["steps"][1:]]}
    listed = cli("validate", cli.write("typo.json", typo)).stdout
    assert "unknown field 'steps.0.paramters' (did you mean 'parameters'?)" in listed
    assert "dependency cycle: c -> d -> c" in listed and "unknown step 'zzz'" in listed
    assert len(listed.splitlines()) == 3, listed  # step a did not parse: its action is not checked


def test_validate_refuses_a_literal_for_each_longer_than_the_item_limit_naming_the_setting(cli: Cli) -> None:
    steps = [{"name": "each", "module": "core", "action": "echo", "for_each": [1, 2, 3, 4],
              "parameters": {"message": "{{item}}"}}]  # fmt: skip
    big = cli.write("big.json", {"name": "big", "steps": steps})
    cli.env["CODOMYRMEX_MAX_MAP_ITEMS"] = "3"
    checked = cli("validate", big)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        f"{big}: big: step 'each' for_each: CODOMYRMEX_MAX_MAP_ITEMS: the number of items of map step "
        "'each' is 4, above the limit of 3"
    ]
    cli.env["CODOMYRMEX_MAX_MAP_ITEMS"] = "4"
    assert cli("validate", big).stdout == f"{big}: big: ok (1 steps, 1 levels)\n"


def test_validate_refuses_default_parameters_over_their_limit_naming_the_setting(cli: Cli) -> None:
    document = {**DEMO, "parameters": {"n": "x" * 100}}  # {"n":"xx..."}: 108 bytes of JSON
    big = cli.write("big.json", document)
    cli.env["CODOMYRMEX_MAX_PARAMETERS_BYTES"] = "100"
    checked = cli("validate", big)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == [
        f"{big}: demo: parameters: CODOMYRMEX_MAX_PARAMETERS_BYTES: the default parameters every run "
        "starts with, in bytes of JSON, is 108, above the limit of 100"
    ]
    cli.env["CODOMYRMEX_MAX_PARAMETERS_BYTES"] = "108"
    assert cli("validate", big).stdout == f"{big}: demo: ok (2 steps, 2 levels)\n"


def test_validate_checks_steps_resources_against_the_capacities_run_would_have(cli: Cli) -> None:
    def needs(name: str, resources: dict[str, Any]) -> dict[str, Any]:
        step = {"name": "s", "module": "core", "action": "echo", "parameters": {"message": 1}}
        return {"name": name, "steps": [{**step, "resources": resources}]}

    ok = cli.write("ok.json", needs("res_ok", {"compute": 1, "memory": "256MB"}))
    checked = cli("validate", ok)
    assert (checked.returncode, checked.stdout) == (0, f"{ok}: res_ok: ok (1 steps, 1 levels)\n")
    assert cli("run", ok).returncode == 0

    bad = cli.write("bad.json", needs("res_bad", {"memory": "lots"}))
    checked = cli("validate", bad)
    assert checked.returncode == 1
    assert checked.stdout.startswith(f"{bad}: res_bad: step 's': resources.memory: 'lots' is not a size")
    assert "resources: resources" not in checked.stdout

    # resources.json beside the config tree adds a resource: validate grants it as run does.
    config = cli.root / "conf" / "workflows" / "production"
    config.mkdir(parents=True)
    gpus = {"resources": {"gpu": {"type": "custom", "capacity": 2, "burst_limit": 0, "unit": "gpus"}}}
    (cli.root / "conf" / "resources.json").write_text(json.dumps(gpus), encoding="utf-8")
    gpu = cli.write("gpu.json", needs("gpu", {"gpu": 1}))
    assert cli("validate", gpu).returncode == 1  # no gpu without the file
    assert cli("validate", gpu, "--config-dir", config).returncode == 0
    assert cli("run", gpu, "--config-dir", config).returncode == 0
    many = cli.write("many.json", needs("many", {"gpu": 3}))
    checked = cli("validate", many, "--config-dir", config)
    assert checked.returncode == 1 and "gpu: requested 3" in checked.stdout, checked.stdout


def nested(depth: int) -> str:
    """A workflow whose one step has a parameter ``depth`` lists deep (as text: json.dumps recurses)."""
    deep = "[" * depth + "]" * depth
    return (
        '{"name": "deep", "steps": [{"name": "a", "module": "core", "action": "set", '
        f'"parameters": {{"x": {deep}}}}}]}}'
    )


def test_deeply_nested_parameters_are_refused_by_validate_and_run_naming_the_limit(cli: Cli) -> None:
    ok = cli.write("demo.json", DEMO)
    for depth in (300, 500, 5000):
        deep = cli.root / f"deep{depth}.json"
        deep.write_text(nested(depth), encoding="utf-8")
        checked = cli("validate", deep, ok)
        assert checked.returncode == 1, checked.stdout + checked.stderr
        first, second = checked.stdout.splitlines()
        assert first.startswith(f"{deep}: ") and "nested deeper than 200 levels" in first, first
        assert second == f"{ok}: demo: ok (2 steps, 2 levels)"  # the next file is still checked
        ran = cli("run", deep)
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert "nested deeper than 200 levels" in single_error_line(ran.stderr)
    shallow = cli.root / "shallow.json"
    shallow.write_text(nested(199), encoding="utf-8")
    assert cli("run", shallow, "--json").returncode == 0


def test_graph_prints_mermaid_or_dot_for_a_file_or_a_registered_name(cli: Cli) -> None:
    demo = cli.write("demo.json", DEMO)
    mermaid = cli("graph", demo)
    assert mermaid.returncode == 0
    assert mermaid.stdout.splitlines()[0] == "graph TD"
    assert mermaid.stdout.splitlines()[1:] == [
        '    n0["fetch<br/>core.echo"]',
        '    n1["double<br/>core.echo"]',
        "    n0 --> n1",
    ]

    dot = cli("graph", demo, "--format", "dot").stdout
    assert dot.startswith('digraph "demo" {')
    assert '"fetch" -> "double"' in dot

    (cli.root / "config" / "demo.json").write_text(json.dumps(DEMO), encoding="utf-8")
    assert cli("graph", "demo").stdout == mermaid.stdout

    invalid = cli("graph", cli.write("bad.json", BAD))
    assert invalid.returncode == 2
    assert "problems" in single_error_line(invalid.stderr)


def test_graph_of_a_registered_name_keeps_the_runs_a_larger_run_limit_keeps(cli: Cli) -> None:
    # `graph NAME` opens the store for the workflows it keeps, and opening applies retention: with the
    # configured limit, not the default (10,000), or every run past the default was deleted.
    (cli.root / "config" / "demo.json").write_text(json.dumps(DEMO), encoding="utf-8")
    db = cli.state_dir / "state.db"
    SqliteStore(db).close()
    runs = 10_050
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executemany(
            "INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at) "
            "VALUES (?, 'demo', 'completed', '{}', ?, ?)",
            ((f"r{i}", float(i), float(i)) for i in range(runs)),
        )
        conn.commit()
    cli.env["CODOMYRMEX_RETENTION_RUNS"] = "20000"
    assert cli("graph", "demo").returncode == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == runs


# ---------------------------------------------------------------------- status and health


def test_status_and_health_report_the_engine_as_json_and_tables(cli: Cli) -> None:
    cli.json("run", cli.write("demo.json", DEMO))
    status = cli.json("status")
    assert status["overall_status"] == "healthy"
    assert status["runs"] == {"completed": 1}
    assert Path(status["state_dir"]) == cli.state_dir
    assert "compute" in status["resources"]

    health = cli.json("health")
    assert health["overall_status"] == "healthy"
    assert set(health["components"]) >= {"scheduler", "store", "resources", "workflows"}

    assert health["serving_process"] is None and status["serving_process"] is None

    table = cli("health").stdout.splitlines()
    assert table[0] == "overall healthy"
    # Said, since no server's verdict is there to show beside it.
    assert table[1] == (
        "server  no server serves this state directory (the verdict above is this process's own)"
    )
    assert table[2].split() == ["COMPONENT", "STATUS", "CRITICAL", "ERRORS", "REASON"]


def test_health_and_status_show_the_serving_process_verdict_beside_their_own_and_health_exits_1(
    cli: Cli,
) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    with socket.socket() as sock:  # a port nothing listens on: the server's engine cannot start
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    env = {**cli.env, "CODOMYRMEX_EXECUTOR": "dask", "CODOMYRMEX_DASK_SCHEDULER": address}
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "2s"
    server = subprocess.Popen(
        [*COMMAND, "serve"], cwd=cli.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdin is not None and server.stderr is not None
        server.stdin.write(json.dumps(INITIALIZE) + "\n")
        server.stdin.flush()
        # Its verdict is published before this line is logged; this process's own engine is local.
        for line in server.stderr:  # pytest-timeout bounds it
            if "server.engine_failed" in line:
                break
        health = cli("health")
        status = cli("status")
        as_json = cli.json_any("health")
    finally:
        reap(server)
    assert health.returncode == 1, health.stdout + health.stderr
    own, theirs = health.stdout.splitlines()[:2]
    assert own == "overall healthy"
    assert theirs.startswith(f"server  unhealthy (the server, pid {server.pid}): engine: "), theirs
    assert "CODOMYRMEX_DASK_SCHEDULER" in theirs and address in theirs
    assert status.stdout.splitlines()[1].startswith("server      unhealthy (the server, pid ")
    assert as_json["overall_status"] == "healthy"
    assert as_json["serving_process"]["status"] == "unhealthy"
    assert as_json["serving_process"]["pid"] == server.pid


# ---------------------------------------------------------------------- a terminal


def run_in_terminal(cli: Cli, args: Sequence[str | Path], deadline: float = 60) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its stdin/stdout/stderr; return (exit code, output).

    Fails if the command has not ended within ``deadline`` seconds (it is killed).
    """
    master, slave = pty.openpty()
    env = dict(cli.env, TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen(
        [*COMMAND, *map(str, args)], cwd=cli.root, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    end = time.monotonic() + deadline
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([master], [], [], left)[0]:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{args} did not end within {deadline}s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", errors="replace")


def test_run_on_a_terminal_draws_a_live_step_table_and_progress_bar(cli: Cli) -> None:
    code, output = run_in_terminal(cli, ["run", cli.write("demo.json", DEMO)])
    assert code == 0, output
    for header in ("Step", "Status", "Attempt", "Duration", "Detail"):
        assert header in output
    assert "━━━━━━━━━━" in output  # the bar
    assert "2/2 steps done" in output
    assert "\x1b[" in output  # drawn with terminal control codes, in place
    assert "of demo completed in" in output


def wide(count: int) -> dict[str, Any]:
    """``count`` independent core.set steps."""
    steps = [
        {"name": f"s{i}", "module": "core", "action": "set", "parameters": {"i": i}} for i in range(count)
    ]
    return {"name": "wide", "steps": steps}


def test_a_big_run_on_a_terminal_finishes_about_as_fast_as_piped(cli: Cli) -> None:
    # 5,000 steps take well under 10 s piped; a display that redraws every step on the engine's thread
    # (its cost growing with the run) took minutes here.
    code, output = run_in_terminal(cli, ["run", cli.write("wide.json", wide(5000))], deadline=60)
    assert code == 0, output[-2000:]
    assert "5000/5000 steps done" in output
    assert "of wide completed in" in output


def test_the_live_display_draws_on_its_own_clock_a_bounded_view_of_a_big_run() -> None:
    import io
    import time

    from rich.console import Console

    from codomyrmex_orchestration._cli_display import LiveDisplay
    from codomyrmex_orchestration.core.models import TaskStatus, utcnow

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=40)
    names = [f"s{i}" for i in range(5000)]
    display = LiveDisplay({n: StepResult(name=n) for n in names}, console)
    began = time.monotonic()
    display.start("r1", "wide")
    try:
        for name in names:
            display.on_step(None, StepResult(name=name, status=TaskStatus.RUNNING, attempts=1))  # type: ignore[arg-type]  # the record is not read
            now = utcnow()
            done = StepResult(
                name=name, status=TaskStatus.COMPLETED, attempts=1, started_at=now, completed_at=now, output=1
            )
            display.on_step(None, done)  # type: ignore[arg-type]  # the record is not read
        display.on_step(None, StepResult(name="s7", status=TaskStatus.FAILED, attempts=1))  # type: ignore[arg-type]  # the record is not read
    finally:
        display.stop()
    elapsed = time.monotonic() - began
    frames = out.getvalue().count("run r1 of wide")
    # Drawn by rich's refresh thread a few times a second, never once per transition (10,001 here).
    assert 1 <= frames <= 10 * elapsed + 3, (frames, elapsed)
    last = out.getvalue().rsplit("run r1 of wide", 1)[1]
    assert "5000/5000 steps done" in last and ", 1 failed" in last
    assert "s7" in last and "failed" in last  # the failed step is shown
    assert len(last.splitlines()) < 40  # a bounded view: counts and a few steps, not 5,000 rows


def test_run_with_executor_dask_runs_the_steps_on_a_local_dask_cluster(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    workflow = tmp_path / "wf.json"
    workflow.write_text(
        json.dumps(
            {
                "name": "on_dask",
                "steps": [
                    {
                        "name": "pid",
                        "module": "python",
                        "action": "call",
                        "parameters": {"function": "os:getpid"},
                    }
                ],
            }
        )
    )
    env = {**os.environ, "CODOMYRMEX_DASK_N_WORKERS": "1"}
    args = [sys.executable, "-m", "codomyrmex_orchestration", "run", str(workflow), "--json"]
    args += ["--executor", "dask", "--state-dir", str(tmp_path / "state"), "--config-dir", str(tmp_path)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    record = json.loads(out)
    assert record["status"] == "completed"
    pid = record["steps"]["pid"]["output"]
    assert isinstance(pid, int) and pid != proc.pid  # ran in a Dask worker process, not the CLI


@pytest.mark.parametrize("level", ["error", "warning"])
def test_dasks_loggers_follow_the_log_level_asked_for(tmp_path: Path, level: str) -> None:
    # Before, distributed's scheduler, nanny and comms logged ~34 INFO lines whatever --log-level said.
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env |= {"CODOMYRMEX_DATA_DIR": str(tmp_path), "CODOMYRMEX_DASK_N_WORKERS": "1"}
    args = [sys.executable, "-m", "codomyrmex_orchestration", "run", "fan_out_join", "--json"]
    args += ["--executor", "dask", "--log-level", level]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "completed"
    assert " INFO " not in done.stderr and "distributed.scheduler" not in done.stderr, done.stderr[-2000:]


def test_run_enforces_the_python_call_module_allow_list_from_the_environment(cli: Cli) -> None:
    def workflow(function: str) -> dict[str, Any]:
        parameters = {"function": function, "args": [] if function == "os:getcwd" else [[1, 2]]}
        step = {"name": "call", "module": "python", "action": "call", "parameters": parameters}
        return {"name": "allow_list", "steps": [step]}

    env = {**cli.env, "CODOMYRMEX_PYTHON_CALL_ALLOW": "json"}
    allowed = subprocess.run(
        [*COMMAND, "run", str(cli.write("ok.json", workflow("json:dumps"))), "--json"],
        cwd=cli.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert allowed.returncode == 0, allowed.stderr
    refused = subprocess.run(
        [*COMMAND, "run", str(cli.write("no.json", workflow("os:getcwd"))), "--json"],
        cwd=cli.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 1
    step = json.loads(refused.stdout)["steps"]["call"]
    assert step["status"] == "failed" and "CODOMYRMEX_PYTHON_CALL_ALLOW" in step["error"]["message"]


def test_cancels_waiting_on_a_stopped_cli_run_hold_no_thread_so_other_calls_go_on(cli: Cli) -> None:
    # Each cancel_workflow_run waits up to 10 s for the CLI process to let go of the run. That wait held
    # one of the server's 16 call threads: 20 of them on a CLI process that does not answer (stopped,
    # as by Ctrl-Z) blocked every call that needs a thread (here get_workflow_run) until they gave up.
    cancels = 20
    proc = cli.popen("run", cli.write("slow.json", SLOW))
    run_id = wait_for_line(proc, "nap", "running")[0].split()[1]
    try:
        with serving(cli) as server:
            call = server.call
            assert call("get_workflow_run", {"run_id": run_id})["structuredContent"]["status"] == "running"
            os.kill(proc.pid, signal.SIGSTOP)  # it answers no SIGINT now
            stdin, stdout = server.proc.stdin, server.proc.stdout
            assert stdin is not None and stdout is not None
            for request_id in range(100, 100 + cancels):
                params = {"name": "cancel_workflow_run", "arguments": {"run_id": run_id}}
                stdin.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                        "params": params}) + "\n")  # fmt: skip
            reading = {"name": "get_workflow_run", "arguments": {"run_id": run_id}}
            stdin.write(json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                                    "params": reading}) + "\n")  # fmt: skip
            stdin.flush()
            replies: list[dict[str, Any]] = []
            while not replies or replies[-1].get("id") != 99:
                reply = json.loads(stdout.readline())
                if "id" in reply:
                    replies.append(reply)
            # The reading came back while every cancel still waited on the stopped process.
            assert [r["id"] for r in replies] == [99], [r["id"] for r in replies]
            # The owner goes away (killed: a second SIGINT from a late cancel would be its "quit at
            # once"): every cancel answers then, with the run as it stands, well before its 10 s.
            proc.kill()
            while len(replies) < 1 + cancels:
                reply = json.loads(stdout.readline())
                if "id" in reply:
                    replies.append(reply)
    finally:
        reap(proc)
    results = [r["result"] for r in replies[1:]]
    # A cancel the server reached only after the kill finds the owner gone: nothing runs the run any
    # more, which it says (the others answer with the run as it stands).
    errors = {r["content"][0]["text"] for r in results if r["isError"]}
    assert all("by a CLI process that is gone" in e and "nothing to cancel" in e for e in errors), errors
    assert {r["structuredContent"]["run_id"] for r in results if not r["isError"]} <= {run_id}, results


def test_run_of_a_step_listing_a_file_name_that_is_not_utf8_fails_the_step_and_ends(cli: Cli) -> None:
    """``os.listdir`` decodes such a name to lone surrogates, which the store refused: the recording
    callback failed, the run never ended and the CLI waited for ever. Now the step fails saying why."""
    folder = cli.root / "names"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.txt")).touch()
    parameters = {"function": "os:listdir", "args": [str(folder)]}
    step = {"name": "ls", "module": "python", "action": "call", "parameters": parameters}
    done = cli("run", cli.write("ls.json", {"name": "ls", "steps": [step]}), "--json", timeout=60)
    assert done.returncode == 1, done.stderr
    assert "callback_failed" not in done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "failed"
    error = record["steps"]["ls"]["error"]["message"]
    assert "its output[0] holds text that is not valid UTF-8 ('caf\\udce9.txt'" in error
    shown = cli("show", record["run_id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["steps"]["ls"]["status"] == "failed"


def test_a_param_that_is_not_utf8_is_a_usage_error_and_utf8_under_a_c_locale_is_read_right(cli: Cli) -> None:
    """``--param`` bytes that are not UTF-8 were an internal error (the parameters' JSON encoder refused
    the lone surrogates Python decodes them to), exit 1; so was ``Zoë`` under a C locale without UTF-8 mode,
    whose bytes are UTF-8."""
    greet = cli.write("greet.json", {**DEMO, "name": "greet", "parameters": {"n": "x"}})
    refused = cli("run", greet, "--param", os.fsdecode(b"n=\xff\xfe"))
    assert refused.returncode == 2
    line = single_error_line(refused.stderr)
    assert line.startswith("error: --param n: the value b'\\xff\\xfe' is not valid UTF-8"), line
    c_locale = {**cli.env, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run(
        [*COMMAND, "run", str(greet), "--param", "n=Zoë", "--json"],
        cwd=cli.root,
        env=c_locale,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["parameters"] == {"n": "Zoë"} and record["steps"]["double"]["output"] == "Zoë"
