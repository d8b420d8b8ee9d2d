"""shell.run runs real subprocesses: argv, strings, /bin/sh, cwd, env, stdin, exit codes, caps, and
kills the whole process group on cancellation, deadline and timeout."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)

REGISTRY = create_registry(load_plugins=False)
RUN = REGISTRY.get("shell", "run").func


def run(params: dict[str, Any], ctx: ActionContext | None = None) -> Any:
    return RUN(params, ctx or ActionContext("step"))


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (pid 1 here may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def gone_within(pid: int, seconds: float = 2.0) -> bool:
    # SIGKILL is delivered asynchronously; give the kernel a bounded moment to finish the process.
    end = time.monotonic() + seconds
    pause = threading.Event()
    while alive(pid):
        if time.monotonic() > end:
            return False
        pause.wait(0.01)
    return True


class Background:
    """Runs shell.run in a real thread and keeps its result or exception."""

    def __init__(self, params: dict[str, Any], ctx: ActionContext) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(params, ctx), name="shell-test")
        self._thread.start()

    def _run(self, params: dict[str, Any], ctx: ActionContext) -> None:
        try:
            self.result = RUN(params, ctx)
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def join(self) -> None:
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


def read_pids(fifo: Path) -> list[int]:
    # Opening a FIFO for reading blocks until the command opens it for writing: no guessing.
    with fifo.open() as f:
        return [int(p) for p in f.read().split()]


# ----------------------------------------------------------------------------- what it runs


def test_an_argv_list_runs_without_a_shell() -> None:
    out = run({"command": ["printf", "%s|", "a b", "$HOME"]})
    assert out == {"exit_code": 0, "stdout": "a b|$HOME|", "stderr": ""}


def test_a_string_command_is_split_with_shlex_and_not_interpreted_by_a_shell() -> None:
    out = run({"command": "printf '%s|' 'a b' c $HOME"})
    assert out["stdout"] == "a b|c|$HOME|"


def test_a_string_command_with_shell_true_runs_under_bin_sh() -> None:
    out = run({"command": "echo $((1 + 2)) | tr 3 x", "shell": True})
    assert out["stdout"] == "x\n"


def test_cwd_sets_the_working_directory(tmp_path: Path) -> None:
    out = run({"command": ["pwd"], "cwd": str(tmp_path)})
    assert Path(out["stdout"].strip()).resolve() == tmp_path.resolve()


def test_env_is_merged_over_the_inherited_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODOMYRMEX_TEST_INHERITED", "kept")
    out = run({"command": "echo $FOO $CODOMYRMEX_TEST_INHERITED", "shell": True, "env": {"FOO": "bar"}})
    assert out["stdout"] == "bar kept\n"


def test_env_clear_starts_from_an_empty_environment() -> None:
    out = run({"command": ["/usr/bin/env"], "env": {"ONLY": 1}, "env_clear": True})
    assert out["stdout"] == "ONLY=1\n"


def test_a_null_env_value_removes_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODOMYRMEX_TEST_DROP", "present")
    out = run(
        {"command": 'echo "[$CODOMYRMEX_TEST_DROP]"', "shell": True, "env": {"CODOMYRMEX_TEST_DROP": None}}
    )
    assert out["stdout"] == "[]\n"


def test_input_is_written_to_stdin_even_when_larger_than_a_pipe_buffer() -> None:
    assert run({"command": ["cat"], "input": "hello"})["stdout"] == "hello"
    big = "x" * 300_000
    assert run({"command": ["wc", "-c"], "input": big})["stdout"].strip() == "300000"


def test_non_zero_exit_fails_the_step_with_the_code_and_the_stderr_tail() -> None:
    with pytest.raises(StepFailedError) as info:
        run({"command": "echo doing; echo it broke >&2; exit 3", "shell": True})
    assert "exited with code 3" in str(info.value)
    assert "it broke" in str(info.value)


def test_check_false_returns_the_non_zero_exit_code_as_output() -> None:
    out = run({"command": "echo it broke >&2; exit 3", "shell": True, "check": False})
    assert out == {"exit_code": 3, "stdout": "", "stderr": "it broke\n"}


def test_output_beyond_max_output_bytes_is_cut_and_marked() -> None:
    out = run({"command": "head -c 5000 /dev/zero | tr '\\0' a", "shell": True, "max_output_bytes": 100})
    assert out["stdout"] == "a" * 100 + "\n…[truncated 4900 bytes]"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    out = run({"command": ["printf", "\\377ok"]})
    assert out["stdout"] == "\ufffdok"


def test_a_missing_program_fails_the_step_naming_it() -> None:
    with pytest.raises(StepFailedError, match="no-such-program-xyz"):
        run({"command": ["no-such-program-xyz"]})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"command": 42}, "parameters.command"),
        ({"command": []}, "parameters.command"),
        ({"command": ["ls"], "shell": True}, "parameters.shell"),
        ({"command": ["ls"], "comand": "typo"}, "parameters.comand"),
        ({"command": ["ls"], "timeout": -1}, "parameters.timeout"),
        ({"command": ["ls"], "cwd": "/no/such/dir"}, "parameters.cwd"),
        ({"command": ["ls"], "env": {"A": ["list"]}}, "parameters.env.A"),
        ({"command": ["ls"], "check": "yes"}, "parameters.check"),
    ],
)
def test_malformed_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        run(params)
    assert info.value.field == field


# ----------------------------------------------------------------------------- stopping


LONE_SLEEP = "echo $$ > {fifo}; exec sleep 30"
WITH_GRANDCHILD = "sleep 30 & echo $$ $! > {fifo}; wait"


@pytest.mark.timeout(15)
@pytest.mark.parametrize("script", [LONE_SLEEP, WITH_GRANDCHILD], ids=["sleep", "grandchild"])
@pytest.mark.parametrize("how", ["cancel_event", "deadline", "timeout"])
def test_stopping_kills_the_whole_process_group_within_a_second(
    tmp_path: Path, script: str, how: str
) -> None:
    fifo = tmp_path / "pids"
    os.mkfifo(fifo)
    params: dict[str, Any] = {"command": script.format(fifo=fifo), "shell": True}
    ctx = ActionContext("long")
    if how == "deadline":
        ctx.deadline = time.monotonic() + 0.5
    if how == "timeout":
        params["timeout"] = 0.5
    started = time.monotonic()
    job = Background(params, ctx)
    pids = read_pids(fifo)
    if how == "cancel_event":
        started = time.monotonic()
        ctx.cancel_event.set()
    job.join()

    assert job.finished_at is not None
    limit = 1.0 if how == "cancel_event" else 1.5  # deadline/timeout runs 0.5 s before being stopped
    assert job.finished_at - started < limit
    expected = StepCancelledError if how == "cancel_event" else StepTimeoutError
    assert isinstance(job.error, expected), job.error
    for pid in pids:
        assert gone_within(pid), f"process {pid} survived"


@pytest.mark.timeout(15)
def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    fifo = tmp_path / "pids"
    os.mkfifo(fifo)
    ctx = ActionContext("stubborn")
    job = Background({"command": f"trap '' TERM; echo $$ > {fifo}; exec sleep 30", "shell": True}, ctx)
    (pid,) = read_pids(fifo)
    started = time.monotonic()
    ctx.cancel_event.set()
    job.join()
    assert job.finished_at is not None and job.finished_at - started < 1.5
    assert isinstance(job.error, StepCancelledError)
    assert gone_within(pid)


@pytest.mark.timeout(15)
def test_background_jobs_left_behind_by_a_finished_command_are_killed(tmp_path: Path) -> None:
    fifo = tmp_path / "pids"
    os.mkfifo(fifo)
    job = Background(
        {"command": f"sleep 30 & echo $! > {fifo}; echo done", "shell": True}, ActionContext("s")
    )
    (straggler,) = read_pids(fifo)
    job.join()
    assert job.error is None
    assert job.result["stdout"] == "done\n"
    assert gone_within(straggler)


def test_an_already_cancelled_step_does_not_start_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ctx = ActionContext("s")
    ctx.cancel_event.set()
    with pytest.raises(StepCancelledError):
        run({"command": ["touch", str(marker)]}, ctx)
    assert not marker.exists()


@pytest.mark.timeout(15)
def test_a_process_that_left_the_group_does_not_hold_the_step_open(tmp_path: Path) -> None:
    fifo = tmp_path / "pids"
    os.mkfifo(fifo)
    started = time.monotonic()
    job = Background(
        {"command": f"setsid sleep 30 & echo $! > {fifo}; echo done", "shell": True}, ActionContext("s")
    )
    (escaped,) = read_pids(fifo)
    try:
        job.join()
        assert job.error is None
        assert job.result["stdout"] == "done\n"
        assert job.finished_at is not None and job.finished_at - started < 3.0
    finally:
        os.kill(escaped, signal.SIGKILL)  # it escaped our process group by design of this test
