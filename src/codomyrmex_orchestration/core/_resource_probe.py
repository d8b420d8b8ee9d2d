"""Machine probing: the default resources and their capacities, read from this machine at start.

CPU cores (``os.cpu_count``), total memory (/proc/meminfo, else ``os.sysconf``), free disk of the
state directory's filesystem, the open-files soft limit; each probe that fails leaves a fallback
capacity flagged ``capacity_known=False``. Holds no state.
"""

from __future__ import annotations

import os
import resource as _rlimit
import shutil
from pathlib import Path

from codomyrmex_orchestration.config import DEFAULT_MAX_WORKERS
from codomyrmex_orchestration.core._numbers import shown
from codomyrmex_orchestration.core._resource_types import MIB, Resource, ResourceType
from codomyrmex_orchestration.errors import InvalidInputError

__all__ = [
    "checked_path",
    "cpu_count",
    "free_disk_mib",
    "machine_resources",
    "memory_mib",
    "open_files_limit",
]


def checked_path(value: object, field: str) -> Path | None:
    """``value`` (a ``str`` or ``os.PathLike``; ``None`` stays ``None``) as a :class:`Path`, as every
    public constructor of the package takes paths; anything else is refused naming ``field``."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise InvalidInputError(field, f"must be a path (str or pathlib.Path) or None, got {shown(value)}")


def cpu_count() -> int | None:
    return os.cpu_count()


def memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Total RAM in MiB: ``MemTotal`` of /proc/meminfo, else ``os.sysconf`` pages x page size."""
    try:
        with meminfo.open(encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # the figure is in kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return (pages * page_size) // MIB


def free_disk_mib(path: Path) -> int | None:
    """Free MiB on the filesystem holding ``path`` (or its nearest existing ancestor)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free // MIB
    except OSError:
        return None


def open_files_limit() -> int | None:
    try:
        soft, _hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == _rlimit.RLIM_INFINITY or soft <= 0:
        return None
    return int(soft)


def machine_resources(
    state_dir: Path | None, worker_threads: int | None, network_mbps: float
) -> list[Resource]:
    """The eleven default resources, capacities probed from this machine.

    Args:
        state_dir: storage is the free space of its filesystem (default: the working directory's).
        worker_threads: the ``thread`` capacity (default ``DEFAULT_MAX_WORKERS``).
        network_mbps: the ``network`` capacity in Mbit/s.
    """
    cpus = cpu_count()
    memory = memory_mib()
    disk_path = state_dir if state_dir is not None else Path.cwd()
    disk = free_disk_mib(disk_path)
    nofile = open_files_limit()
    threads = worker_threads if worker_threads is not None else DEFAULT_MAX_WORKERS
    cores = cpus or 1
    return [
        Resource(
            id="compute",
            name="CPU cores",
            type=ResourceType.COMPUTE,
            capacity=float(cores),
            unit="cores",
            # CPU can be oversubscribed: lend as many cores again, for a bounded time.
            burst_limit=float(cores),
            capacity_known=cpus is not None,
            derived_from="os.cpu_count()" if cpus else "fallback: os.cpu_count() returned None",
        ),
        Resource(
            id="memory",
            name="Memory",
            type=ResourceType.MEMORY,
            capacity=float(memory if memory is not None else 1024),
            unit="MiB",
            capacity_known=memory is not None,
            derived_from="/proc/meminfo MemTotal (os.sysconf fallback)"
            if memory is not None
            else "fallback: total RAM could not be read",
        ),
        Resource(
            id="storage",
            name="Disk space",
            type=ResourceType.STORAGE,
            capacity=float(disk if disk is not None else 1024),
            unit="MiB",
            capacity_known=disk is not None,
            derived_from=f"shutil.disk_usage({str(disk_path)!r}).free at start"
            if disk is not None
            else f"fallback: free space of {str(disk_path)!r} could not be read",
        ),
        Resource(
            id="network",
            name="Network bandwidth",
            type=ResourceType.NETWORK,
            capacity=float(network_mbps),
            unit="Mbit/s",
            derived_from="configured figure",
        ),
        Resource(
            id="thread",
            name="Worker threads",
            type=ResourceType.THREAD,
            capacity=float(threads),
            unit="threads",
            derived_from="worker pool size",
        ),
        Resource(
            id="process",
            name="Child processes",
            type=ResourceType.PROCESS,
            capacity=float(2 * cores),
            unit="processes",
            capacity_known=cpus is not None,
            derived_from="2 x os.cpu_count()",
        ),
        Resource(
            id="file_handle",
            name="Open files",
            type=ResourceType.FILE_HANDLE,
            capacity=float(nofile if nofile is not None else 1024),
            unit="files",
            capacity_known=nofile is not None,
            derived_from="resource.getrlimit(RLIMIT_NOFILE) soft limit"
            if nofile is not None
            else "fallback: RLIMIT_NOFILE unavailable or unlimited",
        ),
        Resource(
            id="api_quota",
            name="Concurrent external API calls",
            type=ResourceType.API_QUOTA,
            capacity=100.0,
            unit="calls",
            derived_from="default (set it in config/resources.json)",
        ),
        Resource(
            id="database",
            name="Database connections",
            type=ResourceType.DATABASE,
            capacity=10.0,
            unit="connections",
            derived_from="default (set it in config/resources.json)",
        ),
        Resource(
            id="lock",
            name="Global mutex",
            type=ResourceType.LOCK,
            capacity=1.0,
            unit="lock",
            max_allocation=1.0,
            derived_from="one exclusive lock",
        ),
    ]
