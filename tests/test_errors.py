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
