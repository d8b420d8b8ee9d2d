"""How long this process has been running, counted from the process's start (not from the engine's)."""

from __future__ import annotations

import os
import time

__all__ = ["process_uptime"]

# Fallback start where /proc is missing (macOS, Windows): the first import of this package's core,
# which the console script reaches within its first second.
_IMPORTED_AT = time.monotonic()


def _from_proc() -> float | None:
    """Seconds since this process started, from Linux's ``/proc/self/stat`` (None elsewhere)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            stat = handle.read()
        # Field 22 (starttime, clock ticks after boot) counted after the ")" closing the command name,
        # which may itself hold spaces or parentheses.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return max(since_boot - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_uptime() -> float:
    """Seconds since the process started, to the millisecond."""
    uptime = _from_proc()
    if uptime is None:
        uptime = time.monotonic() - _IMPORTED_AT
    return round(uptime, 3)
