"""The ``dask`` backend: ready action steps run on a Dask distributed cluster.

Only this module (and ``_dask_client``, ``_dask_submit`` and ``_dask_results``, which it uses) imports
Dask. The scheduler's worker threads become dispatch slots: each attempt is sent as
``run_remote_step(RemoteStep)`` (action name + resolved parameters, no closures), in a batch with the
other steps ready at that moment (``_dask_submit``), through the current client (``_dask_client``, which
replaces one that gave up on a lost scheduler), and the slot waits until ``_dask_results`` wakes it with
the value, gathered in one call with every other step that finished meanwhile. Ordering,
priorities, dependencies, resource admission, timeouts and retries stay with the scheduler; Dask only
runs what is ready. On cancellation or timeout the future is cancelled on the cluster, and a worker
plugin sets the running action's ``cancel_event`` so cooperative actions (``core.sleep``, ``shell.run``
which kills its process group) stop there too.

Workers need codomyrmex-orchestration (and any plugin packages providing actions) installed; a worker
that lacks an action fails the step with :class:`ActionUnavailableError` naming it.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask
import structlog
from distributed import Client, LocalCluster, WorkerPlugin, get_worker
from distributed.scheduler import KilledWorker
from distributed.utils import LoopRunner, sync

from codomyrmex_orchestration.core._results import json_output
from codomyrmex_orchestration.core.actions import ActionContext, ActionRegistry, CancelEvent, create_registry
from codomyrmex_orchestration.core.backends import LOCAL_ONLY_ACTIONS, ActionCall, StepCallable
from codomyrmex_orchestration.core.backends._dask_client import (
    Connection,
    cluster_security,
    connect,
    unreachable,
)
from codomyrmex_orchestration.core.backends._dask_results import Outcome
from codomyrmex_orchestration.core.backends._dask_submit import Submission
from codomyrmex_orchestration.core.models import TaskPriority
from codomyrmex_orchestration.errors import (
    ActionUnavailableError,
    InsufficientResourcesError,
    StepFailedError,
    UnknownActionError,
)

__all__ = ["CANCEL_PLUGIN_NAME", "DaskBackend", "RemoteFailure", "RemoteStep", "run_remote_step"]

CANCEL_PLUGIN_NAME = "codomyrmex-orchestration-cancel"

_log = structlog.get_logger("codomyrmex_orchestration.backends.dask")


@dataclass(frozen=True, slots=True)
class RemoteStep:
    """One attempt as it is pickled to a worker."""

    call: ActionCall
    key: str
    step_name: str
    run_id: str | None
    task_id: str | None
    attempt: int
    #: Seconds left before the attempt's deadline when it was sent (monotonic clocks differ per host).
    remaining: float | None


# ---------------------------------------------------------------------------- worker side

_registries: dict[bool, ActionRegistry] = {}
_running: dict[str, CancelEvent] = {}
_cancelled_early: set[str] = set()
_worker_lock = threading.Lock()
_RELEASED = frozenset({"released", "cancelled", "forgotten"})


def _worker_registry(allow_code_execution: bool) -> ActionRegistry:
    with _worker_lock:
        registry = _registries.get(allow_code_execution)
        if registry is None:
            registry = _registries[allow_code_execution] = create_registry(
                allow_code_execution=allow_code_execution
            )
        return registry


def _worker_address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # not inside a Dask worker (called directly)
        return "(not a dask worker)"


def _portable(exc: BaseException, step: str) -> BaseException:
    """``exc`` if it survives pickling (ours do), else a StepFailedError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        name = type(exc).__name__
        return StepFailedError(step, f"{name}: {exc}", error_type=name)
    return exc


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """What :func:`run_remote_step` returns when the attempt raised: the error (made picklable).

    A value, not a raise: a task that raises is logged by the worker with its arguments and error
    ("Compute Failed", secrets in clear on the worker's stderr) and kept on the scheduler as ``erred``;
    this way it finishes like any other, and our side redacts the error as it does for local steps.
    """

    error: BaseException


