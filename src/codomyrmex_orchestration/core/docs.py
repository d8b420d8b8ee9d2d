"""DocumentationGenerator: RASP docs (README, AGENTS, SPEC, PAI) for a project tree, from templates.

Templates use ``{{variable}}`` placeholders replaced literally (backslashes and ``$`` in values are kept
as written); ``{{variable?}}`` marks one optional; ``{{{{`` and ``}}}}`` write literal ``{{`` and ``}}``.
Generated files are tracked by content hash so a file a person edited is never overwritten unless asked;
every target is examined before the first is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from codomyrmex_orchestration.config import DEFAULT_TEMPLATES_DIR
from codomyrmex_orchestration.core._files import atomic_write
from codomyrmex_orchestration.core.models import utcnow
from codomyrmex_orchestration.errors import InvalidInputError, TemplateError
from codomyrmex_orchestration.logs import get_logger

__all__ = [
    "DOC_TEMPLATE_NAMES",
    "NESTED_DOCS",
    "ROOT_DOCS",
    "DocsReport",
    "DocumentationGenerator",
    "content_hash",
    "relative_links",
    "render_template",
]

#: Files written at the project root, and in every nested directory.
ROOT_DOCS = ("README.md", "AGENTS.md", "SPEC.md", "PAI.md")
NESTED_DOCS = ("README.md", "AGENTS.md")

#: Output file -> template file name, for the root and for nested directories.
DOC_TEMPLATE_NAMES: dict[str, dict[str, str]] = {
    "root": {name: name.replace(".md", ".template.md") for name in ROOT_DOCS},
    "nested": {name: "directory_" + name.replace(".md", ".template.md") for name in NESTED_DOCS},
}

# ``{{{{`` and ``}}}}`` are tried first at each position: they are the escapes for literal braces.
_PLACEHOLDER = re.compile(r"\{\{\{\{|\}\}\}\}|\{\{(.*?)\}\}", re.DOTALL)
_ESCAPES = {"{{{{": "{{", "}}}}": "}}"}
_VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\?)?$")
_SKIPPED_DIRS = {"__pycache__", "node_modules"}

_log = get_logger("codomyrmex_orchestration.docs")


def content_hash(text: str) -> str:
    """The hex SHA-256 of ``text`` encoded as UTF-8 (what the manifest records per generated file)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_encodable(rel: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            "project_path",
            f"{rel} would contain {exc.object[exc.start : exc.end]!r} at character {exc.start}, which is not "
            "text UTF-8 can hold (a lone surrogate, from a template or a value such as the description); "
            "nothing was written",
        ) from None


def _existing_hash(root: Path, rel: str) -> str | None:
    """The SHA-256 of the bytes of ``root/rel`` (equal to :func:`content_hash` of the same text, and
    defined for a file in any encoding), or None if there is no such file.

    Raises:
        InvalidInputError: the target is a symbolic link (or lies under one leaving the project), is a
            folder or other non-file, or cannot be read; the message names it.
    """
    target = root / rel
    if target.is_symlink() or not target.parent.resolve().is_relative_to(root):
        raise InvalidInputError(
            "project_path", f"{rel} is or lies under a symbolic link leaving the project; refused"
        )
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInputError(
            "project_path", f"{rel} cannot be examined ({exc.strerror}); nothing was written"
        ) from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InvalidInputError(
            "project_path",
            f"{rel} is {what} where a documentation file goes; rename or remove it (nothing was written)",
        )
    try:
        with target.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise InvalidInputError(
            "project_path",
            f"{rel} cannot be read ({exc.strerror}); make it readable or remove it (nothing was written)",
        ) from None


