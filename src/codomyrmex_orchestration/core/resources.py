"""ResourceManager: capacities derived from the machine, atomic allocation, and scheduler admission.

A resource is a counter with a ``capacity`` (plus an optional ``burst_limit`` lent above it for a
bounded time); an allocation holds part of it until released, until its ``ttl`` runs out, or until
its burst time is up. The scheduler admits a step only when :meth:`ResourceManager.try_acquire`
grants the step's whole requirement (the :class:`ResourceAdmission` protocol in ARCHITECTURE.md).

Concurrency: all state lives under one lock. Expiry is lazy (every operation first releases what is
due) and, so that nobody has to call in for capacity to come back, a single daemon thread
(``resource-expiry``) sleeps on a :class:`threading.Condition` until the earliest deadline, releases
what expired and wakes waiters. It starts with the first allocation that can expire and stops on
:meth:`ResourceManager.shutdown`; there is no polling loop. Listeners are always called outside the
lock, and an exception in one is logged, never propagated.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
import math
import os
import re
import resource as _rlimit
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codomyrmex_orchestration.config import DEFAULT_MAX_WORKERS
from codomyrmex_orchestration.core.models import NAME_PATTERN, utcnow
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    InsufficientResourcesError,
    InvalidInputError,
    LimitExceededError,
    ResourceNotFoundError,
)
from codomyrmex_orchestration.logs import get_logger

__all__ = [
    "DEFAULT_BURST_MAX_SECONDS",
    "DEFAULT_NETWORK_MBPS",
    "DEFAULT_RESOURCES_CONFIG",
    "KEY_ALIASES",
    "Allocation",
    "EventListener",
    "Resource",
    "ResourceHandle",
    "ResourceManager",
    "ResourceStatus",
    "ResourceType",
    "parse_size_mib",
]

#: Where the CLI/engine look for resource overrides (relative to the working directory).
DEFAULT_RESOURCES_CONFIG = Path("config/resources.json")
#: Network capacity in Mbit/s when neither the config nor the caller gives one.
DEFAULT_NETWORK_MBPS = 1000.0
#: How long (seconds) an allocation that uses burst capacity may be held before it is reclaimed.
DEFAULT_BURST_MAX_SECONDS = 300.0
#: Requirement keys accepted besides resource ids and ResourceType values.
KEY_ALIASES: Mapping[str, str] = {"cpu": "compute", "disk": "storage"}

# The reaper's longest single wait: it is woken on every schedule change, this only bounds the wait.
_MAX_IDLE_WAIT = 3600.0
_EPS = 1e-9
_MIB = 1024 * 1024

EventListener = Callable[[str, dict[str, Any]], None]


class ResourceType(enum.StrEnum):
    """The kinds of resource (the original's eleven)."""

    COMPUTE = "compute"
    MEMORY = "memory"
    STORAGE = "storage"
    NETWORK = "network"
    API_QUOTA = "api_quota"
    DATABASE = "database"
    CUSTOM = "custom"
    FILE_HANDLE = "file_handle"
    THREAD = "thread"
    PROCESS = "process"
    LOCK = "lock"


class ResourceStatus(enum.StrEnum):
    """State of a resource, computed from its allocations unless an operator set one.

    AVAILABLE: nothing allocated. ALLOCATED: partly allocated. BUSY: at capacity, burst still free.
    DEPLETED: burst in use, or nothing at all left. MAINTENANCE / OFFLINE: set by an operator with
    :meth:`ResourceManager.set_status`; new allocations wait or are refused, held ones stay.
    UNKNOWN: the machine capacity could not be determined (a fallback capacity is in force).
    """

    AVAILABLE = "available"
    ALLOCATED = "allocated"
    BUSY = "busy"
    MAINTENANCE = "maintenance"
    OFFLINE = "offline"
    DEPLETED = "depleted"
    UNKNOWN = "unknown"


_TYPE_NAMES = ", ".join(t.value for t in ResourceType)
_OPERATOR_STATUSES = frozenset({ResourceStatus.MAINTENANCE, ResourceStatus.OFFLINE})


class Resource(BaseModel):
    """A resource's definition. Amounts are in ``unit`` (memory and storage: MiB)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=NAME_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    type: ResourceType
    capacity: float = Field(ge=0, allow_inf_nan=False)
    unit: str = Field(default="units", min_length=1, max_length=40)
    #: Extra amount that may be lent above ``capacity``; allocations using it are flagged ``burst``.
    burst_limit: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: A burst allocation is released automatically this many seconds after it was made
    #: (``None``: no bound besides its own ``ttl``).
    burst_max_seconds: float | None = Field(default=DEFAULT_BURST_MAX_SECONDS, gt=0, allow_inf_nan=False)
    #: Bounds on the amount of any single allocation.
    min_allocation: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_allocation: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: False when the machine probe failed and ``capacity`` is a fallback (status UNKNOWN).
    capacity_known: bool = True
    #: How ``capacity`` was obtained, e.g. ``"os.cpu_count()"`` or ``"config"``.
    derived_from: str = "default"

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> Resource:
        if (
            self.min_allocation is not None
            and self.max_allocation is not None
            and self.min_allocation > self.max_allocation
        ):
            raise ValueError("min_allocation must not be above max_allocation")
        return self


class Allocation(BaseModel):
    """One grant of ``amount`` of a resource to ``requester_id``."""

    model_config = ConfigDict(frozen=True)

    allocation_id: str
    resource_id: str
    requester_id: str
    amount: float
    #: True when part of the amount came from ``burst_limit`` (above ``capacity``).
    burst: bool = False
    burst_amount: float = 0.0
    created_at: datetime
    #: When it is released automatically (``ttl`` or the burst bound, whichever is first).
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ResourceHandle:
    """What :meth:`ResourceManager.try_acquire` returns: the allocations of one admission."""

    requester_id: str
    allocation_ids: tuple[str, ...]


@dataclass
class _Held:
    allocation: Allocation
    deadline: float | None  # time.monotonic() value
    expiry_reason: str  # "expired" (ttl) or "burst_expired"


@dataclass
class _State:
    resource: Resource
    allocated: float = 0.0
    operator_status: ResourceStatus | None = None
    held: dict[str, _Held] = field(default_factory=dict)


# Pending notifications collected under the lock and delivered after it is released.
@dataclass
class _Notes:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    freed: bool = False


# --------------------------------------------------------------------------- amounts

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_FACTORS_MIB = {
    "": 1.0,
    "b": 1.0 / _MIB,
    "byte": 1.0 / _MIB,
    "bytes": 1.0 / _MIB,
    "k": 1.0 / 1024,
    "kb": 1.0 / 1024,
    "kib": 1.0 / 1024,
    "m": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "t": 1024.0 * 1024,
    "tb": 1024.0 * 1024,
    "tib": 1024.0 * 1024,
}
_SIZE_ACCEPTED = 'a number of MiB or a string such as "512MB", "2GB", "1.5GiB" (binary units: 1 GB = 1024 MB)'


def parse_size_mib(value: object, *, field: str = "amount") -> float:
    """Parse a memory/storage size into MiB.

    Numbers are MiB already. Strings take a unit (case-insensitive): B, KB/KiB, MB/MiB, GB/GiB,
    TB/TiB, all binary (``"1GB"`` and ``"1GiB"`` are both 1024 MiB); no unit means MiB.

    Raises:
        InvalidInputError: not a number or size string (``field`` names where).
    """
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None or match.group(2).lower() not in _SIZE_FACTORS_MIB:
            raise InvalidInputError(field, f"{value!r} is not a size; use {_SIZE_ACCEPTED}")
        return float(match.group(1)) * _SIZE_FACTORS_MIB[match.group(2).lower()]
    return _number(value, field=field, accepted=_SIZE_ACCEPTED)


def _number(value: object, *, field: str, accepted: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(field, f"{value!r} is not a number; use {accepted}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(field, f"{value!r} is not a number; use {accepted}") from None
    if math.isnan(number) or math.isinf(number):
        raise InvalidInputError(field, f"{value!r} is not a finite number; use {accepted}")
    return number


def _amount(value: object, resource: Resource, *, field: str) -> float:
    """A requested amount in the resource's unit: finite, > 0, within min/max_allocation."""
    if resource.type in (ResourceType.MEMORY, ResourceType.STORAGE):
        number = parse_size_mib(value, field=field)
    else:
        number = _number(value, field=field, accepted=f"a positive number of {resource.unit}")
    if number <= 0:
        raise InvalidInputError(field, f"amount must be greater than 0 {resource.unit}, got {value!r}")
    if resource.min_allocation is not None and number < resource.min_allocation - _EPS:
        raise InvalidInputError(
            field,
            f"amount {number:g} {resource.unit} is below the minimum allocation of "
            f"{resource.min_allocation:g} for resource {resource.id!r}",
        )
    if resource.max_allocation is not None and number > resource.max_allocation + _EPS:
        raise LimitExceededError(
            field, resource.max_allocation, number, f"the amount of one allocation of {resource.id!r}"
        )
    return number


# --------------------------------------------------------------------------- machine probes


def _cpu_count() -> int | None:
    return os.cpu_count()


def _memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int | None:
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
    return (pages * page_size) // _MIB


def _free_disk_mib(path: Path) -> int | None:
    """Free MiB on the filesystem holding ``path`` (or its nearest existing ancestor)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free // _MIB
    except OSError:
        return None


def _open_files_limit() -> int | None:
    try:
        soft, _hard = _rlimit.getrlimit(_rlimit.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == _rlimit.RLIM_INFINITY or soft <= 0:
        return None
    return int(soft)


def _machine_resources(
    state_dir: Path | None, worker_threads: int | None, network_mbps: float
) -> list[Resource]:
    cpus = _cpu_count()
    memory = _memory_mib()
    disk_path = state_dir if state_dir is not None else Path.cwd()
    disk = _free_disk_mib(disk_path)
    nofile = _open_files_limit()
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


# --------------------------------------------------------------------------- config

_CONFIG_TOP_KEYS = ("network_mbps", "resources")
_CONFIG_RESOURCE_KEYS = (
    "name",
    "type",
    "capacity",
    "unit",
    "burst_limit",
    "burst_max_seconds",
    "min_allocation",
    "max_allocation",
)
_AMOUNT_KEYS = ("capacity", "burst_limit", "min_allocation", "max_allocation")


def _load_config_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(
            str(path), f"cannot read the resources config: {exc.strerror or exc}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(str(path), "the resources config must be a JSON object")
    return data


def _apply_config(
    resources: dict[str, Resource], config: Mapping[str, Any], *, origin: str
) -> dict[str, Resource]:
    """Overlay ``config`` on ``resources`` (by id) and return the result. ``origin`` prefixes fields."""
    prefix = f"{origin}:" if origin else ""
    if not isinstance(config, Mapping):
        raise InvalidInputError(prefix + "config", "must be an object")
    unknown = sorted(set(config) - set(_CONFIG_TOP_KEYS))
    if unknown:
        raise InvalidInputError(
            prefix + str(unknown[0]), f"unknown key; accepted keys: {', '.join(_CONFIG_TOP_KEYS)}"
        )
    result = dict(resources)
    if "network_mbps" in config:
        mbps = _number(config["network_mbps"], field=prefix + "network_mbps", accepted="Mbit/s > 0")
        if mbps <= 0:
            raise InvalidInputError(prefix + "network_mbps", "must be greater than 0")
        if "network" in result:
            result["network"] = result["network"].model_copy(
                update={"capacity": mbps, "derived_from": "config network_mbps"}
            )
    entries = config.get("resources", {})
    if not isinstance(entries, Mapping):
        raise InvalidInputError(prefix + "resources", "must be an object mapping resource id -> settings")
    for rid, entry in entries.items():
        where = f"{prefix}resources.{rid}"
        if entry is None:  # null removes a default resource
            result.pop(str(rid), None)
            continue
        if not isinstance(entry, Mapping):
            raise InvalidInputError(where, "must be an object (or null to remove the resource)")
        bad = sorted(set(entry) - set(_CONFIG_RESOURCE_KEYS))
        if bad:
            raise InvalidInputError(
                f"{where}.{bad[0]}", f"unknown setting; accepted: {', '.join(_CONFIG_RESOURCE_KEYS)}"
            )
        base = result.get(str(rid))
        values: dict[str, Any] = base.model_dump() if base is not None else {"id": rid, "name": str(rid)}
        if "type" in entry:
            try:
                values["type"] = ResourceType(str(entry["type"]).lower())
            except ValueError:
                raise InvalidInputError(
                    f"{where}.type",
                    f"{entry['type']!r} is not a resource type; use one of {_TYPE_NAMES}",
                ) from None
        elif base is None:
            values["type"] = ResourceType.CUSTOM
        if base is None and "capacity" not in entry:
            raise InvalidInputError(f"{where}.capacity", "required for a new resource")
        sized = values["type"] in (ResourceType.MEMORY, ResourceType.STORAGE)
        for key, raw in entry.items():
            if key == "type":
                continue
            if key in _AMOUNT_KEYS and raw is not None:
                values[key] = (
                    parse_size_mib(raw, field=f"{where}.{key}")
                    if sized
                    else _number(raw, field=f"{where}.{key}", accepted="a number >= 0")
                )
            else:
                values[key] = raw
        if "capacity" in entry:
            values["capacity_known"] = True
            values["derived_from"] = "config"
        try:
            result[str(rid)] = Resource(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InvalidInputError(f"{where}.{loc}" if loc else where, err["msg"]) from None
    return result


# --------------------------------------------------------------------------- manager


class ResourceManager:
    """Capacities and allocations of the orchestration's resources. Thread-safe.

    Args:
        state_dir: the state directory; storage capacity is the free space of its filesystem
            (default: the working directory's).
        worker_threads: size of the worker pool, the ``thread`` resource's capacity
            (default ``DEFAULT_MAX_WORKERS``).
        config: overrides, same format as ``config/resources.json`` (applied after the file).
        config_path: a JSON file of overrides; it must exist.
        network_mbps: network capacity in Mbit/s (default 1000; the config may override it).

    Raises:
        InvalidInputError: the config is malformed; ``field`` names the offending entry.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        worker_threads: int | None = None,
        config: Mapping[str, Any] | None = None,
        config_path: Path | None = None,
        *,
        network_mbps: float | None = None,
    ) -> None:
        if worker_threads is not None and (isinstance(worker_threads, bool) or worker_threads < 1):
            raise InvalidInputError("worker_threads", f"must be an integer >= 1, got {worker_threads!r}")
        mbps = DEFAULT_NETWORK_MBPS if network_mbps is None else network_mbps
        if not math.isfinite(mbps) or mbps <= 0:
            raise InvalidInputError("network_mbps", f"must be a finite number > 0, got {network_mbps!r}")
        resources = {r.id: r for r in _machine_resources(state_dir, worker_threads, mbps)}
        if config_path is not None:
            resources = _apply_config(resources, _load_config_file(config_path), origin=str(config_path))
        if config is not None:
            resources = _apply_config(resources, config, origin="")
        self._log = get_logger("codomyrmex_orchestration.resources")
        self._lock = threading.Lock()
        self._capacity_changed = threading.Condition(self._lock)  # waiting allocators
        self._schedule_changed = threading.Condition(self._lock)  # the expiry thread
        self._states: dict[str, _State] = {rid: _State(r) for rid, r in resources.items()}
        self._by_allocation: dict[str, _State] = {}
        self._by_requester: dict[str, set[str]] = {}
        self._deadlines: list[tuple[float, int, str]] = []  # heap; stale entries skipped lazily
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._listeners: tuple[EventListener, ...] = ()
        self._release_listeners: tuple[Callable[[], None], ...] = ()
        self._refused: set[tuple[str, str]] = set()  # (requester, resource) told "exhausted" already
        self._reaper: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ listeners

    def add_listener(self, fn: EventListener) -> None:
        """Call ``fn(event, payload)`` on ``resource.allocated``, ``.released`` and ``.exhausted``.

        Listeners run outside the manager's lock on the thread that caused the event (the expiry
        thread for expiries); an exception in one is logged and ignored.
        """
        with self._lock:
            self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: EventListener) -> None:
        with self._lock:
            self._listeners = tuple(f for f in self._listeners if f != fn)

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (outside the lock) whenever capacity may have freed up."""
        with self._lock:
            self._release_listeners = (*self._release_listeners, callback)

    def remove_release_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._release_listeners = tuple(f for f in self._release_listeners if f != callback)

    # ------------------------------------------------------------------ lookup

    def list_resources(self, type: ResourceType | str | None = None) -> list[Resource]:
        """Resource definitions, sorted by id, optionally only those of ``type``.

        Raises:
            InvalidInputError: ``type`` is not a resource type.
        """
        wanted = self._parse_type(type) if type is not None else None
        with self._lock:
            found = [s.resource for s in self._states.values()]
        return sorted((r for r in found if wanted is None or r.type is wanted), key=lambda r: r.id)

    def get_resource(self, resource_id: str) -> Resource:
        """A resource by id (aliases ``cpu``/``disk`` and type names accepted).

        Raises:
            ResourceNotFoundError: no such resource; the message lists the known ids.
        """
        with self._lock:
            return self._states[self._resolve_locked(resource_id, field="resource_id")].resource

    def add_resource(self, resource: Resource) -> None:
        """Register another resource (e.g. a custom one).

        Raises:
            AlreadyExistsError: a resource with that id exists.
        """
        with self._lock:
            if resource.id in self._states:
                raise AlreadyExistsError("resource", resource.id, "resource definitions cannot be replaced")
            self._states[resource.id] = _State(resource)

    def set_status(self, resource_id: str, status: ResourceStatus | str | None) -> None:
        """Set or clear an operator status.

        MAINTENANCE or OFFLINE stops new allocations of the resource (waiters keep waiting, others
        are refused); held allocations stay. ``None`` or AVAILABLE clears it and wakes waiters.

        Raises:
            ResourceNotFoundError: unknown resource.
            InvalidInputError: any other status (the rest are computed from allocations).
        """
        parsed: ResourceStatus | None = None
        if status is not None:
            try:
                parsed = ResourceStatus(str(status).lower())
            except ValueError:
                parsed = None
            if parsed is None or parsed not in (*_OPERATOR_STATUSES, ResourceStatus.AVAILABLE):
                raise InvalidInputError(
                    "status",
                    f"{status!r} cannot be set; use maintenance, offline, or available/null to clear",
                )
            if parsed is ResourceStatus.AVAILABLE:
                parsed = None
        notes = _Notes()
        with self._lock:
            state = self._states[self._resolve_locked(resource_id, field="resource_id")]
            previous = state.operator_status
            state.operator_status = parsed
            if previous is not None and parsed is None:
                notes.freed = True
                self._capacity_changed.notify_all()
        self._log.info("resource status set", resource=state.resource.id, status=str(parsed or "cleared"))
        self._deliver(notes)

    # ------------------------------------------------------------------ allocation

    def allocate(
        self,
        resource_id: str,
        requester_id: str,
        amount: float | int | str,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> Allocation:
        """Allocate ``amount`` of one resource to ``requester_id``.

        Args:
            resource_id: a resource id, an alias (``cpu``, ``disk``) or a type name.
            requester_id: who holds it (a step, task or session id); see :meth:`deallocate_resources`.
            amount: in the resource's unit; memory/storage accept size strings such as ``"512MB"``.
            ttl: seconds after which the allocation is released automatically.
            timeout: seconds to wait for capacity; ``None`` or 0 refuses at once.

        Raises:
            InsufficientResourcesError: not enough capacity (now, or within ``timeout``), or more
                than capacity + burst ever could give.
            InvalidInputError / ResourceNotFoundError: a bad argument.
        """
        return self.allocate_resources(requester_id, {resource_id: amount}, ttl=ttl, timeout=timeout)[0]

    def allocate_resources(
        self,
        requester_id: str,
        requirements: Mapping[str, Any],
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> list[Allocation]:
        """Allocate several resources at once, all or nothing (one allocation per resource).

        Keys: resource ids, ``cpu``/``compute``, ``disk``/``storage``, ``memory``, ``network``, or a
        ResourceType value naming exactly one resource. Arguments and errors as :meth:`allocate`.
        """
        requester = self._check_requester(requester_id)
        ttl_s = self._check_seconds(ttl, "ttl", allow_zero=False)
        timeout_s = self._check_seconds(timeout, "timeout", allow_zero=True) or 0.0
        wanted = self._resolve_requirements(requirements)
        self._check_never_too_much(wanted)
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            notes = _Notes()
            try:
                with self._lock:
                    now = time.monotonic()
                    self._expire_due_locked(now, notes)
                    shortfall = self._shortfall_locked(wanted)
                    if not shortfall:
                        return self._grant_locked(requester, wanted, ttl_s, now, notes)
                    remaining = deadline - now
                    if not announced:
                        # Once per call, and delivered before waiting: listeners learn of the
                        # shortage while this caller still waits for capacity.
                        announced = True
                        self._note_exhausted_locked(
                            requester, wanted, shortfall, notes, always=True, waiting=max(0.0, remaining)
                        )
                    if remaining <= 0:
                        raise InsufficientResourcesError(
                            {rid: amt for rid, amt in wanted.items() if rid in shortfall},
                            shortfall,
                            self._refusal_reason_locked(shortfall, timeout_s),
                        )
                    if not notes.events and not notes.freed:  # deliver pending news first
                        next_deadline = self._next_deadline_locked()
                        wait = remaining if next_deadline is None else min(remaining, next_deadline - now)
                        self._capacity_changed.wait(timeout=max(0.0, wait))
            finally:
                self._deliver(notes)

    def release(self, allocation_id: str) -> bool:
        """Release one allocation. Returns False if it was not held (already released or expired)."""
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            released = self._release_locked(allocation_id, "released", notes)
        self._deliver(notes)
        return released

    def deallocate_resources(self, requester_id: str) -> int:
        """Release every allocation held by ``requester_id``; returns how many were released."""
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            ids = list(self._by_requester.get(requester_id, ()))
            count = sum(self._release_locked(aid, "deallocated", notes) for aid in ids)
        self._deliver(notes)
        return count

    def get_allocations(self, requester_id: str | None = None) -> list[Allocation]:
        """Held allocations (of one requester if given), oldest first."""
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            if requester_id is None:
                found = [h.allocation for s in self._states.values() for h in s.held.values()]
            else:
                found = [
                    self._by_allocation[aid].held[aid].allocation
                    for aid in self._by_requester.get(requester_id, ())
                ]
        self._deliver(notes)
        return sorted(found, key=lambda a: (a.created_at, a.allocation_id))

    # ------------------------------------------------------------------ scheduler admission

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        """Validate ``requirements`` and check that each could ever be granted.

        Raises:
            InsufficientResourcesError: an amount exceeds capacity + burst (``available`` gives that total).
            InvalidInputError / ResourceNotFoundError: a bad key or amount.
        """
        self._check_never_too_much(self._resolve_requirements(requirements))

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> ResourceHandle | None:
        """Grant all of ``requirements`` now, or nothing: returns a handle, or None if it must wait.

        Never blocks. Raises like :meth:`check_satisfiable` for a requirement that can never fit.
        """
        requester = self._check_requester(requester_id)
        wanted = self._resolve_requirements(requirements)
        self._check_never_too_much(wanted)
        notes = _Notes()
        try:
            with self._lock:
                now = time.monotonic()
                self._expire_due_locked(now, notes)
                shortfall = self._shortfall_locked(wanted)
                if shortfall:
                    self._note_exhausted_locked(requester, wanted, shortfall, notes, always=False)
                    return None
                granted = self._grant_locked(requester, wanted, None, now, notes)
                return ResourceHandle(requester, tuple(a.allocation_id for a in granted))
        finally:
            self._deliver(notes)

    def release_handle(self, handle: object) -> None:
        """Release what :meth:`try_acquire` granted (idempotent)."""
        if not isinstance(handle, ResourceHandle):
            raise InvalidInputError(
                "handle", f"expected a ResourceHandle from try_acquire, got {type(handle).__name__}"
            )
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            for aid in handle.allocation_ids:
                self._release_locked(aid, "released", notes)
        self._deliver(notes)

    # ------------------------------------------------------------------ usage and health

    def get_usage(self, resource_id: str) -> dict[str, Any]:
        """Capacity, allocated, available (below capacity), available_with_burst, burst_in_use,
        utilization (allocated / capacity), status and the held allocations of one resource.

        Raises:
            ResourceNotFoundError: unknown resource.
        """
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            state = self._states[self._resolve_locked(resource_id, field="resource_id")]
            usage = self._usage_locked(state, with_allocations=True)
        self._deliver(notes)
        return usage

    def get_total_usage(self) -> dict[str, Any]:
        """A summary: per-resource usage (without allocation lists) and allocation counts."""
        notes = _Notes()
        with self._lock:
            self._expire_due_locked(time.monotonic(), notes)
            per = {
                rid: self._usage_locked(s, with_allocations=False) for rid, s in sorted(self._states.items())
            }
            burst = sum(1 for s in self._states.values() for h in s.held.values() if h.allocation.burst)
            summary = {
                "resources": per,
                "allocations": len(self._by_allocation),
                "burst_allocations": burst,
                "requesters": len(self._by_requester),
                "by_status": {
                    status.value: sum(1 for u in per.values() if u["status"] == status.value)
                    for status in ResourceStatus
                },
            }
        self._deliver(notes)
        return summary

    def status_of(self, resource_id: str) -> ResourceStatus:
        """The resource's current :class:`ResourceStatus`."""
        with self._lock:
            return self._status_locked(self._states[self._resolve_locked(resource_id, field="resource_id")])

    def check_invariants(self) -> list[str]:
        """Problems found in the bookkeeping (empty when healthy): allocated <= capacity + burst,
        allocated equals the sum of held amounts, indexes agree, the expiry thread is alive when needed.
        """
        problems: list[str] = []
        with self._lock:
            for rid, state in self._states.items():
                r = state.resource
                total = math.fsum(h.allocation.amount for h in state.held.values())
                tol = _EPS * max(1.0, r.capacity + r.burst_limit)
                if state.allocated < -tol:
                    problems.append(f"{rid}: allocated {state.allocated:g} is negative")
                if state.allocated > r.capacity + r.burst_limit + tol:
                    problems.append(
                        f"{rid}: allocated {state.allocated:g} exceeds capacity {r.capacity:g} "
                        f"+ burst {r.burst_limit:g}"
                    )
                if abs(total - state.allocated) > tol * max(1, len(state.held)):
                    problems.append(
                        f"{rid}: allocated {state.allocated:g} but held allocations sum to {total:g}"
                    )
                problems.extend(
                    f"{rid}: allocation {aid} missing from the allocation index"
                    for aid in state.held
                    if self._by_allocation.get(aid) is not state
                )
            indexed = sum(len(ids) for ids in self._by_requester.values())
            if indexed != len(self._by_allocation):
                problems.append(
                    f"requester index holds {indexed} allocations, "
                    f"allocation index {len(self._by_allocation)}"
                )
            if (
                not self._closed
                and self._reaper is not None
                and not self._reaper.is_alive()
                and any(h.deadline is not None for s in self._states.values() for h in s.held.values())
            ):
                problems.append("the resource expiry thread is not running")
        return problems

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the expiry thread (joined for at most ``timeout`` s). Expiry stays lazy afterwards."""
        with self._lock:
            self._closed = True
            self._schedule_changed.notify_all()
            self._capacity_changed.notify_all()
            reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout)

    def __enter__(self) -> ResourceManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals (lock held)

    def _resolve_locked(self, key: object, *, field: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidInputError(field, f"a resource key must be a non-empty string, got {key!r}")
        if key in self._states:
            return key
        low = key.strip().lower()
        if low in self._states:
            return low
        alias = KEY_ALIASES.get(low)
        if alias is not None and alias in self._states:
            return alias
        try:
            rtype = ResourceType(low)
        except ValueError:
            rtype = None
        if rtype is not None:
            matches = sorted(rid for rid, s in self._states.items() if s.resource.type is rtype)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidInputError(
                    field,
                    f"{key!r} names {len(matches)} resources of that type; use one id: {', '.join(matches)}",
                )
        known = [*self._states, *(a for a, target in KEY_ALIASES.items() if target in self._states)]
        raise ResourceNotFoundError(key, known=known)

    def _resolve_requirements(self, requirements: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(requirements, Mapping):
            raise InvalidInputError(
                "requirements",
                f'must be an object such as {{"compute": 1, "memory": "512MB"}}, got {requirements!r}',
            )
        wanted: dict[str, float] = {}
        with self._lock:
            resolved = [(key, self._resolve_locked(key, field=f"requirements.{key}")) for key in requirements]
            defs = {rid: self._states[rid].resource for _k, rid in resolved}
        firsts: dict[str, str] = {}
        for key, rid in resolved:
            if rid in firsts:
                raise InvalidInputError(
                    f"requirements.{key}",
                    f"resource {rid!r} is already requested as {firsts[rid]!r}; give it once",
                )
            firsts[rid] = key
            wanted[rid] = _amount(requirements[key], defs[rid], field=f"requirements.{key}")
        return wanted

    def _check_never_too_much(self, wanted: Mapping[str, float]) -> None:
        with self._lock:
            limits = {
                rid: self._states[rid].resource.capacity + self._states[rid].resource.burst_limit
                for rid in wanted
                if rid in self._states
            }
        too_big = {rid: amt for rid, amt in wanted.items() if amt > limits.get(rid, 0.0) + _EPS}
        if too_big:
            raise InsufficientResourcesError(
                too_big,
                {rid: limits.get(rid, 0.0) for rid in too_big},
                "more than the total capacity plus burst; it can never be granted",
            )

    def _available_locked(self, state: _State) -> float:
        if state.operator_status is not None:
            return 0.0
        r = state.resource
        return max(0.0, r.capacity + r.burst_limit - state.allocated)

    def _shortfall_locked(self, wanted: Mapping[str, float]) -> dict[str, float]:
        """Resources that cannot give their amount now -> what they could give."""
        short: dict[str, float] = {}
        for rid, amount in wanted.items():
            state = self._states.get(rid)
            if state is None:  # removed meanwhile; cannot happen today (no removal API)
                short[rid] = 0.0
                continue
            available = self._available_locked(state)
            if amount > available + _EPS * max(1.0, state.resource.capacity):
                short[rid] = available
        return short

    def _refusal_reason_locked(self, shortfall: Mapping[str, float], waited: float) -> str:
        parts = [
            f"{rid} is {self._states[rid].operator_status} (set by an operator)"
            for rid in shortfall
            if rid in self._states and self._states[rid].operator_status is not None
        ]
        parts.append(f"waited {waited:g} s" if waited > 0 else "retry later or pass a timeout to wait")
        return "; ".join(parts)

    def _grant_locked(
        self,
        requester: str,
        wanted: Mapping[str, float],
        ttl: float | None,
        now: float,
        notes: _Notes,
    ) -> list[Allocation]:
        created = utcnow()
        granted: list[Allocation] = []
        for rid, amount in wanted.items():
            state = self._states[rid]
            r = state.resource
            over = max(0.0, state.allocated + amount - r.capacity)
            burst_amount = min(amount, over) if over > _EPS * max(1.0, r.capacity) else 0.0
            deadline = now + ttl if ttl is not None else None
            reason = "expired"
            if burst_amount > 0 and r.burst_max_seconds is not None:
                burst_deadline = now + r.burst_max_seconds
                if deadline is None or burst_deadline < deadline:
                    deadline, reason = burst_deadline, "burst_expired"
            aid = f"alloc-{next(self._ids)}-{os.urandom(4).hex()}"
            allocation = Allocation(
                allocation_id=aid,
                resource_id=rid,
                requester_id=requester,
                amount=amount,
                burst=burst_amount > 0,
                burst_amount=burst_amount,
                created_at=created,
                expires_at=created + timedelta(seconds=deadline - now) if deadline is not None else None,
            )
            state.held[aid] = _Held(allocation, deadline, reason)
            state.allocated += amount
            self._by_allocation[aid] = state
            self._by_requester.setdefault(requester, set()).add(aid)
            self._refused.discard((requester, rid))
            if deadline is not None:
                self._push_deadline_locked(deadline, aid)
            if self._listeners:  # payloads cost a model_dump; build them only for someone
                notes.events.append(
                    (
                        "resource.allocated",
                        {**allocation.model_dump(mode="json"), "status": self._status_locked(state).value},
                    )
                )
            granted.append(allocation)
        return granted

    def _release_locked(self, allocation_id: str, reason: str, notes: _Notes) -> bool:
        state = self._by_allocation.pop(allocation_id, None)
        if state is None:
            return False
        held = state.held.pop(allocation_id)
        allocation = held.allocation
        state.allocated -= allocation.amount
        if not state.held:
            state.allocated = 0.0  # drop float drift once nothing is held
        ids = self._by_requester.get(allocation.requester_id)
        if ids is not None:
            ids.discard(allocation_id)
            if not ids:
                del self._by_requester[allocation.requester_id]
        notes.freed = True
        if self._listeners:
            notes.events.append(
                (
                    "resource.released",
                    {
                        **allocation.model_dump(mode="json"),
                        "reason": reason,
                        "status": self._status_locked(state).value,
                    },
                )
            )
        self._capacity_changed.notify_all()
        return True

    def _note_exhausted_locked(
        self,
        requester: str,
        wanted: Mapping[str, float],
        shortfall: Mapping[str, float],
        notes: _Notes,
        *,
        always: bool,
        waiting: float = 0.0,
    ) -> None:
        # try_acquire is re-asked on every release; report a requester's refusal once, not each time.
        for rid, available in shortfall.items():
            key = (requester, rid)
            if not always and key in self._refused:
                continue
            if len(self._refused) > 10_000:
                self._refused.clear()
            self._refused.add(key)
            state = self._states.get(rid)
            if not self._listeners:
                continue
            notes.events.append(
                (
                    "resource.exhausted",
                    {
                        "resource_id": rid,
                        "requester_id": requester,
                        "requested": wanted[rid],
                        "available": available,
                        "status": self._status_locked(state).value if state else ResourceStatus.UNKNOWN.value,
                        "waiting_seconds": waiting,
                    },
                )
            )

    def _push_deadline_locked(self, deadline: float, allocation_id: str) -> None:
        earliest = self._deadlines[0][0] if self._deadlines else None
        heapq.heappush(self._deadlines, (deadline, next(self._seq), allocation_id))
        if self._closed:
            return
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="resource-expiry", daemon=True)
            self._reaper.start()
        elif earliest is None or deadline < earliest:
            self._schedule_changed.notify()

    def _next_deadline_locked(self) -> float | None:
        while self._deadlines:
            deadline, _seq, aid = self._deadlines[0]
            state = self._by_allocation.get(aid)
            if state is not None and state.held[aid].deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)  # released already: drop the stale entry
        return None

    def _expire_due_locked(self, now: float, notes: _Notes) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, _seq, aid = heapq.heappop(self._deadlines)
            state = self._by_allocation.get(aid)
            if state is not None:
                self._release_locked(aid, state.held[aid].expiry_reason, notes)

    def _status_locked(self, state: _State) -> ResourceStatus:
        if state.operator_status is not None:
            return state.operator_status
        r = state.resource
        if not r.capacity_known:
            return ResourceStatus.UNKNOWN
        tol = _EPS * max(1.0, r.capacity)
        if state.allocated <= tol:
            return ResourceStatus.AVAILABLE
        if state.allocated > r.capacity + tol or state.allocated >= r.capacity + r.burst_limit - tol:
            return ResourceStatus.DEPLETED
        if state.allocated >= r.capacity - tol:
            return ResourceStatus.BUSY
        return ResourceStatus.ALLOCATED

    def _usage_locked(self, state: _State, *, with_allocations: bool) -> dict[str, Any]:
        r = state.resource
        allocated = state.allocated
        usage: dict[str, Any] = {
            "id": r.id,
            "name": r.name,
            "type": r.type.value,
            "unit": r.unit,
            "capacity": r.capacity,
            "burst_limit": r.burst_limit,
            "allocated": allocated,
            "available": max(0.0, r.capacity - allocated) if state.operator_status is None else 0.0,
            "available_with_burst": self._available_locked(state),
            "burst_in_use": max(0.0, allocated - r.capacity),
            "utilization": allocated / r.capacity if r.capacity > 0 else (1.0 if allocated > 0 else 0.0),
            "status": self._status_locked(state).value,
            "capacity_known": r.capacity_known,
            "derived_from": r.derived_from,
            "allocation_count": len(state.held),
        }
        if with_allocations:
            usage["allocations"] = [
                h.allocation.model_dump(mode="json")
                for h in sorted(state.held.values(), key=lambda h: h.allocation.created_at)
            ]
        return usage

    # ------------------------------------------------------------------ internals (no lock)

    def _reap(self) -> None:
        """The expiry thread: sleep until the earliest deadline, release what is due, repeat."""
        while True:
            notes = _Notes()
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                self._expire_due_locked(now, notes)
                if not notes.freed:
                    deadline = self._next_deadline_locked()
                    wait = (
                        _MAX_IDLE_WAIT if deadline is None else min(_MAX_IDLE_WAIT, max(0.0, deadline - now))
                    )
                    self._schedule_changed.wait(timeout=wait)
                    continue
            self._deliver(notes)

    def _deliver(self, notes: _Notes) -> None:
        if not notes.events and not notes.freed:
            return
        listeners = self._listeners
        for event, payload in notes.events:
            for fn in listeners:
                try:
                    fn(event, payload)
                except Exception:
                    self._log.exception("resource event listener failed", resource_event=event)
        if notes.freed:
            for callback in self._release_listeners:
                try:
                    callback()
                except Exception:
                    self._log.exception("resource release listener failed")

    @staticmethod
    def _check_requester(requester_id: object) -> str:
        if not isinstance(requester_id, str) or not requester_id:
            raise InvalidInputError("requester_id", f"must be a non-empty string, got {requester_id!r}")
        return requester_id

    @staticmethod
    def _check_seconds(value: float | None, name: str, *, allow_zero: bool) -> float | None:
        if value is None:
            return None
        number = _number(value, field=name, accepted="seconds as a finite number")
        if number < 0 or (number == 0 and not allow_zero):
            raise InvalidInputError(name, f"must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
        return number

    @staticmethod
    def _parse_type(value: ResourceType | str) -> ResourceType:
        try:
            return ResourceType(str(value).lower())
        except ValueError:
            raise InvalidInputError(
                "type",
                f"{value!r} is not a resource type; use one of {_TYPE_NAMES}",
            ) from None