def run_remote_step(step: RemoteStep) -> Any:
    """Run one attempt of an action step on a Dask worker (the function Dask pickles by reference).

    Returns:
        The action's result, or a :class:`RemoteFailure` holding what it raised (made picklable):
        :class:`ActionUnavailableError` when this worker's registry lacks the action.
    """
    call = step.call
    cancel = CancelEvent()
    with _worker_lock:
        _running[step.key] = cancel
        cancelled = step.key in _cancelled_early
        _cancelled_early.discard(step.key)
    if cancelled or _install_cancel_plugin(step.key):
        cancel.set()
    try:
        registry = _worker_registry(call.allow_code_execution)
        try:
            definition = registry.get(call.module, call.action)
        except UnknownActionError:
            raise ActionUnavailableError(
                call.module, call.action, registry.known(), worker=_worker_address()
            ) from None
        ctx = ActionContext(
            step_name=step.step_name,
            run_id=step.run_id,
            task_id=step.task_id,
            attempt=step.attempt,
            cancel_event=cancel,
            deadline=None if step.remaining is None else time.monotonic() + step.remaining,
            depth=call.depth,
            extras=dict(call.extras),
        )
        return json_output(definition.func(dict(call.parameters), ctx), step.step_name)
    except BaseException as exc:
        return RemoteFailure(_portable(exc.with_traceback(None), step.step_name))
    finally:
        with _worker_lock:
            _running.pop(step.key, None)
            _cancelled_early.discard(step.key)


def _install_cancel_plugin(key: str) -> bool:
    """Make sure this worker has the :class:`CancelPlugin`; True if ``key`` was released before it had.

    The client registers the plugin with its scheduler, which gives it to the workers it knows and to
    those that join it later; a scheduler restarted at the same address (the client reconnects) and its
    workers have never heard of it, and cancellations and timeouts stopped nothing there. So the first
    step on a worker without it installs it, on the worker's event loop (where the hook runs).
    """
    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask worker (called directly)
        return False
    if CANCEL_PLUGIN_NAME in worker.plugins:
        return False

    async def install() -> bool:
        if CANCEL_PLUGIN_NAME not in worker.plugins:
            await worker.plugin_add(plugin=CancelPlugin(), name=CANCEL_PLUGIN_NAME)
        state = worker.state.tasks.get(key)
        return state is None or state.state not in ("executing", "long-running")

    return bool(sync(worker.loop, install))


class CancelPlugin(WorkerPlugin):
    """Sets a running step's ``cancel_event`` when the scheduler releases its key (future cancelled).

    Dask cannot interrupt a running task; it moves it to the ``cancelled`` state and waits. This
    transition hook (run on the worker's event loop, so it only flips a flag) is what makes cooperative
    actions stop on the worker as they do on local threads.
    """

    idempotent = True

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        # The hook sees the transition asked for (executing -> released), not the "cancelled" state
        # the worker parks the task in.
        if start not in ("executing", "long-running") or finish not in _RELEASED:
            return
        with _worker_lock:
            event = _running.get(str(key))
            if event is None:
                # Executing but the function has not registered yet: it will find the mark.
                _cancelled_early.add(str(key))
        if event is not None:
            event.set()


# ---------------------------------------------------------------------------- scheduler side


def _worker_died(step: str, exc: KilledWorker) -> StepFailedError:
    return StepFailedError(
        step,
        f"the Dask worker running it died ({exc}); whether it runs again is up to the step's max_retries "
        "(and, on an external cluster, to its scheduler's distributed.scheduler.allowed-failures)",
        error_type="KilledWorker",
    )


def _register_plugin(client: Client) -> None:
    client.register_plugin(CancelPlugin(), name=CANCEL_PLUGIN_NAME)


