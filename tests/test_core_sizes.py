"""The core stays readable (issue 17): no class in ``core/`` longer than 400 lines, no module longer than
700, and every module says in its docstring what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

import codomyrmex_orchestration.core as core

CORE = Path(core.__file__).parent
MAX_CLASS_LINES = 400
MAX_MODULE_LINES = 700


def _modules() -> list[Path]:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 30, f"found only {len(modules)} modules under {CORE}"
    return modules


def test_no_class_in_the_core_is_longer_than_400_lines() -> None:
    too_long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{path.relative_to(CORE)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long


def test_no_module_in_the_core_is_longer_than_700_lines() -> None:
    too_long = []
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(CORE)}: {lines} lines")
    assert not too_long, too_long


def test_every_core_module_has_a_docstring_saying_what_it_is_for() -> None:
    missing = [
        str(path.relative_to(CORE))
        for path in _modules()
        if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()
        and path.read_text(encoding="utf-8").strip()  # an empty __init__.py says nothing, rightly
    ]
    assert not missing, missing
