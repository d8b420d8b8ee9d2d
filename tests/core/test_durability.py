"""Crash durability: kill -9 a process mid-run, restart on the same state dir, resume.

A 100-step chain runs in a subprocess; step 60 blocks on a FIFO nobody writes to. When it starts, the
test kills the process with SIGKILL, builds a new engine on the same state directory and resumes.
Each step leaves a file per execution, so re-executions are counted, not guessed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus
from tests.helpers.durable_steps import executions, read_line

REPO = Path(__file__).resolve().parents[2]
GATE_AT = 60
STEPS = 100

CHILD = textwrap.dedent(
    """
    import sys
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    state, marks, projects, fifo = sys.argv[1:5]
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )
    steps, prev = [], None
    for i in range(%(steps)d):
        if i == %(gate)d:
            gate = {"function": "tests.helpers.durable_steps:gate", "args": [marks, fifo]}
            steps.append({"name": "gate", "module": "python", "action": "call", "dependencies": [prev],
                          "parameters": gate})
            prev = "gate"
            continue
        name = f"s{i:03d}"
        value = "{{steps.%%s.output}}" %% prev if prev and prev != "gate" else i
        steps.append({"name": name, "module": "python", "action": "call",
                      "dependencies": [prev] if prev else [],
                      "parameters": {"function": "tests.helpers.durable_steps:record",
                                     "args": [marks, name, value]}})
        prev = name
    engine.workflow_manager.create_workflow({"name": "durable_chain", "steps": steps})
    engine.project_manager.create_project("durable_proj", "custom", description="made before the crash")

    def on_step(event, payload):
        if event == "step.started" and payload["step"] == "gate":
            print("gate", payload["run_id"], flush=True)

    engine.workflow_manager.add_listener(on_step)
    engine.execute_workflow("durable_chain", wait=True)
    """
) % {"steps": STEPS, "gate": GATE_AT}


def _killed_at_the_gate(script: str, tmp_path: Path) -> tuple[Path, Path, Path, Path, list[str]]:
    """Run ``script`` (argv: state dir, marks dir, projects dir, gate fifo) in a child process until it
    prints its first line (the gate step started), then kill -9 it: (state, marks, projects, fifo, the
    line's words)."""
    state, marks, projects = tmp_path / "state", tmp_path / "marks", tmp_path / "projects"
    marks.mkdir()
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(state), str(marks), str(projects), str(fifo)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        words = read_line(proc, timeout=60).split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return state, marks, projects, fifo, words


def test_kill_9_midway_then_resume_runs_no_completed_step_twice_and_loses_nothing(tmp_path: Path) -> None:
    state, marks, projects, fifo, words = _killed_at_the_gate(CHILD, tmp_path)
    assert words[0] == "gate"
    run_id = words[1]
    before = executions(str(marks))
    # The kill lands as the gate step starts: its function may or may not have begun.
    assert before.get("gate", 0) <= 1
    assert sum(n for step, n in before.items() if step != "gate") == GATE_AT

    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )
    try:
        assert run_id in engine.interrupted_runs
        interrupted = engine.workflow_manager.get_run(run_id)
        assert interrupted.status is WorkflowStatus.INTERRUPTED
        completed = [n for n, s in interrupted.steps.items() if s.status is TaskStatus.COMPLETED]
        assert len(completed) == GATE_AT
        assert interrupted.steps[f"s{GATE_AT - 1:03d}"].output == GATE_AT
        # Never left `running` (its start may not have been committed before the kill: then pending).
        assert interrupted.steps["gate"].status in (TaskStatus.INTERRUPTED, TaskStatus.PENDING)
        assert "durable_chain" in [w.name for w in engine.workflow_manager.list_workflows()]
        assert [p.name for p in engine.project_manager.list_projects()] == ["durable_proj"]

        fifo.unlink()  # the gate passes from now on
        final = engine.resume_run(run_id, timeout=60)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        assert final.run_id == run_id
        after = executions(str(marks))
        # It was running when the process died: it runs again, by design.
        assert after["gate"] == before.get("gate", 0) + 1
        reruns = {step: n for step, n in after.items() if step != "gate" and n != 1}
        assert reruns == {}, f"steps executed more than once: {reruns}"
        assert len(after) == STEPS
        assert final.steps[f"s{GATE_AT - 1:03d}"].output == GATE_AT  # kept from before the crash
        assert final.steps[f"s{STEPS - 1:03d}"].output == STEPS
    finally:
        engine.shutdown()


SUB_CHILD = textwrap.dedent(
    """
    import sys
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    state, marks, projects, fifo = sys.argv[1:5]
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )

    def call(name, deps, function, args):
        return {"name": name, "module": "python", "action": "call", "dependencies": deps,
                "parameters": {"function": "tests.helpers.durable_steps:" + function, "args": args}}

    engine.workflow_manager.create_workflow({"name": "inner", "steps": [
        call("i0", [], "record", [marks, "i0", 0]),
        call("i1", ["i0"], "record", [marks, "i1", 1]),
        call("gate", ["i1"], "gate", [marks, fifo]),
        call("i2", ["gate"], "record", [marks, "i2", 2]),
    ]})
    engine.workflow_manager.create_workflow({"name": "outer", "steps": [
        call("o0", [], "record", [marks, "o0", 0]),
        {"name": "sub", "module": "workflow", "action": "run", "dependencies": ["o0"],
         "parameters": {"workflow": "inner"}},
        call("o1", ["sub"], "record", [marks, "o1", 1]),
    ]})

    def on_step(event, payload):
        if event == "step.started" and payload["step"] == "gate":
            print("gate", payload["run_id"], flush=True)

    engine.workflow_manager.add_listener(on_step)
    engine.execute_workflow("outer", wait=True)
    """
)


def test_resuming_a_parent_after_kill_9_resumes_its_sub_run_in_place_without_redoing_its_steps(
    tmp_path: Path,
) -> None:
    state, marks, projects, fifo, words = _killed_at_the_gate(SUB_CHILD, tmp_path)
    child_id = words[1]
    before = executions(str(marks))
    assert {step: before.get(step) for step in ("o0", "i0", "i1", "i2", "o1")} == {
        "o0": 1, "i0": 1, "i1": 1, "i2": None, "o1": None
    }  # fmt: skip

    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )
    try:
        manager = engine.workflow_manager
        child = manager.get_run(child_id)
        parent_id = child.parent_run_id
        assert parent_id is not None
        assert sorted(engine.interrupted_runs) == sorted([parent_id, child_id])

        fifo.unlink()  # the gate passes from now on
        final = engine.resume_run(parent_id, timeout=60)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        # The same sub-run, resumed: no second run of `inner`, and the interrupted one is not left behind.
        assert final.steps["sub"].output["run_id"] == child_id
        assert [r.run_id for r in manager.list_runs(workflow_name="inner")] == [child_id]
        resumed = manager.get_run(child_id)
        assert resumed.status is WorkflowStatus.COMPLETED
        assert resumed.steps["i1"].output == 2  # kept from before the crash
        assert resumed.parent_step == "sub"
        after = executions(str(marks))
        # It had started when the process died (its function may not have begun): it runs once more.
        assert after["gate"] == before.get("gate", 0) + 1
        assert {step: n for step, n in after.items() if step != "gate"} == {
            "o0": 1, "i0": 1, "i1": 1, "i2": 1, "o1": 1
        }  # fmt: skip
    finally:
        engine.shutdown()
