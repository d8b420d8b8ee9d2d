"""Pydantic argument and result models of the MCP tools: they validate calls and generate the schemas."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

# From the types module, not core.resources: the tool schemas need the model, not the resource ledger.
from codomyrmex_orchestration.core._resource_types import MAX_TTL_SECONDS, Allocation
from codomyrmex_orchestration.core._sessions import MAX_SESSION_TIMEOUT_SECONDS, ClosedSession, Session
from codomyrmex_orchestration.core.models import (
    NAME_PATTERN,
    ErrorInfo,
    MapItems,
    RunRecord,
    StepResult,
    StepSpec,
    WorkflowInfo,
    WorkflowSpec,
)

#: How long a waiting call blocks before it returns the run handle (below common 60 s client timeouts).
DEFAULT_WAIT_SECONDS = 50.0
MAX_WAIT_SECONDS = 3600.0

PROJECT_TYPES = (
    "ai_analysis",
    "web_application",
    "data_pipeline",
    "ml_model",
    "documentation",
    "research",
    "custom",
)
ProjectTypeName = Literal[
    "ai_analysis", "web_application", "data_pipeline", "ml_model", "documentation", "research", "custom"
]
PriorityName = Literal["critical", "high", "normal", "low", "background"]
RunStatusName = Literal[
    "pending", "running", "waiting_for_input", "completed", "failed", "cancelled", "interrupted"
]
ItemStatusName = Literal[
    "pending",
    "ready",
    "running",
    "completed",
    "failed",
    "cancelled",
    "blocked",
    "skipped",
    "timed_out",
    "interrupted",
]
#: Items of each map step a run record lists unless get_workflow_run asks for another page, and the most
#: one page lists (a 100,000-item step's record would otherwise be megabytes: every item, and its output).
DEFAULT_ITEMS_LIMIT = 100
MAX_ITEMS_LIMIT = 1000
ResourceAmount = float | int | str


class Args(BaseModel):
    """Base of every tool's arguments: strict types, unknown fields refused (named in the error).

    ``defer_build``: a model's validator is built on its first use, not at import, so a server answers
    ``tools/list`` (from cached schemas, see ``_tool_cache``) without building the models of every tool.
    """

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


def _name(description: str) -> Any:
    return Field(pattern=NAME_PATTERN, description=description)


def _workflow_field(name: str) -> Any:
    """A field of the workflow format as ``WorkflowSpec`` defines it (type bounds, default, description),
    so that the tools take it with the meaning a workflow file gives it."""
    return copy.copy(WorkflowSpec.model_fields[name])


_WAIT = Field(
    default=True, description="Wait for the result (up to timeout_seconds) instead of returning at once."
)
_USE_CACHE = Field(
    default=True,
    description="false: steps with a cache run anyway, and their fresh outputs replace the cached ones.",
)
_TIMEOUT = Field(
    default=DEFAULT_WAIT_SECONDS,
    gt=0,
    le=MAX_WAIT_SECONDS,
    description="Seconds to wait before returning the handle with status 'running' (the work goes on).",
)


# --------------------------------------------------------------------------- arguments


class NoArgs(Args):
    pass


class ExecuteWorkflowArgs(Args):
    workflow_name: str = _name("Name of a registered workflow (see list_workflows).")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Values for {{params.x}} references; override the defaults. A name the workflow neither "
        "declares nor references is refused.",
    )
    session_id: str | None = Field(default=None, description="Run inside this session (see create_session).")
    wait: bool = _WAIT
    timeout_seconds: float = _TIMEOUT
    use_cache: bool = _USE_CACHE


class CreateWorkflowArgs(Args):
    name: str = _name("Workflow name: 1-128 letters, digits, '-', '_', '.'.")
    steps: list[StepSpec] = Field(min_length=1, description="The steps; see the workflow_step_format prompt.")
    description: str = Field(default="", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Defaults for {{params.x}}.")
    max_parallel: int | None = _workflow_field("max_parallel")
    version: str = _workflow_field("version")
    overwrite: bool = Field(default=False, description="Replace an existing workflow of the same name.")


class CreateProjectArgs(Args):
    name: str = Field(
        min_length=1,
        max_length=128,
        description="Project folder name: at most the template's max_project_name characters "
        "(list_project_templates), 128 less its longest '.<workflow>'.",
    )
    # Any template the project manager knows, checked by it (an unknown name lists the known ones): the
    # packaged ones and those in <templates_dir>/projects/, which a Literal here could not name.
    template: str = Field(
        default="ai_analysis",
        min_length=1,
        max_length=64,
        description="A template name, as list_project_templates lists them: the packaged "
        + ", ".join(PROJECT_TYPES)
        + ", or one of your own in <data dir>/config/templates/projects/<name>.json.",
        examples=list(PROJECT_TYPES),
    )
    description: str = Field(default="", max_length=10_000)
    owner: str = Field(default="", max_length=256)
    overwrite_workflows: bool = Field(
        default=False,
        description="Replace registered workflows named '<name>.<workflow>' (else a name clash is an error).",
    )


class ListProjectsArgs(Args):
    status: Literal["planning", "active", "paused", "completed", "archived", "failed"] | None = None
    type: ProjectTypeName | None = None


class ExecuteTaskArgs(Args):
    name: str = Field(min_length=1, max_length=128, description="A label for the task.")
    module: str = Field(min_length=1, max_length=128, description="Action module, e.g. 'core'.")
    action: str = Field(min_length=1, max_length=128, description="Action name, e.g. 'echo'.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: PriorityName = "normal"
    dependencies: list[str] = Field(default_factory=list, description="Task ids that must complete first.")
    resources: dict[str, ResourceAmount] = Field(default_factory=dict)
    # The task's own knobs, named and bounded as a workflow step's (models._Retryable): ``timeout`` stops
    # an attempt, ``timeout_seconds`` only bounds how long this call waits for the result.
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds each attempt may run before it is stopped (status timed_out), as a step's "
        "timeout; not the wait (timeout_seconds). Default: no limit.",
    )
    max_retries: int = Field(
        default=0, ge=0, le=100, description="Extra attempts after a failure or timeout."
    )
    retry_delay: float = Field(default=0.0, ge=0, le=3600, description="Seconds before the first retry.")
    backoff: float = Field(default=2.0, ge=1.0, le=10.0, description="Delay multiplier per further retry.")
    session_id: str | None = Field(
        default=None,
        description="Run inside this session (see create_session): counted against its max_parallel_tasks, "
        "cancelled by close_session with cancel_running.",
    )
    timeout_seconds: float = _TIMEOUT
    wait: bool = _WAIT


class AllocateResourcesArgs(Args):
    user_id: str = Field(min_length=1, max_length=256, description="Who holds the allocation.")
    requirements: dict[str, ResourceAmount] = Field(
        min_length=1,
        description='Resource -> amount, e.g. {"compute": 2, "memory": "512MB"}; keys compute/cpu, '
        "memory, storage/disk, network or a resource id.",
    )
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_SECONDS,
        allow_inf_nan=False,
        description="Release automatically after this many seconds (at most 365 days).",
    )
    session_id: str | None = None


class ComplexWorkflowDefinition(Args):
    """The workflow format without its name (the tool's ``name``), plus a dependencies map."""

    steps: list[StepSpec] = Field(min_length=1)
    dependencies: dict[str, list[str]] = Field(
        default_factory=dict, description="Step name -> names of the steps it waits for."
    )
    description: str = _workflow_field("description")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Defaults for {{params.x}} (the tool's parameters override them)."
    )
    max_parallel: int | None = _workflow_field("max_parallel")
    version: str = _workflow_field("version")


class CreateComplexWorkflowArgs(Args):
    name: str = _name("Name to register the workflow under.")
    workflow_definition: ComplexWorkflowDefinition
    parameters: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = None
    wait: bool = _WAIT
    timeout_seconds: float = _TIMEOUT
    use_cache: bool = _USE_CACHE
    overwrite: bool = Field(
        default=False,
        description="Replace an existing workflow of the same name whose steps differ (the same definition "
        "is reused as it is).",
    )


class RunIdArgs(Args):
    run_id: str = Field(min_length=1, max_length=128, description="A run_id returned by execute_workflow.")


class GetRunArgs(RunIdArgs):
    items_offset: int = Field(
        default=0,
        ge=0,
        description="Each map step lists its items from this position on (among those of items_status, if "
        "given): a page's next_offset.",
    )
    items_limit: int = Field(
        default=DEFAULT_ITEMS_LIMIT,
        ge=0,
        le=MAX_ITEMS_LIMIT,
        description="The most items each map step lists (0: only its counts); a page of large items stops "
        "sooner.",
    )
    items_status: list[ItemStatusName] | None = Field(
        default=None,
        min_length=1,
        description='List only the items in these statuses, e.g. ["failed", "timed_out"].',
    )
    step: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Also read this step's output (with item: that item's), a page of its JSON text: for an "
        'output a record shows as {"omitted": ...}.',
    )
    item: int | None = Field(default=None, ge=0, description="With step (a map step): the item's index.")
    parameter: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Also read this run parameter, a page of its JSON text (instead of step).",
    )
    value_offset: int = Field(
        default=0,
        ge=0,
        description="With step or parameter: the page's first character (a page's next_offset).",
    )


