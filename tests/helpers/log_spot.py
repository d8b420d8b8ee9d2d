"""Log lines captured as structlog emits them, with an event set when a given one is logged."""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.testing import LogCapture, capture_logs


class LogSpot(LogCapture):
    """Every line logged (``entries``); ``seen`` is set once a line whose event is ``name`` is logged."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen = threading.Event()

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        try:
            return super().__call__(logger, method_name, event_dict)
        finally:
            if event_dict.get("event") == self.name:
                self.seen.set()

    def named(self, event: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.entries if e["event"] == event]


@contextmanager
def spot_log(name: str) -> Iterator[LogSpot]:
    """Capture the log lines (as ``capture_logs`` does, restoring the configuration after)."""
    spot = LogSpot(name)
    with capture_logs():
        processors = structlog.get_config()["processors"]
        processors[:] = [spot]
        structlog.configure(processors=processors)
        yield spot
