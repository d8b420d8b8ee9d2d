"""Crash durability at scale: kill -9 a 200-step DAG run at random points, restart, resume, repeat.

Each cycle runs the engine in a subprocess. The child's step listener prints ``kill`` when its K-th step
completes in that process (or the first after it that others wait for) and then holds that completion
and every later one (so no step's dependents start, the run cannot end, and the other workers cannot
finish the run's remaining steps before the kill lands, however loaded the machine); the parent reads the
line and sends SIGKILL — no sleeps. Between cycles the parent opens an engine on the same
state directory (which recovers the run as INTERRUPTED) and checks, from the files each step execution
leaves behind:

* no step recorded COMPLETED at an earlier restart ran again (``completed_reexecuted``);
* no output recorded COMPLETED at an earlier restart changed or vanished (``outputs_lost``);
* every step that had started had its upstreams' results durable first (``dependency_violations``).

Steps that were *running* at the kill run again by design; they are counted (``inflight_reruns``).

``python -m tests.helpers.crash_cycles --kill-points 10`` prints the figures (``make durability``).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import RunRecord, TaskStatus, WorkflowStatus
from tests.helpers.durable_steps import executions

REPO = Path(__file__).resolve().parents[2]
STEPS = 200
WORKFLOW = "crash_dag"


def dependencies(i: int) -> list[int]:
    """Step i's upstreams: a 3-ary tree (fan-out) with a join onto the previous step every 7th step."""
    if i == 0:
        return []
    deps = [(i - 1) // 3]
    if i % 7 == 0 and i - 1 not in deps:
        deps.append(i - 1)
    return deps


def step_name(i: int) -> str:
    return f"s{i:03d}"


#: Steps that others wait for. Only such a completion is held for the kill: a held step with no
#: dependents does not stop the run, which could then complete before the SIGKILL arrives.
UPSTREAMS = frozenset(step_name(d) for i in range(STEPS) for d in dependencies(i))


def expected_outputs() -> dict[str, int]:
    out: dict[int, int] = {}
    for i in range(STEPS):
        out[i] = (1 + sum(out[d] for d in dependencies(i))) % 1_000_000_000
    return {step_name(i): v for i, v in out.items()}


def workflow(marks: str) -> dict[str, Any]:
    steps = []
    for i in range(STEPS):
        deps = [step_name(d) for d in dependencies(i)]
        steps.append(
            {
                "name": step_name(i),
                "module": "python",
                "action": "call",
                "dependencies": deps,
                "parameters": {
                    "function": "tests.helpers.durable_steps:record_sum",
                    "args": [marks, step_name(i), *[f"{{{{steps.{d}.output}}}}" for d in deps]],
                },
            }
        )
    return {"name": WORKFLOW, "steps": steps}


CHILD = textwrap.dedent(
    """
    import json, sys, threading
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from tests.helpers.crash_cycles import UPSTREAMS, WORKFLOW, workflow

    state, marks, projects, run_id, kill_after = sys.argv[1:6]
    kill_after = int(kill_after)
    engine = OrchestrationEngine(state_dir=state, config_dir=None, projects_dir=projects,
                                 templates_dir=None, max_workers=4)
    lock, count, held, hold = threading.Lock(), [0], [False], threading.Event()

    def listener(event, payload):
        if event == "run.started":
            print("run", payload["run_id"], flush=True)
        if event != "step.completed":
            return
        with lock:
            count[0] += 1
            mine = count[0] >= kill_after and payload["step"] in UPSTREAMS and not held[0]
            held[0] = held[0] or mine
            stop = held[0]
        if mine:
            print("kill", payload["step"], flush=True)
        if stop:
            # The parent kills us while this completion is held, and every one after it: the workers
            # not holding the kill step must not race through the run before the SIGKILL lands.
            hold.wait()

    engine.workflow_manager.add_listener(listener)
    if run_id == "-":
        engine.workflow_manager.create_workflow(workflow(marks))
        record = engine.execute_workflow(WORKFLOW, wait=True)
    else:
        record = engine.resume_run(run_id, wait=True)
    print("done", record.status.value, flush=True)
    engine.shutdown()
    """
)


@dataclass
class Figures:
    steps: int = STEPS
    kill_points: int = 0
    kill_after: list[int] = field(default_factory=list)
    completed_at_kills: list[int] = field(default_factory=list)
    completed_reexecuted: int = 0
    outputs_lost: int = 0
    dependency_violations: int = 0
    inflight_reruns: int = 0
    total_executions: int = 0
    final_status: str = ""
    final_outputs_correct: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def _lines(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    """Lines until ``kill`` or ``done`` (or EOF), read on a helper thread with a bounded wait."""
    got: list[str] = []
    finished = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line.strip())
            if line.startswith(("kill", "done")):
                break
        finished.set()

    threading.Thread(target=read, daemon=True).start()
    if not finished.wait(timeout):
        raise TimeoutError(f"the child said only {got!r} in {timeout} s")
    return got


def _inspect(state: Path, projects: Path, run_id: str) -> RunRecord:
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=1
    )
    try:
        return engine.workflow_manager.get_run(run_id)
    finally:
        engine.shutdown()


