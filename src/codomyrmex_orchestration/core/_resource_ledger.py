"""The resource ledger: who holds how much of what, burst accounting, expiry, and admission.

:class:`ResourceLedger` owns, under one lock (``_lock``): each resource's state (its definition, the
amount allocated, an operator status, the held allocations with their expiry timers), the indexes by
allocation id and by requester, and the refusals already reported. An allocation with a ``ttl`` or
burst time bound is released by a timer on the shared :class:`TimerService`; the timer callback only
takes the ledger's lock briefly. Listener lists are copy-on-write tuples: a delivery iterates the tuple
it read, so adding or removing a listener during a delivery is safe. Listeners run outside the lock.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from codomyrmex_orchestration.core._resource_config import parse_amount
from codomyrmex_orchestration.core._resource_types import (
    EPS,
    KEY_ALIASES,
    Allocation,
    EventListener,
    Resource,
    ResourceStatus,
    ResourceType,
)
from codomyrmex_orchestration.core.models import utcnow
from codomyrmex_orchestration.core.timers import Timer, TimerService, wait_limit
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    InsufficientResourcesError,
    InvalidInputError,
    InvalidStateError,
    ResourceNotFoundError,
)
from codomyrmex_orchestration.logs import get_logger

__all__ = ["Listeners", "ResourceLedger"]

_log = get_logger("codomyrmex_orchestration.resources")

#: Refusals remembered (to report each requester's shortage once) before the memory is cleared.
_MAX_REFUSALS_REMEMBERED = 10_000
_TYPE_VALUES = frozenset(t.value for t in ResourceType)


@dataclass
class _Held:
    allocation: Allocation
    expiry_reason: str  # "expired" (ttl) or "burst_expired"
    timer: Timer | None = None  # pending release at expires_at


@dataclass
class _State:
    resource: Resource
    allocated: float = 0.0
    operator_status: ResourceStatus | None = None
    held: dict[str, _Held] = field(default_factory=dict)


@dataclass
class _Notes:
    """Notifications collected under the lock and delivered after it is released."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    freed: bool = False


