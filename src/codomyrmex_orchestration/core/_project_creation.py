"""The creation transaction of one project: the folder and files it writes and the workflows it
registers, each recorded so that a failure undoes exactly what this creation did and nothing else.

:class:`Creation` owns the file side (what existed before, what was added); :class:`Registrations`
owns the workflow side (names registered, definitions replaced). Both are used under the manager's lock.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from codomyrmex_orchestration.core._files import atomic_write
from codomyrmex_orchestration.core._project_models import WorkflowRegistrar
from codomyrmex_orchestration.core.models import WorkflowSpec
from codomyrmex_orchestration.errors import AlreadyExistsError, DAGValidationError, InvalidInputError
from codomyrmex_orchestration.logs import get_logger

__all__ = ["Creation", "Registrations", "target_for", "workflow_taken"]

_log = get_logger("codomyrmex_orchestration.projects")


class Creation:
    """The files and folders one ``create_project`` call adds, so that a failure removes exactly those."""

    def __init__(self, target: Path, root: Path) -> None:
        self.target = target
        self.root = root
        self.created_target = False
        self.began = False  # until begin() has looked at the folder, a rollback must touch nothing
        self.before: set[Path] = set()

    def begin(self, exist_ok: bool) -> None:
        """Create the folder, or with ``exist_ok`` note what an existing one holds (it is kept)."""
        # Neither message names exist_ok: the create_project tool does not take it (Python callers find
        # it in the docstring), and it cannot make a file a folder.
        if self.target.exists() and not self.target.is_dir():
            raise AlreadyExistsError(
                "file", str(self.target), "a project needs a folder there; choose another project name"
            )
        if self.target.exists():
            if not exist_ok:
                raise AlreadyExistsError(
                    "project folder",
                    str(self.target),
                    "it was not made by create_project; choose another project name, or move that folder "
                    "out of the projects root",
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

    def write(self, rel: str, content: str | bytes) -> bool:
        """Write a new file, text atomically, bytes (a template's binary file) as they are; False if
        ``exist_ok`` kept a file that was already there."""
        path = self.target / rel
        if "/" in rel:
            self.mkdir(str(PurePosixPath(rel).parent))
        self.check_inside(path)
        if path.exists() or path.is_symlink():
            if path in self.before:
                return False  # exist_ok: a file already there is the person's; keep it
            raise FileExistsError(f"{rel} is written twice or collides with a directory")
        if isinstance(content, bytes):
            with path.open("xb") as handle:  # a new file: a rollback removes it if the creation fails
                handle.write(content)
        else:
            atomic_write(path, content, private=False)  # the person's file: the umask decides its mode
        return True

    def rollback(self) -> None:
        """Remove what this creation added: the whole folder if it made it, else only the new entries."""
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


class Registrations:
    """The template workflows one creation registers; :meth:`undo` deletes them again or, where one
    replaced a definition (``overwrite_workflows``), registers that definition again.

    A server that refuses code execution (network transports by default) still scaffolds the project:
    workflows that need ``shell.run``/``python.call`` come back from :meth:`register` as a refusal
    reason instead of failing the whole creation.
    """

    def __init__(self, workflows: WorkflowRegistrar, project: str) -> None:
        self.workflows = workflows
        self.project = project
        self.registered: list[str] = []
        self.replaced: dict[str, WorkflowSpec] = {}

    def existing(self, name: str) -> WorkflowSpec | None:
        try:
            return self.workflows.get_workflow(name)
        except LookupError:
            return None

    def refuse_taken(self, specs: list[WorkflowSpec]) -> None:
        """Raise before anything is written if a template workflow's name is already registered."""
        for spec in specs:
            if self.existing(spec.name) is not None:
                raise workflow_taken(spec.name, self.project)

    def register(self, spec: WorkflowSpec, *, overwrite: bool) -> str | None:
        """Register ``spec``; return why not when this server refuses its actions (else None).

        Raises:
            AlreadyExistsError: the name is taken and ``overwrite`` is false (registered by someone
                else since :meth:`refuse_taken` looked).
        """
        previous = self.existing(spec.name) if overwrite else None
        try:
            self.workflows.create_workflow(spec, overwrite=overwrite)
        except DAGValidationError as exc:
            if exc.problems and all("is refused" in problem for problem in exc.problems):
                return "; ".join(exc.problems)
            raise
        except AlreadyExistsError:
            raise workflow_taken(spec.name, self.project) from None
        self.registered.append(spec.name)
        if previous is not None:
            self.replaced[spec.name] = previous
        return None

    def undo(self) -> None:
        """Delete what was registered, re-registering the definitions it replaced (best effort)."""
        for name in reversed(self.registered):
            try:
                if name in self.replaced:
                    self.workflows.create_workflow(self.replaced[name], overwrite=True)
                else:
                    self.workflows.delete_workflow(name)
            except Exception as exc:  # best effort while already failing; the first error is raised
                _log.warning("project.unregister_failed", workflow=name, error=str(exc))
        self.registered.clear()
        self.replaced.clear()


def workflow_taken(workflow: str, project: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        "workflow",
        workflow,
        f"project {project!r} would register a template workflow of that name and does not replace "
        "workflows it did not create; choose another project name, or pass overwrite_workflows=true "
        "to replace it",
    )


def target_for(root: Path, name: str, path: Path | str | None) -> Path:
    """The folder a project goes to: ``<root>/<name>``, or ``path`` if it is a real folder inside ``root``.

    Raises:
        InvalidInputError: ``path`` is outside the root, is the root, or passes through a symbolic link.
    """
    if path is None:
        target = root / name
    else:
        given = Path(path)
        target = given if given.is_absolute() else root / given
    lexical = Path(os.path.normpath(target))
    if not lexical.is_relative_to(root) or lexical == root:
        raise InvalidInputError("path", f"{path!s} is not inside the projects root {root}")
    for part in [lexical, *lexical.parents]:
        if part == root:
            break
        if part.is_symlink():
            raise InvalidInputError(
                "path",
                f"{part} is a symbolic link; projects are created only in real folders under the root",
            )
    resolved = lexical.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise InvalidInputError("path", f"{path!s} resolves outside the projects root {root}")
    return lexical
