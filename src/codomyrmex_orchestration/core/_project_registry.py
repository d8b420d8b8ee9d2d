"""The project registry on disk: each project's ``project.json`` manifest (the truth), the index
``<root>/.projects.json`` that lists them, and an optional store that mirrors the manifests.

:class:`ProjectRegistry` holds only where these live; callers serialise writes with their own lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from codomyrmex_orchestration.core._files import atomic_write
from codomyrmex_orchestration.core._project_models import MANIFEST_FILE, Project, ProjectStore
from codomyrmex_orchestration.errors import InvalidInputError
from codomyrmex_orchestration.logs import get_logger

__all__ = ["ProjectRegistry"]

_log = get_logger("codomyrmex_orchestration.projects")


class ProjectRegistry:
    """Reads and writes the manifests and the index under ``root``.

    Args:
        root: the projects root (resolved).
        index_path: the index file.
        store: a store to mirror each manifest into (and to find projects by), or None.
    """

    def __init__(self, root: Path, index_path: Path, store: ProjectStore | None) -> None:
        self.root = root
        self.registry_path = index_path
        self.store = store

    def read_manifest(self, folder: Path) -> Project | None:
        """The project whose manifest is in ``folder``, or None (absent, unreadable, or a symlink)."""
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

    def load(self) -> dict[str, Project]:
        """Every readable manifest: those the index and the store list, then any folder under the root."""
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
            project = self.read_manifest(folder)
            if project is not None and project.name not in projects:
                projects[project.name] = project
        return projects

    def write_index(self, projects: Mapping[str, Project]) -> None:
        """Write the index (name -> folder relative to the root) atomically."""
        entries = {
            name: Path(p.path).relative_to(self.root).as_posix() for name, p in sorted(projects.items())
        }
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.registry_path, json.dumps({"format": 1, "projects": entries}, indent=2) + "\n")

    def save_manifest(self, project: Project) -> None:
        """Write ``project.json`` atomically (and the store's copy); never through a symbolic link."""
        path = Path(project.path) / MANIFEST_FILE
        if path.is_symlink():
            raise InvalidInputError("path", f"{path} is a symbolic link; refusing to write the manifest")
        atomic_write(path, project.model_dump_json(indent=2) + "\n")
        if self.store is not None:
            self.store.save_project(project.name, project.model_dump(mode="json"))
