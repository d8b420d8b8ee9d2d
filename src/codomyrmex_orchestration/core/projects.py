"""ProjectManager: typed project folders scaffolded from templates, with RASP docs and their workflows.

A project is a folder under the projects root holding a ``project.json`` manifest. Templates are data
files (``core/templates/projects/<name>.json`` in the package, overridable and extendable from
``<templates_dir>/projects/``); each lists the directories, files, default config and workflows a project
of its type gets.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codomyrmex_orchestration.config import DEFAULT_PROJECTS_DIR, DEFAULT_TEMPLATES_DIR
from codomyrmex_orchestration.core._files import atomic_write
from codomyrmex_orchestration.core.docs import DocumentationGenerator, render_template
from codomyrmex_orchestration.core.models import WorkflowSpec, utcnow
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    DAGValidationError,
    InvalidInputError,
    InvalidNameError,
    OrchestrationError,
    ProjectCreationError,
    ProjectNotFoundError,
)
from codomyrmex_orchestration.logs import get_logger

__all__ = [
    "INDEX_FILE",
    "MANIFEST_FILE",
    "MAX_PROJECT_NAME",
    "Milestone",
    "Project",
    "ProjectManager",
    "ProjectStatus",
    "ProjectTemplate",
    "ProjectType",
    "WorkflowRegistrar",
    "WorkflowTemplate",
    "validate_project_name",
]

MANIFEST_FILE = "project.json"
INDEX_FILE = ".projects.json"
MAX_PROJECT_NAME = 128
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_TMPL_SUFFIX = ".tmpl"

_log = get_logger("codomyrmex_orchestration.projects")


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


def _parse_enum(enum_cls: type[_E], value: object, field: str) -> _E:
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


def _relpath(field: str, rel: str) -> str:
    """A template's relative path, normalised to posix, or an error if it could leave the project."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel or pure.is_absolute() or rel.startswith(("/", "\\")) or ":" in pure.parts[0]:
        raise InvalidInputError(field, f"{rel!r} must be a relative path inside the project")
    if any(part in ("..", "") for part in pure.parts) or pure.as_posix() in (".", MANIFEST_FILE):
        raise InvalidInputError(field, f"{rel!r} must stay inside the project and not be {MANIFEST_FILE}")
    return pure.as_posix()


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


@dataclass(frozen=True)
class _LoadedTemplate:
    template: ProjectTemplate
    source: str
    docs_dir: Traversable | None


class ProjectStore(Protocol):
    """The part of the state store the project registry uses (the manifests stay the truth)."""

    def save_project(self, name: str, data: Mapping[str, Any]) -> None: ...
    def list_projects(self) -> list[dict[str, Any]]: ...


class WorkflowRegistrar(Protocol):
    """What ProjectManager needs of a WorkflowManager."""

    def create_workflow(self, spec: WorkflowSpec, /, *, overwrite: bool = ...) -> object: ...
    def get_workflow(self, name: str, /) -> WorkflowSpec: ...  # LookupError when there is none
    def delete_workflow(self, name: str, /) -> bool: ...


# --------------------------------------------------------------------------- helpers


