"""The JSON form of what both stores keep (runs, steps, data rows, events) and the limits they share.

No state: functions from records to the strings the stores hold, and back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from ..errors import InvalidInputError
from .models import RunRecord, StepResult, WorkflowStatus

DEFAULT_RETENTION_RUNS = 10_000
DEFAULT_RETENTION_EVENTS = 100_000
DEFAULT_FLUSH_INTERVAL = 0.05
INTERRUPTED_REASON = "the process stopped while this run was in progress"

ACTIVE_RUN = (WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value)
TERMINAL_RUN = tuple(s.value for s in WorkflowStatus if s.is_terminal)


def dump_step(step: StepResult) -> str:
    # A non-JSON step output is stored as its repr rather than breaking the run that produced it.
    return step.model_dump_json(fallback=repr)


#: A run's steps as one JSON object, encoded in one call: 1.5 µs per step against 2.4 for a
#: model_dump_json per step (10,000 steps), and decoded in one call too.
STEPS_JSON: TypeAdapter[dict[str, StepResult]] = TypeAdapter(dict[str, StepResult])


def dump_run(record: RunRecord) -> str:
    return record.model_dump_json(exclude={"steps"}, fallback=repr)


def dump_data(data: Mapping[str, Any]) -> str:
    # pydantic-core's encoder: 0.5 µs for a step event's payload against 4 µs for json.dumps (the
    # engine logs one per step); datetimes come out in ISO 8601, anything else unknown as its str.
    return pydantic_core.to_json(dict(data), fallback=str).decode()


def status_of(data: Mapping[str, Any]) -> str:
    status = data.get("status", "")
    return str(getattr(status, "value", status))


def build_run(record_json: str, steps_json: Iterable[str], batch: bytes | None = None) -> RunRecord:
    """The record from its JSON, its steps from ``batch`` (one object), then ``steps_json`` (one each)."""
    data = json.loads(record_json)
    steps = STEPS_JSON.validate_json(batch) if batch is not None else {}
    for raw in steps_json:
        step = StepResult.model_validate_json(raw)
        steps[step.name] = step
    data["steps"] = {}
    record = RunRecord.model_validate(data)
    record.steps = steps
    return record


def interrupted(record_json: str) -> str:
    """A run record's JSON marked INTERRUPTED (its error kept if it had one)."""
    data = json.loads(record_json)
    data["status"] = WorkflowStatus.INTERRUPTED.value
    data["error"] = data.get("error") or INTERRUPTED_REASON
    return json.dumps(data, separators=(",", ":"))


def event_dict(event_id: int, ts: float, type: str, raw: str) -> dict[str, Any]:
    return {"id": event_id, "ts": ts, "type": type, "payload": json.loads(raw)}


def check_retention(runs: int, events: int) -> None:
    if runs < 1:
        raise InvalidInputError("retention_runs", f"must be at least 1, got {runs}")
    if events < 1:
        raise InvalidInputError("retention_events", f"must be at least 1, got {events}")
