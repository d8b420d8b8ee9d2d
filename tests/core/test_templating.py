"""Templating: references keep types, embedded ones are stringified, run_if is safe and correct."""

from __future__ import annotations

import re
import tracemalloc
from typing import Any

import pytest

from codomyrmex_orchestration.core.templating import (
    Reference,
    Template,
    TemplateContext,
    find_references,
    parse_condition,
    referenced_steps,
    resolve,
)
from codomyrmex_orchestration.errors import TemplateError


@pytest.fixture
def ctx() -> TemplateContext:
    return TemplateContext(
        params={"mode": "full", "limit": 3, "tags": ["a", "b"]},
        steps={
            "fetch": ("completed", {"count": 5, "items": [{"id": 7}, {"id": 8}], "ok": True}),
            "build.linux": ("completed", "built"),
            "build": ("completed", {"linux": {"output": "wrong one"}}),
            "optional": ("skipped", None),
        },
        run={"id": "run-123"},
    )


# --------------------------------------------------------------------------- finding references


def test_find_references_reads_every_form_in_document_order() -> None:
    value = {
        "a": "{{params.mode}}",
        "b": ["{{ steps.fetch.output.items.0.id }}", "x {{run.id}} y"],
        "c": {"d": "{{fetch.output}} and {{steps.fetch.status}}"},
    }
    refs = find_references(value, known_steps={"fetch"})
    assert refs == [
        Reference("params.mode", "params", None, "mode", ()),
        Reference("steps.fetch.output.items.0.id", "steps", "fetch", "output", ("items", "0", "id")),
        Reference("run.id", "run", None, "id", ()),
        Reference("fetch.output", "steps", "fetch", "output", ()),
        Reference("steps.fetch.status", "steps", "fetch", "status", ()),
    ]


def test_dotted_step_names_match_the_longest_known_name() -> None:
    refs = find_references("{{steps.build.linux.output}} {{build.linux.output}}", {"build", "build.linux"})
    assert [(r.step, r.path) for r in refs] == [("build.linux", ()), ("build.linux", ())]


def test_short_form_needs_a_known_step_name() -> None:
    with pytest.raises(TemplateError, match="unknown step 'fetch'"):
        find_references("{{fetch.output}}")


def test_braces_that_are_not_a_dotted_path_are_left_alone() -> None:
    docker = "docker ps --format '{{.Names}}' {{ index .Config \"x\" }}"
    assert find_references(docker) == []
    assert resolve(docker, TemplateContext()) == docker


def test_malformed_references_are_errors_naming_what_is_accepted() -> None:
    with pytest.raises(TemplateError, match=re.escape("steps.<step>.output")):
        find_references("{{steps.fetch.result}}", {"fetch"})
    with pytest.raises(TemplateError, match="empty segment"):
        find_references("{{params..x}}")
    with pytest.raises(TemplateError, match="has no keys"):
        find_references("{{steps.fetch.status.x}}", {"fetch"})


def test_referenced_steps_collects_output_and_status_references() -> None:
    value = {"x": "{{a.output}}", "y": "{{steps.b.status}}", "z": "{{params.p}}"}
    assert referenced_steps(value, {"a", "b", "c"}) == {"a", "b"}


# --------------------------------------------------------------------------- resolving


def test_a_value_that_is_exactly_one_reference_keeps_its_type(ctx: TemplateContext) -> None:
    resolved = resolve(
        {
            "whole": "{{steps.fetch.output}}",
            "number": "{{fetch.output.count}}",
            "boolean": "{{ steps.fetch.output.ok }}",
            "list": "{{params.tags}}",
            "nested": ["{{steps.fetch.output.items.1.id}}"],
            "null": "{{optional.output}}",
        },
        ctx,
    )
    assert resolved == {
        "whole": {"count": 5, "items": [{"id": 7}, {"id": 8}], "ok": True},
        "number": 5,
        "boolean": True,
        "list": ["a", "b"],
        "nested": [8],
        "null": None,
    }


def test_references_inside_longer_strings_are_stringified(ctx: TemplateContext) -> None:
    text = "run {{run.id}}: {{fetch.output.count}} items {{steps.fetch.output.items}} ok={{fetch.output.ok}}"
    assert resolve(text, ctx) == 'run run-123: 5 items [{"id": 7}, {"id": 8}] ok=true'
    assert resolve("status {{steps.optional.status}}, out {{optional.output}}", ctx) == (
        "status skipped, out null"
    )


