"""The state directory's byte budget, against real SQLite files and real spill files in tmp_path."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._store_codec import run_estimate
from codomyrmex_orchestration.core.actions import ActionDefinition
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from codomyrmex_orchestration.errors import DAGValidationError, InvalidInputError, LimitExceededError

BUDGET = 1_000_000
SPILL = 100_000  # bytes of each spilled output
KEPT = 20_000  # characters of each output kept in the database


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _big_run(store: SqliteStore, outputs: Path, run_id: str, status: WorkflowStatus) -> None:
    """A run as the engine leaves it: one step spilled to a real file (the marker points to it), one
    step with a large output kept in the database."""
    folder = outputs / run_id
    folder.mkdir(parents=True)
    spilled = folder / "big.json"
    spilled.write_bytes(b"x" * SPILL)
    marker = {
        "truncated": True,
        "size_bytes": SPILL,
        "limit_bytes": 1000,
        "preview": "x",
        "spilled_to": str(spilled),
    }
    record = RunRecord(run_id=run_id, workflow_name="wf", status=status)
    record.steps["big"] = StepResult(name="big", status=TaskStatus.COMPLETED, output=marker)
    record.steps["kept"] = StepResult(name="kept", status=TaskStatus.COMPLETED, output="y" * KEPT)
    store.save_run(record)


def test_a_loop_of_big_outputs_stays_under_the_budget_then_new_work_is_refused(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    with SqliteStore(tmp_path / "state.db", max_bytes=BUDGET) as store:
        assert store.max_bytes == BUDGET
        for i in range(40):  # 4.8 MB written in all, against a 1 MB budget
            store.check_budget()
            _big_run(store, outputs, f"done-{i:02d}", WorkflowStatus.COMPLETED)
            store.flush()
            used = store.stats()["bytes_used"]
            assert used <= BUDGET, (i, used)
            assert _disk_bytes(outputs) <= used
        kept = [r.run_id for r in store.list_runs()]
        assert kept[0] == "done-39" and "done-00" not in kept and len(kept) >= 5
        # The evicted runs' spill folders went with them; the kept runs' are all there.
        assert sorted(p.name for p in outputs.iterdir()) == sorted(kept)

        # Runs still running cannot be evicted: once they fill the budget, new work is refused.
        refused = None
        for i in range(40):
            try:
                store.check_budget()
            except LimitExceededError as exc:
                refused = exc
                break
            _big_run(store, outputs, f"live-{i:02d}", WorkflowStatus.RUNNING)
            store.flush()
        assert refused is not None and i <= BUDGET // SPILL + 1
        assert "CODOMYRMEX_STATE_MAX_BYTES" in str(refused) and f"limit of {BUDGET}" in str(refused)
        assert refused.limit == BUDGET and refused.value > BUDGET
        assert {r.run_id for r in store.list_runs(status=WorkflowStatus.RUNNING)} == {
            f"live-{j:02d}" for j in range(i)
        }
        assert store.health()["ok"] is True  # refusing new work is not a broken store
        assert store.health()["bytes_used"] == refused.value

        # Once those runs finish, they can be evicted and work is accepted again.
        for j in range(i):
            store.save_run(
                RunRecord(run_id=f"live-{j:02d}", workflow_name="wf", status=WorkflowStatus.COMPLETED)
            )
        store.check_budget()


def test_the_budget_holds_across_a_restart_and_a_lowered_budget_evicts_at_once(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    with SqliteStore(tmp_path / "state.db", max_bytes=None) as store:
        for i in range(10):
            _big_run(store, outputs, f"r{i}", WorkflowStatus.COMPLETED)
        assert store.stats()["max_bytes"] is None
        assert store.stats()["bytes_used"] >= 10 * (SPILL + KEPT)
    # room for three runs and the write-ahead log, which counts too (its cap is 64 KiB at this budget)
    with SqliteStore(tmp_path / "state.db", max_bytes=3 * (SPILL + KEPT) + 100_000) as store:
        store.check_budget()
        assert [r.run_id for r in store.list_runs()] == ["r9", "r8", "r7"]
        assert sorted(p.name for p in outputs.iterdir()) == ["r7", "r8", "r9"]


def _file_bytes(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


def _free_pages(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()


def _finished_runs(store: SqliteStore, count: int, output_bytes: int) -> None:
    for i in range(count):
        record = RunRecord(run_id=f"r{i:04d}", workflow_name="wf", status=WorkflowStatus.COMPLETED)
        record.steps["a"] = StepResult(name="a", status=TaskStatus.COMPLETED, output="z" * output_bytes)
        store.save_run(record)
    store.flush()


@pytest.mark.parametrize(
    "lowered",
    [{"max_bytes": 2_000_000}, {"retention_runs": 5, "retention_grace": 0}],
    ids=["byte budget", "run retention"],
)
def test_a_limit_lowered_at_restart_shrinks_the_file_not_only_the_rows(
    lowered: dict[str, int], tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, max_bytes=None) as store:
        _finished_runs(store, 60, 200_000)  # 12 MB of step results
    assert _file_bytes(path) > 12_000_000
    with SqliteStore(path, **lowered) as store:
        assert store.count_runs()["completed"] <= 10
    # The pages the evicted runs took went back to the file system: the file is about what is kept. An
    # open gives pages back for at most a second (the rest goes a chunk per housekeeping pass): on a
    # loaded machine the 10 MB take more than one open, so open again, a bounded number of times.
    for _ in range(10):
        if _file_bytes(path) < 2_500_000:
            break
        SqliteStore(path, **lowered).close()
    assert _file_bytes(path) < 2_500_000, _file_bytes(path)
    assert _free_pages(path) < 300


def test_runs_deleted_by_retention_while_open_give_their_pages_back_a_chunk_per_pass(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path, retention_runs=5, retention_grace=0) as store:
        _finished_runs(store, 60, 200_000)  # one pass deletes 55 runs: 11 MB of free pages
        chunks = 0
        while _free_pages(path) > 300:
            chunks += 1
            assert chunks < 100, _free_pages(path)
            store.save_run(RunRecord(run_id=f"more{chunks}", workflow_name="wf"))  # a pass owes a commit
            store.flush()  # a full flush runs the housekeeping pass that is owed
        assert chunks > 1  # a chunk per pass, not all of it at once
        store.flush()
    assert _file_bytes(path) < 2_500_000, _file_bytes(path)


def test_spill_files_of_tasks_outside_runs_count_and_the_oldest_finished_work_goes_first(
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "outputs" / "tasks"
    tasks.mkdir(parents=True)
    with SqliteStore(tmp_path / "state.db", max_bytes=None) as store:
        for i in range(3):
            store.save_run(RunRecord(run_id=f"run{i}", workflow_name="wf", status=WorkflowStatus.COMPLETED))
        created = store.get_run("run0").created_at.timestamp()  # type: ignore[union-attr]  # saved above
    for i in range(12):  # spilled by tasks that ended before the runs started: these go first
        spill = tasks / f"t{i:02d}.json"
        spill.write_bytes(b"z" * SPILL)
        os.utime(spill, (created - 100 + i, created - 100 + i))
    # Task spill files are measured when the store opens, then at most once a second.
    with SqliteStore(tmp_path / "state.db", max_bytes=BUDGET) as store:
        store.check_budget()
        left = sorted(p.name for p in tasks.iterdir())
        assert (
            left == [f"t{i:02d}.json" for i in range(12 - len(left), 12)] and len(left) == BUDGET // SPILL - 1
        )
        assert [r.run_id for r in store.list_runs()] == ["run2", "run1", "run0"]
        assert store.stats()["spill_bytes_tasks"] == len(left) * SPILL


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_parameters_over_their_limit_are_refused_naming_the_setting(kind: str, tmp_path: Path) -> None:
    store = (
        MemoryStore(max_parameters_bytes=1_000)
        if kind == "memory"
        else SqliteStore(tmp_path / "state.db", max_parameters_bytes=1_000)
    )
    try:
        store.check_budget({"small": "x" * 100})
        store.check_budget(None)
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_MAX_PARAMETERS_BYTES") as caught:
            store.check_budget({"big": "x" * 2_000})
        assert caught.value.limit == 1_000 and caught.value.value > 2_000
    finally:
        store.close()


def test_budget_arguments_below_one_byte_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="max_bytes"):
        SqliteStore(tmp_path / "a.db", max_bytes=0)
    with pytest.raises(InvalidInputError, match="max_parameters_bytes"):
        MemoryStore(max_parameters_bytes=0)


def test_engine_runs_with_spilled_outputs_keep_the_state_directory_under_its_budget(tmp_path: Path) -> None:
    state = tmp_path / "state"
    budget = 2_000_000
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, max_output_bytes=10_000, state_max_bytes=budget, max_workers=2
    )
    try:
        step = {"name": "big", "module": "core", "action": "echo", "parameters": {"message": "m" * 300_000}}
        engine.workflow_manager.create_workflow({"name": "big", "steps": [step]})
        runs = [engine.execute_workflow("big", timeout=60) for _ in range(20)]  # 6 MB of outputs
        assert all(r.status is WorkflowStatus.COMPLETED for r in runs)
        assert runs[-1].steps["big"].output["spilled_to"]
        stats = engine.store.stats()
        assert stats["bytes_used"] <= budget and stats["max_bytes"] == budget
        assert _disk_bytes(state / "outputs") <= budget
        assert (state / "outputs" / runs[-1].run_id).is_dir()
        assert not (state / "outputs" / runs[0].run_id).exists()
        status = engine.get_system_status()  # what get_system_status shows a client
        assert status.state_max_bytes == budget and 0 < (status.state_bytes_used or 0) <= budget
    finally:
        engine.shutdown()


def test_a_task_output_that_cannot_fit_the_budget_is_kept_as_a_marker_that_says_why(tmp_path: Path) -> None:
    from codomyrmex_orchestration.core._limits import OutputLimiter

    with SqliteStore(tmp_path / "state.db", max_bytes=BUDGET) as store:
        limiter = OutputLimiter(1000, spill_dir=tmp_path / "outputs", budget=store)
        fits = limiter("a" * 300_000, run_id=None, step_name=None, task_id="small")
        assert fits["spilled_to"] and store.stats()["spill_bytes_tasks"] > 300_000
        huge = limiter("b" * (BUDGET + 1), run_id=None, step_name=None, task_id="huge")
        assert huge["spilled_to"] is None and "CODOMYRMEX_STATE_MAX_BYTES" in huge["spill_error"]
        assert not (tmp_path / "outputs" / "tasks" / "huge.json").exists()
        for i in range(12):  # 3.6 MB of task outputs against the 1 MB budget: the oldest make room
            limiter("c" * 300_000, run_id=None, step_name=None, task_id=f"t{i}")
            assert _disk_bytes(tmp_path / "outputs") <= BUDGET
        assert store.stats()["bytes_used"] <= BUDGET


def test_a_run_step_whose_spill_the_budget_has_no_room_for_is_kept_as_a_marker_that_says_why(
    tmp_path: Path,
) -> None:
    # Before, a run's spill was written whatever its size and evicted only after the run (the tester:
    # a 200 MB file against a 20 MB budget). Now it gets the room first, evicting finished runs, or is
    # not written.
    from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition

    def big(params: dict[str, object], ctx: ActionContext) -> str:
        return "b" * int(str(params["size"]))

    state = tmp_path / "state"
    budget = 2_000_000
    engine = OrchestrationEngine(
        state_dir=state, config_dir=None, max_output_bytes=10_000, state_max_bytes=budget, max_workers=2
    )
    try:
        engine.registry.register(ActionDefinition("test", "big", big))
        steps = [
            {"name": "fits", "module": "test", "action": "big", "parameters": {"size": 600_000}},
            {"name": "huge", "module": "test", "action": "big", "parameters": {"size": 3_000_000}},
        ]
        engine.workflow_manager.create_workflow({"name": "spills", "steps": steps})
        for _ in range(4):  # the budget fills with finished runs: each new run's spill evicts the oldest
            run = engine.execute_workflow("spills", timeout=60)
            assert run.status is WorkflowStatus.COMPLETED, run.error
            fits, huge = run.steps["fits"].output, run.steps["huge"].output
            assert huge["truncated"] and huge["size_bytes"] == 3_000_002 and huge["spilled_to"] is None
            assert huge["spill_error"] == (
                "no room for 3000002 bytes in the state directory's byte budget (CODOMYRMEX_STATE_MAX_BYTES)"
            )
            assert not (state / "outputs" / run.run_id / "huge.json").exists()
            assert Path(fits["spilled_to"]).stat().st_size == 600_002 and "spill_error" not in fits
            assert _disk_bytes(state / "outputs") <= budget
        assert engine.store.stats()["bytes_used"] <= budget
    finally:
        engine.shutdown()


def test_a_run_whose_parameters_are_over_their_limit_is_refused_before_it_starts(tmp_path: Path) -> None:
    engine = OrchestrationEngine(state_dir=tmp_path / "state", config_dir=None, max_parameters_bytes=1024)
    try:
        step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": "{{params.p}}"}}
        engine.workflow_manager.create_workflow({"name": "wf", "steps": [step]})
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_MAX_PARAMETERS_BYTES"):
            engine.execute_workflow("wf", parameters={"p": "x" * 2048}, timeout=30)
        assert engine.workflow_manager.list_runs() == []  # nothing was started or stored
        assert engine.execute_workflow("wf", parameters={"p": "small"}, timeout=30).succeeded
    finally:
        engine.shutdown()


def test_default_parameters_over_their_limit_are_refused_when_the_workflow_is_created_or_validated(
    tmp_path: Path,
) -> None:
    engine = OrchestrationEngine(state_dir=tmp_path / "state", config_dir=None, max_parameters_bytes=1024)
    try:
        manager = engine.workflow_manager
        step = {"name": "a", "module": "core", "action": "echo", "parameters": {"message": "{{params.p}}"}}
        big = {"name": "wf", "parameters": {"p": "x" * 2048}, "steps": [step]}
        expected = (
            "steps: workflow 'wf' is invalid, 1 problem: parameters: CODOMYRMEX_MAX_PARAMETERS_BYTES: the "
            "default parameters every run starts with, in bytes of JSON, is 2056, above the limit of 1024"
        )  # the field, the size, the limit and the setting, measured as a run's parameters are
        for refuse in (manager.validate_workflow, manager.create_workflow):
            with pytest.raises(DAGValidationError) as refused:
                refuse(big)
            assert str(refused.value) == expected
        assert manager.list_workflows() == [] and manager.list_runs() == []
        manager.create_workflow({**big, "parameters": {"p": "x" * 1000}})  # 1008 bytes of JSON fit
        assert engine.execute_workflow("wf", timeout=30).succeeded
    finally:
        engine.shutdown()


def test_room_reserved_for_a_spill_being_written_is_not_promised_to_another(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db", max_bytes=BUDGET, spill_dir=tmp_path / "outputs") as store:
        # Three spills of 300 KB checked before any is written: the fourth no longer fits.
        assert all(store.make_room_for_spill(300_000, reserve=True) for _ in range(3))
        assert not store.make_room_for_spill(300_000, reserve=True)
        assert store.stats()["bytes_used"] >= 900_000  # reservations count as used
        store.release_spill_room(300_000)  # one spill failed: its room is free again
        assert store.make_room_for_spill(300_000, reserve=True)
        folder = tmp_path / "outputs" / "tasks"
        folder.mkdir(parents=True)
        for i in range(3):  # the files land: each replaces its reservation, nothing counts twice
            (folder / f"t{i}.json").write_bytes(b"x" * 300_000)
            store.note_task_spill(folder / f"t{i}.json", 300_000, reserved=True)
        assert 900_000 <= store.stats()["bytes_used"] <= BUDGET
        assert not store.make_room_for_spill(300_000, reserve=True) or _disk_bytes(folder) < 900_000


def test_task_outputs_spilled_by_many_workers_at_once_keep_the_state_under_its_budget(tmp_path: Path) -> None:
    from codomyrmex_orchestration.core._limits import OutputLimiter

    with SqliteStore(tmp_path / "state.db", max_bytes=BUDGET, spill_dir=tmp_path / "outputs") as store:
        limiter = OutputLimiter(1000, spill_dir=tmp_path / "outputs", budget=store)
        start = threading.Barrier(8)

        def spill(i: int) -> dict[str, object]:
            start.wait(timeout=30)
            marker: dict[str, object] = limiter("c" * 300_000, run_id=None, step_name=None, task_id=f"w{i}")
            return marker

        with ThreadPoolExecutor(8) as pool:
            markers = list(pool.map(spill, range(8)))
        assert _disk_bytes(tmp_path / "outputs") <= BUDGET
        assert all(m["spilled_to"] or "CODOMYRMEX_STATE_MAX_BYTES" in str(m["spill_error"]) for m in markers)
        assert any(m["spilled_to"] for m in markers)
        assert store.stats()["bytes_used"] <= BUDGET


def _big_workflow(name: str, chars: int) -> dict[str, object]:
    """A definition of three echo steps, each carrying ``chars`` characters."""
    return {
        "name": name,
        "steps": [
            {"name": f"s{i}", "module": "core", "action": "echo", "parameters": {"message": "x" * chars}}
            for i in range(3)
        ],
    }


def test_workflow_definitions_count_in_the_budget_and_past_it_new_ones_are_refused_not_evicted(
    tmp_path: Path,
) -> None:
    def engine() -> OrchestrationEngine:
        return OrchestrationEngine(
            state_dir=tmp_path / "state",
            config_dir=None,
            projects_dir=tmp_path / "projects",
            templates_dir=None,
            max_workers=2,
            state_max_bytes=2_000_000,
        )

    created: list[str] = []
    first = engine()
    try:
        empty = first.store.health()["bytes_used"]
        refused = None
        for i in range(10):  # each definition is about 300 KB, stored with its version: 600 KB
            try:
                first.workflow_manager.create_workflow(_big_workflow(f"w{i}", 100_000))
            except LimitExceededError as exc:
                refused = exc
                break
            created.append(f"w{i}")
            used = first.store.health()["bytes_used"]
            assert used >= empty + 600_000 * len(created), (i, used)  # health shows what they take
        assert refused is not None and 2 <= len(created) <= 4, created
        assert "CODOMYRMEX_STATE_MAX_BYTES" in str(refused) and "workflow definitions" in str(refused)
        # Nothing a user created went to make room: every definition is still registered.
        assert [w.name for w in first.workflow_manager.list_workflows()] == created
        # Sessions count in the same budget: once it is spent, a new one is refused too.
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_STATE_MAX_BYTES"):
            first.create_session()
        used = first.store.health()["bytes_used"]
    finally:
        first.shutdown()
    # The bytes are measured from the tallies at a restart (no scan), and the refusal holds.
    second = engine()
    try:
        assert second.store.health()["bytes_used"] == used
        assert [w.name for w in second.workflow_manager.list_workflows()] == created
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_STATE_MAX_BYTES"):
            second.workflow_manager.create_workflow(_big_workflow("one-more", 10))
    finally:
        second.shutdown()


def _session(session_id: str, status: str, chars: int) -> dict[str, object]:
    return {"session_id": session_id, "status": status, "description": "d" * chars}


def test_closed_sessions_go_oldest_first_past_the_budget_and_open_ones_are_never_evicted(
    tmp_path: Path,
) -> None:
    budget = 600_000  # the write-ahead log's cap takes 64 KiB of it
    with SqliteStore(tmp_path / "state.db", max_bytes=budget) as store:
        for i in range(40):  # 800 KB of closed sessions
            store.save_session(f"closed-{i:02d}", _session(f"closed-{i:02d}", "closed", 20_000))
            store.flush()
            assert store.health()["bytes_used"] <= budget, i
        assert store.get_session("closed-39") is not None and store.get_session("closed-00") is None
        refused = None
        for i in range(40):  # open sessions count and are never evicted: new work is refused instead
            try:
                store.check_budget()
            except LimitExceededError as exc:
                refused = exc
                break
            store.save_session(f"open-{i:02d}", _session(f"open-{i:02d}", "active", 20_000))
            store.flush()
        assert refused is not None and "CODOMYRMEX_STATE_MAX_BYTES" in str(refused)
        assert all(store.get_session(f"open-{j:02d}") is not None for j in range(i))
        assert not store.list_sessions(status="closed")  # every closed one went first


def test_definitions_and_sessions_stored_before_the_upgrade_count_once_it_is_applied(
    tmp_path: Path,
) -> None:
    from codomyrmex_orchestration.core._store_schema import MIGRATIONS

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("".join(MIGRATIONS[:6]))  # the schema before migration 7 counted these bytes
    conn.execute("PRAGMA user_version=6")
    conn.execute("INSERT INTO workflows VALUES ('w', ?, 'api', 0, 0)", ("s" * 100_000,))
    conn.execute("INSERT INTO workflow_versions VALUES ('w', 1, 'd', ?, 0)", ("v" * 50_000,))
    conn.execute("INSERT INTO sessions VALUES ('x', ?, 'closed', 0, 0)", ('"' + "d" * 30_000 + '"',))
    conn.commit()
    conn.close()
    with SqliteStore(path, max_bytes=None) as store:
        assert store.health()["bytes_used"] == 100_000 + 50_000 + 30_002
        store.delete_workflow("w")
        store.flush()
        assert store.health()["bytes_used"] == 50_000 + 30_002  # the definition's bytes went with it


def test_a_run_is_refused_before_its_record_would_take_the_state_past_its_budget(tmp_path: Path) -> None:
    # Admission used to refuse only once the bytes used were already over the budget: runs admitted
    # just under it overshot it by their records. Now the run's record (its parameters and a row per
    # step, estimated) must fit before the run is accepted. A held run cannot be evicted, so an
    # admitted one shows the overshoot.
    budget = 1_000_000
    engine = OrchestrationEngine(state_dir=tmp_path / "state", config_dir=None, state_max_bytes=budget)
    gate, holding = threading.Event(), threading.Event()

    def hold(params: dict[str, Any], ctx: Any) -> bool:
        holding.set()
        return gate.wait(30)

    engine.registry.register(ActionDefinition("test", "hold", hold))
    try:
        manager = engine.workflow_manager
        step = {"name": "a", "module": "test", "action": "hold", "parameters": {"p": "{{params.p}}"}}
        manager.create_workflow({"name": "wf", "steps": [step]})

        def room() -> int:
            engine.store.flush()
            return budget - int(engine.store.stats()["bytes_used"])

        pads = 0
        while room() > 30_000:  # definitions are never evicted: they fill the budget for good
            pad = min(20_000, (room() - 20_000) // 3)  # a definition is kept with its version
            manager.create_workflow({"name": f"pad{pads}", "parameters": {"p": "x" * pad}, "steps": [step]})
            pads += 1
        left = room()
        assert 1_000 < left <= 30_000, left
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_STATE_MAX_BYTES") as refused:
            manager.execute_workflow("wf", parameters={"p": "y" * 60_000}, wait=False)
        assert "the new run's record" in str(refused.value) and refused.value.limit == budget
        assert room() >= 0 and manager.list_runs() == []  # nothing of it was saved
        small = manager.execute_workflow("wf", parameters={"p": "y"}, wait=False)  # its record fits
        assert holding.wait(30)
        gate.set()
        assert manager.wait_run(small.run_id, timeout=30).status is WorkflowStatus.COMPLETED
    finally:
        gate.set()
        engine.shutdown()


def test_runs_admitted_at_the_same_instant_near_the_budget_admit_only_those_whose_records_fit(
    tmp_path: Path,
) -> None:
    # Admission checked each run's estimated record against the bytes used, which only a commit moves:
    # runs admitted at the same instant all saw the same free room, and together overshot the budget.
    # Each run's estimate is now held from its admission until its record is committed. The records
    # stay uncommitted here (a 30 s flush interval, and a first step with no parents does not flush),
    # and held runs cannot be evicted, so every admitted run counts.
    budget, racers = 1_000_000, 8
    state = tmp_path / "state"
    store = SqliteStore(
        state / "state.db", max_bytes=budget, flush_interval=30.0, spill_dir=state / "outputs"
    )
    engine = OrchestrationEngine(state_dir=state, config_dir=None, store=store, state_max_bytes=budget)
    gate = threading.Event()

    def hold(params: dict[str, Any], ctx: Any) -> bool:
        return gate.wait(30)

    engine.registry.register(ActionDefinition("test", "hold", hold))
    try:
        manager = engine.workflow_manager
        step = {"name": "a", "module": "test", "action": "hold", "parameters": {"p": "{{params.p}}"}}
        manager.create_workflow({"name": "wf", "steps": [step]})

        def room() -> int:
            store.flush()
            return budget - int(store.stats()["bytes_used"])

        pads = 0
        while room() > 60_000:  # definitions are never evicted: they fill the budget for good
            pad = min(20_000, (room() - 50_000) // 3)
            manager.create_workflow({"name": f"pad{pads}", "parameters": {"p": "x" * pad}, "steps": [step]})
            pads += 1
        left = room()
        parameters = {"p": "y" * 10_000}
        estimate = run_estimate(len(json.dumps(parameters, separators=(",", ":"))), steps=1)
        fit = left // estimate
        assert 1 <= fit < racers, (left, estimate)  # each fits alone, not all together

        lineup = threading.Barrier(racers)

        def admit(_: int) -> str | LimitExceededError:
            lineup.wait(timeout=30)
            try:
                return manager.execute_workflow("wf", parameters=parameters, wait=False).run_id
            except LimitExceededError as exc:
                return exc

        with ThreadPoolExecutor(racers) as pool:
            outcomes = list(pool.map(admit, range(racers)))
        admitted = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, LimitExceededError)]
        assert len(admitted) == fit, (len(admitted), fit, left, estimate)
        assert len(refused) == racers - fit
        for exc in refused:
            assert exc.limit == budget and "CODOMYRMEX_STATE_MAX_BYTES" in str(exc)
            assert "the new run's record" in str(exc)
        assert room() >= 0  # the admitted runs' records, committed, are within the budget
    finally:
        gate.set()
        engine.shutdown()


def test_the_room_held_for_an_admitted_run_goes_back_when_its_record_is_committed_or_its_start_fails(
    tmp_path: Path,
) -> None:
    budget = 1_000_000
    with SqliteStore(tmp_path / "state.db", max_bytes=budget, flush_interval=30.0) as store:
        store.flush()
        room = budget - int(store.stats()["bytes_used"])
        parameters = {"p": "y" * (room * 6 // 10)}  # one run's record fits, two do not
        store.check_budget(parameters, steps=1, run_id="first")
        with pytest.raises(LimitExceededError, match="held for runs admitted but not saved yet"):
            store.check_budget(parameters, steps=1, run_id="second")
        store.release_admission("first")  # its start failed
        store.check_budget(parameters, steps=1, run_id="second")
        store.save_run(RunRecord(run_id="second", workflow_name="wf", status=WorkflowStatus.RUNNING))
        store.flush()  # its record (small: the parameters were never saved) is counted instead
        store.check_budget(parameters, steps=1, run_id="third")
