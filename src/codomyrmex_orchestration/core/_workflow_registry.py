"""The workflow definition registry: definitions' CRUD, config-dir loading, validation and versions.

It owns the registered definitions (name -> current :class:`Definition`), the plans built from them, the
loaded definitions the action policy refuses, the load errors of config files, and each name's version
counter. Every registration gets a version: a
number that grows by one per name whenever the content changes, and the content's hash.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from codomyrmex_orchestration.config import DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_WORKFLOWS
from codomyrmex_orchestration.core._store_codec import check_parameters
from codomyrmex_orchestration.core._workflow_map import too_many_items
from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core.actions import ActionRegistry
from codomyrmex_orchestration.core.dag import WorkflowDAG
from codomyrmex_orchestration.core.models import WORKFLOW_FIELD_NAMES, StepSpec, WorkflowInfo, WorkflowSpec
from codomyrmex_orchestration.core.store import StateStore
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    AlreadyExistsError,
    DAGValidationError,
    InvalidInputError,
    LimitExceededError,
    OrchestrationError,
    UnknownActionError,
    WorkflowNotFoundError,
    WorkflowRefusedError,
)

__all__ = ["Definition", "DefinitionRegistry", "as_document", "digest_of"]

_log = structlog.get_logger("codomyrmex_orchestration.workflows")


#: Step fields added after definitions had versions: left out of the content hash while unset, so a
#: definition written before them keeps its hash (and its version, and resume of its runs).
_LATER_STEP_FIELDS = ("for_each", "max_parallel", "cache")


def _canonical(spec: WorkflowSpec) -> str:
    data = spec.model_dump(mode="json")
    for step in data["steps"]:
        for name in _LATER_STEP_FIELDS:
            if step.get(name) is None:
                step.pop(name, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def digest_of(spec: WorkflowSpec) -> str:
    """The content hash of a definition: equal definitions hash equal, whatever their key order."""
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()[:16]


#: The setting that moves the most steps a workflow may have, named by its refusal.
MAX_STEPS_SETTING = "CODOMYRMEX_MAX_STEPS"


def too_many_steps(count: int, limit: int) -> LimitExceededError:
    return LimitExceededError(MAX_STEPS_SETTING, limit, count, "the number of steps")


#: The setting that moves the most workflows registered at once, named by its refusal.
MAX_WORKFLOWS_SETTING = "CODOMYRMEX_MAX_WORKFLOWS"


def too_many_workflows(count: int, limit: int, name: str) -> LimitExceededError:
    return LimitExceededError(
        MAX_WORKFLOWS_SETTING,
        limit,
        count + 1,
        "the number of workflows",
        reason=f"{count} workflows are registered already, the limit ({MAX_WORKFLOWS_SETTING}) is {limit}: "
        f"workflow {name!r} is not created; delete one you no longer need (delete_workflow) or replace "
        "one of the same name (overwrite)",
    )


def _limit_problems(spec: WorkflowSpec, max_map_items: int, max_parameters_bytes: int) -> list[str]:
    """What the definition as written puts over a configured limit, in the words a run would meet it
    in: a literal ``for_each`` list longer than ``max_map_items`` (a reference is counted when a run
    resolves it), default parameters larger than ``max_parameters_bytes`` (every run starts with them)."""
    problems = [
        f"step {step.name!r} for_each: {too_many_items(step.name, len(step.for_each), max_map_items)}"
        for step in spec.steps
        if isinstance(step.for_each, list) and len(step.for_each) > max_map_items
    ]
    try:
        check_parameters(
            spec.parameters, max_parameters_bytes, what="the default parameters every run starts with"
        )
    except InvalidInputError as exc:  # over the limit, or text JSON cannot carry
        problems.append(str(exc) if exc.field.startswith("parameters") else f"parameters: {exc}")
    return problems


def _resource_problems(
    spec: WorkflowSpec, check_resources: Callable[[Mapping[str, Any]], None] | None
) -> list[str]:
    """Steps asking for resources the machine's capacities can never grant (``{"gpu": 1}`` on a
    machine without one, ``{"compute": 999}``), each named with the reason."""
    if check_resources is None:
        return []
    problems = []
    for step in spec.steps:
        if step.resources:
            try:
                check_resources(step.resources)
            except InvalidInputError as exc:  # its field is the requirement's: say it as the step's
                field = exc.field.replace("requirements", "resources", 1)
                where = field if field.startswith("resources") or not field else f"resources: {field}"
                where = where or "resources"
                problems.append(f"step {step.name!r}: {where}: {exc.reason}")
            except OrchestrationError as exc:
                problems.append(f"step {step.name!r}: resources: {exc}")
    return problems


def as_document(
    spec: WorkflowSpec | Mapping[str, Any] | str,
    steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
    description: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> WorkflowSpec | dict[str, Any]:
    """The workflow a creation call gives, as a spec or a JSON object, not validated yet: a spec as it
    is, a JSON object copied, a name with steps as the object they make.

    Raises:
        InvalidInputError: none of those.
    """
    if isinstance(spec, WorkflowSpec):
        return spec
    if isinstance(spec, str):
        document: dict[str, Any] = {"name": spec, "steps": list(steps or []), "description": description}
        if parameters:
            document["parameters"] = dict(parameters)
        return document
    if isinstance(spec, Mapping):
        return dict(spec)
    raise InvalidInputError("workflow", "expected a WorkflowSpec, a JSON object or a name with steps")


@dataclass(frozen=True, slots=True)
class Definition:
    """One registered version of a workflow."""

    spec: WorkflowSpec
    source: str  # "config" | "api" | "project" | "file"
    path: str | None
    version: int
    digest: str


class DefinitionRegistry:
    """Registered workflow definitions and their versions.

    Args:
        registry: the action registry steps are validated against.
        store: where API-created definitions and every version are kept.
        max_steps: most steps a workflow may have.
        max_map_items: most items a literal ``for_each`` list may have (``CODOMYRMEX_MAX_MAP_ITEMS``).
        max_workflows: most workflows registered at once: a new name past it is refused by ``create``
            (definitions loaded at start are all registered).
    """

    def __init__(
        self,
        *,
        registry: ActionRegistry,
        store: StateStore,
        max_steps: int,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
        check_resources: Callable[[Mapping[str, Any]], None] | None = None,
        max_workflows: int = DEFAULT_MAX_WORKFLOWS,
    ) -> None:
        self.registry = registry
        self.max_workflows = max_workflows
        self.check_resources = check_resources  # raises for requirements the capacities never allow
        self.store = store
        self.max_steps = max_steps
        self.max_map_items = max_map_items
        self.load_errors: list[tuple[str, str]] = []
        # Guards _entries, _plans and _latest. Held for dict operations only: the server reads
        # definitions on its event loop, so nothing slow (validation, serialising) happens under it.
        self._lock = threading.Lock()
        # Orders the writers (create, delete, config loads) between them, so the store keeps what memory
        # keeps and a create's existence check still holds when it writes.
        self._define_lock = threading.Lock()
        self._entries: dict[str, Definition] = {}
        self._plans: dict[str, Plan] = {}  # name -> plan of the current version
        # Loaded definitions using an action the registry's policy refuses (e.g. python.call with code
        # execution off): listed with the reason, readable, refused by name at run time.
        self._refused: dict[str, tuple[WorkflowSpec, str, str | None, WorkflowRefusedError]] = {}
        # name -> (highest version, its digest): from the store, so numbers go on across restarts.
        self._latest: dict[str, tuple[int, str]] = dict(store.latest_workflow_versions())

    # ------------------------------------------------------------------ registering

    def load_stored(self) -> set[str]:
        """Register the definitions the store kept (created through the API in earlier processes).

        Returns:
            Their names.
        """
        names: set[str] = set()
        for spec, source in self.store.load_workflows():
            with self._define_lock:
                self._add_loaded(spec, source, None)
            names.add(spec.name)
        return names

    def load_config_dir(
        self, directory: Path, *, source: str = "config", skip: Container[str] = ()
    ) -> list[str]:
        """Load every ``*.json`` workflow in ``directory``; bad files go to ``load_errors``, workflows
        using an action the policy refuses are listed as refused (see :meth:`refused`).

        Args:
            source: what the definitions are listed as (``config``, ``sample``).
            skip: names not to register (a definition stored through the API wins over a config file's,
                and a config file's over a sample's).

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
                    spec = self.coerce(item)
                    if self._refusal(spec) is None:
                        self.check(spec)
                    if spec.name in skip:
                        continue
                    with self._define_lock:
                        self._add_loaded(spec, source, str(path))
                    loaded.append(spec.name)
            except (OSError, ValueError) as exc:
                reason = str(exc) if isinstance(exc, OrchestrationError | json.JSONDecodeError) else repr(exc)
                if isinstance(exc, ValidationError):
                    reason = str(InvalidInputError.from_validation(exc, known_fields=WORKFLOW_FIELD_NAMES))
                self.load_errors.append((str(path), reason))
                _log.warning("workflow config file rejected", path=str(path), reason=reason)
        return loaded

    def create(
        self,
        spec: WorkflowSpec | Mapping[str, Any] | str,
        steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
        *,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        source: str = "api",
        reuse: bool = False,
        plan: Plan | None = None,
        loops: Callable[[WorkflowSpec], list[str]] | None = None,
    ) -> tuple[Definition, bool]:
        """Validate, register and persist a definition (see ``WorkflowManager.create_workflow``);
        ``plan``: the definition's, when the caller validated it already; ``loops``: the runs of it through
        registered workflows, checked with the writers held off, so two creations cannot each miss the other.

        Returns:
            The definition, and whether it was registered now (False: with ``reuse``, one of the same
            name and content was registered already, and is returned as it is).
        """
        workflow = self.coerce(spec, steps, description, parameters)
        if plan is None or plan.spec is not workflow:
            plan = self.check(workflow)
        with self._define_lock:
            with self._lock:
                existing = self._entries.get(workflow.name)
            if existing is not None and not overwrite:
                if reuse and existing.digest == digest_of(workflow):
                    return existing, False
                raise AlreadyExistsError("workflow", workflow.name, "pass overwrite=true to replace it")
            if loops is not None and (problems := loops(workflow)):
                raise DAGValidationError(problems, workflow=workflow.name)
            with self._lock:
                count = len(self._entries) + len(self._refused)
            if existing is None and workflow.name not in self._refused and count >= self.max_workflows:
                raise too_many_workflows(count, self.max_workflows, workflow.name)
            self.store.check_budget()  # definitions count in the state's byte budget
            self.store.save_workflow(workflow, source)
            definition = self._register(workflow, source, None, plan)
        self.store.flush()
        return definition, True

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
        """Register a loaded definition, or list it as refused (called with ``_define_lock`` held)."""
        refusal = self._refusal(spec)
        if refusal is None:
            with self._lock:
                self._refused.pop(spec.name, None)
            self._register(spec, source, path)
            return
        with self._lock:
            self._entries.pop(spec.name, None)
            self._plans.pop(spec.name, None)
            self._refused[spec.name] = (spec, source, path, refusal)
        _log.info("workflow refused by policy", workflow=spec.name, reason=str(refusal))

    def refused(self) -> dict[str, str]:
        """Loaded definitions the policy refuses: name -> the reason (naming the setting that allows them)."""
        with self._lock:
            return {name: str(entry[3]) for name, entry in sorted(self._refused.items())}

    def _missing(self, name: str) -> OrchestrationError:
        """The error for a name that is not runnable: refused by policy, or not found (``_lock`` held)."""
        refused = self._refused.get(name)
        if refused is not None:
            return refused[3]
        return WorkflowNotFoundError(name, known=self._entries)

    def _register(
        self, spec: WorkflowSpec, source: str, path: str | None, plan: Plan | None = None
    ) -> Definition:
        """Make ``spec`` the current definition of its name, under a new version if its content changed.

        Called with ``_define_lock`` held.
        """
        digest = digest_of(spec)
        with self._lock:
            latest = self._latest.get(spec.name)
        if latest is not None and latest[1] == digest:
            version = latest[0]
        else:
            version = (latest[0] if latest is not None else 0) + 1
            # Before any run can refer to it (runs are saved after, through the same store queue).
            self.store.save_workflow_version(spec.name, version, digest, _canonical(spec))
        definition = Definition(spec, source, path, version, digest)
        with self._lock:
            self._entries[spec.name] = definition
            self._latest[spec.name] = (version, digest)
            if plan is not None:
                plan.version, plan.digest = version, digest
                self._plans[spec.name] = plan
            else:
                self._plans.pop(spec.name, None)
        return definition

    def delete(self, name: str) -> bool:
        """Unregister ``name``; its versions go once no run refers to them, its numbers go on."""
        with self._define_lock:
            with self._lock:
                if self._entries.pop(name, None) is None and self._refused.pop(name, None) is None:
                    return False
                self._plans.pop(name, None)
                if (latest := self._latest.get(name)) is not None:  # same content again: a new version
                    self._latest[name] = (latest[0], "")
            self.store.delete_workflow(name, latest[0] if latest is not None else None)
        self.store.flush()
        return True

    # ------------------------------------------------------------------ validating

    def coerce(
        self,
        spec: WorkflowSpec | Mapping[str, Any] | str,
        steps: Sequence[StepSpec | Mapping[str, Any]] | None = None,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> WorkflowSpec:
        """A :class:`WorkflowSpec` from a spec, a JSON object, or a name with steps.

        Raises:
            InvalidInputError: malformed (the field is named).
            LimitExceededError: more steps than ``max_steps``.
        """
        document = as_document(spec, steps, description, parameters)
        if isinstance(document, WorkflowSpec):
            return document
        if isinstance(document.get("steps"), list) and len(document["steps"]) > self.max_steps:
            raise too_many_steps(len(document["steps"]), self.max_steps)
        try:
            return WorkflowSpec.model_validate(document)
        except ValidationError as exc:
            raise InvalidInputError.from_validation(exc, known_fields=WORKFLOW_FIELD_NAMES) from None

    def check(self, spec: WorkflowSpec, *, unparsed: Collection[str] = ()) -> Plan:
        """Validate ``spec`` against the actions and as a graph (``unparsed``: see ``WorkflowDAG``).

        Raises:
            LimitExceededError: too many steps.
            DAGValidationError: every graph problem at once; then resources no capacity allows and
                limits the definition itself exceeds (a literal ``for_each`` list too long, default
                parameters too large for the store's ``max_parameters_bytes``).
        """
        if len(spec.steps) > self.max_steps:
            raise too_many_steps(len(spec.steps), self.max_steps)
        dag = WorkflowDAG(spec.steps, registry=self.registry, workflow_name=spec.name, unparsed=unparsed)
        dag.validate()
        limits = _limit_problems(spec, self.max_map_items, self.store.max_parameters_bytes)
        problems = _resource_problems(spec, self.check_resources) + limits
        if problems:
            raise DAGValidationError(problems, workflow=spec.name)
        return Plan(spec, dag)

    # ------------------------------------------------------------------ reading

    def entry(self, name: str) -> Definition:
        """The current definition of ``name``.

        Raises:
            WorkflowNotFoundError: no such workflow.
        """
        with self._lock:
            definition = self._entries.get(name)
            if definition is None:
                raise self._missing(name)
            return definition

    def source_of(self, name: str) -> str:
        with self._lock:
            definition = self._entries.get(name)
            if definition is not None:
                return definition.source
            refused = self._refused.get(name)
            if refused is None:
                raise WorkflowNotFoundError(name, known=self._entries)
            return refused[1]

    def plan(self, name: str) -> Plan:
        """The plan of the current definition of ``name`` (built once per version)."""
        with self._lock:
            definition = self._entries.get(name)
            if definition is None:
                raise self._missing(name)
            plan = self._plans.get(name)
            if plan is not None and plan.spec is definition.spec:
                return plan
        plan = self.check(definition.spec)
        plan.version, plan.digest = definition.version, definition.digest
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current.spec is definition.spec:
                self._plans[name] = plan
        return plan

    def spec_at(self, name: str, version: int | None) -> WorkflowSpec:
        """Version ``version`` of ``name`` (None: the current one), from the store if it is not current.

        Raises:
            WorkflowNotFoundError: no such workflow, or that version is not kept.
        """
        with self._lock:
            definition = self._entries.get(name)
            known = list(self._entries)
            refused = self._refused.get(name)
        if definition is not None and version in (None, definition.version):
            return definition.spec
        if version is None:
            if refused is not None:
                return refused[0]  # readable (get_workflow shows it); running it is refused
            raise WorkflowNotFoundError(name, known=known)
        source = self.store.get_workflow_version(name, version)
        if source is None:
            kept = self.store.workflow_versions(name)
            if definition is None and not kept:
                raise WorkflowNotFoundError(name, known=known)
            current = definition.version if definition is not None else None
            raise WorkflowNotFoundError(name, version=version, kept=kept, current=current)
        return WorkflowSpec.model_validate_json(source)

    def pinned_plan(self, name: str, version: int | None, digest: str | None) -> Plan | None:
        """The plan of version ``version`` of ``name`` (None: a run recorded before versions, which
        continues with the current definition), or None if that version is no longer kept."""
        if version is None:
            return self.plan(name)
        with self._lock:
            definition = self._entries.get(name)
        if definition is not None and definition.version == version and definition.digest == digest:
            return self.plan(name)
        source = self.store.get_workflow_version(name, version)
        if source is None:
            return None
        spec = WorkflowSpec.model_validate_json(source)
        if digest is not None and digest_of(spec) != digest:
            return None
        plan = self.check(spec)
        plan.version, plan.digest = version, digest_of(spec)
        return plan

    def current_version(self, name: str) -> int | None:
        with self._lock:
            definition = self._entries.get(name)
            return definition.version if definition is not None else None

    def infos(self) -> list[WorkflowInfo]:
        with self._lock:
            entries = list(self._entries.values())
            refused = list(self._refused.values())
        infos = [
            WorkflowInfo(
                name=d.spec.name,
                description=d.spec.description,
                steps_count=len(d.spec.steps),
                source=d.source,
                path=d.path,
                version=d.version,
                digest=d.digest,
            )
            for d in entries
        ]
        infos += [
            WorkflowInfo(
                name=spec.name,
                description=spec.description,
                steps_count=len(spec.steps),
                source=source,
                path=path,
                refused=str(why),
            )
            for spec, source, path, why in refused
        ]
        return sorted(infos, key=lambda i: i.name)

    def counts(self) -> tuple[int, dict[str, int]]:
        """How many definitions are registered, in all and by source."""
        with self._lock:
            by_source: dict[str, int] = {}
            for d in self._entries.values():
                by_source[d.source] = by_source.get(d.source, 0) + 1
            return len(self._entries), by_source
