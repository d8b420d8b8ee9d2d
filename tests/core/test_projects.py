"""ProjectManager: typed scaffolds with docs and workflows, names that cannot escape the root, creation
that cleans up after itself, and a registry that survives a restart."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.docs import relative_links
from codomyrmex_orchestration.core.models import WorkflowSpec
from codomyrmex_orchestration.core.projects import (
    INDEX_FILE,
    MANIFEST_FILE,
    ProjectManager,
    ProjectStatus,
    ProjectType,
)
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    InvalidInputError,
    InvalidNameError,
    ProjectCreationError,
    ProjectNotFoundError,
)
from tests.helpers.durable_steps import read_line

ALL_TYPES = list(ProjectType)
REPO = Path(__file__).resolve().parents[2]


class RecordingWorkflows:
    """Stands in for the WorkflowManager (built in parallel): keeps what is registered."""

    def __init__(self) -> None:
        self.specs: dict[str, WorkflowSpec] = {}
        self.overwrite_flags: list[bool] = []

    def create_workflow(self, spec: WorkflowSpec, /, *, overwrite: bool = False) -> object:
        self.overwrite_flags.append(overwrite)
        if spec.name in self.specs and not overwrite:
            raise AlreadyExistsError("workflow", spec.name)
        self.specs[spec.name] = spec
        return spec

    def get_workflow(self, name: str, /) -> WorkflowSpec:
        return self.specs[name]

    def delete_workflow(self, name: str, /) -> bool:
        return self.specs.pop(name, None) is not None


def snapshot(path: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture
def manager(tmp_path: Path) -> ProjectManager:
    return ProjectManager(tmp_path / "projects", templates_dir=tmp_path / "config" / "templates")


def run_steps_like_the_builtin_actions(spec: WorkflowSpec) -> dict[str, Any]:
    """Run shell.run / python.call steps in dependency order with real subprocesses and real calls."""
    done: dict[str, Any] = {}
    pending = list(spec.steps)
    while pending:
        step = next(s for s in pending if all(d in done for d in s.dependencies))
        pending.remove(step)
        params = step.parameters
        if (step.module, step.action) == ("shell", "run"):
            proc = subprocess.run(
                params["command"], cwd=params["cwd"], capture_output=True, text=True, timeout=60, check=False
            )
            assert proc.returncode == 0, f"{spec.name}.{step.name}: {proc.stderr}"
            done[step.name] = proc.stdout
        elif (step.module, step.action) == ("python", "call"):
            module, _, attr = params["function"].partition(":")
            done[step.name] = getattr(importlib.import_module(module), attr)(**params.get("kwargs", {}))
        else:
            raise AssertionError(f"unexpected action {step.module}.{step.action}")
    return done


# ----------------------------------------------------------------------------- scaffolding


@pytest.mark.parametrize("kind", ALL_TYPES, ids=[t.value for t in ALL_TYPES])
def test_each_type_scaffolds_its_own_layout_files_config_and_docs(
    manager: ProjectManager, kind: ProjectType
) -> None:
    project = manager.create_project("demo", kind.value, description="a demo", owner="ada")
    root = Path(project.path)
    template = manager.get_template(kind)
    assert project.type is kind and project.template == kind.value and project.status is ProjectStatus.ACTIVE
    for rel in template.directory_structure:
        assert (root / rel).is_dir(), rel
        assert (root / rel / "README.md").is_file() and (root / rel / "AGENTS.md").is_file()
    for rel in template.files:
        assert (root / rel).is_file(), rel
        assert "{{" not in (root / rel).read_text(encoding="utf-8")
    for name in ("README.md", "AGENTS.md", "SPEC.md", "PAI.md"):
        assert (root / name).is_file()
    assert template.config_file is not None
    assert json.loads((root / template.config_file).read_text(encoding="utf-8")) == project.config
    manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["name"] == "demo" and manifest["type"] == kind.value and manifest["owner"] == "ada"
    assert manifest["template"] == kind.value and manifest["template_version"] == template.version
    assert manifest["created_at"] and manifest["version"] == "0.1.0"
    assert set(manifest["docs"]) >= {"README.md", "SPEC.md"}


def test_the_seven_layouts_really_differ_and_list_templates_says_what_each_makes(
    manager: ProjectManager,
) -> None:
    listed = {t["name"]: t for t in manager.list_templates()}
    assert set(listed) == {t.value for t in ProjectType}
    layouts = {frozenset(t["directories"]) for t in listed.values()}
    assert len(layouts) == 7
    assert {"src", "data", "output", "reports", "config"} <= set(listed["ai_analysis"]["directories"])
    assert {"frontend", "backend", "database", "docs", "tests", "deploy"} <= set(
        listed["web_application"]["directories"]
    )
    assert {"pipelines", "data/raw", "data/processed", "data/output", "notebooks", "config", "tests"} <= set(
        listed["data_pipeline"]["directories"]
    )
    for entry in listed.values():
        assert entry["workflows"] and entry["files"] and entry["description"]


@pytest.mark.parametrize("kind", ALL_TYPES, ids=[t.value for t in ALL_TYPES])
def test_every_relative_link_in_a_projects_docs_resolves(manager: ProjectManager, kind: ProjectType) -> None:
    root = Path(manager.create_project("linked", kind).path)
    docs = [p for p in root.rglob("*.md") if p.name in {"README.md", "AGENTS.md", "SPEC.md", "PAI.md"}]
    assert len(docs) >= 4 + 2 * len(manager.get_template(kind).directory_structure)
    for doc in docs:
        for target in relative_links(doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).is_file(), f"{doc.relative_to(root)} -> {target}"


def test_a_description_with_backslashes_and_dollars_is_kept_verbatim(manager: ProjectManager) -> None:
    description = r"C:\new\1x and $HOME and \g<0>"
    project = manager.create_project("verbatim", "research", description=description, owner="$USER")
    root = Path(project.path)
    assert project.description == description
    assert json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))["description"] == description
    for doc in ("README.md", "SPEC.md", "AGENTS.md"):
        assert description in (root / doc).read_text(encoding="utf-8")
    assert "$USER" in (root / "PAI.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize(
    "name",
    ["../x", "/abs", "a/b", "", "x" * 300, "..", ".hidden", "a\\b", "bad name", "semi;colon", "ü"],
)
def test_path_escape_and_malformed_names_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str
) -> None:
    manager = ProjectManager(tmp_path / "projects", templates_dir=None)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidNameError) as info:
        manager.create_project(name, "custom")
    assert "letters, digits" in str(info.value)
    assert snapshot(tmp_path) == before


def test_a_name_whose_workflow_names_would_be_too_long_is_refused_before_writing(tmp_path: Path) -> None:
    manager = ProjectManager(tmp_path / "projects", templates_dir=None)
    with pytest.raises(InvalidNameError, match=r"'ml_model' accepts project names of at most 109 characters"):
        manager.create_project("x" * 110, "ml_model")
    assert list((tmp_path / "projects").iterdir()) == []
    assert manager.create_project("x" * 109, "ml_model").workflows == ["x" * 109 + ".train_and_evaluate"]


def test_a_path_outside_the_root_is_refused(manager: ProjectManager, tmp_path: Path) -> None:
    for path in (tmp_path / "elsewhere", "../elsewhere", manager.root):
        with pytest.raises(InvalidInputError, match="not inside the projects root"):
            manager.create_project("p", "custom", path=path)
    assert not (tmp_path / "elsewhere").exists()


def test_a_symlink_planted_in_the_root_is_refused_and_its_target_untouched(
    manager: ProjectManager, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (manager.root / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        manager.create_project("evil", "custom", exist_ok=True)
    assert list(outside.iterdir()) == []


def test_a_symlinked_subfolder_of_an_existing_folder_is_refused_and_the_folder_restored(
    manager: ProjectManager, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = manager.root / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n", encoding="utf-8")
    (folder / "src").symlink_to(outside, target_is_directory=True)
    before = snapshot(folder)
    with pytest.raises(InvalidInputError, match="outside the project"):
        manager.create_project("mixed", "custom", exist_ok=True)
    assert list(outside.iterdir()) == []
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- existing and failing


def test_creating_the_same_project_twice_is_refused(manager: ProjectManager) -> None:
    manager.create_project("twice", "custom")
    with pytest.raises(AlreadyExistsError, match="twice"):
        manager.create_project("twice", "custom")
    with pytest.raises(AlreadyExistsError):
        manager.create_project("twice", "custom", exist_ok=True)
    with pytest.raises(AlreadyExistsError):
        manager.create_project("other_name", "custom", path="twice", exist_ok=True)


def test_an_existing_folder_is_refused_unless_exist_ok_and_then_its_files_are_kept(
    manager: ProjectManager,
) -> None:
    folder = manager.root / "existing"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("# mine\n", encoding="utf-8")
    with pytest.raises(AlreadyExistsError, match="not made by create_project; choose another project name"):
        manager.create_project("existing", "custom")
    assert sorted(p.name for p in folder.rglob("*")) == ["main.py", "src"]

    project = manager.create_project("existing", "custom", exist_ok=True)
    assert (folder / "src" / "main.py").read_text(encoding="utf-8") == "# mine\n"
    assert (folder / "tests" / "test_main.py").is_file() and Path(project.path) == folder


def test_a_file_where_the_folder_would_go_is_refused_by_name_even_with_exist_ok(
    manager: ProjectManager,
) -> None:
    (manager.root / "plain").write_text("mine\n", encoding="utf-8")
    for exist_ok in (False, True):
        with pytest.raises(AlreadyExistsError, match="needs a folder there; choose another project name"):
            manager.create_project("plain", "custom", exist_ok=exist_ok)
    assert (manager.root / "plain").read_text(encoding="utf-8") == "mine\n"


def broken_template(templates_dir: Path) -> None:
    """A template whose second file needs a directory where the first one is a file."""
    (templates_dir / "projects").mkdir(parents=True)
    (templates_dir / "projects" / "broken.json").write_text(
        json.dumps(
            {
                "type": "custom",
                "directory_structure": {"src": "code", "data": "data"},
                "files": {"notes": "first\n", "notes/inner.txt": "second\n"},
            }
        ),
        encoding="utf-8",
    )


def test_a_failure_midway_leaves_no_partial_folder(manager: ProjectManager, tmp_path: Path) -> None:
    broken_template(tmp_path / "config" / "templates")
    with pytest.raises(ProjectCreationError, match="removed") as info:
        manager.create_project("half", template="broken")
    assert info.value.name == "half"
    assert not (manager.root / "half").exists()
    with pytest.raises(ProjectNotFoundError):
        manager.get_project("half")
    assert manager.list_projects() == []


def test_a_failure_midway_in_an_existing_folder_removes_only_what_the_call_created(
    manager: ProjectManager, tmp_path: Path
) -> None:
    broken_template(tmp_path / "config" / "templates")
    folder = manager.root / "kept"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "raw.csv").write_text("a,b\n", encoding="utf-8")
    before = snapshot(folder)
    with pytest.raises(ProjectCreationError):
        manager.create_project("kept", template="broken", exist_ok=True)
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            {"files": {"../../outside/x.txt": "x"}},
            "files: '../../outside/x.txt' must stay inside the project",
        ),
        ({"directory_structure": {"../out": "x"}}, "directory_structure: '../out' must stay inside"),
        ({"config_file": "/etc/cfg.json"}, "config_file: '/etc/cfg.json' must be a relative path"),
        ("{oops", "invalid project template: Expecting property name"),
    ],
)
def test_a_malformed_template_file_refuses_only_its_own_template_and_is_named_with_why(
    manager: ProjectManager, tmp_path: Path, content: Any, reason: str
) -> None:
    """One bad file used to make every creation and list_templates() fail, packaged templates too."""
    folder = tmp_path / "config" / "templates" / "projects"
    folder.mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps({"type": "custom", **content})
    (folder / "bad.json").write_text(text, encoding="utf-8")
    assert manager.create_project("q", template="research").template == "research"
    listed = {t["name"] for t in manager.list_templates()}
    assert "research" in listed and "bad" not in listed
    [error] = manager.template_errors()
    assert error["path"] == f"{folder}/bad.json"
    assert error["reason"].startswith(reason), error
    with pytest.raises(InvalidInputError) as info:
        manager.create_project("b", template="bad")
    assert info.value.field.startswith(f"{folder}/bad.json") and reason in str(info.value)
    assert not (manager.root / "b").exists()
    assert not (tmp_path / "outside").exists()


def test_a_malformed_override_of_a_packaged_template_refuses_that_name_not_the_package_copy(
    manager: ProjectManager, tmp_path: Path
) -> None:
    folder = tmp_path / "config" / "templates" / "projects"
    folder.mkdir(parents=True)
    (folder / "research.json").write_text(
        json.dumps({"type": "research", "files": {"../x": "x"}}), encoding="utf-8"
    )
    with pytest.raises(InvalidInputError, match=r"research\.json\.files: '\.\./x' must stay inside"):
        manager.create_project("r", "research")
    assert manager.create_project("d", "documentation").template == "documentation"


def test_a_custom_template_in_the_config_folder_is_listed_and_used(
    manager: ProjectManager, tmp_path: Path
) -> None:
    folder = tmp_path / "config" / "templates" / "projects"
    (folder / "notebook" / "files").mkdir(parents=True)
    (folder / "notebook.json").write_text(
        json.dumps(
            {
                "type": "research",
                "version": "2.1",
                "description": "a lab notebook",
                "directory_structure": {"entries": "dated entries"},
                "workflows": [
                    {
                        "name": "list",
                        "steps": [
                            {
                                "name": "ls",
                                "module": "python",
                                "action": "call",
                                "parameters": {
                                    "function": "os:listdir",
                                    "kwargs": {"path": "{{project_path}}"},
                                },
                            }
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    (folder / "notebook" / "files" / "entries").mkdir()
    (folder / "notebook" / "files" / "entries" / "first.md.tmpl").write_text(
        "# {{project_name}} by {{author}}\n", encoding="utf-8"
    )
    assert "notebook" in {t["name"] for t in manager.list_templates()}
    with pytest.raises(InvalidInputError, match="contradicts"):
        manager.create_project("lab", "ml_model", template="notebook")
    project = manager.create_project("lab", template="notebook", owner="ada")
    assert project.type is ProjectType.RESEARCH and project.template_version == "2.1"
    assert (Path(project.path) / "entries" / "first.md").read_text(encoding="utf-8") == "# lab by ada\n"
    assert project.workflows == ["lab.list"]


def test_binary_files_of_a_template_are_copied_byte_for_byte_and_text_beside_them_rendered(
    manager: ProjectManager, tmp_path: Path
) -> None:
    """A PNG under files/ used to refuse the whole template as malformed, naming its JSON file."""
    folder = tmp_path / "config" / "templates" / "projects"
    (folder / "site" / "files" / "assets").mkdir(parents=True)
    (folder / "site.json").write_text(json.dumps({"type": "documentation"}), encoding="utf-8")
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe{{project_name}}"
    (folder / "site" / "files" / "assets" / "logo.png").write_bytes(png)
    (folder / "site" / "files" / "assets" / "blob.bin.tmpl").write_bytes(b"\xff\x00{{oops}}")
    (folder / "site" / "files" / "index.md.tmpl").write_text("# {{project_name}}\n", encoding="utf-8")
    assert manager.template_errors() == []
    [listed] = [t for t in manager.list_templates() if t["name"] == "site"]
    assert listed["files"] == ["assets/blob.bin", "assets/logo.png", "index.md"]
    root = Path(manager.create_project("handbook", template="site").path)
    assert (root / "assets" / "logo.png").read_bytes() == png
    assert (root / "assets" / "blob.bin").read_bytes() == b"\xff\x00{{oops}}"
    assert (root / "index.md").read_text(encoding="utf-8") == "# handbook\n"


def test_unknown_types_and_templates_are_refused_with_the_choices(manager: ProjectManager) -> None:
    with pytest.raises(InvalidInputError, match="ai_analysis"):
        manager.create_project("p", "spaceship")
    with pytest.raises(InvalidInputError, match="available"):
        manager.create_project("p", template="spaceship")
    assert list(manager.root.iterdir()) == []


def test_a_template_path_that_leaves_the_project_is_refused(manager: ProjectManager, tmp_path: Path) -> None:
    folder = tmp_path / "config" / "templates" / "projects"
    folder.mkdir(parents=True)
    (folder / "escape.json").write_text(
        json.dumps({"type": "custom", "files": {"../../outside.txt": "x"}}), encoding="utf-8"
    )
    with pytest.raises(InvalidInputError, match="inside the project"):
        manager.create_project("p", template="escape")
    assert not (tmp_path / "outside.txt").exists()


# ----------------------------------------------------------------------------- workflows


@pytest.mark.parametrize("kind", ALL_TYPES, ids=[t.value for t in ALL_TYPES])
def test_template_workflows_are_registered_as_valid_specs_aimed_at_the_project_folder(
    tmp_path: Path, kind: ProjectType
) -> None:
    workflows = RecordingWorkflows()
    manager = ProjectManager(tmp_path / "projects", templates_dir=None, workflow_manager=workflows)
    project = manager.create_project("demo_proj", kind)
    assert project.workflows == sorted(workflows.specs) and project.workflows
    assert not any(workflows.overwrite_flags)  # a project never replaces a workflow unasked
    for name, spec in workflows.specs.items():
        assert name.startswith("demo_proj.")
        WorkflowSpec.model_validate(spec.model_dump())
        for step in spec.steps:
            assert (step.module, step.action) in {("shell", "run"), ("python", "call")}
            if step.module == "shell":
                assert step.parameters["cwd"] == project.path
                assert shutil.which(step.parameters["command"][0]), step.parameters["command"]
            else:
                assert str(step.parameters["kwargs"]["path"]).startswith(project.path)


@pytest.mark.parametrize("kind", ALL_TYPES, ids=[t.value for t in ALL_TYPES])
def test_template_workflow_steps_succeed_when_run_in_the_project_folder(
    manager: ProjectManager, kind: ProjectType
) -> None:
    project = manager.create_project("runnable", kind)
    specs = manager.register_workflows("runnable")
    outputs = [run_steps_like_the_builtin_actions(spec) for spec in specs]
    assert outputs
    produced = {
        ProjectType.AI_ANALYSIS: "reports/summary.json",
        ProjectType.WEB_APPLICATION: "backend/__pycache__",
        ProjectType.DATA_PIPELINE: "data/output/summary.json",
        ProjectType.ML_MODEL: "reports/metrics.json",
        ProjectType.DOCUMENTATION: "site/index.json",
        ProjectType.RESEARCH: "results/summary.md",
        ProjectType.CUSTOM: "src/__pycache__",
    }[kind]
    assert (Path(project.path) / produced).exists()


# ----------------------------------------------------------------------------- registry and lifecycle


def test_a_new_manager_on_the_same_root_lists_the_project(tmp_path: Path) -> None:
    first = ProjectManager(tmp_path / "projects", templates_dir=None)
    created = first.create_project("durable", "ml_model", description="kept")
    first.add_milestone("durable", "v1", due_date="2030-01-31")
    second = ProjectManager(tmp_path / "projects", templates_dir=None)
    [found] = second.list_projects()
    assert found.name == "durable" and found.created_at == created.created_at
    assert found.milestones[0].name == "v1" and str(found.milestones[0].due_date) == "2030-01-31"
    assert json.loads((tmp_path / "projects" / INDEX_FILE).read_text())["projects"] == {"durable": "durable"}


def test_two_managers_on_one_root_keep_each_others_updates(tmp_path: Path) -> None:
    """The second manager used to write its stale copy back: v1 lost, and the status a docs refresh."""
    a = ProjectManager(tmp_path / "projects", templates_dir=None)
    a.create_project("demo", "custom")
    b = ProjectManager(tmp_path / "projects", templates_dir=None)
    assert b.get_project("demo").milestones == []  # b now holds a copy of its own
    a.add_milestone("demo", "v1", due_date="2030-01-31")
    assert [m.name for m in b.get_project("demo").milestones] == ["v1"]
    b.add_milestone("demo", "v2")
    with pytest.raises(AlreadyExistsError):
        a.add_milestone("demo", "v2")
    a.update_project_status("demo", "paused")
    b.generate_docs("demo")
    again = ProjectManager(tmp_path / "projects", templates_dir=None).get_project("demo")
    assert [m.name for m in again.milestones] == ["v1", "v2"] and again.status is ProjectStatus.PAUSED


_ADD_MILESTONES = """
import sys
from codomyrmex_orchestration.core.projects import ProjectManager
root, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
manager = ProjectManager(root, templates_dir=None)
manager.get_project("shared")
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    manager.add_milestone("shared", f"{who}-{i}")
"""


def test_updates_from_several_processes_at_once_are_all_kept(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    ProjectManager(root, templates_dir=None).create_project("shared", "custom")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _ADD_MILESTONES, str(root), f"p{n}", "15"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        for child in children:
            assert read_line(child, timeout=60).strip() == "ready"
        for child in children:  # all start their writes together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        assert [child.wait(timeout=120) for child in children] == [0, 0, 0, 0]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
    names = {m.name for m in ProjectManager(root, templates_dir=None).get_project("shared").milestones}
    assert names == {f"p{n}-{i}" for n in range(4) for i in range(15)}


def test_manifests_on_disk_are_discovered_without_the_index(tmp_path: Path) -> None:
    ProjectManager(tmp_path / "projects", templates_dir=None).create_project("found", "research")
    os.remove(tmp_path / "projects" / INDEX_FILE)
    (tmp_path / "projects" / "not_a_project").mkdir()
    (tmp_path / "projects" / "corrupt").mkdir()
    (tmp_path / "projects" / "corrupt" / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    again = ProjectManager(tmp_path / "projects", templates_dir=None)
    assert [p.name for p in again.list_projects()] == ["found"]
    assert again.get_project("found").type is ProjectType.RESEARCH


def test_status_changes_archive_milestones_and_summary_are_saved(tmp_path: Path) -> None:
    manager = ProjectManager(tmp_path / "projects", templates_dir=None)
    manager.create_project("a", "ai_analysis")
    manager.create_project("b", "research")
    manager.create_project("c", "research")
    paused = manager.update_project_status("a", "paused")
    assert paused.status is ProjectStatus.PAUSED and paused.updated_at > paused.created_at
    assert manager.archive_project("b").status is ProjectStatus.ARCHIVED
    manager.add_milestone("c", "draft", description="first draft")
    with pytest.raises(AlreadyExistsError):
        manager.add_milestone("c", "draft")
    with pytest.raises(InvalidInputError, match="planning"):
        manager.update_project_status("a", "sleeping")
    with pytest.raises(ProjectNotFoundError, match="known: a, b, c"):
        manager.archive_project("zzz")

    reloaded = ProjectManager(tmp_path / "projects", templates_dir=None)
    assert [p.name for p in reloaded.list_projects(status="archived")] == ["b"]
    assert [p.name for p in reloaded.list_projects(type=ProjectType.RESEARCH)] == ["b", "c"]
    assert reloaded.get_project("c").milestones[0].description == "first draft"
    summary = reloaded.project_summary()
    assert summary["total"] == 3
    assert summary["by_type"]["research"] == 2 and summary["by_type"]["web_application"] == 0
    assert summary["by_status"] == {
        "planning": 0,
        "active": 1,
        "paused": 1,
        "completed": 0,
        "archived": 1,
        "failed": 0,
    }


def test_regenerating_project_docs_keeps_an_edited_readme_unless_forced(manager: ProjectManager) -> None:
    root = Path(manager.create_project("docs", "custom").path)
    assert manager.generate_docs("docs") == []
    (root / "README.md").write_text("edited\n", encoding="utf-8")
    assert manager.generate_docs("docs") == []
    assert (root / "README.md").read_text(encoding="utf-8") == "edited\n"
    assert manager.generate_docs("docs", force=True) == [root / "README.md"]
    assert (root / "README.md").read_text(encoding="utf-8").startswith("# docs")


def test_regeneration_refuses_a_folder_named_like_a_doc_before_writing_and_refreshes_once_it_is_gone(
    manager: ProjectManager, tmp_path: Path
) -> None:
    """The refused call used to rewrite README.md first without recording it; from then on the README
    counted as edited by a person and never followed the template again."""
    root = Path(manager.create_project("demo", "custom").path)
    before = (root / "README.md").read_bytes()
    (root / "SPEC.md").unlink()
    (root / "SPEC.md").mkdir()
    docs = tmp_path / "config" / "templates" / "docs"
    docs.mkdir(parents=True)
    (docs / "README.template.md").write_text("# {{project_name}} v2\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"SPEC\.md is a folder"):
        manager.generate_docs("demo")
    assert (root / "README.md").read_bytes() == before

    (root / "SPEC.md").rmdir()
    (docs / "README.template.md").write_text("# {{project_name}} v3\n", encoding="utf-8")
    assert root / "README.md" in manager.generate_docs("demo")
    assert (root / "README.md").read_text(encoding="utf-8") == "# demo v3\n"


FILE_SIZE_LIMIT = 64 * 1024
FAIL_A_WRITE = """
import resource, signal, sys
from codomyrmex_orchestration.core.projects import ProjectManager
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    ProjectManager(sys.argv[1], templates_dir=sys.argv[2]).generate_docs("demo")
except OSError as exc:
    print(exc.errno)