def _walk_files(base: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk_files(entry, rel + "/")
        elif entry.is_file():
            yield rel, entry


def _render_value(value: Any, variables: Mapping[str, str], source: str) -> Any:
    """Substitute project variables in every string of a JSON value, leaving run-time references."""
    if isinstance(value, str):
        return render_template(value, variables, source=source, keep_references=True)
    if isinstance(value, list):
        return [_render_value(v, variables, source) for v in value]
    if isinstance(value, dict):
        return {k: _render_value(v, variables, source) for k, v in value.items()}
    return value


class _Creation:
    """Records what one create_project call adds so a failure removes exactly that."""

    def __init__(self, target: Path, root: Path) -> None:
        self.target = target
        self.root = root
        self.created_target = False
        self.began = False  # until begin() has looked at the folder, a rollback must touch nothing
        self.before: set[Path] = set()

    def begin(self, exist_ok: bool) -> None:
        if self.target.exists():
            if not exist_ok:
                raise AlreadyExistsError(
                    "project folder", str(self.target), "pass exist_ok=True to scaffold into it"
                )
            self.before = {self.target, *self.target.rglob("*")}
        else:
            self.target.mkdir(parents=False)
            self.created_target = True
        self.began = True
        self.check_inside(self.target)

    def check_inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.target.resolve()) or not resolved.is_relative_to(self.root):
            raise InvalidInputError("path", f"{path} leads outside the project folder (symbolic link?)")
        return resolved

    def mkdir(self, rel: str) -> None:
        path = self.target / rel
        for parent in reversed([path, *path.parents]):
            if parent == self.target or not parent.is_relative_to(self.target):
                continue
            self.check_inside(parent)
            if not parent.exists():
                parent.mkdir()

    def write(self, rel: str, text: str) -> bool:
        path = self.target / rel
        if "/" in rel:
            self.mkdir(str(PurePosixPath(rel).parent))
        self.check_inside(path)
        if path.exists() or path.is_symlink():
            if path in self.before:
                return False  # exist_ok: a file already there is the person's; keep it
            raise FileExistsError(f"{rel} is written twice or collides with a directory")
        atomic_write(path, text)
        return True

    def rollback(self) -> None:
        if not self.began:
            return
        if self.created_target:
            shutil.rmtree(self.target, ignore_errors=True)
            return
        added = [p for p in self.target.rglob("*") if p not in self.before]
        for path in sorted(added, key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                _log.warning("project.rollback_incomplete", path=str(path))


def _workflow_taken(workflow: str, project: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        "workflow",
        workflow,
        f"project {project!r} would register a template workflow of that name and does not replace "
        "workflows it did not create; choose another project name, or pass overwrite_workflows=true "
        "to replace it",
    )


# --------------------------------------------------------------------------- manager


class ProjectManager:
    """Creates and tracks projects under ``root``.

    The registry is the set of ``project.json`` manifests on disk plus an index ``<root>/.projects.json``
    (written atomically); a new manager on the same root finds every project again, including folders
    holding a manifest that the index does not list. Persistence lives in ``_load``/``_save_manifest``/
    ``_write_index`` so a durable store can replace it.

    Args:
        root: the projects root (default ``projects`` in the working directory); created if missing.
        templates_dir: the configurable templates folder (default ``config/templates``): project templates
            in ``projects/``, doc templates in ``docs/``. ``None``: packaged templates only.
        workflow_manager: when given, each template workflow is registered with it
            as ``<project>.<workflow>``; a name already taken is an error unless the caller passes
            ``overwrite_workflows=True`` to :meth:`create_project`.
        registry_path: the index file (default ``<root>/.projects.json``).
        docs: the documentation generator (default one on the same ``templates_dir``).
    """

    def __init__(
        self,
        root: Path | str = DEFAULT_PROJECTS_DIR,
        *,
        templates_dir: Path | str | None = DEFAULT_TEMPLATES_DIR,
        workflow_manager: WorkflowRegistrar | None = None,
        registry_path: Path | str | None = None,
        docs: DocumentationGenerator | None = None,
        store: ProjectStore | None = None,
    ) -> None:
        root_path = Path(root)
        root_path.mkdir(parents=True, exist_ok=True)
        self.root = root_path.resolve()
        self.templates_dir = Path(templates_dir) if templates_dir is not None else None
        self.workflow_manager = workflow_manager
        self.registry_path = Path(registry_path) if registry_path is not None else self.root / INDEX_FILE
        self.docs = docs if docs is not None else DocumentationGenerator(self.templates_dir)
        self.store = store
        self._lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._load()

    # ------------------------------------------------------------------ templates

    def _template_places(self) -> list[tuple[str, Traversable]]:
        places: list[tuple[str, Traversable]] = [
            ("package", resources.files("codomyrmex_orchestration.core.templates").joinpath("projects"))
        ]
        if self.templates_dir is not None and (self.templates_dir / "projects").is_dir():
            places.append((str(self.templates_dir / "projects"), self.templates_dir / "projects"))
        return places

    def _templates(self) -> dict[str, _LoadedTemplate]:
        found: dict[str, _LoadedTemplate] = {}
        for label, place in self._template_places():
            for entry in sorted(place.iterdir(), key=lambda e: e.name):
                if not (entry.is_file() and entry.name.endswith(".json")):
                    continue
                loaded = self._read_template(label, place, entry)
                found[loaded.template.name] = loaded  # later places (config) override the package
        return found

    @staticmethod
    def _read_template(label: str, place: Traversable, entry: Traversable) -> _LoadedTemplate:
        source = f"{label}/{entry.name}"
        try:
            raw = json.loads(entry.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise InvalidInputError(source, "a project template must be a JSON object")
            raw.setdefault("name", entry.name.removesuffix(".json"))
            template = ProjectTemplate.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, OrchestrationError):
                raise
            raise InvalidInputError(source, f"invalid project template: {exc}") from None
        folder = place.joinpath(template.name)
        files = dict(template.files)
        if folder.joinpath("files").is_dir():
            for rel, item in _walk_files(folder.joinpath("files")):
                files.setdefault(rel.removesuffix(_TMPL_SUFFIX), item.read_text(encoding="utf-8"))
        field = f"{source}.files"
        checked = {_relpath(field, rel): text for rel, text in files.items()}
        for rel in template.directory_structure:
            _relpath(f"{source}.directory_structure", rel)
        if template.config_file is not None:
            _relpath(f"{source}.config_file", template.config_file)
        docs_dir = folder.joinpath("docs")
        return _LoadedTemplate(
            template.model_copy(update={"files": checked}),
            source,
            docs_dir if docs_dir.is_dir() else None,
        )

    def get_template(self, name: str | ProjectType) -> ProjectTemplate:
        """The template called ``name`` (a type value such as ``"ai_analysis"`` or a custom name).

        Raises:
            InvalidInputError: no such template (the message lists the available ones).
        """
        return self._loaded_template(str(name)).template

    def _loaded_template(self, name: str) -> _LoadedTemplate:
        templates = self._templates()
        key = name.strip().lower() if name.strip().lower() in templates else name
        if key not in templates:
            raise InvalidInputError(
                "template", f"{name!r} is not a template; available: {', '.join(templates)}"
            )
        return templates[key]

    def list_templates(self) -> list[dict[str, Any]]:
        """What each template makes: its type, directories (with purposes), files, config and workflows."""
        return [
            {
                "name": t.template.name,
                "type": t.template.type.value,
                "version": t.template.version,
                "description": t.template.description,
                "source": t.source,
                "directories": dict(t.template.directory_structure),
                "files": sorted(t.template.files),
                "config_file": t.template.config_file,
                "default_config": t.template.default_config,
                "workflows": [{"name": w.name, "description": w.description} for w in t.template.workflows],
            }
            for t in self._templates().values()
        ]

    # ------------------------------------------------------------------ registry persistence

    def _manifest_path(self, project: Project) -> Path:
        return Path(project.path) / MANIFEST_FILE

    def _read_manifest(self, folder: Path) -> Project | None:
        manifest = folder / MANIFEST_FILE
        if folder.is_symlink() or manifest.is_symlink() or not manifest.is_file():
            return None
        try:
            project = Project.model_validate_json(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _log.warning("project.manifest_unreadable", path=str(manifest), error=str(exc))
            return None
        # The folder is the truth about where the project lives (the root may have moved).
        return project.model_copy(update={"path": str(folder.resolve())})

    def _load(self) -> None:
        folders: list[Path] = []
        try:
            index = json.loads(self.registry_path.read_text(encoding="utf-8"))
            for rel in dict(index.get("projects", {})).values():
                candidate = (self.root / str(rel)).resolve()
                if candidate.is_relative_to(self.root):
                    folders.append(candidate)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            _log.warning("project.index_unreadable", path=str(self.registry_path), error=str(exc))
        if self.store is not None:
            for data in self.store.list_projects():
                candidate = Path(str(data.get("path", ""))).resolve()
                if candidate.is_relative_to(self.root):
                    folders.append(candidate)
        folders.extend(p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith("."))
        projects: dict[str, Project] = {}
        for folder in folders:
            project = self._read_manifest(folder)
            if project is not None and project.name not in projects:
                projects[project.name] = project
        self._projects = projects

    def _write_index(self) -> None:
        entries = {
            name: Path(p.path).relative_to(self.root).as_posix() for name, p in sorted(self._projects.items())
        }
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.registry_path, json.dumps({"format": 1, "projects": entries}, indent=2) + "\n")

    def _save_manifest(self, project: Project) -> None:
        path = self._manifest_path(project)
        if path.is_symlink():
            raise InvalidInputError("path", f"{path} is a symbolic link; refusing to write the manifest")
        atomic_write(path, project.model_dump_json(indent=2) + "\n")
        if self.store is not None:
            self.store.save_project(project.name, project.model_dump(mode="json"))

    # ------------------------------------------------------------------ creation

    def _target_for(self, name: str, path: Path | str | None) -> Path:
        if path is None:
            target = self.root / name
        else:
            given = Path(path)
            target = given if given.is_absolute() else self.root / given
        lexical = Path(os.path.normpath(target))
        if not lexical.is_relative_to(self.root) or lexical == self.root:
            raise InvalidInputError("path", f"{path!s} is not inside the projects root {self.root}")
        for part in [lexical, *lexical.parents]:
            if part == self.root:
                break
            if part.is_symlink():
                raise InvalidInputError(
                    "path",
                    f"{part} is a symbolic link; projects are created only in real folders under the root",
                )
        resolved = lexical.resolve()
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise InvalidInputError("path", f"{path!s} resolves outside the projects root {self.root}")
        return lexical

    def _variables(self, project: Project, template: ProjectTemplate) -> dict[str, str]:
        return {
            "project_name": project.name,
            "project_type": project.type.value,
            "description": project.description,
            "version": project.version,
            "author": project.owner or "unknown",
            "owner": project.owner,
            "created_at": project.created_at.date().isoformat(),
            "project_path": project.path,
            "python": sys.executable,
            "template_name": template.name,
            "template_version": template.version,
        }

    def build_workflow_specs(self, project: Project, template: ProjectTemplate) -> list[WorkflowSpec]:
        """The template's workflows for ``project`` as ``WorkflowSpec`` named ``<project>.<workflow>``.

        Raises:
            InvalidInputError: a workflow name would be too long, or a step is malformed.
        """
        variables = self._variables(project, template)
        specs: list[WorkflowSpec] = []
        for workflow in template.workflows:
            name = f"{project.name}.{workflow.name}"
            source = f"template {template.name} workflow {workflow.name}"
            try:
                spec = WorkflowSpec(
                    name=name,
                    description=render_template(workflow.description, variables, source=source),
                    steps=_render_value(workflow.steps, variables, source),
                    parameters={
                        "project_path": project.path,
                        **_render_value(workflow.parameters, variables, source),
                    },
                    version=template.version,
                )
            except ValidationError as exc:
                if len(name) > MAX_PROJECT_NAME:
                    raise InvalidNameError(
                        "project",
                        project.name,
                        f"its workflow name {name!r} would exceed {MAX_PROJECT_NAME} characters; "
                        "choose a shorter project name",
                    ) from None
                raise InvalidInputError(source, f"invalid workflow: {exc}") from None
            specs.append(spec)
        return specs

    def create_project(
        self,
        name: str,
        project_type: ProjectType | str | None = None,
        *,
        template: str | None = None,
        description: str = "",
        owner: str = "",
        path: Path | str | None = None,
        exist_ok: bool = False,
        overwrite_workflows: bool = False,
    ) -> Project:
        """Scaffold a project folder from a template and register it.

        Writes the template's directories and files, its config file, the RASP docs and ``project.json``;
        registers its workflows with the workflow manager (if any). The project starts ACTIVE.

        Args:
            name: the project name (also the folder name unless ``path`` is given).
            project_type: a :class:`ProjectType` or its value (``"ai_analysis"``); selects the template
                of that name when ``template`` is not given. Default ``custom``.
            template: a template name (packaged type or a custom template in ``<templates_dir>/projects``).
            description, owner: recorded in the manifest and used in the docs, verbatim.
            path: the folder, relative to the root (or absolute inside it); default ``<root>/<name>``.
            exist_ok: scaffold into an existing folder (files already there are kept).
            overwrite_workflows: replace registered workflows whose names the template's workflows
                take (``<name>.<workflow>``); without it such a collision is an error. If the creation
                fails afterwards, the replaced definitions are registered again.

        Raises:
            InvalidNameError: the name is not acceptable.
            InvalidInputError: unknown type/template, a type that contradicts the template, a path
                outside the root or through a symbolic link, a bad template.
            AlreadyExistsError: a project of that name exists, the folder exists without ``exist_ok``,
                or a template workflow's name is taken without ``overwrite_workflows`` (nothing is created).
            ProjectCreationError: the file system refused midway (what this call created is removed).
        """
        validate_project_name(name)
        if template is None:
            kind = _parse_enum(ProjectType, project_type or ProjectType.CUSTOM, "project_type")
            loaded = self._loaded_template(kind.value)
        else:
            loaded = self._loaded_template(template)
            if project_type is not None:
                kind = _parse_enum(ProjectType, project_type, "project_type")
                if kind is not loaded.template.type:
                    raise InvalidInputError(
                        "project_type",
                        f"{kind.value!r} contradicts template {loaded.template.name!r} "
                        f"(type {loaded.template.type.value!r}); omit one of them",
                    )
        tmpl = loaded.template
        target = self._target_for(name, path)
        now = utcnow()
        project = Project(
            name=name,
            type=tmpl.type,
            status=ProjectStatus.ACTIVE,
            description=description,
            owner=owner,
            path=str(target),
            created_at=now,
            updated_at=now,
            template=tmpl.name,
            template_version=tmpl.version,
        )
        variables = self._variables(project, tmpl)
        specs = self.build_workflow_specs(project, tmpl)
        files = {
            rel: render_template(text, variables, source=f"{loaded.source}:{rel}")
            for rel, text in tmpl.files.items()
        }
        config = _render_value(tmpl.default_config, variables, f"{loaded.source}.default_config")
        project.config = config
        project.workflows = [s.name for s in specs]

        with self._lock:
            self._load()
            if name in self._projects:
                raise AlreadyExistsError("project", name, "choose another name or use get_project")
            if (target / MANIFEST_FILE).exists():
                raise AlreadyExistsError("project folder", str(target), f"it already holds a {MANIFEST_FILE}")
            if not overwrite_workflows:
                self._refuse_taken_workflows(name, specs)
            creation = _Creation(target, self.root)
            registered: list[str] = []
            replaced: dict[str, WorkflowSpec] = {}
            try:
                creation.begin(exist_ok)
                for rel in tmpl.directory_structure:
                    creation.mkdir(rel)
                for rel, text in files.items():
                    creation.write(rel, text)
                if tmpl.config_file is not None:
                    creation.write(tmpl.config_file, json.dumps(config, indent=2) + "\n")
                self.docs.generate_all_documentation(
                    target,
                    project_name=name,
                    project_type=tmpl.type.value,
                    description=description,
                    version=project.version,
                    author=owner,
                    created_at=now,
                    directories=tmpl.directory_structure,
                    project_template_dir=loaded.docs_dir,
                    extra_variables=self._doc_variables(tmpl, specs),
                    hashes=project.docs,
                )
                for spec in specs:
                    if self.workflow_manager is not None:
                        if overwrite_workflows:
                            previous = self._registered_spec(spec.name)
                            if previous is not None:
                                replaced[spec.name] = previous
                        refusal = self._register(spec, overwrite=overwrite_workflows, project=name)
                        if refusal is None:
                            registered.append(spec.name)
                        else:
                            project.workflows.remove(spec.name)
                            project.workflows_not_registered[spec.name] = refusal
                self._save_manifest(project)
                self._projects[name] = project
                self._write_index()
            except BaseException as exc:
                self._projects.pop(name, None)
                self._unregister(registered, replaced)
                creation.rollback()
                if isinstance(exc, OSError) and not isinstance(exc, OrchestrationError):
                    raise ProjectCreationError(name, str(target), f"{type(exc).__name__}: {exc}") from exc
                raise
        _log.info("project.created", project=name, type=tmpl.type.value, template=tmpl.name, path=str(target))
        return project.model_copy(deep=True)

    def _registered_spec(self, name: str) -> WorkflowSpec | None:
        assert self.workflow_manager is not None
        try:
            return self.workflow_manager.get_workflow(name)
        except LookupError:
            return None

    def _refuse_taken_workflows(self, project: str, specs: list[WorkflowSpec]) -> None:
        """Raise before anything is written if a template workflow's name is already registered."""
        if self.workflow_manager is None:
            return
        for spec in specs:
            if self._registered_spec(spec.name) is not None:
                raise _workflow_taken(spec.name, project)

    def _register(self, spec: WorkflowSpec, *, overwrite: bool, project: str) -> str | None:
        """Register one template workflow; return why not when this server refuses its actions.

        A server that refuses code execution (network transports by default) still scaffolds the
        project: workflows that need ``shell.run``/``python.call`` are listed as not registered, with
        the reason, instead of failing the whole creation.
        """
        assert self.workflow_manager is not None
        try:
            self.workflow_manager.create_workflow(spec, overwrite=overwrite)
        except DAGValidationError as exc:
            if exc.problems and all("is refused" in problem for problem in exc.problems):
                return "; ".join(exc.problems)
            raise
        except AlreadyExistsError:  # registered by someone else since the check under our lock
            raise _workflow_taken(spec.name, project) from None
        return None

    def _unregister(self, names: list[str], replaced: Mapping[str, WorkflowSpec]) -> None:
        """Undo this creation's registrations: delete new workflows, put replaced ones back."""
        workflows = self.workflow_manager
        if workflows is None:
            return
        for name in names:
            try:
                if name in replaced:
                    workflows.create_workflow(replaced[name], overwrite=True)
                else:
                    workflows.delete_workflow(name)
            except Exception as exc:  # best effort while already failing; the first error is raised
                _log.warning("project.unregister_failed", workflow=name, error=str(exc))

    @staticmethod
    def _doc_variables(template: ProjectTemplate, specs: list[WorkflowSpec]) -> dict[str, str]:
        listing = "\n".join(f"- `{s.name}` — {s.description}" for s in specs) or "_No workflows._"
        return {"template_description": template.description, "workflow_list": listing}

    # ------------------------------------------------------------------ queries and updates

    def get_project(self, name: str) -> Project:
        """The project called ``name``.

        Raises:
            ProjectNotFoundError: no such project (the message lists the known ones).
        """
        with self._lock:
            if name not in self._projects:
                self._load()
            project = self._projects.get(name)
            if project is None:
                raise ProjectNotFoundError(name, known=self._projects)
            return project.model_copy(deep=True)

    def list_projects(
        self, status: ProjectStatus | str | None = None, type: ProjectType | str | None = None
    ) -> list[Project]:
        """Every project (re-read from disk), optionally filtered by status and type, sorted by name."""
        wanted_status = _parse_enum(ProjectStatus, status, "status") if status is not None else None
        wanted_type = _parse_enum(ProjectType, type, "type") if type is not None else None
        with self._lock:
            self._load()
            return [
                p.model_copy(deep=True)
                for _, p in sorted(self._projects.items())
                if (wanted_status is None or p.status is wanted_status)
                and (wanted_type is None or p.type is wanted_type)
            ]

    def _update(self, name: str, **changes: Any) -> Project:
        with self._lock:
            current = self.get_project(name)
            updated = current.model_copy(update={**changes, "updated_at": utcnow()})
            self._save_manifest(updated)
            self._projects[name] = updated
            return updated.model_copy(deep=True)

    def update_project_status(self, name: str, status: ProjectStatus | str) -> Project:
        """Set the project's status (any of the ProjectStatus values) and save the manifest."""
        return self._update(name, status=_parse_enum(ProjectStatus, status, "status"))

    def archive_project(self, name: str) -> Project:
        """Mark the project ARCHIVED; its folder and files are kept as they are."""
        return self._update(name, status=ProjectStatus.ARCHIVED)

    def add_milestone(
        self, name: str, milestone: str, *, description: str = "", due_date: date | str | None = None
    ) -> Project:
        """Add a milestone (unique by name within the project).

        Raises:
            AlreadyExistsError: the project already has a milestone of that name.
            InvalidInputError: ``due_date`` is not an ISO date.
        """
        with self._lock:
            project = self.get_project(name)
            if any(m.name == milestone for m in project.milestones):
                raise AlreadyExistsError("milestone", milestone, f"project {name!r} already has it")
            try:
                entry = Milestone(name=milestone, description=description, due_date=due_date)
            except ValidationError as exc:
                raise InvalidInputError("milestone", str(exc)) from None
            return self._update(name, milestones=[*project.milestones, entry])

    def project_summary(self) -> dict[str, Any]:
        """Counts of projects in all, by type and by status (every type and status listed)."""
        projects = self.list_projects()
        by_type = {t.value: 0 for t in ProjectType}
        by_status = {s.value: 0 for s in ProjectStatus}
        for p in projects:
            by_type[p.type.value] += 1
            by_status[p.status.value] += 1
        return {"total": len(projects), "by_type": by_type, "by_status": by_status, "root": str(self.root)}

    def generate_docs(self, name: str, *, force: bool = False) -> list[Path]:
        """Regenerate the project's RASP docs; files a person edited are kept unless ``force``."""
        with self._lock:
            project = self.get_project(name)
            loaded = self._loaded_template(project.template)
            specs = self.build_workflow_specs(project, loaded.template)
            hashes = dict(project.docs)
            written = self.docs.generate_all_documentation(
                project.path,
                project_name=project.name,
                project_type=project.type.value,
                description=project.description,
                version=project.version,
                author=project.owner,
                created_at=project.created_at,
                directories=loaded.template.directory_structure,
                project_template_dir=loaded.docs_dir,
                extra_variables=self._doc_variables(loaded.template, specs),
                hashes=hashes,
                force=force,
            )
            self._update(name, docs=hashes)
            return written

    def register_workflows(self, name: str) -> list[WorkflowSpec]:
        """(Re-)register the project's template workflows with the workflow manager, e.g. after a restart.

        Returns the specs (also when no workflow manager is attached, so callers can register them).
        """
        with self._lock:
            project = self.get_project(name)
            specs = self.build_workflow_specs(project, self._loaded_template(project.template).template)
            names = [s.name for s in specs]
            refused: dict[str, str] = {}
            if self.workflow_manager is not None:
                for spec in specs:
                    # The project's own workflows (after a restart, or a template update).
                    refusal = self._register(spec, overwrite=True, project=name)
                    if refusal is not None:
                        refused[spec.name] = refusal
                names = [n for n in names if n not in refused]
            if names != project.workflows or refused != project.workflows_not_registered:
                self._update(name, workflows=names, workflows_not_registered=refused)
            return specs
