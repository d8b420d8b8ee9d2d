"""Sessions: the records, the registry of open and closed sessions, and their TTL expiry.

:class:`SessionRegistry` owns the table of open sessions (with the runs and tasks each has in flight),
the recently closed ones, and one TTL timer per open session on the shared
:class:`~codomyrmex_orchestration.core.timers.TimerService`; ``_lock`` guards all of it. An expired timer
hands the close to the registry's own one-thread executor (timer callbacks must not block): closing a
session cancels its work, which takes the locks of runs. A session never outlives its process: the next
process on the same store closes the ones left open (``recover``), and every id stays answerable from
the store.
"""

from __future__ import annotations

import enum
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codomyrmex_orchestration.core.models import TaskSpec, utcnow
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    SessionNotFoundError,
)

if TYPE_CHECKING:
    # Annotations only: the server's tool models import Session, and serving tools/list needs no store.
    from codomyrmex_orchestration.core.store import EngineStateStore
    from codomyrmex_orchestration.core.timers import Timer, TimerService

__all__ = [
    "ClosedSession",
    "LiveSession",
    "OrchestrationMode",
    "Session",
    "SessionRegistry",
    "SessionStatus",
    "new_session",
]

#: Closed sessions kept in memory (older ones are read back from the store).
CLOSED_KEPT = 10_000
#: The longest ``timeout_seconds`` a session may have, 365 days (as every TTL here; ``None``: never).
MAX_SESSION_TIMEOUT_SECONDS = 365 * 24 * 3600.0
#: The setting that moves the most sessions open at once, named by its refusal.
MAX_OPEN_SESSIONS_SETTING = "CODOMYRMEX_MAX_OPEN_SESSIONS"

#: Why a session closed, as its record says.
CLOSED_ON_REQUEST = "closed by close_session"
CLOSED_BY_RESTART = (
    "closed by a restart: a session does not outlive the server process that opened it "
    "(resume_workflow_run resumes its runs outside any session)"
)

#: ``stop_work(session, runs, tasks, cancel_running)``: the runs and tasks it cancelled.
StopWork = Callable[["Session", Collection[str], Collection[str], bool], tuple[list[str], list[str]]]


class OrchestrationMode(enum.StrEnum):
    """How a session's work is run.

    SEQUENTIAL: one workflow at a time, one step at a time: of the steps ready at once, the one of
    highest priority first (the run's ``max_parallel`` slots order them), then in the order they became
    ready.
    PARALLEL: steps run as their dependencies allow. PRIORITY: as PARALLEL; it names the original's
    "execute based on priority ordering", which the one scheduler does in every mode (a step's, a
    task's or a run's priority orders the queue; the mode changes nothing). RESOURCE_AWARE: every step
    is admitted by the ResourceManager (``{"compute": 1}`` when it declares nothing), and the session's
    own requirements are reserved while it is open.
    """

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    PRIORITY = "priority"
    RESOURCE_AWARE = "resource_aware"


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


class Session(BaseModel):
    """A unit of agent work with its own limits; its history outlives it."""

    model_config = ConfigDict(defer_build=True)  # built on first use: not needed to list the tools

    session_id: str
    user_id: str = "anonymous"
    name: str = ""
    description: str = ""
    mode: OrchestrationMode = OrchestrationMode.PARALLEL
    max_parallel_tasks: int = Field(default=10, ge=1, le=10_000)
    max_parallel_workflows: int = Field(default=5, ge=1, le=1_000)
    timeout_seconds: float | None = Field(default=3600.0, gt=0)
    resource_requirements: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: SessionStatus = SessionStatus.ACTIVE
    created_at: Any = Field(default_factory=utcnow)
    closed_at: Any = None
    #: Why it closed: on request, expired, or by a restart of the server.
    closed_reason: str | None = None
    runs: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    allocations: list[str] = Field(default_factory=list)


class ClosedSession(Session):
    """What closing a session answers: the session as closed, and what this close cancelled."""

    cancelled_runs: list[str] = Field(default_factory=list)
    cancelled_tasks: list[str] = Field(default_factory=list)
    #: Set when the session was closed already (or is open in another process): what this call did.
    note: str | None = None


