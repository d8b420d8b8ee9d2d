"""The state store: one contract run against MemoryStore and SqliteStore, then SQLite-only durability."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._run_owners import RunOwnership
from codomyrmex_orchestration.core._serving_lock import ServingLock
from codomyrmex_orchestration.core._store_codec import DEFAULT_RETENTION_RUNS, GRACE_MIN_SLACK
from codomyrmex_orchestration.core._store_readonly import ReadOnlyStore
from codomyrmex_orchestration.core._store_reads import StoreReader
from codomyrmex_orchestration.core._store_schema import MIGRATIONS
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    MapItems,
    RunRecord,
    StepResult,
    StepSpec,
    TaskStatus,
    WorkflowSpec,
    WorkflowStatus,
    utcnow,
)
from codomyrmex_orchestration.core.store import SCHEMA_VERSION, MemoryStore, SqliteStore
from codomyrmex_orchestration.errors import InvalidInputError, StateStoreError
from tests.helpers.log_spot import spot_log

Store = MemoryStore | SqliteStore
StoreFactory = Callable[..., Store]


def _spec(name: str = "wf") -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        description="two steps",
        steps=[
            StepSpec(name="a", module="core", action="echo", parameters={"x": 1}),
            StepSpec(name="b", module="core", action="echo", dependencies=["a"]),
        ],
        parameters={"p": "v"},
    )


def _run(
    run_id: str, *, status: WorkflowStatus = WorkflowStatus.RUNNING, age: float = 0.0, **kw: Any
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        workflow_name=kw.pop("workflow_name", "wf"),
        status=status,
        created_at=utcnow() - timedelta(seconds=age),
        **kw,
    )


def _on_four_threads(work: Callable[[int], None]) -> None:
    """Run ``work(0)`` .. ``work(3)`` on four threads started together; fail with the first error."""
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            start.wait(timeout=10)
            work(t)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[Store] = []

    def make(**kw: Any) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(**kw)
        else:
            store = SqliteStore(tmp_path / "state" / "state.db", **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


# --------------------------------------------------------------------------- the contract, both stores


def test_workflows_round_trip_with_their_source_and_can_be_deleted(store: Store) -> None:
    store.save_workflow(_spec("one"), "api")
    store.save_workflow(_spec("two"), "project")
    store.save_workflow(_spec("one"), "config")  # a second save replaces the first
    loaded = {spec.name: (spec, source) for spec, source in store.load_workflows()}
    assert loaded["one"] == (_spec("one"), "config")
    assert loaded["two"] == (_spec("two"), "project")
    store.delete_workflow("one")
    store.delete_workflow("never-existed")
    assert [spec.name for spec, _ in store.load_workflows()] == ["two"]


def test_a_run_round_trips_with_every_step_field(store: Store) -> None:
    started = utcnow()
    record = _run(
        "r1",
        parameters={"n": 3, "nested": {"k": [1, 2]}},
        session_id="s1",
        parent_run_id="p0",
        started_at=started,
        failed_steps=["b"],
        error="b failed",
    )
    record.steps["a"] = StepResult(
        name="a", status=TaskStatus.COMPLETED, output={"v": [1, "x"]}, attempts=2, started_at=started
    )
    record.steps["b"] = StepResult(
        name="b", status=TaskStatus.FAILED, error=ErrorInfo(message="boom", type="RuntimeError")
    )
    store.save_run(record)
    assert store.get_run("r1") == record
    assert list(store.get_run("r1").steps) == ["a", "b"]  # type: ignore[union-attr]  # asserted above
    assert store.get_run("missing") is None


def test_save_step_is_visible_to_get_run_without_an_explicit_flush(store: Store) -> None:
    store.save_run(_run("r1"))
    store.save_step("r1", StepResult(name="a", status=TaskStatus.RUNNING))
    store.save_step("r1", StepResult(name="a", status=TaskStatus.COMPLETED, output=42))
    store.save_step("r1", StepResult(name="b", status=TaskStatus.RUNNING))
    run = store.get_run("r1")
    assert run is not None
    assert run.steps["a"].status is TaskStatus.COMPLETED and run.steps["a"].output == 42
    assert run.steps["b"].status is TaskStatus.RUNNING


def test_a_saved_record_is_a_snapshot_not_a_live_reference(store: Store) -> None:
    record = _run("r1")
    store.save_run(record)
    record.status = WorkflowStatus.FAILED
    record.steps["late"] = StepResult(name="late")
    stored = store.get_run("r1")
    assert stored is not None and stored.status is WorkflowStatus.RUNNING and stored.steps == {}


def test_a_step_of_an_unknown_run_is_ignored(store: Store) -> None:
    store.save_step("ghost", StepResult(name="a"))
    store.flush()
    assert store.get_run("ghost") is None
    assert store.list_runs() == []


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_a_non_json_step_output_is_stored_as_its_repr_instead_of_failing(store: Store) -> None:
    store.save_run(_run("r1"))
    store.save_step("r1", StepResult(name="a", status=TaskStatus.COMPLETED, output={"obj": _Opaque()}))
    run = store.get_run("r1")
    assert run is not None and run.steps["a"].output == {"obj": "<opaque>"}


def test_list_runs_is_newest_first_and_filters_by_workflow_and_status(store: Store) -> None:
    store.save_run(_run("old", age=30, status=WorkflowStatus.COMPLETED))
    store.save_run(_run("mid", age=20, workflow_name="other"))
    store.save_run(_run("new", age=10, status=WorkflowStatus.COMPLETED))
    assert [r.run_id for r in store.list_runs()] == ["new", "mid", "old"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["new", "mid"]
    assert [r.run_id for r in store.list_runs(workflow_name="other")] == ["mid"]
    assert [r.run_id for r in store.list_runs(status=WorkflowStatus.COMPLETED)] == ["new", "old"]
    assert store.list_runs(workflow_name="wf", status=WorkflowStatus.RUNNING) == []
    assert store.list_runs(limit=0) == []


def test_recover_marks_pending_and_running_runs_interrupted_and_keeps_their_steps(store: Store) -> None:
    store.save_run(_run("running", age=3))
    store.save_run(_run("pending", age=2, status=WorkflowStatus.PENDING))
    store.save_run(_run("done", age=1, status=WorkflowStatus.COMPLETED))
    store.save_step("running", StepResult(name="a", status=TaskStatus.COMPLETED, output="kept"))
    assert store.recover() == ["running", "pending"]
    running = store.get_run("running")
    assert running is not None and running.status is WorkflowStatus.INTERRUPTED
    assert running.error and "in progress" in running.error
    assert running.steps["a"].output == "kept"
    assert store.get_run("done").status is WorkflowStatus.COMPLETED  # type: ignore[union-attr]  # saved above
    assert [r.run_id for r in store.list_runs(status=WorkflowStatus.INTERRUPTED)] == ["pending", "running"]
    assert store.recover() == []


def test_recover_marks_the_steps_and_items_that_were_running_interrupted_with_a_finish_time(
    store: Store,
) -> None:
    started = utcnow() - timedelta(seconds=5)
    store.save_run(_run("r", age=2))
    store.save_step("r", StepResult(name="a", status=TaskStatus.COMPLETED, output="kept"))
    store.save_step("r", StepResult(name="b", status=TaskStatus.RUNNING, attempts=2, started_at=started))
    store.save_step("r", StepResult(name="c"))  # never started: still pending
    items = MapItems(total=2, counts={"completed": 1, "running": 1}, required=True)
    store.save_step("r", StepResult(name="m", status=TaskStatus.RUNNING, items=items, started_at=started))
    store.save_step("r", StepResult(name="m[0]", status=TaskStatus.COMPLETED, output=1))
    store.save_step("r", StepResult(name="m[1]", status=TaskStatus.RUNNING, attempts=1, started_at=started))
    store.save_run(_run("waiting", age=1, status=WorkflowStatus.WAITING_FOR_INPUT))  # not interrupted
    store.save_step("waiting", StepResult(name="ask", status=TaskStatus.RUNNING, started_at=started))
    before = utcnow()
    assert store.recover() == ["r"]

    run = store.get_run("r")
    assert run is not None and run.status is WorkflowStatus.INTERRUPTED
    assert {n: s.status.value for n, s in run.steps.items()} == {
        "a": "completed", "b": "interrupted", "c": "pending", "m": "interrupted"
    }  # fmt: skip
    b = run.steps["b"]
    assert b.finished_at is not None and b.finished_at >= before
    assert (b.attempts, b.started_at) == (2, started)
    assert b.error is not None and "stopped while this step was running" in b.error.message
    assert run.steps["a"].output == "kept"
    mapped = run.steps["m"].items
    assert mapped is not None
    assert [i.status.value for i in mapped.items] == ["completed", "interrupted"]
    assert mapped.counts == {"completed": 1, "interrupted": 1}
    assert mapped.items[1].finished_at is not None
    waiting = store.get_run("waiting")
    assert waiting is not None and waiting.steps["ask"].status is TaskStatus.RUNNING


def test_recover_leaves_runs_whose_owner_lock_a_live_process_holds_and_their_sub_runs(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    try:
        store.save_run(_run("owned", age=4))
        store.save_run(_run("child", age=3, parent_run_id="owned"))
        store.save_run(_run("orphan", age=2))
        store.save_run(_run("was_owned", age=1))
        # A lock its owner let go of (a CLI process that died) protects nothing.
        with RunOwnership(tmp_path, "was_owned", keep_file=True):
            pass
        with RunOwnership(tmp_path, "owned"):  # a CLI `run` in another process, as the lock sees it
            assert store.recover() == ["orphan", "was_owned"]
            assert store.get_run("owned").status is WorkflowStatus.RUNNING  # type: ignore[union-attr]  # saved above
            assert store.get_run("child").status is WorkflowStatus.RUNNING  # type: ignore[union-attr]  # saved above
        assert store.recover() == ["owned", "child"]  # its owner is gone now
    finally:
        store.close()


def _leftovers(outputs: Path) -> None:
    """What processes killed mid-spill and mid-eviction leave in the spill folder."""
    for folder, names in {
        "done": ["a.json", ".a.1x2y.tmp"],  # a finished run: its folder is kept as it is
        "live": ["a.json", ".b.3z4w.tmp"],  # the run the killed process ran: its temporary file goes
        "gone": ["a.json"],  # retention deleted the row, the process died before the folder
        "tasks": ["t-1.json", ".t-2.5v6u.tmp"],
    }.items():
        (outputs / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (outputs / folder / name).write_text("{}")


def _spill_files(outputs: Path) -> list[str]:
    return sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file())


def test_recovery_removes_half_written_spills_and_the_folders_of_runs_that_have_no_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "state.db"
    with SqliteStore(path) as store:
        store.save_run(_run("done", status=WorkflowStatus.COMPLETED))
        store.save_run(_run("live"))
    outputs = path.parent / "outputs"
    _leftovers(outputs)
    with SqliteStore(path) as store:
        assert store.recover() == ["live"]
    assert _spill_files(outputs) == ["done/.a.1x2y.tmp", "done/a.json", "live/a.json", "tasks/t-1.json"]
    assert not (outputs / "gone").exists()


def test_recovery_leaves_what_a_live_process_may_still_be_spilling(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    with SqliteStore(path) as store:
        store.save_run(_run("live"))
    outputs = path.parent / "outputs"
    _leftovers(outputs)
    (outputs / "owned").mkdir()  # a live CLI run's folder, its row not committed yet
    (outputs / "old").mkdir()  # long untouched: no live process is writing there
    os.utime(outputs / "old", (1_000_000_000, 1_000_000_000))
    with RunOwnership(path.parent, "owned"), SqliteStore(path) as store:
        assert store.recover() == ["live"]
        assert (outputs / "owned").is_dir() and (outputs / "gone").is_dir()  # recent: may be in use
        assert not (outputs / "old").exists()


def test_sessions_round_trip_filter_by_status_and_delete(store: Store) -> None:
    store.save_session("s1", {"id": "s1", "status": "active", "limits": {"tasks": 4}})
    store.save_session("s2", {"id": "s2", "status": "active"})
    store.save_session("s2", {"id": "s2", "status": "closed"})
    store.save_session("s3", {"id": "s3", "status": "closed"})
    assert store.get_session("s1") == {"id": "s1", "status": "active", "limits": {"tasks": 4}}
    assert [s["id"] for s in store.list_sessions()] == ["s1", "s2", "s3"]
    assert [s["id"] for s in store.list_sessions(status="closed")] == ["s2", "s3"]
    assert [s["id"] for s in store.list_sessions(limit=2)] == ["s2", "s3"]  # the newest, oldest first
    assert [s["id"] for s in store.list_sessions(status="active", limit=5)] == ["s1"]
    store.delete_session("s3")
    store.delete_session("s1")
    assert store.get_session("s1") is None
    assert [s["id"] for s in store.list_sessions()] == ["s2"]


def test_projects_round_trip_sorted_by_name_and_delete(store: Store) -> None:
    store.save_project("zeta", {"name": "zeta", "workflows": ["a"]})
    store.save_project("alpha", {"name": "alpha"})
    assert store.get_project("zeta") == {"name": "zeta", "workflows": ["a"]}
    assert [p["name"] for p in store.list_projects()] == ["alpha", "zeta"]
    store.delete_project("zeta")
    assert store.get_project("zeta") is None
    assert [p["name"] for p in store.list_projects()] == ["alpha"]


def test_allocations_round_trip_and_delete(store: Store) -> None:
    store.save_allocation("a1", {"id": "a1", "resource": "compute", "amount": 2})
    store.save_allocation("a2", {"id": "a2", "resource": "memory", "amount": 512})
    store.delete_allocation("a1")
    assert store.list_allocations() == [{"id": "a2", "resource": "memory", "amount": 512}]


def test_events_are_listed_newest_first_and_filtered_by_type(store: Store) -> None:
    for i in range(5):
        store.append_event("step.completed" if i % 2 else "run.started", {"i": i})
    events = store.list_events(limit=3)
    assert [e["payload"]["i"] for e in events] == [4, 3, 2]
    assert events[0]["id"] > events[1]["id"] and isinstance(events[0]["ts"], float)
    assert [e["payload"]["i"] for e in store.list_events(type="step.completed")] == [3, 1]
    assert store.list_events(type="nothing") == []


def test_event_payloads_that_are_not_plain_json_are_stored_readably(store: Store) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    when = datetime(2026, 11, 26, 3, 15, tzinfo=UTC)
    payload = {"at": when, "tags": ("a", "b"), "thing": Opaque(), "n": 1.5, "nested": {"k": [1, None]}}
    store.append_event("custom", payload)
    [event] = store.list_events(type="custom")
    assert event["payload"] == {
        "at": "2026-11-26T03:15:00Z",
        "tags": ["a", "b"],
        "thing": "opaque-thing",
        "n": 1.5,
        "nested": {"k": [1, None]},
    }


def test_retention_deletes_the_oldest_finished_runs_and_keeps_active_ones(make_store: StoreFactory) -> None:
    store = make_store(retention_runs=3, retention_grace=0)
    store.save_run(_run("active-oldest", age=100))
    for i in range(6):
        store.save_run(_run(f"done-{i}", age=50 - i, status=WorkflowStatus.COMPLETED))
        store.save_step(f"done-{i}", StepResult(name="a", status=TaskStatus.COMPLETED))
    store.flush()
    kept = [r.run_id for r in store.list_runs()]
    assert kept == ["done-5", "done-4", "done-3", "active-oldest"]  # three finished, besides the active
    assert store.get_run("done-0") is None
    assert store.stats()["rows"]["steps"] == 3  # the trimmed runs' steps went with them


@pytest.mark.parametrize("listing", [False, True], ids=["get_run", "list_runs"])
def test_a_run_read_as_retention_evicts_it_is_read_whole_or_not_at_all(tmp_path: Path, listing: bool) -> None:
    # A reader syncs with the writer before it reads; here the writer commits, at the reader's second
    # sync, the run whose end makes retention evict the one being read. Before, a run's row and its
    # steps were two reads, each after a sync: the row was read, retention deleted the run, and the
    # record came back COMPLETED with no steps at all (show, get_workflow_run, list_workflow_runs).
    db = tmp_path / "state" / "state.db"
    store = SqliteStore(db, retention_runs=1, retention_grace=0)
    conn: sqlite3.Connection | None = None
    try:
        store.save_run(_run("old", age=10, status=WorkflowStatus.COMPLETED))
        for name in ("a", "b"):
            store.save_step("old", StepResult(name=name, status=TaskStatus.COMPLETED, output=name))
        store.flush()
        syncs = 0

        def sync_as_a_newer_run_ends() -> None:
            nonlocal syncs
            syncs += 1
            if syncs == 2:  # the reader is part-way through: the next run's end evicts "old"
                store.save_run(_run("new", status=WorkflowStatus.COMPLETED))
                store.flush()

        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        reader = StoreReader(conn, str(db), sync_as_a_newer_run_ends)
        if listing:
            seen = [r for r in reader.list_runs(limit=10) if r.run_id == "old"]
        else:
            one = reader.get_run("old")
            seen = [] if one is None else [one]
        assert [sorted(r.steps) for r in seen] in ([], [["a", "b"]]), seen
    finally:
        if conn is not None:
            conn.close()
        store.close()


def test_retention_deletes_the_oldest_finished_runs_whatever_their_status(make_store: StoreFactory) -> None:
    store = make_store(retention_runs=4, retention_grace=0)
    store.save_run(_run("waiting-oldest", age=100, status=WorkflowStatus.WAITING_FOR_INPUT))
    store.save_run(_run("running-old", age=90))
    finished = (
        WorkflowStatus.FAILED,
        WorkflowStatus.COMPLETED,
        WorkflowStatus.INTERRUPTED,
        WorkflowStatus.CANCELLED,
    )
    for i in range(8):  # statuses interleaved in time: the oldest go first, whichever status they have
        store.save_run(_run(f"done-{i}", age=50 - i, status=finished[i % 4]))
    store.flush()
    kept = [r.run_id for r in store.list_runs()]
    assert kept == ["done-7", "done-6", "done-5", "done-4", "running-old", "waiting-oldest"]


def test_retention_spares_a_finished_run_that_was_resumed_and_is_running_again(
    make_store: StoreFactory,
) -> None:
    store = make_store(retention_runs=2, retention_grace=0)
    store.save_run(_run("resumed", age=100, status=WorkflowStatus.FAILED))
    store.save_run(_run("resumed", age=100, status=WorkflowStatus.RUNNING))  # resume_run saves it again
    for i in range(4):
        store.save_run(_run(f"done-{i}", age=50 - i, status=WorkflowStatus.COMPLETED))
    store.flush()
    assert [r.run_id for r in store.list_runs()] == ["done-3", "done-2", "resumed"]


def test_a_run_that_just_finished_is_kept_for_the_grace_whatever_the_run_limit(
    make_store: StoreFactory,
) -> None:
    store = make_store(retention_runs=1, retention_grace=0.5)
    store.save_run(_run("long", age=100))  # started first, finishes last: the oldest finished run
    store.save_run(_run("quick", age=50, status=WorkflowStatus.COMPLETED))
    store.save_run(_run("long", age=100, status=WorkflowStatus.COMPLETED))
    store.flush()
    assert [r.run_id for r in store.list_runs()] == ["quick", "long"]  # whoever waited on it reads it
    threading.Event().wait(0.6)  # the grace passes
    store.save_run(_run("next", age=0))  # a write for the next trim to follow
    store.flush()
    assert [r.run_id for r in store.list_runs()] == ["next", "quick"]


def test_the_grace_keeps_at_most_a_bounded_number_of_runs_past_the_limit(make_store: StoreFactory) -> None:
    # A server finishing runs faster than the limit a minute kept every one of them for the grace: 100,000
    # single-step runs in 13 s all stayed in memory (the memory bench, 192 MiB). The grace holds at most
    # max(limit, GRACE_MIN_SLACK) runs past the limit; past that the oldest go, grace or not.
    store = make_store(retention_runs=10, retention_grace=3600)
    total = 10 + GRACE_MIN_SLACK + 200
    for i in range(total):
        store.save_run(_run(f"r{i:05d}", age=total - i, status=WorkflowStatus.COMPLETED))
    store.flush()
    kept = [r.run_id for r in store.list_runs(limit=10 * total)]
    assert len(kept) <= 10 + GRACE_MIN_SLACK, len(kept)
    assert kept[0] == f"r{total - 1:05d}"  # the newest stays


def test_a_negative_or_infinite_retention_grace_is_refused(make_store: StoreFactory) -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidInputError, match="retention_grace"):
            make_store(retention_grace=bad)


def test_retention_keeps_only_the_newest_events(make_store: StoreFactory) -> None:
    store = make_store(retention_events=10)
    for i in range(25):
        store.append_event("tick", {"i": i})
    store.flush()
    events = store.list_events(limit=100)
    assert [e["payload"]["i"] for e in events] == list(range(24, 14, -1))


def test_retention_limits_below_one_are_refused(make_store: StoreFactory) -> None:
    with pytest.raises(InvalidInputError, match="retention_runs"):
        make_store(retention_runs=0)


def test_ten_thousand_step_saves_from_four_threads_are_all_readable_after_flush(store: Store) -> None:
    runs = [f"run-{t}" for t in range(4)]
    for run_id in runs:
        store.save_run(_run(run_id))

    def work(t: int) -> None:
        for i in range(2_500):
            store.save_step(runs[t], StepResult(name=f"s{i}", status=TaskStatus.COMPLETED, output=i))

    _on_four_threads(work)
    store.flush()
    for run_id in runs:
        run = store.get_run(run_id)
        assert run is not None and len(run.steps) == 2_500
        assert run.steps["s2499"].output == 2499
    stats = store.stats()
    assert stats["rows"]["steps"] == 10_000
    if isinstance(store, SqliteStore):
        # Group commit: thousands of transitions share a handful of transactions.
        assert 1 <= stats["batches_committed"] < 1_000


def test_steps_saved_with_the_run_and_one_by_one_merge_newest_first_whatever_the_order(store: Store) -> None:
    def result(name: str, output: Any) -> StepResult:
        return StepResult(name=name, status=TaskStatus.COMPLETED, output=output)

    def stored() -> dict[str, Any]:
        run = store.get_run("r1")
        assert run is not None
        return {n: s.output for n, s in run.steps.items()}

    record = _run("r1")
    record.steps = {"a": result("a", 1), "b": result("b", 1), "odd": result("odd", {"o": _Opaque()})}
    store.save_run(record)
    assert stored() == {"a": 1, "b": 1, "odd": {"o": "<opaque>"}}
    store.save_step("r1", result("b", 2))  # one step saved after the run's steps
    assert stored() == {"a": 1, "b": 2, "odd": {"o": "<opaque>"}}
    record.steps = {"b": result("b", 3), "c": result("c", 3)}  # saved again with some of its steps
    store.save_run(record)
    assert stored() == {"a": 1, "b": 3, "odd": {"o": "<opaque>"}, "c": 3}
    record.steps = {n: result(n, 4) for n in ("a", "b", "odd", "c")}
    store.save_run(record)
    assert list(stored().items()) == [("a", 4), ("b", 4), ("odd", 4), ("c", 4)]
    store.flush()
    assert store.stats()["rows"]["steps"] == 4
    [listed] = store.list_runs()
    assert {n: s.output for n, s in listed.steps.items()} == {"a": 4, "b": 4, "odd": 4, "c": 4}


def test_health_and_stats_describe_a_working_store(store: Store) -> None:
    store.save_run(_run("r1"))
    health = store.health()
    assert health["ok"] is True, health
    stats = store.stats()
    assert stats["rows"]["runs"] == 1 and stats["pending_writes"] == 0


# --------------------------------------------------------------------------- SQLite only


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        store.save_workflow(_spec(), "api")
        record = _run("r1", status=WorkflowStatus.COMPLETED)
        record.steps["a"] = StepResult(name="a", status=TaskStatus.COMPLETED, output={"k": "v"})
        store.save_run(record)
        store.save_session("s1", {"id": "s1", "status": "active"})
        store.save_project("p", {"name": "p"})
        store.save_allocation("a1", {"id": "a1"})
        store.append_event("run.completed", {"run_id": "r1"})
    with SqliteStore(path) as store:
        assert store.load_workflows() == [(_spec(), "api")]
        assert store.get_run("r1") == record
        assert store.get_session("s1") == {"id": "s1", "status": "active"}
        assert store.list_projects() == [{"name": "p"}]
        assert store.list_allocations() == [{"id": "a1"}]
        assert store.list_events()[0]["payload"] == {"run_id": "r1"}
        assert store.stats()["schema_version"] == SCHEMA_VERSION


def test_the_database_is_opened_in_wal_mode_with_a_versioned_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_a_new_state_directory_and_database_are_private_to_their_owner(tmp_path: Path) -> None:
    # Runs' parameters and outputs live here: other users of the machine must not read them.
    path = tmp_path / "made" / "state" / "state.db"
    store = SqliteStore(path)
    try:
        store.save_run(RunRecord(run_id="r1", workflow_name="w"))
        store.flush()
    finally:
        store.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for file in path.parent.iterdir():  # the database and any -wal / -shm file SQLite left
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name


def test_an_existing_state_directory_and_database_keep_their_owner_s_modes(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir(mode=0o750)
    state.chmod(0o750)
    path = state / "state.db"
    path.touch()
    path.chmod(0o640)
    SqliteStore(path).close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from codomyrmex_orchestration.core.models import RunRecord, StepResult, StepSpec, TaskStatus
    from codomyrmex_orchestration.core.models import WorkflowSpec, WorkflowStatus
    from codomyrmex_orchestration.core.store import SqliteStore

    store = SqliteStore(Path(sys.argv[1]), flush_interval=60.0)
    spec = WorkflowSpec(name="wf", steps=[StepSpec(name="a", module="core", action="echo")])
    store.save_workflow(spec, "api")
    store.save_project("proj", {"name": "proj"})
    store.save_run(RunRecord(run_id="r1", workflow_name="wf", status=WorkflowStatus.RUNNING))
    for i in range(50):
        store.save_step("r1", StepResult(name=f"s{i}", status=TaskStatus.COMPLETED, output=i))
    store.flush()
    print("flushed", flush=True)
    # Written after the flush and never committed (the interval is a minute): lost by kill -9.
    store.save_step("r1", StepResult(name="unflushed", status=TaskStatus.COMPLETED))
    threading.Event().wait()
    """
)


