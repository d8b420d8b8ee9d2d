"""CPU-bound pure-Python work for bench_dask.py's ``python.call`` steps (importable by Dask worker
processes: they inherit the bench's ``sys.path``)."""

from __future__ import annotations

import os
import time


def spin(rounds: int) -> int:
    """Hold the GIL for ``rounds`` iterations of integer arithmetic; returns a small checksum."""
    total = 0
    for i in range(rounds):
        total = (total * 31 + i) % 1_000_003
    return total


def traced_spin(rounds: int) -> dict[str, float]:
    """``spin(rounds)`` recording where and when it ran: process id, start, end (epoch s), thread CPU s."""
    start, cpu = time.time(), time.thread_time()
    spin(rounds)
    return {"pid": os.getpid(), "start": start, "end": time.time(), "cpu": time.thread_time() - cpu}