class RespondArgs(Args):
    run_id: str = Field(min_length=1, max_length=128, description="The run waiting for input.")
    step: str = Field(min_length=1, max_length=128, description="The core.approve step to answer.")
    action: Literal["accept", "decline", "cancel"] = Field(
        description="accept completes the step (with content); decline and cancel fail it."
    )
    content: dict[str, Any] | None = Field(
        default=None,
        description="With accept: the answer, fitting the question's schema (get_workflow_run shows it in "
        "pending_inputs[].requested_schema).",
    )
    wait: bool = _WAIT
    timeout_seconds: float = _TIMEOUT


class TaskIdArgs(Args):
    task_id: str = Field(min_length=1, max_length=128, description="A task_id returned by execute_task.")
    wait_seconds: float = Field(
        default=0, ge=0, le=300, description="Wait up to this long for the task to finish (0: answer now)."
    )
    value_offset: int | None = Field(
        default=None,
        ge=0,
        description="Also read the ended task's result, a page of its JSON text from this character (0, "
        'then a page\'s next_offset): for a result shown as {"omitted": ...}.',
    )


#: What ``since`` and ``until`` take, said in each refusal.
_MOMENT = (
    "an ISO 8601 date or time as a string, e.g. 2026-12-08T09:30:00Z, 2026-12-08T11:30:00+02:00, "
    "2026-12-08 or 20261208 (a time without a zone is UTC)"
)


