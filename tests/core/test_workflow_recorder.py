"""The run recorder: what reaches the store when, for a durable store and for one that is not."""

from __future__ import annotations

from pathlib import Path

from codomyrmex_orchestration.core._workflow_recorder import RunRecorder
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore


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
