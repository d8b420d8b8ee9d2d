"""The cap on a step's captured output, applied once to every action's return value.

The scheduler calls an :class:`OutputLimiter` on the worker thread right after an action returns (outside
its lock), so the cap holds for every action — shell stdout, HTTP bodies, ``python.call`` return values,
plugins — and for single tasks as well as workflow steps. An output whose JSON text is larger than
``max_bytes`` is replaced by a marker object; the full output is optionally spilled to a file under the
state directory first.

The no-op path costs one ``is None`` test in the scheduler; outputs that are plainly small (scalars,
short strings, small dicts and lists of them) are bounded without serialising them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

import structlog

__all__ = ["OutputLimiter", "is_truncated"]

_log = structlog.get_logger("codomyrmex_orchestration.limits")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: A JSON string escapes one character to at most 6 bytes (``\\u001f``); UTF-8 uses at most 4.
_MAX_BYTES_PER_CHAR = 6
#: Nesting beyond this is measured by serialising (as are circular structures, which then fail).
_MAX_BOUND_DEPTH = 16
#: The longest JSON text of a float (``-1.7976931348623157e+308``) is 24 characters.
_MAX_FLOAT_CHARS = 24


def is_truncated(output: Any) -> bool:
    """Whether ``output`` is the marker :class:`OutputLimiter` left in place of a too-large output."""
    return isinstance(output, dict) and output.get("truncated") is True and "size_bytes" in output


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _json_size_bound(value: Any, budget: int, depth: int = 0) -> int | None:
    """An upper bound on the UTF-8 bytes of ``value``'s JSON text if it is within ``budget``, else ``None``.

    Most outputs are small: bounding them without serialising saves the ``json.dumps`` the cap would
    otherwise pay on every step. ``None`` also means "cannot tell cheaply" (a type JSON encodes through
    ``default=str``, a non-string key, deep nesting): the caller then serialises to measure exactly.
    """
    kind = type(value)
    if kind is str:
        size = len(value) * _MAX_BYTES_PER_CHAR + 2
    elif value is None or kind is bool:
        size = 5
    elif kind is int:
        size = value.bit_length() // 3 + 2  # digits <= bits * log10(2) + 1, and a sign
    elif kind is float:
        size = _MAX_FLOAT_CHARS
    elif depth >= _MAX_BOUND_DEPTH:
        return None
    elif kind is dict:
        size = 2
        for key, item in value.items():
            if type(key) is not str:
                return None
            inner = _json_size_bound(item, budget, depth + 1)
            if inner is None:
                return None
            size += len(key) * _MAX_BYTES_PER_CHAR + 4 + inner  # quotes, colon, comma
            if size > budget:
                return None
    elif kind is list or kind is tuple:
        size = 2
        for item in value:
            inner = _json_size_bound(item, budget, depth + 1)
            if inner is None:
                return None
            size += inner + 1
            if size > budget:
                return None
    else:
        return None
    return size if size <= budget else None


class SpillBudget(Protocol):
    """The state directory's byte budget, as the output limiter sees it (the SQLite store)."""

    def make_room_for_spill(self, nbytes: int, *, reserve: bool = False) -> bool: ...
    def release_spill_room(self, nbytes: int) -> None: ...
    def note_task_spill(self, path: Path, nbytes: int, *, reserved: bool = False) -> None: ...


