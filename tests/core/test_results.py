"""ResultPipeline: every return value is redacted, then capped (a spilled file holds the redacted value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codomyrmex_orchestration._redact import REDACTED
from codomyrmex_orchestration.core._limits import OutputLimiter, is_truncated
from codomyrmex_orchestration.core._results import ResultPipeline


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