def test_data_flushed_before_a_kill_9_is_there_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "flushed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with SqliteStore(path) as store:
        assert [spec.name for spec, _ in store.load_workflows()] == ["wf"]
        assert store.get_project("proj") == {"name": "proj"}
        assert store.recover() == ["r1"]
        run = store.get_run("r1")
        assert run is not None and run.status is WorkflowStatus.INTERRUPTED
        assert [run.steps[f"s{i}"].output for i in range(50)] == list(range(50))
        assert "unflushed" not in run.steps


def test_a_corrupt_database_file_is_refused_at_open_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite " * 500)
    with pytest.raises(StateStoreError, match="not a database") as info:
        SqliteStore(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def _stored_runs_with_needles(path: Path, count: int) -> None:
    with SqliteStore(path) as store:
        for i in range(count):  # running: retention never reads them at open
            store.save_run(_run(f"r{i:03d}", parameters={"needle": f"needle-{i:03d}", "pad": "p" * 2_000}))


def test_a_truncated_database_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _stored_runs_with_needles(path, 200)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(StateStoreError, match="malformed") as info:
        with SqliteStore(path) as store:
            store.list_runs(limit=1_000)
    assert str(path) in str(info.value)
    assert "move it away" in str(info.value)


def test_a_page_damaged_mid_file_makes_reads_say_what_to_do_and_health_report_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _stored_runs_with_needles(path, 200)
    data = path.read_bytes()
    page = 4096
    at = data.index(b"needle-100") // page * page
    with path.open("r+b") as handle:  # scribble over most of the page that holds run r100's record
        handle.seek(at + 8)
        handle.write(b"\xff" * 3_000)
    with SqliteStore(path) as store:
        assert store.health()["ok"] is True  # nothing has read the damaged page yet
        with pytest.raises(StateStoreError, match="malformed") as info:
            store.list_runs(limit=1_000)
        assert str(path) in str(info.value) and "move it away" in str(info.value)
        health = store.health()
        assert health["ok"] is False
        assert "damaged" in health["reason"] and "move it away" in health["reason"]


def test_a_read_only_store_reads_committed_runs_and_upgrades_an_older_schema_first(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("".join(MIGRATIONS[:-1]))  # the schema as the previous version left it
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    conn.close()
    with ReadOnlyStore(path) as read_only:
        assert read_only.count_runs() == {}
    with SqliteStore(path) as store:
        store.save_run(_run("r1", status=WorkflowStatus.COMPLETED))
        store.flush()
        with ReadOnlyStore(path) as read_only:  # beside a live writer: what it committed
            assert [r.run_id for r in read_only.list_runs()] == ["r1"]
            assert read_only.count_runs() == {"completed": 1}
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateStoreError, match="newer than this program"):
        ReadOnlyStore(path)


# ---------------------------------------------------------------- files whose tables and version disagree


def _database(path: Path, scripts: list[str], version: int) -> None:
    """A file holding what ``scripts`` make, marked ``user_version`` ``version``: the shape a build that
    numbered its migrations differently leaves, or a damaged or hand-edited file."""
    conn = sqlite3.connect(path)
    conn.executescript("".join(scripts))
    conn.execute(f"PRAGMA user_version={version}")
    conn.close()


def _objects(path: Path) -> tuple[int, set[tuple[str, str]]]:
    """The file's version and the (type, name) of everything in its ``sqlite_master``."""
    conn = sqlite3.connect(path)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        return version, set(conn.execute("SELECT type, name FROM sqlite_master"))
    finally:
        conn.close()


def test_a_file_lacking_what_an_idempotent_migration_makes_is_completed_at_open(tmp_path: Path) -> None:
    # A side branch's migration 4 made step_cache instead of tool_tasks: main runs 5-7 on it.
    fresh = tmp_path / "fresh.db"
    SqliteStore(fresh).close()
    path = tmp_path / "state.db"
    _database(path, [*MIGRATIONS[:3], MIGRATIONS[4]], 4)
    with SqliteStore(path) as store:
        assert store.tool_tasks.get("t1") is None  # no "no such table: tool_tasks"
    assert _objects(path) == _objects(fresh)
    # The same file marked current, opened by a reader first: completed before it is read.
    path = tmp_path / "current.db"
    _database(path, [*MIGRATIONS[:3], *MIGRATIONS[4:]], SCHEMA_VERSION)
    with ReadOnlyStore(path) as read_only:
        assert read_only.count_runs() == {}
    assert _objects(path) == _objects(fresh)


def test_a_file_lacking_what_cannot_be_made_afresh_is_refused_naming_it_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    _database(path, [*MIGRATIONS[:2], *MIGRATIONS[3:6]], SCHEMA_VERSION)  # without migrations 3 and 7
    before = _objects(path)
    for opener in (SqliteStore, ReadOnlyStore):
        with pytest.raises(StateStoreError) as info:
            opener(path)
        message = str(info.value)
        assert "lacks" in message and "table workflow_versions" in message, message
        assert "column runs.workflow_version" in message and "another state directory" in message, message
        assert _objects(path) == before
    # A tally trigger of a table that holds rows: the rows written without it are not in the tallies.
    path = tmp_path / "trigger.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER step_cache_tally_insert")
    conn.execute("INSERT INTO step_cache VALUES ('k', 'wf', '1', 0, 1e12)")
    conn.commit()
    conn.close()
    with pytest.raises(StateStoreError, match="lacks trigger step_cache_tally_insert"):
        SqliteStore(path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM step_cache")
    conn.commit()
    conn.close()
    SqliteStore(path).close()  # an empty table: the trigger is made again
    assert ("trigger", "step_cache_tally_insert") in _objects(path)[1]


def test_a_migration_that_meets_other_tables_names_itself_and_leaves_the_file_as_it_was(
    tmp_path: Path,
) -> None:
    # A side branch's migration 2 made workflow_versions: main's 2 was the tallies, its 3 makes the table.
    path = tmp_path / "state.db"
    _database(path, [MIGRATIONS[0], MIGRATIONS[2]], 2)
    before = _objects(path)
    for opener in (SqliteStore, ReadOnlyStore):
        with pytest.raises(StateStoreError) as info:
            opener(path)
        message = str(info.value)
        assert f"migration 3 of {SCHEMA_VERSION} failed" in message, message
        assert "schema history does not match" in message and "left as it was" in message, message
        assert "another state directory" in message, message
        assert _objects(path) == before


_SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from codomyrmex_orchestration.core._serving_lock import ServingLock

    with ServingLock(Path(sys.argv[1])):
        print("serving", flush=True)
        sys.stdin.read()  # until the test closes it
    """
)


def test_an_older_file_is_not_migrated_while_another_process_serves_its_directory(tmp_path: Path) -> None:
    # A server of the older version reads the schema it knows: migration 6 dropped an index it named.
    path = tmp_path / "state.db"
    _database(path, list(MIGRATIONS[:-1]), SCHEMA_VERSION - 1)
    before = _objects(path)
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "serving"
        for opener in (SqliteStore, ReadOnlyStore):
            with pytest.raises(StateStoreError) as info:
                opener(path)
            assert f"process {server.pid} serves this state directory" in str(info.value)
            assert f"schema version {SCHEMA_VERSION - 1}" in str(info.value)
            assert _objects(path) == before
        # A new file is no other program's: the one creating it beside a starting server migrates it.
        with SqliteStore(tmp_path / "new.db") as store:
            assert store.stats()["schema_version"] == SCHEMA_VERSION
    finally:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()
    with ReadOnlyStore(path) as read_only:  # nobody serves it now
        assert read_only.count_runs() == {}
    assert _objects(path)[0] == SCHEMA_VERSION
    # The server that holds the lock upgrades the file it serves.
    own = tmp_path / "own"
    own.mkdir()
    _database(own / "state.db", list(MIGRATIONS[:-1]), SCHEMA_VERSION - 1)
    with ServingLock(own), SqliteStore(own / "state.db") as store:
        assert store.stats()["schema_version"] == SCHEMA_VERSION


def test_a_reader_upgrading_an_older_file_applies_no_retention(tmp_path: Path) -> None:
    # A file kept under a larger run limit than the default: a reader must not trim it to the default.
    path = tmp_path / "state.db"
    _database(path, list(MIGRATIONS[:-1]), SCHEMA_VERSION - 1)
    conn = sqlite3.connect(path)
    runs = DEFAULT_RETENTION_RUNS + 1
    conn.executemany(
        "INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at) "
        "VALUES (?, 'wf', 'completed', '{}', ?, ?)",
        ((f"r{i}", float(i), float(i)) for i in range(runs)),
    )
    conn.commit()
    conn.close()
    with ReadOnlyStore(path) as read_only:
        assert read_only.count_runs() == {"completed": runs}


def test_a_state_dir_under_a_regular_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    path = blocker / "state" / "state.db"
    with pytest.raises(StateStoreError, match="is a file, not a directory") as info:
        SqliteStore(path)
    assert info.value.path == str(path)


def test_a_state_dir_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="cannot create the state directory"):
        SqliteStore(Path("/proc/no-such-process/state/state.db"))


def test_a_database_with_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateStoreError, match="newer than this program"):
        SqliteStore(path)


_OPENER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from codomyrmex_orchestration.core.store import SqliteStore

    print("ready", flush=True)
    for line in sys.stdin:  # one database path per trial, sent to every opener at once
        try:
            SqliteStore(Path(line.strip())).close()
            print("ok", flush=True)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
    """
)


