"""The cap on a step's captured output, applied once to every action's return value.

The scheduler calls an :class:`OutputLimiter` on the worker thread right after an action returns (outside
its lock), so the cap holds for every action — shell stdout, HTTP bodies, ``python.call`` return values,
plugins — and for single tasks as well as workflow steps. An output whose JSON text is larger than
``max_bytes`` is replaced by a marker object; the output is optionally spilled to a file under the
state directory first, in room the state's byte budget makes for it and up to ``MAX_SPILL_BYTES``.

The no-op path costs one ``is None`` test in the scheduler; outputs that are plainly small (scalars,
short strings, small dicts and lists of them) are bounded without serialising them.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

import structlog

from codomyrmex_orchestration.errors import OrchestrationError

from ._json_text import json_pieces, json_size_bound, utf8_size

__all__ = ["MAX_SPILL_BYTES", "OutputLimiter", "is_truncated"]

_log = structlog.get_logger("codomyrmex_orchestration.limits")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: The most bytes one spill file takes (as much as an action may be told to capture): a longer output's
#: file keeps its first bytes, and the marker says so.
MAX_SPILL_BYTES = 64 * 1024 * 1024


def is_truncated(output: Any) -> bool:
    """Whether ``output`` is the marker :class:`OutputLimiter` left in place of a too-large output."""
    return isinstance(output, dict) and output.get("truncated") is True and "size_bytes" in output


class SpillBudget(Protocol):
    """The state directory's byte budget, as the output limiter sees it (the SQLite store)."""

    def make_room_for_spill(
        self, nbytes: int, *, reserve: bool = False, evict_runs: bool = False
    ) -> bool: ...
    def release_spill_room(self, nbytes: int) -> None: ...
    def note_task_spill(self, path: Path, nbytes: int, *, reserved: bool = False) -> None: ...