class DaskBackend:
    """Runs action steps on a Dask cluster; closures and local-only actions stay on local threads.

    Args:
        client: an existing ``distributed.Client`` (not closed by :meth:`close`).
        address: ``tcp://host:8786`` of a running scheduler to connect to (when no ``client``).
        n_workers, threads_per_worker, processes: the LocalCluster started when neither is given.
        worker_resources: resources each LocalCluster worker declares (``{"GPU": 1}``).
        resource_map: our resource name -> Dask resource name; mapped requirements are passed to
            ``Client.submit(resources=...)`` so Dask places the step on a worker that has them.
        worker_saturation: ``distributed.scheduler.worker-saturation`` for the LocalCluster.
        local_actions: ``module.action`` or ``module.*`` run on the scheduler's threads instead
            (default :data:`LOCAL_ONLY_ACTIONS`, which need the server process).
        connect_timeout: seconds to wait for the scheduler (default: Dask's
            ``distributed.comm.timeouts.connect``, 30 s unless configured, e.g. by
            ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``).

    Raises:
        InvalidInputError: no scheduler answers at ``address`` (field ``dask_scheduler``); what it
            started (a client, a LocalCluster) is closed first.
    """

    name = "dask"
    remote = True

    def __init__(
        self,
        *,
        client: Client | None = None,
        address: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        worker_resources: Mapping[str, float] | None = None,
        resource_map: Mapping[str, str] | None = None,
        worker_saturation: float | None = None,
        local_actions: frozenset[str] | set[str] = LOCAL_ONLY_ACTIONS,
        connect_timeout: float | None = None,
    ) -> None:
        self._cluster: LocalCluster | None = None
        self._owns_client = client is None
        loop: LoopRunner | None = None
        if client is None:
            if address is None:
                # A step whose worker dies fails at once (KilledWorker): our retry policy decides whether
                # it runs again. Dask's default re-ran it up to 3 more times, whatever max_retries said.
                config: dict[str, Any] = {"distributed.scheduler.allowed-failures": 0}
                if worker_saturation is not None:
                    config["distributed.scheduler.worker-saturation"] = worker_saturation
                with dask.config.set(config):
                    self._cluster = LocalCluster(
                        n_workers=n_workers,
                        threads_per_worker=threads_per_worker,
                        processes=processes,
                        resources=dict(worker_resources) if worker_resources else None,
                        # Dask serves HTTP (metrics) even without a dashboard: any free local port.
                        dashboard_address="127.0.0.1:0",
                        security=cluster_security(processes),
                    )
            else:
                # Clients of an address share a loop of ours: one that closed itself (its scheduler
                # gone for longer than the connect timeout) is replaced, and leaves no thread behind.
                loop = LoopRunner()
                loop.start()
            target: str | LocalCluster = self._cluster if self._cluster is not None else str(address)
            try:
                client = connect(target, connect_timeout, None if loop is None else loop.loop)
            except BaseException:
                if loop is not None:
                    loop.stop()
                self._close_cluster()
                raise
        self.resource_map = dict(resource_map or {})
        #: What each worker of the LocalCluster we started declares (None: a cluster we do not know, whose
        #: workers may come and go; a step then waits for one that has what it needs).
        self._declared: dict[str, float] | None = (
            dict(worker_resources or {}) if self._cluster is not None else None
        )
        self.local_actions = frozenset(local_actions)
        self._local_modules = frozenset(a[:-2] for a in self.local_actions if a.endswith(".*"))
        try:
            # Fails here, at start, when the workers cannot import this package.
            _register_plugin(client)
        except BaseException:
            if self._owns_client:
                client.close()
            if loop is not None:
                loop.stop()
            self._close_cluster()
            raise
        self._connection = Connection(
            client,
            address=str(address) if self._owns_client and self._cluster is None else None,
            loop=loop,
            prepare=_register_plugin,
            connect_timeout=connect_timeout,
        )

    @property
    def client(self) -> Client:
        """The current client (a new one after the old one gave up on a lost scheduler)."""
        return self._connection.client

    def runs_locally(self, call: ActionCall) -> bool:
        return call.qualified_name in self.local_actions or call.module in self._local_modules

    def bind(
        self,
        fn: StepCallable,
        call: ActionCall,
        *,
        priority: TaskPriority,
        resources: Mapping[str, Any] | None,
    ) -> StepCallable:
        if self.runs_locally(call):
            return fn
        dask_resources = None
        if resources and self.resource_map:
            dask_resources = {
                self.resource_map[k]: float(v) for k, v in resources.items() if k in self.resource_map
            } or None
            self._check_declared(resources)
        # Dask runs higher priorities first; ours are lower-first.
        return partial(self._run, call, -int(priority), dask_resources)

    def _check_declared(self, resources: Mapping[str, Any]) -> None:
        """Refuse at submission a mapped requirement no worker of our LocalCluster declares: Dask would
        keep the step waiting for such a worker forever.

        Raises:
            InsufficientResourcesError: naming the requirement and what each worker declares.
        """
        if self._declared is None:
            return
        short = {
            ours: (float(amount), self._declared.get(self.resource_map[ours], 0.0))
            for ours, amount in resources.items()
            if ours in self.resource_map and float(amount) > self._declared.get(self.resource_map[ours], 0.0)
        }
        if short:
            raise InsufficientResourcesError(
                {k: need for k, (need, _) in short.items()},
                {k: has for k, (_, has) in short.items()},
                "no worker of the Dask cluster started here declares that much ("
                + ", ".join(f"{k} is {self.resource_map[k]} there" for k in short)
                + "; each worker's resources are CODOMYRMEX_DASK_WORKER_RESOURCES)",
            )

    def _run(
        self, call: ActionCall, priority: int, resources: dict[str, float] | None, ctx: ActionContext
    ) -> Any:
        value = self._send(call, priority, resources, ctx)
        if isinstance(value, RemoteFailure):
            # Raised from here, whose frame refers to no future: a traceback through a frame holding the
            # step's future would keep it (and its task on the cluster) until a full garbage collection.
            error = value.error
            del value
            raise error
        return value

    def _send(
        self, call: ActionCall, priority: int, resources: dict[str, float] | None, ctx: ActionContext
    ) -> Any:
        """One attempt on the cluster: its value, or a :class:`RemoteFailure` (what the worker returned
        or what its future raised). Raises on cancellation and when the scheduler cannot be reached."""
        ctx.check_cancelled()
        key = f"{call.qualified_name}-{ctx.task_id}-{ctx.attempt}"
        step = RemoteStep(call, key, ctx.step_name, ctx.run_id, ctx.task_id, ctx.attempt, ctx.remaining())
        wake = threading.Event()
        channel = self._connection.channel(ctx.step_name)
        # The scheduler sets the cancel event under its own lock: only wake this thread there, and
        # talk to the cluster from here.
        remove = ctx.on_cancel(wake.set)
        try:
            outcome = Outcome(wake)
            submission = Submission(run_remote_step, step, key, priority, resources, outcome)
            channel.submitter.submit(submission)
            # Bounded by the scheduler: a deadline, a cancellation or shutdown sets the cancel event.
            wake.wait()
            if outcome.has_value:
                return outcome.value
            if outcome.error is not None:  # the client refused the submission (it is closed)
                raise unreachable(ctx.step_name, self._connection.address, outcome.error)
            future = submission.future
            if future is None or not future.done():
                # Cancelled or timed out: the wake came from the cancel event, not from the cluster.
                future = channel.submitter.abandon(
                    submission, f"step {ctx.step_name!r} cancelled or timed out"
                )
                if future is not None:
                    channel.results.forget(future)
                    future.cancel(reason=submission.reason)
                ctx.check_cancelled()
            assert future is not None  # only the cluster or a cancellation sets the wake event
            if future.cancelled():
                # Not by us (that raised above): the client lost its scheduler and dropped its futures.
                raise unreachable(ctx.step_name, self._connection.address, "the connection was lost")
            try:
                return future.result()  # a value the batch could not gather
            except KilledWorker as exc:
                return RemoteFailure(_worker_died(ctx.step_name, exc))
            except Exception as exc:  # the task erred otherwise: the error, without this frame
                return RemoteFailure(exc.with_traceback(None))
        finally:
            remove()

    def describe(self) -> dict[str, Any]:
        client = self.client
        info: dict[str, Any] = {
            "name": self.name,
            "scheduler_address": None,
            "local_cluster": self._cluster is not None,
            "local_actions": sorted(self.local_actions),
            "reachable": False,
            "status": client.status,
        }
        try:
            info["scheduler_address"] = client.scheduler.address if client.scheduler else None
            if client.status != "running":  # asking a lost scheduler would wait for its connect timeout
                info["status"] = f"unreachable: the client is {client.status}"
                return info
            threads = client.nthreads()
            info["workers"] = len(threads)
            info["threads"] = sum(threads.values())
            info["reachable"] = True
        except Exception as exc:  # health must report, not raise, when the cluster is gone
            info["status"] = f"unreachable: {exc}"
        return info

    def close(self) -> None:
        self._connection.close(owns_client=self._owns_client)
        self._close_cluster()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
