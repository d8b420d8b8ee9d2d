"""Logging: structlog to stderr (never stdout, which is the stdio protocol), console or JSON.

structlog is imported on first use, not with this module: the CLI imports it first without rich (see
:func:`import_structlog_plain`), and whichever of our modules uses it first points an unconfigured structlog
at stderr (:func:`ensure_stderr_default`). State: the lock ordering that check with structlog's global
configuration.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from codomyrmex_orchestration._redact import redact, redact_text

__all__ = ["announce", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the moment of writing.

    Binding the object that was ``sys.stderr`` at configuration time breaks when it is replaced and
    closed later (test capture, a daemon redirecting its streams): logging would then raise on a
    closed file instead of writing.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR: Any = _Stderr()


def configure_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Send structlog (and stdlib logging, every library's loggers included) to ``stream`` (default
    stderr) at ``level``.

    Level filtering happens in the bound logger before any formatting, so debug calls on the hot
    path cost a method call and nothing more.
    """
    import structlog

    numeric = _LEVELS.get(level.lower(), logging.INFO)
    out = stream if stream is not None else _STDERR
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries using stdlib logging (mcp, uvicorn, httpx) must not write to stdout either.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(out)
    formatter: logging.Formatter
    if fmt == "json":  # every line one JSON object, as a log collector parses it: the same chain as ours
        formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_event,
                renderer,
            ],
        )
    else:
        formatter = _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    # On the handler as well as the root: a library that sets its own loggers' levels (distributed sets
    # its to info from dask's config, whatever ours is) would otherwise reach it through propagation.
    handler.setLevel(numeric)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.INFO) if numeric > logging.DEBUG else numeric)


def announce(event: str, text: str, fmt: str = "console") -> None:
    """Show ``text`` to the person starting the server on stderr, whatever the log level: as it is on a
    console; with ``fmt`` json as one JSON object (``event``, ``level`` info, ``timestamp``, ``text``), so
    that every line a log collector reads parses, the banner's too."""
    if fmt == "json":
        import json
        from datetime import UTC, datetime

        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = {"event": event, "level": "info", "timestamp": stamp, "text": text}
        text = json.dumps(line, ensure_ascii=False)
    _STDERR.write(text + "\n")
    _STDERR.flush()


def _redact_event(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: no secret value reaches a log line (see ``_redact``)."""
    redacted: Mapping[str, Any] = redact(event_dict)
    return redacted


#: Most characters of a library's log message kept (mcp, uvicorn, httpx): some quote what a client sent,
#: such as the Host or Origin header the SDK refuses (up to ~16 KB, from clients that need no token).
MAX_LIBRARY_MESSAGE = 500


class _RedactingFormatter(logging.Formatter):
    """The stdlib side (mcp, uvicorn, httpx): formatted lines are redacted too, and a message longer than
    :data:`MAX_LIBRARY_MESSAGE` is cut (a traceback that follows it is kept whole)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if len(message) > MAX_LIBRARY_MESSAGE:
            message = redact_text(message)  # before the cut: a secret cut in two is no longer recognised
            if len(message) > MAX_LIBRARY_MESSAGE:
                cut = len(message) - MAX_LIBRARY_MESSAGE
                record = logging.makeLogRecord(record.__dict__)  # other handlers keep the whole message
                record.message = f"{message[:MAX_LIBRARY_MESSAGE]}... ({cut} more characters)"
        return super().formatMessage(record)


def get_logger(name: str = "codomyrmex_orchestration", **bindings: Any) -> Any:
    """A structlog logger bound to ``name`` and ``bindings``.

    A lazy proxy: binding now (at import) would freeze the configuration of that moment, so a later
    :func:`configure_logging` (``--log-level``) would not apply to module-level loggers. An unconfigured
    structlog is pointed at stderr first (a logger used before that would write to stdout, the wire).
    """
    import structlog

    ensure_stderr_default()
    return structlog.get_logger(name, **bindings)


#: Orders the check of structlog's global configuration with the configuring in ensure_stderr_default
#: (two threads binding their first loggers at once must not both find it unconfigured).
_default_lock = threading.Lock()


def ensure_stderr_default() -> None:
    """Point an unconfigured structlog at stderr: its own default is stdout, the stdio wire.

    Called by :func:`get_logger` and by ``core/__init__`` (the core's modules use structlog directly),
    so it has run before any logger of the package writes.
    """
    import structlog

    with _default_lock:
        if not structlog.is_configured():
            defaults = structlog.get_config()["processors"]
            structlog.configure(
                # structlog's own chain, with no secret value reaching the renderer (see _redact_event)
                processors=[*defaults[:-1], _redact_event, defaults[-1]],
                wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                logger_factory=structlog.PrintLoggerFactory(file=_STDERR),
            )


def import_structlog_plain() -> None:
    """Import structlog without rich, for a process of ours that configures logging (the CLI).

    Importing structlog imports rich when it is installed (and through it pygments and attrs), ~0.05x
    of a cold server's start (issue 23), for rich tracebacks: :func:`configure_logging`'s chain never
    uses them (``format_exc_info`` turns an exception into plain text before the renderer). Only for
    the CLI's own process, at its start: a program importing the package keeps structlog as installed.
    Does nothing when structlog or rich is imported already. Not thread-safe: rich is unimportable
    while it runs, so it is called once, before the process starts threads.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's documented "absent"
    try:
        import structlog  # noqa: F401  # imported here, without rich, for every later user
    finally:
        del sys.modules["rich"]