"""


def test_a_regeneration_that_fails_midway_records_the_docs_it_wrote_so_the_next_one_refreshes_them(
    tmp_path: Path,
) -> None:
    """A write that fails after README.md was rewritten used to leave the old hash in project.json."""
    templates = tmp_path / "templates"
    manager = ProjectManager(tmp_path / "projects", templates_dir=templates)
    root = Path(manager.create_project("demo", "custom").path)
    (templates / "docs").mkdir(parents=True)
    (templates / "docs" / "README.template.md").write_text("# {{project_name}} v2\n", encoding="utf-8")
    too_big = templates / "docs" / "directory_README.template.md"
    too_big.write_text("x" * (2 * FILE_SIZE_LIMIT), encoding="utf-8")
    # A real write failure in a child process: root ignores permissions, not the file size limit.
    child = subprocess.run(
        [sys.executable, "-c", FAIL_A_WRITE, str(manager.root), str(templates), str(FILE_SIZE_LIMIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0 and child.stdout.strip() == str(errno.EFBIG), child.stderr
    assert (root / "README.md").read_text(encoding="utf-8") == "# demo v2\n"
    assert not (root / "config" / "README.md").read_text(encoding="utf-8").startswith("x")

    too_big.unlink()
    (templates / "docs" / "README.template.md").write_text("# {{project_name}} v3\n", encoding="utf-8")
    later = ProjectManager(tmp_path / "projects", templates_dir=templates)
    assert root / "README.md" in later.generate_docs("demo")
    assert (root / "README.md").read_text(encoding="utf-8") == "# demo v3\n"


def test_exist_ok_keeps_a_doc_saved_in_another_encoding(manager: ProjectManager) -> None:
    """It used to fail with a bare UnicodeEncodeError naming no file."""
    folder = manager.root / "legacy"
    folder.mkdir()
    latin1 = "Caf\xe9 notes\n".encode("latin-1")
    (folder / "README.md").write_bytes(latin1)
    project = manager.create_project("legacy", "custom", exist_ok=True)
    assert (folder / "README.md").read_bytes() == latin1
    assert "README.md" not in project.docs and "AGENTS.md" in project.docs


def test_a_file_text_utf8_cannot_hold_is_a_creation_error_naming_the_file(
    manager: ProjectManager, tmp_path: Path
) -> None:
    projects = tmp_path / "config" / "templates" / "projects"
    projects.mkdir(parents=True)
    odd = {"type": "custom", "files": {"notes/cafe.txt": "caf\udce9"}}
    (projects / "odd.json").write_text(json.dumps(odd), encoding="utf-8")
    with pytest.raises(ProjectCreationError) as info:
        manager.create_project("odd", template="odd")
    assert "cafe.txt" in str(info.value) and "surrogates not allowed" in str(info.value)
    assert not (manager.root / "odd").exists()


def test_project_files_follow_the_umask_while_the_manifest_and_index_stay_private(
    manager: ProjectManager,
) -> None:
    previous = os.umask(0o022)
    try:
        root = Path(manager.create_project("modes", "web_application").path)
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root / "README.md") == mode(root / "deploy" / "serve.py") == 0o644
    assert mode(root / MANIFEST_FILE) == mode(manager.root / INDEX_FILE) == 0o600