class OutputLimiter:
    """Replace outputs larger than ``max_bytes`` of JSON with a truncation marker.

    The marker is ``{"truncated": True, "size_bytes": N, "limit_bytes": L, "preview": "<first K chars of
    the JSON text>", "spilled_to": "<path>" | None}`` (plus ``"spill_error"`` when the spill failed).

    Args:
        max_bytes: the most bytes of JSON an output may take and be kept as is.
        spill_dir: where full outputs are written (``<spill_dir>/<run_id>/<step>.json``, or
            ``<spill_dir>/tasks/<task_id>.json`` for a task outside a run); ``None`` keeps only the marker.
        preview_chars: characters of the JSON text kept in the marker (default: a quarter of
            ``max_bytes``, at most 4096).
        budget: the state directory's byte budget: asked for room before each spill (a task's output
            that does not fit is not written) and told of each task spill at once.
    """

    __slots__ = ("_count_lock", "budget", "max_bytes", "preview_chars", "spill_dir", "truncated_count")

    def __init__(
        self,
        max_bytes: int,
        *,
        spill_dir: Path | str | None = None,
        preview_chars: int | None = None,
        budget: SpillBudget | None = None,
    ):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.preview_chars = preview_chars if preview_chars is not None else min(4096, max_bytes // 4)
        self.budget = budget
        self.truncated_count = 0  # guarded by _count_lock: workers truncate at the same time
        self._count_lock = threading.Lock()

    def fits(self, value: Any) -> tuple[bool, str | None]:
        """(within the limit, the JSON text when it had to be computed)."""
        if value is None or isinstance(value, bool | int | float):
            return True, None
        if _json_size_bound(value, self.max_bytes) is not None:
            return True, None
        text = _json_text(value)
        # len(text) <= bytes <= 4 * len(text): only encode when the cheap bounds do not decide.
        if len(text) > self.max_bytes:
            return False, text
        if len(text) * 4 <= self.max_bytes:
            return True, text
        return len(text.encode("utf-8")) <= self.max_bytes, text

    def __call__(self, value: Any, *, run_id: str | None, step_name: str | None, task_id: str) -> Any:
        """``value`` itself when small enough, else the truncation marker (never raises for size)."""
        ok, text = self.fits(value)
        if ok:
            return value
        assert text is not None
        data = text.encode("utf-8")
        marker: dict[str, Any] = {
            "truncated": True,
            "size_bytes": len(data),
            "limit_bytes": self.max_bytes,
            "preview": text[: self.preview_chars],
            "spilled_to": None,
        }
        in_run = run_id is not None and step_name is not None
        # A task's spill file counts against the budget the moment it is written, so its room is
        # reserved: workers spilling at once cannot each claim the same free bytes. (A run's spill
        # counts with its step's row, and the writer evicts at that commit if it went over.)
        reserve = self.spill_dir is not None and not in_run
        room = self.budget is None or self.budget.make_room_for_spill(len(data), reserve=reserve)
        reserved = reserve and room and self.budget is not None
        if self.spill_dir is not None and not room and not in_run:
            marker["spill_error"] = (
                f"no room for {len(data)} bytes in the state directory's byte budget "
                "(CODOMYRMEX_STATE_MAX_BYTES)"
            )
        elif self.spill_dir is not None:
            try:
                path = self._spill(data, run_id, step_name, task_id)
            except OSError as exc:
                if reserved:
                    assert self.budget is not None
                    self.budget.release_spill_room(len(data))
                marker["spill_error"] = f"{type(exc).__name__}: {exc}"
                _log.error(
                    "output spill failed", run_id=run_id, step=step_name, task_id=task_id, error=str(exc)
                )
            else:
                marker["spilled_to"] = str(path)
                if self.budget is not None and not in_run:
                    self.budget.note_task_spill(path, len(data), reserved=reserved)
        with self._count_lock:
            self.truncated_count += 1
        _log.warning(
            "output truncated",
            run_id=run_id,
            step=step_name,
            task_id=task_id,
            size_bytes=len(data),
            limit_bytes=self.max_bytes,
            spilled_to=marker["spilled_to"],
        )
        return marker

    def _spill(self, data: bytes, run_id: str | None, step_name: str | None, task_id: str) -> Path:
        assert self.spill_dir is not None
        if run_id is not None and step_name is not None:
            directory, stem = self.spill_dir / _safe(run_id), _safe(step_name)
        else:
            directory, stem = self.spill_dir / "tasks", _safe(task_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{stem}.json"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def _safe(name: str) -> str:
    """A file name for ``name``: itself when harmless, else a stable hex digest of it."""
    if _SAFE_NAME.match(name) and ".." not in name:
        return name
    import hashlib

    return "x" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
