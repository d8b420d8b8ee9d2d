"""Execution backends: the seam, the factory, and what only the Dask backend does (steps travel by action
name to real Dask workers, cancellation reaches them, health reports the cluster). The scheduler's and
workflows' own contract tests also run over both backends (``make_backend`` in conftest)."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import codomyrmex_orchestration
from codomyrmex_orchestration._redact import register_secret
from codomyrmex_orchestration.core.actions import ActionContext, ActionDefinition, create_registry
from codomyrmex_orchestration.core.actions._policy import pin_extras
from codomyrmex_orchestration.core.backends import ActionCall, LocalBackend, create_backend, parse_pairs
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import TaskPriority, TaskSpec, TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import (
    ActionUnavailableError,
    InsufficientResourcesError,
    InvalidInputError,
    StepFailedError,
    StepTimeoutError,
    UnknownActionError,
)
from tests.conftest import DASK_MISSING

WAIT = 10.0

# Set by hold() when it runs on an in-process Dask worker; the test then cancels it.
_held = threading.Event()
_hold_saw_cancel = threading.Event()


def hold(ctx: ActionContext) -> str:
    """A python.call target: runs until its step is cancelled (bounded), then says so."""
    _held.set()
    if ctx.cancel_event.wait(WAIT):
        _hold_saw_cancel.set()
        return "cancelled"
    return "not cancelled"


#: Four steps meet here: each waits (bounded) until all four run at once (reset by the test using it).
_four_at_once = threading.Barrier(4)


def meet() -> str:
    """A python.call target: returns once four steps run together, naming the worker it ran on."""
    from distributed import get_worker

    _four_at_once.wait(WAIT)
    return str(get_worker().address)


class GpuPool:
    """Admission for one ``gpu`` (the scheduler admits; Dask only places)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.free = 1

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        if requirements.get("gpu", 0) > 1:
            raise InsufficientResourcesError({"gpu": requirements["gpu"]}, {"gpu": 1})

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> object | None:
        with self._lock:
            if self.free < requirements.get("gpu", 0):
                return None
            self.free -= requirements.get("gpu", 0)
            return requirements.get("gpu", 0)

    def release_handle(self, handle: object) -> None:
        assert isinstance(handle, int)
        with self._lock:
            self.free += handle

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        return None


class Unlimited:
    """Admission that grants any amount of anything (what Dask itself places is under test)."""

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        return None

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> object | None:
        return requirements

    def release_handle(self, handle: object) -> None:
        return None

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        return None


@pytest.fixture
def dask_orch(dask_client: Any) -> Iterator[Callable[..., TaskOrchestrator]]:
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    made: list[TaskOrchestrator] = []

    def make(
        max_workers: int = 4, backend_kwargs: dict[str, Any] | None = None, **kw: Any
    ) -> TaskOrchestrator:
        orch = TaskOrchestrator(
            max_workers, backend=DaskBackend(client=dask_client, **(backend_kwargs or {})), **kw
        )
        made.append(orch)
        return orch

    yield make
    for orch in made:
        orch.shutdown(wait=True, cancel_pending=True, timeout=5)


# --------------------------------------------------------------------------- the seam, no Dask needed


def test_the_local_backend_runs_the_given_callable_itself() -> None:
    def fn(ctx: ActionContext) -> int:
        return 1

    call = ActionCall("core", "echo", {"message": 1})
    assert LocalBackend().bind(fn, call, priority=TaskPriority.NORMAL, resources=None) is fn


def test_the_default_scheduler_is_local_and_reports_it() -> None:
    with TaskOrchestrator(1) as orch:
        assert orch.health()["backend"] == {"name": "local"}
        assert orch.get_execution_stats()["backend"]["name"] == "local"


def test_submit_with_only_an_action_looks_it_up_at_submission() -> None:
    with TaskOrchestrator(1) as orch:
        task_id = orch.submit(None, action=ActionCall("core", "echo", {"message": "x"}), name="a")
        assert orch.wait(task_id, WAIT).result == "x"
        with pytest.raises(UnknownActionError):
            orch.submit(None, action=ActionCall("core", "nope", {}), name="b")
        with pytest.raises(InvalidInputError, match="fn"):
            orch.submit(None, name="c")