def test_resolve_does_not_share_containers_with_its_input(ctx: TemplateContext) -> None:
    params: dict[str, Any] = {"list": [1, {"a": 2}]}
    resolved = resolve(params, ctx)
    resolved["list"][1]["a"] = 99
    assert params == {"list": [1, {"a": 2}]}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{steps.missing.output}}", "step 'missing' has no result"),
        ("{{steps.fetch.output.nope}}", "steps.fetch.output has no key 'nope'; it is an object with keys"),
        ("{{fetch.output.items.9.id}}", "steps.fetch.output.items is a list of 2 items; index 9"),
        ("{{fetch.output.items.first}}", "index it with a number"),
        ("{{fetch.output.count.x}}", "steps.fetch.output.count is a int and has no key 'x'"),
        ("{{params.other}}", "no workflow parameter 'other'; parameters given: limit, mode, tags"),
        ("{{run.owner}}", "unknown run field 'owner'; available: run.id"),
        ("{{optional.output.x}}", "steps.optional.output is null \\(the step is skipped\\)"),
    ],
)
def test_a_missing_step_or_key_fails_naming_the_path(
    ctx: TemplateContext, template: str, message: str
) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        resolve({"p": template}, ctx)
    assert info.value.path == template.strip("{}")


def test_a_template_parsed_once_resolves_each_item_like_resolve(ctx: TemplateContext) -> None:
    params = {"name": "{{item.name}}", "line": "#{{index}} of {{params.limit}}: {{item}}", "n": 1}
    template = Template(params, ctx.steps)
    for index, item in enumerate([{"name": "a"}, {"name": "b", "x": [1]}]):
        ctx.item = (item, index)
        assert template.resolve(ctx) == resolve(params, ctx)
    assert template.resolve(ctx)["line"] == '#1 of 3: {"name": "b", "x": [1]}'
    first, second = template.resolve(ctx), template.resolve(ctx)
    assert first == second and first is not second  # each call builds its own containers


def test_a_template_refuses_malformed_references_when_parsed(ctx: TemplateContext) -> None:
    with pytest.raises(TemplateError, match="empty segment"):
        Template({"p": "{{steps..output}}"}, ctx.steps)
    with pytest.raises(TemplateError, match="item and index exist only in a step with for_each"):
        Template({"p": "{{item}}"}, ctx.steps).resolve(ctx)


def test_resolving_refuses_to_build_text_beyond_the_size_bound() -> None:
    ctx = TemplateContext(steps={"big": ("completed", {"blob": ["x" * 1000] * 2000})})
    assert resolve("{{big.output.blob.0}}", ctx, max_size=10_000) is ctx.steps["big"][1]["blob"][0]
    with pytest.raises(TemplateError, match="would exceed 10000 characters"):
        resolve("data: {{big.output}}", ctx, max_size=10_000)
    with pytest.raises(TemplateError, match="would exceed"):
        resolve(["{{big.output.blob.0}}!"] * 11, ctx, max_size=10_000)


def test_whole_value_references_are_charged_for_the_size_of_the_value_they_pass() -> None:
    # The tester's amplification: one output referenced whole many times. Shared, not copied, but
    # what the action gets (and returns, and the cap measures) is every copy of it.
    blob = {"rows": ["x" * 1000] * 20}  # 20,030 characters of JSON
    steps: dict[str, tuple[str, Any]] = {"a": ("completed", "y" * 1000), "b": ("completed", blob)}
    ctx = TemplateContext(steps=steps, params={"p": blob})
    within = resolve({"m": ["{{a.output}}"] * 10, "b": "{{steps.b.output}}"}, ctx, max_size=40_000)
    assert within["m"][0] is ctx.steps["a"][1] and within["b"] is blob  # still the value itself
    for refs in (["{{a.output}}"] * 41, ["{{steps.b.output}}"] * 2, ["{{params.p}}", "{{b.output}}"]):
        with pytest.raises(TemplateError) as caught:
            resolve({"message": refs}, ctx, max_size=40_000)
        assert "would exceed 40000 characters, the template expansion budget" in str(caught.value)
        assert "MAX_RESOLVED_SIZE" in str(caught.value) and caught.value.field == "parameters"
    # The default budget (16 MiB) holds sixteen 1 MiB strings, not seventeen.
    mib = TemplateContext(steps={"a": ("completed", "A" * 2**20)})
    assert len(resolve(["{{a.output}}"] * 16, mib)) == 16
    with pytest.raises(TemplateError, match="16777216 characters"):
        resolve(["{{a.output}}"] * 17, mib)