def test_processes_opening_a_new_database_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    # A server and CLI runs started together on a new state directory each migrate the file: every
    # migration must be applied once, whoever gets there first.
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(4)
    ]
    failures: list[str] = []
    try:
        for proc in openers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for trial in range(12):
            path = tmp_path / str(trial) / "state.db"
            for proc in openers:
                assert proc.stdin is not None
                proc.stdin.write(f"{path}\n")
                proc.stdin.flush()
            for proc in openers:
                assert proc.stdout is not None
                answer = proc.stdout.readline().strip()
                if answer != "ok":
                    failures.append(f"trial {trial}: {answer}")
            with SqliteStore(path) as store:
                assert store.stats()["schema_version"] == SCHEMA_VERSION
    finally:
        for proc in openers:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=30)
            proc.stdout.close()
    assert failures == []


def test_health_reports_a_database_file_removed_while_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        assert store.health()["ok"] is True
        path.unlink()
        health = store.health()
        assert health["ok"] is False and "removed" in health["reason"]


def test_a_closed_store_is_unhealthy_and_drops_writes_without_raising(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.close()
    store.close()  # idempotent
    store.save_step("r1", StepResult(name="a"))
    health = store.health()
    assert health["ok"] is False and health["reason"] == "the store is closed"
    assert health["dropped_writes"] == 1
    with pytest.raises(StateStoreError, match="closed"):
        store.get_run("r1")


_DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    from codomyrmex_orchestration.core.store import SqliteStore
    from codomyrmex_orchestration.errors import StateStoreError

    path = Path(sys.argv[1])
    store = SqliteStore(path)
    # The file-size limit makes writes past it fail with EFBIG: a real "disk full" for SQLite.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    for i in range(200):
        store.append_event("big", {"blob": "x" * 10_000, "i": i})  # never raises into the caller
    out = {}
    try:
        store.flush()
        out["flush"] = "ok"
    except StateStoreError as exc:
        out["flush"] = str(exc)
    store.append_event("after", {})
    out["health"] = store.health()
    out["stats_dropped"] = store.stats()["dropped_writes"]
    store.close()
    out["lost"] = store.lost_writes
    print(json.dumps(out), flush=True)
    """
)


def _fill_the_disk(path: Path) -> tuple[dict[str, Any], str]:
    """Run the disk-full script on ``path``: what it printed, and its log (stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_a_full_disk_is_reported_by_health_and_flush_and_the_writes_wait_without_crashing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    out, _ = _fill_the_disk(path)
    assert "the writer cannot save now" in out["flush"] and str(path) in out["flush"]
    assert "check the disk holding" in out["flush"]  # what to do
    assert out["health"]["ok"] is False
    assert out["health"]["last_error"]
    assert out["stats_dropped"] == 0  # they wait for the disk to have room


def test_closing_while_the_disk_stays_full_logs_every_write_it_could_not_save_as_lost(tmp_path: Path) -> None:
    out, log = _fill_the_disk(tmp_path / "state.db")
    [lost] = re.findall(r"state_store_closed_with_loss.*?lost=(\d+)", log)
    assert int(lost) == out["lost"] >= 201  # the 200 events and the one after the failure


def test_reads_from_other_threads_see_writes_made_before_them(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db", flush_interval=10.0) as store:
        store.save_run(_run("r1"))
        seen: list[RunRecord | None] = []
        reader = threading.Thread(target=lambda: seen.append(store.get_run("r1")))
        reader.start()
        reader.join(timeout=10)
        assert seen and seen[0] is not None and seen[0].run_id == "r1"


def test_events_appended_while_runs_flush_partially_from_four_threads_are_each_committed_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    # A short flush interval: the writer's batches, the threads' partial flushes and the reads race.
    with SqliteStore(path, flush_interval=0.001, retention_events=100_000) as store:

        def work(t: int) -> None:
            for i in range(300):
                run_id = f"run-{t}-{i}"
                store.save_run(_run(run_id))
                store.append_event("run.finished", {"run_id": run_id})
                store.flush(upto=store.write_mark())  # the run's own rows, as a run's end does
                if i % 50 == 0:  # a read sees the event appended before it (read-your-writes)
                    [newest] = store.list_events(limit=1, type=f"probe-{t}") or [None]
                    assert newest is None or newest["payload"]["i"] < i
                    store.append_event(f"probe-{t}", {"i": i})
                    [newest] = store.list_events(limit=1, type=f"probe-{t}")
                    assert newest["payload"]["i"] == i

        _on_four_threads(work)
        store.flush()
        assert store.health()["pending_writes"] == 0
    with SqliteStore(path) as reopened:  # what reached the file
        logged = [e["payload"]["run_id"] for e in reopened.list_events(limit=10_000, type="run.finished")]
        assert sorted(logged) == sorted(f"run-{t}-{i}" for t in range(4) for i in range(300))
        assert sum(reopened.count_runs().values()) == 1_200


def _committed_run_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)  # another connection sees committed rows only
    try:
        return sorted(row[0] for row in conn.execute("SELECT run_id FROM runs"))
    finally:
        conn.close()


def test_flush_upto_a_mark_commits_what_was_saved_before_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, flush_interval=3600) as store:  # the writer would wait an hour on its own
        store.save_run(_run("r1"))
        mark = store.write_mark()
        store.save_run(_run("r2"))
        assert _committed_run_ids(path) == []
        store.flush(upto=mark)
        assert "r1" in _committed_run_ids(path)
        store.flush(upto=mark)  # committed already: returns at once
        store.save_run(_run("r3"))
        assert store.write_mark() > mark
        store.flush(upto=store.write_mark())
        assert _committed_run_ids(path) == ["r1", "r2", "r3"]
        store.save_run(_run("r4"))
        store.flush(wait=False)  # nobody else is committing: it commits here, now
        assert _committed_run_ids(path) == ["r1", "r2", "r3", "r4"]


def test_a_memory_store_accepts_the_flush_protocol() -> None:
    store = MemoryStore()
    store.save_run(_run("r1"))
    store.flush(upto=store.write_mark())
    store.flush(wait=False)
    assert store.get_run("r1") is not None


def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, flush_interval=60.0)
    store.save_run(_run("r1"))
    store.close()
    with SqliteStore(path) as again:
        assert again.get_run("r1") is not None


