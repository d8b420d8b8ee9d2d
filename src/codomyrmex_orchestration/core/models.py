"""Pydantic specs and records shared by every part of the core: steps, workflows, tasks and runs.

Specs are what callers write (validated, ``extra="forbid"`` so a misspelt field is named in the error;
their numbers and booleans are strict, as the tools' arguments are: ``"5"`` for a number, ``"true"`` for
a boolean and ``2.0`` for a count are refused, naming the field, never converted); records are what
the engine reports (JSON-serialisable with ``model_dump(mode="json")``).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from codomyrmex_orchestration._redact import redact_text
from codomyrmex_orchestration._text import readable
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = [
    "MAX_BACKOFF",
    "MAX_RETRIES",
    "MAX_RETRY_DELAY",
    "NAME_PATTERN",
    "WORKFLOW_FIELD_NAMES",
    "ErrorInfo",
    "InputRequest",
    "ItemResult",
    "ItemWindow",
    "MapItems",
    "RunRecord",
    "StepCacheSpec",
    "StepResult",
    "StepSpec",
    "TaskPriority",
    "TaskRecord",
    "TaskSpec",
    "TaskStatus",
    "WorkflowInfo",
    "WorkflowSpec",
    "WorkflowStatus",
    "parse_priority",
    "trusted",
    "utcnow",
]

#: Workflow and step names: 1-128 letters, digits, ``-``, ``_``, ``.``.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
_NAME_RE = re.compile(NAME_PATTERN)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every record stores)."""
    return datetime.now(UTC)


class TaskPriority(enum.IntEnum):
    """Five priority levels; lower value runs first (the original's values)."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


def parse_priority(value: object) -> TaskPriority:
    """Accept a ``TaskPriority``, its int value, or its name in any case (``"high"``)."""
    if isinstance(value, TaskPriority):
        return value
    if isinstance(value, bool):
        raise ValueError("priority must be one of critical, high, normal, low, background (or 0-4)")
    if isinstance(value, int):
        try:
            return TaskPriority(value)
        except ValueError:
            pass
    if isinstance(value, str):
        try:
            return TaskPriority[value.strip().upper()]
        except KeyError:
            pass
        if value.strip().isdigit():  # a level in quotes: strict, as every number of a definition is
            raise ValueError(
                f"expected one of critical, high, normal, low, background or a number 0-4, got the string "
                f'"{value}" (write {value.strip()}, without the quotes, or the level\'s name)'
            )
    raise ValueError(f"priority {value!r} is not one of critical, high, normal, low, background (or 0-4)")


Priority = Annotated[TaskPriority, BeforeValidator(parse_priority)]
#: Any JSON value, with a schema that says so (a schema that accepts anything is what portability checks
#: warn about, and clients generating types from it get nothing).
JsonItem = Annotated[
    Any,
    WithJsonSchema(
        {"anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean", "null")]}
    ),
]


class TaskStatus(enum.StrEnum):
    """Lifecycle of a task or workflow step. INTERRUPTED: a step (or map item) that was running when its
    process died, as recovery marks it in the store; a resume runs it again (a task never ends so)."""

    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_TASK


_TERMINAL_TASK = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.SKIPPED,
        TaskStatus.TIMED_OUT,
        TaskStatus.INTERRUPTED,
    }
)


class WorkflowStatus(enum.StrEnum):
    """Lifecycle of a workflow run. INTERRUPTED: the process died while the run was RUNNING.
    WAITING_FOR_INPUT: running, with at least one step waiting for a person's answer (``core.approve``)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_INPUT = "waiting_for_input"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in {
            WorkflowStatus.COMPLETED,
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELLED,
            WorkflowStatus.INTERRUPTED,
        }


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=False, defer_build=True)


class _Record(BaseModel):
    """What the engine reports. ``defer_build``: a record's validator is built on its first use, not at
    import (a server answers ``tools/list`` without any run record; issue 23). pydantic >= 2.14 builds a
    deferred model once, under its rebuild lock, when threads race to the first use."""

    model_config = ConfigDict(defer_build=True)


