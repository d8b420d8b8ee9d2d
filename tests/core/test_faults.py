"""Faults through the real engine: BaseException from actions, hangs that ignore cancellation, shell
children that outlive their command, a full disk under the state dir, SIGTERM mid-run.

For each: the engine stays up, the run ends in a truthful state, nothing completed is lost, and no
thread or process is left behind (threads counted with ``threading.enumerate``, processes found in /proc
by a unique token in their command line). Waits are bounded; nothing sleeps to hope.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus
from codomyrmex_orchestration.errors import StateStoreError
from tests.helpers.durable_steps import executions
from tests.helpers.log_spot import spot_log

REPO = Path(__file__).resolve().parents[2]


class _Custom(BaseException):
    """A BaseException that is not an Exception, as a careless plugin might raise."""


_RAISERS: dict[str, type[BaseException]] = {
    "keyboard": KeyboardInterrupt,
    "exit": SystemExit,
    "genexit": GeneratorExit,
    "custom": _Custom,
}


def _raise(params: dict[str, Any], ctx: ActionContext) -> Any:
    raise _RAISERS[params["kind"]]("raised by the action")


def _engine(tmp_path: Path, **kwargs: Any) -> OrchestrationEngine:
    options: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "config_dir": None,
        "projects_dir": tmp_path / "projects",
        "templates_dir": None,
        "max_workers": 2,
    }
    eng = OrchestrationEngine(**{**options, **kwargs})
    eng.registry.register(ActionDefinition("test", "raise", _raise))
    eng.registry.register(ActionDefinition("test", "echo", lambda p, c: p.get("value")))
    return eng


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    eng = _engine(tmp_path)
    yield eng
    eng.shutdown(timeout=10)


def _wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.05)
    return True


def _pids_with(token: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state != "Z":
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------- BaseException


@pytest.mark.parametrize("kind", sorted(_RAISERS))
def test_an_action_raising_a_base_exception_fails_its_step_by_type_and_the_worker_survives(
    engine: OrchestrationEngine, kind: str
) -> None:
    threads_before = threading.active_count()
    engine.workflow_manager.create_workflow(
        {
            "name": "raiser",
            "steps": [
                {"name": "before", "module": "test", "action": "echo", "parameters": {"value": 1}},
                {
                    "name": "bad",
                    "module": "test",
                    "action": "raise",
                    "dependencies": ["before"],
                    "parameters": {"kind": kind},
                },
                {"name": "beside", "module": "test", "action": "echo", "parameters": {"value": 2}},
            ],
        }
    )
    run = engine.execute_workflow("raiser", timeout=30)
    assert run.status is WorkflowStatus.FAILED
    bad = run.steps["bad"]
    assert bad.status is TaskStatus.FAILED and bad.error is not None
    assert bad.error.type == _RAISERS[kind].__name__
    assert run.steps["before"].output == 1 and run.steps["beside"].output == 2
    # The same workers go on: the next run completes, and no thread was lost or added for good.
    again = engine.execute_task(
        {"name": "after", "module": "test", "action": "echo", "parameters": {"value": 3}}
    )
    assert again.status is TaskStatus.COMPLETED and again.result == 3
    health = engine.health_check()
    assert health.overall_status == "healthy", health.issues
    assert threading.active_count() <= threads_before + engine.task_orchestrator.max_workers


# --------------------------------------------------------------------------- results that cannot be stored


class _Unstorable:
    """A plugin's output the store cannot encode: its repr (the store's fallback for non-JSON) raises."""

    def __str__(self) -> str:
        return "unstorable"

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _raise_with_a_file_name(folder: str) -> None:
    raise ValueError(f"cannot use {os.listdir(folder)[0]}")


@pytest.mark.parametrize("source", ["a file name in the output", "a file name in the error", "a plugin"])
def test_a_step_whose_result_cannot_be_stored_fails_saying_why_and_the_run_ends(
    tmp_path: Path, source: str
) -> None:
    """A name that is not UTF-8 (``os.listdir`` decodes it to lone surrogates) in a step's output or error,
    or an output the store cannot encode at all, used to make recording the step raise: the step never
    settled and the run ran for ever. Now the step fails with an error saying why and the run ends."""
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.txt")).touch()
    eng = _engine(tmp_path, allow_code_execution=True)
    eng.registry.register(ActionDefinition("test", "unstorable", lambda p, c: _Unstorable()))
    step = {
        "a file name in the output": {
            "module": "python", "action": "call",
            "parameters": {"function": "os:listdir", "args": [str(folder)]},
        },
        "a file name in the error": {
            "module": "python", "action": "call",
            "parameters": {"function": f"{__name__}:_raise_with_a_file_name", "args": [str(folder)]},
        },
        "a plugin": {"module": "test", "action": "unstorable"},
    }[source]  # fmt: skip
    try:
        eng.workflow_manager.create_workflow(
            {
                "name": "names",
                "steps": [
                    {"name": "bad", **step},
                    {"name": "after", "module": "test", "action": "echo", "dependencies": ["bad"]},
                    {"name": "beside", "module": "test", "action": "echo", "parameters": {"value": 2}},
                ],
            }
        )
        run = eng.execute_workflow("names", timeout=30)
        assert run.status is WorkflowStatus.FAILED, run.status
        bad = run.steps["bad"]
        assert bad.status is TaskStatus.FAILED and bad.error is not None and bad.output is None
        message = bad.error.message
        if source == "a file name in the output":
            assert "its output[0] holds text that is not valid UTF-8 ('caf\\udce9.txt'" in message
        elif source == "a file name in the error":
            assert "cannot use caf\ufffd.txt" in message  # the byte that is not UTF-8 shown replaced
        else:  # refused as it returns (an action's output must be a JSON value), before the store
            assert "its output is a _Unstorable, which JSON cannot hold" in message
        assert run.steps["after"].status is TaskStatus.SKIPPED
        assert run.steps["beside"].output == 2
        stored = eng.workflow_manager.get_run(run.run_id)  # read back from the SQLite state
        assert stored.steps["bad"].error == bad.error
        assert eng.health_check().overall_status == "healthy"
    finally:
        eng.shutdown(timeout=10)


# --------------------------------------------------------------------------- hangs


def test_a_hang_that_ignores_cancellation_times_out_keeps_capacity_and_shutdown_stays_bounded(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path, max_workers=1)
    release = threading.Event()
    entered = threading.Event()

    def hang(params: dict[str, Any], ctx: ActionContext) -> str:
        entered.set()
        release.wait(60)  # deaf to ctx.cancel_event
        return "late"

    engine.registry.register(ActionDefinition("test", "hang", hang))
    try:
        engine.workflow_manager.create_workflow(
            {
                "name": "hung",
                "steps": [
                    {
                        "name": "done_first",
                        "module": "test",
                        "action": "echo",
                        "parameters": {"value": "kept"},
                    },
                    {
                        "name": "stuck",
                        "module": "test",
                        "action": "hang",
                        "timeout": 0.3,
                        "dependencies": ["done_first"],
                    },
                ],
            }
        )
        started = time.monotonic()
        run = engine.execute_workflow("hung", timeout=30)
        elapsed = time.monotonic() - started
        assert run.status is WorkflowStatus.FAILED
        assert run.steps["stuck"].status is TaskStatus.TIMED_OUT
        assert run.steps["done_first"].output == "kept"
        assert elapsed < 5, f"the timeout of 0.3 s took {elapsed:.1f} s to land"
        assert entered.is_set()
        # One worker, still stuck in the hang: a new task runs anyway (its slot was handed on).
        task = engine.execute_task(
            {"name": "next", "module": "test", "action": "echo", "parameters": {"value": 1}}
        )
        assert task.status is TaskStatus.COMPLETED
        sched = engine.health_check().components["scheduler"].details
        assert sched["abandoned"] == 1
        stuck_threads = [
            t for t in threading.enumerate() if t.is_alive() and t.daemon and "orchestrator" in t.name
        ]
        assert stuck_threads
        started = time.monotonic()
        engine.shutdown(timeout=0.5)  # waits at most 0.5 s for the deaf thread, then leaves it (daemon)
        assert time.monotonic() - started < 5
    finally:
        release.set()  # let the abandoned thread return, so it ends before the leak check
        engine.shutdown(timeout=2)


# --------------------------------------------------------------------------- shell children


def _shell_workflow(engine: OrchestrationEngine, name: str, command: str, timeout: float) -> None:
    engine.workflow_manager.create_workflow(
        {
            "name": name,
            "steps": [
                {"name": "ok", "module": "test", "action": "echo", "parameters": {"value": "ok"}},
                {
                    "name": "sh",
                    "module": "shell",
                    "action": "run",
                    "timeout": timeout,
                    "dependencies": ["ok"],
                    "parameters": {"command": command, "shell": True},
                },
            ],
        }
    )


def test_shell_children_that_outlive_their_command_are_killed_with_it_on_timeout(
    engine: OrchestrationEngine,
) -> None:
    token = f"61.{uuid.uuid4().int % 10**6:06d}"
    _shell_workflow(engine, "kids", f"sleep {token} & sleep {token} & wait", timeout=0.5)
    run = engine.execute_workflow("kids", timeout=30)
    assert run.status is WorkflowStatus.FAILED
    assert run.steps["sh"].status is TaskStatus.TIMED_OUT
    assert run.steps["ok"].output == "ok"
    assert _wait_until(lambda: not _pids_with(token), 5), f"left behind: {_pids_with(token)}"


def test_a_setsid_escaper_outlives_the_step_which_still_ends_promptly_a_documented_limit(
    engine: OrchestrationEngine,
) -> None:
    """A child that leaves the process group with setsid cannot be found by the group kill: the step
    still times out promptly (we stop reading pipes it holds), but the escaper lives on. See
    docs/RELIABILITY.md."""
    token = f"62.{uuid.uuid4().int % 10**6:06d}"
    _shell_workflow(engine, "escape", f"setsid sleep {token} & sleep {token}", timeout=0.5)
    started = time.monotonic()
    try:
        run = engine.execute_workflow("escape", timeout=30)
        assert run.steps["sh"].status is TaskStatus.TIMED_OUT
        assert time.monotonic() - started < 10
        assert _wait_until(lambda: len(_pids_with(token)) == 1, 5), _pids_with(token)
    finally:
        for pid in _pids_with(token):
            os.kill(pid, signal.SIGKILL)
    assert _wait_until(lambda: not _pids_with(token), 5)


# --------------------------------------------------------------------------- disk full

_DISK_FULL_CHILD = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from codomyrmex_orchestration.core.actions import ActionDefinition
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    state = sys.argv[1]
    engine = OrchestrationEngine(state_dir=state, config_dir=None, projects_dir=sys.argv[2],
                                 templates_dir=None, max_workers=2)
    engine.registry.register(ActionDefinition("test", "blob", lambda p, c: "x" * 50_000 + str(p["i"])))
    steps = [{"name": f"s{i:02d}", "module": "test", "action": "blob", "parameters": {"i": i},
              "dependencies": [f"s{i-1:02d}"] if i else []} for i in range(40)]
    engine.workflow_manager.create_workflow({"name": "fill", "steps": steps})
    engine.store.flush()
    # From here the disk is "full": writes past 256 KiB fail with EFBIG, as ENOSPC would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    run = engine.execute_workflow("fill", timeout=60)
    health = engine.health_check()
    out = {"status": run.status.value,
           "outputs_ok": all(run.steps[f"s{i:02d}"].output == "x" * 50_000 + str(i) for i in range(40)),
           "overall": health.overall_status, "issues": health.issues,
           "store_status": health.components["store"].status}
    engine.shutdown(timeout=10)
    print(json.dumps(out), flush=True)
    """
)


