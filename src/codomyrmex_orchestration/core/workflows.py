"""WorkflowManager: workflow CRUD, config loading, and runs driven through the one scheduler.

A run is a small state machine (the ``graphlib`` protocol): steps whose upstreams are all final are
resolved (templates, ``run_if``) and submitted to the :class:`TaskOrchestrator`; each completion callback
records the step and submits what became ready. There is no scheduling loop here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from codomyrmex_orchestration.config import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_SUBWORKFLOW_DEPTH,
    DEFAULT_MAX_SUBWORKFLOW_RUNS,
)
from codomyrmex_orchestration.core._locks import YieldingLock
from codomyrmex_orchestration.core.actions import ActionContext, ActionRegistry
from codomyrmex_orchestration.core.actions._params import MAX_OUTPUT_BYTES_LIMIT
from codomyrmex_orchestration.core.backends import ActionCall
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.models import (
    ErrorInfo,
    RunRecord,
    StepResult,
    StepSpec,
    TaskPriority,
    TaskStatus,
    WorkflowInfo,
    WorkflowSpec,
    WorkflowStatus,
    utcnow,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator, TaskState
from codomyrmex_orchestration.core.store import MemoryStore, StateStore
from codomyrmex_orchestration.core.templating import (
    Condition,
    TemplateContext,
    find_references,
    parse_condition,
    resolve,
)
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    AlreadyExistsError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    OrchestrationError,
    RunNotFoundError,
    StepFailedError,
    UnknownActionError,
    WorkflowNotFoundError,
    WorkflowRefusedError,
)

__all__ = ["RunListener", "StepCallback", "WorkflowManager", "WorkflowValidation"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")

StepCallback = Callable[[RunRecord, StepResult], None]
RunListener = Callable[[str, dict[str, Any]], None]

_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})
_STEP_EVENTS = {
    TaskStatus.COMPLETED: "step.completed",
    TaskStatus.SKIPPED: "step.skipped",
    TaskStatus.CANCELLED: "step.cancelled",
    TaskStatus.TIMED_OUT: "step.timed_out",
}
_RUN_EVENTS = {WorkflowStatus.COMPLETED: "run.completed", WorkflowStatus.CANCELLED: "run.cancelled"}


class WorkflowValidation(BaseModel):
    """What validating a workflow tells: its shape, inferred edges and a Mermaid diagram."""

    name: str
    steps_count: int
    execution_levels: list[list[str]]
    inferred_dependencies: dict[str, list[str]]
    mermaid: str


class _Plan:
    """What a run needs from a validated spec, computed once per registered spec."""

    __slots__ = (
        "children",
        "conditions",
        "dag",
        "needs_output",
        "order",
        "param_refs",
        "parents",
        "priorities",
        "spec",
        "templated",
        "uses_status",
    )

    def __init__(self, spec: WorkflowSpec, dag: WorkflowDAG) -> None:
        self.spec = spec
        self.dag = dag
        self.order = dag.topological_order()
        # Sorted once here, not per step of every run (the order skip reasons are reported in).
        self.parents: dict[str, tuple[str, ...]] = {
            name: tuple(sorted(dag.dependencies_of(name))) for name in dag.steps
        }
        self.children: dict[str, list[str]] = {name: [] for name in dag.steps}
        for name, parents in self.parents.items():
            for up in parents:
                self.children[up].append(name)
        known = dag.steps.keys()
        #: A step's own priority, where it sets one (else its run's priority applies).
        self.priorities: dict[str, TaskPriority] = {
            name: step.priority for name, step in dag.steps.items() if "priority" in step.model_fields_set
        }
        self.conditions: dict[str, Condition] = {}
        self.templated: set[str] = set()
        self.needs_output: dict[str, tuple[str, ...]] = {}
        self.uses_status: set[str] = set()
        #: (step, parameter name, raw reference) for every ``{{params.x}}`` in the workflow.
        self.param_refs: list[tuple[str, str, str]] = []
        for name, step in dag.steps.items():
            refs = find_references(step.parameters, known)
            if refs:
                self.templated.add(name)
            if step.run_if:
                condition = parse_condition(step.run_if, known)
                self.conditions[name] = condition
                refs = [*refs, *condition.references]
            self.needs_output[name] = tuple(
                sorted({r.step for r in refs if r.root == "steps" and r.attr == "output" and r.step})
            )
            self.param_refs.extend((name, str(r.attr), r.raw) for r in refs if r.root == "params")


class _StepView(Mapping[str, tuple[str, Any]]):
    """A live, read-only view of a run's steps for template resolution (no per-step copies).

    Every step of the workflow is in it; one with no result yet reads as pending.
    """

    __slots__ = ("_names", "_steps")

    def __init__(self, steps: dict[str, StepResult], names: Mapping[str, object]) -> None:
        self._steps = steps
        self._names = names

    def __getitem__(self, key: str) -> tuple[str, Any]:
        result = self._steps.get(key)
        if result is None:
            if key not in self._names:
                raise KeyError(key)
            return TaskStatus.PENDING.value, None
        return result.status.value, result.output

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _StepCall:
    """One submitted step: the callable the scheduler runs and its start/done callbacks in one object.

    Three closures per step cost a dozen objects (functions, closure tuples, cells) that live as long
    as the step is queued; with thousands queued they reach the oldest GC generation, and the full
    collections they trigger scan the whole heap (a third of a 10,000-step run, profiled). This is
    one object, plus the two bound methods handed to the scheduler.
    """

    __slots__ = ("extras", "func", "manager", "mark", "name", "params", "run")

    def __init__(
        self,
        manager: WorkflowManager,
        run: _Run,
        name: str,
        func: Callable[[dict[str, Any], ActionContext], Any],
        params: dict[str, Any],
    ) -> None:
        self.manager = manager
        self.run = run
        self.name = name
        self.func = func
        self.params = params
        self.extras = manager._action_extras
        # The store's write mark when the step became ready: its parents' results are saved before
        # it, and are flushed before the step starts (see started).
        self.mark: int | None = None

    def __call__(self, ctx: ActionContext) -> Any:
        ctx.run_workflow = self.manager._run_child
        ctx.depth = self.run.depth
        for key, value in self.extras.items():
            ctx.extras.setdefault(key, value)
        return self.func(self.params, ctx)

    def started(self, state: TaskState) -> None:
        if self.mark is not None:
            self.manager._flush(upto=self.mark)
        self.manager._on_step_start(self.run, self.name, state)

    def done(self, state: TaskState) -> None:
        self.manager._on_step_done(self.run, self.name, state)


def _mark_running(result: StepResult, attempt: int, record: TaskState) -> None:
    result.attempts = attempt
    result.started_at = result.started_at or record.started_at or utcnow()
    result.status = TaskStatus.RUNNING  # last: a reader that sees RUNNING sees the rest


def _pydantic_message(exc: ValidationError, prefix: str) -> InvalidInputError:
    problems = []
    for err in exc.errors()[:20]:
        loc = ".".join(str(p) for p in err["loc"])
        problems.append(f"{prefix + '.' if prefix and loc else prefix}{loc}: {err['msg']}")
    first_loc = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else ""
    field = f"{prefix}.{first_loc}" if prefix and first_loc else (prefix or first_loc)
    return InvalidInputError(field, "; ".join(problems))


class _Run:
    """Mutable state of one active run; every field is guarded by ``lock``."""

    __slots__ = (
        "blocked",
        "cancelled",
        "default_resources",
        "depth",
        "done",
        "final",
        "in_flight",
        "lazy",
        "lock",
        "max_parallel",
        "on_step",
        "params",
        "plan",
        "priority",
        "queue",
        "record",
        "remaining",
        "start_mono",
        "task_ids",
        "unfinished",
        "watchers",
    )

    def __init__(
        self,
        record: RunRecord,
        plan: _Plan,
        params: dict[str, Any],
        priority: TaskPriority,
        depth: int,
        on_step: StepCallback | None,
    ) -> None:
        self.record = record
        self.plan = plan
        self.params = params
        self.priority = priority
        self.depth = depth
        self.on_step = on_step
        # Nothing reads the live record while the run goes but snapshots (no durable store saving it,
        # no on_step callback handed it): steps enter it only when they end (and when queued under
        # max_parallel); snapshots ask the scheduler which steps have started.
        self.lazy = False
        self.lock = YieldingLock()  # the workers running its steps take it at every step
        self.done = threading.Event()
        self.final: RunRecord | None = None
        self.watchers: list[Callable[[], None]] = []
        self.cancelled = False
        self.task_ids: dict[str, str] = {}
        self.in_flight = 0
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        # Steps whose failure propagates: required failures and the steps skipped because of them.
        self.blocked: set[str] = set()
        # Every step without a final result (record.steps may hold only the steps that started).
        self.unfinished = plan.dag.steps.keys() - {n for n, s in record.steps.items() if s.status.is_terminal}
        self.remaining: dict[str, int] = {}
        self.start_mono = time.monotonic()
        self.max_parallel = plan.spec.max_parallel
        self.default_resources: dict[str, Any] | None = None


class WorkflowManager:
    """Creates, stores, validates and runs workflows.

    Args:
        orchestrator: the scheduler every step goes through.
        registry: the action registry steps are validated against.
        store: where workflows and runs are kept (in memory when omitted).
        config_dir: directory of workflow JSON files loaded at start (``None`` to skip).
        sample_dir: directory of sample workflows loaded before ``config_dir`` (source ``"sample"``);
            a config file or a stored workflow of the same name wins.
        max_steps: most steps a workflow may have.
        max_subworkflow_depth: deepest nesting of ``workflow.run``.
        max_subworkflow_runs: most sub-workflow runs under one top-level run, all levels together.
        max_output_bytes: the default cap actions apply to what they capture (``shell.run`` stdout,
            ``http.request`` bodies) when a step does not set its own; ``None``: the actions' default.
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
        max_subworkflow_depth: int = DEFAULT_MAX_SUBWORKFLOW_DEPTH,
        max_subworkflow_runs: int = DEFAULT_MAX_SUBWORKFLOW_RUNS,
        max_output_bytes: int | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.registry = registry
        self.store: StateStore = store if store is not None else MemoryStore()
        self._durable = self.store.durable
        self._remote = orchestrator.backend.remote  # steps also travel as ActionCalls
        self.max_steps = max_steps
        self.max_subworkflow_depth = max_subworkflow_depth
        self.max_subworkflow_runs = max_subworkflow_runs
        self._subruns: dict[str, int] = {}  # top-level run id -> sub-runs started under it
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self._action_extras: dict[str, Any] = {"max_depth": max_subworkflow_depth}
        if max_output_bytes is not None:
            # The actions accept at most MAX_OUTPUT_BYTES_LIMIT; the engine's cap on the whole
            # output (OutputLimiter) still applies above it.
            self._action_extras["max_output_bytes"] = min(max_output_bytes, MAX_OUTPUT_BYTES_LIMIT)
        self._lock = threading.RLock()
        # Orders the writers of definitions (create, delete, config loads) between them, so the store
        # keeps the definition memory keeps, and a create's existence check still holds when it writes.
        # ``_lock`` stays short (dict operations only) for the readers, which the server calls on its
        # event loop: never held while a definition is serialized.
        self._define_lock = threading.Lock()
        self._workflows: dict[str, tuple[WorkflowSpec, str, str | None]] = {}
        self._active: dict[str, _Run] = {}
        self._plans: dict[str, _Plan] = {}
        self._listeners: list[RunListener] = []
        self.load_errors: list[tuple[str, str]] = []
        # Loaded workflows that use an action this registry's policy refuses (e.g. python.call with code
        # execution off): listed with the reason, refused by name at run time; not a fault of the server.
        self._refused: dict[str, tuple[WorkflowSpec, str, str | None, WorkflowRefusedError]] = {}
        if sample_dir is not None:
            self.load_config_dir(sample_dir, source="sample")
        if self.config_dir is not None:
            self.load_config_dir(self.config_dir)
        for spec, source in self.store.load_workflows():
            self._add_loaded(spec, source, None)

    # ------------------------------------------------------------------ definitions

    def load_config_dir(self, directory: Path, *, source: str = "config") -> list[str]:
        """Load every ``*.json`` workflow in ``directory``; bad files go to ``load_errors``, workflows
        using an action the policy refuses are listed as refused (see :meth:`refused_workflows`).

        Returns:
            The names of the workflows loaded.
        """
        loaded: list[str] = []
        if not directory.is_dir():
            return loaded
        for path in sorted(directory.glob("*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                items = document if isinstance(document, list) else [document]
                for item in items:
                    spec = self._coerce_spec(item)
                    if self._refusal(spec) is None:
                        self._check(spec)
                    with self._define_lock:
                        self._add_loaded(spec, source, str(path))
                    loaded.append(spec.name)
            except (OSError, ValueError) as exc:
                reason = str(exc) if isinstance(exc, OrchestrationError | json.JSONDecodeError) else repr(exc)
                if isinstance(exc, ValidationError):
                    reason = str(_pydantic_message(exc, ""))
                self.load_errors.append((str(path), reason))
                _log.warning("workflow config file rejected", path=str(path), reason=reason)
        return loaded

    def _refusal(self, spec: WorkflowSpec) -> WorkflowRefusedError | None:
        """Why the policy refuses ``spec`` (its first step whose action is refused), or None."""
        seen: set[tuple[str, str]] = set()
        for step in spec.steps:
            if (step.module, step.action) in seen:
                continue
            seen.add((step.module, step.action))
            try:
                self.registry.get(step.module, step.action)
            except ActionRefusedError as exc:
                return WorkflowRefusedError(spec.name, step.name, exc)
            except UnknownActionError:
                continue  # reported by validation
        return None

    def _add_loaded(self, spec: WorkflowSpec, source: str, path: str | None) -> None:
        refusal = self._refusal(spec)
        with self._lock:
            self._plans.pop(spec.name, None)
            if refusal is None:
                self._refused.pop(spec.name, None)
                self._workflows[spec.name] = (spec, source, path)
            else:
                self._workflows.pop(spec.name, None)
                self._refused[spec.name] = (spec, source, path, refusal)
        if refusal is not None:
            _log.info("workflow refused by policy", workflow=spec.name, reason=str(refusal))

    def refused_workflows(self) -> dict[str, str]:
        """Loaded workflows the policy refuses: name -> the reason (naming the setting that allows them)."""
        with self._lock:
            return {name: str(entry[3]) for name, entry in sorted(self._refused.items())}

    def _missing(self, name: str) -> OrchestrationError:
        """The error for a name that is not runnable: refused by policy, or not found (caller holds _lock)."""
        refused = self._refused.get(name)
        if refused is not None:
            return refused[3]
        return WorkflowNotFoundError(name, known=self._workflows)

    def _coerce_spec(
        self,
        spec: WorkflowSpec | Mapping[str, Any] | str,
        steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> WorkflowSpec:
        if isinstance(spec, WorkflowSpec):
            return spec
        if isinstance(spec, str):
            document: dict[str, Any] = {"name": spec, "steps": list(steps or []), "description": description}
            if parameters:
                document["parameters"] = dict(parameters)
        elif isinstance(spec, Mapping):
            document = dict(spec)
        else:
            raise InvalidInputError("workflow", "expected a WorkflowSpec, a JSON object or a name with steps")
        if isinstance(document.get("steps"), list) and len(document["steps"]) > self.max_steps:
            raise LimitExceededError("steps", self.max_steps, len(document["steps"]), "the number of steps")
        try:
            return WorkflowSpec.model_validate(document)
        except ValidationError as exc:
            raise _pydantic_message(exc, "") from None

    def _check(self, spec: WorkflowSpec) -> _Plan:
        if len(spec.steps) > self.max_steps:
            raise LimitExceededError("steps", self.max_steps, len(spec.steps), "the number of steps")
        dag = WorkflowDAG.from_spec(spec, self.registry)
        dag.validate()
        return _Plan(spec, dag)

    def _plan(self, name: str) -> _Plan:
        with self._lock:
            entry = self._workflows.get(name)
            if entry is None:
                raise self._missing(name)
            plan = self._plans.get(name)
            if plan is not None and plan.spec is entry[0]:
                return plan
        plan = self._check(entry[0])
        with self._lock:
            if self._workflows.get(name, (None,))[0] is entry[0]:
                self._plans[name] = plan
        return plan

    def validate_workflow(self, spec: WorkflowSpec | Mapping[str, Any]) -> WorkflowValidation:
        """Validate without registering. Raises DAGValidationError / InvalidInputError."""
        return self._describe(self._check(self._coerce_spec(spec)))

    @staticmethod
    def _describe(plan: _Plan) -> WorkflowValidation:
        return WorkflowValidation(
            name=plan.spec.name,
            steps_count=len(plan.spec.steps),
            execution_levels=plan.dag.execution_levels(),
            inferred_dependencies={k: sorted(v) for k, v in plan.dag.inferred_dependencies.items() if v},
            mermaid=plan.dag.to_mermaid(),
        )

    def create_workflow(
        self,
        spec: WorkflowSpec | Mapping[str, Any] | str,
        steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        source: str = "api",
    ) -> WorkflowSpec:
        """Validate and register a workflow (persisted in the store).

        Raises:
            InvalidInputError: malformed spec (the field is named).
            DAGValidationError: every graph problem at once (CycleDetectedError for cycles).
            AlreadyExistsError: the name is taken and ``overwrite`` is false.
        """
        workflow = self._coerce_spec(spec, steps, description, parameters)
        plan = self._check(workflow)
        with self._define_lock:
            with self._lock:
                if workflow.name in self._workflows and not overwrite:
                    raise AlreadyExistsError("workflow", workflow.name, "pass overwrite=true to replace it")
            self.store.save_workflow(workflow, source)
            with self._lock:
                self._refused.pop(workflow.name, None)  # it passed this policy's checks
                self._workflows[workflow.name] = (workflow, source, None)
                self._plans[workflow.name] = plan
        self.store.flush()
        self._emit("workflow.created", {"workflow_name": workflow.name, "source": source})
        return workflow

    def describe_workflow(self, name: str) -> WorkflowValidation:
        """Levels, inferred edges and the Mermaid diagram of a registered workflow."""
        return self._describe(self._plan(name))

    def get_workflow(self, name: str) -> WorkflowSpec:
        with self._lock:
            entry = self._workflows.get(name)
            if entry is None:
                refused = self._refused.get(name)
                if refused is not None:
                    return refused[0]  # readable (get_workflow shows it); running it is refused
                raise WorkflowNotFoundError(name, known=self._workflows)
            return entry[0]

    def workflow_source(self, name: str) -> str:
        with self._lock:
            entry = self._workflows.get(name) or self._refused.get(name)
            if entry is None:
                raise WorkflowNotFoundError(name, known=self._workflows)
            return entry[1]

    def list_workflows(self) -> list[WorkflowInfo]:
        with self._lock:
            entries: list[tuple[WorkflowSpec, str, str | None, str | None]] = [
                (*entry, None) for entry in self._workflows.values()
            ]
            entries += [(spec, source, path, str(why)) for spec, source, path, why in self._refused.values()]
        entries.sort(key=lambda e: e[0].name)
        return [
            WorkflowInfo(
                name=spec.name,
                description=spec.description,
                steps_count=len(spec.steps),
                source=source,
                path=path,
                refused=refused,
            )
            for spec, source, path, refused in entries
        ]

    def delete_workflow(self, name: str) -> bool:
        """Unregister a workflow (its past runs are kept). Returns False if it did not exist."""
        with self._define_lock:
            with self._lock:
                if name not in self._workflows:
                    if self._refused.pop(name, None) is None:
                        return False
                else:
                    del self._workflows[name]
                self._plans.pop(name, None)
            self.store.delete_workflow(name)
        self.store.flush()
        self._emit("workflow.deleted", {"workflow_name": name})
        return True

    # ------------------------------------------------------------------ listeners

    def add_listener(self, fn: RunListener) -> None:
        """Call ``fn(event, payload)`` for ``run.*`` and ``step.*`` events (errors are logged)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: RunListener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        for fn in self._listeners:
            try:
                fn(event, payload)
            except Exception:
                _log.exception("run listener failed", listener=repr(fn), run_event=event)

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
    ) -> RunRecord:
        """Start a run of ``name``.

        Args:
            parameters: values for ``{{params.x}}`` (override the workflow's defaults).
            wait: wait for the run to end (bounded by ``timeout``); False returns at once.
            timeout: most seconds to wait; the run goes on after it (check ``status``).
            priority: scheduling priority of the run's steps (a step's own priority wins).
            session_id: recorded on the run.
            on_step: called with (live run record — read only, step result) on every step transition.
            max_parallel: cap on this run's steps in flight (tighter of this and the workflow's).
            default_resources: resources for steps that declare none (resource-aware sessions).

        Returns:
            The run record: final when the run ended, else as it stands (status ``running``).

        Raises:
            WorkflowNotFoundError: no such workflow.
            InvalidInputError: a ``{{params.x}}`` has no value.
        """
        run = self._start_run(
            self._plan(name),
            parameters,
            priority,
            session_id,
            on_step,
            max_parallel=max_parallel,
            default_resources=default_resources,
        )
        if not wait:
            return self._snapshot(run)
        return self._wait(run, timeout)

    def start_workflow(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        priority: TaskPriority = TaskPriority.NORMAL,
        session_id: str | None = None,
        on_step: StepCallback | None = None,
        max_parallel: int | None = None,
        default_resources: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a run of ``name`` like ``execute_workflow(wait=False)``, returning only its run id.

        Raises:
            the same as :meth:`execute_workflow`.
        """
        run = self._start_run(
            self._plan(name),
            parameters,
            priority,
            session_id,
            on_step,
            max_parallel=max_parallel,
            default_resources=default_resources,
        )
        return run.record.run_id

    def is_active(self, run_id: str) -> bool:
        """Whether ``run_id`` is a run that has not ended yet."""
        with self._lock:
            return run_id in self._active

    def _start_run(
        self,
        plan: _Plan,
        parameters: Mapping[str, Any] | None,
        priority: TaskPriority,
        session_id: str | None,
        on_step: StepCallback | None,
        *,
        depth: int = 0,
        parent_run_id: str | None = None,
        previous: RunRecord | None = None,
        max_parallel: int | None = None,
        default_resources: Mapping[str, Any] | None = None,
    ) -> _Run:
        spec, dag = plan.spec, plan.dag
        given = previous.parameters if previous is not None else dict(parameters or {})
        params = {**spec.parameters, **given}
        for step_name, param, raw in plan.param_refs:
            if param not in params:
                raise InvalidInputError(
                    f"parameters.{param}",
                    f"required by step {step_name!r} ({{{{{raw}}}}}) and has no default; "
                    f"given: {', '.join(sorted(params)) or '(none)'}",
                )
        steps: dict[str, StepResult] = {}
        if previous is not None:  # a resumed run keeps its completed steps
            steps = {
                n: s for n, s in previous.steps.items() if n in dag.steps and s.status is TaskStatus.COMPLETED
            }
        lazy = not self._durable and on_step is None
        if not lazy:
            # A pending placeholder per step, in declaration order, only where the live record is read
            # while the run goes: a durable store saves it (an interrupted run lists every step) and
            # on_step callbacks get it. Otherwise a step enters the record when it ends and snapshots
            # fill in the rest: 10,000 placeholders were a tenth of a 10,000-step run.
            steps = {n: steps.get(n) or StepResult(name=n) for n in dag.steps}
        record = RunRecord(
            run_id=previous.run_id if previous is not None else uuid.uuid4().hex,
            workflow_name=spec.name,
            status=WorkflowStatus.RUNNING,
            parameters=params,
            steps=steps,
            session_id=previous.session_id if previous is not None else session_id,
            priority=priority,
            created_at=previous.created_at if previous is not None else utcnow(),
            started_at=utcnow(),
            parent_run_id=previous.parent_run_id if previous is not None else parent_run_id,
        )
        run = _Run(record, plan, params, priority, depth, on_step)
        run.lazy = lazy
        if max_parallel is not None:
            run.max_parallel = min(max_parallel, run.max_parallel or max_parallel)
        if default_resources:
            run.default_resources = dict(default_resources)
        unfinished = run.unfinished
        for name, parents in plan.parents.items():
            run.remaining[name] = len(unfinished.intersection(parents)) if parents else 0
        with self._lock:
            self._active[record.run_id] = run
        # Pending steps matter only to a durable store (recovery); any other gets them at the end.
        self.store.save_run(record if self._durable else record.model_copy(update={"steps": {}}))
        if self._listeners:
            self._emit(
                "run.started",
                {"run_id": record.run_id, "workflow_name": spec.name, "session_id": record.session_id},
            )
        if not run.unfinished:
            self._finish(run)
        else:
            first = [n for n in plan.order if n in run.unfinished and run.remaining[n] == 0]
            with self.orchestrator.batch():  # a wide first wave queues before workers start on it
                self._advance(run, first)
        return run

    # The run's state machine. Transitions happen under run.lock; scheduler calls and user
    # callbacks happen outside it.

    def _advance(self, run: _Run, ready: Iterable[str]) -> None:
        """Dispatch ``ready`` steps, finalising skipped/cancelled ones; iterative (no recursion)."""
        work = deque(ready)
        while work:
            name = work.popleft()
            status, reason, payload = self._decide(run, name)
            if status is TaskStatus.READY:
                work.extend(self._submit(run, name, payload))
                continue
            result = StepResult(name=name, status=status, skipped_reason=reason)
            if status is TaskStatus.FAILED:
                result.error = payload
            work.extend(self._complete_step(run, result))

    def _decide(self, run: _Run, name: str) -> tuple[TaskStatus, str | None, Any]:
        """READY with resolved parameters, or the final status of a step that will not run."""
        plan = run.plan
        step = plan.dag.steps[name]
        # No run.lock here: what is read was written under it by the parents' _complete_step calls,
        # all before the one that made this step ready, and a cancel that lands after this check is
        # seen by _submit, which registers the task before it reads run.cancelled again.
        if run.cancelled:
            return TaskStatus.CANCELLED, "run cancelled", None
        if run.blocked:
            for up in plan.parents[name]:
                if up in run.blocked:
                    return TaskStatus.SKIPPED, f"upstream step {up!r} did not complete", None
        for up in plan.needs_output[name]:
            if run.record.steps[up].status is not TaskStatus.COMPLETED:
                return TaskStatus.SKIPPED, f"uses the output of {up!r}, which did not complete", None
        condition = plan.conditions.get(name)
        if condition is None and name not in plan.templated:
            return TaskStatus.READY, None, step.parameters
        ctx = TemplateContext(
            params=run.params,
            steps=_StepView(run.record.steps, plan.dag.steps),
            run={"id": run.record.run_id, "workflow": run.record.workflow_name},
        )
        try:
            if condition is not None and not condition.evaluate(ctx):
                return TaskStatus.SKIPPED, f"run_if is false: {step.run_if}", None
            params = resolve(step.parameters, ctx) if name in plan.templated else step.parameters
        except OrchestrationError as exc:
            return TaskStatus.FAILED, None, ErrorInfo.from_exception(exc)
        return TaskStatus.READY, None, params

    def _submit(self, run: _Run, name: str, params: dict[str, Any]) -> list[str]:
        """Hand a ready step to the scheduler (or queue it under ``max_parallel``).

        Returns steps that became ready because submission failed outright.
        """
        limit = run.max_parallel
        if limit is not None:  # only a run with max_parallel counts its steps in flight
            with run.lock:
                if run.in_flight >= limit:
                    run.queue.append((name, params))
                    run.record.steps[name] = StepResult(name=name, status=TaskStatus.READY)
                    return []
                run.in_flight += 1
        step = run.plan.dag.steps[name]
        priority = run.plan.priorities.get(name, run.priority)
        try:
            call = _StepCall(self, run, name, self.registry.get(step.module, step.action).func, params)
            if self._durable and run.plan.parents[name]:
                call.mark = self.store.write_mark()
            task_id = self.orchestrator.submit(
                call,
                # The same step by name, for backends that run it in another process (workflow.run,
                # which needs this manager, is kept local by them); the local backend needs none.
                action=ActionCall(
                    step.module,
                    step.action,
                    params,
                    depth=run.depth,
                    extras=self._action_extras,
                    allow_code_execution=self.registry.allow_code_execution,
                )
                if self._remote
                else None,
                name=f"{run.record.workflow_name}.{name}",
                priority=priority,
                timeout=step.timeout,
                max_retries=step.max_retries,
                retry_delay=step.retry_delay,
                backoff=step.backoff,
                resources=step.resources or run.default_resources,
                run_id=run.record.run_id,
                step_name=name,
                # on_start, not the callable: a remote backend runs the action elsewhere, not ``call``.
                # A lazy run has nothing to do when a step starts unless listeners want step.started:
                # then no callback at all (it was an eighth of a no-op step's cost).
                on_start=None if run.lazy and not self._listeners else call.started,
                on_done=call.done,
                # Both callbacks copy the few fields they need at once: no TaskRecord snapshots.
                live_state=True,
            )
        except OrchestrationError as exc:
            result = StepResult(name=name, status=TaskStatus.FAILED, error=ErrorInfo.from_exception(exc))
            return self._complete_step(run, result, finished_task=True)
        # Without run.lock (one lock hand-off fewer per step among workers): _cancel sets
        # run.cancelled, then reads task_ids; this writes task_ids, then reads run.cancelled. Each
        # is one atomic operation, so at least one side sees the other and the task is cancelled.
        run.task_ids[name] = task_id
        if run.cancelled:
            self.orchestrator.cancel_task(task_id, "run cancelled")
        return []

    def _on_step_start(self, run: _Run, name: str, record: TaskState) -> None:
        attempt = record.attempts
        if run.lazy:  # called for the listeners alone (snapshots ask the scheduler what started)
            self._emit_started(run, name, attempt)
            return
        with run.lock:
            if name not in run.unfinished:  # cancelled between the scheduler's start and this call
                return
            result = run.record.steps[name]  # a placeholder (or a READY entry) for every step
            _mark_running(result, attempt, record)
            # Only this step's own attempts mutate this object, one after another, and the store
            # serialises what it is given at once: a copy is needed only for the on_step callback.
            snapshot = result.model_copy() if run.on_step is not None else result
        if self._durable:  # else only outcomes are kept: live runs are read from memory
            self.store.save_step(run.record.run_id, snapshot)
        self._emit_started(run, name, attempt)
        self._notify_step(run, snapshot)

    def _emit_started(self, run: _Run, name: str, attempt: int) -> None:
        if self._listeners:
            event = "step.retried" if attempt > 1 else "step.started"
            self._emit(event, {"run_id": run.record.run_id, "step": name, "attempt": attempt})

    def _on_step_done(self, run: _Run, name: str, record: TaskState) -> None:
        result = StepResult(
            name=name,
            status=record.status,
            output=record.result if record.status is TaskStatus.COMPLETED else None,
            error=record.error,
            attempts=record.attempts,
            started_at=record.started_at,
            finished_at=record.finished_at or utcnow(),
            duration_seconds=record.duration_seconds,
        )
        self._advance(run, self._complete_step(run, result, finished_task=True))

    def _complete_step(self, run: _Run, result: StepResult, *, finished_task: bool = False) -> list[str]:
        """Record a final step result; return the steps it made ready. Finishes the run when done."""
        name = result.name
        plan = run.plan
        ready: list[str] = []
        requeued: list[tuple[str, dict[str, Any]]] = []
        with run.lock:
            if finished_task and run.max_parallel is not None:
                run.in_flight -= 1
                if run.queue and not run.cancelled:
                    requeued.append(run.queue.popleft())
            if name not in run.unfinished:
                return ready
            run.unfinished.discard(name)
            run.record.steps[name] = result
            if result.status in _FAILED and plan.dag.steps[name].required:
                run.blocked.add(name)
            elif result.status is TaskStatus.SKIPPED and any(up in run.blocked for up in plan.parents[name]):
                run.blocked.add(name)
            for down in plan.children[name]:
                run.remaining[down] -= 1
                if run.remaining[down] == 0 and down in run.unfinished:
                    ready.append(down)
            finished = not run.unfinished
        if self._durable:  # a store that dies with the process gets every step once, at the end
            self.store.save_step(run.record.run_id, result)
            if ready and result.status is TaskStatus.COMPLETED:
                # A step's result is durable before anything that depends on it starts (after a
                # crash, resume never re-runs a step whose dependents already ran): each dependent
                # flushes up to its write mark when it starts. Here the result is committed at once
                # unless another worker is committing: that one commit serves them all, and no
                # worker waits for another's commit.
                self._flush(wait=False)
        if self._listeners:
            self._emit(
                _STEP_EVENTS.get(result.status, "step.failed"),
                {
                    "run_id": run.record.run_id,
                    "step": name,
                    "status": result.status.value,
                    "duration_seconds": result.duration_seconds,
                },
            )
        self._notify_step(run, result)
        for queued_name, params in requeued:
            ready.extend(self._submit(run, queued_name, params))
        if finished:
            self._finish(run)
        return ready

    def _flush(self, upto: int | None = None, *, wait: bool = True) -> None:
        try:
            self.store.flush(upto=upto, wait=wait)
        except OrchestrationError as exc:
            # The run goes on in memory; health reports the store. Losing durability must not
            # also lose the run.
            _log.error("state store flush failed", error=str(exc))

    def _notify_step(self, run: _Run, result: StepResult) -> None:
        if run.on_step is None:
            return
        try:
            run.on_step(run.record, result)
        except Exception:
            _log.exception("on_step callback failed", run_id=run.record.run_id, step=result.name)

    def _finish(self, run: _Run) -> None:
        with run.lock:
            if run.final is not None:
                return
            record = run.record
            specs = run.plan.dag.steps
            # In declaration order (steps enter a run's record as they start or end).
            steps = {n: record.steps[n] for n in specs}
            failed = [n for n, s in steps.items() if s.status in _FAILED and specs[n].required]
            if run.cancelled:
                record.status = WorkflowStatus.CANCELLED
                record.error = "run cancelled"
            elif failed:
                record.status = WorkflowStatus.FAILED
                details = []
                for n in failed:
                    err = steps[n].error
                    details.append(f"{n} ({err.message if err else steps[n].status.value})")
                record.error = "failed steps: " + "; ".join(details)
            else:
                record.status = WorkflowStatus.COMPLETED
                record.error = None
            record.failed_steps = failed
            record.finished_at = utcnow()
            record.duration_seconds = round(time.monotonic() - run.start_mono, 6)
            final = record.model_copy(update={"steps": steps})
            run.final = final
            watchers, run.watchers = run.watchers, []
        # In a durable store every step's final result was saved by _complete_step; save_run upserts,
        # so the run row alone is rewritten here instead of serialising every step a second time.
        # Any other store gets the steps now, before the run stops being served from memory.
        self.store.save_run(final.model_copy(update={"steps": {}}) if self._durable else final)
        self._flush()
        with self._lock:
            self._active.pop(final.run_id, None)
            self._subruns.pop(final.run_id, None)
        run.done.set()
        for fn in watchers:
            fn()
        self._emit(
            _RUN_EVENTS.get(final.status, "run.failed"),
            {
                "run_id": final.run_id,
                "workflow_name": final.workflow_name,
                "session_id": final.session_id,
                "status": final.status.value,
                "failed_steps": final.failed_steps,
                "duration_seconds": final.duration_seconds,
            },
        )

    def _snapshot(self, run: _Run) -> RunRecord:
        with run.lock:
            if run.final is not None:
                return run.final.model_copy()
            steps = run.record.steps
            started: dict[str, tuple[int, datetime | None]] = {}
            if run.lazy:
                # Steps enter a lazy run's record when they end: the scheduler knows which of the
                # others have started (a step that ended but is not recorded yet still reads running).
                # Under run.lock, so that no result is recorded meanwhile; the scheduler never takes
                # a run's lock while holding its own.
                # dict() copies in one step: _submit adds task ids without run.lock.
                in_flight = {
                    task_id: n
                    for n, task_id in dict(run.task_ids).items()
                    if (s := steps.get(n)) is None or not s.status.is_terminal
                }
                started = {
                    in_flight[task_id]: state
                    for task_id, state in self.orchestrator.started_attempts(in_flight).items()
                }
            out: dict[str, StepResult] = {}
            for n in run.plan.dag.steps:
                state = started.get(n)
                if state is not None:
                    attempts, started_at = state
                    out[n] = StepResult(
                        name=n, status=TaskStatus.RUNNING, attempts=attempts, started_at=started_at
                    )
                elif (s := steps.get(n)) is not None:
                    out[n] = s.model_copy()
                else:
                    out[n] = StepResult(name=n)
            return run.record.model_copy(update={"steps": out})

    def _wait(self, run: _Run, timeout: float | None) -> RunRecord:
        run.done.wait(timeout)
        return self._snapshot(run)

    def _count_subrun(self, parent_run_id: str | None) -> None:
        """Bound the sub-runs under one top-level run: depth alone lets a workflow whose steps each
        run it again multiply (10 steps, 8 levels: 10**8 runs)."""
        with self._lock:
            root = parent_run_id
            while root is not None and root in self._active:
                parent = self._active[root].record.parent_run_id
                if parent is None:
                    break
                root = parent
            if root is None:
                return
            count = self._subruns.get(root, 0) + 1
            if count > self.max_subworkflow_runs:
                raise LimitExceededError(
                    "parameters.workflow",
                    self.max_subworkflow_runs,
                    count,
                    f"the number of sub-workflow runs under run {root}",
                )
            self._subruns[root] = count

    def _run_child(self, name: str, parameters: dict[str, Any], *, ctx: ActionContext) -> dict[str, Any]:
        """``workflow.run``: a sub-run that ends with its step (cancelled when the step is)."""
        if ctx.depth + 1 > self.max_subworkflow_depth:
            raise LimitExceededError(
                "parameters.workflow", self.max_subworkflow_depth, ctx.depth + 1, "the sub-workflow depth"
            )
        self._count_subrun(ctx.run_id)
        child = self._start_run(
            self._plan(name),
            parameters,
            TaskPriority.NORMAL,
            None,
            None,
            depth=ctx.depth + 1,
            parent_run_id=ctx.run_id,
        )
        wake = threading.Event()
        with child.lock:
            if child.final is None:
                child.watchers.append(wake.set)
            else:
                wake.set()
        remove = ctx.on_cancel(wake.set)
        try:
            with ctx.blocking():
                wake.wait(ctx.remaining())
        finally:
            remove()
        if not child.done.is_set():
            self._cancel(child)
            child.done.wait(10.0)
            ctx.check_cancelled()
        record = self._snapshot(child)
        if record.status is not WorkflowStatus.COMPLETED:
            raise StepFailedError(
                ctx.step_name,
                f"sub-workflow {name!r} (run {record.run_id}) {record.status.value}: {record.error}",
            )
        return {"run_id": record.run_id, "outputs": record.outputs()}

    def _cancel(self, run: _Run) -> None:
        with run.lock:
            if run.cancelled or run.final is not None:
                return
            run.cancelled = True
            task_ids = list(run.task_ids.values())
            run.queue.clear()
            never_submitted = [n for n in run.plan.order if n in run.unfinished and n not in run.task_ids]
        for task_id in task_ids:
            self.orchestrator.cancel_task(task_id, "run cancelled")
        for n in never_submitted:
            self._complete_step(
                run, StepResult(name=n, status=TaskStatus.CANCELLED, skipped_reason="run cancelled")
            )

    def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel an active run: queued steps never start, running steps are stopped.

        Raises:
            RunNotFoundError: unknown run id.
            InvalidStateError: the run already ended.
        """
        with self._lock:
            run = self._active.get(run_id)
        if run is None:
            record = self.get_run(run_id)
            raise InvalidStateError("run", run_id, record.status.value, "only a running run can be cancelled")
        self._cancel(run)
        return self._wait(run, 10.0)

    def wait_run(self, run_id: str, timeout: float | None) -> RunRecord:
        """Wait up to ``timeout`` seconds for a run; returns the record as it stands then."""
        with self._lock:
            run = self._active.get(run_id)
        if run is None:
            return self.get_run(run_id)
        return self._wait(run, timeout)

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            run = self._active.get(run_id)
        if run is not None:
            return self._snapshot(run)
        record = self.store.get_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id)
        return record

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: WorkflowStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest first (active runs as they stand)."""
        with self._lock:
            active = list(self._active.values())
        records = {
            r.run_id: r for r in self.store.list_runs(workflow_name=workflow_name, status=status, limit=limit)
        }
        for run in active:
            snap = self._snapshot(run)
            if (workflow_name is None or snap.workflow_name == workflow_name) and (
                status is None or snap.status is status
            ):
                records[snap.run_id] = snap
        ordered = sorted(records.values(), key=lambda r: r.created_at, reverse=True)
        return ordered[:limit]

    def active_run_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def resume_run(
        self,
        run_id: str,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_step: StepCallback | None = None,
    ) -> RunRecord:
        """Re-execute the steps of an ended run that had not COMPLETED, reusing completed outputs.

        Raises:
            InvalidStateError: the run is still active or completed.
        """
        with self._lock:
            if run_id in self._active:
                raise InvalidStateError("run", run_id, "running", "wait for it or cancel it before resuming")
        previous = self.get_run(run_id)
        if previous.status is WorkflowStatus.COMPLETED:
            raise InvalidStateError("run", run_id, "completed", "there is nothing to resume")
        run = self._start_run(
            self._plan(previous.workflow_name), None, previous.priority, None, on_step, previous=previous
        )
        if not wait:
            return self._snapshot(run)
        return self._wait(run, timeout)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            active = list(self._active.values())
            registered = len(self._workflows)
            by_source: dict[str, int] = {}
            for _spec, source, _path in self._workflows.values():
                by_source[source] = by_source.get(source, 0) + 1
        steps: dict[str, int] = {}
        for run in active:
            with run.lock:
                for s in run.record.steps.values():
                    steps[s.status.value] = steps.get(s.status.value, 0) + 1
        return {
            "workflows_registered": registered,
            "workflows_by_source": by_source,
            "active_runs": len(active),
            "active_steps_by_status": steps,
            "load_errors": [{"path": p, "reason": r} for p, r in self.load_errors],
            "refused_by_policy": self.refused_workflows(),
        }

    def shutdown(self, *, cancel_running: bool = True) -> None:
        """Cancel active runs (they end CANCELLED) and flush the store."""
        if cancel_running:
            with self._lock:
                active = list(self._active.values())
            for run in active:
                self._cancel(run)
        self._flush()  # a broken store is logged (and reported by health), never raised from shutdown