class Listeners:
    """Event and release listeners, as copy-on-write tuples guarded by ``_lock``.

    A delivery iterates the tuple it read when it began, so a listener may add or remove listeners
    (itself included) while it is being called; each is called outside every ledger lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards replacing the two tuples
        self.events: tuple[EventListener, ...] = ()
        self.releases: tuple[Callable[[], None], ...] = ()

    def add(self, fn: EventListener) -> None:
        with self._lock:
            self.events = (*self.events, fn)

    def remove(self, fn: EventListener) -> None:
        with self._lock:
            self.events = tuple(f for f in self.events if f != fn)

    def add_release(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self.releases = (*self.releases, callback)

    def remove_release(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self.releases = tuple(f for f in self.releases if f != callback)

    def deliver(self, notes: _Notes) -> None:
        if notes.events:
            listeners = self.events  # one snapshot for the whole delivery
            for event, payload in notes.events:
                for fn in listeners:
                    try:
                        fn(event, payload)
                    except Exception:
                        _log.exception("resource event listener failed", resource_event=event)
        if notes.freed:
            for callback in self.releases:
                try:
                    callback()
                except Exception:
                    _log.exception("resource release listener failed")


class ResourceLedger:
    """Allocations against capacities, all or nothing, with burst and expiry. Thread-safe.

    Args:
        resources: the resource definitions (ids unique).
        timers: the service that runs expiries; the ledger never closes it.
    """

    def __init__(self, resources: Iterable[Resource], timers: TimerService) -> None:
        self._timers = timers
        self._lock = threading.Lock()
        self._capacity_changed = threading.Condition(self._lock)  # waiting allocators
        self._states: dict[str, _State] = {r.id: _State(r) for r in resources}
        self._by_allocation: dict[str, _State] = {}
        self._by_requester: dict[str, set[str]] = {}
        self._refused: set[tuple[str, str]] = set()  # (requester, resource) told "exhausted" already
        self._ids = itertools.count(1)
        self._closed = False
        #: Event and release listeners; the manager adds and removes them directly.
        self.listeners = Listeners()

    # ------------------------------------------------------------------ definitions

    def definitions(self) -> list[Resource]:
        with self._lock:
            return [s.resource for s in self._states.values()]

    def resolve(self, key: object, *, field: str = "resource_id") -> Resource:
        """The resource a key names: an id, an alias (``cpu``, ``disk``) or a type held by one resource."""
        with self._lock:
            return self._states[_resolve(self._states, key, field=field)].resource

    def add(self, resource: Resource) -> None:
        with self._lock:
            if resource.id in self._states:
                raise AlreadyExistsError("resource", resource.id, "resource definitions cannot be replaced")
            self._states[resource.id] = _State(resource)

    def set_operator_status(self, key: str, status: ResourceStatus | None) -> Resource:
        """Set (or with None clear) an operator status; clearing wakes waiters and release listeners."""
        notes = _Notes()
        with self._lock:
            state = self._states[_resolve(self._states, key, field="resource_id")]
            previous, state.operator_status = state.operator_status, status
            if previous is not None and status is None:
                notes.freed = True
                self._capacity_changed.notify_all()
        self.listeners.deliver(notes)
        return state.resource

    def requirements(self, requirements: Mapping[str, Any]) -> dict[str, float]:
        """Resolve keys and parse amounts; refuse what capacity plus burst could never give.

        Raises:
            InsufficientResourcesError: an amount above capacity + burst.
            InvalidInputError / ResourceNotFoundError: a bad key or amount.
        """
        if not isinstance(requirements, Mapping):
            raise InvalidInputError(
                "requirements",
                f'must be an object such as {{"compute": 1, "memory": "512MB"}}, got {requirements!r}',
            )
        with self._lock:
            resolved = [
                (key, _resolve(self._states, key, field=f"requirements.{key}")) for key in requirements
            ]
            defs = {rid: self._states[rid].resource for _key, rid in resolved}
        wanted: dict[str, float] = {}
        firsts: dict[str, str] = {}
        for key, rid in resolved:
            if rid in firsts:
                raise InvalidInputError(
                    f"requirements.{key}",
                    f"resource {rid!r} is already requested as {firsts[rid]!r}; give it once",
                )
            firsts[rid] = key
            wanted[rid] = parse_amount(requirements[key], defs[rid], field=f"requirements.{key}")
        limits = {rid: defs[rid].capacity + defs[rid].burst_limit for rid in wanted}
        too_big = {rid: amount for rid, amount in wanted.items() if amount > limits[rid] + EPS}
        if too_big:
            raise InsufficientResourcesError(
                too_big,
                {rid: limits[rid] for rid in too_big},
                "more than the total capacity plus burst; it can never be granted",
            )
        return wanted

    # ------------------------------------------------------------------ allocation

    def acquire(
        self, requester: str, wanted: Mapping[str, float], ttl: float | None, timeout: float
    ) -> list[Allocation]:
        """Grant all of ``wanted``, waiting up to ``timeout`` seconds for capacity.

        Raises:
            InsufficientResourcesError: still short when the timeout ran out (at once for 0).
            InvalidStateError: the ledger is closed (also to a caller waiting when it closes).
        """
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            notes = _Notes()
            try:
                with self._lock:
                    if self._closed:  # close() wakes the waiters: they are refused here
                        raise _closed_error(requester, wanted)
                    shortfall = self._shortfall_locked(wanted)
                    if not shortfall:
                        return self._grant_locked(requester, wanted, notes, ttl=ttl, bound_burst=True)
                    remaining = deadline - time.monotonic()
                    if not announced:
                        # Once per call, and delivered before waiting: listeners learn of the
                        # shortage while this caller still waits for capacity.
                        announced = True
                        self._note_exhausted_locked(
                            requester, wanted, shortfall, notes, always=True, waiting=max(0.0, remaining)
                        )
                    if remaining <= 0:
                        raise InsufficientResourcesError(
                            {rid: amount for rid, amount in wanted.items() if rid in shortfall},
                            shortfall,
                            self._refusal_reason_locked(shortfall, timeout),
                        )
                    if not notes.events:  # deliver pending news before waiting
                        self._capacity_changed.wait(timeout=wait_limit(remaining))
            finally:
                self.listeners.deliver(notes)

    def try_acquire(self, requester: str, wanted: Mapping[str, float]) -> list[Allocation] | None:
        """Grant all of ``wanted`` now, or nothing (None); a refusal is reported once per requester.

        This is a step's admission: held until the step ends, so burst in it is not bounded in time
        (reclaiming it would leave the step running on capacity the ledger lends again).
        """
        notes = _Notes()
        try:
            with self._lock:
                shortfall = self._shortfall_locked(wanted)
                if shortfall:
                    self._note_exhausted_locked(requester, wanted, shortfall, notes, always=False)
                    return None
                return self._grant_locked(requester, wanted, notes, ttl=None, bound_burst=False)
        finally:
            self.listeners.deliver(notes)

    def restore(self, allocation: Allocation, wanted: Mapping[str, float]) -> Allocation:
        """Hold ``allocation`` (a previous process's) again under its own id, holder, amount, creation
        time and expiry; ``wanted`` is its requirement as :meth:`requirements` parsed it. Burst in it
        is bounded again from now.

        Raises:
            AlreadyExistsError: an allocation with its id is held.
            InsufficientResourcesError: there is no room for it now.
        """
        notes = _Notes()
        try:
            with self._lock:
                if self._closed:
                    raise _closed_error(allocation.requester_id, wanted)
                if allocation.allocation_id in self._by_allocation:
                    raise AlreadyExistsError("allocation", allocation.allocation_id, "it is held already")
                shortfall = self._shortfall_locked(wanted)
                if shortfall:
                    raise InsufficientResourcesError(
                        dict(wanted), shortfall, "no room for it after a restart"
                    )
                [granted] = self._grant_locked(
                    allocation.requester_id, wanted, notes, ttl=None, bound_burst=True, restoring=allocation
                )
                return granted
        finally:
            self.listeners.deliver(notes)

    def release(self, allocation_ids: Iterable[str], reason: str = "released") -> int:
        """Release the allocations still held among ``allocation_ids``; returns how many were."""
        notes = _Notes()
        with self._lock:
            count = sum(self._release_locked(aid, reason, notes) for aid in allocation_ids)
        self.listeners.deliver(notes)
        return count

    def release_requester(self, requester: str) -> int:
        notes = _Notes()
        with self._lock:
            ids = list(self._by_requester.get(requester, ()))
            count = sum(self._release_locked(aid, "deallocated", notes) for aid in ids)
        self.listeners.deliver(notes)
        return count

    def allocations(self, requester: str | None = None) -> list[Allocation]:
        with self._lock:
            if requester is None:
                found = [h.allocation for s in self._states.values() for h in s.held.values()]
            else:
                found = [
                    self._by_allocation[aid].held[aid].allocation
                    for aid in self._by_requester.get(requester, ())
                ]
        return sorted(found, key=lambda a: (a.created_at, a.allocation_id))

    # ------------------------------------------------------------------ reports

    def status(self, key: str) -> ResourceStatus:
        with self._lock:
            return _status(self._states[_resolve(self._states, key, field="resource_id")])

    def usage(self, key: str, limit: int | None) -> dict[str, Any]:
        with self._lock:
            state = self._states[_resolve(self._states, key, field="resource_id")]
            return {**_usage(state), **_listed(state, limit)}

    def total_usage(self) -> dict[str, Any]:
        with self._lock:
            per = {rid: _usage(s) for rid, s in sorted(self._states.items())}
            burst = sum(1 for s in self._states.values() for h in s.held.values() if h.allocation.burst)
            return {
                "resources": per,
                "allocations": len(self._by_allocation),
                "burst_allocations": burst,
                "requesters": len(self._by_requester),
                "by_status": {
                    status.value: sum(1 for u in per.values() if u["status"] == status.value)
                    for status in ResourceStatus
                },
            }

    def invariants(self) -> list[str]:
        """Problems in the bookkeeping (empty when healthy); see ``ResourceManager.check_invariants``."""
        with self._lock:  # once closed, nothing is expected to expire
            return _ledger_problems(
                self._states, self._by_allocation, self._by_requester, timers=not self._closed
            )

    def close(self) -> None:
        """Cancel every pending expiry and wake waiters (refused, as every later :meth:`acquire` and
        :meth:`restore` is); held allocations stay until released."""
        with self._lock:
            self._closed = True
            for state in self._states.values():
                for held in state.held.values():
                    if held.timer is not None:
                        held.timer.cancel()
                        held.timer = None
            self._capacity_changed.notify_all()

    # ------------------------------------------------------------------ internals (lock held)

    def _shortfall_locked(self, wanted: Mapping[str, float]) -> dict[str, float]:
        """Resources that cannot give their amount now -> what they could give."""
        short: dict[str, float] = {}
        for rid, amount in wanted.items():
            state = self._states[rid]
            available = _available(state)
            if amount > available + EPS * max(1.0, state.resource.capacity):
                short[rid] = available
        return short

    def _refusal_reason_locked(self, shortfall: Mapping[str, float], waited: float) -> str:
        parts = [
            f"{rid} is {self._states[rid].operator_status} (set by an operator)"
            for rid in shortfall
            if self._states[rid].operator_status is not None
        ]
        parts.append(f"waited {waited:g} s" if waited > 0 else "retry later, or free some: release_resources")
        return "; ".join(parts)

    def _grant_locked(
        self,
        requester: str,
        wanted: Mapping[str, float],
        notes: _Notes,
        *,
        ttl: float | None,
        bound_burst: bool,
        restoring: Allocation | None = None,
    ) -> list[Allocation]:
        now = utcnow()
        granted: list[Allocation] = []
        for rid, amount in wanted.items():
            state = self._states[rid]
            r = state.resource
            over = max(0.0, state.allocated + amount - r.capacity)
            burst_amount = min(amount, over) if over > EPS * max(1.0, r.capacity) else 0.0
            expires = now + timedelta(seconds=ttl) if ttl is not None else None
            if restoring is not None:
                expires = restoring.expires_at
            reason = "expired"
            if bound_burst and burst_amount > 0 and r.burst_max_seconds is not None:
                burst_end = now + timedelta(seconds=r.burst_max_seconds)
                if expires is None or burst_end < expires:
                    expires, reason = burst_end, "burst_expired"
            aid = (
                f"alloc-{next(self._ids)}-{os.urandom(4).hex()}"
                if restoring is None
                else restoring.allocation_id
            )
            allocation = Allocation(
                allocation_id=aid,
                resource_id=rid,
                requester_id=requester,
                amount=amount,
                burst=burst_amount > 0,
                burst_amount=burst_amount,
                created_at=now if restoring is None else restoring.created_at,
                expires_at=expires,
            )
            held = _Held(allocation, reason)
            if expires is not None and not self._closed:
                held.timer = self._arm_expiry(aid, (expires - now).total_seconds())
            state.held[aid] = held
            state.allocated += amount
            self._by_allocation[aid] = state
            self._by_requester.setdefault(requester, set()).add(aid)
            self._refused.discard((requester, rid))
            if self.listeners.events:  # payloads cost a model_dump; build them only for someone
                notes.events.append(
                    (
                        "resource.allocated",
                        {**allocation.model_dump(mode="json"), "status": _status(state).value},
                    )
                )
            granted.append(allocation)
        return granted

    def _arm_expiry(self, allocation_id: str, delay: float) -> Timer | None:
        try:
            return self._timers.call_later(delay, functools.partial(self._expire, allocation_id))
        except RuntimeError:  # the shared timer service was closed before this ledger
            _log.warning("resource expiry not armed: the timer service is closed", allocation=allocation_id)
            return None

    def _release_locked(self, allocation_id: str, reason: str, notes: _Notes) -> bool:
        state = self._by_allocation.pop(allocation_id, None)
        if state is None:
            return False
        held = state.held.pop(allocation_id)
        if held.timer is not None:
            held.timer.cancel()
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
        if self.listeners.events:
            payload = {**allocation.model_dump(mode="json"), "reason": reason, "status": _status(state).value}
            notes.events.append(("resource.released", payload))
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
            if len(self._refused) > _MAX_REFUSALS_REMEMBERED:
                self._refused.clear()
            self._refused.add(key)
            if not self.listeners.events:
                continue
            payload = {
                "resource_id": rid,
                "requester_id": requester,
                "requested": wanted[rid],
                "available": available,
                "status": _status(self._states[rid]).value,
                "waiting_seconds": waiting,
            }
            notes.events.append(("resource.exhausted", payload))

    # ------------------------------------------------------------------ internals (no lock)

    def _expire(self, allocation_id: str) -> None:
        """Timer callback: release the allocation if it is still held (short; never blocks)."""
        notes = _Notes()
        with self._lock:
            state = self._by_allocation.get(allocation_id)
            if state is not None:
                held = state.held[allocation_id]
                held.timer = None  # fired: nothing to cancel
                self._release_locked(allocation_id, held.expiry_reason, notes)
        self.listeners.deliver(notes)


def _closed_error(requester: str, wanted: Mapping[str, float]) -> InvalidStateError:
    return InvalidStateError(
        "resource",
        ", ".join(wanted),
        "shut down with its ResourceManager",
        f"no allocation is granted to {requester!r} after shutdown(); create a new manager (or engine) "
        "to allocate again",
    )


# --------------------------------------------------------------------------- per-resource figures


def _resolve(states: Mapping[str, _State], key: object, *, field: str) -> str:
    """The id a key names: an id, an alias (``cpu``, ``disk``) or a type held by exactly one resource."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError(field, f"a resource key must be a non-empty string, got {key!r}")
    if key in states:
        return key
    low = key.strip().lower()
    if low in states:
        return low
    alias = KEY_ALIASES.get(low)
    if alias is not None and alias in states:
        return alias
    rtype = ResourceType(low) if low in _TYPE_VALUES else None
    if rtype is not None:
        matches = sorted(rid for rid, s in states.items() if s.resource.type is rtype)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidInputError(
                field,
                f"{key!r} names {len(matches)} resources of that type; use one id: {', '.join(matches)}",
            )
    known = [*states, *(a for a, target in KEY_ALIASES.items() if target in states)]
    raise ResourceNotFoundError(key, known=known)


def _available(state: _State) -> float:
    if state.operator_status is not None:
        return 0.0
    r = state.resource
    return max(0.0, r.capacity + r.burst_limit - state.allocated)


def _status(state: _State) -> ResourceStatus:
    if state.operator_status is not None:
        return state.operator_status
    r = state.resource
    if not r.capacity_known:
        return ResourceStatus.UNKNOWN
    tol = EPS * max(1.0, r.capacity)
    if state.allocated <= tol:
        return ResourceStatus.AVAILABLE
    if state.allocated > r.capacity + tol or state.allocated >= r.capacity + r.burst_limit - tol:
        return ResourceStatus.DEPLETED
    if state.allocated >= r.capacity - tol:
        return ResourceStatus.BUSY
    return ResourceStatus.ALLOCATED


def _usage(state: _State) -> dict[str, Any]:
    r = state.resource
    allocated = state.allocated
    return {
        "id": r.id,
        "name": r.name,
        "type": r.type.value,
        "unit": r.unit,
        "capacity": r.capacity,
        "burst_limit": r.burst_limit,
        "allocated": _figure(allocated),
        "available": _figure(max(0.0, r.capacity - allocated)) if state.operator_status is None else 0.0,
        "available_with_burst": _figure(_available(state)),
        "burst_in_use": _figure(max(0.0, allocated - r.capacity)),
        "utilization": _figure(allocated / r.capacity if r.capacity > 0 else (1.0 if allocated > 0 else 0.0)),
        "status": _status(state).value,
        "capacity_known": r.capacity_known,
        "derived_from": r.derived_from,
        "allocation_count": len(state.held),
    }


def _figure(value: float) -> float:
    """A total for a report: sums of amounts such as 0.01 drift in the last digits (2000 of them make
    20.000000000000327); 12 significant digits keep every real difference (a byte of a TiB) and drop that."""
    return float(f"{value:.12g}")


def _listed(state: _State, limit: int | None) -> dict[str, Any]:
    """The held allocations in the order granted; past ``limit``, only the largest half and the newest."""
    held = list(state.held.values())  # a dict keeps the order they were granted (or restored) in
    if limit is None or len(held) <= limit:
        return {"allocations": [h.allocation.model_dump(mode="json") for h in held], "allocations_omitted": 0}
    cut = len(held) - (limit - limit // 2)  # the newest are held[cut:]
    largest = sorted(heapq.nlargest(limit // 2, enumerate(held[:cut]), key=lambda p: p[1].allocation.amount))
    shown = [h for _n, h in largest] + held[cut:]
    return {
        "allocations": [h.allocation.model_dump(mode="json") for h in shown],
        "allocations_omitted": len(held) - len(shown),
        "allocations_note": (
            f"{len(shown)} of {len(held)} allocations listed: the {limit // 2} largest and the newest; "
            "ResourceManager.get_allocations() or get_usage(id, limit=None) lists them all, and "
            "release_resources with a user_id frees everything one user holds"
        ),
    }


def _state_problems(rid: str, state: _State) -> list[str]:
    r = state.resource
    total = math.fsum(h.allocation.amount for h in state.held.values())
    tol = EPS * max(1.0, r.capacity + r.burst_limit)
    problems: list[str] = []
    if state.allocated < -tol:
        problems.append(f"{rid}: allocated {state.allocated:g} is negative")
    if state.allocated > r.capacity + r.burst_limit + tol:
        problems.append(
            f"{rid}: allocated {state.allocated:g} exceeds capacity {r.capacity:g} + burst {r.burst_limit:g}"
        )
    if abs(total - state.allocated) > tol * max(1, len(state.held)):
        problems.append(f"{rid}: allocated {state.allocated:g} but held allocations sum to {total:g}")
    return problems


def _ledger_problems(
    states: Mapping[str, _State],
    by_allocation: Mapping[str, _State],
    by_requester: Mapping[str, set[str]],
    *,
    timers: bool,
) -> list[str]:
    """The bookkeeping problems of a ledger's state (its lock held); ``timers``: expect expiry timers."""
    problems = [p for rid, state in states.items() for p in _state_problems(rid, state)]
    problems.extend(
        f"{rid}: allocation {aid} missing from the allocation index"
        for rid, state in states.items()
        for aid in state.held
        if by_allocation.get(aid) is not state
    )
    indexed = sum(len(ids) for ids in by_requester.values())
    if indexed != len(by_allocation):
        problems.append(f"requester index holds {indexed} allocations, allocation index {len(by_allocation)}")
    if timers:
        problems.extend(
            f"{h.allocation.resource_id}: allocation {h.allocation.allocation_id} expires "
            "but has no expiry timer"
            for s in states.values()
            for h in s.held.values()
            if h.allocation.expires_at is not None and h.timer is None
        )
    return problems
