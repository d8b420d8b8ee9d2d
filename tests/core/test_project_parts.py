"""The parts behind ProjectManager, each on its own: the template library, the workflow side of the
creation transaction (against a real WorkflowManager), and the registry on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from codomyrmex_orchestration.core._project_creation import Registrations
from codomyrmex_orchestration.core._project_models import MANIFEST_FILE, Project, ProjectType
from codomyrmex_orchestration.core._project_registry import ProjectRegistry
from codomyrmex_orchestration.core._project_templates import TemplateLibrary, build_workflow_specs
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import WorkflowSpec
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import AlreadyExistsError, InvalidInputError, WorkflowNotFoundError


def _project(root: Path, name: str = "p") -> Project:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return Project(
        name=name,
        type=ProjectType.CUSTOM,
        path=str(root / name),
        created_at=now,
        updated_at=now,
        template="custom",
        template_version="1.0",
    )


# --------------------------------------------------------------------------- templates


def test_a_configured_template_replaces_the_packaged_one_and_tmpl_suffixes_are_dropped(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "projects"
    (folder / "custom" / "files" / "src").mkdir(parents=True)
    (folder / "custom" / "files" / "src" / "main.py.tmpl").write_text(
        "# {{project_name}}\n", encoding="utf-8"
    )
    (folder / "custom.json").write_text(json.dumps({"type": "custom", "version": "9.9"}), encoding="utf-8")
    library = TemplateLibrary(tmp_path)
    loaded = library.get("CUSTOM")
    assert loaded.template.version == "9.9" and loaded.source.endswith("custom.json")
    assert loaded.template.files == {"src/main.py": "# {{project_name}}\n"}
    assert TemplateLibrary(None).get("custom").template.version != "9.9"


def test_a_malformed_template_is_refused_naming_the_file_and_the_field(tmp_path: Path) -> None:
    folder = tmp_path / "projects"
    folder.mkdir()
    (folder / "broken.json").write_text(json.dumps({"type": "custom", "colour": "red"}), encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        TemplateLibrary(tmp_path).get("broken")
    assert info.value.field.endswith("broken.json.colour")
    assert "unknown field" in str(info.value)


def test_workflow_specs_are_rendered_for_the_project_folder(tmp_path: Path) -> None:
    project = _project(tmp_path, "demo")
    [spec] = build_workflow_specs(project, TemplateLibrary(None).get("custom").template)
    assert spec.name == "demo.check" and spec.parameters["project_path"] == project.path
    assert "{{" not in json.dumps([s.parameters.get("cwd", "") for s in spec.steps])


# --------------------------------------------------------------------------- registrations


@pytest.fixture
def workflows(tmp_path: Path) -> Iterator[WorkflowManager]:
    engine = OrchestrationEngine(
        state_dir=tmp_path / "state",
        config_dir=None,
        projects_dir=tmp_path / "projects",
        templates_dir=None,
        max_workers=2,
    )
    yield engine.workflow_manager
    engine.shutdown()


def _echo(name: str, message: str) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": name,
            "steps": [{"name": "s", "module": "core", "action": "echo", "parameters": {"message": message}}],
        }
    )


def test_undo_deletes_new_workflows_and_restores_replaced_ones(workflows: WorkflowManager) -> None:
    workflows.create_workflow(_echo("p.old", "original"))
    registrations = Registrations(workflows, "p")
    assert registrations.register(_echo("p.new", "new"), overwrite=False) is None
    assert registrations.register(_echo("p.old", "replacement"), overwrite=True) is None
    assert workflows.get_workflow("p.old").steps[0].parameters["message"] == "replacement"
    registrations.undo()
    assert workflows.get_workflow("p.old").steps[0].parameters["message"] == "original"
    with pytest.raises(WorkflowNotFoundError):
        workflows.get_workflow("p.new")


def test_a_name_taken_after_the_check_is_an_error_naming_the_project(workflows: WorkflowManager) -> None:
    registrations = Registrations(workflows, "p")
    registrations.refuse_taken([_echo("p.check", "mine")])  # free now
    workflows.create_workflow(_echo("p.check", "someone else's"))  # taken meanwhile
    with pytest.raises(AlreadyExistsError, match=r"'p\.check'.*project 'p'.*overwrite_workflows"):
        registrations.register(_echo("p.check", "mine"), overwrite=False)
    assert registrations.registered == []
    assert workflows.get_workflow("p.check").steps[0].parameters["message"] == "someone else's"


# --------------------------------------------------------------------------- registry


def test_the_registry_round_trips_and_never_writes_through_a_symlinked_manifest(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    root.mkdir()
    registry = ProjectRegistry(root.resolve(), root / ".projects.json", None)
    project = _project(root.resolve())
    Path(project.path).mkdir()
    registry.save_manifest(project)
    registry.write_index({"p": project})
    assert registry.load() == {"p": project}
    other = _project(root.resolve(), "q")
    Path(other.path).mkdir()
    (Path(other.path) / MANIFEST_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidInputError, match="symbolic link"):
        registry.save_manifest(other)
    assert not (tmp_path / "elsewhere.json").exists()
    assert set(registry.load()) == {"p"}
