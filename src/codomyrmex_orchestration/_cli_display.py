"""What the CLI shows while a run goes on and how it lays out tables.

Three displays share one interface, fed from the engine's ``on_step`` callback (worker threads):
:class:`LiveDisplay` (a terminal: a rich table of steps and a progress bar, redrawn in place),
:class:`PlainDisplay` (not a terminal: one line per step transition) and :class:`SilentDisplay`
(``--json``: nothing until the final record).
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from codomyrmex_orchestration.core.models import RunRecord, StepResult, TaskStatus, utcnow

__all__ = [
    "LiveDisplay",
    "PlainDisplay",
    "RunDisplay",
    "SilentDisplay",
    "preview",
    "print_table",
    "step_detail",
]

#: Frames drawn per second by rich's own thread (transitions never draw).
_REFRESH_PER_SECOND = 8
#: Up to this many steps the live table lists every step; a bigger run shows a bounded selection.
_FULL_TABLE_STEPS = 20
_RUNNING_ROWS = 10
_FAILED_ROWS = 5
_RECENT_ROWS = 5
_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMED_OUT})

_STYLES = {
    TaskStatus.PENDING: "dim",
    TaskStatus.READY: "dim",
    TaskStatus.BLOCKED: "dim",
    TaskStatus.RUNNING: "yellow",
    TaskStatus.COMPLETED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.TIMED_OUT: "bold red",
    TaskStatus.CANCELLED: "magenta",
    TaskStatus.SKIPPED: "cyan",
}


def preview(value: Any, width: int = 60) -> str:
    """``value`` as one short line of JSON (for tables)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def step_detail(step: StepResult, width: int = 60) -> str:
    """The error, the reason it was skipped or cancelled, or a preview of the output."""
    if step.error is not None:
        return preview(f"{step.error.type}: {step.error.message}", width)
    if step.skipped_reason:
        return preview(step.skipped_reason, width)
    if step.status is TaskStatus.COMPLETED and step.output is not None:
        return preview(step.output, width)
    return ""


def _duration(step: StepResult, now: datetime | None = None) -> str:
    if step.duration_seconds is not None:
        return f"{step.duration_seconds:.2f}s"
    if step.status is TaskStatus.RUNNING and step.started_at is not None:
        return f"{((now or utcnow()) - step.started_at).total_seconds():.1f}s"
    return "-"


