"""Map steps (``for_each``): one action per item through the real scheduler and the SQLite store.

Items are counted by the test actions themselves (a lock and a counter), never guessed from timing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from codomyrmex_orchestration.compose import build_engine
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.core._map_items import window_record
from codomyrmex_orchestration.core._workflow_map import WAVE
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    ItemResult,
    ItemWindow,
    MapItems,
    RunRecord,
    StepResult,
    StepSpec,
    TaskRecord,
    TaskStatus,
    WorkflowStatus,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from codomyrmex_orchestration.core.templating import TemplateContext, parse_condition, resolve
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import DAGValidationError, InvalidInputError, TemplateError
from tests.core.test_workflow_run import make_run
from tests.helpers.durable_steps import executions, read_line
from tests.helpers.map_steps import GATE_AT

REPO = Path(__file__).resolve().parents[2]

WAIT = 30.0  # the most any bounded wait here takes (they end as soon as what they wait for happens)


class Calls:
    """What the test actions saw: calls per item, items in flight now and at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards every field below
        self.per_item: dict[Any, int] = {}
        self.in_flight = 0
        self.most = 0
        self.failing: set[Any] = set()  # items whose calls raise
        self.fail_first: bool = False  # every item's first call raises

    def enter(self, item: Any) -> int:
        with self.lock:
            self.per_item[item] = self.per_item.get(item, 0) + 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            return self.per_item[item]

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def blocker(calls: Calls, at: int, reached: threading.Event) -> ActionDefinition:
    """``test.block``: an item holds its worker until cancelled; ``reached`` is set once ``at`` are in
    flight."""

    def block(params: dict[str, Any], ctx: ActionContext) -> Any:
        calls.enter(params["item"])
        try:
            with calls.lock:
                if calls.in_flight >= at:
                    reached.set()
            ctx.cancel_event.wait(WAIT)
            raise RuntimeError("stopped")
        finally:
            calls.leave()

    return ActionDefinition("test", "block", block)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def registry(calls: Calls) -> ActionRegistry:
    registry = create_registry(load_plugins=False)

    def double(params: dict[str, Any], ctx: ActionContext) -> Any:
        item = params["item"]
        attempt = calls.enter(item)
        try:
            if item in calls.failing or (calls.fail_first and attempt == 1):
                raise RuntimeError(f"item {item} broke")
            return item * 2
        finally:
            calls.leave()

    registry.register(ActionDefinition("test", "double", double))
    return registry


@pytest.fixture
def orchestrator(registry: ActionRegistry) -> Iterator[TaskOrchestrator]:
    orch = TaskOrchestrator(16, registry=registry)  # more workers than any map's bound below
    yield orch
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    yield store
    store.close()


@pytest.fixture
def manager(orchestrator: TaskOrchestrator, registry: ActionRegistry, store: SqliteStore) -> WorkflowManager:
    return WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)


def mapped(for_each: Any = "{{steps.list.output.items}}", **kw: Any) -> dict[str, Any]:
    return {
        "name": "each",
        "module": "test",
        "action": "double",
        "for_each": for_each,
        "parameters": {"item": "{{item}}"},
        **kw,
    }


def lister(items: list[Any]) -> dict[str, Any]:
    return {"name": "list", "module": "core", "action": "set", "parameters": {"items": items}}


