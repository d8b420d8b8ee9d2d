from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from codomyrmex_orchestration.core.models import (
    ItemWindow,
    RunRecord,
    StepResult,
    StepSpec,
    TaskPriority,
    TaskStatus,
    WorkflowSpec,
    trusted,
)
from codomyrmex_orchestration.errors import InvalidInputError


def test_priority_accepts_names_in_any_case_and_ints() -> None:
    assert StepSpec(name="a", module="core", action="echo", priority="high").priority is TaskPriority.HIGH
    assert StepSpec(name="a", module="core", action="echo", priority=4).priority is TaskPriority.BACKGROUND


def test_unknown_priority_is_rejected_naming_the_choices() -> None:
    with pytest.raises(ValidationError, match="critical, high, normal, low, background"):
        StepSpec(name="a", module="core", action="echo", priority="urgent")


def test_misspelt_step_field_is_named() -> None:
    with pytest.raises(ValidationError, match="dependecies"):
        StepSpec.model_validate({"name": "a", "module": "core", "action": "echo", "dependecies": []})


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "a/b", "ü"])
def test_workflow_names_outside_the_pattern_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        WorkflowSpec(name=name, steps=[StepSpec(name="a", module="core", action="echo")])


def test_retry_delay_grows_by_backoff() -> None:
    spec = StepSpec(name="a", module="m", action="x", retry_delay=0.5, backoff=3)
    assert [spec.retry_delay_for(n) for n in (1, 2, 3)] == [0.5, 1.5, 4.5]


def test_run_record_dumps_to_plain_json() -> None:
    record = RunRecord(
        run_id="r1", workflow_name="w", steps={"a": StepResult(name="a", status=TaskStatus.COMPLETED)}
    )
    dumped = record.model_dump(mode="json")
    assert json.loads(json.dumps(dumped))["steps"]["a"]["status"] == "completed"
    assert isinstance(dumped["created_at"], str)


def test_a_trusted_record_is_the_validated_one_and_records_sharing_a_fields_set_stay_apart() -> None:
    # The engine builds step and item results from values it typed itself, without validating them again.
    at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    values = {
        "name": "s",
        "status": TaskStatus.COMPLETED,
        "output": {"v": [1]},
        "attempts": 1,
        "started_at": at,
    }
    checked = StepResult(**values)
    every = set(StepResult.model_fields)
    fields = {name: getattr(checked, name) for name in StepResult.model_fields}
    first, second = trusted(StepResult, dict(fields), every), trusted(StepResult, dict(fields), every)
    assert first == checked and first.model_dump_json() == checked.model_dump_json()
    assert StepResult.model_validate_json(first.model_dump_json()) == checked
    first.attempts = 2  # assignment adds a name the shared set holds already
    assert (first.attempts, second.attempts, every) == (2, 1, set(StepResult.model_fields))
    assert first.model_copy(update={"attempts": 3}).attempts == 3 and first.attempts == 2


def test_an_item_window_refuses_what_it_cannot_take_naming_the_field_and_what_it_accepts() -> None:
    for given, field, says in (
        ({"offset": -1}, "offset", "a whole number of items, 0 or more; got -1"),
        ({"limit": 2.5}, "limit", "a whole number of items, 0 or more; got 2.5"),
        ({"limit": True}, "limit", "got True"),
        (
            {"statuses": []},
            "statuses",
            "an empty list; give one or more of blocked, cancelled, completed, failed",
        ),
        ({"statuses": ["failed", "broken"]}, "statuses", "unknown status 'broken'; give one or more of"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            ItemWindow(**given)  # type: ignore[arg-type]  # the wrong types are the point
        assert caught.value.field == field and says in str(caught.value), caught.value
    window = ItemWindow(5, 10, ["failed", TaskStatus.TIMED_OUT])
    assert (window.offset, window.limit) == (5, 10)
    assert window.statuses == {TaskStatus.FAILED, TaskStatus.TIMED_OUT}
    assert ItemWindow(statuses="failed").statuses == {TaskStatus.FAILED}