def test_a_whole_value_over_the_budget_is_measured_without_its_text_being_built() -> None:
    big = ["z" * 100_000] * 1000  # 100 MB of JSON, one string shared
    ctx = TemplateContext(steps={"big": ("completed", big)})
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match="would exceed"):
            resolve({"data": "{{big.output}}"}, ctx, max_size=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak


def test_a_template_measures_a_shared_value_once_for_all_its_items() -> None:
    blob = {"rows": [{"id": i} for i in range(500)]}
    template = Template({"data": "{{steps.b.output}}", "i": "{{item}}"}, {"b"})
    ctx = TemplateContext(steps={"b": ("completed", blob)})
    for index in range(3):
        ctx.item = ([index] * 3, index)
        assert template.resolve(ctx, max_size=100_000)["data"] is blob
    # One size kept: the step's output (each item is another value, measured for itself).
    assert [value for value, _ in template._sizes.values()] == [blob]
    ctx.item = (["w" * 100_000], 3)
    with pytest.raises(TemplateError, match="template 'item'"):
        template.resolve(ctx, max_size=100_000)


def test_deeply_nested_parameters_are_refused_not_overflowed() -> None:
    value: Any = "x"
    for _ in range(5000):
        value = [value]
    with pytest.raises(TemplateError, match="nested deeper"):
        resolve(value, TemplateContext())


# --------------------------------------------------------------------------- run_if


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("steps.fetch.output.count > 3", True),
        ("{{steps.fetch.output.count}} > 3", True),
        ("fetch.output.count <= 3", False),
        ("steps.fetch.status == 'completed' and params.mode == \"full\"", True),
        ("not (steps.optional.status == 'completed') or false", True),
        ("steps.optional.output == null", True),
        ("params.mode in ['full', 'quick']", True),
        ("'c' not in params.tags", True),
        ("steps.fetch.output.ok == true and params.limit != 3", False),
        ("1 < params.limit < 5", True),
        ("steps.fetch.output.count >= -1", True),
        ("steps.build.linux.status == 'completed'", True),
        ("'steps.fetch.output.count' == 'steps.fetch.output.count'", True),
    ],
)
def test_run_if_conditions_evaluate(ctx: TemplateContext, condition: str, expected: bool) -> None:
    parsed = parse_condition(condition, ctx.steps)
    assert parsed.evaluate(ctx) is expected


def test_a_condition_lists_the_references_it_uses(ctx: TemplateContext) -> None:
    parsed = parse_condition("fetch.output.count > params.limit and fetch.output.count < 10", ctx.steps)
    assert [r.raw for r in parsed.references] == ["fetch.output.count", "params.limit"]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("__import__('os')", "function call"),
        ("__import__('os').system('true')", "not allowed"),
        ("(1).real", "attribute access"),
        ("'abc'.upper() == 'ABC'", "not allowed"),
        ("steps.fetch.output.count()", "function call"),
        ("steps.fetch.output['count'] > 1", "subscripting"),
        ("open == 1", "the name 'open'"),
        ("1 + 1 == 2", "BinOp"),
        ("lambda: 1", "Lambda"),
        ("[x for x in params.tags]", "ListComp"),
        ("steps.fetch.output is None", "Is"),
        ("__ref0__ == 1", "the name '__ref0__'"),
        ("f'{params.mode}' == 'full'", "JoinedStr"),
        ("params.limit > ", "cannot parse"),
        ("not " * 100 + "true", "nested deeper"),
        ("", "empty condition"),
    ],
)
def test_unsafe_or_malformed_conditions_are_rejected_when_parsed(condition: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        parse_condition(condition, {"fetch"})
    assert info.value.field == "run_if"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("params.flag == 1", False),
        ("params.flag != 1", True),
        ("params.zero == false", False),
        ("params.flag == true and params.zero == 0", True),
        ("1 in [true]", False),
        ("true in [1, true]", True),
        ("0 not in [false]", True),
        ("params.flags == [1, 0]", False),
        ("params.flags == [true, false]", True),
        ("params.nested == {{steps.fetch.output.ok}}", False),
        ("params.zero == 0.0 and 1 <= 1.0 and [1, 2] < [1, 3] and 'a' >= 'a'", True),
    ],
)
def test_a_boolean_equals_only_a_boolean_as_in_json(condition: str, expected: bool) -> None:
    ctx = TemplateContext(
        params={"flag": True, "zero": 0, "flags": [True, False], "nested": 1},
        steps={"fetch": ("completed", {"ok": True})},
    )
    assert parse_condition(condition, ctx.steps).evaluate(ctx) is expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("params.flag > 0", "cannot compare a bool > a int"),
        ("0 <= params.flag", "cannot compare a int <= a bool"),
        ("params.flag >= false", "cannot compare a bool >= a bool"),
        ("[params.flag] < [2]", "cannot compare a list of 1 items < a list of 1 items"),
        ("params.flag in 'true'", "cannot compare a bool in a str"),
    ],
)
def test_a_boolean_has_no_order_and_is_refused_like_a_string_against_a_number(
    condition: str, message: str
) -> None:
    ctx = TemplateContext(params={"flag": True}, steps={})
    with pytest.raises(TemplateError, match=re.escape(message)):
        parse_condition(condition, ()).evaluate(ctx)


def test_comparing_incompatible_values_fails_with_a_clear_message(ctx: TemplateContext) -> None:
    condition = parse_condition("steps.optional.output > 3", ctx.steps)
    with pytest.raises(TemplateError, match="cannot compare null > a int"):
        condition.evaluate(ctx)


def test_a_condition_over_a_missing_key_fails_naming_the_path(ctx: TemplateContext) -> None:
    condition = parse_condition("steps.fetch.output.missing == 1", ctx.steps)
    with pytest.raises(TemplateError, match=re.escape("steps.fetch.output has no key 'missing'")):
        condition.evaluate(ctx)


def test_and_or_short_circuit_before_an_unresolvable_reference(ctx: TemplateContext) -> None:
    guarded = "steps.optional.status == 'completed' and steps.optional.output.n > 1"
    assert parse_condition(guarded, ctx.steps).evaluate(ctx) is False
