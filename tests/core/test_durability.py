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


def test_kill_9_midway_then_resume_runs_no_completed_step_twice_and_loses_nothing(tmp_path: Path) -> None:
    state, marks, projects = tmp_path / "state", tmp_path / "marks", tmp_path / "projects"
    marks.mkdir()
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(marks), str(projects), str(fifo)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        words = read_line(proc, timeout=60).split()
        assert words[0] == "gate"
        run_id = words[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
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
