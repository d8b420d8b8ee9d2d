"""ProjectManager: typed project folders scaffolded from templates, with RASP docs and their workflows.

A project is a folder under the projects root holding a ``project.json`` manifest. Templates are data
files (``core/templates/projects/<name>.json`` in the package, overridable and extendable from
``<templates_dir>/projects/``); each lists the directories, files, default config and workflows a project
of its type gets.

This module is the public face; its parts: ``_project_models`` (the vocabulary), ``_project_templates``
(loading and rendering templates), ``_project_creation`` (the creation transaction: files and workflow
registrations, undone together), ``_project_registry`` (manifests and the index on disk) and
``_project_lock`` (the writers of a root, across processes). The manager owns the in-memory view of the
registry (``_projects``) under ``_lock``; every write re-reads what it changes from disk under
``_exclusive`` (``_lock`` plus the root's lock file), so managers in other processes lose nothing.
"""

from __future__ import annotations

import json
import threading
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from codomyrmex_orchestration.config import DEFAULT_PROJECTS_DIR, DEFAULT_TEMPLATES_DIR
from codomyrmex_orchestration.core._project_creation import Creation, Registrations, target_for
from codomyrmex_orchestration.core._project_lock import ProjectsLock
from codomyrmex_orchestration.core._project_models import (
    INDEX_FILE,
    MANIFEST_FILE,
    MAX_PROJECT_NAME,
    Milestone,
    Project,
    ProjectStatus,
    ProjectStore,
    ProjectTemplate,
    ProjectType,
    WorkflowRegistrar,
    WorkflowTemplate,
    parse_enum,
    validate_project_name,
)
from codomyrmex_orchestration.core._project_registry import ProjectRegistry
from codomyrmex_orchestration.core._project_templates import (
    TemplateLibrary,
    build_workflow_specs,
    doc_variables,
    render_value,
    template_variables,
)
from codomyrmex_orchestration.core.docs import DocumentationGenerator, render_template
from codomyrmex_orchestration.core.models import WorkflowSpec, utcnow
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    InvalidInputError,
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
    "ProjectStore",
    "ProjectTemplate",
    "ProjectType",
    "WorkflowRegistrar",
    "WorkflowTemplate",
    "validate_project_name",
]

_log = get_logger("codomyrmex_orchestration.projects")


