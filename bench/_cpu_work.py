"""CPU-bound pure-Python work for bench_dask.py's ``python.call`` steps (importable by Dask worker
processes: they inherit the bench's ``sys.path``)."""

from __future__ import annotations


def spin(rounds: int) -> int:
    """Hold the GIL for ``rounds`` iterations of integer arithmetic; returns a small checksum."""
    total = 0
    for i in range(rounds):
        total = (total * 31 + i) % 1_000_003
    return total
