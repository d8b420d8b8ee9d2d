"""The state store with a history behind it: listings by time window and cursor, counts kept as runs
come and go, and queries that walk an index instead of the whole history (real SQLite files)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._store_schema import MIGRATIONS
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import SCHEMA_VERSION, MemoryStore, SqliteStore, run_cursor
from codomyrmex_orchestration.errors import InvalidInputError

Store = MemoryStore | SqliteStore
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(
    run_id: str, minute: int, *, workflow: str = "wf", status: WorkflowStatus = WorkflowStatus.COMPLETED
) -> RunRecord:
    return RunRecord(
        run_id=run_id, workflow_name=workflow, status=status, created_at=T0 + timedelta(minutes=minute)
    )


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    opened: list[Store] = []

    def make(**kw: Any) -> Store:
        store: Store = (
            MemoryStore(**kw) if request.param == "memory" else SqliteStore(tmp_path / "state.db", **kw)
        )
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _ids(runs: list[RunRecord]) -> list[str]:
    return [r.run_id for r in runs]


def test_list_runs_keeps_to_a_time_window_since_inclusive_until_exclusive(
    make_store: Callable[..., Store],
) -> None:
    store = make_store()
    for minute in range(10):
        store.save_run(_run(f"r{minute}", minute, workflow="even" if minute % 2 == 0 else "odd"))
    since, until = T0 + timedelta(minutes=3), T0 + timedelta(minutes=7)
    assert _ids(store.list_runs(since=since, until=until)) == ["r6", "r5", "r4", "r3"]
    assert _ids(store.list_runs(workflow_name="even", since=since, until=until)) == ["r6", "r4"]
    assert _ids(store.list_runs(since=T0 + timedelta(minutes=8))) == ["r9", "r8"]
    assert _ids(store.list_runs(until=T0 + timedelta(minutes=2))) == ["r1", "r0"]
    naive = datetime(2026, 1, 1, 0, 8)  # taken as UTC
    assert _ids(store.list_runs(since=naive)) == ["r9", "r8"]


def test_a_cursor_pages_through_every_run_once_newest_first(make_store: Callable[..., Store]) -> None:
    store = make_store()
    for i in range(23):
        store.save_run(_run(f"r{i:02d}", i // 2))  # pairs share a created_at: the run id breaks the tie
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_runs(limit=5, cursor=cursor)
        if not page:
            break
        seen.extend(_ids(page))
        cursor = run_cursor(page[-1])
    assert seen == _ids(store.list_runs(limit=100))
    assert sorted(seen) == sorted(f"r{i:02d}" for i in range(23))
    assert seen[:3] == ["r22", "r21", "r20"]


def test_a_cursor_combines_with_filters(make_store: Callable[..., Store]) -> None:
    store = make_store()
    for i in range(12):
        status = WorkflowStatus.FAILED if i % 3 == 0 else WorkflowStatus.COMPLETED
        store.save_run(_run(f"r{i:02d}", i, status=status))
    first = store.list_runs(status=WorkflowStatus.COMPLETED, limit=3)
    assert _ids(first) == ["r11", "r10", "r08"]
    rest = store.list_runs(
        status=WorkflowStatus.COMPLETED, cursor=run_cursor(first[-1]), since=T0 + timedelta(minutes=2)
    )
    assert _ids(rest) == ["r07", "r05", "r04", "r02"]


def test_a_malformed_cursor_is_refused_naming_the_field(make_store: Callable[..., Store]) -> None:
    store = make_store()
    for bad in ("", "nope", "1.5:", "x:run"):
        with pytest.raises(InvalidInputError, match="cursor"):
            store.list_runs(cursor=bad)


def test_run_counts_follow_inserts_status_changes_and_retention(make_store: Callable[..., Store]) -> None:
    store = make_store(retention_runs=2, retention_grace=0)
    store.save_run(_run("active", 0, status=WorkflowStatus.RUNNING))
    for i in range(1, 3):
        store.save_run(_run(f"done{i}", i))
    store.flush()
    assert store.count_runs() == {"running": 1, "completed": 2}
    store.save_run(_run("active", 0, status=WorkflowStatus.FAILED))  # the run ends
    store.save_run(_run("late", 9, status=WorkflowStatus.RUNNING))
    store.save_run(_run("later", 10, status=WorkflowStatus.RUNNING))
    store.save_run(_run("done3", 11))
    store.flush()
    # Four finished runs, two kept: the two oldest ("active", then "done1") went; running ones stay.
    assert store.count_runs() == {"completed": 2, "running": 2}
    assert store.get_run("active") is None and store.get_run("done1") is None
    assert store.stats()["rows"]["runs"] == 4


def _v1_database(path: Path, runs: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    for i in range(runs):
        status = "running" if i == 0 else "completed"
        record = _run(f"old{i}", i, status=WorkflowStatus(status)).model_dump_json(exclude={"steps"})
        conn.execute(
            "INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (f"old{i}", "wf", status, record, (T0 + timedelta(minutes=i)).timestamp(), 0.0),
        )
        conn.execute(
            "INSERT INTO steps (run_id, name, status, result, updated_at) VALUES (?, 's', 'completed', ?, 0)",
            (f"old{i}", StepResult(name="s", status=TaskStatus.COMPLETED).model_dump_json()),
        )
    conn.close()


def test_a_version_1_database_is_migrated_with_its_runs_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v1_database(path, 30)
    with SqliteStore(path) as store:
        assert store.count_runs() == {"running": 1, "completed": 29}
        assert store.stats()["rows"]["steps"] == 30
        assert store.stats()["schema_version"] == SCHEMA_VERSION
        assert _ids(store.list_runs(limit=2)) == ["old29", "old28"]
        store.save_run(_run("new", 100))
        store.flush()
        assert store.count_runs()["completed"] == 30
    with SqliteStore(path) as store:
        assert store.count_runs() == {"running": 1, "completed": 30}


def _plan(path: Path, sql: str, params: tuple[Any, ...] = ()) -> str:
    conn = sqlite3.connect(path)
    try:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    finally:
        conn.close()


def test_listings_lookups_and_retention_walk_an_index_never_the_whole_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        for i in range(50):
            store.save_run(_run(f"r{i}", i, workflow=f"wf{i % 3}"))
        store.flush()
    window = (T0.timestamp(), (T0 + timedelta(hours=1)).timestamp())
    queries = {
        "by workflow and window": (
            "SELECT run_id, record FROM runs WHERE workflow_name = ? AND created_at >= ? AND created_at < ? "
            "AND (created_at, run_id) < (?, ?) ORDER BY created_at DESC, run_id DESC LIMIT 50",
            ("wf1", *window, window[1], "r9"),
        ),
        "by status": (
            "SELECT run_id FROM runs WHERE status = ? ORDER BY created_at DESC, run_id DESC LIMIT 50",
            ("completed",),
        ),
        "newest": ("SELECT run_id FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 50", ()),
        "one run": ("SELECT record FROM runs WHERE run_id = ?", ("r1",)),
        "its steps": ("SELECT result FROM steps WHERE run_id = ? ORDER BY rowid", ("r1",)),
        "oldest finished of a status": (
            "SELECT created_at, run_id FROM runs INDEXED BY runs_by_status WHERE status = ? "
            "ORDER BY created_at, run_id LIMIT 10",
            ("completed",),
        ),
        "event bounds": ("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)", ()),
    }
    for name, (sql, params) in queries.items():
        plan = _plan(path, sql, params)
        if name != "its steps":  # sorting one run's steps is bounded by the run, not the history
            assert "TEMP B-TREE" not in plan, (name, plan)
        # A SCAN is fine only along an index, stopped by the LIMIT: never a scan of a table itself.
        for part in plan.split(" | "):
            assert not part.startswith(("SCAN runs", "SCAN steps", "SCAN events")) or "INDEX" in part, (
                name,
                plan,
            )
    assert "USING INDEX runs_by_workflow" in _plan(path, *queries["by workflow and window"])


def test_a_runs_sub_runs_are_listed_along_an_index_of_their_parent_never_by_reading_the_history(
    tmp_path: Path,
) -> None:
    # The run view polls a run's sub-runs every 600 ms; without an index on parent_run_id each poll
    # walked every stored run (runs_by_created to its oldest end) to find the few that matched.
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        for i in range(40):
            parent = "p1" if i % 4 == 1 else "p2" if i % 4 == 2 else None
            store.save_run(_run(f"r{i:02d}", i).model_copy(update={"parent_run_id": parent}))
        store.flush()
        assert _ids(store.list_runs(parent_run_id="p1", limit=3)) == ["r37", "r33", "r29"]
        cursor = run_cursor(store.list_runs(parent_run_id="p1", limit=3)[-1])
        assert _ids(store.list_runs(parent_run_id="p1", limit=3, cursor=cursor)) == ["r25", "r21", "r17"]
        assert _ids(store.sub_runs("p2")) == [f"r{i:02d}" for i in range(2, 40, 4)]
    newest_first = "ORDER BY created_at DESC, run_id DESC LIMIT 50"
    queries = {  # as list_runs and sub_runs build them
        "listing": (f"SELECT run_id, record FROM runs WHERE parent_run_id = ? {newest_first}", ("p1",)),
        "listing, next page in a window": (
            "SELECT run_id, record FROM runs WHERE parent_run_id = ? AND created_at >= ? AND created_at < ? "
            f"AND (created_at, run_id) < (?, ?) {newest_first}",
            ("p1", T0.timestamp(), T0.timestamp() + 3600, T0.timestamp() + 1800, "r29"),
        ),
        "listing by status": (
            f"SELECT run_id, record FROM runs WHERE status = ? AND parent_run_id = ? {newest_first}",
            ("completed", "p1"),
        ),
        "listing by workflow": (
            f"SELECT run_id, record FROM runs WHERE workflow_name = ? AND parent_run_id = ? {newest_first}",
            ("wf", "p1"),
        ),
        "sub_runs": ("SELECT record FROM runs WHERE parent_run_id = ? ORDER BY created_at, rowid", ("p2",)),
    }
    for name, (sql, params) in queries.items():
        plan = _plan(path, sql, params)
        assert plan.startswith("SEARCH runs USING INDEX runs_by_parent (parent_run_id=?"), (name, plan)
        if name != "sub_runs":  # ties of one parent's creation times alone are sorted (by rowid)
            assert "TEMP B-TREE" not in plan, (name, plan)


def test_a_file_of_the_previous_schema_gets_the_parent_index_with_its_sub_runs_in_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("".join(MIGRATIONS[:7]))  # schema 7: runs_by_parent did not exist
    conn.execute("PRAGMA user_version=7")
    conn.execute("PRAGMA journal_mode=WAL")  # as every store opened it
    for i in range(6):
        conn.execute(
            "INSERT INTO runs (run_id, workflow_name, status, record, created_at, updated_at, parent_run_id) "
            "VALUES (?, 'wf', 'completed', ?, ?, 0, ?)",
            (f"r{i}", _run(f"r{i}", i).model_dump_json(), float(i), "p" if i % 2 else None),
        )
    # A reader of the old file in the middle of a read: the migration goes on beside it (WAL).
    conn.execute("BEGIN")
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (6,)
    with SqliteStore(path) as store:
        assert store.stats()["schema_version"] == SCHEMA_VERSION
        assert _ids(store.list_runs(parent_run_id="p")) == ["r5", "r3", "r1"]
        assert _ids(store.sub_runs("p")) == ["r1", "r3", "r5"]
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (6,)  # its snapshot, unbroken
    conn.execute("COMMIT")
    indexed = conn.execute("SELECT run_id FROM runs INDEXED BY runs_by_parent WHERE parent_run_id = 'p'")
    assert sorted(r for (r,) in indexed) == ["r1", "r3", "r5"]
    conn.close()
