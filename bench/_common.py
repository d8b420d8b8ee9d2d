"""Shared helpers for the benchmark scripts: best-of-N timing, RSS and a description of the machine."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

#: Worker threads used by every pool in the step-overhead benchmarks (ours and the floors alike).
WORKERS = 4


def best_of(repeat: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Run each case ``repeat`` times, interleaved (so load spikes hit all alike); keep each one's best.

    Each case returns the seconds it measured itself (setup excluded).
    """
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for label, case in cases.items():
            best[label] = min(best[label], case())
    return best


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (from /proc; 0.0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1min_at_start": load,
    }
