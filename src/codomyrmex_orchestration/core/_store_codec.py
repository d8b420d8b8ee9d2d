"""The JSON form of what both stores keep (runs, steps, data rows, events) and the limits they share.

No state: functions from records to the strings the stores hold, and back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from .._redact import holds_secret, redact
from .._text import lone_surrogate_at
from ..errors import InvalidInputError, LimitExceededError
from ._map_items import fold_items, stored_form
from .models import RunRecord, StepResult, TaskStatus, WorkflowStatus

DEFAULT_RETENTION_RUNS = 10_000
DEFAULT_RETENTION_EVENTS = 100_000
#: Seconds a finished run is kept after its last save whatever the run limit: whoever waited for it (an
#: execute_workflow call, a get_workflow_run right after) still finds it.
DEFAULT_RETENTION_GRACE = 60.0
#: The fewest finished runs the grace may keep past the run limit (see :func:`grace_cutoff`).
GRACE_MIN_SLACK = 1_000
DEFAULT_FLUSH_INTERVAL = 0.05
#: Seconds between housekeeping passes of the SQLite store (run, version and event limits, expired
#: cached outputs); a full flush brings one forward. The byte budget is kept at every commit.
DEFAULT_HOUSEKEEPING_INTERVAL = 1.0
#: The settings that set the byte budget of the state directory and the most bytes of JSON a run's
#: parameters may take (their defaults: ``config.DEFAULT_STATE_MAX_BYTES``, ``..._MAX_PARAMETERS_BYTES``),
#: named in refusals.
STATE_MAX_BYTES_SETTING = "CODOMYRMEX_STATE_MAX_BYTES"
MAX_PARAMETERS_BYTES_SETTING = "CODOMYRMEX_MAX_PARAMETERS_BYTES"
INTERRUPTED_REASON = "the process stopped while this run was in progress"
INTERRUPTED_STEP = "the process stopped while this step was running; resuming the run runs it again"

ACTIVE_RUN = (WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value)
TERMINAL_RUN = tuple(s.value for s in WorkflowStatus if s.is_terminal)


def dump_step(step: StepResult) -> str:
    # A placeholder (nothing set but its name: every step of a run that starts) is the same JSON for
    # all steps but the name, so it is built from a template: a tenth of the serializer's cost.
    if step.model_fields_set == _NAME_ONLY:
        return _PLACEHOLDER_HEAD + json.dumps(step.name, ensure_ascii=False) + _PLACEHOLDER_TAIL
    # A non-JSON step output is stored as its repr rather than breaking the run that produced it.
    # A map step's items and output are stored once, in its items' own rows (see _workflow_map).
    # pydantic-core's encoder on the model: model_dump_json's output, without its Python wrapper.
    return pydantic_core.to_json(stored_form(step), fallback=repr).decode()


_NAME_ONLY = frozenset({"name"})
_PLACEHOLDER_HEAD, _PLACEHOLDER_TAIL = StepResult(name="\x00").model_dump_json().split(json.dumps("\x00"))


def spill_bytes(step: StepResult) -> int:
    """Bytes of the file the step's output was spilled to (its truncation marker says), else 0."""
    output = step.output
    if type(output) is dict and output.get("truncated") is True and output.get("spilled_to"):
        size = output.get("spilled_bytes", output.get("size_bytes"))  # spilled_bytes: only a part was
        return size if type(size) is int and size > 0 else 0
    return 0


#: A run's steps as one JSON object, encoded in one call: 1.5 µs per step against 2.4 for a
#: model_dump_json per step (10,000 steps), and decoded in one call too.
STEPS_JSON: TypeAdapter[dict[str, StepResult]] = TypeAdapter(dict[str, StepResult])


def dump_run(record: RunRecord) -> str:
    return _without_secrets(record.model_dump_json(exclude={"steps"}, fallback=repr))


def dump_data(data: Mapping[str, Any]) -> str:
    # pydantic-core's encoder: 0.5 µs for a step event's payload against 4 µs for json.dumps (the
    # engine logs one per step); datetimes come out in ISO 8601, anything else unknown as its str.
    return _without_secrets(pydantic_core.to_json(dict(data), fallback=str).decode())


def _without_secrets(text: str) -> str:
    """The last guard before the state: a secret value in a run record (a sub-run's parameters) or a
    data row is replaced by its marker. Step outputs and errors were redacted when they were made."""
    if not holds_secret(text):
        return text
    # Replaced in the decoded values, never in the JSON text (a secret "1234" may be part of a number).
    return json.dumps(redact(json.loads(text)), ensure_ascii=False)


def status_of(data: Mapping[str, Any]) -> str:
    status = data.get("status", "")
    return str(getattr(status, "value", status))


def build_run(record_json: str, steps_json: Iterable[str], batch: bytes | None = None) -> RunRecord:
    """The record from its JSON, its steps from ``batch`` (one object), then ``steps_json`` (one each);
    a map step's item rows are folded back into it."""
    data = json.loads(record_json)
    steps = STEPS_JSON.validate_json(batch) if batch is not None else {}
    for raw in steps_json:
        step = StepResult.model_validate_json(raw)
        steps[step.name] = step
    data["steps"] = {}
    record = RunRecord.model_validate(data)
    record.steps = fold_items(steps)
    return record


def interrupted(record_json: str) -> str:
    """A run record's JSON marked INTERRUPTED (its error kept if it had one)."""
    data = json.loads(record_json)
    data["status"] = WorkflowStatus.INTERRUPTED.value
    data["error"] = data.get("error") or INTERRUPTED_REASON
    return json.dumps(data, separators=(",", ":"))


