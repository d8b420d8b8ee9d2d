"""The serving process's engine started as soon as the server listens, and its health verdict kept
current off the request path (``/healthz``, ``server.json``).

The engine is built lazily so that ``initialize`` and ``tools/list`` never wait for it (the cold-start
target, docs/PERFORMANCE.md); this watch builds it in the background right after the transport listens,
so recovery runs at start and a state directory that cannot be used (a file that is not an SQLite
database, a schema newer than the program) stops the server at once, not at the first tool call. Then
it checks the engine's health every ``interval`` seconds, in its own thread: the checks write a probe
row and may wait for a lock another process holds, which ``/healthz`` must never do.

State owned: the verdict (``_verdict``, guarded by ``_lock``), the one thread that builds and then
checks, and the start-up error that stops the server (``fatal``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from codomyrmex_orchestration.errors import StateStoreError
from codomyrmex_orchestration.logs import get_logger
from codomyrmex_orchestration.server._server_record import ServerRecord

if TYPE_CHECKING:
    from codomyrmex_orchestration.core._health import HealthReport
    from codomyrmex_orchestration.server.tools import OrchestrationMCPTools

__all__ = ["HEALTH_INTERVAL", "HealthWatch"]

#: Seconds between two health checks of a serving engine (each writes and reads back a probe row).
HEALTH_INTERVAL = 15.0

log = get_logger("codomyrmex_orchestration.server")


class HealthWatch:
    """Builds ``tools``' engine in a background thread, then keeps its health verdict.

    Args:
        tools: the server's tools (their lazy ``engine`` is what is built).
        record: where the verdict is published when it changes (``None``: nowhere).
        interval: seconds between health checks.
    """

    def __init__(
        self,
        tools: OrchestrationMCPTools,
        *,
        record: ServerRecord | None = None,
        interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._tools = tools
        self._record = record
        self._interval = interval
        self._lock = threading.Lock()
        self._verdict: dict[str, Any] = {"status": "starting", "issues": []}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The start-up error that stopped the server (set before ``on_fatal`` is called).
        self.fatal: StateStoreError | None = None

    def start(self, on_fatal: Callable[[], None]) -> None:
        """Start building the engine (once); ``on_fatal`` stops the transport if its state cannot be used."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(on_fatal,), name="codomyrmex-engine-start", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop checking; waits for a build under way (bounded by the store's own timeouts), so the
        server shuts down an engine that is whole."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def verdict(self) -> dict[str, Any]:
        """``{"status": "starting"|"healthy"|"degraded"|"unhealthy", "issues": [...], "checked_at"}``
        as last checked: never blocks on the engine."""
        with self._lock:
            return {**self._verdict, "issues": list(self._verdict["issues"])}

    def observe(self, report: HealthReport) -> None:
        """Adopt a fresh report (the checks here, or a ``get_health_status`` call)."""
        self._set(report.overall_status, list(report.issues))

    def _set(self, status: str, issues: list[str], *, logged: bool = False) -> None:
        with self._lock:
            old = self._verdict
            changed = (old["status"], old["issues"]) != (status, issues)
            self._verdict = {"status": status, "issues": issues, "checked_at": round(time.time(), 3)}
            verdict = dict(self._verdict)
        if not changed:
            return  # published once per change, never per check
        if logged:
            pass  # said already, in the caller's own words
        elif status == "healthy":
            log.info("server.health", status=status)
        else:
            log.warning("server.health", status=status, issues=issues)
        if self._record is not None:
            self._record.update(health=verdict)

    def _run(self, on_fatal: Callable[[], None]) -> None:
        try:
            self._tools.engine  # noqa: B018  # the lazy build is the point: recovery runs now
        except StateStoreError as exc:
            self.fatal = exc
            # The store's message says what is wrong and what to do (move the file away, ...).
            log.error(
                "server.start_failed",
                error=str(exc),
                action="the server stops (exit 2); or give it another state directory (--state-dir)",
            )
            self._set("unhealthy", [f"store: {exc}"], logged=True)
            on_fatal()
            return
        except Exception as exc:  # e.g. no Dask scheduler answers: each tool call builds again and says why
            self._set("unhealthy", [f"engine: {exc}"], logged=True)  # published before it is logged
            log.error("server.engine_failed", error=f"{type(exc).__name__}: {exc}")
        while not self._stop.is_set():
            if self._tools.engine_started:
                self.observe(self._tools.engine.health_check())
            self._stop.wait(self._interval)
