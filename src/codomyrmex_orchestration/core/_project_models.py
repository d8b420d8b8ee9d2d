"""The project vocabulary: types, statuses, the manifest (:class:`Project`), templates and their
workflows, name rules, and what the manager needs of a store and a workflow manager. Pure data; no state.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from codomyrmex_orchestration.core.models import WorkflowSpec, utcnow
from codomyrmex_orchestration.errors import InvalidInputError, InvalidNameError

__all__ = [
    "INDEX_FILE",
    "MANIFEST_FILE",
    "MAX_PROJECT_NAME",
    "Milestone",
    "Project",
    "ProjectStatus",
    "ProjectStore",
    "ProjectTemplate",
    "ProjectType",
    "WorkflowRegistrar",
    "WorkflowTemplate",
    "parse_enum",
    "validate_project_name",
]

MANIFEST_FILE = "project.json"
INDEX_FILE = ".projects.json"
MAX_PROJECT_NAME = 128
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class ProjectType(enum.StrEnum):
    """What a project is for; each has its own packaged template of the same name."""

    AI_ANALYSIS = "ai_analysis"
    WEB_APPLICATION = "web_application"
    DATA_PIPELINE = "data_pipeline"
    ML_MODEL = "ml_model"
    DOCUMENTATION = "documentation"
    RESEARCH = "research"
    CUSTOM = "custom"


class ProjectStatus(enum.StrEnum):
    """Lifecycle of a project."""

    PLANNING = "planning"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    FAILED = "failed"


def _choices(enum_cls: type[enum.StrEnum]) -> str:
    return ", ".join(m.value for m in enum_cls)


_E = TypeVar("_E", bound=enum.StrEnum)


def parse_enum(enum_cls: type[_E], value: object, field: str) -> _E:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        for member in enum_cls:
            if member.value == low:
                return member
    raise InvalidInputError(field, f"{value!r} is not one of {_choices(enum_cls)}")


def validate_project_name(name: object) -> str:
    """Return ``name`` if it is an acceptable project (folder) name, else raise.

    Accepted: 1-128 characters from letters, digits, ``-``, ``_`` and ``.``, not starting with ``.``
    and not containing ``..``.

    Raises:
        InvalidNameError: the rule broken is in the message.
    """
    allowed = "use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
    if not isinstance(name, str) or not name:
        raise InvalidNameError("project", name, f"a name is required; {allowed}")
    if len(name) > MAX_PROJECT_NAME:
        raise InvalidNameError("project", name, f"{len(name)} characters is too long; {allowed}")
    if "/" in name or "\\" in name or os.sep in name:
        raise InvalidNameError("project", name, f"path separators are not allowed; {allowed}")
    if ".." in name:
        raise InvalidNameError("project", name, f"'..' is not allowed; {allowed}")
    if name.startswith("."):
        raise InvalidNameError("project", name, f"hidden names are not allowed; {allowed}")
    bad = sorted({c for c in name if c not in _NAME_CHARS})
    if bad:
        raise InvalidNameError("project", name, f"characters {''.join(bad)!r} are not allowed; {allowed}")
    return name


# --------------------------------------------------------------------------- models


class Milestone(BaseModel):
    """A named goal of a project."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    due_date: date | None = None
    completed: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Project(BaseModel):
    """A project as recorded in its ``project.json`` manifest."""

    model_config = ConfigDict(extra="ignore")

    name: str
    type: ProjectType
    status: ProjectStatus = ProjectStatus.PLANNING
    description: str = ""
    owner: str = ""
    path: str
    version: str = "0.1.0"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    template: str
    template_version: str
    milestones: list[Milestone] = Field(default_factory=list)
    workflows: list[str] = Field(default_factory=list, description="Registered workflow names.")
    workflows_not_registered: dict[str, str] = Field(
        default_factory=dict,
        description="Template workflows left unregistered and why (e.g. code execution is disabled here).",
    )
    docs: dict[str, str] = Field(default_factory=dict, description="Generated doc -> SHA-256 last written.")
    config: dict[str, Any] = Field(default_factory=dict)


class WorkflowTemplate(BaseModel):
    """A workflow a template registers for each project (``<project>.<name>``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str = ""
    steps: list[dict[str, Any]] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProjectTemplate(BaseModel):
    """One project template (a ``projects/<name>.json`` data file).

    ``files`` maps relative path -> content; files under the sibling folder ``<name>/files/`` are added
    (a trailing ``.tmpl`` is dropped from their names). Contents, config and workflows use ``{{variable}}``
    placeholders (see :meth:`ProjectManager.list_templates`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    type: ProjectType
    version: str = "1.0"
    description: str = ""
    directory_structure: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    config_file: str | None = None
    default_config: dict[str, Any] = Field(default_factory=dict)
    workflows: list[WorkflowTemplate] = Field(default_factory=list)


class ProjectStore(Protocol):
    """The part of the state store the project registry uses (the manifests stay the truth)."""

    def save_project(self, name: str, data: Mapping[str, Any]) -> None: ...
    def list_projects(self) -> list[dict[str, Any]]: ...


class WorkflowRegistrar(Protocol):
    """What ProjectManager needs of a WorkflowManager."""

    def create_workflow(self, spec: WorkflowSpec, /, *, overwrite: bool = ...) -> object: ...
    def get_workflow(self, name: str, /) -> WorkflowSpec: ...  # LookupError when there is none
    def delete_workflow(self, name: str, /) -> bool: ...