def _moment(value: object) -> object:
    """``since``/``until`` as ISO 8601 reads them (``datetime.fromisoformat``: extended and basic format,
    ``Z``, a date alone). A number is refused, not read as a Unix time: pydantic's lax datetime takes
    ``20261208`` or ``"20261208"`` for 1970-08-23, a silent wrong window."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {_MOMENT}; got {type(value).__name__} {str(value)[:40]}")
    try:
        return datetime.fromisoformat(value.strip().upper())  # "t" and "z" are ISO 8601 too
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not {_MOMENT}") from None


Moment = Annotated[datetime, BeforeValidator(_moment)]


class ListRunsArgs(Args):
    workflow_name: str | None = None
    status: RunStatusName | None = None
    limit: int = Field(default=20, ge=1, le=500)
    since: Moment | None = Field(
        default=None,
        description="Only runs created at or after this time (ISO 8601; a time without a zone is UTC).",
    )
    until: Moment | None = Field(
        default=None,
        description="Only runs created before this time (ISO 8601; a time without a zone is UTC).",
    )
    cursor: str | None = Field(
        default=None, max_length=256, description="next_cursor of the previous page: the page after it."
    )
    parent_run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Only the sub-runs started by this run's workflow.run steps (a run_id).",
    )

    @field_validator("until")
    @classmethod
    def _after_since(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        since, end = _utc(info.data.get("since")), _utc(until)
        if since is not None and end is not None and end < since:
            raise ValueError(
                f"{end.isoformat()} is before since {since.isoformat()}, so no run could match; "
                "give an until at or after since"
            )
        return until


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC (every record is)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class ResumeRunArgs(Args):
    run_id: str = Field(min_length=1, max_length=128)
    wait: bool = _WAIT
    timeout_seconds: float = _TIMEOUT


class WorkflowNameArgs(Args):
    name: str = _name("Name of a registered workflow.")


class GetWorkflowArgs(WorkflowNameArgs):
    version: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="An older kept version (default: current)."
    )


class ValidateWorkflowArgs(Args):
    """The fields of create_workflow, loosely typed: what the workflow format refuses is a problem listed
    in the result."""

    name: str = _name("Workflow name (checked too).")
    steps: list[dict[str, Any]] = Field(min_length=1, description="Steps as for create_workflow.")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    max_parallel: int | None = Field(default=None, description="As for create_workflow.")
    version: str = Field(default="1", description="As for create_workflow.")


class ListActionsArgs(Args):
    server: str | None = Field(
        default=None,
        description="A server of mcp_servers (see the result): also list its tools with their input schemas "
        "(connects to it).",
    )


class ReleaseResourcesArgs(Args):
    allocation_id: str | None = Field(default=None, description="Release this one allocation.")
    user_id: str | None = Field(default=None, description="Release every allocation this user holds.")


class CreateSessionArgs(Args):
    user_id: str = Field(default="anonymous", min_length=1, max_length=256)
    name: str = Field(default="", max_length=256)
    description: str = Field(default="", max_length=10_000)
    mode: Literal["sequential", "parallel", "priority", "resource_aware"] | None = Field(
        default=None,
        description="sequential: one workflow and one step at a time, the highest step priority first "
        "among the steps ready; parallel (default): as dependencies "
        "allow; priority: the same as parallel (step and task priorities order the queue in every mode); "
        'resource_aware: each step holds resources, {"compute": 1} when it declares none.',
    )
    max_parallel_tasks: int | None = Field(default=None, ge=1, le=1024)
    max_parallel_workflows: int | None = Field(default=None, ge=1, le=1024)
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SESSION_TIMEOUT_SECONDS,
        description="Seconds the session may stay unused before it expires (default 3600, at most 365 days).",
    )


class CloseSessionArgs(Args):
    session_id: str = Field(min_length=1, max_length=128)
    cancel_running: bool = Field(default=False, description="Cancel the session's running work too.")


# --------------------------------------------------------------------------- results


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use, as Args


class ItemsPage(MapItems):
    """A map step's items in a tool result: ``total`` and ``counts`` cover them all, ``items`` one page."""

    offset: int = Field(default=0, description="The page's first position among the matching items.")
    matching: int = Field(default=0, description="How many items match the page's items_status (all: total).")
    next_offset: int | None = Field(
        default=None, description="items_offset of the next page (get_workflow_run); null: no more items."
    )
    output_omitted: bool = Field(
        default=False,
        description="The step's output (its items' outputs in one list) is left out, as this page does not "
        "list every item: read the outputs from the items.",
    )