ResourceAmount = float | int | str


#: The ranges of the retry settings, of a workflow step as of any task (``TaskOrchestrator.submit``).
MAX_RETRIES = 100
MAX_RETRY_DELAY = 3600
MAX_BACKOFF = 10.0


class _Retryable(_Spec):
    """Execution knobs shared by a workflow step and a single task."""

    timeout: float | None = Field(
        default=None, gt=0, strict=True, description="Seconds before the step is stopped."
    )
    max_retries: int = Field(
        default=0, ge=0, le=MAX_RETRIES, strict=True, description="Extra attempts after a failure."
    )
    retry_delay: float = Field(
        default=0.0, ge=0, le=MAX_RETRY_DELAY, strict=True, description="Seconds before the first retry."
    )
    backoff: float = Field(
        default=2.0, ge=1.0, le=MAX_BACKOFF, strict=True, description="Delay multiplier per further retry."
    )
    priority: Priority = Field(default=TaskPriority.NORMAL)
    resources: dict[str, ResourceAmount] = Field(
        default_factory=dict,
        description='Resources held while running, e.g. {"compute": 1, "memory": "256MB"}.',
    )

    def retry_delay_for(self, attempt: int) -> float:
        """Delay before attempt number ``attempt + 1`` (``attempt`` >= 1 is the one that failed)."""
        return float(self.retry_delay * (self.backoff ** max(0, attempt - 1)))


#: The longest a cached step output may be kept: one year.
MAX_CACHE_TTL_SECONDS = 365 * 24 * 3600
#: Most levels of objects and lists in a workflow's or a step's ``parameters`` (the object itself is the
#: first) and in a step's ``for_each``, and what templating resolves (``templating.MAX_NESTING`` is this),
#: far from the recursion limits of Python and pydantic that deeper values run into when stored.
MAX_PARAMETER_NESTING = 200


def _nesting(value: Any, limit: int) -> int:
    """Levels of objects and lists in ``value`` (a scalar has 0), counted no further than ``limit + 1``;
    iterative, so any depth is measured without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _shallow(value: Any) -> Any:
    if _nesting(value, MAX_PARAMETER_NESTING) > MAX_PARAMETER_NESTING:
        raise ValueError(
            f"nested deeper than {MAX_PARAMETER_NESTING} levels of objects and lists; flatten it, "
            "or pass the deep part as a JSON string"
        )
    return value


class StepCacheSpec(_Spec):
    """A step's cache: its output is reused, without running the action, by a later run of the same
    definition version with the same resolved parameters, for ``ttl_seconds``."""

    ttl_seconds: float = Field(
        gt=0,
        le=MAX_CACHE_TTL_SECONDS,
        strict=True,
        description="Seconds a cached output stays usable (at most a year).",
    )


class StepSpec(_Retryable):
    """One step of a workflow: run ``module.action`` with ``parameters`` after ``dependencies``."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique within the workflow.")
    module: str = Field(min_length=1, max_length=128)
    action: str = Field(min_length=1, max_length=128)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list)
    run_if: str | None = Field(default=None, max_length=4096, description="Condition; false -> SKIPPED.")
    required: bool = Field(
        default=True,
        strict=True,
        description="A failing non-required step does not fail the run nor skip dependents "
        "that do not reference its output.",
    )
    for_each: list[JsonItem] | str | None = Field(
        default=None,
        description="Run the action once per item of this list (or of the list this {{...}} names); "
        "{{item}} and {{index}} are available in parameters and run_if.",
    )
    max_parallel: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        strict=True,
        description="With for_each: most items in flight at once.",
    )
    cache: StepCacheSpec | None = Field(
        default=None, description='Reuse the output of an identical earlier call: {"ttl_seconds": 600}.'
    )

    @field_validator("dependencies")
    @classmethod
    def _deps_are_strings(cls, value: list[str]) -> list[str]:
        for dep in value:
            if not dep:
                raise ValueError("dependency names must be non-empty step names")
        return value

    _shallow_parameters = field_validator("parameters", "for_each", mode="before")(_shallow)


