"""ResourceManager: capacities derived from the machine, atomic allocation, and scheduler admission.

A resource is a counter with a ``capacity`` (plus an optional ``burst_limit`` lent above it); an
allocation holds part of it until released, until its ``ttl`` runs out, or (made with ``allocate``)
until its burst time is up. The scheduler admits a step only when :meth:`ResourceManager.try_acquire`
grants the step's whole requirement (the :class:`ResourceAdmission` protocol in ARCHITECTURE.md), and
the step holds that grant, burst included, until it ends.

This module is the public face; it validates arguments and owns only the lifetime of its parts:
``_resource_probe`` (machine capacities), ``_resource_config`` (units and ``config/resources.json``),
``_resource_ledger`` (allocations, burst, expiry, admission, listeners) and ``_resource_types``.
Expiries run on a :class:`TimerService`: the engine's shared one, or one of the manager's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from codomyrmex_orchestration.core._numbers import check_seconds
from codomyrmex_orchestration.core._resource_config import (
    apply_config,
    load_config_file,
    parse_size_mib,
    parse_type,
)
from codomyrmex_orchestration.core._resource_ledger import ResourceLedger
from codomyrmex_orchestration.core._resource_probe import checked_path, machine_resources
from codomyrmex_orchestration.core._resource_types import (
    DEFAULT_BURST_MAX_SECONDS,
    DEFAULT_NETWORK_MBPS,
    DEFAULT_RESOURCES_CONFIG,
    KEY_ALIASES,
    MAX_TTL_SECONDS,
    OPERATOR_STATUSES,
    Allocation,
    EventListener,
    Resource,
    ResourceHandle,
    ResourceStatus,
    ResourceType,
)
from codomyrmex_orchestration.core.timers import TimerService
from codomyrmex_orchestration.errors import InvalidInputError
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

#: How many allocations :meth:`ResourceManager.get_usage` lists by default (system status shows it).
USAGE_LISTED = 10
#: The thread name of a manager's own timer service (when none is shared with it).
EXPIRY_THREAD_NAME = "resource-expiry"

_log = get_logger("codomyrmex_orchestration.resources")


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
        timers: the timer service that releases expiring allocations. Given: shared, never closed
            here. None: the manager makes its own (thread ``resource-expiry``) and closes it on
            :meth:`shutdown`.

    Raises:
        InvalidInputError: the config is malformed (``field`` names the offending entry), or a path is
            not a ``str`` or ``pathlib.Path``.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        worker_threads: int | None = None,
        config: Mapping[str, Any] | None = None,
        config_path: Path | str | None = None,
        *,
        network_mbps: float | None = None,
        timers: TimerService | None = None,
    ) -> None:
        if worker_threads is not None and (isinstance(worker_threads, bool) or worker_threads < 1):
            raise InvalidInputError("worker_threads", f"must be an integer >= 1, got {worker_threads!r}")
        mbps = DEFAULT_NETWORK_MBPS if network_mbps is None else network_mbps
        if not math.isfinite(mbps) or mbps <= 0:
            raise InvalidInputError("network_mbps", f"must be a finite number > 0, got {network_mbps!r}")
        state_dir, config_path = (
            checked_path(state_dir, "state_dir"),
            checked_path(config_path, "config_path"),
        )
        resources = {r.id: r for r in machine_resources(state_dir, worker_threads, mbps)}
        if config_path is not None:
            resources = apply_config(resources, load_config_file(config_path), origin=str(config_path))
        if config is not None:
            resources = apply_config(resources, config, origin="")
        self._owns_timers = timers is None
        self._timers = timers if timers is not None else TimerService(name=EXPIRY_THREAD_NAME)
        self._ledger = ResourceLedger(resources.values(), self._timers)

    # ------------------------------------------------------------------ listeners

    def add_listener(self, fn: EventListener) -> None:
        """Call ``fn(event, payload)`` on ``resource.allocated``, ``.released`` and ``.exhausted``.

        Listeners run outside the manager's lock on the thread that caused the event (the timer
        thread for expiries); an exception in one is logged and ignored. Adding or removing a
        listener while events are delivered is safe: a delivery uses the list as it was when it began.
        """
        self._ledger.listeners.add(fn)

    def remove_listener(self, fn: EventListener) -> None:
        self._ledger.listeners.remove(fn)

    def add_release_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (outside the lock) whenever capacity may have freed up."""
        self._ledger.listeners.add_release(callback)

    def remove_release_listener(self, callback: Callable[[], None]) -> None:
        self._ledger.listeners.remove_release(callback)

    # ------------------------------------------------------------------ lookup

    def list_resources(self, type: ResourceType | str | None = None) -> list[Resource]:
        """Resource definitions, sorted by id, optionally only those of ``type``.

        Raises:
            InvalidInputError: ``type`` is not a resource type.
        """
        wanted = parse_type(type) if type is not None else None
        found = self._ledger.definitions()
        return sorted((r for r in found if wanted is None or r.type is wanted), key=lambda r: r.id)

    def get_resource(self, resource_id: str) -> Resource:
        """A resource by id (aliases ``cpu``/``disk`` and type names accepted).

        Raises:
            ResourceNotFoundError: no such resource; the message lists the known ids.
        """
        return self._ledger.resolve(resource_id)

    def add_resource(self, resource: Resource) -> None:
        """Register another resource (e.g. a custom one).

        Raises:
            AlreadyExistsError: a resource with that id exists.
        """
        self._ledger.add(resource)

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
            if parsed is None or parsed not in (*OPERATOR_STATUSES, ResourceStatus.AVAILABLE):
                raise InvalidInputError(
                    "status",
                    f"{status!r} cannot be set; use maintenance, offline, or available/null to clear",
                )
            if parsed is ResourceStatus.AVAILABLE:
                parsed = None
        resource = self._ledger.set_operator_status(resource_id, parsed)
        _log.info("resource status set", resource=resource.id, status=str(parsed or "cleared"))

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
            ttl: seconds after which the allocation is released automatically (at most
                ``MAX_TTL_SECONDS``, 365 days; None: no expiry).
            timeout: seconds to wait for capacity; ``None`` or 0 refuses at once.

        Raises:
            InsufficientResourcesError: not enough capacity (now, or within ``timeout``), or more
                than capacity + burst ever could give.
            InvalidInputError / ResourceNotFoundError: a bad argument.
            InvalidStateError: the manager is shut down (a caller waiting for capacity is woken with it).
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
        requester = _check_requester(requester_id)
        ttl_s = check_seconds(ttl, "ttl", allow_zero=False, at_most=MAX_TTL_SECONDS)
        timeout_s = check_seconds(timeout, "timeout", allow_zero=True) or 0.0
        return self._ledger.acquire(requester, self._ledger.requirements(requirements), ttl_s, timeout_s)

    def restore(self, allocation: Allocation) -> Allocation:
        """Hold again an allocation a previous process made: the same id, holder, amount, creation
        time and ``expires_at`` (burst in it is bounded again from now). Used to recover after a restart.

        Raises:
            InsufficientResourcesError: no room for it now.
            InvalidInputError / ResourceNotFoundError: the resource is gone or the amount no longer fits
                its definition.
            AlreadyExistsError: an allocation with that id is held.
        """
        _check_requester(allocation.requester_id)
        wanted = self._ledger.requirements({allocation.resource_id: allocation.amount})
        return self._ledger.restore(allocation, wanted)

    def release(self, allocation_id: str) -> bool:
        """Release one allocation. Returns False if it was not held (already released or expired)."""
        return self._ledger.release((allocation_id,)) == 1

    def deallocate_resources(self, requester_id: str) -> int:
        """Release every allocation held by ``requester_id``; returns how many were released."""
        return self._ledger.release_requester(requester_id)

    def get_allocations(self, requester_id: str | None = None) -> list[Allocation]:
        """Held allocations (of one requester if given), oldest first."""
        return self._ledger.allocations(requester_id)

    # ------------------------------------------------------------------ scheduler admission

    def check_satisfiable(self, requirements: Mapping[str, Any]) -> None:
        """Validate ``requirements`` and check that each could ever be granted.

        Raises:
            InsufficientResourcesError: an amount exceeds capacity + burst (``available`` gives that total).
            InvalidInputError / ResourceNotFoundError: a bad key or amount.
        """
        self._ledger.requirements(requirements)

    def try_acquire(self, requester_id: str, requirements: Mapping[str, Any]) -> ResourceHandle | None:
        """Grant all of ``requirements`` now, or nothing: returns a handle, or None if it must wait.

        The grant is held until :meth:`release_handle`: burst in it is never reclaimed by
        ``burst_max_seconds`` (a running step keeps what it was admitted with). Never blocks. Raises
        like :meth:`check_satisfiable` for a requirement that can never fit.
        """
        requester = _check_requester(requester_id)
        granted = self._ledger.try_acquire(requester, self._ledger.requirements(requirements))
        if granted is None:
            return None
        return ResourceHandle(requester, tuple(a.allocation_id for a in granted))

    def release_handle(self, handle: object) -> None:
        """Release what :meth:`try_acquire` granted (idempotent)."""
        if not isinstance(handle, ResourceHandle):
            raise InvalidInputError(
                "handle", f"expected a ResourceHandle from try_acquire, got {type(handle).__name__}"
            )
        self._ledger.release(handle.allocation_ids)

    # ------------------------------------------------------------------ usage and health

    def get_usage(self, resource_id: str, *, limit: int | None = USAGE_LISTED) -> dict[str, Any]:
        """Capacity, allocated, available (below capacity), available_with_burst, burst_in_use,
        utilization (allocated / capacity), status, allocation_count and the held allocations of one
        resource, oldest first. Past ``limit`` (``None``: no limit) only the ``limit // 2`` largest and
        the newest are listed; ``allocations_omitted`` counts the rest and ``allocations_note`` says so.

        Raises:
            ResourceNotFoundError: unknown resource.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidInputError("limit", f"must be an integer >= 1 or None, got {limit!r}")
        return self._ledger.usage(resource_id, limit)

    def get_total_usage(self) -> dict[str, Any]:
        """A summary: per-resource usage (without allocation lists) and allocation counts."""
        return self._ledger.total_usage()

    def status_of(self, resource_id: str) -> ResourceStatus:
        """The resource's current :class:`ResourceStatus`."""
        return self._ledger.status(resource_id)

    def check_invariants(self) -> list[str]:
        """Problems found in the bookkeeping (empty when healthy): allocated <= capacity + burst,
        allocated equals the sum of held amounts, indexes agree, every expiring allocation has its timer.
        """
        return self._ledger.invariants()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop expiring allocations: cancel their timers, and close the timer service if it is the
        manager's own (its thread joined for at most ``timeout`` s). Callers waiting in :meth:`allocate`
        are woken and refused (``InvalidStateError``), as every later allocation is. Idempotent."""
        self._ledger.close()
        if self._owns_timers:
            self._timers.close(timeout)

    def __enter__(self) -> ResourceManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _check_requester(requester_id: object) -> str:
    if not isinstance(requester_id, str) or not requester_id:
        raise InvalidInputError("requester_id", f"must be a non-empty string, got {requester_id!r}")
    return requester_id