class StepView(StepResult):
    """A step in a tool result: a map step's items are one page (:class:`ItemsPage`)."""

    items: ItemsPage | None = None


class ValuePage(Result):
    """A page of one value of a run (a step's or item's output, or a parameter) or of a single task's
    result: its JSON text, cut."""

    of: str = Field(
        description='What the value is: "steps.a.output", "steps.m.items.3.output", "parameters.p", or '
        '"result" (a task\'s).'
    )
    json_length: int = Field(description="The characters of the value's whole JSON text.")
    offset: int = Field(description="The character of that text this page starts at.")
    json_text: str = Field(description="The page: join the pages in order and parse them as JSON.")
    next_offset: int | None = Field(description="value_offset of the next page; null: this is the last.")


class RunHandle(RunRecord):
    """A run record, each map step's items paged; ``note`` says what to do when it is still running, and
    how to read the items a page leaves out."""

    # The steps as shown, not stored: the handle is never written back as a RunRecord (dict is invariant).
    steps: dict[str, StepView] = Field(default_factory=dict)  # type: ignore[assignment]
    note: str | None = None
    value: ValuePage | None = Field(
        default=None, description="The page of the value get_workflow_run's step or parameter asked for."
    )


class CreateWorkflowResult(Result):
    workflow_name: str
    steps_count: int
    execution_levels: list[list[str]]
    inferred_dependencies: dict[str, list[str]]
    mermaid: str


class WorkflowListResult(Result):
    workflows: list[WorkflowInfo]
    count: int


class ProjectResult(Result):
    project_name: str
    project_type: str
    project_path: str
    template_used: str
    status: str
    description: str
    owner: str
    version: str
    created_at: datetime
    files_created: list[str] = Field(description="Files written, relative to project_path (first 500).")
    workflows: list[str] = Field(description="Workflows the template registered.")
    workflows_not_registered: dict[str, str] = Field(
        default_factory=dict, description="Template workflows left unregistered and why."
    )


class ProjectInfo(Result):
    name: str
    type: str
    status: str
    path: str
    description: str
    created_at: datetime


class ProjectListResult(Result):
    projects: list[ProjectInfo]
    count: int