class WorkflowSpec(_Spec):
    """A named DAG of steps. ``parameters`` holds defaults for ``{{params.x}}`` references."""

    name: str = Field(pattern=NAME_PATTERN, description="1-128 letters, digits, '-', '_', '.'.")
    description: str = Field(default="", max_length=10_000)
    steps: list[StepSpec] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    max_parallel: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        strict=True,
        description="Most steps of one run in flight at once (default: no bound).",
    )
    version: str = Field(
        default="1",
        max_length=64,
        description="A free-form label of yours (e.g. '2.1'). Not the definition version: the server numbers "
        "each registered change of a workflow itself (get_workflow's version, which runs are pinned to).",
    )

    _shallow_parameters = field_validator("parameters", mode="before")(_shallow)


#: Every field name a workflow document may use (workflow and step), for "did you mean" on a misspelt one.
WORKFLOW_FIELD_NAMES = tuple(dict.fromkeys([*WorkflowSpec.model_fields, *StepSpec.model_fields]))


class WorkflowInfo(_Record):
    """A line of ``list_workflows``."""

    name: str
    description: str
    steps_count: int
    source: str  # "sample" | "config" | "api" | "project"
    path: str | None = None
    #: The definition's version: grows by one per name whenever its content changes.
    version: int | None = None
    #: The content hash of the definition (equal content, equal hash).
    digest: str | None = None
    #: Why the server's policy refuses to run it (the setting that allows it), or None when it can run.
    refused: str | None = None


class TaskSpec(_Retryable):
    """A single task: one action run through the scheduler outside any workflow."""

    name: str = Field(min_length=1, max_length=128)
    module: str = Field(min_length=1, max_length=128)
    action: str = Field(min_length=1, max_length=128)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list, description="Task ids that must complete first.")


class ErrorInfo(_Record):
    """Why a step or task did not complete."""

    message: str
    type: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        # Messages quote stderr, URLs and values: secrets must not reach the record (see _redact), nor
        # text JSON cannot carry (a file name that is not UTF-8: see _text).
        message = readable(redact_text(str(exc) or type(exc).__name__))
        return cls(message=message, type=type(exc).__name__)


class ItemResult(_Record):
    """The state of one item of a map step (a step with ``for_each``)."""

    index: int
    status: TaskStatus = TaskStatus.PENDING
    output: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    skipped_reason: str | None = None


class MapItems(_Record):
    """The items of a map step: how many, how many in each status, and each one's result."""

    total: int
    counts: dict[str, int] = Field(default_factory=dict)
    #: The step's ``required``: False makes the output ``{"outputs": [...], "failed": [...]}``.
    required: bool = True
    items: list[ItemResult] = Field(default_factory=list)


