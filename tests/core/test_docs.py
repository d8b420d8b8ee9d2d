"""DocumentationGenerator: literal {{variable}} substitution, RASP files with links that resolve, lookup
order of templates, and regeneration that is idempotent and keeps what a person edited."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core.docs import (
    DocumentationGenerator,
    content_hash,
    relative_links,
    render_template,
)
from codomyrmex_orchestration.errors import InvalidInputError, TemplateError


def make_tree(root: Path) -> Path:
    for rel in ("src/pkg", "data", ".git", "src/__pycache__"):
        (root / rel).mkdir(parents=True)
    return root


def generate(root: Path, templates_dir: Path | None = None, **kwargs: Any) -> list[Path]:
    generator = DocumentationGenerator(templates_dir)
    return generator.generate_all_documentation(root, project_name="demo", **kwargs)


# ----------------------------------------------------------------------------- substitution


@pytest.mark.parametrize("value", [r"C:\new\1x", "$HOME", r"\1 \g<0> \\ $1 ${x}", "{{not_a_var}}"])
def test_values_are_substituted_literally_with_backslashes_and_dollars_kept(value: str) -> None:
    assert render_template("<{{description}}>", {"description": value}) == f"<{value}>"


def test_an_unknown_placeholder_is_reported_by_name_with_the_known_ones() -> None:
    with pytest.raises(TemplateError) as info:
        render_template("hello {{ nmae }}", {"name": "x"}, source="README.template.md")
    assert info.value.path == "nmae"
    assert "README.template.md" in str(info.value) and "name" in str(info.value)


def test_an_optional_placeholder_becomes_empty_when_the_variable_is_missing() -> None:
    assert render_template("a{{extra?}}b{{ name? }}", {"name": "N"}) == "abN"


def test_dotted_references_are_refused_in_docs_but_kept_for_workflows() -> None:
    with pytest.raises(TemplateError):
        render_template("{{steps.a.output}}", {})
    assert render_template("{{steps.a.output}}/{{x}}", {"x": "1"}, keep_references=True) == (
        "{{steps.a.output}}/1"
    )


# ----------------------------------------------------------------------------- generation


def test_root_gets_four_documents_and_each_nested_directory_two_with_hidden_ones_skipped(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "p")
    written = generate(root, description="d")
    names = sorted(p.relative_to(root).as_posix() for p in written)
    assert names == sorted(
        [
            "README.md",
            "AGENTS.md",
            "SPEC.md",
            "PAI.md",
            "src/README.md",
            "src/AGENTS.md",
            "src/pkg/README.md",
            "src/pkg/AGENTS.md",
            "data/README.md",
            "data/AGENTS.md",
        ]
    )
    assert not (root / ".git" / "README.md").exists()
    assert not (root / "src" / "__pycache__" / "README.md").exists()


def test_every_relative_link_in_the_generated_documents_resolves(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p")
    written = generate(root)
    checked = 0
    for doc in written:
        links = relative_links(doc.read_text(encoding="utf-8"))
        for target in links:
            assert (doc.parent / target).is_file(), f"{doc.relative_to(root)} -> {target}"
            checked += 1
    readme = (root / "src" / "README.md").read_text(encoding="utf-8")
    assert "(../README.md)" in readme and "(pkg/README.md)" in readme
    assert "(src/AGENTS.md)" in (root / "AGENTS.md").read_text(encoding="utf-8")
    assert checked > 20


def test_regenerating_is_idempotent(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p")
    hashes: dict[str, str] = {}
    first = generate(root, hashes=hashes)
    before = {p: p.read_bytes() for p in first}
    assert generate(root, hashes=hashes) == []
    assert {p: p.read_bytes() for p in first} == before
    assert hashes["README.md"] == content_hash((root / "README.md").read_text(encoding="utf-8"))


def test_an_edited_file_is_kept_unless_forced_and_unedited_ones_follow_the_template(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p")
    hashes: dict[str, str] = {}
    generate(root, description="first", hashes=hashes)
    (root / "SPEC.md").write_text("my own spec\n", encoding="utf-8")

    written = generate(root, description="second", hashes=hashes)
    assert root / "README.md" in written  # not edited: follows the new description
    assert "second" in (root / "README.md").read_text(encoding="utf-8")
    assert (root / "SPEC.md").read_text(encoding="utf-8") == "my own spec\n"

    written = generate(root, description="second", hashes=hashes, force=True)
    assert written == [root / "SPEC.md"]
    assert "second" in (root / "SPEC.md").read_text(encoding="utf-8")


def test_a_file_that_was_never_generated_is_not_overwritten(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p")
    (root / "README.md").write_text("written by a person\n", encoding="utf-8")
    written = generate(root)
    assert root / "README.md" not in written
    assert (root / "README.md").read_text(encoding="utf-8") == "written by a person\n"


def test_templates_are_looked_up_in_project_folder_then_config_then_package_with_type_overrides(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config" / "templates"
    (config / "docs").mkdir(parents=True)
    (config / "docs" / "README.template.md").write_text("config {{project_name}}\n", encoding="utf-8")
    (config / "docs" / "research_PAI.template.md").write_text("research pai\n", encoding="utf-8")
    own = tmp_path / "own"
    own.mkdir()
    (own / "AGENTS.template.md").write_text("own agents\n", encoding="utf-8")

    root = make_tree(tmp_path / "p")
    generate(root, templates_dir=config, project_type="research", project_template_dir=own)
    assert (root / "README.md").read_text(encoding="utf-8") == "config demo\n"
    assert (root / "AGENTS.md").read_text(encoding="utf-8") == "own agents\n"
    assert (root / "PAI.md").read_text(encoding="utf-8") == "research pai\n"
    assert (root / "SPEC.md").read_text(encoding="utf-8").startswith("# Specification: demo")

    other = make_tree(tmp_path / "q")
    generate(other, templates_dir=config, project_type="ml_model")
    assert not (other / "PAI.md").read_text(encoding="utf-8").startswith("research pai")


def test_a_template_with_an_unknown_placeholder_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "templates"
    (config / "docs").mkdir(parents=True)
    (config / "docs" / "directory_AGENTS.template.md").write_text("{{no_such_thing}}\n", encoding="utf-8")
    root = make_tree(tmp_path / "p")
    with pytest.raises(TemplateError, match="no_such_thing"):
        generate(root, templates_dir=config)
    assert not list(root.rglob("*.md"))


@pytest.mark.parametrize("escaping", ["../outside", "a/../../outside", "/tmp", ""])
def test_a_directories_entry_leaving_the_project_is_refused_by_name_before_anything_is_written(
    tmp_path: Path, escaping: str
) -> None:
    """'../outside' used to plan '../README.md', write the root's four documents, then fail blaming a
    symbolic link on project_path; the kept files then read as edited by a person on the next run."""
    root = make_tree(tmp_path / "p")
    (tmp_path / "outside").mkdir()
    generator = DocumentationGenerator(None)
    for call in (generator.plan, generator.generate_all_documentation):
        with pytest.raises(InvalidInputError) as info:
            call(root, project_name="demo", directories={"src": "code", escaping: "evil"})
        assert info.value.field == "directories"
        assert repr(escaping) in str(info.value)
    assert not list(tmp_path.rglob("*.md"))


def test_a_symbolic_link_among_the_targets_is_refused_before_any_document_is_written(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "p")
    (tmp_path / "outside").mkdir()
    (root / "src" / "pkg" / "README.md").symlink_to(tmp_path / "outside" / "victim.md")
    with pytest.raises(InvalidInputError, match="symbolic link"):
        generate(root)
    assert [p.name for p in root.rglob("*.md")] == ["README.md"]  # the link only
    assert not (tmp_path / "outside" / "victim.md").exists()


# ----------------------------------------------------------------------------- literal braces


def test_four_braces_write_literal_braces_for_vue_github_actions_and_jinja_files() -> None:
    text = "<p>{{{{ message }}}}</p> ${{{{ secrets.TOKEN }}}} {{{{ '{{{{' }}}} {{name}}"
    assert render_template(text, {"name": "N"}) == "<p>{{ message }}</p> ${{ secrets.TOKEN }} {{ '{{' }} N"
    assert render_template("{{{{steps.a.output}}}}", {}, keep_references=True) == "{{steps.a.output}}"


def test_an_unknown_name_in_braces_names_the_literal_escape_before_the_optional_form() -> None:
    with pytest.raises(TemplateError) as info:
        render_template("<p>{{ message }}</p>", {"name": "x"}, source="App.vue")
    message = str(info.value)
    assert "App.vue" in message and "{{{{ message }}}}" in message and "{{message?}}" in message


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("${{ secrets.TOKEN }}", "{{{{ secrets.TOKEN }}}}"),
        ("{{ '{{' }}", "{{{{ '{{{{' }}}}"),
        ("{{ user.name | upper }}", "{{{{ user.name | upper }}}}"),
    ],
)
def test_braces_that_cannot_be_a_variable_get_only_the_escape_as_advice(text: str, escaped: str) -> None:
    """'write {{secrets.TOKEN?}}' was the advice once; following it deleted the text silently."""
    with pytest.raises(TemplateError) as info:
        render_template(text, {"name": "x"})
    message = str(info.value)
    assert escaped in message and "?}}" not in message
    assert render_template(escaped, {}) == text.removeprefix("$")


# ----------------------------------------------------------------------------- existing targets


def test_a_doc_saved_in_another_encoding_is_kept_while_the_others_are_refreshed(tmp_path: Path) -> None:
    """Such a SPEC.md used to stop regeneration with UnicodeEncodeError after README.md was rewritten."""
    root = make_tree(tmp_path / "p")
    hashes: dict[str, str] = {}
    generate(root, description="first", hashes=hashes)
    latin1 = "Sp\xe9c written by a person\n".encode("latin-1")
    (root / "SPEC.md").write_bytes(latin1)

    written = generate(root, description="second", hashes=hashes)
    assert root / "README.md" in written and root / "SPEC.md" not in written
    assert (root / "SPEC.md").read_bytes() == latin1
    assert hashes["README.md"] == content_hash((root / "README.md").read_text(encoding="utf-8"))


def test_a_folder_named_like_a_doc_is_refused_by_name_before_any_document_is_written(tmp_path: Path) -> None:
    """It used to fail with IsADirectoryError after the documents before it were written."""
    root = make_tree(tmp_path / "p")
    (root / "SPEC.md").mkdir()
    with pytest.raises(InvalidInputError) as info:
        generate(root)
    assert "SPEC.md is a folder" in str(info.value) and "rename or remove it" in str(info.value)
    assert [p.name for p in root.rglob("*.md")] == ["SPEC.md"]


def test_a_lone_surrogate_in_a_value_is_refused_by_file_before_any_document_is_written(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "p")
    with pytest.raises(InvalidInputError) as info:
        generate(root, description="caf\udce9")
    assert "README.md would contain '\\udce9'" in str(info.value)
    assert not list(root.rglob("*.md"))


def test_new_docs_follow_the_umask_and_a_rewritten_doc_keeps_its_mode(tmp_path: Path) -> None:
    """Every generated file used to be 0600 whatever the umask, and regenerating reset a 0644 doc."""
    root = make_tree(tmp_path / "p")
    hashes: dict[str, str] = {}
    previous = os.umask(0o027)
    try:
        generate(root, description="first", hashes=hashes)
        assert stat.S_IMODE((root / "README.md").stat().st_mode) == 0o640
        assert stat.S_IMODE((root / "src" / "AGENTS.md").stat().st_mode) == 0o640
        (root / "README.md").chmod(0o604)
        assert root / "README.md" in generate(root, description="second", hashes=hashes)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((root / "README.md").stat().st_mode) == 0o604
    assert not list(root.rglob("*.tmp"))
