"""WorkflowManager: the public face of workflow definitions and runs, composed of named parts.

The parts, each an underscore module saying what state it owns: the definition registry
(``_workflow_registry``), the start of a run (``_workflow_start``), the run state machine
(``_workflow_run``, driving the shared :class:`~codomyrmex_orchestration.core.graph.DependencyGraph`),
the run recorder (``_workflow_recorder``: what is flushed to the store when), the bridge to the
scheduler (``_workflow_dispatch``) and the event listeners (``_workflow_events``). This module owns
the table of active runs and the sub-run counts.

Timeouts: every ``timeout`` argument here is in seconds, and ``None`` means wait without limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.config import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_MAX_MAP_ITEMS,
    DEFAULT_MAX_RESOLVED_SIZE,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_SUBWORKFLOW_DEPTH,
    DEFAULT_MAX_SUBWORKFLOW_RUNS,
    DEFAULT_MAX_WORKFLOWS,
)
from codomyrmex_orchestration.core._foreign_runs import ForeignRuns
from codomyrmex_orchestration.core._run_listing import RunQuery, merged_listing
from codomyrmex_orchestration.core._secrets import SecretSource
from codomyrmex_orchestration.core._version_pins import keep_version
from codomyrmex_orchestration.core._workflow_active import ActiveRuns
from codomyrmex_orchestration.core._workflow_checks import check_document, register
from codomyrmex_orchestration.core._workflow_dispatch import RunDriver
from codomyrmex_orchestration.core._workflow_events import Listeners, RunListener
from codomyrmex_orchestration.core._workflow_input import InputDesk
from codomyrmex_orchestration.core._workflow_plan import Plan, WorkflowValidation
from codomyrmex_orchestration.core._workflow_recorder import RunRecorder
from codomyrmex_orchestration.core._workflow_registry import DefinitionRegistry, as_document, digest_of
from codomyrmex_orchestration.core._workflow_run import RunState, StepCallback
from codomyrmex_orchestration.core._workflow_start import RunStarter
from codomyrmex_orchestration.core._workflow_subruns import SubRuns
from codomyrmex_orchestration.core.actions import ActionRegistry
from codomyrmex_orchestration.core.actions._params import MAX_OUTPUT_BYTES_LIMIT
from codomyrmex_orchestration.core.models import (
    ItemWindow,
    RunRecord,
    StepSpec,
    TaskPriority,
    WorkflowInfo,
    WorkflowSpec,
    WorkflowStatus,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.store import MemoryStore, StateStore
from codomyrmex_orchestration.core.timers import wait_limit
from codomyrmex_orchestration.errors import (
    InvalidStateError,
    RunNotFoundError,
)

__all__ = ["CANCEL_WAIT", "RunListener", "StepCallback", "WorkflowManager", "WorkflowValidation"]


def _resumed_plan(definitions: DefinitionRegistry, previous: RunRecord) -> Plan:
    """What a resume of ``previous`` runs: the definition version it started with.

    Raises:
        InvalidStateError: the run completed, or its version is no longer stored (both versions named).
    """
    if previous.status is WorkflowStatus.COMPLETED:
        raise InvalidStateError("run", previous.run_id, "completed", "there is nothing to resume")
    plan = definitions.pinned_plan(
        previous.workflow_name, previous.workflow_version, previous.workflow_digest
    )
    if plan is None:
        raise _unpinned(previous, definitions.current_version(previous.workflow_name))
    return plan


def _unpinned(previous: RunRecord, current: int | None) -> InvalidStateError:
    """Why ``previous`` cannot be resumed: the definition version it is pinned to is gone."""
    return InvalidStateError(
        "run",
        previous.run_id,
        f"pinned to version {previous.workflow_version} of workflow {previous.workflow_name!r}",
        "that version is no longer stored, and resuming with "
        + (f"the current version {current}" if current else "no definition (it was deleted)")
        + " could mix two definitions' outputs; start a new run instead",
    )


def _wait(run: RunState, timeout: float | None, items: ItemWindow | None = None) -> RunRecord:
    """Wait up to ``timeout`` seconds (``None``: without limit) for ``run`` to end; its record then
    (``items``: each map step's items cut to that window, the only ones built)."""
    run.done.wait(wait_limit(timeout))
    return run.snapshot(items)


#: How long cancel_run (and the server's cancel_workflow_run) waits for the cancelled run to settle
#: before returning it as it stands (seconds).
CANCEL_WAIT = 10.0


class WorkflowManager:
    """Creates, stores, validates and runs workflows.

    Args:
        orchestrator: the scheduler every step goes through.
        registry: the action registry steps are validated against.
        store: where workflows and runs are kept (in memory when omitted).
        config_dir: directory of workflow JSON files loaded at start (``None`` to skip).
        sample_dir: sample workflows (source ``"sample"``); a config file or stored one of a name wins.
        max_steps: most steps a workflow may have.
        max_workflows: most workflows registered at once (``CODOMYRMEX_MAX_WORKFLOWS``).
        max_subworkflow_depth: deepest nesting of ``workflow.run``.
        max_subworkflow_runs: most sub-workflow runs under one top-level run, all levels together.
        max_output_bytes: the default cap actions apply to what they capture (``shell.run`` stdout,
            ``http.request`` bodies) when a step does not set its own; ``None``: the actions' default.
        max_map_items: most items one map step (``for_each``) may have (``CODOMYRMEX_MAX_MAP_ITEMS``).
        max_resolved_size: the template budget of each step (``CODOMYRMEX_MAX_RESOLVED_SIZE``).
    """

    def __init__(
        self,
        *,
        orchestrator: TaskOrchestrator,
        registry: ActionRegistry,
        store: StateStore | None = None,
        config_dir: Path | str | None = DEFAULT_CONFIG_DIR,
        sample_dir: Path | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_workflows: int = DEFAULT_MAX_WORKFLOWS,
        max_subworkflow_depth: int = DEFAULT_MAX_SUBWORKFLOW_DEPTH,
        max_subworkflow_runs: int = DEFAULT_MAX_SUBWORKFLOW_RUNS,
        max_output_bytes: int | None = None,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
        max_resolved_size: int = DEFAULT_MAX_RESOLVED_SIZE,
    ) -> None:
        self.orchestrator = orchestrator
        self.registry = registry
        self.store: StateStore = store if store is not None else MemoryStore()
        self.max_steps = max_steps
        self.max_map_items = max_map_items
        self.max_resolved_size = max_resolved_size
        self.max_subworkflow_depth = max_subworkflow_depth
        self.max_subworkflow_runs = max_subworkflow_runs
        self.config_dir = Path(config_dir) if config_dir is not None else None
        extras: dict[str, Any] = {"max_depth": max_subworkflow_depth}
        if max_output_bytes is not None:
            # Actions take at most MAX_OUTPUT_BYTES_LIMIT; the engine's OutputLimiter caps whole outputs.
            extras["max_output_bytes"] = min(max_output_bytes, MAX_OUTPUT_BYTES_LIMIT)
        self._listeners = Listeners()
        self._active = ActiveRuns()
        self.definitions = DefinitionRegistry(
            registry=registry,
            store=self.store,
            max_steps=max_steps,
            max_workflows=max_workflows,
            max_map_items=max_map_items,
            check_resources=orchestrator.check_resources,
        )
        self._subruns = SubRuns(
            start_run=self._start_run,
            cancel=lambda run, reason: self._driver.cancel(run, reason),  # the driver is built next
            active=self._active,
            definitions=self.definitions,
            store=self.store,
            max_depth=max_subworkflow_depth,
            max_runs=max_subworkflow_runs,
        )
        self._recorder = RunRecorder(self.store)
        self._foreign = ForeignRuns(self.store, self._recorder.flush)  # runs a CLI process owns
        self.secrets = SecretSource()  # {{secrets.NAME}}: the environment; compose adds the secrets file
        self._driver = RunDriver(
            orchestrator=orchestrator,
            registry=registry,
            recorder=self._recorder,
            listeners=self._listeners,
            extras=extras,
            run_child=self._subruns.run_child,
            on_finished=self._forget,
        )
        self._starter = RunStarter(
            orchestrator=orchestrator,
            recorder=self._recorder,
            listeners=self._listeners,
            active=self._active,
            driver=self._driver,
            secrets=lambda: self.secrets,
            max_map_items=max_map_items,
            max_resolved_size=max_resolved_size,
            on_resume=lambda run_id, plan: self._subruns.resuming(run_id, plan),
            keep_version=lambda plan: keep_version(self.definitions, plan),
        )
        self.inputs = InputDesk(self, self._driver, self._active, orchestrator, self._listeners)  # approvals
        taken = self.definitions.load_stored()
        if self.config_dir is not None:
            taken.update(self.definitions.load_config_dir(self.config_dir, skip=taken))
        if sample_dir is not None:
            self.definitions.load_config_dir(sample_dir, source="sample", skip=taken)

    @property
    def load_errors(self) -> list[tuple[str, str]]:
        """(path, reason) of every config file that was rejected."""
        return self.definitions.load_errors

    # ------------------------------------------------------------------ definitions

    def load_config_dir(self, directory: Path, *, source: str = "config") -> list[str]:
        """Load every ``*.json`` workflow in ``directory``; their names (see ``load_errors``)."""
        return self.definitions.load_config_dir(directory, source=source)

    def refused_workflows(self) -> dict[str, str]:
        """Loaded workflows the policy refuses: name -> the reason (naming the setting that allows them)."""
        return self.definitions.refused()

    def validate_workflow(self, spec: WorkflowSpec | Mapping[str, Any]) -> WorkflowValidation:
        """Validate without registering (naming secrets set nowhere). Raises DAGValidationError with every
        problem at once (see ``_workflow_checks.check_document``)."""
        return check_document(self.definitions, spec).describe(self.secrets)

    def create_workflow(
        self,
        spec: WorkflowSpec | Mapping[str, Any] | str,
        steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        source: str = "api",
        reuse: bool = False,
    ) -> WorkflowSpec:
        """Validate and register a workflow (persisted in the store); ``reuse``: keep a registered one of
        the same name and content as it is (its version, its source) instead of refusing it.

        Raises:
            InvalidInputError: not a spec, a JSON object nor a name with steps.
            DAGValidationError: every problem at once, as ``validate_workflow`` finds them (its
                ``unchecked``: the checks a schema problem kept from running); CycleDetectedError for cycles.
            AlreadyExistsError: the name is taken (by other content) and ``overwrite`` is false.
        """
        document = as_document(spec, steps, description, parameters)
        definition, created = register(self.definitions, document, overwrite, source=source, reuse=reuse)
        spec = definition.spec
        if created:
            self._listeners.emit("workflow.created", {"workflow_name": spec.name, "source": source})
        return definition.spec

    def describe_workflow(self, name: str, version: int | None = None) -> WorkflowValidation:
        """Levels, inferred edges and Mermaid diagram of a registered workflow (or of a kept version)."""
        if version is None:
            return self.definitions.plan(name).describe()
        return self.definitions.check(self.definitions.spec_at(name, version)).describe()

    def get_workflow(self, name: str, version: int | None = None) -> WorkflowSpec:
        """The current definition of ``name``, or its version ``version`` while that is kept (the newest
        of each name is, and every version a stored run refers to). Raises WorkflowNotFoundError."""
        return self.definitions.spec_at(name, version)

    def workflow_version(self, name: str, version: int | None = None) -> tuple[int, str]:
        """(version, content hash) of the current definition of ``name`` or of its kept ``version``."""
        if version is None:
            definition = self.definitions.entry(name)
            return definition.version, definition.digest
        return version, digest_of(self.definitions.spec_at(name, version))

    def workflow_source(self, name: str) -> str:
        """Where ``name`` came from: ``config``, ``api``, ``project`` or ``file``."""
        return self.definitions.source_of(name)

    def list_workflows(self) -> list[WorkflowInfo]:
        return self.definitions.infos()

    def delete_workflow(self, name: str) -> bool:
        """Unregister a workflow (its past runs are kept). Returns False if it did not exist."""
        if not self.definitions.delete(name):
            return False
        self._listeners.emit("workflow.deleted", {"workflow_name": name})
        return True

    # ------------------------------------------------------------------ listeners

    def add_listener(self, fn: RunListener) -> None:
        """Call ``fn(event, payload)`` for ``run.*``, ``step.*`` and ``workflow.*`` events (errors are
        logged). Safe from any thread, also while events are being delivered."""
        self._listeners.add(fn)

    def remove_listener(self, fn: RunListener) -> None:
        self._listeners.remove(fn)

    # ------------------------------------------------------------------ runs

    def execute_workflow(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        priority: TaskPriority = TaskPriority.NORMAL,
        session_id: str | None = None,
        on_step: StepCallback | None = None,
        max_parallel: int | None = None,
        default_resources: Mapping[str, Any] | None = None,
        use_cache: bool = True,
    ) -> RunRecord:
        """Start a run of ``name``.

        Args:
            parameters: values for ``{{params.x}}`` (override the workflow's defaults).
            wait: wait for the run to end (bounded by ``timeout``); False returns at once.
            timeout: most seconds to wait, ``None`` without limit; the run goes on after it.
            priority: scheduling priority of the run's steps (a step's own priority wins).
            session_id: recorded on the run.
            on_step: called with (live run record — read only, step result) on every step transition.
            max_parallel: cap on this run's steps in flight (tighter of this and the workflow's).
            default_resources: resources for steps that declare none (resource-aware sessions).
            use_cache: False: cached steps run anyway (their fresh outputs replace the kept ones).

        Returns:
            The run record: final when the run ended, else as it stands (status ``running``).

        Raises:
            WorkflowNotFoundError: no such workflow.
            InvalidInputError: a ``{{params.x}}`` has no value.
        """
        run = self._start_run(
            self.definitions.plan(name),
            parameters,
            priority=priority,
            session_id=session_id,
            on_step=on_step,
            max_parallel=max_parallel,
            default_resources=default_resources,
            use_cache=use_cache,
        )
        return _wait(run, timeout) if wait else run.snapshot()

    def start_workflow(self, name: str, parameters: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Start a run like ``execute_workflow(wait=False)``; only its run id (same options and errors;
        also ``before_record(run_id)``, called before anything of the run is saved or started)."""
        return self._start_run(self.definitions.plan(name), parameters, **options).run_id

    def is_active(self, run_id: str) -> bool:
        """Whether ``run_id`` is a run that has not ended yet."""
        return run_id in self._active

    def _start_run(self, plan: Plan, parameters: Mapping[str, Any] | None, **options: Any) -> RunState:
        return self._starter.start(plan, parameters, **options)  # RunStarter.start's options

    def _forget(self, final: RunRecord) -> None:  # saved, or kept by the recorder until it is
        self._active.remove(final.run_id)
        self._subruns.forget(final.run_id)

    def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run: queued steps never start, running steps are stopped (a CLI's: it is asked to).

        Returns:
            The record once the run has settled (or as it stands after 10 seconds).

        Raises:
            RunNotFoundError: unknown run id.
            InvalidStateError: the run ended, nothing runs it, or it is a CLI run's sub-run (as it says).
        """
        run = self._active.get_starting(run_id, CANCEL_WAIT)  # a resume starting it: cancel what it starts
        if run is None:
            return self._foreign.cancel(self.get_run(run_id), CANCEL_WAIT)
        self._driver.cancel(run)
        return _wait(run, CANCEL_WAIT)

    def request_cancel(self, run_id: str) -> RunRecord:
        """Cancel a run as :meth:`cancel_run` does, without waiting for it to settle: the record as it
        stands; :meth:`on_settled` says when it has. Raises as :meth:`cancel_run` does."""
        run = self._active.get_starting(run_id, CANCEL_WAIT)
        if run is None:
            record = self.get_run(run_id)
            self._foreign.ask_to_cancel(record)
            return record
        self._driver.cancel(run)
        return run.snapshot()

    def on_settled(self, run_id: str, callback: Callable[[RunRecord], None]) -> None:
        """Call ``callback(record)`` once, with the record then, when run ``run_id`` has ended and nothing
        runs it any more (an active run's end, or the CLI process owning it letting go); at once if so.
        No thread waits for it. Raises RunNotFoundError."""
        if self._active.get(run_id) is not None:
            self.inputs.on_stop(run_id, callback, questions=False)
        else:
            self._foreign.on_let_go(self.get_run(run_id), callback)

    def wait_run(self, run_id: str, timeout: float | None) -> RunRecord:
        """Wait up to ``timeout`` seconds (``None``: without limit) for a run to end; returns the record
        as it stands then. Raises RunNotFoundError."""
        run = self._active.get(run_id)
        if run is None:
            return self.get_run(run_id)
        return _wait(run, timeout)

    def wait_quiet(self, run_id: str, timeout: float | None) -> list[str]:
        """Wait up to ``timeout`` seconds (``None``: without limit) until a run has nothing left to do but
        wait for answers (or ended); the names of its steps still going then (empty: quiet)."""
        return self._active.wait_quiet(run_id, timeout)

    def get_run(self, run_id: str, *, items: ItemWindow | None = None) -> RunRecord:
        """A run's record: live for an active run, else from the store; with ``items``, each map step
        lists only the items of that window, the only ones read and built. Raises RunNotFoundError."""
        run = self._active.get(run_id)
        if run is not None:
            return run.snapshot(items)
        # Ended, but not committed yet (the store cannot save now): the store is behind.
        record = self._recorder.unsaved_run(run_id, items) or self.store.get_run(run_id, items=items)
        if record is None:
            raise RunNotFoundError(run_id)
        return record

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        steps: bool = True,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first (active runs as they stand), created in ``[since, until)``, after
        ``cursor`` (``store.run_cursor`` of the previous page's last run), with ``parent_run_id``: only
        the sub-runs its steps started; ``steps=False``: summaries, every ``steps`` empty (no step is
        read). Raises InvalidInputError for a cursor it did not make."""
        query = RunQuery(workflow_name, status, since, until, parent_run_id)
        live = [run.snapshot() if steps else run.summary() for run in self._active.runs()]
        live += [r.model_copy(update=None if steps else {"steps": {}}) for r in self._recorder.unsaved()]
        return merged_listing(self.store, query, live, limit=limit, cursor=cursor, steps=steps)

    def active_run_ids(self) -> list[str]:
        return self._active.ids()

    def resume_run(
        self,
        run_id: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_step: StepCallback | None = None,
        items: ItemWindow | None = None,
        **options: Any,
    ) -> RunRecord:
        """Re-execute the steps of an ended run that had not COMPLETED, reusing completed outputs, with
        the definition version it started with (even if the workflow was overwritten since).

        Args:
            wait: wait for the resumed run to end (bounded by ``timeout``).
            timeout: most seconds to wait, ``None`` without limit.
            items: the record returned lists only this window of each map step's items, the only ones
                built (``None``: all of them, a 100,000-item map's too).
            options: ``start_workflow``'s, as a session asks; ``session_id`` (default: the run's own) is
                recorded on the run, ``None`` resumes it outside any session.

        Raises:
            RunNotFoundError: unknown run id.
            InvalidStateError: the run is active (here, or in a CLI process: pid named), being resumed, or
                completed; or the definition version it started with is gone (both versions named).
        """
        with self._active.claim(run_id), self._foreign.resuming(run_id) as started:
            # Claimed: no other resume passes until this run is active (then it sees the run), and a
            # run that ends is saved before it leaves the table (then the store says how it ended).
            previous = self.get_run(run_id)
            plan = _resumed_plan(self.definitions, previous)
            options = {"session_id": previous.session_id, "priority": previous.priority, **options}
            run = self._start_run(plan, None, on_step=on_step, previous=previous, **options)
            started()
        return _wait(run, timeout, items) if wait else run.snapshot(items)

    def stats(self) -> dict[str, Any]:
        """Registered workflows, active runs and their steps by status, config load errors."""
        active = self._active.runs()
        registered, by_source = self.definitions.counts()
        steps: dict[str, int] = {}
        for run in active:
            run.count_steps(steps)
        return {
            "workflows_registered": registered,
            "workflows_by_source": by_source,
            "active_runs": len(active),
            "active_steps_by_status": steps,
            "load_errors": [{"path": p, "reason": r} for p, r in self.load_errors],
            "refused_by_policy": self.refused_workflows(),
        }

    def shutdown(self, *, cancel_running: bool = True) -> None:
        """Cancel active runs (but those waiting for input in a durable store) and flush the store."""
        if cancel_running:
            for run in self._active.runs():
                self.inputs.cancel_at_shutdown(run)
        self._recorder.flush()  # a broken store is logged (and reported by health), never raised
