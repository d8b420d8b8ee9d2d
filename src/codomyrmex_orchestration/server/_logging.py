"""The MCP ``logging`` capability: which level each run and step event is logged at, and what the
``notifications/message`` a client receives for it says. Holds no state (the hub keeps each client's level).
"""

from __future__ import annotations

from typing import Any, Final, get_args

from mcp_types import LoggingLevel

__all__ = ["LEVELS", "LOGGER", "RUN_ENDS", "at_least", "message_for"]

LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)
"""RFC 5424 severities, least severe first (the order ``LoggingLevel`` declares them in)."""

LOGGER: Final = "codomyrmex.runs"
"""The ``logger`` field of every message: clients can tell run events from anything else."""

RUN_ENDS: Final = frozenset({"run.completed", "run.failed", "run.cancelled"})

# A step starting is detail (debug); outcomes are info, a retry or a cancelled run a warning, a failure an
# error. ``step.failed`` of a step that is not required does not fail the run, but the client asked about
# steps too: it stays an error, and the run's own outcome follows.
_EVENT_LEVELS: Final[dict[str, LoggingLevel]] = {
    "run.started": "info",
    "run.completed": "notice",
    "run.failed": "error",
    "run.cancelled": "warning",
    "run.waiting_for_input": "notice",  # a person must answer (elicitation or respond_to_run)
    "run.input_received": "info",
    "step.started": "debug",
    "step.retried": "warning",
    "step.completed": "info",
    "step.skipped": "info",
    "step.failed": "error",
    "step.cancelled": "warning",
    "step.timed_out": "error",
}


def at_least(level: LoggingLevel, minimum: LoggingLevel) -> bool:
    """True when ``level`` is ``minimum`` or more severe."""
    return LEVELS.index(level) >= LEVELS.index(minimum)


def message_for(event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ``notifications/message`` params for a run or step event, or ``None`` for other events.

    ``data`` is the event's payload with the event name added: a JSON object a client (or a model) can
    read without parsing text.
    """
    level = _EVENT_LEVELS.get(event)
    if level is None:
        if not event.startswith(("run.", "step.")):
            return None
        level = "info"  # an event this table does not know yet still reaches the client
    return {"level": level, "logger": LOGGER, "data": {"event": event, **payload}}