def test_create_backend_names_what_it_accepts() -> None:
    assert isinstance(create_backend("local"), LocalBackend)
    with pytest.raises(InvalidInputError, match="local, dask"):
        create_backend("ray")
    with pytest.raises(InvalidInputError, match="dask_resource_map"):
        parse_pairs(("gpu",), "dask_resource_map")
    assert parse_pairs(("gpu=GPU", " mem = MEMORY "), "x") == {"gpu": "GPU", "mem": "MEMORY"}


def test_our_errors_survive_pickling_with_their_type_message_and_data() -> None:
    for error in (
        StepFailedError("s", "boom", error_type="RuntimeError"),
        StepTimeoutError("s", 1.5),
        ActionUnavailableError("x", "y", ["core.echo"], worker="tcp://w:1"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# --------------------------------------------------------------------------- Dask


def test_health_and_stats_report_the_cluster(dask_orch: Any) -> None:
    orch = dask_orch()
    backend = orch.health()["backend"]
    assert backend["name"] == "dask"
    assert backend["scheduler_address"].startswith("inproc://")
    assert (backend["workers"], backend["threads"]) == (2, 4)
    assert orch.get_execution_stats()["backend"]["threads"] == 4


def test_a_worker_without_the_action_fails_the_step_naming_it(dask_orch: Any) -> None:
    registry = create_registry(load_plugins=False)
    registry.register(ActionDefinition("custom", "thing", lambda params, ctx: 1))
    orch = dask_orch(registry=registry)
    record = orch.wait(orch.submit_task(TaskSpec(name="t", module="custom", action="thing")), WAIT)
    assert record.status is TaskStatus.FAILED
    assert record.error is not None and record.error.type == "ActionUnavailableError"
    assert "custom.thing is not available on worker inproc://" in record.error.message
    assert "install" in record.error.message


def test_an_action_error_comes_back_with_its_type_and_message(dask_orch: Any) -> None:
    orch = dask_orch()
    spec = TaskSpec(name="f", module="core", action="fail", parameters={"message": "nope"}, max_retries=1)
    record = orch.wait(orch.submit_task(spec), WAIT)
    assert record.status is TaskStatus.FAILED
    assert record.attempts == 2  # retries stay with our scheduler
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("StepFailedError", "step 'f' failed: nope")


#: What the session cluster's scheduler did with each task key: the states it passed through.
_key_states: dict[str, list[str]] = {}
_key_states_changed = threading.Condition()


def _watch_keys(dask_scheduler: Any) -> None:
    """Run on the scheduler (in this process): record every task's transitions in ``_key_states``."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Watch(SchedulerPlugin):
        def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
            with _key_states_changed:
                _key_states.setdefault(str(key), []).append(finish)
                _key_states_changed.notify_all()

    dask_scheduler.add_plugin(Watch(), name="tests-watch-keys", idempotent=True)


def test_a_failed_step_leaves_no_secret_in_the_workers_log_and_no_task_on_the_cluster(
    dask_orch: Any, dask_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Sup3rS3cretV4lue-dask"
    register_secret(secret, "TOK")
    dask_client.run_on_scheduler(_watch_keys)
    orch = dask_orch()
    specs = [
        TaskSpec(name="f", module="core", action="fail", parameters={"message": f"bad token {secret}"}),
        TaskSpec(
            name="i",
            module="python",
            action="call",
            parameters={"function": "builtins:int", "args": [secret]},
        ),
    ]
    with caplog.at_level(logging.INFO):
        ids = [orch.submit_task(spec) for spec in specs * 5]
        records = [orch.wait(task_id, WAIT) for task_id in ids]
    for record in records:
        assert record.status is TaskStatus.FAILED and record.error is not None, record
        assert secret not in record.error.message and "[secret:TOK]" in record.error.message, record.error
    assert records[1].error is not None and "ValueError: invalid literal" in records[1].error.message
    # Dask logged a failing task with its arguments and error ("Compute Failed"): the secret in clear.
    assert secret not in caplog.text
    keys = {key for key in list(_key_states) if any(task_id in key for task_id in ids)}
    assert len(keys) == len(ids)
    with _key_states_changed:
        # Released once their step ended, as completed ones are (an erred task was kept forever).
        assert _key_states_changed.wait_for(
            lambda: all(_key_states[k][-1] == "forgotten" for k in keys), WAIT
        )
        assert not [k for k in keys if "erred" in _key_states[k]]


def test_cancelling_a_step_running_on_a_worker_stops_it_there(dask_orch: Any) -> None:
    _held.clear()
    _hold_saw_cancel.clear()
    orch = dask_orch()
    spec = TaskSpec(
        name="h", module="python", action="call", parameters={"function": "tests.core.test_backends:hold"}
    )
    task_id = orch.submit_task(spec)
    assert _held.wait(WAIT)
    assert orch.cancel_task(task_id)
    assert orch.get_task(task_id).status is TaskStatus.CANCELLED
    assert _hold_saw_cancel.wait(WAIT)


def test_a_timeout_enforced_by_our_scheduler_stops_the_step_on_the_worker(dask_orch: Any) -> None:
    _held.clear()
    _hold_saw_cancel.clear()
    orch = dask_orch()
    spec = TaskSpec(
        name="h",
        module="python",
        action="call",
        parameters={"function": "tests.core.test_backends:hold"},
        timeout=0.3,
    )
    record = orch.wait(orch.submit_task(spec), WAIT)
    assert record.status is TaskStatus.TIMED_OUT
    assert _hold_saw_cancel.wait(WAIT)


def test_the_python_call_allow_list_pinned_on_the_registry_holds_on_dask_workers(dask_orch: Any) -> None:
    # The workers build registries of their own: the pinned policy must travel with each step.
    registry = create_registry(load_plugins=False)
    pin_extras(registry, {"python_call_allow": ("json",)})
    orch = dask_orch(registry=registry)
    pid = {"module": "python", "action": "call", "parameters": {"function": "os:getpid"}}
    dumps = {"module": "python", "action": "call", "parameters": {"function": "json:dumps", "args": [[1]]}}
    refused = orch.wait(orch.submit_task(TaskSpec(name="pid", **pid)), WAIT)
    fine = orch.wait(orch.submit_task(TaskSpec(name="dumps", **dumps)), WAIT)
    assert refused.status is TaskStatus.FAILED and refused.error is not None, refused
    assert (
        refused.error.type == "ActionRefusedError" and "CODOMYRMEX_PYTHON_CALL_ALLOW" in refused.error.message
    )
    assert (fine.status, fine.result) == (TaskStatus.COMPLETED, "[1]")
    manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
    manager.create_workflow("pid", [{"name": "dumps", **dumps}, {"name": "pid", **pid}])
    record = manager.execute_workflow("pid", timeout=WAIT * 2)
    assert record.status is WorkflowStatus.FAILED
    assert record.steps["dumps"].output == "[1]"
    error = record.steps["pid"].error
    assert error is not None and error.type == "ActionRefusedError", error


def test_mapped_resources_place_steps_only_on_workers_that_declare_them(dask_orch: Any) -> None:
    # The session cluster's workers declare GPU=1 and nothing else.
    orch = dask_orch(resource_manager=GpuPool(), backend_kwargs={"resource_map": {"gpu": "GPU"}})
    spec = TaskSpec(name="g", module="core", action="echo", parameters={"message": 1}, resources={"gpu": 1})
    assert orch.wait(orch.submit_task(spec), WAIT).status is TaskStatus.COMPLETED
    nowhere = dask_orch(resource_manager=GpuPool(), backend_kwargs={"resource_map": {"gpu": "TPU"}})
    spec = spec.model_copy(update={"timeout": 0.3})
    assert nowhere.wait(nowhere.submit_task(spec), WAIT).status is TaskStatus.TIMED_OUT


def test_ready_steps_run_at_once_on_every_thread_of_both_workers_two_each(dask_orch: Any) -> None:
    # The session cluster has 2 workers of 2 threads: the four steps can only all be running when the
    # backend sent them together and the cluster spread them over both workers.
    _four_at_once.reset()
    registry = create_registry(load_plugins=False)
    orch = dask_orch(max_workers=4, registry=registry)
    manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
    step = {"module": "python", "action": "call", "parameters": {"function": "tests.core.test_backends:meet"}}
    manager.create_workflow("meet", [{"name": f"m{i}", **step} for i in range(4)])
    record = manager.execute_workflow("meet", timeout=WAIT * 2)
    assert record.status is WorkflowStatus.COMPLETED, record.error
    workers = [result.output for result in record.steps.values()]
    assert sorted(workers.count(address) for address in set(workers)) == [2, 2]


def test_many_steps_in_flight_each_get_their_own_result_from_the_batched_gathers(dask_orch: Any) -> None:
    orch = dask_orch(max_workers=16)
    specs = [
        TaskSpec(name=f"e{i}", module="core", action="echo", parameters={"message": i}) for i in range(300)
    ]
    ids = [orch.submit_task(spec) for spec in specs]
    records = [orch.wait(task_id, WAIT) for task_id in ids]
    assert [r.status for r in records] == [TaskStatus.COMPLETED] * 300
    assert [r.result for r in records] == list(range(300))


def test_a_backend_on_a_callers_client_serves_a_second_scheduler_after_the_first_shut_down(
    dask_client: Any,
) -> None:
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    backend = DaskBackend(client=dask_client)
    for round_no in range(2):
        orch = TaskOrchestrator(2, backend=backend)
        try:
            spec = TaskSpec(name="e", module="core", action="echo", parameters={"message": round_no})
            record = orch.wait(orch.submit_task(spec), WAIT)
            assert (record.status, record.result) == (TaskStatus.COMPLETED, round_no)
        finally:
            orch.shutdown(wait=True, timeout=30)  # closes the backend: its result collection ends


def test_steps_run_in_two_worker_processes_and_sub_workflows_stay_local() -> None:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    backend = create_backend(
        "dask", dask_n_workers=2, dask_processes=True, dask_worker_saturation=float("inf")
    )
    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(4, registry=registry, backend=backend)
    try:
        described = orch.health()["backend"]
        assert described["workers"] == 2 and described["scheduler_address"].startswith("tls://")
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        pid = {"module": "python", "action": "call", "parameters": {"function": "os:getpid"}}
        manager.create_workflow("pids", [{"name": f"p{i}", **pid} for i in range(6)])
        manager.create_workflow(
            "outer",
            [
                {"name": "sub", "module": "workflow", "action": "run", "parameters": {"workflow": "pids"}},
                {"name": "bad", "module": "core", "action": "fail", "required": False},
            ],
        )
        record = manager.execute_workflow("outer", timeout=60)
        assert record.status is WorkflowStatus.COMPLETED, record.error
        assert record.steps["bad"].error is not None and record.steps["bad"].error.type == "StepFailedError"
        child = manager.get_run(record.steps["sub"].output["run_id"])
        pids = {step.output for step in child.steps.values()}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
    finally:
        orch.shutdown(wait=True, timeout=30)


#: Another local process, without the cluster's certificate, tries to run code on its workers: over plain
#: TCP, then over TLS with a certificate of its own. It prints what each attempt got.
_INTRUDER = """
import os, sys
from distributed import Client
from distributed.security import Security
host_port = sys.argv[1].split("://")[1]
for address, security in ((f"tcp://{host_port}", None), (f"tls://{host_port}", Security.temporary())):
    try:
        with Client(address, timeout=3, security=security) as client:
            print("ran as uid", client.submit(os.getuid).result(timeout=10))
    except Exception as exc:
        print("refused", type(exc).__name__)
"""


def test_the_cluster_we_start_admits_no_other_process_and_still_runs_steps() -> None:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    backend = create_backend("dask", dask_n_workers=1, dask_processes=True)
    orch = TaskOrchestrator(1, backend=backend)
    try:
        address = orch.health()["backend"]["scheduler_address"]
        intruder = subprocess.run(
            [sys.executable, "-c", _INTRUDER, address], capture_output=True, text=True, timeout=60
        )
        attempts = intruder.stdout.splitlines()
        assert len(attempts) == 2 and all(a.startswith("refused") for a in attempts), intruder
        spec = TaskSpec(name="e", module="core", action="echo", parameters={"message": "ours"})
        assert orch.wait(orch.submit_task(spec), WAIT * 3).result == "ours"
    finally:
        orch.shutdown(wait=True, timeout=30)
    # Thread workers listen nowhere: Dask's in-process transport.
    threads = create_backend("dask", dask_n_workers=1, dask_processes=False)
    try:
        assert threads.describe()["scheduler_address"].startswith("inproc://")
    finally:
        threads.close()


def test_a_step_whose_worker_dies_fails_at_once_and_our_retry_policy_decides_if_it_runs_again(
    tmp_path: Path,
) -> None:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    backend = create_backend("dask", dask_n_workers=1, dask_processes=True)
    orch = TaskOrchestrator(1, backend=backend)
    runs = tmp_path / "runs"
    try:
        # Each run notes itself, then kills the worker process running it (the shell's parent).
        kill = {"command": ["sh", "-c", f'echo run >> "{runs}"; kill -9 $PPID']}
        spec = TaskSpec(name="k", module="shell", action="run", parameters=kill, max_retries=1)
        record = orch.wait(orch.submit_task(spec), 120)
        assert record.status is TaskStatus.FAILED and record.error is not None, record
        assert (
            "the Dask worker running it died" in record.error.message
            and "max_retries" in record.error.message
        )
        # One run per attempt: Dask re-ran each attempt up to 3 more times on a new worker.
        assert (record.attempts, runs.read_text().count("run")) == (2, 2)
    finally:
        orch.shutdown(wait=True, timeout=30)


def test_a_mapped_requirement_no_worker_of_our_cluster_declares_is_refused_at_submission() -> None:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    backend = create_backend(
        "dask",
        dask_n_workers=1,
        dask_processes=False,
        dask_worker_resources=("CPU=1",),
        dask_resource_map=("compute=CPU",),
    )
    registry = create_registry(load_plugins=False)
    orch = TaskOrchestrator(1, registry=registry, backend=backend, resource_manager=Unlimited())
    try:
        step = {"module": "core", "action": "echo", "parameters": {"message": 1}}
        # It waited forever for a worker declaring CPU=2, with no timeout.
        with pytest.raises(InsufficientResourcesError, match="compute: requested 2, available 1") as info:
            orch.submit_task(TaskSpec(name="big", resources={"compute": 2}, **step))
        assert "CODOMYRMEX_DASK_WORKER_RESOURCES" in str(info.value)
        fits = orch.wait(orch.submit_task(TaskSpec(name="fits", resources={"compute": 1}, **step)), WAIT)
        assert fits.status is TaskStatus.COMPLETED
        manager = WorkflowManager(orchestrator=orch, registry=registry, config_dir=None)
        manager.create_workflow("big", [{"name": "big", "resources": {"compute": 2}, **step}])
        record = manager.execute_workflow("big", timeout=WAIT)
        assert record.status is WorkflowStatus.FAILED
        error = record.steps["big"].error
        assert error is not None and "CODOMYRMEX_DASK_WORKER_RESOURCES" in error.message, error
    finally:
        orch.shutdown(wait=True, timeout=30)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_scheduler_address_without_a_scheduler_is_refused_naming_it_and_its_client_is_closed() -> None:
    distributed = pytest.importorskip("distributed", reason=DASK_MISSING)
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    def open_clients() -> set[int]:
        return {id(o) for o in gc.get_objects() if isinstance(o, distributed.Client) and o.status != "closed"}

    before = open_clients()
    for address in ("notaurl", f"tcp://127.0.0.1:{_closed_port()}"):
        with pytest.raises(InvalidInputError, match="cannot connect to a Dask scheduler at") as info:
            DaskBackend(address=address, connect_timeout=2)
        assert info.value.field == "dask_scheduler" and repr(address) in str(info.value)
        # Closed at once, while the error (and the traceback that holds the client) is still alive: left
        # to the garbage collector, the server's event loop thread waited on it and the server never exited.
        assert open_clients() <= before, address


class ExternalCluster:
    """``dask scheduler`` and one ``dask worker`` in processes of their own, on one port: what a user
    runs with CODOMYRMEX_DASK_SCHEDULER. ``stop`` kills them (-9); ``start`` starts them again."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.address = f"tcp://127.0.0.1:{_closed_port()}"
        self._procs: list[subprocess.Popen[bytes]] = []
        src = os.path.dirname(os.path.dirname(os.path.abspath(codomyrmex_orchestration.__file__)))
        # The workers import this checkout (python.call targets in tests/ too), not an installed copy.
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.getcwd()])}

    def start(self) -> None:
        host, port = self.address.removeprefix("tcp://").split(":")
        common = ["--host", host, "--dashboard-address", "127.0.0.1:0"]
        for argv in (
            ["distributed.cli.dask_scheduler", "--port", port, "--no-show", *common],
            [
                "distributed.cli.dask_worker",
                self.address,
                "--nthreads",
                str(self.threads),
                "--no-nanny",
                *common,
            ],
        ):
            self._procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv],
                    env=self._env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        distributed = pytest.importorskip("distributed", reason=DASK_MISSING)
        with distributed.Client(self.address, timeout=60) as probe:
            probe.wait_for_workers(1, timeout=60)

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(WAIT)
        self._procs = []