class OutputLimiter:
    """Replace outputs larger than ``max_bytes`` of JSON with a truncation marker.

    The marker is ``{"truncated": True, "size_bytes": N, "limit_bytes": L, "preview": "<first K chars of
    the JSON text>", "spilled_to": "<path>" | None}``, plus ``"spill_error"`` when the spill file is
    missing or incomplete, saying why, and ``"spilled_bytes"`` when it holds only the first bytes.

    An output is measured a piece of its JSON text at a time (see :mod:`._json_text`), and spilled the
    same way: neither ever holds the whole text, however large the output.

    Args:
        max_bytes: the most bytes of JSON an output may take and be kept as is.
        spill_dir: where full outputs are written (``<spill_dir>/<run_id>/<step>.json``, or
            ``<spill_dir>/tasks/<task_id>.json`` for a task outside a run); ``None`` keeps only the marker.
        preview_chars: characters of the JSON text kept in the marker (default: a quarter of
            ``max_bytes``, at most 4096).
        budget: the state directory's byte budget: room is reserved in it before each spill (finished
            runs are evicted for a run's spill; a spill that does not fit is not written), and told of
            each task spill at once.
        max_spill_bytes: the most bytes one spill file takes; a longer output keeps its first bytes.
    """

    __slots__ = (
        "_count_lock",
        "budget",
        "max_bytes",
        "max_spill_bytes",
        "preview_chars",
        "spill_dir",
        "truncated_count",
    )

    def __init__(
        self,
        max_bytes: int,
        *,
        spill_dir: Path | str | None = None,
        preview_chars: int | None = None,
        budget: SpillBudget | None = None,
        max_spill_bytes: int = MAX_SPILL_BYTES,
    ):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if max_spill_bytes < 1:
            raise ValueError(f"max_spill_bytes must be at least 1, got {max_spill_bytes}")
        self.max_bytes = max_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.preview_chars = preview_chars if preview_chars is not None else min(4096, max_bytes // 4)
        self.budget = budget
        self.max_spill_bytes = max_spill_bytes
        self.truncated_count = 0  # guarded by _count_lock: workers truncate at the same time
        self._count_lock = threading.Lock()

    def measure(self, value: Any) -> tuple[int, str] | None:
        """``None`` when ``value`` is within the limit, else (the bytes of its JSON text, the preview).

        The text is produced a piece at a time and only counted, so measuring holds one piece and the
        preview, never the text."""
        if value is None or isinstance(value, bool | int | float):
            return None
        if json_size_bound(value, self.max_bytes) is not None:
            return None
        size = 0
        preview: list[str] = []
        wanted = self.preview_chars
        for piece in json_pieces(value):
            if wanted > 0:
                preview.append(piece[:wanted])
                wanted -= len(preview[-1])
            size += utf8_size(piece)
        return None if size <= self.max_bytes else (size, "".join(preview))

    def __call__(self, value: Any, run_id: str | None, step_name: str | None, task_id: str) -> Any:
        """``value`` itself when small enough, else the truncation marker (never raises for size). Called
        positionally on every attempt (see ``ResultPipeline``)."""
        measured = self.measure(value)
        if measured is None:
            return value
        size, preview = measured
        marker: dict[str, Any] = {
            "truncated": True,
            "size_bytes": size,
            "limit_bytes": self.max_bytes,
            "preview": preview,
            "spilled_to": None,
        }
        if self.spill_dir is not None:
            self._spill_within_budget(value, size, marker, run_id, step_name, task_id)
        with self._count_lock:
            self.truncated_count += 1
        _log.warning(
            "output truncated",
            run_id=run_id,
            step=step_name,
            task_id=task_id,
            size_bytes=size,
            limit_bytes=self.max_bytes,
            spilled_to=marker["spilled_to"],
        )
        return marker

    def _spill_within_budget(
        self,
        value: Any,
        size: int,
        marker: dict[str, Any],
        run_id: str | None,
        step_name: str | None,
        task_id: str,
    ) -> None:
        """Write ``value``'s JSON text (at most ``max_spill_bytes`` of it) to its spill file, in room
        reserved in the budget first; the marker says where, or why not."""
        keep = min(size, self.max_spill_bytes)
        in_run = run_id is not None and step_name is not None
        budget = self.budget
        # The room is reserved before a byte is written, so workers spilling at once cannot each claim
        # the same free bytes. A task's file counts against the budget once written (the reservation
        # becomes its count); a run's counts with its step's row, so its reservation ends with the write.
        if budget is not None:
            try:
                room = budget.make_room_for_spill(keep, reserve=True, evict_runs=in_run)
            except OrchestrationError as exc:  # the store cannot evict (failed or closed)
                marker["spill_error"] = f"{type(exc).__name__}: {exc}"
                return
            if not room:
                marker["spill_error"] = (
                    f"no room for {keep} bytes in the state directory's byte budget "
                    "(CODOMYRMEX_STATE_MAX_BYTES)"
                )
                return
        try:
            path, written = self._spill(value, keep, run_id, step_name, task_id)
        except BaseException as exc:
            if budget is not None:
                budget.release_spill_room(keep)
            if not isinstance(exc, OSError):
                raise
            marker["spill_error"] = f"{type(exc).__name__}: {exc}"
            _log.error("output spill failed", run_id=run_id, step=step_name, task_id=task_id, error=str(exc))
            return
        marker["spilled_to"] = str(path)
        if written < size:
            marker["spilled_bytes"] = written
            marker["spill_error"] = (
                f"the spill file keeps the first {written} of {size} bytes: a spill file is limited to "
                f"{self.max_spill_bytes} bytes"
            )
        if budget is not None:
            if in_run:
                budget.release_spill_room(keep)
            else:
                budget.release_spill_room(keep - written)
                budget.note_task_spill(path, written, reserved=True)

    def _spill(
        self, value: Any, keep: int, run_id: str | None, step_name: str | None, task_id: str
    ) -> tuple[Path, int]:
        """Write the first ``keep`` bytes of ``value``'s JSON text (cut at a character) atomically;
        return the file and the bytes written."""
        assert self.spill_dir is not None
        if run_id is not None and step_name is not None:
            directory, stem = self.spill_dir / _safe(run_id), _safe(step_name)
        else:
            directory, stem = self.spill_dir / "tasks", _safe(task_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{stem}.json"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
        written = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for piece in json_pieces(value):
                    data = piece.encode("utf-8", "surrogatepass")  # as measure() counted it
                    if written + len(data) > keep:
                        cut = keep - written
                        while cut > 0 and data[cut] & 0xC0 == 0x80:  # not inside a character
                            cut -= 1
                        handle.write(data[:cut])
                        written += cut
                        break
                    handle.write(data)
                    written += len(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target, written


def _safe(name: str) -> str:
    """A file name for ``name``: itself when harmless, else a stable hex digest of it."""
    if _SAFE_NAME.match(name) and ".." not in name:
        return name
    import hashlib

    return "x" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
