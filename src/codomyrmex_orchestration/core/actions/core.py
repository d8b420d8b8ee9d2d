"""The ``core`` module: echo, sleep, fail and set — small actions for shaping data, tests and demos — and
approve, the declaration of a step that waits for a person (its waiting is in ``core/_workflow_input.py``).

A sleeping step does not keep other work waiting: it lends its worker's slot to the pool while it sleeps
(``ActionContext.blocking``), up to ``SLEEPS_OFF_SLOT`` sleeps per registry at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from codomyrmex_orchestration.core._workflow_input import question_problems
from codomyrmex_orchestration.core.actions._params import literal_check
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import InvalidInputError, StepCancelledError, StepFailedError

__all__ = ["SLEEPS_OFF_SLOT", "register"]

#: The most ``core.sleep`` steps of one registry (one engine) that sleep without holding a worker slot.
#: Each still has its own thread, so past this a sleep holds its worker like any other step: a flood of
#: sleeps cannot start threads without bound.
SLEEPS_OFF_SLOT = 256


def echo(params: dict[str, Any], ctx: ActionContext) -> Any:
    return _message(params)


def _message(params: Mapping[str, Any]) -> Any:
    if "message" not in params:
        raise InvalidInputError("parameters.message", "core.echo needs a 'message' (any JSON value)")
    return params["message"]


class _Sleep:
    """``core.sleep``; ``off_slot`` (guarded by ``_lock``) counts its calls sleeping off their slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.off_slot = 0
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        seconds = _seconds(params)
        with self._slot_lent(ctx, seconds > 0):
            cancelled = ctx.wait(float(seconds))
        if cancelled:
            raise StepCancelledError(ctx.step_name, "cancelled while sleeping")
        return {"slept": seconds}

    @contextmanager
    def _slot_lent(self, ctx: ActionContext, sleeps: bool) -> Iterator[None]:
        """While the sleep lasts, the pool lends its worker's slot to another worker, as for a step that
        waits on other work (the slot is back when the sleep ends, however it ends); past ``limit`` such
        sleeps, or when there is nothing to sleep, the worker keeps it."""
        with self._lock:
            lend = sleeps and self.off_slot < self.limit and not ctx.cancelled
            if lend:
                self.off_slot += 1
        if not lend:
            yield
            return
        try:
            with ctx.blocking():
                yield
        finally:
            with self._lock:
                self.off_slot -= 1


def _seconds(params: Mapping[str, Any]) -> int | float:
    seconds = params.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 86_400:
        raise InvalidInputError("parameters.seconds", "core.sleep needs 'seconds', a number from 0 to 86400")
    return seconds


def fail(params: dict[str, Any], ctx: ActionContext) -> Any:
    raise StepFailedError(ctx.step_name, str(params.get("message", "core.fail was asked to fail")))


def set_(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return dict(params)


def approve(params: dict[str, Any], ctx: ActionContext) -> Any:
    # A workflow's core.approve step never gets here: the run parks it on its question (_workflow_input).
    raise StepFailedError(
        ctx.step_name,
        "core.approve waits for a person's answer and runs only as a workflow step (answer it with "
        "respond_to_run), not as a single task",
    )


def register(registry: ActionRegistry, *, sleeps_off_slot: int = SLEEPS_OFF_SLOT) -> None:
    """Add the ``core`` actions to ``registry``.

    Args:
        registry: where they go.
        sleeps_off_slot: the most ``core.sleep`` steps sleeping at once without holding a worker slot.
    """
    for definition in (
        ActionDefinition(
            "core",
            "echo",
            echo,
            description="Return parameters.message unchanged (any JSON value).",
            parameters={"message": "any JSON value (required)"},
            output="the message",
            instant=True,
            check=literal_check((("message",), _message)),
        ),
        ActionDefinition(
            "core",
            "sleep",
            _Sleep(sleeps_off_slot),
            description="Wait for a number of seconds (other work gets its worker meanwhile); wakes early "
            "and fails as cancelled on cancellation.",
            parameters={"seconds": "number, 0-86400 (default 0)"},
            output='{"slept": seconds}',
            check=literal_check((("seconds",), _seconds)),
        ),
        ActionDefinition(
            "core",
            "fail",
            fail,
            description="Fail with parameters.message (for tests, demos and error paths).",
            parameters={"message": "string (optional)"},
            output="never returns; the step fails",
            instant=True,
        ),
        ActionDefinition(
            "core",
            "set",
            set_,
            description="Return the parameters as a dict, to shape data for later steps.",
            parameters={"*": "any JSON values"},
            output="the parameters as an object",
            instant=True,
        ),
        ActionDefinition(
            "core",
            "approve",
            approve,
            description="Ask a person and wait (holding no worker): the client that started the run is asked "
            "through MCP elicitation when it supports it, otherwise the run is waiting_for_input until "
            "respond_to_run answers. Accept completes the step; decline, cancel or the timeout fail it.",
            parameters={
                "message": "string, the question (required)",
                "schema": "optional flat JSON object schema of the answer: properties of type string "
                "(enum, format), number, integer or boolean, and required",
                "timeout_seconds": "optional number: the step fails unanswered after it (default: no limit)",
            },
            output='{"action": "accept", "content": {...the answer, fitting schema}}',
            check=question_problems,
        ),
    ):
        registry.register(definition)