def run_cycles(root: Path, kill_points: int, seed: int = 0, timeout: float = 120.0) -> Figures:
    """Kill the run ``kill_points`` times at random completions, then let it finish. Returns figures."""
    rng = random.Random(seed)
    state, marks, projects = root / "state", root / "marks", root / "projects"
    marks.mkdir(parents=True)
    figures = Figures()
    expected = expected_outputs()
    kept: dict[str, Any] = {}  # step -> output, COMPLETED at some restart
    runs_at: dict[str, int] = {}  # step -> executions when first seen COMPLETED at a restart
    run_id = "-"
    started = time.monotonic()
    cycle = 0
    while True:
        killing = cycle < kill_points
        remaining = STEPS - len(kept)
        kill_after = rng.randint(1, max(1, remaining // (kill_points - cycle + 1))) if killing else 10**9
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), str(marks), str(projects), run_id, str(kill_after)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            lines = _lines(proc, timeout)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
        for line in lines:
            if line.startswith("run "):
                run_id = line.split()[1]
        if run_id == "-":
            raise RuntimeError(f"the child never started the run: {lines!r}")
        record = _inspect(state, projects, run_id)
        ran = executions(str(marks))
        done = {n: s.output for n, s in record.steps.items() if s.status is TaskStatus.COMPLETED}
        for name, output in kept.items():
            if name not in done or done[name] != output:
                figures.outputs_lost += 1
                figures.problems.append(
                    f"cycle {cycle}: {name} was completed with {output!r}, now {done.get(name)!r}"
                )
            if ran.get(name, 0) != runs_at[name]:
                figures.completed_reexecuted += 1
                figures.problems.append(f"cycle {cycle}: completed step {name} ran again")
        for i in range(STEPS):
            if ran.get(step_name(i)):
                for d in dependencies(i):
                    if step_name(d) not in done:
                        figures.dependency_violations += 1
                        figures.problems.append(
                            f"cycle {cycle}: {step_name(i)} ran before {step_name(d)} was durable"
                        )
        for name, output in done.items():
            if name not in kept:
                kept[name] = output
                runs_at[name] = ran.get(name, 0)
        if lines and lines[-1].startswith("kill"):
            figures.kill_points += 1
            figures.kill_after.append(kill_after)
            figures.completed_at_kills.append(len(done))
            if record.status is not WorkflowStatus.INTERRUPTED:
                figures.problems.append(f"cycle {cycle}: after the kill the run is {record.status.value}")
            cycle += 1
            continue
        figures.final_status = record.status.value
        figures.final_outputs_correct = done == expected
        break
    ran = executions(str(marks))
    figures.total_executions = sum(ran.values())
    figures.inflight_reruns = figures.total_executions - STEPS
    figures.seconds = round(time.monotonic() - started, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill-points", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="codomyrmex-durability-") as tmp:
        figures = run_cycles(Path(tmp), args.kill_points, seed)
    report = {"seed": seed, **asdict(figures)}
    print(json.dumps(report, indent=2))
    ok = (
        figures.kill_points == args.kill_points
        and figures.completed_reexecuted == 0
        and figures.outputs_lost == 0
        and figures.dependency_violations == 0
        and figures.final_status == "completed"
        and figures.final_outputs_correct
    )
    print(
        f"durability: {figures.kill_points} kill -9 points over a {STEPS}-step DAG, "
        f"{figures.completed_reexecuted} completed steps re-executed, "
        f"{figures.outputs_lost} completed outputs lost, "
        f"{figures.inflight_reruns} in-flight steps re-run, {figures.seconds} s -> "
        + ("OK" if ok else "FAILED")
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
