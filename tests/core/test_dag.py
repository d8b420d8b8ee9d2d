"""WorkflowDAG: validation reports everything at once, cycles name their path, levels and renderings."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.core.actions.http import METHODS
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.models import StepSpec, WorkflowSpec
from codomyrmex_orchestration.errors import CycleDetectedError, DAGValidationError, InvalidInputError


def step(name: str, *deps: str, module: str = "core", action: str = "echo", **extra: Any) -> StepSpec:
    if (module, action) == ("core", "echo"):
        extra.setdefault("parameters", {"message": name})  # what core.echo needs to run
    return StepSpec(name=name, module=module, action=action, dependencies=list(deps), **extra)


def diamond() -> list[StepSpec]:
    return [step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")]


def test_a_valid_diamond_has_no_problems_and_three_levels() -> None:
    dag = WorkflowDAG(diamond(), registry=create_registry())
    dag.validate()
    assert dag.problems() == []
    assert dag.execution_levels() == [["a"], ["b", "c"], ["d"]]
    assert dag.topological_order() == ["a", "b", "c", "d"]


def test_upstream_and_downstream_are_all_ancestors_and_descendants() -> None:
    dag = WorkflowDAG([*diamond(), step("e", "d"), step("lonely")])
    assert dag.upstream("e") == {"a", "b", "c", "d"}
    assert dag.downstream("b") == {"d", "e"}
    assert dag.upstream("lonely") == set() == dag.downstream("lonely")
    assert dag.dependencies_of("d") == {"b", "c"}
    with pytest.raises(InvalidInputError, match="unknown step 'zz'; known steps: 'a'"):
        dag.upstream("zz")


def test_a_cycle_is_reported_with_its_path() -> None:
    dag = WorkflowDAG([step("a", "c"), step("b", "a"), step("c", "b"), step("free")])
    with pytest.raises(CycleDetectedError) as info:
        dag.validate()
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert "dependency cycle: a -> b -> c -> a" in str(info.value)
    with pytest.raises(CycleDetectedError):
        dag.execution_levels()


def test_every_separate_cycle_is_reported() -> None:
    dag = WorkflowDAG([step("a", "b"), step("b", "a"), step("x", "y"), step("y", "x"), step("z", "y")])
    assert dag.cycles == [["a", "b", "a"], ["x", "y", "x"]]
    assert sum("dependency cycle" in p for p in dag.problems()) == 2


def test_all_validation_problems_are_reported_together() -> None:
    steps = [
        step("a", "c"),
        step("b", "a"),
        step("c", "b"),
        step("dup"),
        step("dup"),
        step("selfish", "selfish"),
        step("orphan", "ghost"),
        step("typo", module="core", action="ecco"),
        step("badref", parameters={"message": "{{steps.nobody.output}}"}),
        step("badif", run_if="steps.a.output.n >"),
    ]
    with pytest.raises(CycleDetectedError) as info:
        WorkflowDAG(steps, registry=create_registry(), workflow_name="broken").validate()
    problems = info.value.problems
    assert len(problems) == 7, problems
    expected = [
        "dependency cycle: a -> b -> c -> a",
        "duplicate step name 'dup' (steps #4 and #5)",
        "step 'selfish' depends on itself",
        "step 'orphan' depends on unknown step 'ghost'",
        "unknown action core.ecco (did you mean 'core.echo'?); "
        "known actions: core.approve, core.echo, core.fail",
        "step 'badref' references unknown step 'nobody' in '{{steps.nobody.output}}'",
        "step 'badif' run_if: template 'steps.a.output.n >': cannot parse",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert "workflow 'broken' is invalid, 7 problems" in str(info.value)


def test_problems_without_a_cycle_raise_the_base_validation_error() -> None:
    dag = WorkflowDAG([step("a", "ghost")])
    with pytest.raises(DAGValidationError) as info:
        dag.validate()
    assert not isinstance(info.value, CycleDetectedError)
    assert info.value.problems == ["step 'a' depends on unknown step 'ghost'; known steps: 'a'"]


def test_unknown_module_or_action_is_rejected_with_the_list_of_known_ones() -> None:
    registry = create_registry()
    dag = WorkflowDAG(
        [step("one", module="nope", action="run"), step("two", module="core", action="explode")],
        registry=registry,
    )
    known = ", ".join(registry.known())
    assert dag.problems() == [
        f"step 'one': action: unknown action nope.run; known actions: {known}",
        f"step 'two': action: unknown action core.explode; known actions: {known}",
    ]
    assert WorkflowDAG([step("one", module="nope", action="run")]).problems() == []  # no registry, no check


def test_a_refused_action_is_a_validation_problem() -> None:
    registry = create_registry(allow_code_execution=False)
    problems = WorkflowDAG([step("sh", module="shell", action="run")], registry=registry).problems()
    assert len(problems) == 1
    assert "action shell.run is refused" in problems[0]


def test_template_references_add_inferred_edges() -> None:
    dag = WorkflowDAG(
        [
            step("fetch"),
            step("count", parameters={"data": "{{steps.fetch.output}}"}),
            step("report", "fetch", parameters={"text": "{{fetch.output.title}}: {{count.output}}"}),
            step("alert", run_if="count.output > 10 and steps.report.status == 'completed'"),
        ]
    )
    dag.validate()
    assert dag.inferred_dependencies == {
        "count": ["fetch"],
        "report": ["count"],
        "alert": ["count", "report"],
    }
    assert dag.dependencies_of("report") == {"fetch", "count"}
    assert dag.execution_levels() == [["fetch"], ["count"], ["report"], ["alert"]]
    assert ("count", "report", True) in dag.edges()
    assert ("fetch", "report", False) in dag.edges()


def test_a_cycle_through_inferred_edges_is_caught_and_explained() -> None:
    dag = WorkflowDAG([step("a", parameters={"x": "{{b.output}}"}), step("b", "a")])
    with pytest.raises(CycleDetectedError) as info:
        dag.validate()
    assert info.value.cycle == ["a", "b", "a"]
    assert "inferred from templates: 'a' references 'b'" in info.value.problems[0]


def test_a_step_referencing_its_own_output_is_a_problem() -> None:
    problems = WorkflowDAG([step("a", run_if="steps.a.status == 'completed'")]).problems()
    assert problems == [
        "step 'a' references its own status in '{{steps.a.status}}'; "
        "a step can only use results of other steps"
    ]


def test_from_spec_uses_the_workflow_name_in_errors() -> None:
    spec = WorkflowSpec(name="wf.1", steps=[step("a", "b"), step("b", "a")])
    with pytest.raises(CycleDetectedError, match=re.escape("workflow 'wf.1' is invalid")):
        WorkflowDAG.from_spec(spec, create_registry()).validate()


def test_mermaid_output_is_a_multi_line_graph_with_safe_ids_and_labels() -> None:
    steps = [
        step("fetch.data-1"),
        step("use", "fetch.data-1", module='we"ird', action="a<b>#"),
        step("late", parameters={"x": "{{use.output}}"}),
    ]
    text = WorkflowDAG(steps).to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "graph TD"
    assert lines[1:] == [
        '    n0["fetch.data-1<br/>core.echo"]',
        '    n1["use<br/>we#quot;ird.a#lt;b#gt;#35;"]',
        '    n2["late<br/>core.echo"]',
        "    n0 --> n1",
        "    n1 -.-> n2",
    ]
    node_ids = re.findall(r"^\s+(\w+)\[", text, flags=re.MULTILINE)
    assert node_ids == ["n0", "n1", "n2"]


def test_dot_output_quotes_names_and_dashes_inferred_edges() -> None:
    text = WorkflowDAG(
        [step("a"), step("b", "a"), step("c", parameters={"x": "{{b.output}}"})], workflow_name="demo"
    ).to_dot()
    assert text.splitlines()[0] == 'digraph "demo" {'
    assert '    "a" [label="a\\ncore.echo"];' in text
    assert '    "a" -> "b";' in text
    assert '    "b" -> "c" [style=dashed];' in text
    assert text.rstrip().endswith("}")


def test_a_ten_thousand_step_chain_validates_without_recursion() -> None:
    n = 10_000
    assert n > sys.getrecursionlimit()
    chain = [
        StepSpec(
            name=f"s{i}",
            module="core",
            action="echo",
            parameters={"message": i},
            dependencies=[f"s{i - 1}"] if i else [],
        )
        for i in range(n)
    ]
    dag = WorkflowDAG(chain, registry=create_registry())
    dag.validate()
    levels = dag.execution_levels()
    assert len(levels) == n and levels[-1] == [f"s{n - 1}"]
    assert len(dag.upstream(f"s{n - 1}")) == n - 1
    assert len(dag.downstream("s0")) == n - 1
    assert len(dag.to_mermaid().splitlines()) == 1 + n + (n - 1)


def test_a_ten_thousand_step_cycle_is_found_without_recursion() -> None:
    n = 10_000
    ring = [
        StepSpec(name=f"s{i}", module="core", action="echo", dependencies=[f"s{(i - 1) % n}"])
        for i in range(n)
    ]
    with pytest.raises(CycleDetectedError) as info:
        WorkflowDAG(ring).validate()
    assert len(info.value.cycle) == n + 1
    assert info.value.cycle[0] == info.value.cycle[-1] == "s0"


def test_a_forty_thousand_step_ring_is_reported_quickly_with_a_bounded_message() -> None:
    """The message used to list the whole path (about 1 MB for 100,000 steps) and problems() took 7 s
    for 40,000 (25 s for 100,000): networkx's find_cycle went through a subgraph view's filters."""
    n = 40_000
    ring = [
        StepSpec.model_construct(
            name=f"s{i}", module="core", action="echo", parameters={}, dependencies=[f"s{(i + 1) % n}"]
        )
        for i in range(n)
    ]
    dag = WorkflowDAG(ring)
    start = time.process_time()
    problems = dag.problems()
    elapsed = time.process_time() - start
    assert elapsed < 1.0, f"problems() of a {n}-step ring took {elapsed:.2f} s of CPU"  # 2.6 s before
    [cycle] = problems
    assert cycle.startswith("dependency cycle: s0 -> s39999 -> s39998 -> ")
    assert f"... ({n - 20} more steps, {n} in the cycle) -> s0" in cycle
    assert len(cycle) < 400
    with pytest.raises(CycleDetectedError) as info:
        dag.validate()
    assert len(str(info.value)) < 500
    assert len(info.value.cycle) == n + 1  # the data keeps the whole path


def test_the_cycle_reported_is_the_shortest_through_the_first_step_of_its_component() -> None:
    # a -> b -> c -> d -> a, and the shortcut b -> a: one component, two cycles through 'a'
    steps = [step("a", "d", "b"), step("b", "a"), step("c", "b"), step("d", "c")]
    assert WorkflowDAG(steps).cycles == [["a", "b", "a"]]


def test_malformed_steps_are_collected_problems_naming_their_position() -> None:
    dag = WorkflowDAG(
        [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"message": "hi"}},
            "b",
            {"name": "c"},
            step("d", "a"),
        ]  # type: ignore[list-item]  # "b": what a caller without a type checker passes
    )
    assert dag.problems() == [
        "steps.1: must be a step (a StepSpec, or an object with name, module and action), got str 'b'",
        "missing required field 'steps.2.module'; missing required field 'steps.2.action'",
    ]
    assert dag.dependencies_of("d") == {"a"}  # the well-formed steps are still a graph
    assert WorkflowDAG(["x"]).problems() == [  # type: ignore[list-item]
        "steps.0: must be a step (a StepSpec, or an object with name, module and action), got str 'x'"
    ]
    for not_a_list in (None, "ab", {"name": "a"}, 5):
        with pytest.raises(InvalidInputError, match="must be a list of steps") as info:
            WorkflowDAG(not_a_list)  # type: ignore[arg-type]
        assert info.value.field == "steps"


def test_a_dependency_or_reference_on_a_step_that_did_not_parse_is_no_second_problem() -> None:
    uses_a = step("b", "a", parameters={"message": "{{a.output}} {{steps.a.status}}"})
    assert WorkflowDAG([uses_a], unparsed=["a"]).problems() == []
    assert WorkflowDAG([uses_a], unparsed=["a"]).dependencies_of("b") == set()
    assert WorkflowDAG([], unparsed=["a"]).problems() == []  # the schema names what is wrong with 'a'
    assert WorkflowDAG([uses_a]).problems()[0].startswith("step 'b' depends on unknown step 'a'")


def test_a_workflow_run_step_that_runs_its_own_workflow_unguarded_is_a_problem() -> None:
    runs = {"module": "workflow", "action": "run"}
    itself = step("a", parameters={"workflow": "loop"}, **runs)
    (problem,) = WorkflowDAG([itself], workflow_name="loop").problems()
    assert problem.startswith("step 'a' runs workflow 'loop', itself, with no run_if to stop it: ")
    assert WorkflowDAG([itself], workflow_name="other").problems() == []
    guarded = step("a", parameters={"workflow": "loop"}, run_if="{{params.more}}", **runs)
    assert WorkflowDAG([guarded], workflow_name="loop").problems() == []


def test_twenty_thousand_steps_with_three_dependencies_each_validate_quickly() -> None:
    n = 20_000
    steps = [
        StepSpec.model_construct(
            name=f"s{i}",
            module="core",
            action="echo",
            parameters={"message": f"{i}"},
            dependencies=[f"s{j}" for j in (i - 1, i - 7, i - 13) if j >= 0],
            run_if=None,
        )
        for i in range(n)
    ]
    start = time.process_time()
    dag = WorkflowDAG(steps)
    dag.validate()
    levels = dag.execution_levels()
    elapsed = time.process_time() - start
    assert sum(len(level) for level in levels) == n
    assert elapsed < 3.0, f"build+validate+levels of {n} steps took {elapsed:.2f} s of CPU"


def test_too_many_problems_are_summarised() -> None:
    steps = [step(f"s{i}", f"ghost{i}") for i in range(250)]
    problems = WorkflowDAG(steps).problems()
    assert len(problems) == 201
    assert problems[-1] == "... and 50 more problems"


def test_a_parameter_the_action_does_not_declare_is_a_validation_problem_with_the_closest_name() -> None:
    steps = [
        step("ls", module="shell", action="run", parameters={"comand": ["ls"], "check": False}),
        step("hi", parameters={"mesage": "hello", "colour": "red"}),
        step("hi2", parameters={"mesage": "again", "colour": "blue"}),
        step("free", module="core", action="set", parameters={"anything": 1, "at_all": 2}),
    ]
    problems = WorkflowDAG(steps, registry=create_registry()).problems()
    assert problems == [
        "step 'ls': shell.run does not accept parameter 'comand' (did you mean 'command'?); accepted "
        "parameters: check, command, cwd, env, env_clear, input, max_output_bytes, shell, timeout",
        "steps 'hi', 'hi2': core.echo does not accept parameters 'colour', 'mesage' (did you mean "
        "'message'?); accepted parameters: message",
    ]


def test_a_literal_parameter_the_step_would_fail_on_is_a_validation_problem() -> None:
    # What the action itself would refuse when the step runs, said before anything runs; a templated
    # value is known only then, so it is not judged.
    steps = [
        step("say", parameters={}),
        step("nap", module="core", action="sleep", parameters={"seconds": -1}),
        step("get", module="http", action="request", parameters={"url": "ftp://example.com/x"}),
        step("post", module="http", action="request", parameters={"url": "https://x.test", "method": "BREW"}),
        step("later", module="http", action="request", parameters={"url": "{{params.url}}"}),
        step("wait", module="core", action="sleep", parameters={"seconds": "{{params.seconds}}"}),
        step("said", parameters={"message": "{{params.m}}"}),
    ]
    problems = WorkflowDAG(steps, registry=create_registry()).problems()
    assert problems == [
        "step 'say': parameters.message: core.echo needs a 'message' (any JSON value)",
        "step 'nap': parameters.seconds: core.sleep needs 'seconds', a number from 0 to 86400",
        "step 'get': parameters.url: http.request accepts only http:// and https:// URLs with a host, got "
        "'ftp://example.com/x'",
        "step 'post': parameters.method: http.request accepts methods " + ", ".join(METHODS),
    ]


@pytest.mark.parametrize(
    ("module", "action", "parameters"),
    [
        ("http", "request", {"url": "https://x.test", "json": {"a": 1}, "body": "x"}),
        ("http", "request", {"url": "https://x.test", "timeout": 0}),
        ("http", "request", {"url": "https://x.test", "headers": {"h": [1]}}),
        ("shell", "run", {"command": "true", "check": "no"}),
        ("shell", "run", {"command": "true", "timeout": -5}),
        ("shell", "run", {"command": "true", "max_output_bytes": -1}),
        ("shell", "run", {"command": "true", "input": 3}),
        ("shell", "run", {"command": "true", "env": {"A": [1]}}),
        ("python", "call", {"function": "json:dumps", "args": {"a": 1}}),
        ("python", "call", {"function": "notavalidspec"}),
        ("python", "call", {"function": "json:dumps", "kwargs": [1]}),
        ("workflow", "run", {"workflow": "sub", "parameters": [1]}),
        ("workflow", "run", {"workflow": ""}),
    ],
)
def test_a_literal_parameter_is_a_problem_with_the_message_the_action_refuses_it_with_when_run(
    module: str, action: str, parameters: dict[str, Any]
) -> None:
    # Each action's own readers of its parameters are its validation: the problem is the very error the
    # action raises when called with these parameters.
    registry = create_registry()

    def problems(given: dict[str, Any]) -> list[str]:
        steps = [step("s", module=module, action=action, parameters=given)]
        return WorkflowDAG(steps, registry=registry).problems()

    with pytest.raises(InvalidInputError) as refused:
        registry.get(module, action).func(dict(parameters), ActionContext("s"))
    assert problems(parameters) == [f"step 's': {refused.value}"]
    # A template stands for a value known only when the step runs: not judged now (giving both json and
    # body is wrong whatever they hold).
    templated = problems(dict.fromkeys(parameters, "{{params.x}}"))
    assert templated == ([] if "body" not in parameters else problems(parameters))


def test_literal_parameters_the_actions_accept_are_no_problem() -> None:
    steps = [
        step("h", module="http", action="request", parameters={"url": "https://x.test", "timeout": 5,
             "json": {}, "headers": {"a": "{{params.h}}"}, "check": False, "max_output_bytes": 0}),
        step("sh", module="shell", action="run", parameters={"command": ["echo", "{{params.x}}"],
             "cwd": "/made/by/an/earlier/step", "env": {"A": "1", "B": None}, "input": "", "timeout": 1}),
        step("py", module="python", action="call", parameters={"function": "pkg.mod:Cls.method",
             "args": [1], "kwargs": {"a": "{{params.a}}"}}),
        step("w", module="workflow", action="run", parameters={"workflow": "sub"}),
    ]  # fmt: skip
    assert WorkflowDAG(steps, registry=create_registry()).problems() == []


def test_unknown_names_get_the_closest_known_one_only_when_one_is_close() -> None:
    steps = [
        step("fetch"),
        step("use", "fecth", parameters={"message": "{{steps.fetc.output}}"}),
        step("odd", module="core", action="explode"),
        step("far", "zzzzzz", module="nope", action="run"),
    ]
    problems = WorkflowDAG(steps, registry=create_registry()).problems()
    assert "step 'use' depends on unknown step 'fecth' (did you mean 'fetch'?)" in problems[0]
    assert "unknown step 'fetc' in '{{steps.fetc.output}}' (did you mean 'fetch'?)" in problems[1]
    assert "did you mean" not in problems[2]  # zzzzzz is like nothing
    assert [p for p in problems if "explode" in p or "nope.run" in p] == [
        p for p in problems if ("explode" in p or "nope.run" in p) and "did you mean" not in p
    ]
