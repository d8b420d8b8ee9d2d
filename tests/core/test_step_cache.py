"""The step cache: a step with ``cache: {"ttl_seconds": N}`` reuses the output of an identical earlier call
(same definition version, action and resolved parameters) without calling its action, within the state
store's byte budget, until it expires."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._workflow_registry import digest_of
from codomyrmex_orchestration.core.actions import (
    ActionContext,
    ActionDefinition,
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.models import TaskStatus, WorkflowSpec, WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore, StateStore
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import InvalidInputError


class Counter:
    """``test.count``: returns its parameters and how many calls it has had."""

    def __init__(self, registry: ActionRegistry) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        registry.register(ActionDefinition("test", "count", self))

    def __call__(self, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            return {"x": params.get("x"), "call": self.calls}


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> ActionRegistry:
    return create_registry(load_plugins=False)


@pytest.fixture
def counter(registry: ActionRegistry) -> Counter:
    return Counter(registry)


@pytest.fixture
def orchestrator(registry: ActionRegistry) -> Iterator[TaskOrchestrator]:
    orch = TaskOrchestrator(2, registry=registry)
    yield orch
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


@pytest.fixture
def sqlite_store(state_dir: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(state_dir / "state.db")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[StateStore]:
    the_store: StateStore = (
        SqliteStore(state_dir / "state.db") if request.param == "sqlite" else MemoryStore()
    )
    yield the_store
    the_store.close()


def manager_on(
    store: StateStore, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> WorkflowManager:
    return WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)


def cached_workflow(ttl: float = 60, description: str = "") -> dict[str, Any]:
    return {
        "name": "cached",
        "description": description,
        "parameters": {"x": 1},
        "steps": [
            {
                "name": "count",
                "module": "test",
                "action": "count",
                "parameters": {"x": "{{params.x}}"},
                "cache": {"ttl_seconds": ttl},
            },
            {
                "name": "after",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "call {{steps.count.output.call}}"},
            },
        ],
    }


def test_a_second_run_takes_the_cached_output_without_calling_the_action(
    store: StateStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    manager = manager_on(store, orchestrator, registry)
    manager.create_workflow(cached_workflow())
    first = manager.execute_workflow("cached", timeout=30)
    second = manager.execute_workflow("cached", timeout=30)
    assert first.status is second.status is WorkflowStatus.COMPLETED
    assert counter.calls == 1
    fresh, hit = first.steps["count"], second.steps["count"]
    assert (fresh.cached, fresh.attempts) == (False, 1)
    assert (hit.cached, hit.attempts, hit.status) == (True, 0, TaskStatus.COMPLETED)
    assert hit.output == fresh.output == {"x": 1, "call": 1}
    assert second.steps["after"].output == "call 1"  # dependents read the cached output
    stored = manager.get_run(second.run_id)  # from the store once the run ended
    assert stored.steps["count"].cached is True


@pytest.fixture
def warm(
    sqlite_store: SqliteStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> WorkflowManager:
    """A manager on the SQLite store whose workflow ``cached`` ran once with ``x`` = 1."""
    manager = manager_on(sqlite_store, orchestrator, registry)
    manager.create_workflow(cached_workflow())
    manager.execute_workflow("cached", {"x": 1}, timeout=30)
    assert counter.calls == 1
    return manager


def test_different_parameters_miss_and_each_call_is_kept_apart(
    warm: WorkflowManager, counter: Counter
) -> None:
    two = warm.execute_workflow("cached", {"x": 2}, timeout=30)
    again = warm.execute_workflow("cached", {"x": 1}, timeout=30)
    assert counter.calls == 2
    assert two.steps["count"].cached is False and two.steps["count"].output == {"x": 2, "call": 2}
    assert again.steps["count"].cached is True and again.steps["count"].output == {"x": 1, "call": 1}


def test_an_entry_expires_after_its_ttl(
    sqlite_store: SqliteStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    clock = Clock()
    sqlite_store.step_cache.clock = clock
    manager = manager_on(sqlite_store, orchestrator, registry)
    manager.create_workflow(cached_workflow(ttl=30))
    manager.execute_workflow("cached", timeout=30)
    clock.now += 29
    assert manager.execute_workflow("cached", timeout=30).steps["count"].cached is True
    clock.now += 2  # 31 s after it was written
    late = manager.execute_workflow("cached", timeout=30)
    assert late.steps["count"].cached is False and counter.calls == 2
    assert manager.execute_workflow("cached", timeout=30).steps["count"].output == {"x": 1, "call": 2}


def test_use_cache_false_runs_the_step_and_its_fresh_output_replaces_the_kept_one(
    warm: WorkflowManager, counter: Counter
) -> None:
    bypass = warm.execute_workflow("cached", timeout=30, use_cache=False)
    assert bypass.steps["count"].cached is False and counter.calls == 2
    later = warm.execute_workflow("cached", timeout=30)
    assert later.steps["count"].cached is True and later.steps["count"].output == {"x": 1, "call": 2}


def test_a_new_definition_version_misses(warm: WorkflowManager, counter: Counter) -> None:
    warm.create_workflow(cached_workflow(description="changed"), overwrite=True)
    assert warm.workflow_version("cached")[0] == 2
    run = warm.execute_workflow("cached", timeout=30)
    assert run.steps["count"].cached is False and counter.calls == 2


def test_a_step_without_cache_runs_every_time(
    sqlite_store: SqliteStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    manager = manager_on(sqlite_store, orchestrator, registry)
    spec = cached_workflow()
    del spec["steps"][0]["cache"]
    manager.create_workflow(spec)
    manager.execute_workflow("cached", timeout=30)
    manager.execute_workflow("cached", timeout=30)
    assert counter.calls == 2


def test_the_cache_survives_a_restart_of_the_store(
    state_dir: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    with SqliteStore(state_dir / "state.db") as store:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(cached_workflow())
        manager.execute_workflow("cached", timeout=30)
    with SqliteStore(state_dir / "state.db") as store:
        manager = manager_on(store, orchestrator, registry)
        assert manager.execute_workflow("cached", timeout=30).steps["count"].cached is True
    assert counter.calls == 1


def bytes_tally(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT n FROM tallies WHERE key = 'bytes'").fetchone()[0])


def test_cached_outputs_count_in_the_byte_budget_and_go_before_the_run_history(state_dir: Path) -> None:
    path = state_dir / "state.db"
    budget = 1 << 20  # the WAL's reserve is 64 KiB of it
    with SqliteStore(path, max_bytes=budget) as store:
        store.flush()
        before = bytes_tally(path)
        store.step_cache.put("k" * 64, "wf", '"' + "a" * 998 + '"', 60)
        store.flush()
        assert bytes_tally(path) == before + 1000 + 64
        assert store.step_cache.get("k" * 64) == '"' + "a" * 998 + '"'
        # Ten entries of 100 KB: over the budget; the oldest entries go, the newest stay.
        for i in range(10):
            store.step_cache.put(f"{i:064d}", "wf", '"' + "b" * 100_000 + '"', 60)
        store.flush()
        assert store.health()["bytes_used"] <= budget
        assert store.step_cache.get(f"{0:064d}") is None and store.step_cache.get(f"{9:064d}") is not None
    with sqlite3.connect(path) as conn:
        kept = conn.execute("SELECT count(*), coalesce(sum(length(output) + length(key)), 0) FROM step_cache")
        count, size = kept.fetchone()
    assert 0 < count < 11 and bytes_tally(path) == before + size


def test_retention_removes_expired_entries(state_dir: Path) -> None:
    path = state_dir / "state.db"
    with SqliteStore(path) as store:
        clock = Clock()
        clock.now -= 3600  # written an hour ago, for ten minutes
        store.step_cache.clock = clock
        store.step_cache.put("old", "wf", "1", 600)
        store.step_cache.clock = time.time
        store.step_cache.put("new", "wf", "2", 600)
        store.flush()  # commits, with a retention pass
    with sqlite3.connect(path) as conn:
        assert [k for (k,) in conn.execute("SELECT key FROM step_cache")] == ["new"]


def test_a_ttl_must_be_positive(
    sqlite_store: SqliteStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    manager = manager_on(sqlite_store, orchestrator, registry)
    spec = cached_workflow(ttl=0)
    with pytest.raises(InvalidInputError, match=r"steps\.0\.cache\.ttl_seconds"):
        manager.create_workflow(spec)


def test_a_definition_without_a_cache_keeps_the_content_hash_it_had_before_caches_existed() -> None:
    spec = WorkflowSpec.model_validate(cached_workflow())
    bare = spec.model_copy(update={"steps": [s.model_copy(update={"cache": None}) for s in spec.steps]})
    assert digest_of(spec) != digest_of(bare)
    # the hash a definition without cache had before the field existed (computed then, on main)
    legacy = WorkflowSpec.model_validate(
        {"name": "w", "steps": [{"name": "a", "module": "core", "action": "echo"}]}
    )
    assert digest_of(legacy) == LEGACY_DIGEST


LEGACY_DIGEST = "6a7f14c1ddd429aa"  # digest_of on 7bf65e6, before steps had a cache


def test_a_run_that_bypasses_the_cache_makes_its_sub_runs_bypass_it_too(
    warm: WorkflowManager, counter: Counter
) -> None:
    warm.create_workflow(
        {
            "name": "parent",
            "steps": [
                {"name": "child", "module": "workflow", "action": "run", "parameters": {"workflow": "cached"}}
            ],
        }
    )
    assert warm.execute_workflow("parent", timeout=30).status is WorkflowStatus.COMPLETED
    assert counter.calls == 1  # the sub-run's step came from the cache
    assert warm.execute_workflow("parent", timeout=30, use_cache=False).status is WorkflowStatus.COMPLETED
    assert counter.calls == 2


def test_each_item_of_a_map_step_is_cached_on_its_own(
    sqlite_store: SqliteStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    manager = manager_on(sqlite_store, orchestrator, registry)
    manager.create_workflow(
        {
            "name": "mapped",
            "parameters": {"xs": [1, 2, 3]},
            "steps": [
                {
                    "name": "each",
                    "module": "test",
                    "action": "count",
                    "for_each": "{{params.xs}}",
                    "parameters": {"x": "{{item}}"},
                    "cache": {"ttl_seconds": 60},
                }
            ],
        }
    )
    first = manager.execute_workflow("mapped", timeout=30)
    assert first.status is WorkflowStatus.COMPLETED and counter.calls == 3
    second = manager.execute_workflow("mapped", {"xs": [3, 1, 2, 4]}, timeout=30)
    assert second.status is WorkflowStatus.COMPLETED and counter.calls == 4  # only the new item ran
    outputs = {o["x"]: o for o in first.steps["each"].output}
    assert second.steps["each"].output[:3] == [outputs[3], outputs[1], outputs[2]]
    items = second.steps["each"].items
    assert items is not None and [i.attempts for i in items.items] == [0, 0, 0, 1]


def test_a_map_step_all_of_whose_items_come_from_the_cache_says_it_is_cached(
    store: StateStore, orchestrator: TaskOrchestrator, registry: ActionRegistry, counter: Counter
) -> None:
    manager = manager_on(store, orchestrator, registry)
    each = {"name": "each", "module": "test", "action": "count", "for_each": "{{params.xs}}"}
    each |= {"parameters": {"x": "{{item}}"}, "cache": {"ttl_seconds": 60}}
    manager.create_workflow({"name": "mapped", "parameters": {"xs": [1, 2]}, "steps": [each]})
    first = manager.execute_workflow("mapped", timeout=30)
    hit = manager.execute_workflow("mapped", timeout=30)
    partly = manager.execute_workflow("mapped", {"xs": [1, 2, 3]}, timeout=30)
    assert counter.calls == 3
    assert (first.steps["each"].cached, first.steps["each"].attempts) == (False, 1)
    assert (hit.steps["each"].cached, hit.steps["each"].attempts) == (True, 0)
    assert hit.steps["each"].output == first.steps["each"].output
    assert partly.steps["each"].cached is False  # one item ran
    assert manager.get_run(hit.run_id).steps["each"].cached is True  # as the store keeps it
