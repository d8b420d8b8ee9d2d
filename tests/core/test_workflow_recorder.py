"""The run recorder: what reaches the store when, for a durable store and for one that is not."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from codomyrmex_orchestration.core._workflow_recorder import RunRecorder
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from tests.helpers.log_spot import spot_log


def _record() -> RunRecord:
    steps = {n: StepResult(name=n) for n in ("a", "b")}
    return RunRecord(run_id="r1", workflow_name="w", status=WorkflowStatus.RUNNING, steps=steps)


def test_a_durable_store_gets_every_step_at_the_start_and_each_result_before_a_dependent_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, flush_interval=3600) as store:
        recorder = RunRecorder(store)
        record = _record()
        recorder.run_started(record)
        saver = recorder.step_saver
        assert saver is not None
        saver("r1", StepResult(name="a", status=TaskStatus.COMPLETED, output=1))
        mark = recorder.write_mark(has_parents=True)  # b is cleared to run after a was saved
        recorder.step_starting(mark)  # b starts: a's result is committed first
        with SqliteStore(path) as other:  # another connection sees only what is committed
            on_disk = other.get_run("r1")
        assert on_disk is not None and list(on_disk.steps) == ["a", "b"]
        assert on_disk.steps["a"].output == 1 and on_disk.steps["b"].status is TaskStatus.PENDING


def test_a_store_that_dies_with_the_process_gets_the_run_row_first_and_the_whole_run_at_the_end() -> None:
    store = MemoryStore()
    recorder = RunRecorder(store)
    assert recorder.step_saver is None and recorder.write_mark(has_parents=True) is None
    record = _record()
    recorder.run_started(record)
    started = store.get_run("r1")
    assert started is not None and started.steps == {}
    final = record.model_copy(
        update={
            "status": WorkflowStatus.COMPLETED,
            "steps": {n: StepResult(name=n, status=TaskStatus.COMPLETED) for n in ("a", "b")},
        }
    )
    recorder.run_finished(final)
    ended = store.get_run("r1")
    assert ended is not None and ended.status is WorkflowStatus.COMPLETED and len(ended.steps) == 2


def test_a_durable_run_is_on_disk_when_execute_workflow_returns_and_its_events_follow_with_a_full_flush(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    # The writer would wait an hour before committing on its own: what is on disk was flushed.
    engine = OrchestrationEngine(
        state_dir=tmp_path, config_dir=None, store=SqliteStore(path, flush_interval=3600)
    )
    try:
        engine.workflow_manager.create_workflow(
            {
                "name": "one",
                "steps": [{"name": "s", "module": "core", "action": "set", "parameters": {"v": 1}}],
            }
        )
        record = engine.execute_workflow("one", timeout=10)
        assert record.status is WorkflowStatus.COMPLETED
        with closing(sqlite3.connect(path)) as conn:  # another connection sees only what is committed
            run = conn.execute("SELECT status FROM runs WHERE run_id = ?", (record.run_id,)).fetchall()
            steps = conn.execute(
                "SELECT name, status FROM steps WHERE run_id = ?", (record.run_id,)
            ).fetchall()
            logged = conn.execute("SELECT count(*) FROM events WHERE type = 'run.started'").fetchone()[0]
        assert run == [("completed",)] and steps == [("s", "completed")]
        assert logged == 0  # the run's commit carries its own rows, not the event log
        engine.store.flush()
        with closing(sqlite3.connect(path)) as conn:
            types = {t for (t,) in conn.execute("SELECT type FROM events")}
        assert {"run.started", "step.completed"} <= types
    finally:
        engine.shutdown()


def test_a_run_end_leaves_housekeeping_to_its_schedule_and_a_full_flush_brings_it_forward(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, retention_runs=1, retention_grace=0, housekeeping_interval=3600) as store:
        recorder = RunRecorder(store)
        for i in range(3):
            record = RunRecord(run_id=f"r{i}", workflow_name="w", status=WorkflowStatus.RUNNING)
            recorder.run_started(record)
            recorder.run_finished(record.model_copy(update={"status": WorkflowStatus.COMPLETED}))
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 3  # all three committed
        store.flush()  # nothing is pending: the housekeeping owed is committed alone
        with closing(sqlite3.connect(path)) as conn:
            assert [r for (r,) in conn.execute("SELECT run_id FROM runs")] == ["r2"]


def test_runs_ending_while_saving_fails_log_once_when_it_stops_and_once_when_it_works_again(
    tmp_path: Path,
) -> None:
    """No error line per run: one when saving stops (the cause and what to do), one when it works
    again (how long, how many writes waited, how many flushes were refused); meanwhile the recorder
    serves the ended runs the store has not committed."""
    path = tmp_path / "state.db"
    with spot_log("state_store_saving_again") as logs, SqliteStore(path, flush_interval=0.01) as store:
        recorder = RunRecorder(store)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(3):
                final = _record().model_copy(update={"run_id": f"r{i}", "status": WorkflowStatus.COMPLETED})
                recorder.run_finished(final)
            errors = [e["event"] for e in logs.entries if e["log_level"] in ("error", "critical")]
            assert errors == ["state_store_cannot_save"]  # one line, not one per run
            assert sorted(r.run_id for r in recorder.unsaved()) == ["r0", "r1", "r2"]
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert logs.seen.wait(30), "saving did not resume after the lock was released"
        assert recorder.unsaved() == []  # the store has them now
        assert store.get_run("r2") is not None
    assert len([e for e in logs.entries if e["log_level"] in ("error", "critical")]) == 1
    [started] = logs.named("state_store_cannot_save")
    assert "fuser" in started["what_to_do"]
    [ended] = logs.named("state_store_saving_again")
    assert ended["flushes_refused"] >= 3 and ended["writes_waited"] >= 3 and ended["seconds"] > 0