def test_an_environment_without_write_access_reports_the_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the regular-file case covers refusal")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StateStoreError, match="not writable"):
            SqliteStore(locked / "state.db")
    finally:
        locked.chmod(0o700)


def test_runs_are_counted_by_status_without_listing_them(store: Store) -> None:
    store.save_run(_run("a", status=WorkflowStatus.COMPLETED))
    store.save_run(_run("b", status=WorkflowStatus.COMPLETED))
    store.save_run(_run("c", status=WorkflowStatus.FAILED))
    store.save_run(_run("d"))
    store.save_run(_run("d", status=WorkflowStatus.CANCELLED))  # an update, not a new run
    assert store.count_runs() == {"completed": 2, "failed": 1, "cancelled": 1}


def test_a_lock_held_by_another_connection_stalls_saving_and_every_write_is_saved_once_it_is_released(
    tmp_path: Path,
) -> None:
    """A commit that finds the file locked (a ``sqlite3`` shell, a backup) keeps its writes and is
    tried again: health names the cause meanwhile, new work is refused, and once the lock is released
    the writes made before and during it are committed in order, and health is ok again."""
    path = tmp_path / "state.db"
    with spot_log("state_store_saving_again") as logs, SqliteStore(path, flush_interval=0.01) as store:
        store.save_run(_run("r1"))
        store.flush()
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            store.save_run(_run("r1", status=WorkflowStatus.COMPLETED))
            with pytest.raises(StateStoreError, match=r"cannot save now: .*database is locked"):
                store.flush()  # after the busy timeout
            store.save_step("r1", StepResult(name="a", status=TaskStatus.COMPLETED, output=7))
            store.append_event("during", {})
            health = store.health()
            assert health["ok"] is False and "database is locked" in health["reason"], health
            assert "fuser" in health["reason"] and health["dropped_writes"] == 0
            with pytest.raises(StateStoreError, match=r"new work is refused while .*database is locked"):
                store.check_budget()
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert logs.seen.wait(30), "saving did not resume after the lock was released"
        store.flush()
        health = store.health()
        assert health["ok"] is True and health["dropped_writes"] == 0 and store.lost_writes == 0
        store.check_budget()  # new work is accepted again
    with SqliteStore(path) as reopened:
        record = reopened.get_run("r1")
        assert record is not None and record.status is WorkflowStatus.COMPLETED  # the newer write won
        assert record.steps["a"].output == 7
        assert [e["type"] for e in reopened.list_events(type="during")] == ["during"]
    [started] = logs.named("state_store_cannot_save")
    assert "fuser" in started["what_to_do"] and "database is locked" in started["reason"]
    [ended] = logs.named("state_store_saving_again")
    assert ended["writes_waited"] >= 3 and ended["writes_lost"] == 0
    assert not logs.named("state_store_writer_failed")
