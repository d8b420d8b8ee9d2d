"""The resource vocabulary: kinds, statuses, a resource's definition, an allocation, an admission handle.

Pure data shared by the probe, the config parser, the ledger and :class:`ResourceManager`; no state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from codomyrmex_orchestration.core.models import NAME_PATTERN

__all__ = [
    "DEFAULT_BURST_MAX_SECONDS",
    "DEFAULT_NETWORK_MBPS",
    "DEFAULT_RESOURCES_CONFIG",
    "EPS",
    "KEY_ALIASES",
    "MAX_TTL_SECONDS",
    "MIB",
    "OPERATOR_STATUSES",
    "SIZED_TYPES",
    "TYPE_NAMES",
    "WHOLE_TYPES",
    "Allocation",
    "EventListener",
    "Resource",
    "ResourceHandle",
    "ResourceStatus",
    "ResourceType",
]

#: Where the CLI/engine look for resource overrides (relative to the working directory).
DEFAULT_RESOURCES_CONFIG = Path("config/resources.json")
#: Network capacity in Mbit/s when neither the config nor the caller gives one.
DEFAULT_NETWORK_MBPS = 1000.0
#: How long (seconds) an allocation made with ``allocate`` that uses burst capacity may be held before
#: it is reclaimed (a step's admission keeps its burst until the step ends).
DEFAULT_BURST_MAX_SECONDS = 300.0
#: The longest ``ttl`` (and ``burst_max_seconds``) an allocation may have, 365 days (leave the ttl out
#: for no expiry): far longer ones name no date a ``datetime`` can hold.
MAX_TTL_SECONDS = 365 * 24 * 3600.0
#: Requirement keys accepted besides resource ids and ResourceType values.
KEY_ALIASES: Mapping[str, str] = {"cpu": "compute", "disk": "storage"}

#: Relative tolerance of amount comparisons (amounts are floats summed and subtracted).
EPS = 1e-9
MIB = 1024 * 1024

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


TYPE_NAMES = ", ".join(t.value for t in ResourceType)
OPERATOR_STATUSES = frozenset({ResourceStatus.MAINTENANCE, ResourceStatus.OFFLINE})
#: Types whose amounts are sizes in MiB and accept strings such as "512MB".
SIZED_TYPES = frozenset({ResourceType.MEMORY, ResourceType.STORAGE})
#: Types counted in whole units (a thread, a process, an open file, the lock): half of one is no
#: amount at all, and two holders of half the lock would both be inside the mutex.
WHOLE_TYPES = frozenset(
    {ResourceType.THREAD, ResourceType.PROCESS, ResourceType.FILE_HANDLE, ResourceType.LOCK}
)


class Resource(BaseModel):
    """A resource's definition. Amounts are in ``unit`` (memory and storage: MiB)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    id: str = Field(pattern=NAME_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    type: ResourceType
    capacity: float = Field(ge=0, allow_inf_nan=False)
    unit: str = Field(default="units", min_length=1, max_length=40)
    #: Extra amount that may be lent above ``capacity``; allocations using it are flagged ``burst``.
    burst_limit: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: A burst allocation made with ``allocate`` is released automatically this many seconds after it
    #: was made (``None``: no bound besides its own ``ttl``); a step's admission is held until it ends.
    burst_max_seconds: float | None = Field(
        default=DEFAULT_BURST_MAX_SECONDS, gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False
    )
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

    model_config = ConfigDict(frozen=True, defer_build=True)

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
