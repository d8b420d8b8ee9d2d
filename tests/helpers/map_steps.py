"""An item function for the map crash test, called through python.call in a subprocess and after
restart. Each call leaves a file behind, so the test counts how many times every item really ran."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

GATE_AT = 10


def visit(directory: str, fifo: str, item: int, run_id: str) -> int:
    """Leave one file per call of ``item``; item ``GATE_AT`` says so on stdout and blocks while ``fifo``
    exists and nobody writes to it (the crash point). Returns ``item * 10``."""
    Path(directory, f"item{item}.{os.getpid()}.{uuid.uuid4().hex}").touch()
    if item == GATE_AT and os.path.exists(fifo):
        sys.stdout.write(f"gate {run_id}\n")
        sys.stdout.flush()
        with open(fifo, "rb") as handle:  # blocks until a writer opens it: never, in the first run
            handle.read()
    return item * 10