class LiveSession:
    """An open session and the work it has in flight (guarded by the registry's lock)."""

    __slots__ = ("active_runs", "active_tasks", "armed", "session", "timer")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.active_runs: set[str] = set()
        self.active_tasks: set[str] = set()
        self.timer: Timer | None = None
        # Counts TTL arms: a timer that fired just as the TTL was restarted sees a newer count.
        self.armed = 0

    def run_options(self) -> dict[str, Any]:
        """What the session's mode asks of a new run (``start_workflow`` keywords).

        Raises:
            LimitExceededError: the session runs as many workflows as its mode allows.
        """
        session = self.session
        limit = 1 if session.mode is OrchestrationMode.SEQUENTIAL else session.max_parallel_workflows
        running = len(self.active_runs)
        if running >= limit:
            raise LimitExceededError(
                "session_id",
                limit,
                running + 1,
                "running workflows",
                reason=f"session {session.session_id} ({session.mode.value}) has "
                f"{_count(running, 'workflow')} running already; the limit is {limit}: start this one when "
                "one ends, or in another session",
            )
        if session.mode is OrchestrationMode.SEQUENTIAL:
            return {"max_parallel": 1}
        if session.mode is OrchestrationMode.RESOURCE_AWARE:
            return {"default_resources": {"compute": 1}}
        return {}  # PARALLEL and PRIORITY: priorities order the scheduler's queue in every mode

    def task_spec(self, spec: TaskSpec) -> TaskSpec:
        """``spec`` as the session's mode runs it.

        Raises:
            LimitExceededError: the session runs as many tasks as it may.
        """
        session = self.session
        running, limit = len(self.active_tasks), session.max_parallel_tasks
        if running >= limit:
            raise LimitExceededError(
                "session_id",
                limit,
                running + 1,
                "running tasks",
                reason=f"session {session.session_id} has {_count(running, 'task')} running or queued "
                f"already; the limit is {limit}: submit this one when one ends, or in another session",
            )
        if session.mode is OrchestrationMode.RESOURCE_AWARE and not spec.resources:
            return spec.model_copy(update={"resources": {"compute": 1}})
        return spec


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def new_session(
    *,
    user_id: str,
    name: str,
    description: str,
    mode: OrchestrationMode | str,
    max_parallel_tasks: int,
    max_parallel_workflows: int,
    timeout_seconds: float | None,
    resource_requirements: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
) -> Session:
    """A new open session with a fresh id.

    Raises:
        InvalidInputError: a limit, the timeout or the mode is out of range (named).
    """
    try:
        chosen = OrchestrationMode(mode)
    except ValueError:
        raise InvalidInputError(
            "mode", f"{mode!r} is not one of {', '.join(m.value for m in OrchestrationMode)}"
        ) from None
    try:
        session = Session(
            session_id=uuid.uuid4().hex,
            user_id=user_id,
            name=name,
            description=description,
            mode=chosen,
            max_parallel_tasks=max_parallel_tasks,
            max_parallel_workflows=max_parallel_workflows,
            timeout_seconds=timeout_seconds,
            resource_requirements=dict(resource_requirements or {}),
            metadata=dict(metadata or {}),
        )
    except ValidationError as exc:
        raise InvalidInputError.from_validation(exc) from None
    # Checked here, not by the model: records stored before this limit still load.
    if session.timeout_seconds is not None and not session.timeout_seconds <= MAX_SESSION_TIMEOUT_SECONDS:
        raise InvalidInputError(
            "timeout_seconds",
            f"{timeout_seconds!r} is out of range: a number of seconds above 0 and at most "
            f"{MAX_SESSION_TIMEOUT_SECONDS:.0f} (365 days), or none (null) for a session that never expires",
        )
    return session


