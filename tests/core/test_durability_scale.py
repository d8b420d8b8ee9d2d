"""Crash durability at scale, fast version: kill -9 a 200-step DAG run at 3 random points (``make
durability`` runs 10 and prints the figures; see tests/helpers/crash_cycles.py)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.helpers.crash_cycles import STEPS, run_cycles


def test_three_kill_9_restarts_of_a_200_step_dag_rerun_no_completed_step_and_lose_no_output(
    tmp_path: Path,
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    figures = run_cycles(tmp_path, kill_points=3, seed=seed)
    context = f"seed {seed}: {figures}"
    assert figures.kill_points == 3, context
    assert figures.problems == [], context
    assert figures.completed_reexecuted == 0 and figures.outputs_lost == 0, context
    assert figures.dependency_violations == 0, context
    assert figures.final_status == "completed" and figures.final_outputs_correct, context
    # Only work whose completion had not reached the disk runs again: steps running at the kill, leaf
    # results still in the store's group-commit window, and results waiting for the commit another
    # worker had under way (never one a dependent used). Far fewer than a re-run of everything.
    assert STEPS <= figures.total_executions <= STEPS + 16 * figures.kill_points, context
