"""The engine's counters: events by kind, recent step latencies and errors per component.

:class:`EngineCounters` is their one owner. Worker threads, the event thread and callers of the
health and metrics reports all go through it; ``_lock`` guards every field, and readers get copies.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["CountersSnapshot", "EngineCounters"]

#: Step latencies kept for the percentiles (the most recent ones).
LATENCY_WINDOW = 10_000


@dataclass(frozen=True)
class CountersSnapshot:
    """A consistent copy of the counters at one moment."""

    step_events: dict[str, int]
    run_events: dict[str, int]
    step_durations: tuple[float, ...]
    errors: dict[str, int]
    last_errors: dict[str, str]


class EngineCounters:
    """Counts events (``step.*`` by status, ``run.*`` but ``run.started``), step durations and errors."""

    def __init__(self, *, latency_window: int = LATENCY_WINDOW) -> None:
        # _lock guards every field below.
        self._lock = threading.Lock()
        self._step_events: Counter[str] = Counter()
        self._run_events: Counter[str] = Counter()
        self._step_durations: deque[float] = deque(maxlen=latency_window)
        self._errors: Counter[str] = Counter()
        self._last_errors: dict[str, str] = {}

    def count_event(self, event: str, *, cached: bool = False) -> None:
        """Count ``event`` if it is one the metrics report (steps by status, runs that ended).

        A step served from the step cache (``cached``) never started: its ``step.completed`` counts as
        ``cached``, so ``completed`` counts only steps that ``started`` (a map step once, not per item).
        """
        if event.startswith("step."):
            kind = "cached" if cached and event == "step.completed" else event.removeprefix("step.")
            with self._lock:
                self._step_events[kind] += 1
        elif event.startswith("run.") and event != "run.started":
            with self._lock:
                self._run_events[event] += 1

    def add_step_duration(self, seconds: float) -> None:
        with self._lock:
            self._step_durations.append(seconds)

    def record_error(self, component: str, exc: BaseException | str) -> None:
        message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._errors[component] += 1
            self._last_errors[component] = message

    def errors(self, component: str) -> tuple[int, str | None]:
        """How many errors ``component`` had and the last one's message."""
        with self._lock:
            return self._errors.get(component, 0), self._last_errors.get(component)

    def snapshot(self) -> CountersSnapshot:
        with self._lock:
            return CountersSnapshot(
                step_events=dict(self._step_events),
                run_events=dict(self._run_events),
                step_durations=tuple(self._step_durations),
                errors=dict(self._errors),
                last_errors=dict(self._last_errors),
            )
