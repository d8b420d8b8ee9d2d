"""Definition versions: numbering, storage and retention, and runs pinned to the version they started with."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._store_schema import MIGRATIONS
from codomyrmex_orchestration.core.actions import (
    ActionRegistry,
    create_registry,
)
from codomyrmex_orchestration.core.models import RunRecord, WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore, StateStore
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import InvalidStateError, WorkflowNotFoundError
from tests.helpers.failing_actions import register_fails_once


@pytest.fixture
def registry() -> ActionRegistry:
    registry = create_registry(load_plugins=False)
    register_fails_once(registry)
    return registry


@pytest.fixture
def orchestrator(registry: ActionRegistry) -> Iterator[TaskOrchestrator]:
    orch = TaskOrchestrator(2, registry=registry)
    yield orch
    orch.shutdown(wait=True, cancel_pending=True, timeout=10)


def manager_on(
    store: StateStore, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> WorkflowManager:
    return WorkflowManager(orchestrator=orchestrator, registry=registry, store=store, config_dir=None)


def definition(text: str) -> dict[str, Any]:
    """a -> gate (fails in a run's first attempt) -> say (echoes ``text`` with a's output)."""
    return {
        "name": "pinned",
        "steps": [
            {"name": "a", "module": "core", "action": "set", "parameters": {"n": 7}},
            {"name": "gate", "module": "test", "action": "fails_once", "dependencies": ["a"]},
            {
                "name": "say",
                "module": "core",
                "action": "echo",
                "dependencies": ["gate"],
                "parameters": {"message": text + " {{steps.a.output.n}}"},
            },
        ],
    }


def test_a_version_grows_only_when_the_content_changes_and_goes_on_after_a_delete(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    manager = manager_on(MemoryStore(), orchestrator, registry)
    manager.create_workflow(definition("one"))
    first = manager.workflow_version("pinned")
    reordered = dict(reversed(list(definition("one").items())))  # same content, other key order
    manager.create_workflow(reordered, overwrite=True)
    assert manager.workflow_version("pinned") == first and first[0] == 1
    manager.create_workflow(definition("two"), overwrite=True)
    assert manager.workflow_version("pinned")[0] == 2
    manager.delete_workflow("pinned")
    manager.create_workflow(definition("three"))
    (info,) = manager.list_workflows()
    assert (info.version, info.digest) == manager.workflow_version("pinned") and info.version == 3
    assert info.digest != first[1]


def test_version_numbers_go_on_across_restarts_on_the_same_state_file(
    tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(definition("one"))
        manager.create_workflow(definition("two"), overwrite=True)
    with SqliteStore(path) as store:
        manager = manager_on(store, orchestrator, registry)
        assert manager.workflow_version("pinned")[0] == 2  # the stored definition, not renumbered
        manager.create_workflow(definition("three"), overwrite=True)
        assert manager.workflow_version("pinned")[0] == 3


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
def test_resume_after_an_overwrite_runs_the_definition_the_run_started_with(
    durable: bool, tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    store: StateStore = SqliteStore(tmp_path / "state.db") if durable else MemoryStore()
    manager = manager_on(store, orchestrator, registry)
    manager.create_workflow(definition("old text"))
    failed = manager.execute_workflow("pinned", timeout=10)
    assert failed.status is WorkflowStatus.FAILED and failed.workflow_version == 1
    manager.create_workflow(definition("new text"), overwrite=True)
    assert (
        manager.get_workflow("pinned", version=1).steps[2].parameters["message"]
        == "old text {{steps.a.output.n}}"
    )
    if durable:  # a restart in between: the pinned definition comes from the file
        store.close()
        store = SqliteStore(tmp_path / "state.db")
        manager = manager_on(store, orchestrator, registry)
    resumed = manager.resume_run(failed.run_id, timeout=10)
    assert resumed.status is WorkflowStatus.COMPLETED, resumed.error
    assert resumed.steps["say"].output == "old text 7"
    assert resumed.workflow_version == 1 and manager.workflow_version("pinned")[0] == 2
    fresh = manager.execute_workflow("pinned", timeout=10)
    assert fresh.workflow_version == 2
    store.close()


def test_resume_refuses_when_the_pinned_version_is_gone_naming_both_versions(
    tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(definition("old text"))
        failed = manager.execute_workflow("pinned", timeout=10)
        manager.create_workflow(definition("new text"), overwrite=True)
    with sqlite3.connect(path) as conn:  # lost by hand: retention never drops a version a run refers to
        conn.execute("DELETE FROM workflow_versions WHERE name = 'pinned' AND version = 1")
    conn.close()
    with SqliteStore(path) as store:
        manager = manager_on(store, orchestrator, registry)
        with pytest.raises(InvalidStateError) as caught:
            manager.resume_run(failed.run_id, timeout=10)
        message = str(caught.value)
        assert "version 1" in message and "current version 2" in message and failed.run_id in message
        assert manager.get_run(failed.run_id).status is WorkflowStatus.FAILED  # nothing ran
        with pytest.raises(WorkflowNotFoundError, match="version 1"):
            manager.get_workflow("pinned", version=1)


def test_an_old_version_is_kept_while_a_run_refers_to_it_and_dropped_after(
    orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    store = MemoryStore(retention_runs=1, retention_grace=0)
    manager = manager_on(store, orchestrator, registry)
    manager.create_workflow(definition("one"))
    manager.execute_workflow("pinned", timeout=10)
    manager.create_workflow(definition("two"), overwrite=True)
    assert store.get_workflow_version("pinned", 1) is not None  # the stored run refers to it
    manager.execute_workflow("pinned", timeout=10)  # retention (1 run) drops the run of version 1
    assert store.get_workflow_version("pinned", 1) is None
    assert store.get_workflow_version("pinned", 2) is not None
    manager.create_workflow(definition("three"), overwrite=True)
    assert store.get_workflow_version("pinned", 2) is not None  # its run is the one kept


def test_sqlite_retention_drops_versions_no_run_refers_to(
    tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    with SqliteStore(tmp_path / "state.db", retention_runs=1, retention_grace=0) as store:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(definition("one"))
        manager.execute_workflow("pinned", timeout=10)
        manager.create_workflow(definition("two"), overwrite=True)
        manager.create_workflow(definition("three"), overwrite=True)
        store.flush()
        assert store.get_workflow_version("pinned", 1) is not None
        manager.execute_workflow("pinned", timeout=10)  # the run of version 1 goes, then version 1
        store.flush()
        kept = [v for v in (1, 2, 3) if store.get_workflow_version("pinned", v) is not None]
        assert kept == [3]


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_deleted_workflows_versions_go_once_no_run_refers_to_them_and_its_runs_still_resume(
    kind: str, tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    limits: dict[str, Any] = {"retention_runs": 1, "retention_grace": 0}
    store: StateStore = (
        SqliteStore(tmp_path / "state.db", **limits) if kind == "sqlite" else MemoryStore(**limits)
    )
    try:
        manager = manager_on(store, orchestrator, registry)
        echo = [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}]
        for i in range(20):
            manager.create_workflow({"name": f"c_{i}", "parameters": {"blob": "y" * 50_000}, "steps": echo})
            manager.delete_workflow(f"c_{i}")
        assert [store.workflow_versions(f"c_{i}") for i in range(20)] == [[]] * 20
        assert store.latest_workflow_versions() == {}

        manager.create_workflow(definition("one"))
        failed = manager.execute_workflow("pinned", timeout=10)  # gate fails in a run's first attempt
        assert failed.status is WorkflowStatus.FAILED
        manager.delete_workflow("pinned")
        assert store.workflow_versions("pinned") == [1]  # the run refers to it
        resumed = manager.resume_run(failed.run_id, timeout=10)
        assert resumed.status is WorkflowStatus.COMPLETED and resumed.steps["say"].output == "one 7"
        manager.create_workflow(definition("one"))  # the same content again: a new version, kept
        assert manager.workflow_version("pinned")[0] == 2
        manager.execute_workflow("pinned", timeout=10)  # the limit (one run) drops the run of version 1
        store.flush()
        assert store.workflow_versions("pinned") == [2]
        assert store.latest_workflow_versions() == {"pinned": manager.workflow_version("pinned")}
    finally:
        store.close()


@pytest.mark.parametrize("change", ["delete", "overwrite"])
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_delete_or_overwrite_landing_as_a_run_starts_keeps_the_version_the_run_is_pinned_to(
    kind: str, change: str, tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    # Lined up: another thread deletes (or overwrites) the workflow after the run took its plan and
    # before anything of the run is saved (before_record). The version the run is pinned to must stay
    # kept: readable, and the run resumable with it, also after a restart.
    store: StateStore = SqliteStore(tmp_path / "state.db") if kind == "sqlite" else MemoryStore()
    try:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(definition("one"))

        def change_it(run_id: str) -> None:
            if change == "delete":
                racer = threading.Thread(target=manager.delete_workflow, args=("pinned",))
            else:
                racer = threading.Thread(
                    target=manager.create_workflow, args=(definition("two"),), kwargs={"overwrite": True}
                )
            racer.start()
            racer.join(10)

        run_id = manager.start_workflow("pinned", before_record=change_it)
        failed = manager.wait_run(run_id, 10)  # gate fails in a run's first attempt
        assert failed.status is WorkflowStatus.FAILED and failed.workflow_version == 1
        store.flush()
        assert manager.get_workflow("pinned", version=1).steps[2].parameters["message"].startswith("one")
        if kind == "sqlite":  # a restart in between: the pinned definition comes from the file
            store.close()
            store = SqliteStore(tmp_path / "state.db")
            manager = manager_on(store, orchestrator, registry)
        resumed = manager.resume_run(run_id, timeout=10)
        assert resumed.status is WorkflowStatus.COMPLETED, resumed.error
        assert resumed.steps["say"].output == "one 7"
    finally:
        store.close()


def test_a_state_file_from_before_versions_opens_and_its_runs_resume_with_the_current_definition(
    tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statement in (s.strip() for s in MIGRATIONS[0].split(";")):
        if statement:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    old = RunRecord(run_id="r-old", workflow_name="pinned", status=WorkflowStatus.INTERRUPTED)
    conn.execute(
        "INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 0, 0)",
        (
            "r-old",
            "pinned",
            "interrupted",
            old.model_dump_json(exclude={"steps", "workflow_version", "workflow_digest"}),
        ),
    )
    conn.commit()
    conn.close()
    with SqliteStore(path) as store:
        manager = manager_on(store, orchestrator, registry)
        assert manager.get_run("r-old").workflow_version is None
        manager.create_workflow(definition("current"))
        first = manager.resume_run("r-old", timeout=10)  # gate fails in a run's first attempt
        assert first.status is WorkflowStatus.FAILED and first.workflow_version == 1
        resumed = manager.resume_run("r-old", timeout=10)
        assert resumed.status is WorkflowStatus.COMPLETED, resumed.error
        assert resumed.steps["say"].output == "current 7"


def test_a_version_number_beyond_any_stored_one_is_not_found_not_an_overflow(tmp_path: Path) -> None:
    # found by make fuzz: 18446744073709551617 reached SQLite and raised OverflowError
    with SqliteStore(tmp_path / "state.db") as store:
        assert store.get_workflow_version("wf", 2**64 + 1) is None
        assert store.get_workflow_version("wf", -1) is None


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_version_that_is_not_kept_is_refused_listing_the_kept_ones(
    kind: str, tmp_path: Path, orchestrator: TaskOrchestrator, registry: ActionRegistry
) -> None:
    store: StateStore = SqliteStore(tmp_path / "state.db") if kind == "sqlite" else MemoryStore()
    try:
        manager = manager_on(store, orchestrator, registry)
        manager.create_workflow(definition("one"))
        manager.execute_workflow("pinned", timeout=10)  # its run keeps version 1
        manager.create_workflow(definition("two"), overwrite=True)
        with pytest.raises(WorkflowNotFoundError) as info:
            manager.get_workflow("pinned", version=5)
        assert str(info.value) == "workflow 'pinned' has no version 5; kept versions: 1, 2 (current)"
        assert info.value.version == 5
        assert (
            manager.get_workflow("pinned", version=1).steps[2].parameters["message"]
            == "one {{steps.a.output.n}}"
        )
        manager.delete_workflow("pinned")  # version 2 goes with it; the run keeps version 1
        with pytest.raises(WorkflowNotFoundError, match=r"no version 5; kept versions: 1 \(the workflow"):
            manager.describe_workflow("pinned", version=5)
        with pytest.raises(WorkflowNotFoundError, match=r"^workflow 'never' not found"):
            manager.get_workflow("never", version=1)
    finally:
        store.close()