class ItemWindow:
    """Which items of each map step a run record lists (``WorkflowManager.get_run(run_id, items=...)``):
    the counts still cover every item, and only the window's items are built, so a page of a
    100,000-item run costs what its items do.

    Args:
        offset: the position of the first item listed, among the items in ``statuses``.
        limit: the most items listed per map step (0: the counts alone).
        statuses: list only the items in these statuses (``TaskStatus`` or their values, such as
            ``["failed", "timed_out"]``); None: every item.

    Raises:
        InvalidInputError: a negative ``offset`` or ``limit``, or ``statuses`` empty or naming an
            unknown status (the accepted ones are listed).
    """

    __slots__ = ("limit", "offset", "statuses")

    def __init__(
        self, offset: int = 0, limit: int = 100, statuses: Iterable[TaskStatus | str] | None = None
    ) -> None:
        for name, value in (("offset", offset), ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(name, f"a whole number of items, 0 or more; got {value!r}")
        self.offset, self.limit = offset, limit
        self.statuses: frozenset[TaskStatus] | None = None
        if statuses is not None:
            given = [statuses] if isinstance(statuses, str) else list(statuses)
            known = {s.value for s in TaskStatus}
            unknown = [s for s in given if s not in known]
            if not given or unknown:
                raise InvalidInputError(
                    "statuses",
                    f"{'unknown status ' + repr(unknown[0]) if unknown else 'an empty list'}; give one or "
                    f"more of {', '.join(sorted(known))} (or None for every item)",
                )
            self.statuses = frozenset(TaskStatus(s) for s in given)

    def __repr__(self) -> str:
        wanted = None if self.statuses is None else sorted(s.value for s in self.statuses)
        return f"ItemWindow(offset={self.offset}, limit={self.limit}, statuses={wanted})"


class StepResult(_Record):
    """The state of one step within a run."""

    name: str
    status: TaskStatus = TaskStatus.PENDING
    output: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    skipped_reason: str | None = None
    #: The output was taken from the step cache: the action was not called (``attempts`` is 0).
    cached: bool = False
    #: A map step's items (None for any other step, and for a map step not expanded yet).
    items: MapItems | None = None


class InputRequest(_Record):
    """A question a run is waiting on: the ``core.approve`` step ``step`` of run ``run_id`` asks ``message``
    and expects an answer fitting ``requested_schema`` (a flat object schema, or None for a plain
    yes/no)."""

    step: str
    message: str
    requested_schema: dict[str, Any] | None = None
    asked_at: datetime
    #: The run whose step asks: the run itself, or one of its sub-runs (``workflow.run``), whose question
    #: the parent run waits on and lists too (None in records saved before it was recorded).
    run_id: str | None = None
    #: When an unanswered question fails its step (None: it waits without limit).
    deadline: datetime | None = None


class RunRecord(_Record):
    """A workflow run: its status and every step's result."""

    run_id: str
    workflow_name: str
    status: WorkflowStatus = WorkflowStatus.PENDING
    parameters: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepResult] = Field(default_factory=dict)
    session_id: str | None = None
    priority: TaskPriority = TaskPriority.NORMAL
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    failed_steps: list[str] = Field(default_factory=list)
    error: str | None = None
    parent_run_id: str | None = None
    #: The step of the parent run that started this sub-run (``step[index]`` for an item of a map step):
    #: resuming the parent resumes this run for that step instead of starting another.
    parent_step: str | None = None
    #: The definition version the run started with (resume continues with it); None for runs recorded
    #: before definitions had versions.
    workflow_version: int | None = None
    #: The content hash of that definition.
    workflow_digest: str | None = None
    #: The questions the run is waiting on (status ``waiting_for_input``); answer with respond_to_run.
    pending_inputs: list[InputRequest] = Field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status is WorkflowStatus.COMPLETED

    def outputs(self) -> dict[str, Any]:
        """Outputs of the completed steps, by step name."""
        return {n: s.output for n, s in self.steps.items() if s.status is TaskStatus.COMPLETED}


class TaskRecord(_Record):
    """A task known to the scheduler (a single task or a workflow step)."""

    task_id: str
    name: str
    status: TaskStatus = TaskStatus.PENDING
    priority: TaskPriority = TaskPriority.NORMAL
    result: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    dependencies: list[str] = Field(default_factory=list)
    run_id: str | None = None
    step_name: str | None = None
    submitted_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None


_M = TypeVar("_M", bound=BaseModel)
# What model_construct sets a model's attributes with (BaseModel.__setattr__ would validate).
_set = object.__setattr__


def trusted(model: type[_M], fields: dict[str, Any], fields_set: set[str]) -> _M:
    """A record from values the engine made itself (a step's or an item's result), without validating
    them again: what ``model_construct`` does, without its per-field search for aliases and defaults.

    ``fields`` must hold every field of ``model``, each of its declared type. ``fields_set`` may be one
    set shared by many records when it names every field: a set of its own costs a record more than
    the rest of it, and assigning a field adds a name it holds already.
    """
    record = model.__new__(model)
    _set(record, "__dict__", fields)
    _set(record, "__pydantic_fields_set__", fields_set)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


def monotonic() -> float:
    """Monotonic seconds, for deadlines and durations (never wall time)."""
    return time.monotonic()


def check_name(name: str) -> bool:
    """True when ``name`` is an acceptable workflow/step name."""
    return bool(_NAME_RE.match(name))
