"""The SQLite store's retention in two parts: the byte budget at every commit, the housekeeping (run,
version and event limits, expired cached outputs) on its own schedule; and how step rows are written.
Real SQLite files and spill files in tmp_path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from codomyrmex_orchestration.core._limits import OutputLimiter
from codomyrmex_orchestration.core._store_codec import dump_step
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import SqliteStore
from tests.core.test_store_budget import BUDGET, SPILL, _big_run, _disk_bytes


def test_a_burst_of_big_outputs_between_housekeeping_passes_never_takes_the_state_over_its_budget(
    tmp_path: Path,
) -> None:
    outputs = tmp_path / "outputs"
    limiter = OutputLimiter(1_000, spill_dir=outputs)
    # No housekeeping pass during the burst: only the budget's part of each commit keeps the budget.
    with SqliteStore(
        tmp_path / "state.db", max_bytes=BUDGET, retention_events=1, housekeeping_interval=3600
    ) as store:
        limiter.budget = store
        for i in range(30):  # 6.6 MB of spill files and kept outputs against a 1 MB budget
            _big_run(store, outputs, f"done-{i:02d}", WorkflowStatus.COMPLETED)
            marker = limiter("z" * SPILL, run_id=None, step_name=None, task_id=f"task-{i:02d}")
            assert marker["truncated"] is True
            store.append_event("burst", {"i": i})
            store.flush(upto=store.write_mark())  # a partial flush, as a step's path commits
            used = store.stats()["bytes_used"]
            assert used <= BUDGET, (i, used)
            assert _disk_bytes(outputs) <= used, i
        # The events are all there: no housekeeping pass ran; the budget alone evicted the oldest runs.
        assert len(store.list_events(limit=100)) == 30
        kept = [r.run_id for r in store.list_runs()]
        assert kept[0] == "done-29" and "done-00" not in kept
        assert sorted(p.name for p in outputs.iterdir() if p.name != "tasks") == sorted(kept)

        store.append_event("last")
        store.flush()  # a full flush brings the housekeeping forward
        assert [e["type"] for e in store.list_events(limit=100)] == ["last"]


def test_housekeeping_trims_the_runs_without_a_full_flush_within_a_bounded_wait(tmp_path: Path) -> None:
    with SqliteStore(
        tmp_path / "state.db", retention_runs=2, retention_grace=0, housekeeping_interval=0.2
    ) as store:
        for i in range(6):
            record = RunRecord(run_id=f"run{i}", workflow_name="wf", status=WorkflowStatus.COMPLETED)
            record.steps["a"] = StepResult(name="a", status=TaskStatus.COMPLETED, output=i)
            store.save_run(record)
        store.flush(upto=store.write_mark())  # committed; the housekeeping is left to its schedule
        deadline = time.monotonic() + 10
        while sum(store.count_runs().values()) > 2 and time.monotonic() < deadline:
            threading.Event().wait(0.02)  # nothing more is written: the idle writer wakes for the pass
        assert [r.run_id for r in store.list_runs()] == ["run5", "run4"]


def test_a_runs_steps_are_inserted_when_it_starts_and_updated_after_in_declaration_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        record = RunRecord(run_id="r", workflow_name="wf", status=WorkflowStatus.RUNNING)
        for name in ("z", "b", "a"):
            record.steps[name] = StepResult(name=name)
        store.save_run(record)
        store.save_step("r", StepResult(name="z", status=TaskStatus.RUNNING, attempts=1))
        store.flush()
        store.save_step("r", StepResult(name="b", status=TaskStatus.COMPLETED, output=1))
        # a step the run was not saved with (added while it runs)
        store.save_step("r", StepResult(name="late", status=TaskStatus.COMPLETED, output=2))
        store.save_step("gone", StepResult(name="x", status=TaskStatus.COMPLETED))  # no such run: dropped
        store.flush()
        # Saved again with its placeholders (a resumed run): the rows are there, the upsert writes them.
        record.steps["z"] = StepResult(name="z", status=TaskStatus.RUNNING, attempts=2)
        store.save_run(record)
        store.flush()
        run = store.get_run("r")
        assert run is not None and list(run.steps) == ["z", "b", "a", "late"]
        assert [s.status for s in run.steps.values()] == [
            TaskStatus.RUNNING,
            TaskStatus.PENDING,
            TaskStatus.PENDING,
            TaskStatus.COMPLETED,
        ]
        assert run.steps["z"].attempts == 2
        assert store.get_run("gone") is None
        assert store.stats()["rows"]["steps"] == 4


def test_a_run_started_and_finished_between_two_commits_keeps_its_final_steps_in_declaration_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, flush_interval=3600) as store:
        older = RunRecord(run_id="older", workflow_name="wf", status=WorkflowStatus.RUNNING)
        older.steps["a"] = StepResult(name="a")
        store.save_run(older)
        store.flush()
        record = RunRecord(run_id="r", workflow_name="wf", status=WorkflowStatus.RUNNING)
        for name in ("z", "b"):
            record.steps[name] = StepResult(name=name)
        store.save_run(record)  # one batch: the run's row, its placeholders, then every result
        for name in ("b", "z"):
            store.save_step("r", StepResult(name=name, status=TaskStatus.COMPLETED, output=name))
        store.save_step("older", StepResult(name="a", status=TaskStatus.COMPLETED, output=1))
        store.save_step("gone", StepResult(name="x", status=TaskStatus.COMPLETED))  # no such run: dropped
        store.save_run(record.model_copy(update={"status": WorkflowStatus.COMPLETED, "steps": {}}))
        store.flush(upto=store.write_mark())
        run = store.get_run("r")
        assert run is not None and run.status is WorkflowStatus.COMPLETED
        assert [(s.name, s.output) for s in run.steps.values()] == [("z", "z"), ("b", "b")]
        kept = store.get_run("older")
        assert kept is not None and kept.steps["a"].output == 1
        assert store.get_run("gone") is None
        assert store.stats()["rows"]["steps"] == 3


def test_a_placeholder_is_stored_as_the_serializer_would_write_it() -> None:
    for name in ("plain", 'quo"te\\', "é\u2028\x01", "item[3]"):
        placeholder = StepResult(name=name)
        assert dump_step(placeholder) == placeholder.model_dump_json()
        started = StepResult(name=name)
        started.status = TaskStatus.RUNNING  # set after creation: no longer a placeholder
        assert dump_step(started) == started.model_dump_json()
