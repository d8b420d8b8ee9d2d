"""The tool definitions cached between server starts: the same as freshly built, and never stale."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.server import _tool_cache
from codomyrmex_orchestration.server._tool_cache import cache_file, tool_definitions
from codomyrmex_orchestration.server.tools import OrchestrationMCPTools


def _sources(tmp_path: Path) -> Path:
    """A stand-in source tree: the cache key follows its files."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("A = 1\n")
    (package / "sub" / "b.py").write_text("B = 2\n")
    return package


def _planted(path: Path) -> list[dict[str, Any]]:
    """Replace the cached definitions (keeping the file's key) with a marker, to see who answers."""
    document = json.loads(path.read_text())
    marker = [{"name": "planted"}]
    path.write_text(json.dumps({**document, "definitions": marker}))
    return marker


def test_cached_definitions_equal_freshly_built_ones(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    path = tmp_path / "cache.json"
    first = tool_definitions(tools_without_engine, path=path)
    assert path.exists()
    again = tool_definitions(tools_without_engine, path=path)
    assert first == again == tools_without_engine.get_tool_definitions()


def test_a_second_start_of_the_same_code_reads_the_file(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    package, path = _sources(tmp_path), tmp_path / "cache.json"
    tool_definitions(tools_without_engine, package_dir=package, path=path)
    marker = _planted(path)
    assert tool_definitions(tools_without_engine, package_dir=package, path=path) == marker


def test_a_changed_added_or_removed_source_file_builds_them_again(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    package, path = _sources(tmp_path), tmp_path / "cache.json"
    built = tools_without_engine.get_tool_definitions()
    changes = [
        lambda: (package / "sub" / "b.py").write_text("B = 3\n"),  # same size, later mtime
        lambda: os.utime(package / "a.py", ns=(1, 1)),
        lambda: (package / "c.py").write_text(""),
        lambda: (package / "c.py").unlink(),
    ]
    tool_definitions(tools_without_engine, package_dir=package, path=path)
    for change in changes:
        _planted(path)
        change()
        assert tool_definitions(tools_without_engine, package_dir=package, path=path) == built


def test_a_malformed_or_foreign_cache_file_is_ignored_and_rewritten(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    package, path = _sources(tmp_path), tmp_path / "cache.json"
    built = tools_without_engine.get_tool_definitions()
    for content in ("{not json", "[]", '{"key": "other", "definitions": []}', "\x00\xff"):
        path.write_text(content)
        assert tool_definitions(tools_without_engine, package_dir=package, path=path) == built
        assert json.loads(path.read_text())["definitions"] == built


def test_an_unwritable_cache_directory_only_costs_the_build(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "cache.json"  # its directory cannot be created: a file is in the way
    assert tool_definitions(tools_without_engine, path=path) == tools_without_engine.get_tool_definitions()
    assert not path.exists()


def test_a_subclass_of_the_tools_is_never_served_from_the_cache(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    class MoreTools(OrchestrationMCPTools):
        def get_tool_definitions(self) -> list[dict[str, Any]]:
            return [*super().get_tool_definitions(), {"name": "extra"}]

    path = tmp_path / "cache.json"
    tool_definitions(tools_without_engine, path=path)
    more = MoreTools()  # its engine is never needed: listing tools does not start one
    assert tool_definitions(more, path=path)[-1] == {"name": "extra"}


def test_each_installation_has_its_own_cache_file(tmp_path: Path) -> None:
    assert cache_file(tmp_path / "one") != cache_file(tmp_path / "two")
    assert cache_file() == cache_file(_tool_cache.PACKAGE_DIR)
    assert str(tmp_path) not in str(cache_file(tmp_path / "one"))  # named by a hash, not the path


def test_writing_the_cache_removes_the_files_of_installations_that_are_gone(
    tools_without_engine: OrchestrationMCPTools, tmp_path: Path
) -> None:
    # Before, a file per install path piled up for ever (seven after one session of venvs and uvx).
    folder = tmp_path / "cache"
    other_install, gone_install = _sources(tmp_path), tmp_path / "uninstalled"
    tool_definitions(tools_without_engine, package_dir=other_install, path=folder / "tool-definitions-a.json")
    gone = folder / "tool-definitions-b.json"
    gone.write_text(json.dumps({"key": "k", "package_dir": str(gone_install), "definitions": []}))
    unnamed = folder / "tool-definitions-c.json"  # written before the files named their installation
    unnamed.write_text(json.dumps({"key": "k", "definitions": []}))
    unrelated = folder / "notes.json"
    unrelated.write_text("{}")
    tool_definitions(tools_without_engine, path=folder / "tool-definitions-d.json")
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.json",
        "tool-definitions-a.json",  # its installation is still there
        "tool-definitions-d.json",
    ]
