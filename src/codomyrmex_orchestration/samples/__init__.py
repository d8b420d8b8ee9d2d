"""The sample workflows shipped with the package: JSON files in this folder, loaded at start from any
working directory.

They use only built-in actions that execute no code (``core.*``, ``workflow.run``), so they run under
every policy, including a network server with code execution off.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLES_DIR", "sample_names"]

#: The folder holding the sample workflow files (inside the installed package).
SAMPLES_DIR = Path(__file__).resolve().parent


def sample_names() -> list[str]:
    """The sample workflows' names (their file names without ``.json``), sorted."""
    return sorted(path.stem for path in SAMPLES_DIR.glob("*.json"))
