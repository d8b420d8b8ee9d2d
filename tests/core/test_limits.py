"""Limits enforced end to end through the engine: steps per workflow, sub-workflow depth, the cap on
any action's output (marker + spill file), and bounded template expansion."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.compose import build_engine
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core._limits import OutputLimiter, is_truncated
from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus
from codomyrmex_orchestration.errors import LimitExceededError

CAP = 64 * 1024


def _big(params: dict[str, Any], ctx: ActionContext) -> Any:
    size = int(params["size"])
    if params.get("kind") == "dict":
        return {"rows": ["x" * 100 for _ in range(size // 100)]}
    return "é" * (size // 2) if params.get("kind") == "unicode" else "y" * size


def _echo(params: dict[str, Any], ctx: ActionContext) -> Any:
    return params.get("value")


def _make(tmp_path: Path, **settings: Any) -> OrchestrationEngine:
    base = {
        "state_dir": tmp_path / "state",
        "projects_dir": tmp_path / "projects",
        "max_workers": 2,
        "max_output_bytes": CAP,
    }
    base.update(settings)
    engine = build_engine(Settings(**base), config_dir=None, templates_dir=None)
    engine.registry.register(ActionDefinition("test", "big", _big))
    engine.registry.register(ActionDefinition("test", "echo", _echo))
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    eng = _make(tmp_path)
    yield eng
    eng.shutdown()


def test_an_output_over_the_cap_becomes_a_marker_and_is_spilled_in_full(engine: OrchestrationEngine) -> None:
    engine.workflow_manager.create_workflow(
        {
            "name": "big_out",
            "steps": [
                {
                    "name": "big",
                    "module": "test",
                    "action": "big",
                    "parameters": {"size": 3 * CAP, "kind": "dict"},
                },
                {"name": "small", "module": "test", "action": "echo", "parameters": {"value": "ok"}},
                {
                    "name": "uses",
                    "module": "test",
                    "action": "echo",
                    "dependencies": ["big"],
                    "parameters": {"value": "{{steps.big.output.size_bytes}}"},
                },
            ],
        }
    )
    run = engine.execute_workflow("big_out", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED, run.error
    marker = run.steps["big"].output
    assert is_truncated(marker)
    assert marker["limit_bytes"] == CAP
    assert marker["size_bytes"] > 3 * CAP - 1000
    assert len(marker["preview"]) <= CAP // 4
    assert marker["preview"].startswith('{"rows":["xxx')
    spilled = Path(marker["spilled_to"])
    assert spilled == engine.state_dir / "outputs" / run.run_id / "big.json"
    assert json.loads(spilled.read_text("utf-8")) == _big({"size": 3 * CAP, "kind": "dict"}, None)  # type: ignore[arg-type]
    assert spilled.stat().st_size == marker["size_bytes"]
    assert run.steps["small"].output == "ok"
    assert run.steps["uses"].output == marker["size_bytes"]
    stored = engine.workflow_manager.store.get_run(run.run_id)
    assert stored is not None and stored.steps["big"].output == marker  # the store keeps the marker only


def test_a_single_task_output_is_capped_too(engine: OrchestrationEngine) -> None:
    record = engine.execute_task(
        {"name": "t", "module": "test", "action": "big", "parameters": {"size": 2 * CAP}}, timeout=30
    )
    assert record.status is TaskStatus.COMPLETED
    assert is_truncated(record.result)
    assert Path(record.result["spilled_to"]).parent == engine.state_dir / "outputs" / "tasks"


def test_a_shell_step_stdout_over_the_cap_is_bounded(engine: OrchestrationEngine) -> None:
    engine.workflow_manager.create_workflow(
        {
            "name": "loud",
            "steps": [
                {
                    "name": "yes",
                    "module": "shell",
                    "action": "run",
                    "parameters": {"command": f"head -c {4 * CAP} /dev/zero | tr '\\0' z", "shell": True},
                }
            ],
        }
    )
    run = engine.execute_workflow("loud", timeout=30)
    assert run.status is WorkflowStatus.COMPLETED, run.error
    out = run.steps["yes"].output
    # shell.run itself keeps at most max_output_bytes of stdout (the engine passes its cap down) ...
    assert len(json.dumps(out)) < 2 * CAP
    assert "truncated" in json.dumps(out)


def test_outputs_are_marked_but_not_spilled_when_spilling_is_off(tmp_path: Path) -> None:
    engine = _make(tmp_path, spill_outputs=False)
    try:
        record = engine.execute_task(
            {
                "name": "t",
                "module": "test",
                "action": "big",
                "parameters": {"size": 2 * CAP, "kind": "unicode"},
            },
            timeout=30,
        )
        assert is_truncated(record.result) and record.result["spilled_to"] is None
        assert not (engine.state_dir / "outputs").exists()
    finally:
        engine.shutdown()


def test_the_limiter_measures_utf8_json_bytes_and_keeps_what_fits() -> None:
    limiter = OutputLimiter(1024)
    assert limiter(None, run_id=None, step_name=None, task_id="t") is None
    fits = "é" * 500  # 1000 bytes of UTF-8 + 2 quotes
    assert limiter(fits, run_id=None, step_name=None, task_id="t") == fits
    over = "é" * 520  # 1042 bytes
    marker = limiter(over, run_id=None, step_name=None, task_id="t")
    assert is_truncated(marker) and marker["size_bytes"] == 1042
    assert limiter({"a": [1, 2, 3]}, run_id=None, step_name=None, task_id="t") == {"a": [1, 2, 3]}
    assert limiter.truncated_count == 1


def test_small_outputs_are_kept_without_serialising_and_the_cap_still_measures_exact_bytes() -> None:
    limiter = OutputLimiter(200)
    keep = {"n": 10**30, "x": -1.5e300, "ok": True, "none": None, "rows": [["é", 2], ("t",)]}
    assert limiter(keep, run_id=None, step_name=None, task_id="t") is keep
    # Pessimistic bound over the limit, exact JSON text (181 bytes) within it: kept.
    near = {"text": "a" * 170}
    assert limiter(near, run_id=None, step_name=None, task_id="t") is near
    # Non-string keys and other types are measured by serialising, as JSON encodes them.
    assert limiter({1: "one", 2.5: [None]}, run_id=None, step_name=None, task_id="t") == {
        1: "one",
        2.5: [None],
    }
    over = {"text": "é" * 100}  # 2 * 100 bytes of UTF-8 + 11
    marker = limiter(over, run_id=None, step_name=None, task_id="t")
    assert is_truncated(marker) and marker["size_bytes"] == 211
    assert limiter.truncated_count == 1


def test_an_output_far_over_the_cap_is_measured_and_spilled_without_building_its_text(tmp_path: Path) -> None:
    value = {"rows": ["é" * 250_000] * 40}  # one string shared: 20 MB of UTF-8 JSON from 250 KB in memory
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    limiter = OutputLimiter(CAP, spill_dir=tmp_path)
    tracemalloc.start()
    try:
        marker = limiter(value, run_id="r", step_name="s", task_id="t")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Serialising it whole took the 10 M-character text and its 20 MB of UTF-8: pieces take under 2 MB.
    assert peak < 2_000_000, peak
    assert marker["size_bytes"] == size == 20_000_130 and "spill_error" not in marker
    assert marker["preview"] == '{"rows":["' + "é" * (4096 - 10)
    spilled = Path(marker["spilled_to"])
    assert spilled.stat().st_size == size
    assert json.loads(spilled.read_text("utf-8")) == value


def test_json_pieces_join_to_what_json_dumps_writes() -> None:
    from decimal import Decimal

    from codomyrmex_orchestration.core._json_text import PIECE_CHARS, json_pieces

    class Text(str):
        pass

    circular: list[Any] = []
    circular.append(circular)
    values: list[Any] = [
        None,
        [True, False, 0, -(10**40), 1.5, float("nan"), float("-inf"), (), {}, [[]]],
        {1: "a", 2.5: None, False: [], None: {'é\n"': "\x00"}, Text("k"): Decimal("1.5"), "s": b"x"},
        ["\x01é" * PIECE_CHARS, {"k" * (PIECE_CHARS + 1): "v"}, [[[{"deep": ["x" * (3 * PIECE_CHARS)]}]]]],
        [list(range(20_000)), {str(i): [i] for i in range(5_000)}],
    ]
    for value in values:
        expected = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
        pieces = list(json_pieces(value))
        assert "".join(pieces) == expected
        assert max(map(len, pieces)) <= 6 * PIECE_CHARS + 2
    nested: Any = "x"
    for _ in range(50_000):  # deeper than the recursion limit: the walk keeps its own stack
        nested = [nested]
    assert "".join(json_pieces(nested)) == "[" * 50_000 + '"x"' + "]" * 50_000
    with pytest.raises(ValueError, match="Circular reference"):
        list(json_pieces(circular))
    with pytest.raises(TypeError, match="keys must be str"):
        list(json_pieces({(1, 2): 3}))


def test_a_spill_keeps_at_most_its_own_limit_and_the_marker_says_so(tmp_path: Path) -> None:
    from codomyrmex_orchestration.core._limits import MAX_SPILL_BYTES
    from codomyrmex_orchestration.core._store_codec import spill_bytes
    from codomyrmex_orchestration.core.models import StepResult

    assert MAX_SPILL_BYTES == 64 * 1024 * 1024
    limiter = OutputLimiter(1000, spill_dir=tmp_path, max_spill_bytes=10_000)
    marker = limiter("é" * 20_000, run_id="r", step_name="s", task_id="t")  # 40,002 bytes of JSON
    assert marker["size_bytes"] == 40_002
    spilled = Path(marker["spilled_to"])
    # Cut at a character: the 10,000th byte would split an "é".
    assert spilled.read_text("utf-8") == '"' + "é" * 4999 and marker["spilled_bytes"] == 9999
    assert marker["spill_error"] == (
        "the spill file keeps the first 9999 of 40002 bytes: a spill file is limited to 10000 bytes"
    )
    # The state budget counts the bytes the file holds, not the output's size.
    assert spill_bytes(StepResult(name="s", status=TaskStatus.COMPLETED, output=marker)) == 9999
    whole = limiter("z" * 5000, run_id="r", step_name="small", task_id="t")
    assert "spill_error" not in whole and "spilled_bytes" not in whole
    with pytest.raises(ValueError, match="max_spill_bytes"):
        OutputLimiter(1000, max_spill_bytes=0)


def test_a_step_name_that_is_not_a_safe_file_name_spills_under_a_digest(tmp_path: Path) -> None:
    limiter = OutputLimiter(1024, spill_dir=tmp_path)
    marker = limiter("z" * 5000, run_id="../../etc", step_name="a/../../b", task_id="t")
    spilled = Path(marker["spilled_to"]).resolve()
    assert spilled.is_relative_to(tmp_path.resolve())
    assert spilled.read_text() == json.dumps("z" * 5000)


def test_settings_limit_the_steps_of_a_workflow(tmp_path: Path) -> None:
    engine = _make(tmp_path, max_steps=3)
    try:
        steps = [{"name": f"s{i}", "module": "test", "action": "echo"} for i in range(4)]
        refusal = "^CODOMYRMEX_MAX_STEPS: the number of steps is 4, above the limit of 3$"
        with pytest.raises(LimitExceededError, match=refusal):
            engine.workflow_manager.create_workflow({"name": "four", "steps": steps})
        with pytest.raises(LimitExceededError, match=refusal):
            engine.execute_complex_workflow({"steps": steps}, name="four_again")
    finally:
        engine.shutdown()


def test_the_template_budget_is_a_setting_and_a_step_over_it_fails_naming_the_setting(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"CODOMYRMEX_MAX_RESOLVED_SIZE": "2048"},
        state_dir=tmp_path / "state",
        projects_dir=tmp_path / "projects",
        config_dir=tmp_path / "config",
        durable=False,
    )
    engine = build_engine(settings, templates_dir=None)
    engine.registry.register(ActionDefinition("test", "echo", _echo))
    try:
        embedded = {"value": "<{{params.p}}>"}
        steps = [
            {"name": "plain", "module": "test", "action": "echo", "parameters": embedded},
            {"name": "each", "module": "test", "action": "echo", "for_each": [1], "parameters": embedded},
        ]
        engine.workflow_manager.create_workflow({"name": "budget", "steps": steps})
        fits = engine.execute_workflow("budget", parameters={"p": "x" * 2000}, timeout=30)
        assert fits.status is WorkflowStatus.COMPLETED, fits.error
        run = engine.execute_workflow("budget", parameters={"p": "x" * 2100}, timeout=30)
        assert sorted(run.failed_steps) == ["each", "plain"]  # a step's parameters, and an item's
        plain = run.steps["plain"].error
        assert plain is not None and plain.type == "TemplateError"
        assert plain.message == (
            "parameters: template 'params.p': the resolved parameters would exceed 2048 characters, the "
            "template expansion budget (CODOMYRMEX_MAX_RESOLVED_SIZE); reference a smaller value or a part "
            "of it, or raise the setting"
        )
        each = run.steps["each"].error
        assert each is not None and "would exceed 2048 characters" in each.message
        assert "CODOMYRMEX_MAX_RESOLVED_SIZE" in each.message
    finally:
        engine.shutdown()


def test_settings_limit_sub_workflow_depth_and_the_run_fails_saying_so(tmp_path: Path) -> None:
    engine = _make(tmp_path, max_subworkflow_depth=1)
    try:
        wm = engine.workflow_manager
        wm.create_workflow({"name": "leaf", "steps": [{"name": "x", "module": "test", "action": "echo"}]})
        call = {"name": "call", "module": "workflow", "action": "run"}
        wm.create_workflow({"name": "mid", "steps": [{**call, "parameters": {"workflow": "leaf"}}]})
        wm.create_workflow({"name": "top", "steps": [{**call, "parameters": {"workflow": "mid"}}]})
        assert engine.execute_workflow("mid", timeout=30).status is WorkflowStatus.COMPLETED
        run = engine.execute_workflow("top", timeout=30)
        assert run.status is WorkflowStatus.FAILED
        refusal = (
            "CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH: the sub-workflow nesting depth for 'leaf' is 2, above the"
        )
        assert f"{refusal} limit of 1" in (run.error or "")
        assert engine.health_check().overall_status == "healthy"
    finally:
        engine.shutdown()


def test_a_run_failing_at_the_depth_limit_says_the_cause_once_with_its_chain_not_once_per_level(
    tmp_path: Path,
) -> None:
    engine = _make(tmp_path, max_subworkflow_depth=4)
    try:
        wm = engine.workflow_manager
        # It names itself by a parameter (validation refuses a literal self-reference): it nests to the limit.
        step = {
            "name": "a",
            "module": "workflow",
            "action": "run",
            "parameters": {"workflow": "{{params.w}}"},
        }
        wm.create_workflow({"name": "loop", "steps": [step], "parameters": {"w": "loop"}})
        run = engine.execute_workflow("loop", timeout=30)
        assert run.status is WorkflowStatus.FAILED
        children = {r.parent_run_id: r.run_id for r in wm.list_runs(limit=50) if r.parent_run_id}
        chain = [children[run.run_id]]
        while chain[-1] in children:
            chain.append(children[chain[-1]])
        assert len(chain) == 4
        error = run.steps["a"].error
        assert error is not None
        assert error.message == (
            f"step 'a' failed: sub-workflow 'loop' (run {chain[0]}) failed 3 levels down (loop -> loop -> "
            f"loop -> loop), in run {chain[-1]}: failed steps: a (CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH: the "
            "sub-workflow nesting depth for 'loop' is 5, above the limit of 4)"
        )
        assert engine.health_check().overall_status == "healthy"
    finally:
        engine.shutdown()


def test_a_huge_output_embedded_many_times_fails_the_step_clearly(tmp_path: Path) -> None:
    engine = _make(tmp_path, max_output_bytes=2 * 1024 * 1024)
    try:
        engine.workflow_manager.create_workflow(
            {
                "name": "blowup",
                "steps": [
                    {"name": "big", "module": "test", "action": "big", "parameters": {"size": 1024 * 1024}},
                    {
                        "name": "boom",
                        "module": "test",
                        "action": "echo",
                        "dependencies": ["big"],
                        "parameters": {"value": ["<{{steps.big.output}}>" for _ in range(40)]},
                    },
                    {
                        "name": "shared",
                        "module": "test",
                        "action": "echo",
                        "dependencies": ["big"],
                        # whole-value references share the value, but are charged for its size: 40 x 1 MiB
                        # passed whole is as far over the budget as 40 x 1 MiB embedded.
                        "parameters": {"value": ["{{steps.big.output}}" for _ in range(40)]},
                    },
                ],
            }
        )
        run = engine.execute_workflow("blowup", timeout=60)
        assert run.status is WorkflowStatus.FAILED
        assert run.failed_steps == ["boom", "shared"]
        for name in run.failed_steps:
            err = run.steps[name].error
            assert err is not None and err.type == "TemplateError"
            assert "16777216 characters, the template expansion budget" in err.message, err.message
        assert run.steps["big"].status is TaskStatus.COMPLETED
        assert engine.health_check().overall_status == "healthy"
    finally:
        engine.shutdown()


def test_one_output_referenced_whole_many_times_fails_the_step_instead_of_multiplying_it(
    tmp_path: Path,
) -> None:
    # The tester's workflow: a 1 MB echo, then an echo of it referenced whole 40 times (a 40 MB output
    # from 600 bytes of definition). Before, the 40 MB list was built, serialised whole by the cap and
    # spilled whole; now the step fails at the template budget and nothing of that size is allocated.
    engine = _make(tmp_path, max_output_bytes=1024 * 1024)  # the default cap: a's output is kept whole
    try:
        big, refs = "A" * 1_000_000, ["{{a.output}}"] * 40
        steps = [
            {"name": "a", "module": "core", "action": "echo", "parameters": {"message": big}},
            {"name": "b", "module": "core", "action": "echo", "parameters": {"message": refs}},
        ]
        engine.workflow_manager.create_workflow({"name": "amp", "steps": steps})
        del big
        tracemalloc.start()
        try:
            run = engine.execute_workflow("amp", timeout=60)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert run.steps["a"].status is TaskStatus.COMPLETED
        assert run.failed_steps == ["b"]
        err = run.steps["b"].error
        assert err is not None and "the template expansion budget" in err.message, err.message
        assert peak < 20_000_000, peak
        assert not (engine.state_dir / "outputs").exists()  # nothing was spilled
    finally:
        engine.shutdown()


def test_sub_workflows_that_fan_out_recursively_are_bounded_in_number(tmp_path: Path) -> None:
    from codomyrmex_orchestration.core.actions import create_registry
    from codomyrmex_orchestration.core.models import WorkflowStatus
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.workflows import WorkflowManager

    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(4, registry=registry)
    try:
        manager = WorkflowManager(
            orchestrator=orch,
            registry=registry,
            config_dir=None,
            max_subworkflow_depth=8,
            max_subworkflow_runs=20,
        )
        # Each run starts three runs of itself: unbounded, 3 + 9 + 27 + ... runs down to depth 8. (Its
        # name is a parameter: validation refuses a workflow that names itself.)
        call = {"module": "workflow", "action": "run", "parameters": {"workflow": "{{params.w}}"}}
        steps = [{"name": f"h{i}", **call} for i in range(3)]
        manager.create_workflow({"name": "hydra", "steps": steps, "parameters": {"w": "hydra"}})
        record = manager.execute_workflow("hydra", timeout=60)
        assert record.status is WorkflowStatus.FAILED
        assert "CODOMYRMEX_MAX_SUBWORKFLOW_RUNS: the number of sub-workflow runs under run" in (
            record.error or ""
        )
        children = [r for r in manager.list_runs(limit=1000) if r.parent_run_id is not None]
        assert len(children) <= 20
    finally:
        orch.shutdown(wait=True, cancel_pending=True, timeout=10)