def interrupted_step(result_json: str, when: datetime) -> str:
    """A running step's (or item's) stored JSON marked INTERRUPTED, finished ``when`` (recovery's time:
    when the process died is not known), with an error saying why (a step's own error kept)."""
    data = json.loads(result_json)
    data["status"] = TaskStatus.INTERRUPTED.value
    data["finished_at"] = when.isoformat()
    data["error"] = data.get("error") or {"message": INTERRUPTED_STEP, "type": "Interrupted"}
    return json.dumps(data, separators=(",", ":"))


def event_dict(event_id: int, ts: float, type: str, raw: str) -> dict[str, Any]:
    return {"id": event_id, "ts": ts, "type": type, "payload": json.loads(raw)}


def check_retention(runs: int, events: int, grace: float = DEFAULT_RETENTION_GRACE) -> None:
    if runs < 1:
        raise InvalidInputError("retention_runs", f"must be at least 1, got {runs}")
    if events < 1:
        raise InvalidInputError("retention_events", f"must be at least 1, got {events}")
    if not 0 <= grace < float("inf"):
        raise InvalidInputError("retention_grace", f"must be a finite number of seconds >= 0, got {grace}")


def grace_cutoff(finished: int, limit: int, grace: float) -> float | None:
    """The ``time.time()`` before which a finished run must have been saved to be trimmed by the run
    limit, or None: no grace. The grace keeps at most ``max(limit, GRACE_MIN_SLACK)`` finished runs past
    the limit: a server finishing runs faster than that a minute trims past their grace, so that memory
    and the file stay bounded (at most about twice the limit) however fast runs finish."""
    if finished - limit > max(limit, GRACE_MIN_SLACK):
        return None
    return time.time() - grace


def run_cursor(record: RunRecord) -> str:
    """The cursor that continues a newest-first run listing after ``record`` (pass it as ``cursor=``)."""
    return f"{record.created_at.timestamp()!r}:{record.run_id}"


def parse_cursor(cursor: str) -> tuple[float, str]:
    """``(created_at timestamp, run_id)`` from a :func:`run_cursor` string."""
    stamp, sep, run_id = cursor.partition(":")
    try:
        if not sep or not run_id:
            raise ValueError(cursor)
        return float(stamp), run_id
    except ValueError:
        raise InvalidInputError(
            "cursor", f"{cursor[:80]!r} is not a run cursor (pass back the next_cursor of a listing)"
        ) from None


def window(since: datetime | None, until: datetime | None) -> tuple[float | None, float | None]:
    """The ``[since, until)`` time window as timestamps; naive datetimes are taken as UTC."""
    return _stamp(since, "since"), _stamp(until, "until")


def _stamp(moment: datetime | None, name: str) -> float | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise InvalidInputError(name, f"must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_limits(max_bytes: int | None, max_parameters_bytes: int) -> None:
    if max_bytes is not None and max_bytes < 1:
        raise InvalidInputError("max_bytes", f"must be at least 1 byte (or None: no budget), got {max_bytes}")
    if max_parameters_bytes < 1:
        raise InvalidInputError(
            "max_parameters_bytes", f"must be at least 1 byte, got {max_parameters_bytes}"
        )


def check_intervals(**seconds: float) -> None:
    for name, value in seconds.items():
        if value < 0:
            raise InvalidInputError(name, f"must be >= 0 seconds, got {value}")


#: An estimate of what a new run's record takes in the state (besides its parameters): the run's row,
#: and per step its result row with a small output (measured: ~300 bytes a step). Admission checks the
#: byte budget with it (``SqliteStore.check_budget(steps=)``); outputs are not known in advance.
RUN_ROW_BYTES = 512
STEP_ROW_BYTES = 320


def run_estimate(parameters_bytes: int, steps: int) -> int:
    """The bytes a new run of ``steps`` steps is expected to add to the state: its parameters (kept in
    its record) and the rows above."""
    return parameters_bytes + RUN_ROW_BYTES + STEP_ROW_BYTES * steps


def check_parameters(
    parameters: Mapping[str, Any] | None, limit: int, *, what: str = "the run's parameters"
) -> int:
    """Refuse parameters whose JSON is larger than ``limit`` bytes (a run stores them in its record), or
    that hold text JSON cannot carry; ``what`` names them in the refusal (a definition's defaults are
    checked as it is validated). Returns their size in bytes of JSON."""
    if not parameters:
        return 0
    try:
        size = len(pydantic_core.to_json(dict(parameters), fallback=str))
    except pydantic_core.PydanticSerializationError:
        found = lone_surrogate_at(dict(parameters))
        if found is None:
            raise
        where, text = found
        raise InvalidInputError(
            f"parameters{where}",
            f"{what} hold text that is not valid UTF-8 ({text}: bytes that could not be decoded, from a "
            "command line, a variable or a file name; under a C locale, PYTHONUTF8=1 decodes UTF-8); "
            "give valid text",
        ) from None
    if size > limit:
        raise LimitExceededError(MAX_PARAMETERS_BYTES_SETTING, limit, size, f"{what}, in bytes of JSON,")
    return size


def refuse_over_budget(used: int, limit: int, adding: int = 0, *, held: int = 0) -> LimitExceededError:
    """The budget's refusal; ``adding``: the estimate of the new run's record counted in ``used``;
    ``held``: the room counted in it for runs admitted whose records are not saved yet."""
    run = f", with about {adding} for the new run's record" if adding else ""
    if held:
        run += f" and {held} held for runs admitted but not saved yet"
    return LimitExceededError(
        STATE_MAX_BYTES_SETTING,
        limit,
        used,
        f"the state directory's size in bytes{run} (the byte budget: runs, workflow definitions, sessions; "
        "every finished run and closed session that could be evicted is gone, so finish or cancel running "
        "work, delete workflows or close sessions no longer needed, or raise the budget)",
    )
