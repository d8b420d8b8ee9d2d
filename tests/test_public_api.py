"""The package's public surface: ``__all__`` is exactly what it exports, and every name resolves."""

from __future__ import annotations

import codomyrmex_orchestration as pkg


def test_all_names_resolve_and_are_unique() -> None:
    assert len(pkg.__all__) == len(set(pkg.__all__))
    for name in pkg.__all__:
        assert hasattr(pkg, name), name


def test_all_matches_public_module_attributes() -> None:
    public = {
        name
        for name, value in vars(pkg).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("codomyrmex_orchestration")
    }
    assert public <= set(pkg.__all__), sorted(public - set(pkg.__all__))
