"""The Dask backend's connection to its scheduler: the client, and a new one when the old one gave up.

A client that loses its scheduler tries to reconnect for Dask's connect timeout, then closes for good;
a later ``submit`` raised ``ClosedClientError`` on the client's event loop and the step waited forever.
:class:`Connection` hands each step the client's current :class:`Channel`; for a scheduler address whose
client has closed it first makes a new client (a scheduler restarted at the address is used again), and
when none answers the step fails at once with :func:`unreachable`, naming the setting.

State: ``_lock`` guards ``_channel`` and ``_attempts``; ``_reconnect_lock`` lets one thread at a time
try to reconnect (threads that waited for it use its result). Replacement clients share ``_loop``, a
loop runner of the connection's own, so a client that closed itself leaves no thread behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import structlog
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster
from distributed.security import Security
from distributed.utils import LoopRunner

from codomyrmex_orchestration.core.backends._dask_results import ResultCollector
from codomyrmex_orchestration.core.backends._dask_submit import SubmitBatcher
from codomyrmex_orchestration.errors import InvalidInputError, StepFailedError

__all__ = ["Channel", "Connection", "cluster_security", "connect", "unreachable"]

_log = structlog.get_logger("codomyrmex_orchestration.backends.dask")

#: A client in these states sends nothing more (closing: it gave up reconnecting, or we close it).
_GONE = frozenset({"closing", "closed"})

#: Longest wait for a scheduler when reconnecting (a step waits for it; Dask's default is 30 s).
RECONNECT_TIMEOUT = 5.0


class _StartedClient(Client):
    """A client that closes itself when it cannot start (an unusable address, no scheduler there).

    Left half-built, its ``__del__`` closes it later on whatever thread the garbage collector runs: in
    the server that was the event loop's thread, which then waited on the client's own loop for a
    minute per client and kept the server alive after its client closed stdin.
    """

    def start(self, **kwargs: Any) -> None:
        try:
            super().start(**kwargs)
        except BaseException:
            try:
                self.close(timeout=5)
            except Exception as exc:  # the start error is the one to report
                _log.warning("dask.client_close_failed", error=str(exc))
            raise


def connect(target: str | LocalCluster, timeout: float | None, loop: Any = None) -> Client:
    """A started client of ``target`` (``timeout`` None: Dask's configured connect timeout).

    Raises:
        InvalidInputError: ``target`` is an address that is malformed or where no scheduler answers
            within ``timeout`` seconds (field ``dask_scheduler``).
    """
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    if loop is not None:
        kwargs["loop"] = loop
    if isinstance(target, str) and target.startswith(("tls://", "wss://")):
        _check_tls_settings(target)
    try:
        return _StartedClient(target, **kwargs)
    except TypeError as exc:  # a transport Dask knows but cannot use here (ucx:// without ucx-py)
        if not isinstance(target, str):
            raise
        raise InvalidInputError(
            "dask_scheduler",
            f"cannot use the Dask scheduler address {target!r} ({exc}); give tcp://host:port (or "
            "tls://host:port with Dask's TLS settings)",
        ) from None
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        if not isinstance(target, str):
            raise
        raise InvalidInputError(
            "dask_scheduler",
            f"cannot connect to a Dask scheduler at {target!r} ({exc}); give the address of a running "
            "scheduler, tcp://host:port, or leave the setting unset to start a cluster on this machine",
        ) from None


def _check_tls_settings(address: str) -> None:
    """A TLS scheduler needs a certificate authority to trust and a client certificate from Dask's own
    configuration (Security() reads it); without them Dask failed with a bare TypeError.

    Raises:
        InvalidInputError: they are not configured (field ``dask_scheduler``).
    """
    security = Security()
    missing = [
        variable
        for variable, value in (
            ("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", getattr(security, "tls_ca_file", None)),
            ("DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", getattr(security, "tls_client_cert", None)),
        )
        if not value
    ]
    if missing:
        raise InvalidInputError(
            "dask_scheduler",
            f"{address!r} is a TLS address, but Dask's TLS settings for this client are not configured: "
            f"set {' and '.join(missing)} (and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY if the key is not in "
            "the certificate file), or give a tcp:// address",
        )


def cluster_security(processes: bool) -> Security | None:
    """What keeps the LocalCluster we start to ourselves: anyone who can talk to a Dask scheduler or
    worker runs code as its workers, and plain ``tcp://`` on 127.0.0.1 admits every local process.

    Worker processes talk over TLS with a certificate made here, in memory, that every party must present
    (mutual authentication): a process without it cannot connect. Thread workers need no ports at all:
    Dask then uses its in-process transport (``inproc://``), and ``None`` keeps that.

    Raises:
        InvalidInputError: ``cryptography`` (which makes the certificate) is not installed.
    """
    if not processes:
        return None
    try:
        security: Security = Security.temporary()
    except ImportError:
        raise InvalidInputError(
            "executor",
            "the Dask cluster started on this machine is secured with TLS, which needs cryptography: "
            "pip install 'codomyrmex-orchestration[dask]'",
        ) from None
    return security


def unreachable(step: str, address: str | None, why: object) -> StepFailedError:
    """The failure of a step that the scheduler never answered for (connection lost, client closed)."""
    where = f"the Dask scheduler at {address!r}" if address else "the Dask scheduler"
    return StepFailedError(
        step,
        f"{where} cannot be reached ({why}), so the step did not run to its end there; start the "
        "scheduler at that address again (the next step reconnects) or set CODOMYRMEX_DASK_SCHEDULER "
        "to one that runs",
        error_type="DaskSchedulerUnreachable",
    )


@dataclass(frozen=True, slots=True)
class Channel:
    """One client and what submits to it and collects from it."""

    client: Client
    submitter: SubmitBatcher
    results: ResultCollector

    @classmethod
    def over(cls, client: Client) -> Channel:
        results = ResultCollector(client)
        return cls(client, SubmitBatcher(client, results), results)


class Connection:
    """The backend's current :class:`Channel`, renewed for ``address`` when its client has closed.

    Args:
        client: the started client.
        address: the scheduler address to reconnect to (``None``: a LocalCluster's or a caller's client,
            never replaced).
        loop: the loop runner replacement clients share (closed by :meth:`close`), or ``None``.
        prepare: called with every new client before it is used (registers the worker plugin).
        connect_timeout: the configured connect timeout (``None``: Dask's); a reconnection waits at
            most :data:`RECONNECT_TIMEOUT` of it.
    """

    def __init__(
        self,
        client: Client,
        *,
        address: str | None,
        loop: LoopRunner | None,
        prepare: Callable[[Client], None],
        connect_timeout: float | None,
    ) -> None:
        self.address = address
        self._loop = loop
        self._prepare = prepare
        if connect_timeout is None:
            connect_timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
        self._reconnect_timeout = min(float(connect_timeout or RECONNECT_TIMEOUT), RECONNECT_TIMEOUT)
        self._lock = threading.Lock()
        self._channel = Channel.over(client)
        self._attempts = 0
        self._reconnect_lock = threading.Lock()
        self._last_failure = ""

    @property
    def client(self) -> Client:
        with self._lock:
            return self._channel.client

    def channel(self, step: str) -> Channel:
        """The channel to send ``step`` through, after reconnecting if the client has closed.

        Raises:
            StepFailedError: the client is closed and no scheduler answers (see :func:`unreachable`).
        """
        with self._lock:
            current, seen = self._channel, self._attempts
        if current.client.status not in _GONE:  # running, or reconnecting by itself (Dask buffers)
            return current
        if self.address is None:
            raise unreachable(step, None, "its client is closed")
        with self._reconnect_lock:
            with self._lock:
                current, attempted = self._channel, self._attempts != seen
            if current.client.status not in _GONE:
                return current
            if attempted:  # another step tried while this one waited: the same answer
                raise unreachable(step, self.address, self._last_failure)
            with self._lock:
                self._attempts += 1
            try:
                client = connect(self.address, self._reconnect_timeout, self._loop_of())
            except InvalidInputError:
                self._last_failure = f"no answer within {self._reconnect_timeout:g} s"
                raise unreachable(step, self.address, self._last_failure) from None
            try:
                self._prepare(client)
            except BaseException:
                client.close(timeout=5)
                raise
            fresh = Channel.over(client)
            with self._lock:
                self._channel = fresh
        current.results.close()
        _log.info("dask.reconnected", scheduler=self.address)
        return fresh

    def _loop_of(self) -> Any:
        return None if self._loop is None else self._loop.loop

    def close(self, owns_client: bool) -> None:
        """Stop collecting results; close the client if ``owns_client``, then the shared loop."""
        with self._lock:
            current = self._channel
        current.results.close()
        if owns_client:
            current.client.close(timeout=10)
        if self._loop is not None:
            self._loop.stop()