class ProjectManager:
    """Creates and tracks projects under ``root``.

    The registry is the set of ``project.json`` manifests on disk plus an index ``<root>/.projects.json``
    (written atomically); a new manager on the same root finds every project again, including folders
    holding a manifest that the index does not list.

    Args:
        root: the projects root (default ``projects`` in the working directory); created if missing.
        templates_dir: the configurable templates folder (default ``config/templates``): project templates
            in ``projects/``, doc templates in ``docs/``. ``None``: packaged templates only.
        workflow_manager: when given, each template workflow is registered with it
            as ``<project>.<workflow>``; a name already taken is an error unless the caller passes
            ``overwrite_workflows=True`` to :meth:`create_project`.
        registry_path: the index file (default ``<root>/.projects.json``).
        docs: the documentation generator (default one on the same ``templates_dir``).
        store: a store that mirrors each manifest (and lists projects to find again).
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
        self._templates = TemplateLibrary(self.templates_dir)
        self._registry = ProjectRegistry(self.root, self.registry_path, store)
        self._lock = threading.RLock()  # guards _projects and serialises writes to the registry
        self._exclusive = ProjectsLock(self.root, self._lock)  # and excludes other processes' writes
        self._projects: dict[str, Project] = self._registry.load()

    # ------------------------------------------------------------------ templates

    def get_template(self, name: str | ProjectType) -> ProjectTemplate:
        """The template called ``name`` (a type value such as ``"ai_analysis"`` or a custom name).

        Raises:
            InvalidInputError: no such template (the message lists the available ones).
        """
        return self._templates.get(str(name)).template

    def list_templates(self) -> list[dict[str, Any]]:
        """What each template makes: its type, directories (with purposes), files, config and workflows.
        A malformed template file is left out (:meth:`template_errors` names it)."""
        return self._templates.describe()

    def template_errors(self) -> list[dict[str, str]]:
        """The template files refused as malformed, each as ``{"path", "reason"}``; the others work."""
        return self._templates.problems()

    def build_workflow_specs(self, project: Project, template: ProjectTemplate) -> list[WorkflowSpec]:
        """The template's workflows for ``project`` as ``WorkflowSpec`` named ``<project>.<workflow>``.

        Raises:
            InvalidInputError: a workflow name would be too long, or a step is malformed.
        """
        return build_workflow_specs(project, template)

    # ------------------------------------------------------------------ creation

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
            kind = parse_enum(ProjectType, project_type or ProjectType.CUSTOM, "project_type")
            loaded = self._templates.get(kind.value)
        else:
            loaded = self._templates.get(template)
            if project_type is not None:
                kind = parse_enum(ProjectType, project_type, "project_type")
                if kind is not loaded.template.type:
                    raise InvalidInputError(
                        "project_type",
                        f"{kind.value!r} contradicts template {loaded.template.name!r} "
                        f"(type {loaded.template.type.value!r}); omit one of them",
                    )
        tmpl = loaded.template
        target = target_for(self.root, name, path)
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
        variables = template_variables(project, tmpl)
        specs = build_workflow_specs(project, tmpl)
        files: dict[str, str | bytes] = {
            rel: render_template(text, variables, source=f"{loaded.source}:{rel}")
            for rel, text in tmpl.files.items()
        } | dict(loaded.copies)
        project.config = render_value(tmpl.default_config, variables, f"{loaded.source}.default_config")
        project.workflows = [s.name for s in specs]

        with self._exclusive:
            self._projects = self._registry.load()
            if name in self._projects:
                raise AlreadyExistsError(
                    "project",
                    name,
                    f"choose another name (list_projects and the resource orchestration://projects/{name} "
                    "show the existing one)",
                )
            if (target / MANIFEST_FILE).exists():
                raise AlreadyExistsError("project folder", str(target), f"it already holds a {MANIFEST_FILE}")
            registrations = (
                Registrations(self.workflow_manager, name) if self.workflow_manager is not None else None
            )
            if registrations is not None and not overwrite_workflows:
                registrations.refuse_taken(specs)
            creation = Creation(target, self.root)
            try:
                creation.begin(exist_ok)
                for rel in tmpl.directory_structure:
                    creation.mkdir(rel)
                for rel, text in files.items():
                    creation.write(rel, text)
                if tmpl.config_file is not None:
                    creation.write(tmpl.config_file, json.dumps(project.config, indent=2) + "\n")
                if registrations is not None:  # before the docs, which say what was registered
                    for spec in specs:
                        refusal = registrations.register(spec, overwrite=overwrite_workflows)
                        if refusal is not None:
                            project.workflows.remove(spec.name)
                            project.workflows_not_registered[spec.name] = refusal
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
                    extra_variables=doc_variables(tmpl, specs, project.workflows_not_registered),
                    hashes=project.docs,
                )
                self._registry.save_manifest(project)
                self._projects[name] = project
                self._registry.write_index(self._projects)
            except BaseException as exc:
                self._projects.pop(name, None)
                if registrations is not None:
                    registrations.undo()
                creation.rollback()
                # A UnicodeEncodeError (a lone surrogate in a file's text) names the file it was writing.
                if isinstance(exc, OSError | UnicodeError) and not isinstance(exc, OrchestrationError):
                    raise ProjectCreationError(name, str(target), f"{type(exc).__name__}: {exc}") from exc
                raise
        _log.info("project.created", project=name, type=tmpl.type.value, template=tmpl.name, path=str(target))
        return project.model_copy(deep=True)

    # ------------------------------------------------------------------ queries and updates

    def get_project(self, name: str) -> Project:
        """The project called ``name``.

        Raises:
            ProjectNotFoundError: no such project (the message lists the known ones).
        """
        with self._lock:
            return self._current(name).model_copy(deep=True)

    def _current(self, name: str) -> Project:
        """The project as its manifest says now (another manager may have written it since)."""
        known = self._projects.get(name)
        project = self._registry.read_manifest(Path(known.path)) if known is not None else None
        if project is None or project.name != name:  # moved, removed or made elsewhere: look again
            self._projects = self._registry.load()
            project = self._projects.get(name)
            if project is None:
                raise ProjectNotFoundError(name, known=self._projects)
        self._projects[name] = project
        return project

    def list_projects(
        self, status: ProjectStatus | str | None = None, type: ProjectType | str | None = None
    ) -> list[Project]:
        """Every project (re-read from disk), optionally filtered by status and type, sorted by name."""
        wanted_status = parse_enum(ProjectStatus, status, "status") if status is not None else None
        wanted_type = parse_enum(ProjectType, type, "type") if type is not None else None
        with self._lock:
            self._projects = self._registry.load()
            return [
                p.model_copy(deep=True)
                for _, p in sorted(self._projects.items())
                if (wanted_status is None or p.status is wanted_status)
                and (wanted_type is None or p.type is wanted_type)
            ]

    def _update(self, name: str, **changes: Any) -> Project:
        """Apply ``changes`` to the manifest as it is on disk now, under the root's lock: a field this
        call does not change keeps what any other manager wrote."""
        with self._exclusive:
            current = self._current(name)
            updated = current.model_copy(update={**changes, "updated_at": utcnow()})
            self._registry.save_manifest(updated)
            self._projects[name] = updated
            return updated.model_copy(deep=True)

    def update_project_status(self, name: str, status: ProjectStatus | str) -> Project:
        """Set the project's status (any of the ProjectStatus values) and save the manifest."""
        return self._update(name, status=parse_enum(ProjectStatus, status, "status"))

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
        with self._exclusive:  # the check and the write see the same manifest
            project = self._current(name)
            if any(m.name == milestone for m in project.milestones):
                raise AlreadyExistsError("milestone", milestone, f"project {name!r} already has it")
            try:
                entry = Milestone(name=milestone, description=description, due_date=due_date)
            except ValidationError as exc:
                raise InvalidInputError.from_validation(exc, where="milestone") from None
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
            loaded = self._templates.get(project.template)
            specs = build_workflow_specs(project, loaded.template)
            hashes = dict(project.docs)
            try:
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
                    extra_variables=doc_variables(loaded.template, specs, project.workflows_not_registered),
                    hashes=hashes,
                    force=force,
                )
            except BaseException:
                # A write failed midway: the docs written before it are ours and must be recorded, or
                # the next regeneration would keep them as if a person had edited them.
                if hashes != project.docs:
                    self._update(name, docs=hashes)
                raise
            self._update(name, docs=hashes)
            return written

    def register_workflows(self, name: str) -> list[WorkflowSpec]:
        """(Re-)register the project's template workflows with the workflow manager, e.g. after a restart.

        These are the project's own names (``<project>.<workflow>``), so they are replaced. Returns the
        specs (also when no workflow manager is attached, so callers can register them).
        """
        with self._exclusive:
            project = self.get_project(name)
            specs = build_workflow_specs(project, self._templates.get(project.template).template)
            names = [s.name for s in specs]
            refused: dict[str, str] = {}
            if self.workflow_manager is not None:
                registrations = Registrations(self.workflow_manager, name)
                for spec in specs:
                    refusal = registrations.register(spec, overwrite=True)
                    if refusal is not None:
                        refused[spec.name] = refusal
                names = [n for n in names if n not in refused]
            if names != project.workflows or refused != project.workflows_not_registered:
                self._update(name, workflows=names, workflows_not_registered=refused)
            return specs

    def register_allowed_workflows(self) -> dict[str, list[str]]:
        """Register the template workflows projects left unregistered (``workflows_not_registered``: this
        server refused their actions then) that it accepts now, and rewrite the docs that list them.

        The engine calls it at start, so a project made while code execution was refused gets its
        workflows from the first start that allows it. A workflow still refused keeps its reason; one
        whose name another workflow took since is left to that one, with a reason saying so. A project
        that cannot be updated is logged and skipped. Returns project -> workflows registered.
        """
        done: dict[str, list[str]] = {}
        if self.workflow_manager is None:
            return done
        with self._exclusive:  # the manifests read here are the ones updated
            self._projects = self._registry.load()
            for name, project in sorted(self._projects.items()):
                if not project.workflows_not_registered:
                    continue
                try:
                    registered = self._register_missing(project, self.workflow_manager)
                except (OrchestrationError, OSError) as exc:  # a start never fails for one project
                    _log.warning("project.workflows_not_registered", project=name, error=str(exc))
                    continue
                if registered:
                    done[name] = registered
                    _log.info("project.workflows_registered", project=name, workflows=registered)
        return done

    def _register_missing(self, project: Project, workflows: WorkflowRegistrar) -> list[str]:
        specs = build_workflow_specs(project, self._templates.get(project.template).template)
        missing = project.workflows_not_registered
        registrations = Registrations(workflows, project.name)
        refused: dict[str, str] = {}
        for spec in specs:
            if spec.name not in missing:
                continue
            try:
                refusal = registrations.register(spec, overwrite=False)
            except AlreadyExistsError:
                refusal = (
                    f"another workflow named {spec.name!r} was registered meanwhile and is kept; delete it "
                    "(delete_workflow) and restart the server to register the project's"
                )
            if refusal is not None:
                refused[spec.name] = refusal
        if refused == missing:
            return []
        added = [s.name for s in specs if s.name in missing and s.name not in refused]
        self._update(project.name, workflows=[*project.workflows, *added], workflows_not_registered=refused)
        self.generate_docs(project.name)  # a doc a person edited is kept
        return added