def render_template(
    text: str,
    variables: Mapping[str, str],
    *,
    source: str = "template",
    keep_references: bool = False,
) -> str:
    """Replace every ``{{name}}`` in ``text`` with ``variables[name]``, literally.

    ``{{name?}}`` is optional: replaced by ``""`` when ``name`` is not given. ``{{{{`` and ``}}}}`` stand
    for literal ``{{`` and ``}}`` (Vue ``{{{{ message }}}}``, GitHub Actions ``${{{{ secrets.TOKEN }}}}``).
    Values are inserted as written (no escape processing), so ``C:\\new\\1x`` and ``$HOME`` survive
    unchanged.

    Args:
        text: the template text.
        variables: name -> value.
        source: where the text came from, named in errors.
        keep_references: leave dotted placeholders such as ``{{steps.a.output}}`` or
            ``{{params.x}}`` untouched (they are resolved later, when a workflow runs).

    Raises:
        TemplateError: a placeholder names an unknown variable (the message lists the known ones) or
            is not a variable name; the message shows how to write the braces literally.
    """
    known = ", ".join(sorted(variables)) or "(none)"

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return _ESCAPES[match.group(0)]
        inner = match.group(1).strip()
        found = _VARIABLE.match(inner)
        literal = "{{{{" + _shorten(_escape(match.group(1))) + "}}}}"
        if found is None:
            if keep_references and "." in inner:
                return match.group(0)
            raise TemplateError(
                inner,
                "is not a variable placeholder (variable names are letters, digits and '_'); to keep "
                f"these braces as literal text write {literal}; known variables: {known}",
                field=source,
            )
        name, optional = found.group(1), found.group(2) == "?"
        if name in variables:
            return str(variables[name])
        if optional:
            return ""
        raise TemplateError(
            name,
            f"unknown variable; known variables: {known}. If the braces are literal text (Vue, Jinja, "
            f"Handlebars) write {literal}; if {name!r} is a variable that may be unset, write "
            f"{{{{{name}?}}}} (it becomes empty)",
            field=source,
        )

    return _PLACEHOLDER.sub(substitute, text)


