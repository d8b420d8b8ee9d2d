"""kill -9 of the server while a ``shell.run`` step runs: the step's processes die with it or are killed
at the restart, so a resume never runs the step while the first copy still does."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._procs import proc_start_time, reap_orphans, record_group
from tests.helpers.served import INITIALIZE, SCRIPT, reap, server_env

# The side effect is made by a background subshell: the parent-death signal reaches only the group's
# leader (sh), so this child survives the server unless the restarted engine kills its group. It ends once
# the test creates {release}: a copy lives exactly as long as the test needs, however slow the machine.
COMMAND = (
    "(echo start $$ >> {log}; while [ ! -e {release} ]; do sleep 0.05; done; echo end $$ >> {log}) & wait"
)


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """The file that lets every copy of the step end; made at teardown too, so no copy outlives a test."""
    path = tmp_path / "release"
    yield path
    path.touch()


def _overlaps(lines: list[str]) -> list[str]:
    """Copies of the step that wrote after a later copy had started: two ran at once."""
    current = None
    overlaps = []
    for line in lines:
        kind, who = line.split()
        if kind == "start":
            current = who
        elif who != current:
            overlaps.append(f"{who} ended after {current} started")
    return overlaps


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                return True
    return False


def _wait_until(done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    # Another process makes it true: there is no event to wait on across processes, so poll, bounded.
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _run_saved(db: Path, run_id: str) -> bool:
    if not db.exists():
        return False
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
        except sqlite3.OperationalError:  # the schema is still being created
            return False


@pytest.mark.timeout(120)
def test_a_step_killed_with_the_server_never_runs_twice_at_once_after_resume(
    tmp_path: Path, release: Path
) -> None:
    log = tmp_path / "effects.log"
    config = tmp_path / "config"
    config.mkdir()
    step = {
        "name": "append",
        "module": "shell",
        "action": "run",
        "parameters": {"command": COMMAND.format(log=log, release=release), "shell": True},
        "timeout": 60,
    }
    (config / "appender.json").write_text(json.dumps({"name": "appender", "steps": [step]}))
    env = server_env(tmp_path)

    server = subprocess.Popen(
        [str(SCRIPT), "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "execute_workflow", "arguments": {"workflow_name": "appender", "wait": False}},
        }
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call):
            server.stdin.write(json.dumps(message).encode() + b"\n")
            server.stdin.flush()
        reply: dict[str, Any] = {}
        while reply.get("id") != 2:  # notifications (e.g. resources/updated) may come first
            reply = json.loads(server.stdout.readline())
        run_id = reply["result"]["structuredContent"]["run_id"]
        _wait_until(lambda: log.exists() and bool(log.read_text().strip()), "the step never started")
        # The store writes behind (50 ms batches): the crash must come after the run is durable.
        _wait_until(lambda: _run_saved(tmp_path / "state" / "state.db", run_id), "the run was never saved")
        records = list((tmp_path / "state" / "procs").glob("*.json"))
        assert len(records) == 1, "the running step's process group is recorded in the state directory"
        first_group = int(records[0].name.split("-")[0])
        server.kill()  # kill -9
        server.wait(10)
    finally:
        reap(server)

    resume = subprocess.Popen(
        [str(SCRIPT), "resume", run_id, "--force", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Both copies are held until the second has started: had the first survived, it would end after.
        _wait_until(lambda: log.read_text().count("start") == 2, "the resumed step never started", 90)
        release.touch()
        out, err = resume.communicate(timeout=90)
    finally:
        release.touch()
        reap(resume)
    resumed = subprocess.CompletedProcess(resume.args, resume.returncode, out, err)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "completed"
    assert not _group_alive(first_group), "the first copy still runs after the resume finished"
    lines = log.read_text().splitlines()
    assert _overlaps(lines) == [], lines
    starts = [line for line in lines if line.startswith("start")]
    assert len(starts) == 2 and lines[-1] == "end " + starts[-1].split()[1], lines
    assert "procs.orphan_killed" in resumed.stderr
    assert not list((tmp_path / "state" / "procs").glob("*")), "records are removed once groups are gone"


def test_a_recycled_pid_is_never_killed_and_a_stale_record_is_dropped(tmp_path: Path) -> None:
    procs = tmp_path / "procs"
    procs.mkdir()
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        start = proc_start_time(bystander.pid)
        assert start is not None
        # A record naming the bystander's pid with another start time: the pid was recycled.
        (procs / f"{bystander.pid}-{start - 1}.json").write_text(
            json.dumps({"pid": bystander.pid, "start_time": start - 1})
        )
        (procs / "garbage.json").write_text("{not json")
        assert reap_orphans(procs) == []
        assert bystander.poll() is None, "a process that merely reuses a recorded pid was killed"
        assert not list(procs.iterdir())
        # The same pid with its true start time is the recorded group: it is killed.
        with record_group(procs, bystander.pid, step="s"):
            assert len(list(procs.glob("*.json"))) == 1
            os.link(next(procs.glob("*.json")), procs / "left-by-a-crash.json")
        assert reap_orphans(procs) == [bystander.pid]
        assert bystander.wait(10) == -9
    finally:
        reap(bystander)


@pytest.mark.timeout(120)
def test_an_engine_opening_the_state_never_kills_the_steps_of_a_live_cli_run(
    tmp_path: Path, release: Path
) -> None:
    log = tmp_path / "effects.log"
    step = {
        "name": "append",
        "module": "shell",
        "action": "run",
        "parameters": {"command": COMMAND.format(log=log, release=release), "shell": True},
    }
    workflow = tmp_path / "appender.json"
    workflow.write_text(json.dumps({"name": "appender", "steps": [step]}))
    (tmp_path / "config").mkdir()
    env = server_env(tmp_path)
    run = subprocess.Popen(
        [str(SCRIPT), "run", str(workflow), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    try:
        procs = tmp_path / "state" / "procs"
        _wait_until(
            lambda: procs.is_dir() and any(procs.glob("*.json")), "the step's group was never recorded"
        )
        # `status` builds an engine on the same state while the run's step is alive: it must leave the
        # live run's processes alone (they are a crash's orphans only once their engine is gone).
        status = subprocess.run(
            [str(SCRIPT), "status", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "procs.orphan_killed" not in status.stderr
        release.touch()  # the step was held alive through the status command
        out, err = run.communicate(timeout=60)
    finally:
        release.touch()
        reap(run)
    assert run.returncode == 0, err.decode()
    assert json.loads(out)["status"] == "completed"
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]