def test_a_full_disk_mid_run_keeps_the_run_truthful_in_memory_and_health_names_the_store(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(tmp_path / "state"), str(tmp_path / "projects")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["status"] == "completed" and out["outputs_ok"]
    assert out["overall"] == "unhealthy" and out["store_status"] == "unhealthy"
    assert any(issue.startswith("store:") and "cannot save now" in issue for issue in out["issues"]), out[
        "issues"
    ]
    assert done.stderr.count("state_store_cannot_save") == 1  # the clear error in the log, once


def test_a_full_tmpfs_state_dir_mid_run_is_survived_and_reported(tmp_path: Path) -> None:
    """The same on a real 2 MiB filesystem (needs root to mount tmpfs; skipped otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        engine = _engine(tmp_path, max_workers=2, state_dir=mnt / "state")
        try:
            engine.registry.register(
                ActionDefinition("test", "blob", lambda p, c: "y" * 200_000 + str(p["i"]))
            )
            steps = [
                {
                    "name": f"s{i:02d}",
                    "module": "test",
                    "action": "blob",
                    "parameters": {"i": i},
                    "dependencies": [f"s{i - 1:02d}"] if i else [],
                }
                for i in range(30)
            ]
            engine.workflow_manager.create_workflow({"name": "fill", "steps": steps})
            run = engine.execute_workflow("fill", timeout=60)
            assert run.status is WorkflowStatus.COMPLETED, run.error
            assert all(run.steps[f"s{i:02d}"].output == "y" * 200_000 + str(i) for i in range(30))
            health = engine.health_check()
            assert health.overall_status == "unhealthy"
            assert health.components["store"].status == "unhealthy"
            assert "full" in health.components["store"].model_dump_json().lower()
            again = engine.execute_task(
                {"name": "t", "module": "test", "action": "echo", "parameters": {"value": 1}}
            )
            assert again.status is TaskStatus.COMPLETED  # the engine keeps working without durability
        finally:
            started = time.monotonic()
            engine.shutdown(timeout=10)
            assert time.monotonic() - started < 30
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --------------------------------------------------------------------------- SIGTERM

_SIGTERM_CHILD = textwrap.dedent(
    """
    import json, signal, sys, threading
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    state, marks, projects, go, token = sys.argv[1:6]
    engine = OrchestrationEngine(state_dir=state, config_dir=None, projects_dir=projects,
                                 templates_dir=None, max_workers=2)
    steps, prev = [], None
    for i in range(12):
        name = "gate" if i == 6 else f"s{i:02d}"
        if name == "gate":
            params = {"command": f"test -e {go} || sleep {token}", "shell": True}
            step = {"name": name, "module": "shell", "action": "run", "parameters": params}
        else:
            params = {"function": "tests.helpers.durable_steps:record", "args": [marks, name, i]}
            step = {"name": name, "module": "python", "action": "call", "parameters": params}
        step["dependencies"] = [prev] if prev else []
        steps.append(step)
        prev = name
    engine.workflow_manager.create_workflow({"name": "term", "steps": steps})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    seen = {}

    def on_step(event, payload):
        if event == "step.started" and payload["step"] == "gate":
            print("gate", payload["run_id"], flush=True)
        if payload.get("step") == "gate" or event.startswith("run."):
            seen[payload.get("step", "run")] = payload.get("status")

    engine.workflow_manager.add_listener(on_step)
    run = engine.execute_workflow("term", wait=False)
    stop.wait(60)
    engine.shutdown(timeout=10)  # the engine-level path a SIGTERM handler takes
    print("final", seen.get("run"), seen.get("gate"), flush=True)
    """
)


def test_sigterm_mid_run_cancels_running_work_flushes_and_the_run_resumes_to_completion(
    tmp_path: Path,
) -> None:
    state, marks, projects, go = (
        tmp_path / "state",
        tmp_path / "marks",
        tmp_path / "projects",
        tmp_path / "go",
    )
    marks.mkdir()
    token = f"63.{uuid.uuid4().int % 10**6:06d}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(state), str(marks), str(projects), str(go), token],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = ""
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["gate"], line
        run_id = line[1]
        # "sleep <token>": the child's own command line holds the token too, and matching it would send
        # the signal before the gate's step had started (the listener could then record its start last).
        assert _wait_until(lambda: bool(_pids_with(f"sleep {token}")), 10), "the gate's sleep never started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-3000:]
    assert out.split() == ["final", "cancelled", "cancelled"], out
    assert _wait_until(lambda: not _pids_with(f"sleep {token}"), 5), "the cancelled step's process survived"
    assert executions(str(marks)) == {f"s{i:02d}": 1 for i in range(6)}

    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=2
    )
    try:
        stopped = engine.workflow_manager.get_run(run_id)
        assert stopped.status is WorkflowStatus.CANCELLED  # flushed on the way out: not "interrupted"
        assert [n for n, s in stopped.steps.items() if s.status is TaskStatus.COMPLETED] == [
            f"s{i:02d}" for i in range(6)
        ]
        go.touch()
        final = engine.resume_run(run_id, timeout=60)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        assert executions(str(marks)) == {f"s{i:02d}": 1 for i in range(12) if i != 6}
        assert final.steps["s05"].output == 6 and final.steps["s11"].output == 12
    finally:
        engine.shutdown()


def test_a_run_that_ends_while_the_store_is_locked_stays_readable_and_is_saved_once_the_lock_goes(
    tmp_path: Path,
) -> None:
    """A run ending while another connection holds the database locked is read from memory (never
    "not found", never its stale stored row), new runs are refused naming the cause, and once the lock
    is released the run is committed: a restarted engine reads it COMPLETED."""
    gate = threading.Event()
    engine = _engine(tmp_path)
    db = tmp_path / "state" / "state.db"
    try:
        engine.registry.register(ActionDefinition("test", "gate", lambda p, c: gate.wait(30) and "passed"))
        steps = [{"name": "wait", "module": "test", "action": "gate"}]
        engine.workflow_manager.create_workflow({"name": "gated", "steps": steps})
        engine.store.flush()
        run_id = engine.execute_workflow("gated", wait=False).run_id
        with spot_log("state_store_saving_again") as logs:
            locker = sqlite3.connect(db, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                gate.set()
                ended = engine.workflow_manager.wait_run(run_id, timeout=60)
                assert ended.status is WorkflowStatus.COMPLETED
                record = engine.workflow_manager.get_run(run_id)  # left the active runs
                assert record.status is WorkflowStatus.COMPLETED and record.steps["wait"].output == "passed"
                listed = engine.workflow_manager.list_runs(steps=False)
                assert [(r.run_id, r.status) for r in listed] == [(run_id, WorkflowStatus.COMPLETED)]
                with pytest.raises(StateStoreError, match=r"new work is refused while .*database is locked"):
                    engine.execute_workflow("gated")
            finally:
                locker.execute("COMMIT")
                locker.close()
            assert logs.seen.wait(30), "saving did not resume after the lock was released"
        assert engine.workflow_manager.get_run(run_id).status is WorkflowStatus.COMPLETED
        assert engine.execute_workflow("gated", timeout=30).status is WorkflowStatus.COMPLETED
    finally:
        engine.shutdown(timeout=10)
    again = _engine(tmp_path)
    try:
        assert again.workflow_manager.get_run(run_id).status is WorkflowStatus.COMPLETED
    finally:
        again.shutdown(timeout=10)