class TaskResult(Result):
    task_id: str
    name: str
    status: str
    result: Any = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    note: str | None = None
    value: ValuePage | None = Field(
        default=None, description="The page of the result's JSON text get_task's value_offset asked for."
    )


class AllocationResult(Result):
    user_id: str
    allocations: list[Allocation]
    session_id: str | None = None


class WorkflowDetail(Result):
    name: str
    version: int | None = Field(default=None, description="The definition version the server numbered.")
    digest: str | None = None
    description: str
    steps: list[StepSpec]
    parameters: dict[str, Any]
    max_parallel: int | None = None
    version_label: str = Field(default="1", description="The workflow document's own 'version' label.")
    steps_count: int
    execution_levels: list[list[str]]
    inferred_dependencies: dict[str, list[str]]
    mermaid: str


class ValidationResult(Result):
    valid: bool
    workflow_name: str
    problems: list[str] = Field(default_factory=list)
    steps_count: int | None = None
    execution_levels: list[list[str]] = Field(default_factory=list)
    inferred_dependencies: dict[str, list[str]] = Field(default_factory=dict)
    mermaid: str | None = None
    missing_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets ({{secrets.NAME}}) set neither in CODOMYRMEX_SECRET_<NAME> nor in the secrets "
        "file; a step using one fails when it starts. Names only, never values.",
    )


class DeleteResult(Result):
    workflow_name: str
    deleted: bool
    note: str | None = Field(
        default=None,
        description="Why nothing was deleted (close names); or what returns on restart and who calls it.",
    )


class RunSummary(Result):
    run_id: str
    workflow_name: str
    status: str
    created_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    failed_steps: list[str] = Field(default_factory=list)
    #: The run whose workflow.run step started this one, and that step (``step[index]`` for a map item).
    parent_run_id: str | None = None
    parent_step: str | None = None


class RunListResult(Result):
    runs: list[RunSummary]
    count: int
    #: Pass as ``cursor`` for the next page; null when this page is the last.
    next_cursor: str | None = None


class ReleaseResult(Result):
    released: int
    allocation_id: str | None = None
    user_id: str | None = None
    note: str | None = Field(default=None, description="Why nothing was released (a close id or user).")


class SessionResult(Session):
    """The session as it stands."""


class CloseSessionResult(ClosedSession):
    """The session as closed, what this call cancelled, and a note when it was closed already."""

    closed: bool = True


class ActionInfo(Result):
    name: str
    module: str
    action: str
    description: str
    parameters: dict[str, str]
    output: str
    executes_code: bool
    network: bool
    allowed: bool


class McpServerInfo(Result):
    name: str
    transport: str
    description: str
    command: str | None = None
    url: str | None = None


class McpToolInfo(Result):
    name: str
    description: str
    input_schema: dict[str, Any]


class ActionListResult(Result):
    actions: list[ActionInfo]
    count: int
    #: The servers mcp.call steps may call (config/mcp_servers.json).
    mcp_servers: list[McpServerInfo] = Field(default_factory=list)
    #: Why the servers file could not be used, if it could not.
    mcp_servers_error: str | None = None
    #: With ``server``: that server's tools.
    tools: list[McpToolInfo] | None = None


class TemplateListResult(Result):
    templates: list[dict[str, Any]]
    count: int


# --------------------------------------------------------------------------- reading a location


def fields_at(model: type[BaseModel], location: Sequence[Any]) -> list[str] | None:
    """The field names of the object at ``location`` (a pydantic error's ``loc`` without its last part)
    in arguments of ``model``: at ``("steps", 0)`` of create_workflow's arguments, a step's fields.

    None where the location leads to no model (an open object such as ``parameters``) or cannot be
    followed.
    """
    node: Any = model
    for part in location:
        node = _without_none(node)
        origin, args = get_origin(node), get_args(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            node = args[0]
        elif origin is dict and len(args) == 2:
            node = args[1]
        elif origin in (Union, UnionType):  # pydantic names the member of a union it tried by its name
            node = next((t for t in args if getattr(t, "__name__", None) == part), None)
        else:
            return None
        if node is None:
            return None
    node = _without_none(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else None


def _without_none(node: Any) -> Any:
    """``X | None`` -> ``X`` (pydantic adds no location part for it); any other type as it is."""
    if get_origin(node) in (Union, UnionType):
        members = [t for t in get_args(node) if t is not type(None)]
        if len(members) == 1:
            return members[0]
    return node
