"""InvalidInputError.from_validation: the one formatter of pydantic validation errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from codomyrmex_orchestration.errors import InvalidInputError


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    count: int = 1


def problem(data: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Args.model_validate(data)
    return info.value


def test_each_problem_names_its_field_path_and_an_unknown_field_lists_what_is_accepted() -> None:
    error = InvalidInputError.from_validation(
        problem({"count": "many", "nmae": "x"}), where="arguments", accepted=Args.model_fields
    )
    assert error.field == "arguments.name"
    text = str(error)
    assert "missing required field 'arguments.name'" in text
    assert "arguments.count: Input should be a valid integer" in text
    assert "unknown field 'arguments.nmae' (did you mean 'name'?) (accepted: name, count)" in text


def test_beyond_five_problems_it_says_how_many_more() -> None:
    class Many(BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    with pytest.raises(ValidationError) as info:
        Many.model_validate({})
    error = InvalidInputError.from_validation(info.value)
    assert str(error).endswith("and 2 more")
    assert error.field == "a"


def step_problem(**fields: object) -> str:
    from codomyrmex_orchestration.core.models import WorkflowSpec

    step = {"name": "a", "module": "core", "action": "echo", **fields}
    with pytest.raises(ValidationError) as info:
        WorkflowSpec.model_validate({"name": "w", "steps": [step]})
    return str(InvalidInputError.from_validation(info.value))


def test_a_field_of_several_types_is_one_problem_at_its_own_path_naming_each_shape_accepted() -> None:
    # Was: "steps.0.resources.compute.float: Input should be a valid number; ...compute.int: ...;
    # ...compute.str: ..." (pydantic's names of the union's members read as field paths).
    assert step_problem(resources={"compute": [1]}) == (
        "steps.0.resources.compute: Input should be a number or a string"
    )
    assert step_problem(for_each=5) == "steps.0.for_each: Input should be a list or a string"


def test_keys_of_an_open_object_named_like_types_stay_in_the_path() -> None:
    assert step_problem(resources={"str": [1], "Gpu": [2]}) == (
        "steps.0.resources.str: Input should be a number or a string; "
        "steps.0.resources.Gpu: Input should be a number or a string"
    )


def test_no_class_name_nor_value_error_prefix_reaches_the_message() -> None:
    assert step_problem(cache=600) == "steps.0.cache: Input should be an object"
    assert step_problem(priority=7) == (
        "steps.0.priority: priority 7 is not one of critical, high, normal, low, background (or 0-4)"
    )
