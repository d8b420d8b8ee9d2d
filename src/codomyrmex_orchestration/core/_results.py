"""The result pipeline: every successful return value of a task or workflow step passes through it once,
on the worker thread, before it becomes a record, a store row or a tool result.

Secrets are redacted first (see :mod:`codomyrmex_orchestration._redact`; a workflow secret a step echoes
back becomes ``[secret:NAME]``), then the output cap applies
(see :class:`~codomyrmex_orchestration.core._limits.OutputLimiter`): a spilled file holds the redacted
value. The pipeline owns no state of its own; the limiter counts what it truncated.
"""

from __future__ import annotations

from typing import Any

from codomyrmex_orchestration._redact import redact
from codomyrmex_orchestration.core._limits import OutputLimiter

__all__ = ["ResultPipeline"]


class ResultPipeline:
    """Redact, then cap.

    Args:
        output_limit: the cap on an output's size (too-large outputs become a truncation marker,
            optionally spilled to a file); ``None``: no cap.
    """

    __slots__ = ("output_limit",)

    def __init__(self, output_limit: OutputLimiter | None = None) -> None:
        self.output_limit = output_limit

    def __call__(self, value: Any, run_id: str | None, step_name: str | None, task_id: str) -> Any:
        """``value`` as it may be recorded: redacted and within the cap. Every attempt calls it: called
        with keywords, an instance's ``__call__`` costs CPython a dict of them (about 0.25 µs)."""
        if value is None:
            return None
        value = redact(value)
        if self.output_limit is not None:
            value = self.output_limit(value, run_id, step_name, task_id)
        return value
