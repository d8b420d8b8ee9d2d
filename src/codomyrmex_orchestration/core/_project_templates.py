"""Project templates: finding and loading them (package data, overridden from ``<templates_dir>/projects``)
and rendering them for one project (file contents, config, workflow specs, doc variables).

:class:`TemplateLibrary` re-reads the template folders on every call, so a template edited on disk is
used at once; it holds nothing but the folder it reads.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.core._project_models import (
    MANIFEST_FILE,
    MAX_PROJECT_NAME,
    Project,
    ProjectTemplate,
)
from codomyrmex_orchestration.core.docs import render_template
from codomyrmex_orchestration.core.models import WorkflowSpec
from codomyrmex_orchestration.errors import InvalidInputError, InvalidNameError, OrchestrationError

__all__ = [
    "LoadedTemplate",
    "TemplateLibrary",
    "build_workflow_specs",
    "doc_variables",
    "longest_project_name",
    "render_value",
    "template_variables",
]

_TMPL_SUFFIX = ".tmpl"


@dataclass(frozen=True)
class LoadedTemplate:
    """A validated template, where it came from, its doc templates folder (if it has one), and the files
    of its ``files/`` folder that are not UTF-8 text (relative path -> bytes, copied, never rendered)."""

    template: ProjectTemplate
    source: str
    docs_dir: Traversable | None
    copies: Mapping[str, bytes] = field(default_factory=dict)


class TemplateLibrary:
    """The project templates: packaged ones, overridden and extended by ``<templates_dir>/projects``.

    Args:
        templates_dir: the configurable templates folder; ``None``: packaged templates only.
    """

    def __init__(self, templates_dir: Path | None) -> None:
        self.templates_dir = templates_dir

    def _places(self) -> list[tuple[str, Traversable]]:
        places: list[tuple[str, Traversable]] = [
            ("package", resources.files("codomyrmex_orchestration.core.templates").joinpath("projects"))
        ]
        if self.templates_dir is not None and (self.templates_dir / "projects").is_dir():
            places.append((str(self.templates_dir / "projects"), self.templates_dir / "projects"))
        return places

    def scan(
        self, *, packaged: bool = True
    ) -> tuple[dict[str, LoadedTemplate], dict[str, tuple[str, InvalidInputError]]]:
        """Every template by name, and the refused ones: name -> (its file, the error naming the file,
        the field and why).

        A configured template replaces a packaged one of the same name, a malformed configured one too
        (that name is refused rather than silently served by the package). A malformed file refuses
        only its own template: it is named by its ``name`` field, else by its file name. With
        ``packaged=False`` only the configured folder is read.
        """
        found: dict[str, LoadedTemplate] = {}
        refused: dict[str, tuple[str, InvalidInputError]] = {}
        for label, place in self._places()[0 if packaged else 1 :]:
            for entry in sorted(place.iterdir(), key=lambda e: e.name):
                if not (entry.is_file() and entry.name.endswith(".json")):
                    continue
                path = f"{label}/{entry.name}"
                try:
                    loaded = _read_template(label, place, entry)
                except (OrchestrationError, OSError, ValueError) as exc:
                    name = _declared_name(entry)
                    found.pop(name, None)
                    error = exc if isinstance(exc, InvalidInputError) else None
                    refused[name] = (path, error or InvalidInputError(path, f"cannot be read: {exc}"))
                    continue
                refused.pop(loaded.template.name, None)
                found[loaded.template.name] = loaded  # later places (config) override the package
        return found, refused

    def all(self) -> dict[str, LoadedTemplate]:
        """Every template that loads, by name (see :meth:`scan`; :meth:`problems` lists the others)."""
        return self.scan()[0]

    def problems(self) -> list[dict[str, str]]:
        """The template files refused, each as ``{"path", "reason"}`` (health reports them). Only the
        configured folder can hold one: the packaged templates are read by the tests."""
        found = []
        for path, error in self.scan(packaged=False)[1].values():
            reason = str(error)  # its field starts with the path: keep what follows it
            for prefix in (f"{path}.", f"{path}: "):
                reason = reason.removeprefix(prefix)
            found.append({"path": path, "reason": reason})
        return found

    def get(self, name: str) -> LoadedTemplate:
        """The template called ``name`` (case-insensitive for the packaged type names).

        Raises:
            InvalidInputError: no such template (the message lists the available ones), or its file is
                malformed (``field`` names the file and the field, the message why).
        """
        templates, refused = self.scan()
        lowered = name.strip().lower()
        key = lowered if lowered in templates or lowered in refused else name
        if key in refused:
            raise refused[key][1]
        if key not in templates:
            raise InvalidInputError(
                "template",
                f"{name!r} is not a template{did_you_mean(name, templates)}; available: "
                f"{', '.join(templates)} (list_project_templates shows what each makes)",
            )
        return templates[key]

    def describe(self) -> list[dict[str, Any]]:
        """What each template makes: its type, directories (with purposes), files, config and workflows."""
        return [
            {
                "name": t.template.name,
                "type": t.template.type.value,
                "version": t.template.version,
                "description": t.template.description,
                "source": t.source,
                "directories": dict(t.template.directory_structure),
                "files": sorted([*t.template.files, *t.copies]),
                "max_project_name": longest_project_name(t.template),
                "config_file": t.template.config_file,
                "default_config": t.template.default_config,
                "workflows": [{"name": w.name, "description": w.description} for w in t.template.workflows],
            }
            for t in self.all().values()
        ]


def _read_template(label: str, place: Traversable, entry: Traversable) -> LoadedTemplate:
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
        if isinstance(exc, ValidationError):
            raise InvalidInputError.from_validation(exc, where=source) from None
        raise InvalidInputError(source, f"invalid project template: {exc}") from None
    folder = place.joinpath(template.name)
    files = dict(template.files)
    copies: dict[str, bytes] = {}
    if folder.joinpath("files").is_dir():
        for rel, item in _walk_files(folder.joinpath("files")):
            target = rel.removesuffix(_TMPL_SUFFIX)
            if target in files or target in copies:
                continue  # the template's own "files" entry (or the first of two names) wins
            try:
                data = item.read_bytes()
            except OSError as exc:
                where = f"{label}/{template.name}/files/{rel}"
                raise InvalidInputError(where, f"cannot be read: {exc.strerror or exc}") from None
            try:
                files[target] = data.decode("utf-8")
            except UnicodeDecodeError:  # an image, an archive: copied byte for byte, not rendered
                copies[target] = data
    checked = {_relpath(f"{source}.files", rel): text for rel, text in files.items()}
    for rel in template.directory_structure:
        _relpath(f"{source}.directory_structure", rel)
    if template.config_file is not None:
        _relpath(f"{source}.config_file", template.config_file)
    docs_dir = folder.joinpath("docs")
    return LoadedTemplate(
        template.model_copy(update={"files": checked}),
        source,
        docs_dir if docs_dir.is_dir() else None,
        {_relpath(f"{source}.files", rel): data for rel, data in copies.items()},
    )


def _declared_name(entry: Traversable) -> str:
    """The name a template file gives itself (its ``name`` field), else its file name without .json."""
    try:
        raw = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = None
    declared = raw.get("name") if isinstance(raw, dict) else None
    return declared if isinstance(declared, str) and declared else entry.name.removesuffix(".json")


def _walk_files(base: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _walk_files(entry, rel + "/")
        elif entry.is_file():
            yield rel, entry


def _relpath(field: str, rel: str) -> str:
    """A template's relative path, normalised to posix, or an error if it could leave the project."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel or pure.is_absolute() or rel.startswith(("/", "\\")) or ":" in pure.parts[0]:
        raise InvalidInputError(field, f"{rel!r} must be a relative path inside the project")
    if any(part in ("..", "") for part in pure.parts) or pure.as_posix() in (".", MANIFEST_FILE):
        raise InvalidInputError(field, f"{rel!r} must stay inside the project and not be {MANIFEST_FILE}")
    return pure.as_posix()


