"""User allocations: resources reserved through the engine for a user (made in a session, they are
also listed by it and released as it closes), persisted in the store so they survive a restart.

:class:`UserAllocations` owns the set of allocation ids it persisted (``_lock`` guards it): when the
resource manager reports one released (explicitly, by TTL or with its session), its stored copy goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from codomyrmex_orchestration.core._metrics import EngineCounters
from codomyrmex_orchestration.core._sessions import SessionRegistry
from codomyrmex_orchestration.core.models import utcnow
from codomyrmex_orchestration.core.resources import Allocation, ResourceManager
from codomyrmex_orchestration.core.store import EngineStateStore
from codomyrmex_orchestration.errors import InsufficientResourcesError, InvalidInputError, OrchestrationError

__all__ = ["UserAllocations"]

_log = structlog.get_logger("codomyrmex_orchestration.engine")

#: With ``timeout=None`` an allocation waits for capacity in rounds this long (each a bounded wait).
ALLOCATION_ROUND = 3600.0


class UserAllocations:
    """Allocate, release and restore the allocations users ask for (see the engine's methods)."""

    def __init__(
        self,
        *,
        resources: ResourceManager,
        store: EngineStateStore,
        sessions: SessionRegistry,
        counters: EngineCounters,
    ) -> None:
        self._resources = resources
        self._store = store
        self._sessions = sessions
        self._counters = counters
        # _lock guards _persisted: the ids whose copy is in the store.
        self._lock = threading.Lock()
        self._persisted: set[str] = set()

    def allocate(
        self,
        requester_id: str,
        requirements: Mapping[str, Any],
        *,
        ttl: float | None,
        timeout: float | None,
        session_id: str | None,
    ) -> list[Allocation]:
        if session_id is not None:
            with self._sessions.holding(session_id):
                pass  # an unknown or closed session fails here, before anything is reserved
        # Held by the user (release_resources by user_id frees them); the session lists them to release
        # them as it closes.
        allocations = self._wait_for(requester_id, requirements, ttl, timeout)
        ids = [a.allocation_id for a in allocations]
        with self._lock:
            self._persisted.update(ids)
        if session_id is not None:
            try:
                with self._sessions.holding(session_id) as live:
                    assert live is not None  # holding(id) yields an open session or raises
                    live.session.allocations.extend(ids)
            except OrchestrationError:  # the session closed while this waited for capacity: none kept
                for allocation_id in ids:
                    self._resources.release(allocation_id)
                raise
        for allocation in allocations:
            data = {**allocation.model_dump(mode="json"), "user_id": requester_id, "session_id": session_id}
            self._store.save_allocation(allocation.allocation_id, data)
        return allocations

    def _wait_for(
        self, requester: str, requirements: Mapping[str, Any], ttl: float | None, timeout: float | None
    ) -> list[Allocation]:
        if timeout is not None:
            return self._resources.allocate_resources(requester, requirements, ttl=ttl, timeout=timeout)
        while True:  # no limit: bounded rounds until capacity frees up
            started = time.monotonic()
            try:
                return self._resources.allocate_resources(
                    requester, requirements, ttl=ttl, timeout=ALLOCATION_ROUND
                )
            except InsufficientResourcesError:
                if time.monotonic() - started < ALLOCATION_ROUND:
                    raise  # refused at once (it can never be granted): waiting longer changes nothing

    def release(self, *, allocation_id: str | None, requester_id: str | None) -> int:
        if allocation_id is not None:
            return 1 if self._resources.release(allocation_id) else 0
        if requester_id is None:
            raise InvalidInputError("allocation_id", "give an allocation_id or a requester_id (user_id)")
        return self._resources.deallocate_resources(requester_id)

    def nothing_released(self, *, allocation_id: str | None, requester_id: str | None) -> str:
        """Why a release freed nothing, for the caller that asked: the release is idempotent (a repeat
        is no error), but an id or user that holds nothing may be a typo (a close one is named)."""
        from codomyrmex_orchestration._suggest import did_you_mean

        held = self._resources.get_allocations()
        if allocation_id is not None:
            hint = did_you_mean(allocation_id, [a.allocation_id for a in held])
            return (
                f"no allocation {allocation_id!r} is held{hint}: nothing was released (it was released "
                f"already, expired, or never existed; {len(held)} allocations are held now)"
            )
        hint = did_you_mean(str(requester_id), {a.requester_id for a in held})
        return f"user {requester_id!r} holds no allocation{hint}: nothing was released"

    def released(self, allocation_id: str) -> None:
        """The resource manager released ``allocation_id``: forget its stored copy, if any."""
        with self._lock:
            persisted = allocation_id in self._persisted
            self._persisted.discard(allocation_id)
        if persisted:
            self._store.delete_allocation(allocation_id)

    def restore(self) -> None:
        """Hold again the user allocations a previous process held (those not expired) under their own
        ids, creation times and expiries, so an id given out before a restart still releases them."""
        now = utcnow()
        for data in self._store.list_allocations():
            allocation_id = str(data.get("allocation_id"))
            try:
                allocation = Allocation.model_validate(data)
            except ValueError as exc:  # pydantic's ValidationError: a record this version cannot read
                self._drop(allocation_id, InvalidInputError("allocations", f"unreadable record: {exc}"))
                continue
            expired = allocation.expires_at is not None and allocation.expires_at <= now
            if expired or data.get("session_id"):  # a session does not outlive its process
                self._store.delete_allocation(allocation_id)
                continue
            with self._lock:  # before it is held: an expiry at once must find it persisted
                self._persisted.add(allocation_id)
            try:
                self._resources.restore(allocation)
            except OrchestrationError as exc:
                with self._lock:
                    self._persisted.discard(allocation_id)
                self._drop(allocation_id, exc)

    def _drop(self, allocation_id: str, exc: OrchestrationError) -> None:
        self._store.delete_allocation(allocation_id)
        self._counters.record_error("resources", exc)
        _log.warning("could not restore an allocation", allocation_id=allocation_id, error=str(exc))
