"""ResultPipeline: every return value is redacted, then capped (a spilled file holds the redacted value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codomyrmex_orchestration._redact import REDACTED
from codomyrmex_orchestration.core._limits import OutputLimiter, is_truncated
from codomyrmex_orchestration.core._results import ResultPipeline, json_output
from codomyrmex_orchestration.core.actions import ActionDefinition
from codomyrmex_orchestration.core.models import TaskStatus
from codomyrmex_orchestration.errors import StepFailedError
from tests.helpers.engines import engine_on


def test_secrets_are_redacted_and_small_values_pass_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TEST_TOKEN", "tok-very-secret-1")
    pipeline = ResultPipeline()
    assert pipeline({"out": "tok-very-secret-1"}, run_id=None, step_name=None, task_id="t1") == {
        "out": REDACTED
    }
    assert pipeline({"n": 1}, run_id=None, step_name=None, task_id="t1") == {"n": 1}
    assert pipeline(None, run_id=None, step_name=None, task_id="t1") is None


def test_a_too_large_output_is_spilled_redacted_and_replaced_by_a_marker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIPELINE_TEST_TOKEN", "tok-very-secret-2")
    pipeline = ResultPipeline(OutputLimiter(200, spill_dir=tmp_path))
    big = "tok-very-secret-2 " + "x" * 1000
    marker = pipeline(big, run_id="run-1", step_name="step", task_id="t1")
    assert is_truncated(marker)
    spilled = Path(marker["spilled_to"])
    assert spilled.parent == tmp_path / "run-1"
    text = json.loads(spilled.read_text())
    assert text.startswith(REDACTED) and "tok-very-secret-2" not in spilled.read_text()


def test_an_action_output_json_cannot_hold_fails_the_step_naming_where_and_keeps_its_secret_off_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A set is not a JSON value: redaction walked past it and the store wrote it as a list, secret and all.
    monkeypatch.setenv("PIPELINE_TEST_TOKEN", "tok-very-secret-3")
    engine = engine_on(tmp_path)
    try:
        engine.registry.register(
            ActionDefinition("plugin", "tags", lambda params, ctx: {"tags": {"tok-very-secret-3"}})
        )
        engine.workflow_manager.create_workflow("tags", [{"name": "t", "module": "plugin", "action": "tags"}])
        step = engine.execute_workflow("tags", timeout=30).steps["t"]
        task = engine.execute_task({"name": "one", "module": "plugin", "action": "tags"}, timeout=30)
    finally:
        engine.shutdown()
    assert step.status is TaskStatus.FAILED and task.status is TaskStatus.FAILED
    for error in (step.error, task.error):
        assert error is not None and error.type == "StepFailedError"
        assert "its output.tags is a set" in error.message and "list, tuple, str" in error.message
    assert b"tok-very-secret-3" not in (tmp_path / "state" / "state.db").read_bytes()


def test_json_values_an_action_returns_pass_as_they_are() -> None:
    value = {"a": [1, 2.5, True, None, ("x", {"b": "c"})], "n": TaskStatus.COMPLETED, 3: "int key"}
    assert json_output(value, "step") is value
    with pytest.raises(StepFailedError, match=r"its output\[1\] is a bytes"):
        json_output(["ok", b"raw"], "step")
    with pytest.raises(StepFailedError, match=r"its output \(a key\) is a frozenset"):
        json_output({frozenset(): 1}, "step")