def _escape(text: str) -> str:
    """``text`` written so that :func:`render_template` gives it back unchanged."""
    return text.replace("{{", "{{{{").replace("}}", "}}}}")


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class DocsReport:
    """What one generation did. Paths are absolute; ``hashes`` maps relative posix path -> SHA-256."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    kept_edited: list[Path] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)


def _title(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().capitalize() or name


class DocumentationGenerator:
    """Writes RASP documentation into a project tree.

    Templates are looked up, per file, in order: the project's template folder (``project_template_dir``
    argument), ``<templates_dir>/docs/``, then the defaults shipped in the package. Within each folder a
    per-type override ``{type}_{name}`` (e.g. ``ai_analysis_README.template.md``) wins over ``{name}``.

    Args:
        templates_dir: the configurable templates folder (default ``config/templates``); its ``docs/``
            subfolder is searched. ``None`` searches only the project folder and the packaged defaults.
    """

    def __init__(self, templates_dir: Path | str | None = DEFAULT_TEMPLATES_DIR) -> None:
        self.templates_dir = Path(templates_dir) if templates_dir is not None else None

    # ------------------------------------------------------------------ templates

    def _search_path(self, project_template_dir: Traversable | Path | None) -> list[tuple[str, Traversable]]:
        places: list[tuple[str, Traversable]] = []
        if project_template_dir is not None:
            places.append((str(project_template_dir), project_template_dir))
        if self.templates_dir is not None:
            places.append((str(self.templates_dir / "docs"), self.templates_dir / "docs"))
        packaged = resources.files("codomyrmex_orchestration.core.templates").joinpath("docs")
        places.append(("package:codomyrmex_orchestration/core/templates/docs", packaged))
        return places

    def load_template(
        self,
        name: str,
        *,
        project_type: str | None = None,
        project_template_dir: Traversable | Path | None = None,
    ) -> tuple[str, str]:
        """Return ``(text, source)`` of the template ``name`` following the lookup order.

        Raises:
            TemplateError: no folder has the template.
        """
        candidates = ([f"{project_type}_{name}"] if project_type else []) + [name]
        searched: list[str] = []
        for label, place in self._search_path(project_template_dir):
            for candidate in candidates:
                entry = place.joinpath(candidate)
                searched.append(f"{label}/{candidate}")
                if entry.is_file():
                    return entry.read_text(encoding="utf-8"), f"{label}/{candidate}"
        raise TemplateError(name, f"no such documentation template; looked in {', '.join(searched)}")

    # ------------------------------------------------------------------ generation

    def _directories(self, root: Path, directories: Mapping[str, str] | None) -> list[str]:
        found: set[str] = set()
        if directories is not None:
            for rel in directories:
                parts = _inside(rel)
                for i in range(1, len(parts) + 1):
                    found.add(Path(*parts[:i]).as_posix())
        else:
            for dirpath, dirnames, _files in os.walk(root):
                dirnames[:] = sorted(
                    d
                    for d in dirnames
                    if not d.startswith(".")
                    and d not in _SKIPPED_DIRS
                    and not (Path(dirpath) / d).is_symlink()
                )
                for d in dirnames:
                    found.add((Path(dirpath) / d).relative_to(root).as_posix())
        return sorted(d for d in found if (root / d).is_dir() and not (root / d).is_symlink())

    def plan(
        self,
        project_path: Path | str,
        *,
        project_name: str,
        project_type: str = "custom",
        description: str = "",
        version: str = "0.1.0",
        author: str = "",
        created_at: datetime | None = None,
        directories: Mapping[str, str] | None = None,
        project_template_dir: Traversable | Path | None = None,
        extra_variables: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Render every document without writing: relative posix path -> content, every path inside
        the project.

        Raises:
            TemplateError: a template is missing or has an unknown placeholder (nothing is written).
            InvalidInputError: a ``directories`` entry is absolute or leaves the project (``..``).
        """
        root = Path(project_path)
        purposes = dict(directories or {})
        dirs = self._directories(root, directories)
        top_level = [d for d in dirs if "/" not in d]
        base: dict[str, str] = {
            "project_name": project_name,
            "project_type": project_type,
            "description": description,
            "version": version,
            "author": author or "unknown",
            "created_at": (created_at or utcnow()).date().isoformat(),
            "active_components": ", ".join(f"{d}/" for d in top_level) or "(none)",
        }
        base.update(extra_variables or {})

        def children_of(rel: str) -> list[str]:
            prefix = "" if rel == "." else rel + "/"
            return [d for d in dirs if d.startswith(prefix) and "/" not in d[len(prefix) :]]

        def links(rel: str, target: str) -> str:
            kids = children_of(rel)
            if not kids:
                return "_No subdirectories._"
            lines = []
            for kid in kids:
                short = kid.rsplit("/", 1)[-1]
                purpose = purposes.get(kid, "")
                lines.append(f"- [{short}/]({short}/{target})" + (f" — {purpose}" if purpose else ""))
            return "\n".join(lines)

        out: dict[str, str] = {}
        for rel in [".", *dirs]:
            nested = rel != "."
            depth = 0 if not nested else len(rel.split("/"))
            name = project_name if not nested else rel.rsplit("/", 1)[-1]
            purpose = purposes.get(rel) or (
                description if not nested else f"{_title(name)} of {project_name}"
            )
            variables = dict(base)
            variables.update(
                {
                    "directory_name": name,
                    "directory_path": rel,
                    "purpose": purpose,
                    "purpose_lower": purpose.lower(),
                    "parent_link": "[Parent directory](../README.md)" if nested else "",
                    "parent_agents_link": "[Parent AGENTS.md](../AGENTS.md)" if nested else "",
                    "root_link": f"[Project root]({'../' * depth}README.md)",
                    "child_links": links(rel, "README.md"),
                    "child_agents_links": links(rel, "AGENTS.md"),
                }
            )
            kind = "nested" if nested else "root"
            for filename, template_name in DOC_TEMPLATE_NAMES[kind].items():
                text, source = self.load_template(
                    template_name, project_type=project_type, project_template_dir=project_template_dir
                )
                target = filename if not nested else f"{rel}/{filename}"
                out[target] = render_template(text, variables, source=source)
        return out

    def generate(
        self,
        project_path: Path | str,
        *,
        project_name: str,
        project_type: str = "custom",
        description: str = "",
        version: str = "0.1.0",
        author: str = "",
        created_at: datetime | None = None,
        directories: Mapping[str, str] | None = None,
        project_template_dir: Traversable | Path | None = None,
        extra_variables: Mapping[str, str] | None = None,
        hashes: Mapping[str, str] | None = None,
        force: bool = False,
        report: DocsReport | None = None,
    ) -> DocsReport:
        """Render and write the RASP documents; see :meth:`generate_all_documentation`.

        ``report``, when given, is filled in as the files are written and returned: if a write fails,
        it still says what this call wrote before the failure (and their hashes).
        """
        root = Path(project_path).resolve()
        if not root.is_dir():
            raise InvalidInputError("project_path", f"{root} is not a directory")
        rendered = self.plan(
            root,
            project_name=project_name,
            project_type=project_type,
            description=description,
            version=version,
            author=author,
            created_at=created_at,
            directories=directories,
            project_template_dir=project_template_dir,
            extra_variables=extra_variables,
        )
        # Every target is checked, and every existing one read, before the first is written: a refusal
        # leaves the tree as it was, and a file written earlier in this call is never mistaken for the
        # person's when the hashes are compared.
        current: dict[str, str | None] = {}
        for rel, text in rendered.items():
            _check_encodable(rel, text)
            current[rel] = _existing_hash(root, rel)
        known = dict(hashes or {})
        report = DocsReport() if report is None else report
        for rel, text in rendered.items():
            target = root / rel
            new_hash = content_hash(text)
            found = current[rel]
            if found is not None:
                if found == new_hash:
                    report.unchanged.append(target)
                    report.hashes[rel] = new_hash
                    continue
                if found != known.get(rel) and not force:
                    # Edited by a person (or never ours): keep it, and keep its old record.
                    report.kept_edited.append(target)
                    if rel in known:
                        report.hashes[rel] = known[rel]
                    continue
            atomic_write(target, text, private=False)
            report.written.append(target)
            report.hashes[rel] = new_hash
        _log.debug(
            "docs.generated",
            project=project_name,
            written=len(report.written),
            unchanged=len(report.unchanged),
            kept_edited=len(report.kept_edited),
        )
        return report

    def generate_all_documentation(
        self,
        project_path: Path | str,
        *,
        project_name: str,
        project_type: str = "custom",
        description: str = "",
        version: str = "0.1.0",
        author: str = "",
        created_at: datetime | None = None,
        directories: Mapping[str, str] | None = None,
        project_template_dir: Traversable | Path | None = None,
        extra_variables: Mapping[str, str] | None = None,
        hashes: MutableMapping[str, str] | None = None,
        force: bool = False,
    ) -> list[Path]:
        """Write README/AGENTS/SPEC/PAI at the root and README/AGENTS in each nested directory.

        Idempotent: a file whose content would not change is not rewritten. A file whose content differs
        from what was last generated (its hash in ``hashes``), or that exists with no recorded hash, was
        edited by a person and is kept unless ``force``.

        Args:
            project_path: the project folder (must exist).
            project_name, project_type, description, version, author, created_at: template variables.
            directories: relative directory -> purpose. Docs go in these and their parents; ``None``
                walks the tree (skipping hidden folders, ``__pycache__`` and symbolic links).
            project_template_dir: first folder searched for templates.
            extra_variables: more template variables (override the computed ones).
            hashes: relative path -> SHA-256 of what was last generated; updated in place, also when
                a write fails (then with the files written before the failure).
            force: overwrite edited files too.

        Returns:
            The files written (absolute paths), in generation order.

        Raises:
            TemplateError: a template is missing or names an unknown variable (nothing is written).
            InvalidInputError: ``project_path`` is not a directory, a ``directories`` entry leaves the
                project, or a target is a symbolic link, a folder or unreadable (nothing is written; the
                message names the target).
            OSError: the file system refused a write (the files before it are written and recorded).
        """
        report = DocsReport()
        try:
            self.generate(
                project_path,
                project_name=project_name,
                project_type=project_type,
                description=description,
                version=version,
                author=author,
                created_at=created_at,
                directories=directories,
                project_template_dir=project_template_dir,
                extra_variables=extra_variables,
                hashes=hashes,
                force=force,
                report=report,
            )
        except BaseException:
            if hashes is not None:  # what was written before the failure is ours: record it
                hashes.update(report.hashes)
            raise
        if hashes is not None:
            hashes.clear()
            hashes.update(report.hashes)
        return report.written


def _inside(rel: object) -> tuple[str, ...]:
    """The parts of a ``directories`` entry, which must be a relative path staying inside the project."""
    if not isinstance(rel, str) or not rel.strip():
        raise InvalidInputError("directories", f"entries must be relative folder paths, got {rel!r}")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidInputError(
            "directories",
            f"{rel!r} must be a relative path inside the project (not absolute, no '..'); "
            "the documentation is written only inside it",
        )
    return pure.parts


def relative_links(markdown: str) -> Sequence[str]:
    """Relative link targets in ``markdown`` (``[text](target)``), for checks and tests."""
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", markdown)
        if "://" not in target and not target.startswith(("#", "mailto:"))
    ]