# --------------------------------------------------------------------------- rendering for one project


def render_value(value: Any, variables: Mapping[str, str], source: str) -> Any:
    """Substitute project variables in every string of a JSON value, leaving run-time references."""
    if isinstance(value, str):
        return render_template(value, variables, source=source, keep_references=True)
    if isinstance(value, list):
        return [render_value(v, variables, source) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, variables, source) for k, v in value.items()}
    return value


def template_variables(project: Project, template: ProjectTemplate) -> dict[str, str]:
    """The ``{{variable}}`` values a template is rendered with for ``project``."""
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


def longest_project_name(template: ProjectTemplate) -> int:
    """The longest project name ``template`` accepts: its workflows are named ``<project>.<workflow>``,
    and a workflow name has at most 128 characters."""
    longest_workflow = max((len(w.name) for w in template.workflows), default=None)
    return MAX_PROJECT_NAME if longest_workflow is None else MAX_PROJECT_NAME - 1 - longest_workflow


def build_workflow_specs(project: Project, template: ProjectTemplate) -> list[WorkflowSpec]:
    """The template's workflows for ``project`` as ``WorkflowSpec`` named ``<project>.<workflow>``.

    The name limit holds where the workflows are not registered too (a server refusing code
    execution): the first start that allows them registers them under these names.

    Raises:
        InvalidNameError: the project name is longer than :func:`longest_project_name` allows.
        InvalidInputError: a step is malformed.
    """
    longest = longest_project_name(template)
    if len(project.name) > longest:
        widest = max(template.workflows, key=lambda w: len(w.name)).name
        raise InvalidNameError(
            "project",
            project.name,
            f"template {template.name!r} accepts project names of at most {longest} characters "
            f"(this one has {len(project.name)}): its workflow {widest!r} is named "
            f"'<project>.{widest}' and a workflow name has at most {MAX_PROJECT_NAME} characters, also "
            "on a server that registers it only once code execution is allowed; choose a shorter name",
        )
    variables = template_variables(project, template)
    specs: list[WorkflowSpec] = []
    for workflow in template.workflows:
        name = f"{project.name}.{workflow.name}"
        source = f"template {template.name} workflow {workflow.name}"
        try:
            spec = WorkflowSpec(
                name=name,
                description=render_template(workflow.description, variables, source=source),
                steps=render_value(workflow.steps, variables, source),
                parameters={
                    "project_path": project.path,
                    **render_value(workflow.parameters, variables, source),
                },
                version=template.version,
            )
        except ValidationError as exc:
            raise InvalidInputError.from_validation(exc, where=source) from None
        specs.append(spec)
    return specs


def doc_variables(
    template: ProjectTemplate, specs: list[WorkflowSpec], not_registered: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The extra variables of a project's docs: the template's description and its workflow list, the
    registered workflows first, then those ``not_registered`` (name -> why), each with its reason."""
    refused = not_registered or {}
    listing = "\n".join(f"- `{s.name}` — {s.description}" for s in specs if s.name not in refused)
    if not listing:
        listing = "_No workflows are registered._" if refused else "_No workflows._"
    if refused:
        listing += (
            "\n\nNot registered on this server, so not run (a server that allows them registers them when "
            "it starts):\n\n"
            + "\n".join(
                f"- `{s.name}` — {s.description} Why: {refused[s.name]}" for s in specs if s.name in refused
            )
        )
    return {"template_description": template.description, "workflow_list": listing}