@pytest.fixture
def external_cluster() -> Iterator[ExternalCluster]:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    cluster = ExternalCluster()
    cluster.start()
    yield cluster
    cluster.stop()


def _echo(orch: TaskOrchestrator, message: object, timeout: float = 30) -> Any:
    spec = TaskSpec(name="e", module="core", action="echo", parameters={"message": message}, timeout=timeout)
    return orch.wait(orch.submit_task(spec), timeout * 2)


def test_steps_sent_after_the_scheduler_is_lost_fail_naming_the_setting_and_a_restarted_one_is_used(
    external_cluster: ExternalCluster, tmp_path: Path
) -> None:
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    # Dask's client tries to reconnect for the connect timeout (2 s here), then closes for good.
    backend = DaskBackend(address=external_cluster.address, connect_timeout=2)
    engine = OrchestrationEngine(
        state_dir=tmp_path / "state", config_dir=None, projects_dir=tmp_path / "p", backend=backend
    )
    orch = engine.task_orchestrator
    try:
        assert _echo(orch, 1).result == 1
        assert engine.health_check().overall_status == "healthy"
        external_cluster.stop()
        failures = []
        for _ in range(4):  # a step fails at most after the 2 s the client retries; then it has closed
            failures.append(_echo(orch, 2))
            if backend.client.status == "closed":
                break
        failures.append(_echo(orch, 3))  # sent to the closed client: it tries a new one, none answers
        for failed in failures:
            assert failed.status is TaskStatus.FAILED, failed
            assert failed.error is not None and "CODOMYRMEX_DASK_SCHEDULER" in failed.error.message, failed
            assert repr(external_cluster.address) in failed.error.message
        health = engine.health_check()
        assert health.overall_status == "unhealthy", health
        reason = health.components["scheduler"].details["reason"]
        assert "cannot be reached" in reason and "CODOMYRMEX_DASK_SCHEDULER" in reason, reason
        external_cluster.start()  # a new scheduler and worker at the same address
        record = _echo(orch, 4)
        assert (record.status, record.result) == (TaskStatus.COMPLETED, 4), record
        assert engine.health_check().overall_status == "healthy"
    finally:
        engine.shutdown()


def test_cancellation_and_timeouts_reach_the_workers_of_a_restarted_scheduler() -> None:
    pytest.importorskip("distributed", reason=DASK_MISSING)
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    cluster = ExternalCluster(threads=1)
    cluster.start()
    # A connect timeout long enough for the client to reconnect by itself to the restarted scheduler.
    orch = TaskOrchestrator(2, backend=DaskBackend(address=cluster.address, connect_timeout=60))
    try:
        assert _echo(orch, 1).result == 1
        cluster.stop()
        cluster.start()  # a new scheduler and worker at the same address: neither has our worker plugin
        sleeper = TaskSpec(name="s", module="core", action="sleep", parameters={"seconds": 60}, timeout=1)
        assert orch.wait(orch.submit_task(sleeper), WAIT * 3).status is TaskStatus.TIMED_OUT
        # The worker's one thread is free again only if the timeout stopped core.sleep there.
        record = _echo(orch, 2, timeout=WAIT)
        assert (record.status, record.result) == (TaskStatus.COMPLETED, 2), record
    finally:
        orch.shutdown(wait=True, timeout=30)
        cluster.stop()
