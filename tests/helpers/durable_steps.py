"""Step functions for crash tests, called through python.call in a subprocess and after restart.

Each execution leaves a file behind, so a test can count how many times every step really ran; the
parent reads the child's report line (the gate reached) with :func:`read_line`.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from pathlib import Path


def record(directory: str, step: str, value: int) -> int:
    """Leave one file per execution of ``step``; return ``value`` + 1 (the output checked later)."""
    Path(directory, f"{step}.{os.getpid()}.{uuid.uuid4().hex}").touch()
    return value + 1


def gate(directory: str, fifo: str) -> str:
    """Block while ``fifo`` exists and nobody writes to it (the crash point); pass once it is gone."""
    Path(directory, f"gate.{os.getpid()}.{uuid.uuid4().hex}").touch()
    if os.path.exists(fifo):
        with open(fifo, "rb") as handle:  # blocks until a writer opens it: never, in the first run
            handle.read()
    return "passed"


def executions(directory: str) -> dict[str, int]:
    """How many times each step ran, from the files :func:`record` left."""
    counts: dict[str, int] = {}
    for entry in os.listdir(directory):
        step = entry.split(".", 1)[0]
        counts[step] = counts.get(step, 0) + 1
    return counts


def record_sum(directory: str, step: str, *values: int) -> int:
    """As :func:`record`, for a step with several upstreams: 1 + the sum of their outputs (mod 10⁹)."""
    Path(directory, f"{step}.{os.getpid()}.{uuid.uuid4().hex}").touch()
    return (1 + sum(values)) % 1_000_000_000


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line the child ``proc`` prints, read with a bounded wait (the child may hang)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    assert line and line[0], "the child never reached the gate step"
    return line[0]