def print_table(
    console: Console,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    styles: Mapping[int, Mapping[str, str]] | None = None,
) -> None:
    """A rich table on a terminal; aligned plain columns (never truncated) when piped."""
    rows = [list(r) for r in rows]
    if console.is_terminal:
        table = Table(title=title, title_justify="left", header_style="bold")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            cells: list[RenderableType] = []
            for index, cell in enumerate(row):
                style = (styles or {}).get(index, {}).get(cell, "")
                cells.append(Text(cell, style=style))
            table.add_row(*cells)
        console.print(table)
        return
    if title:
        console.out(title, highlight=False)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    for row in [list(headers), *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        console.out(line, highlight=False)


class RunDisplay:
    """Receives step transitions (from any thread) and shows them.

    Transitions that arrive before :meth:`start` (the run id is known only once the run has started)
    are kept and shown, in order, when it is called.
    """

    def __init__(self, steps: Mapping[str, StepResult]) -> None:
        self._lock = threading.Lock()
        self.steps: dict[str, StepResult] = {n: s.model_copy() for n, s in steps.items()}
        self.run_id: str | None = None
        self.workflow_name: str | None = None
        self._started = False
        self._backlog: list[StepResult] = []

    def start(self, run_id: str, workflow_name: str) -> None:
        with self._lock:
            self.run_id = run_id
            self.workflow_name = workflow_name
            self._started = True
            self._begin_locked()
            for step in self._backlog:
                self._emit_locked(step)
            self._backlog.clear()
        self._after()

    def on_step(self, record: RunRecord, step: StepResult) -> None:
        copy = step.model_copy()
        with self._lock:
            self._track_locked(self.steps.get(step.name), copy)
            self.steps[step.name] = copy
            if not self._started:
                self._backlog.append(copy)
                return
            self._emit_locked(copy)
        self._after()

    def _track_locked(self, previous: StepResult | None, step: StepResult) -> None:
        """A step's new state, before it replaces ``previous`` (under the lock; must cost O(1))."""

    def _begin_locked(self) -> None:
        """The run started (under the lock)."""

    def _emit_locked(self, step: StepResult) -> None:
        """One transition, in order (under the lock)."""

    def _after(self) -> None:
        """After a transition, outside the lock."""

    def note(self, message: str) -> None:
        """A message for the person at the terminal (stderr), from the main thread."""

    def stop(self) -> None:
        """The run is over (or abandoned): stop redrawing."""


class SilentDisplay(RunDisplay):
    """``--json``: stdout is kept for the final record only."""

    def __init__(self, steps: Mapping[str, StepResult], err: TextIO) -> None:
        super().__init__(steps)
        self._err = err

    def note(self, message: str) -> None:
        self._err.write(message + "\n")
        self._err.flush()


class PlainDisplay(RunDisplay):
    """One line per step transition, for logs and pipes."""

    def __init__(self, steps: Mapping[str, StepResult], out: TextIO, err: TextIO) -> None:
        super().__init__(steps)
        self._out = out
        self._err = err
        self._width = max((len(n) for n in steps), default=8)

    def _begin_locked(self) -> None:
        self._out.write(f"run {self.run_id} of {self.workflow_name}: {len(self.steps)} steps\n")
        self._out.flush()

    def _emit_locked(self, step: StepResult) -> None:
        stamp = utcnow().astimezone().strftime("%H:%M:%S")
        parts = [stamp, step.name.ljust(self._width), step.status.value.ljust(9), f"attempt {step.attempts}"]
        if step.status.is_terminal:
            parts.append(_duration(step))
        detail = step_detail(step, 100) if step.status is not TaskStatus.COMPLETED else ""
        if detail:
            parts.append(detail)
        self._out.write("  ".join(parts) + "\n")
        self._out.flush()

    def note(self, message: str) -> None:
        self._err.write(message + "\n")
        self._err.flush()


class LiveDisplay(RunDisplay):
    """A terminal: the step table and an overall bar, redrawn in place by rich ``Live``.

    A transition only records the change (O(1), on the engine's worker thread); rich redraws
    ``_REFRESH_PER_SECOND`` times a second on its own thread, so a run of thousands of steps is never
    slowed by its display. Up to ``_FULL_TABLE_STEPS`` steps the table lists them all; a bigger run
    shows its counts and a bounded selection (running, failed, the last few finished), so drawing a
    frame costs the same whatever the run's size.
    """

    def __init__(self, steps: Mapping[str, StepResult], console: Console) -> None:
        super().__init__(steps)
        self.console = console
        self._began = utcnow()
        self._counts: Counter[TaskStatus] = Counter(s.status for s in self.steps.values())
        # Insertion-ordered sets of names (dicts), kept up to date by _track_locked.
        self._running: dict[str, None] = {}
        self._failed: dict[str, None] = {}
        self._recent: deque[str] = deque(maxlen=_RECENT_ROWS)
        self._live = Live(
            console=console,
            get_renderable=self._render,
            auto_refresh=True,
            refresh_per_second=_REFRESH_PER_SECOND,
            redirect_stderr=True,
            redirect_stdout=True,
        )

    def start(self, run_id: str, workflow_name: str) -> None:
        self._began = utcnow()
        self._live.start()
        super().start(run_id, workflow_name)

    def _track_locked(self, previous: StepResult | None, step: StepResult) -> None:
        if previous is not None:
            self._counts[previous.status] -= 1
        self._counts[step.status] += 1
        name = step.name
        self._running.pop(name, None)
        self._failed.pop(name, None)
        if step.status is TaskStatus.RUNNING:
            self._running[name] = None
        elif step.status in _FAILED:
            self._failed[name] = None
        if step.status.is_terminal:
            self._recent.append(name)

    def note(self, message: str) -> None:
        self.console.print(Text(message, style="bold"), highlight=False)

    def stop(self) -> None:
        if self._live.is_started:
            self._live.refresh()  # the final frame: every transition so far
            self._live.stop()

    def _render(self) -> RenderableType:
        now = utcnow()
        with self._lock:
            total = len(self.steps)
            if total <= _FULL_TABLE_STEPS:
                shown, hidden = list(self.steps.values()), 0
            else:
                shown = self._selection_locked()
                hidden = total - len(shown)
            done = sum(n for status, n in self._counts.items() if status.is_terminal)
            failed = sum(self._counts[status] for status in _FAILED)
            counts = {status: n for status, n in self._counts.items() if n}
        title = f"run {self.run_id or '?'} of {self.workflow_name or '?'}"
        table = Table(title=title, title_justify="left", header_style="bold", expand=False)
        # The detail gives way first: names, statuses and numbers are never cut.
        table.add_column("Step", no_wrap=True)
        table.add_column("Status", no_wrap=True, min_width=9)
        table.add_column("Attempt", justify="right", no_wrap=True)
        table.add_column("Duration", justify="right", no_wrap=True)
        table.add_column("Detail", overflow="ellipsis", no_wrap=True, max_width=48)
        for step in shown:
            table.add_row(
                step.name,
                Text(step.status.value, style=_STYLES.get(step.status, "")),
                str(step.attempts or "-"),
                _duration(step, now),
                step_detail(step, 48),
            )
        if hidden:
            table.caption = f"{hidden} more steps; all: " + ", ".join(
                f"{n} {status.value}" for status, n in counts.items()
            )
            table.caption_justify = "left"
        bar = ProgressBar(total=max(total, 1), completed=done, width=40)
        elapsed = (now - self._began).total_seconds()
        summary = Text(f" {done}/{total} steps done", style="bold")
        if failed:
            summary.append(f", {failed} failed", style="bold red")
        summary.append(f"  {elapsed:.1f}s")
        footer = Table.grid(padding=(0, 1))
        footer.add_row(bar, summary)
        return Group(table, footer)

    def _selection_locked(self) -> list[StepResult]:
        """A big run's rows: running steps, then failed ones, then the last finished (bounded)."""
        names = dict.fromkeys(islice(self._running, _RUNNING_ROWS))
        names.update(dict.fromkeys(islice(self._failed, _FAILED_ROWS)))
        for name in reversed(self._recent):
            names.setdefault(name, None)
        return [self.steps[name] for name in names]