class SessionRegistry:
    """Open and closed sessions, persisted in ``store``, expired ``timeout_seconds`` after their last use.

    Args:
        store: where sessions are saved (their history outlives the process).
        timers: the shared timer service (never closed here).
        stop_work: ``stop_work(session, runs, tasks, cancel_running)`` is called as a session closes,
            after it left the table (and again when a closed session is closed with ``cancel_running``):
            it releases the session's resources and, with ``cancel_running``, cancels those of ``runs``
            and ``tasks`` still running as the session's; it returns the ids it cancelled. For an
            expired session it runs on the registry's own thread and may block.
        on_closed: ``on_closed(session)`` once a session is closed (its event).
        max_open: most sessions open at once (``CODOMYRMEX_MAX_OPEN_SESSIONS``): past it ``add`` refuses.
    """

    def __init__(
        self,
        *,
        store: EngineStateStore,
        timers: TimerService,
        stop_work: StopWork,
        on_closed: Callable[[Session], None],
        max_open: int | None = None,
    ) -> None:
        self._store = store
        self.max_open = max_open
        self._timers = timers
        self._stop_work = stop_work
        self._on_closed = on_closed
        # _lock guards _live, _closed and _shut. Re-entrant: a run may end (and report it here) on the
        # thread that is starting it under holding().
        self._lock = threading.RLock()
        self._live: dict[str, LiveSession] = {}
        self._closed: dict[str, Session] = {}
        self._shut = False
        # Expiries are checked and carried out here, never on the shared timer thread: closing blocks on
        # run locks, and a caller may hold _lock across a run's start. Its thread starts with the first.
        self._expiry = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codomyrmex-sessions")

    # -- starting

    def recover(self) -> list[str]:
        """Close the sessions a previous process left open (a session does not outlive its process) and
        know the newest closed ones again; returns the ids closed. Only for the process that owns the
        store."""
        closed: list[str] = []
        for session in _parsed(self._store.list_sessions(status=SessionStatus.ACTIVE.value)):
            session.status = SessionStatus.CLOSED
            session.closed_at = utcnow()
            session.closed_reason = CLOSED_BY_RESTART
            self.save(session)
            closed.append(session.session_id)
        recent = _parsed(self._store.list_sessions(limit=CLOSED_KEPT))  # oldest first
        with self._lock:
            for session in recent:
                if session.status is not SessionStatus.ACTIVE and session.session_id not in self._live:
                    self._closed[session.session_id] = session
        return closed

    # -- reading

    def get(self, session_id: str) -> Session:
        """A copy of the session, open or closed (read back from the store when evicted).

        Raises:
            SessionNotFoundError: unknown id.
        """
        with self._lock:
            live = self._live.get(session_id)
            if live is not None:
                return live.session.model_copy(deep=True)
            closed = self._closed.get(session_id)
            if closed is not None:
                return closed.model_copy(deep=True)
        return self._stored(session_id)

    def list(self, status: SessionStatus | None = None) -> list[Session]:
        with self._lock:
            sessions = [live.session.model_copy(deep=True) for live in self._live.values()]
            sessions += [s.model_copy(deep=True) for s in self._closed.values()]
        if status is not None:
            sessions = [s for s in sessions if s.status == status]
        return sorted(sessions, key=lambda s: s.created_at)

    def active_count(self) -> int:
        with self._lock:
            return len(self._live)

    def count_by_status(self) -> dict[str, int]:
        """Sessions kept in memory by status value: counted, none copied (up to CLOSED_KEPT are closed,
        and a status report must not cost a copy of each)."""
        with self._lock:
            counts = Counter(live.session.status.value for live in self._live.values())
            counts.update(session.status.value for session in self._closed.values())
        return dict(counts)

    @property
    def alive(self) -> bool:
        """False once the registry is closed (no session expires any more)."""
        with self._lock:
            return not self._shut

    # -- open sessions

    def check_room(self) -> None:
        """Refuse a new session now if it could not be added (before anything is reserved for it).

        Raises:
            LimitExceededError: ``max_open`` sessions are open already, or the state directory's byte
                budget cannot be met (each naming its setting).
        """
        with self._lock:
            self._check_open_locked()
        self._store.check_budget()  # sessions count in the state's byte budget

    def _check_open_locked(self) -> None:
        if self.max_open is not None and len(self._live) >= self.max_open:
            raise LimitExceededError(
                MAX_OPEN_SESSIONS_SETTING,
                self.max_open,
                len(self._live) + 1,
                "open sessions",
                reason=f"{_count(len(self._live), 'session')} open already, the limit "
                f"({MAX_OPEN_SESSIONS_SETTING}) is {self.max_open}: close one you no longer need "
                "(close_session), or wait for one to expire",
            )

    def add(self, session: Session) -> None:
        """Register a new open session and arm its TTL.

        Raises:
            LimitExceededError: ``max_open`` sessions are open already (naming the setting).
        """
        live = LiveSession(session)
        with self._lock:
            self._check_open_locked()
            self._live[session.session_id] = live
            self._arm_locked(live)
        self.save(session)

    @contextmanager
    def holding(self, session_id: str | None) -> Iterator[LiveSession | None]:
        """Hold the registry's lock with the open session ``session_id`` (``None``: no session).

        Raises:
            SessionNotFoundError: unknown id.
            InvalidStateError: the session is closed or expired.
        """
        if session_id is None:  # no session, no lock: a call without one never waits on another's
            yield None
            return
        with self._lock:
            live = self._live.get(session_id)
            if live is not None:
                yield live
                return
            closed = self._closed.get(session_id)
        session = closed if closed is not None else self._stored(session_id)
        state = session.status.value
        if session.status is SessionStatus.ACTIVE:  # stored as open, not open here: another process's
            state = "open in another process"
        raise InvalidStateError("session", session_id, state, "open a new session with create_session")

    @contextmanager
    def holding_if_open(self, session_id: str | None) -> Iterator[LiveSession | None]:
        """Like :meth:`holding`, but ``None`` (no error) for a session not open in this process."""
        if session_id is None:
            yield None
            return
        with self._lock:
            yield self._live.get(session_id)

    def touch(self, live: LiveSession) -> None:
        """Restart the session's TTL (it was just used)."""
        with self._lock:
            self._arm_locked(live)

    def record_run(self, live: LiveSession, run_id: str, *, active: bool) -> None:
        """``live`` started (or resumed) run ``run_id`` (``active``: it has not ended yet); saved."""
        with self._lock:
            if active:
                live.active_runs.add(run_id)
            if run_id not in live.session.runs:  # a resumed run is listed once
                live.session.runs.append(run_id)
        self.save(live.session)

    def record_task(self, session_id: str, task_id: str, still_running: Callable[[], bool]) -> None:
        """Session ``session_id`` started task ``task_id``; saved (nothing if the session closed since)."""
        with self._lock:
            live = self._live.get(session_id)
            if live is None:
                return
            # Under the lock, so task_ended (which takes it) cannot slip in between the check and the add.
            if still_running():
                live.active_tasks.add(task_id)
            live.session.tasks.append(task_id)
        self.save(live.session)

    def run_ended(
        self, session_id: str, run_id: str, still_active: Callable[[str], bool] | None = None
    ) -> None:
        """Run ``run_id`` of the session ended. ``still_active(run_id)``, checked under the lock: the end
        of an earlier attempt of a run resumed since, which keeps its slot."""
        with self._lock:
            live = self._live.get(session_id)
            if live is not None and not (still_active is not None and still_active(run_id)):
                live.active_runs.discard(run_id)

    def task_ended(self, session_id: str, task_id: str) -> None:
        with self._lock:
            live = self._live.get(session_id)
            if live is not None:
                live.active_tasks.discard(task_id)

    def save(self, session: Session) -> None:
        self._store.save_session(session.session_id, session.model_dump(mode="json"))

    # -- closing

    def close_session(
        self, session_id: str, status: SessionStatus, *, cancel_running: bool, reason: str = CLOSED_ON_REQUEST
    ) -> ClosedSession:
        """Close an open session with ``status`` and ``reason`` and save it. A closed one (also one only
        the store knows) stays as it is; with ``cancel_running`` the work it still runs is cancelled.

        Raises:
            SessionNotFoundError: unknown id.
        """
        with self._lock:
            live = self._live.pop(session_id, None)
            if live is not None and live.timer is not None:
                live.timer.cancel()
                live.timer = None
            closed = self._closed.get(session_id) if live is None else None
        if live is None:
            return self._close_again(
                closed if closed is not None else self._stored(session_id), cancel_running
            )
        runs, tasks = self._stop_work(
            live.session, list(live.active_runs), list(live.active_tasks), cancel_running
        )
        session = live.session
        with self._lock:
            session.status = status
            session.closed_at = utcnow()
            session.closed_reason = reason
            self._closed[session_id] = session
            while len(self._closed) > CLOSED_KEPT:
                self._closed.pop(next(iter(self._closed)))
            copy = session.model_copy(deep=True)
        self.save(session)
        self._on_closed(copy)
        return ClosedSession(**copy.model_dump(), cancelled_runs=runs, cancelled_tasks=tasks)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop expiring sessions: cancel the TTL timers and wait for an expiry under way. Idempotent.

        ``timeout`` is accepted for symmetry with the other parts; an expiry under way is always
        waited for (it cancels work, which is bounded by the scheduler's own timeouts).
        """
        with self._lock:
            self._shut = True
            for live in self._live.values():
                if live.timer is not None:
                    live.timer.cancel()
                    live.timer = None
        self._expiry.shutdown(wait=True)

    # -- internals

    def _stored(self, session_id: str) -> Session:
        """A session no table here holds, read back from the store.

        Raises:
            SessionNotFoundError: unknown id.
        """
        data = self._store.get_session(session_id)
        if data is None:
            with self._lock:
                known = list(self._live)
            raise SessionNotFoundError(session_id, known=known)
        return Session.model_validate(data)

    def _close_again(self, session: Session, cancel_running: bool) -> ClosedSession:
        """Closing a session that is not open here: its record as it is, and with ``cancel_running`` the
        runs and tasks it lists that still run as its own are cancelled."""
        session = session.model_copy(deep=True)
        if session.status is SessionStatus.ACTIVE:  # in the store only: another process's to close
            note = "the session is open in another process on this state directory: close it there"
            return ClosedSession(**session.model_dump(), note=note)
        runs, tasks = (
            self._stop_work(session, session.runs, session.tasks, True) if cancel_running else ([], [])
        )
        note = f"the session was already {session.status.value} at {session.closed_at}"
        note += f"; {session.closed_reason}" if session.closed_reason else ""
        if runs or tasks:
            note += "; cancelled what it still ran: " + ", ".join(
                [f"run {r}" for r in runs] + [f"task {t}" for t in tasks]
            )
        elif cancel_running:
            note += "; nothing of it was still running"
        else:
            note += "; pass cancel_running: true to cancel any of its work still running"
        return ClosedSession(**session.model_dump(), cancelled_runs=runs, cancelled_tasks=tasks, note=note)

    def _arm_locked(self, live: LiveSession) -> None:
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        ttl = live.session.timeout_seconds
        if ttl is None or self._shut:
            return
        live.armed += 1
        session_id, armed = live.session.session_id, live.armed
        live.timer = self._timers.call_later(ttl, lambda: self._expire_due(session_id, armed))

    def _expire_due(self, session_id: str, armed: int) -> None:
        """On the timer thread: hand the session to the expiry thread, taking no lock here."""
        try:
            self._expiry.submit(self._expire, session_id, armed)
        except RuntimeError:
            return  # closed: expiries stopped

    def _expire(self, session_id: str, armed: int) -> None:
        with self._lock:
            live = self._live.get(session_id)
            if self._shut or live is None or live.armed != armed:
                return  # closed, touched again (re-armed) or shut down meanwhile
            ttl = live.session.timeout_seconds
        try:
            reason = f"expired: unused for {ttl:g} s, its timeout_seconds"
            self.close_session(session_id, SessionStatus.EXPIRED, cancel_running=True, reason=reason)
        except SessionNotFoundError:
            return  # closed meanwhile


def _parsed(rows: list[dict[str, Any]]) -> list[Session]:
    """The sessions of stored rows; a row that no longer parses is skipped (it never stops a start)."""
    sessions = []
    for data in rows:
        try:
            sessions.append(Session.model_validate(data))
        except ValidationError:
            continue
    return sessions
