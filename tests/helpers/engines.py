"""A real engine for a test, its state under a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codomyrmex_orchestration.core.engine import OrchestrationEngine


def engine_on(root: Path, **options: Any) -> OrchestrationEngine:
    """An engine whose state directory and projects live under ``root`` (no config or templates
    directory), with two workers; ``options`` are the engine's own (``allow_code_execution``...)."""
    return OrchestrationEngine(
        state_dir=root / "state",
        config_dir=None,
        projects_dir=root / "projects",
        templates_dir=None,
        max_workers=2,
        **options,
    )