def test_a_map_step_runs_once_per_item_with_at_most_max_parallel_in_flight_and_keeps_item_order(
    manager: WorkflowManager, orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    eight_in_flight = threading.Event()
    release = threading.Event()

    def gated(params: dict[str, Any], ctx: ActionContext) -> Any:
        calls.enter(params["item"])
        try:
            with calls.lock:
                if calls.in_flight >= 8:
                    eight_in_flight.set()
            release.wait(WAIT)
            return params["item"] * 2
        finally:
            calls.leave()

    registry.register(ActionDefinition("test", "gated", gated))
    manager.create_workflow(
        "fan",
        [
            # A literal list: the step expands while start_workflow submits the first wave.
            mapped(for_each=list(range(50)), action="gated", max_parallel=8),
            {
                "name": "total",
                "module": "core",
                "action": "set",
                "parameters": {"all": "{{steps.each.output}}"},
            },
        ],
    )
    run_id = manager.start_workflow("fan")
    try:
        assert eight_in_flight.wait(WAIT)
        # 16 workers are free, yet the scheduler was handed only the items the bound lets through.
        queued = [t for t in orchestrator.list_tasks(limit=1000) if t.run_id == run_id]
        assert len([t for t in queued if not t.status.is_terminal]) == 8
    finally:
        release.set()
    record = manager.wait_run(run_id, WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert calls.most == 8
    assert calls.per_item == dict.fromkeys(range(50), 1)
    assert record.steps["each"].output == [i * 2 for i in range(50)]
    assert record.steps["total"].output == {"all": [i * 2 for i in range(50)]}
    items = record.steps["each"].items
    assert items is not None and items.total == 50 and items.counts == {"completed": 50}
    assert [i.index for i in items.items] == list(range(50))
    assert all(i.attempts == 1 and i.started_at is not None for i in items.items)


def test_a_map_step_without_max_parallel_hands_the_scheduler_its_items_in_waves(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    manager = WorkflowManager(
        orchestrator=orchestrator, registry=registry, store=MemoryStore(), config_dir=None
    )
    sixteen_in_flight = threading.Event()
    release = threading.Event()

    def gated(params: dict[str, Any], ctx: ActionContext) -> Any:
        calls.enter(params["item"])
        try:
            with calls.lock:
                if calls.in_flight >= 16:
                    sixteen_in_flight.set()
            release.wait(WAIT)
            return params["item"] * 2
        finally:
            calls.leave()

    registry.register(ActionDefinition("test", "gated", gated))
    items = 3 * WAVE
    manager.create_workflow("waves", [mapped(for_each=list(range(items)), action="gated")])
    run_id = manager.start_workflow("waves")  # returns once the first wave is submitted
    try:
        assert sixteen_in_flight.wait(WAIT)
        # Every worker is held by an item: what the scheduler holds now is the whole first wave.
        live = [t for t in orchestrator.list_tasks(limit=10 * items) if t.run_id == run_id]
        assert len([t for t in live if not t.status.is_terminal]) == WAVE
    finally:
        release.set()
    record = manager.wait_run(run_id, WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert calls.per_item == dict.fromkeys(range(items), 1)
    assert record.steps["each"].output == [i * 2 for i in range(items)]
    view = record.steps["each"].items
    assert view is not None and view.counts == {"completed": items}
    assert all(i.attempts == 1 and i.finished_at is not None for i in view.items)


def test_a_scheduler_with_more_workers_than_half_a_wave_gets_waves_of_twice_its_workers(
    registry: ActionRegistry, calls: Calls
) -> None:
    workers = WAVE // 2 + 6
    orchestrator = TaskOrchestrator(workers, registry=registry)
    manager = WorkflowManager(
        orchestrator=orchestrator, registry=registry, store=MemoryStore(), config_dir=None
    )
    all_busy = threading.Event()
    release = threading.Event()

    def gated(params: dict[str, Any], ctx: ActionContext) -> Any:
        calls.enter(params["item"])
        try:
            with calls.lock:
                if calls.in_flight >= workers:
                    all_busy.set()
            release.wait(WAIT)
            return params["item"]
        finally:
            calls.leave()

    registry.register(ActionDefinition("test", "gated", gated))
    items = 6 * workers
    manager.create_workflow("wide", [mapped(for_each=list(range(items)), action="gated")])
    try:
        run_id = manager.start_workflow("wide")
        assert all_busy.wait(WAIT)  # every worker holds an item: none waits for the next wave
        live = [t for t in orchestrator.list_tasks(limit=10 * items) if t.run_id == run_id]
        assert len([t for t in live if not t.status.is_terminal]) == 2 * workers
        release.set()
        record = manager.wait_run(run_id, WAIT)
        assert record.status is WorkflowStatus.COMPLETED, record.error
        assert record.steps["each"].output == list(range(items))
    finally:
        release.set()
        orchestrator.shutdown(wait=True, cancel_pending=True, timeout=10)


def test_a_map_over_an_earlier_steps_output_sees_the_whole_list(manager: WorkflowManager) -> None:
    manager.create_workflow("chain", [lister([3, 1, 2]), mapped()])
    record = manager.execute_workflow("chain", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert record.steps["each"].output == [6, 2, 4]


def test_item_and_index_reach_parameters_and_run_if_and_a_skipped_item_gives_no_output(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        "names",
        [
            {
                "name": "each",
                "module": "core",
                "action": "set",
                "for_each": [{"n": "a"}, {"n": "b"}, {"n": "c"}],
                "run_if": "item.n != 'b'",
                "parameters": {"label": "{{index}}:{{item.n}}", "index": "{{index}}"},
            }
        ],
    )
    record = manager.execute_workflow("names", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert record.steps["each"].output == [{"label": "0:a", "index": 0}, {"label": "2:c", "index": 2}]
    items = record.steps["each"].items
    assert items is not None and items.counts == {"completed": 2, "skipped": 1}
    assert items.items[1].skipped_reason == "run_if is false: item.n != 'b'"


def test_an_item_its_parameters_cannot_resolve_for_fails_alone_naming_the_path(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        "partial",
        [
            {
                "name": "each",
                "module": "core",
                "action": "set",
                "for_each": [{"n": "a"}, {"m": "b"}, {"n": "c"}],
                "required": False,
                "parameters": {"label": "{{index}}:{{item.n}}"},
            }
        ],
    )
    record = manager.execute_workflow("partial", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    output = record.steps["each"].output
    assert output["outputs"] == [{"label": "0:a"}, {"label": "2:c"}]
    assert [f["index"] for f in output["failed"]] == [1]
    assert "item has no key 'n'" in output["failed"][0]["error"]


def test_an_empty_list_completes_the_map_step_with_an_empty_list(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "nothing",
        [
            lister([]),
            mapped(),
            {
                "name": "after",
                "module": "core",
                "action": "set",
                "parameters": {"got": "{{steps.each.output}}"},
            },
        ],
    )
    record = manager.execute_workflow("nothing", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert record.steps["each"].output == []
    assert record.steps["after"].output == {"got": []}


def test_failed_items_of_a_required_map_step_fail_the_step_and_the_run_naming_the_items(
    manager: WorkflowManager, calls: Calls
) -> None:
    calls.failing = {1, 3}
    manager.create_workflow("strict", [lister([0, 1, 2, 3, 4]), mapped()])
    record = manager.execute_workflow("strict", timeout=WAIT)
    assert record.status is WorkflowStatus.FAILED
    step = record.steps["each"]
    assert step.status is TaskStatus.FAILED and step.output is None
    assert step.error is not None
    assert step.error.message == "2 of 5 items failed: [1] item 1 broke; [3] item 3 broke"
    assert record.failed_steps == ["each"]
    assert calls.per_item == dict.fromkeys(range(5), 1)  # the other items still ran


def test_a_map_step_that_is_not_required_lists_failed_items_and_the_run_goes_on(
    manager: WorkflowManager, calls: Calls
) -> None:
    calls.failing = {1}
    manager.create_workflow(
        "lenient",
        [
            lister([0, 1, 2]),
            mapped(required=False),
            {
                "name": "after",
                "module": "core",
                "action": "set",
                "parameters": {"ok": "{{steps.each.output.outputs}}", "bad": "{{steps.each.output.failed}}"},
            },
        ],
    )
    record = manager.execute_workflow("lenient", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    failed = [{"index": 1, "status": "failed", "error": "item 1 broke"}]
    assert record.steps["each"].output == {"outputs": [0, 4], "failed": failed}
    assert record.steps["after"].output == {"ok": [0, 4], "bad": failed}


def test_each_item_gets_the_steps_retries(manager: WorkflowManager, calls: Calls) -> None:
    calls.fail_first = True
    manager.create_workflow("retry", [lister([5, 6, 7]), mapped(max_retries=1)])
    record = manager.execute_workflow("retry", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert record.steps["each"].output == [10, 12, 14]
    assert calls.per_item == {5: 2, 6: 2, 7: 2}
    items = record.steps["each"].items
    assert items is not None and [i.attempts for i in items.items] == [2, 2, 2]


def test_more_items_than_the_limit_fail_the_step_naming_it_the_count_and_the_setting(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None, max_map_items=3)
    manager.create_workflow("big", [lister([1, 2, 3, 4]), mapped()])
    record = manager.execute_workflow("big", timeout=WAIT)
    assert record.status is WorkflowStatus.FAILED
    error = record.steps["each"].error
    assert error is not None and error.type == "LimitExceededError"
    assert error.message == (
        "CODOMYRMEX_MAX_MAP_ITEMS: the number of items of map step 'each' is 4, above the limit of 3"
    )
    assert calls.per_item == {}  # no item ran


def test_the_item_limit_is_a_setting_read_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"CODOMYRMEX_MAX_MAP_ITEMS": "7"},
        state_dir=tmp_path / "s",
        config_dir=tmp_path / "c",
        projects_dir=tmp_path / "p",
        durable=False,
    )
    engine = build_engine(settings)
    try:
        assert engine.workflow_manager.max_map_items == 7
    finally:
        engine.shutdown()


def test_a_literal_list_longer_than_the_limit_is_refused_by_validate_and_create_naming_everything(
    orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None, max_map_items=3)
    too_long = {"name": "big", "steps": [mapped(for_each=[1, 2, 3, 4])]}
    expected = (
        "steps: workflow 'big' is invalid, 1 problem: step 'each' for_each: CODOMYRMEX_MAX_MAP_ITEMS: "
        "the number of items of map step 'each' is 4, above the limit of 3"
    )  # the run's own words, after the workflow, the step and the field
    for refuse in (manager.validate_workflow, manager.create_workflow):
        with pytest.raises(DAGValidationError) as refused:
            refuse(too_long)
        assert str(refused.value) == expected
    assert manager.list_workflows() == []
    manager.create_workflow({"name": "fits", "steps": [mapped(for_each=[1, 2, 3])]})
    assert manager.execute_workflow("fits", timeout=WAIT).steps["each"].output == [2, 4, 6]
    # A reference is counted when a run resolves it (see the test above): the definition is valid.
    manager.create_workflow("later", [lister([1, 2, 3, 4]), mapped()])


def test_the_item_limit_setting_refuses_a_config_file_with_a_longer_literal_list(tmp_path: Path) -> None:
    config = tmp_path / "c"
    config.mkdir()
    step = {
        "name": "each",
        "module": "core",
        "action": "echo",
        "for_each": [1, 2, 3],
        "parameters": {"message": 1},
    }
    (config / "big.json").write_text(json.dumps({"name": "big", "steps": [step]}))
    settings = Settings.from_env(
        {"CODOMYRMEX_MAX_MAP_ITEMS": "2"},
        state_dir=tmp_path / "s",
        config_dir=config,
        projects_dir=tmp_path / "p",
        durable=False,
        load_samples=False,
    )
    engine = build_engine(settings)
    try:
        [(path, reason)] = engine.workflow_manager.load_errors  # checked with the setting as it loaded
        assert path == str(config / "big.json")
        limit = "CODOMYRMEX_MAX_MAP_ITEMS: the number of items of map step 'each' is 3, above the limit of 2"
        assert reason.endswith(f"step 'each' for_each: {limit}"), reason
        assert engine.workflow_manager.list_workflows() == []
    finally:
        engine.shutdown()


def test_a_for_each_that_resolves_to_something_else_than_a_list_fails_the_step_clearly(
    manager: WorkflowManager,
) -> None:
    manager.create_workflow(
        "notalist",
        [{"name": "list", "module": "core", "action": "set", "parameters": {"items": "abc"}}, mapped()],
    )
    record = manager.execute_workflow("notalist", timeout=WAIT)
    error = record.steps["each"].error
    assert error is not None
    assert error.message == "for_each: step 'each': '{{steps.list.output.items}}' is a str, not a list"


def test_a_running_map_shows_each_items_status_and_the_counts(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    live_map_shows_its_items(manager, registry)


def test_a_running_map_in_memory_shows_its_running_item_though_nobody_hears_starts(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    # In memory with no listener the items report no start; the snapshot asks the scheduler.
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)
    live_map_shows_its_items(manager, registry)


def live_map_shows_its_items(manager: WorkflowManager, registry: ActionRegistry) -> None:
    started = threading.Event()
    release = threading.Event()

    def hold(params: dict[str, Any], ctx: ActionContext) -> Any:
        if params["item"] == 0:
            started.set()
            release.wait(WAIT)
        return params["item"]

    registry.register(ActionDefinition("test", "hold", hold))
    manager.create_workflow("live", [lister([0, 1, 2]), mapped(action="hold", max_parallel=1)])
    run_id = manager.start_workflow("live")
    try:
        assert started.wait(WAIT)
        live = manager.get_run(run_id)
        step = live.steps["each"]
        assert step.status is TaskStatus.RUNNING
        assert step.items is not None and step.items.total == 3
        assert [i.status for i in step.items.items] == [
            TaskStatus.RUNNING,
            TaskStatus.PENDING,
            TaskStatus.PENDING,
        ]
        assert step.items.counts == {"running": 1, "pending": 2}
    finally:
        release.set()
    assert manager.wait_run(run_id, WAIT).steps["each"].output == [0, 1, 2]


def test_cancelling_a_run_cancels_the_items_not_finished(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    started = threading.Event()

    def block(params: dict[str, Any], ctx: ActionContext) -> Any:
        started.set()
        ctx.cancel_event.wait(WAIT)
        raise RuntimeError("stopped")

    registry.register(ActionDefinition("test", "block", block))
    manager.create_workflow("stop", [lister([0, 1, 2, 3]), mapped(action="block", max_parallel=2)])
    run_id = manager.start_workflow("stop")
    assert started.wait(WAIT)
    record = manager.cancel_run(run_id)
    assert record.status is WorkflowStatus.CANCELLED
    step = record.steps["each"]
    assert step.status is TaskStatus.CANCELLED
    assert step.items is not None and step.items.counts == {"cancelled": 4}


def test_the_workflows_max_parallel_bounds_items_too_and_cancel_settles_the_queued_ones(
    manager: WorkflowManager, orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    two_in_flight = threading.Event()
    registry.register(blocker(calls, 2, two_in_flight))
    manager.create_workflow(
        {
            "name": "tight",
            "max_parallel": 2,
            "steps": [mapped(for_each=list(range(6)), action="block", max_parallel=4)],
        }
    )
    run_id = manager.start_workflow("tight")
    assert two_in_flight.wait(WAIT)
    handed = [t for t in orchestrator.list_tasks(limit=1000) if t.run_id == run_id]
    assert len(handed) == 2  # two more hold the map's slots in the run's queue; two wait in the map
    record = manager.cancel_run(run_id)
    assert record.status is WorkflowStatus.CANCELLED
    step = record.steps["each"]
    assert step.status is TaskStatus.CANCELLED
    assert step.items is not None and step.items.counts == {"cancelled": 6}
    assert calls.most == 2 and sum(calls.per_item.values()) == 2


@pytest.mark.parametrize(
    ("workers", "max_parallel"), [(4, 1), (1, None)], ids=["max_parallel_1", "queued_together"]
)
def test_an_item_that_does_work_starts_only_once_the_items_completed_before_it_are_on_disk(
    registry: ActionRegistry, tmp_path: Path, workers: int, max_parallel: int | None
) -> None:
    # The writer would wait an hour before committing on its own: what an item sees on disk as it starts
    # was committed because it was about to start. A map with no parents, so its items have no parent
    # results to wait for; with one worker and no max_parallel the items are queued in the scheduler
    # together and start one after another.
    path = tmp_path / "state.db"
    store = SqliteStore(path, flush_interval=3600)
    orchestrator = TaskOrchestrator(workers, registry=registry)
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    seen: dict[int, set[str]] = {}

    def look(params: dict[str, Any], ctx: ActionContext) -> int:
        conn = sqlite3.connect(path)  # another connection: only committed rows
        try:
            rows = conn.execute(
                "SELECT name FROM steps WHERE run_id = ? AND status = 'completed'", (ctx.run_id,)
            )
            seen[params["item"]] = {name for (name,) in rows}
        finally:
            conn.close()
        return int(params["item"])

    registry.register(ActionDefinition("test", "look", look))  # not instant: it does work
    step = {**mapped(list(range(6)), max_parallel=max_parallel), "action": "look"}
    manager.create_workflow({"name": "looking", "steps": [step]})
    try:
        record = manager.execute_workflow("looking", timeout=WAIT)
    finally:
        store.close()
        orchestrator.shutdown(wait=True, timeout=10)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    for item in range(6):
        assert {f"each[{i}]" for i in range(item)} <= seen[item], (item, sorted(seen[item]))


def test_items_are_stored_one_row_each_and_read_back_into_their_map_step(
    manager: WorkflowManager, store: SqliteStore, tmp_path: Path
) -> None:
    manager.create_workflow("stored", [lister([1, 2, 3]), mapped()])
    record = manager.execute_workflow("stored", timeout=WAIT)
    store.flush()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = dict(conn.execute("SELECT name, result FROM steps WHERE run_id = ?", (record.run_id,)))
    assert sorted(rows) == ["each", "each[0]", "each[1]", "each[2]", "list"]
    own = json.loads(rows["each"])
    # The map step's own row holds neither its items nor its output: they live once, in the item rows.
    assert own["output"] is None and own["items"]["items"] == [] and own["items"]["total"] == 3
    assert json.loads(rows["each[1]"])["output"] == 4
    stored = store.get_run(record.run_id)
    assert stored is not None
    assert list(stored.steps) == ["list", "each"]
    assert stored.steps["each"].output == [2, 4, 6]
    assert stored.steps["each"].items == record.steps["each"].items


def test_a_finished_maps_items_are_whole_models_equal_to_validated_ones(manager: WorkflowManager) -> None:
    manager.create_workflow("models", [lister([1, 2]), mapped()])
    record = manager.execute_workflow("models", timeout=WAIT)
    items = record.steps["each"].items
    assert items is not None
    for item in items.items:
        again = ItemResult.model_validate(item.model_dump())
        assert item == again and item.model_dump_json() == again.model_dump_json()
        assert item.model_copy(update={"attempts": 9}).attempts == 9 and item.attempts == 1
        assert item.status is TaskStatus.COMPLETED and item.started_at is not None


def test_a_map_step_of_a_memory_store_run_is_read_back_whole(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    store = MemoryStore()
    manager = WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)
    manager.create_workflow("mem", [lister([1, 2]), mapped(required=False)])
    record = manager.execute_workflow("mem", timeout=WAIT)
    stored = store.get_run(record.run_id)
    assert stored is not None
    assert stored.steps["each"].output == {"outputs": [2, 4], "failed": []}
    assert stored.steps["each"].items == record.steps["each"].items


def test_resume_reruns_only_the_failed_items_and_keeps_the_completed_outputs(
    manager: WorkflowManager, calls: Calls
) -> None:
    calls.failing = {2, 4}
    manager.create_workflow("again", [lister([0, 1, 2, 3, 4]), mapped(max_parallel=2)])
    first = manager.execute_workflow("again", timeout=WAIT)
    assert first.status is WorkflowStatus.FAILED
    calls.failing = set()
    resumed = manager.resume_run(first.run_id, timeout=WAIT)
    assert resumed.status is WorkflowStatus.COMPLETED, resumed.error
    assert resumed.steps["each"].output == [0, 2, 4, 6, 8]
    assert calls.per_item == {0: 1, 1: 1, 2: 2, 3: 1, 4: 2}


def test_references_inside_a_literal_list_resolve_before_the_items_run(manager: WorkflowManager) -> None:
    manager.create_workflow(
        "literal",
        [lister([7]), mapped(for_each=["{{steps.list.output.items.0}}", 8])],
    )
    record = manager.execute_workflow("literal", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    assert record.steps["each"].output == [14, 16]


# --------------------------------------------------------------------------- definitions


def test_item_and_index_are_references_in_templates_and_bare_in_conditions() -> None:
    ctx = TemplateContext(item=({"n": "x", "tags": ["a", "b"]}, 4))
    assert resolve({"all": "{{item}}", "tag": "{{item.tags.1}}", "at": "{{ index }}"}, ctx) == {
        "all": {"n": "x", "tags": ["a", "b"]},
        "tag": "b",
        "at": 4,
    }
    assert parse_condition("item.n == 'x' and index >= 4").evaluate(ctx)
    assert not parse_condition("{{index}} < 4 or item.tags == []").evaluate(ctx)


def test_item_outside_a_map_step_is_an_error_naming_for_each() -> None:
    with pytest.raises(TemplateError, match="item and index exist only in a step with for_each"):
        resolve("{{item.n}}", TemplateContext())


def test_a_step_called_item_keeps_its_short_form() -> None:
    ctx = TemplateContext(steps={"item": ("completed", 5)}, item=("own", 0))
    assert resolve("{{item.output}}", ctx) == 5
    assert resolve("{{item}}", ctx) == "own"


def problems(steps: list[dict[str, Any]]) -> list[str]:
    return WorkflowDAG([StepSpec.model_validate(s) for s in steps]).problems()


def test_validation_names_a_for_each_that_is_neither_a_list_nor_one_reference() -> None:
    assert problems([lister([1]), mapped(for_each="items of list")]) == [
        "step 'each' for_each: 'items of list' is neither a list nor one {{...}} reference naming a list, "
        "e.g. '{{steps.list.output.files}}' or '{{params.names}}'"
    ]


def test_validation_names_item_used_outside_a_map_step_and_max_parallel_without_for_each() -> None:
    found = problems(
        [{"name": "a", "module": "core", "action": "set", "parameters": {"x": "{{item}}"}, "max_parallel": 2}]
    )
    assert found == [
        "step 'a': max_parallel applies only to a step with for_each",
        "step 'a' uses '{{item}}', which exists only in a step with for_each",
    ]


def test_a_map_steps_max_parallel_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_parallel"):
        StepSpec.model_validate(mapped(max_parallel=0))


def test_validate_workflow_refuses_a_for_each_reading_an_unknown_step(manager: WorkflowManager) -> None:
    with pytest.raises(DAGValidationError, match=r"step 'each' references unknown step 'nope'"):
        manager.validate_workflow({"name": "w", "steps": [mapped(for_each="{{steps.nope.output}}")]})


def test_a_map_step_is_one_node_in_mermaid_and_dot_with_its_item_count_when_known() -> None:
    dag = WorkflowDAG([StepSpec.model_validate(s) for s in (lister([1, 2]), mapped())], workflow_name="w")
    assert dag.to_mermaid() == (
        'graph TD\n    n0["list<br/>core.set"]\n    n1["each<br/>test.double<br/>for each"]\n    n0 -.-> n1\n'
    )
    assert 'n1["each<br/>test.double<br/>for each: 2 items"]' in dag.to_mermaid(item_counts={"each": 2})
    assert '"each" [label="each\\ntest.double\\nfor each: 2 items"];' in dag.to_dot(item_counts={"each": 2})
    assert '"each" [label="each\\ntest.double\\nfor each"];' in dag.to_dot()


def test_an_unknown_field_next_to_for_each_is_still_refused(manager: WorkflowManager) -> None:
    with pytest.raises(InvalidInputError, match="for_eachh"):
        manager.validate_workflow({"name": "w", "steps": [{**mapped(), "for_eachh": []}]})


# --------------------------------------------------------------------------- kill -9

CHILD = textwrap.dedent(
    """
    import sys
    from codomyrmex_orchestration.core.engine import OrchestrationEngine

    state, marks, projects, fifo = sys.argv[1:5]
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )
    engine.workflow_manager.create_workflow({"name": "durable_map", "steps": [
        {"name": "list", "module": "core", "action": "set", "parameters": {"items": list(range(20))}},
        {"name": "each", "module": "python", "action": "call", "max_parallel": 1,
         "for_each": "{{steps.list.output.items}}",
         "parameters": {"function": "tests.helpers.map_steps:visit",
                        "args": [marks, fifo, "{{item}}", "{{run.id}}"]}},
    ]})
    engine.execute_workflow("durable_map", wait=True)
    """
)


def test_kill_9_during_a_map_then_resume_calls_no_completed_item_again(tmp_path: Path) -> None:
    state, marks, projects = tmp_path / "state", tmp_path / "marks", tmp_path / "projects"
    marks.mkdir()
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(marks), str(projects), str(fifo)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = read_line(proc, timeout=60)
        assert line.startswith("gate "), "the child never reached the gate item"
        run_id = line.split()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert executions(str(marks)) == {f"item{i}": 1 for i in range(GATE_AT + 1)}

    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, projects_dir=projects, templates_dir=None, max_workers=4
    )
    try:
        interrupted = engine.workflow_manager.get_run(run_id)
        assert interrupted.status is WorkflowStatus.INTERRUPTED
        items = interrupted.steps["each"].items
        assert items is not None and items.total == 20
        assert items.counts["completed"] == GATE_AT
        assert [i.output for i in items.items[:GATE_AT]] == [i * 10 for i in range(GATE_AT)]

        fifo.unlink()  # the gate passes from now on
        final = engine.resume_run(run_id, timeout=60)
        assert final.status is WorkflowStatus.COMPLETED, final.error
        assert final.steps["each"].output == [i * 10 for i in range(20)]
        after = executions(str(marks))
        # The gate item was running when the process died: it runs again, by design; no other does.
        assert after == {f"item{i}": 2 if i == GATE_AT else 1 for i in range(20)}
    finally:
        engine.shutdown()


def test_a_map_step_added_to_a_running_run_runs_its_items_after_its_dependency(
    manager: WorkflowManager, registry: ActionRegistry
) -> None:
    release = threading.Event()

    def held(params: dict[str, Any], ctx: ActionContext) -> Any:
        assert release.wait(WAIT)
        return params

    registry.register(ActionDefinition("test", "held", held))
    manager.create_workflow(
        "grows", [{"name": "list", "module": "test", "action": "held", "parameters": {"items": [4, 5]}}]
    )
    run_id = manager.start_workflow("grows")
    run = manager._active.get(run_id)
    assert run is not None
    manager._driver.add_steps(run, [StepSpec.model_validate(mapped(dependencies=["list"]))])
    release.set()
    final = manager.wait_run(run_id, WAIT)
    assert final.status is WorkflowStatus.COMPLETED, final.error
    assert final.steps["each"].output == [8, 10]


def test_items_join_the_runs_graph_as_slots_open_and_leave_it_once_done() -> None:
    echo = {
        "name": "each",
        "module": "core",
        "action": "echo",
        "for_each": list(range(5)),
        "max_parallel": 2,
        "parameters": {"message": "{{item}}"},
    }
    run = make_run(create_registry(load_plugins=False), [echo])
    first = run.begin()
    assert [n for n, _ in first.submit] == ["each[0]", "each[1]"]
    assert sorted(run.graph) == ["each", "each[0]", "each[1]"]  # two slots: two item nodes, not five
    done = StepResult(name="each[0]", status=TaskStatus.COMPLETED, output=0)
    then = run.step_finished(done, held_slot=True)
    assert [n for n, _ in then.submit] == ["each[2]"]
    assert sorted(run.graph) == ["each", "each[1]", "each[2]"]  # the done item is forgotten
    for i in (1, 2, 3):
        run.step_finished(
            StepResult(name=f"each[{i}]", status=TaskStatus.COMPLETED, output=i), held_slot=True
        )
    last = run.step_finished(
        StepResult(name="each[4]", status=TaskStatus.COMPLETED, output=4), held_slot=True
    )
    assert last.finished and list(run.graph) == ["each"] and not run.graph.is_active()
    final = run.finish()
    assert final is not None and final.steps["each"].output == [0, 1, 2, 3, 4]


def test_cancelling_a_map_without_max_parallel_stops_the_wave_in_the_scheduler(
    manager: WorkflowManager, orchestrator: TaskOrchestrator, registry: ActionRegistry, calls: Calls
) -> None:
    all_busy = threading.Event()  # every worker holds an item; the rest of the wave is queued
    registry.register(blocker(calls, 16, all_busy))
    items = 3 * WAVE
    manager.create_workflow("stop_wave", [mapped(for_each=list(range(items)), action="block")])
    ends: dict[str, list[str]] = {}  # task id -> its events (a run's tasks are not kept once they end)
    lock = threading.Lock()

    def heard(event: str, task: TaskRecord) -> None:
        with lock:
            ends.setdefault(task.task_id, []).append(event)

    orchestrator.add_listener(heard)
    run_id = manager.start_workflow("stop_wave")
    assert all_busy.wait(WAIT)
    record = manager.cancel_run(run_id)
    assert record.status is WorkflowStatus.CANCELLED
    step = record.steps["each"]
    assert step.items is not None and step.items.counts == {"cancelled": items}
    with lock:  # the first wave was queued, and each of its tasks ended cancelled, started or not
        assert len(ends) == WAVE
        assert all(events[0] == "task.queued" and events[-1] == "task.cancelled" for events in ends.values())
    assert set(calls.per_item) <= set(range(WAVE))  # no item past the first wave was started


# --------------------------------------------------------------------------- pages of items


def test_a_page_of_a_running_100000_item_map_builds_only_the_pages_items() -> None:
    echo = {
        "name": "each",
        "module": "core",
        "action": "echo",
        "for_each": list(range(100_000)),
        "max_parallel": 2,
        "parameters": {"message": "{{item}}"},
    }
    run = make_run(create_registry(load_plugins=False), [echo])
    assert [n for n, _ in run.begin().submit] == ["each[0]", "each[1]"]
    broke = ErrorInfo(message="item 0 broke", type="RuntimeError")
    run.step_finished(StepResult(name="each[0]", status=TaskStatus.FAILED, error=broke), held_slot=True)
    run.step_finished(StepResult(name="each[1]", status=TaskStatus.COMPLETED, output=1), held_slot=True)
    tracemalloc.start()
    try:
        page = run.snapshot(ItemWindow(offset=50_000, limit=3))
        page_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = run.snapshot()
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Built under the run's lock: the whole snapshot builds 100,000 items (about 40 MB), a page three.
    assert page_peak < 256 * 1024 and page_peak * 100 < whole_peak, (page_peak, whole_peak)
    items = page.steps["each"].items
    assert items is not None and items.total == 100_000
    assert items.counts == {"pending": 99_998, "completed": 1, "failed": 1}
    assert [(i.index, i.status) for i in items.items] == [
        (n, TaskStatus.PENDING) for n in (50_000, 50_001, 50_002)
    ]
    shown = whole.steps["each"].items
    assert shown is not None and items.items == shown.items[50_000:50_003]
    failed = run.snapshot(ItemWindow(statuses=["failed", "timed_out"])).steps["each"].items
    assert failed is not None and [(i.index, i.error) for i in failed.items] == [(0, broke)]


def _stored_maps(store: SqliteStore | MemoryStore) -> str:
    """A run saved as a durable run leaves it after a crash: a plain step, a map step whose items 0-7 have
    rows in every status (8-11 never started: no row), a completed one and one none of whose items
    started; its id."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = ["completed", "failed", "running", "skipped", "completed", "pending", "timed_out", "completed"]
    record = RunRecord(
        run_id="r1",
        workflow_name="w",
        status=WorkflowStatus.INTERRUPTED,
        steps={
            "list": StepResult(name="list", status=TaskStatus.COMPLETED, output={"n": 12}),
            "each": StepResult(name="each", status=TaskStatus.RUNNING, items=MapItems(total=12)),
            "done": StepResult(
                name="done", status=TaskStatus.COMPLETED, items=MapItems(total=3, required=False)
            ),
            "idle": StepResult(name="idle", status=TaskStatus.RUNNING, items=MapItems(total=4)),
        },
    )
    store.save_run(record)
    for i, status in enumerate(statuses):
        error = (
            ErrorInfo(message=f"item {i} broke", type="RuntimeError")
            if status in ("failed", "timed_out")
            else None
        )
        output = i * 10 if status == "completed" else None
        row = StepResult(
            name=f"each[{i}]", status=TaskStatus(status), output=output, error=error, started_at=at
        )
        store.save_step("r1", row)
    for i in range(3):
        store.save_step("r1", StepResult(name=f"done[{i}]", status=TaskStatus.COMPLETED, output=[i]))
    store.flush()
    return record.run_id


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_page_of_a_stored_run_is_the_whole_records_page_whatever_the_window(
    tmp_path: Path, kind: str
) -> None:
    store = SqliteStore(tmp_path / "state.db") if kind == "sqlite" else MemoryStore()
    try:
        run_id = _stored_maps(store)
        whole = store.get_run(run_id)
        assert whole is not None
        windows = [
            ItemWindow(),
            ItemWindow(offset=3, limit=4),
            ItemWindow(offset=10, limit=5),
            ItemWindow(offset=40),
            ItemWindow(limit=0),
            ItemWindow(statuses=["pending"]),
            ItemWindow(offset=1, limit=2, statuses=["failed", "timed_out", "completed"]),
            ItemWindow(statuses=[TaskStatus.RUNNING, TaskStatus.INTERRUPTED]),
        ]
        for window in windows:
            page = store.get_run(run_id, items=window)
            assert page is not None
            assert list(page.steps) == list(whole.steps) == ["list", "each", "done", "idle"]
            expected = window_record(whole, window)
            assert page.steps == expected.steps, window
    finally:
        store.close()
    each = whole.steps["each"].items
    assert each is not None and each.counts == {
        "pending": 5,
        "running": 1,
        "completed": 3,
        "failed": 1,
        "skipped": 1,
        "timed_out": 1,
    }
    assert whole.steps["done"].output == {"outputs": [[0], [1], [2]], "failed": []}
    assert expected.steps["done"].output is None  # the last window lists no item of it


def test_a_page_of_a_stored_map_decodes_only_its_items_rows(
    manager: WorkflowManager, store: SqliteStore, calls: Calls, tmp_path: Path
) -> None:
    calls.failing = {7, 1500}
    manager.create_workflow("paged", [lister(list(range(2000))), mapped(required=False)])
    record = manager.execute_workflow("paged", timeout=WAIT)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    store.flush()
    # Every item row but the pages' is made undecodable in the file: a read that decoded one would fail.
    kept = [f"each[{i}]" for i in (*range(1000, 1010), 7, 1500)]
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        with conn:
            conn.execute(
                "UPDATE steps SET result = 'not JSON' WHERE run_id = ? AND name GLOB 'each[[]*' "
                f"AND name NOT IN ({','.join('?' * len(kept))})",
                (record.run_id, *kept),
            )
    finally:
        conn.close()
    with pytest.raises(ValidationError):
        store.get_run(record.run_id)  # the whole record decodes every item's row
    shown = record.steps["each"].items
    assert shown is not None and shown.counts == {"completed": 1998, "failed": 2}
    page = store.get_run(record.run_id, items=ItemWindow(offset=1000, limit=10))
    assert page is not None and page.steps["list"] == record.steps["list"]
    items = page.steps["each"].items
    assert items is not None and (items.total, items.counts) == (2000, shown.counts)
    assert items.items == shown.items[1000:1010]
    assert page.steps["each"].output is None  # every item's output: not read for a page
    failed = store.get_run(record.run_id, items=ItemWindow(statuses=["failed"]))
    assert failed is not None
    failures = failed.steps["each"].items
    assert failures is not None and [(i.index, i.error) for i in failures.items] == [
        (7, shown.items[7].error),
        (1500, shown.items[1500].error),
    ]


def test_a_listing_of_run_summaries_reads_no_step_row(
    manager: WorkflowManager, store: SqliteStore, tmp_path: Path
) -> None:
    manager.create_workflow("listed", [lister([1, 2, 3]), mapped()])
    record = manager.execute_workflow("listed", timeout=WAIT)
    store.flush()
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        with conn:
            conn.execute("UPDATE steps SET result = 'not JSON' WHERE run_id = ?", (record.run_id,))
    finally:
        conn.close()
    with pytest.raises(ValidationError):
        manager.list_runs()  # whole records: every step's row, and every item's
    (summary,) = manager.list_runs(steps=False)
    assert summary.steps == {}
    assert summary == record.model_copy(update={"steps": {}})
