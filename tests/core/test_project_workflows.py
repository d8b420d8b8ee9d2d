"""Every project type's registered workflows really run, through the engine, against the project folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus
from codomyrmex_orchestration.core.projects import INDEX_FILE, ProjectType
from codomyrmex_orchestration.errors import AlreadyExistsError, ProjectCreationError
from tests.helpers.engines import engine_on


@pytest.fixture  # per test: the leak check sees every thread a test starts, an engine's workers too
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestrationEngine]:
    root = tmp_path_factory.mktemp("projects-e2e")
    eng = OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=None,
        max_workers=4,
    )
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("project_type", list(ProjectType))
def test_a_projects_registered_workflows_run_successfully_against_its_folder(
    engine: OrchestrationEngine, project_type: ProjectType
) -> None:
    name = f"demo_{project_type.value}"
    project = engine.project_manager.create_project(name, project_type, description="end to end")
    assert project.workflows, f"{project_type.value} registers no workflow"
    folder = Path(project.path)
    before = {p for p in folder.rglob("*") if p.is_file()}
    for workflow in project.workflows:
        assert workflow.startswith(f"{name}.")
        spec = engine.workflow_manager.get_workflow(workflow)
        record = engine.execute_workflow(workflow, timeout=120)
        assert record.status is WorkflowStatus.COMPLETED, (workflow, record.error)
        assert all(s.status is TaskStatus.COMPLETED for s in record.steps.values()), record.steps
        for step in spec.steps:
            if step.module == "shell":
                assert Path(step.parameters["cwd"]).resolve() == folder.resolve()
    after = {p for p in folder.rglob("*") if p.is_file()}
    assert before <= after  # the workflows worked in the folder and destroyed nothing


def test_without_code_execution_projects_are_scaffolded_and_say_which_workflows_were_not_registered(
    tmp_path: Path,
) -> None:
    eng = OrchestrationEngine(
        state_dir=tmp_path / "state",
        config_dir=None,
        projects_dir=tmp_path / "projects",
        templates_dir=None,
        max_workers=2,
        allow_code_execution=False,
    )
    try:
        for project_type in ProjectType:
            project = eng.project_manager.create_project(f"locked_{project_type.value}", project_type)
            assert (Path(project.path) / "project.json").is_file()
            assert project.workflows_not_registered, project_type
            for name, reason in project.workflows_not_registered.items():
                assert name.startswith(f"locked_{project_type.value}.")
                assert "refused" in reason and "allow-shell" in reason
            registered = {w.name for w in eng.workflow_manager.list_workflows()}
            assert set(project.workflows) <= registered
            assert not set(project.workflows_not_registered) & registered
    finally:
        eng.shutdown()


VICTIM_CHECK = {
    "name": "victim.check",
    "description": "someone else's workflow",
    "steps": [{"name": "mine", "module": "core", "action": "echo", "parameters": {"message": "keep me"}}],
}


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[OrchestrationEngine]:
    eng = OrchestrationEngine(
        state_dir=tmp_path / "state",
        config_dir=None,
        projects_dir=tmp_path / "projects",
        templates_dir=None,
        max_workers=2,
    )
    yield eng
    eng.shutdown()


def test_a_project_whose_workflow_name_is_taken_is_refused_and_leaves_nothing_behind(
    own_engine: OrchestrationEngine, tmp_path: Path
) -> None:
    own_engine.workflow_manager.create_workflow(VICTIM_CHECK)
    with pytest.raises(
        AlreadyExistsError, match=r"'victim\.check'.*another project name.*overwrite_workflows"
    ):
        own_engine.project_manager.create_project("victim", ProjectType.CUSTOM)
    kept = own_engine.workflow_manager.get_workflow("victim.check")
    assert [(s.name, s.module) for s in kept.steps] == [("mine", "core")]
    assert own_engine.project_manager.list_projects() == []
    assert not (tmp_path / "projects" / "victim").exists()

    other = own_engine.project_manager.create_project("other", ProjectType.CUSTOM)
    assert other.workflows == ["other.check"]
    replaced = own_engine.project_manager.create_project(
        "victim", ProjectType.CUSTOM, overwrite_workflows=True
    )
    assert replaced.workflows == ["victim.check"]
    assert {s.module for s in own_engine.workflow_manager.get_workflow("victim.check").steps} != {"core"}


def test_a_creation_that_fails_after_replacing_a_workflow_registers_the_old_one_again(
    own_engine: OrchestrationEngine, tmp_path: Path
) -> None:
    own_engine.workflow_manager.create_workflow(VICTIM_CHECK)
    # The registry index cannot be written (a folder sits where the file goes): the last step fails.
    (tmp_path / "projects" / INDEX_FILE).mkdir()
    with pytest.raises(ProjectCreationError):
        own_engine.project_manager.create_project("victim", ProjectType.CUSTOM, overwrite_workflows=True)
    kept = own_engine.workflow_manager.get_workflow("victim.check")
    assert [(s.name, s.module) for s in kept.steps] == [("mine", "core")]
    assert not (tmp_path / "projects" / "victim").exists()
    assert own_engine.project_manager.list_projects() == []


def test_a_project_gets_the_workflows_refused_to_it_from_the_first_start_that_allows_them(
    tmp_path: Path,
) -> None:
    locked = engine_on(tmp_path, allow_code_execution=False)
    try:
        project = locked.project_manager.create_project("later", ProjectType.CUSTOM)
        locked.project_manager.create_project("taken", ProjectType.CUSTOM)
        # Someone else takes one of the names meanwhile (an echo is allowed everywhere).
        locked.workflow_manager.create_workflow(
            "taken.check", [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}]
        )
    finally:
        locked.shutdown()
    assert project.workflows == [] and list(project.workflows_not_registered) == ["later.check"]
    readme = (Path(project.path) / "README.md").read_text(encoding="utf-8")
    registered_part, refused_part = readme.split("Not registered on this server")
    assert "later.check" not in registered_part and "_No workflows are registered._" in registered_part
    assert "`later.check`" in refused_part and "allow-shell" in refused_part
    spec_md = (Path(project.path) / "SPEC.md").read_text(encoding="utf-8")
    assert "lists as registered" in spec_md

    allowed = engine_on(tmp_path, allow_code_execution=True)
    try:
        later = allowed.project_manager.get_project("later")
        assert later.workflows == ["later.check"] and later.workflows_not_registered == {}
        record = allowed.execute_workflow("later.check", timeout=120)
        assert record.status is WorkflowStatus.COMPLETED, record.steps
        readme = (Path(later.path) / "README.md").read_text(encoding="utf-8")
        assert "`later.check`" in readme and "Not registered" not in readme
        taken = allowed.project_manager.get_project("taken")
        assert (
            taken.workflows == [] and "registered meanwhile" in taken.workflows_not_registered["taken.check"]
        )
        kept = allowed.workflow_manager.get_workflow("taken.check")
        assert [s.module for s in kept.steps] == ["core"]
    finally:
        allowed.shutdown()
