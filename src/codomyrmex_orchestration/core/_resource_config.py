"""Config and unit parsing for resources: sizes such as ``"512MB"``, amounts, seconds, and the
``config/resources.json`` overrides (loading the file and overlaying it on the probed defaults).

Pure functions; every bad value raises :class:`InvalidInputError` naming the field and what is accepted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from codomyrmex_orchestration.core._numbers import parse_number, shown
from codomyrmex_orchestration.core._resource_types import (
    EPS,
    MIB,
    SIZED_TYPES,
    TYPE_NAMES,
    WHOLE_TYPES,
    Resource,
    ResourceType,
)
from codomyrmex_orchestration.errors import InvalidInputError, LimitExceededError

__all__ = [
    "apply_config",
    "load_config_file",
    "parse_amount",
    "parse_size_mib",
    "parse_type",
]

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_FACTORS_MIB = {
    "": 1.0,
    "b": 1.0 / MIB,
    "byte": 1.0 / MIB,
    "bytes": 1.0 / MIB,
    "k": 1.0 / 1024,
    "kb": 1.0 / 1024,
    "kib": 1.0 / 1024,
    "m": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "t": 1024.0 * 1024,
    "tb": 1024.0 * 1024,
    "tib": 1024.0 * 1024,
}
_SIZE_HINT = 'a string such as "512MB", "2GB", "1.5GiB" (binary units: 1 GB = 1024 MB)'
_SIZE_ACCEPTED = f"a number of MiB or {_SIZE_HINT}"


def parse_size_mib(value: object, *, field: str = "amount", accepted: str = _SIZE_ACCEPTED) -> float:
    """Parse a memory/storage size into MiB.

    Numbers are MiB already. Strings take a unit (case-insensitive): B, KB/KiB, MB/MiB, GB/GiB,
    TB/TiB, all binary (``"1GB"`` and ``"1GiB"`` are both 1024 MiB); no unit means MiB.

    Raises:
        InvalidInputError: not a number or size string, or not finite (``field`` names where,
            ``accepted`` what would do).
    """
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None or match.group(2).lower() not in _SIZE_FACTORS_MIB:
            raise InvalidInputError(field, f"{shown(value)} is not a size; use {accepted}")
        number = float(match.group(1)) * _SIZE_FACTORS_MIB[match.group(2).lower()]
        if not math.isfinite(number):
            raise InvalidInputError(field, f"{shown(value)} is not a finite size; use {accepted}")
        return number
    return parse_number(value, field=field, accepted=accepted)


def parse_amount(value: object, resource: Resource, *, field: str) -> float:
    """A requested amount in the resource's unit: finite, > 0, within min/max_allocation."""
    most = resource.capacity + resource.burst_limit
    bound = "capacity + burst"
    if resource.max_allocation is not None and resource.max_allocation < most:
        most, bound = resource.max_allocation, "max_allocation"
    in_range = f"greater than 0 and at most {most:g} ({bound})"
    if resource.type in SIZED_TYPES:
        number = parse_size_mib(value, field=field, accepted=f"a number of MiB {in_range}, or {_SIZE_HINT}")
    else:
        number = parse_number(value, field=field, accepted=f"a number of {resource.unit} {in_range}")
    if number <= 0:
        raise InvalidInputError(field, f"amount must be greater than 0 {resource.unit}, got {shown(value)}")
    if resource.type in WHOLE_TYPES and not number.is_integer():
        accepted = "exactly 1" if most < 2 else f"a whole number from 1 to {math.floor(most):g}"
        raise InvalidInputError(
            field,
            f"{resource.id!r} ({resource.type.value}) is held in whole units: use {accepted}, "
            f"got {shown(value)}",
        )
    if resource.min_allocation is not None and number < resource.min_allocation - EPS:
        raise InvalidInputError(
            field,
            f"amount {number:g} {resource.unit} is below the minimum allocation of "
            f"{resource.min_allocation:g} for resource {resource.id!r}",
        )
    if resource.max_allocation is not None and number > resource.max_allocation + EPS:
        raise LimitExceededError(
            field, resource.max_allocation, number, f"the amount of one allocation of {resource.id!r}"
        )
    return number


def parse_type(value: ResourceType | str, field: str = "type") -> ResourceType:
    """A :class:`ResourceType` from itself or its value (case-insensitive)."""
    try:
        return ResourceType(str(value).lower())
    except ValueError:
        raise InvalidInputError(field, f"{value!r} is not a resource type; use one of {TYPE_NAMES}") from None


_CONFIG_TOP_KEYS = ("network_mbps", "resources")
_CONFIG_RESOURCE_KEYS = (
    "name",
    "type",
    "capacity",
    "unit",
    "burst_limit",
    "burst_max_seconds",
    "min_allocation",
    "max_allocation",
)
_AMOUNT_KEYS = ("capacity", "burst_limit", "min_allocation", "max_allocation")


def load_config_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(
            str(path), f"cannot read the resources config: {exc.strerror or exc}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(str(path), "the resources config must be a JSON object")
    return data


def apply_config(
    resources: dict[str, Resource], config: Mapping[str, Any], *, origin: str
) -> dict[str, Resource]:
    """Overlay ``config`` on ``resources`` (by id) and return the result. ``origin`` prefixes fields."""
    prefix = f"{origin}:" if origin else ""
    if not isinstance(config, Mapping):
        raise InvalidInputError(prefix + "config", "must be an object")
    unknown = sorted(set(config) - set(_CONFIG_TOP_KEYS))
    if unknown:
        raise InvalidInputError(
            prefix + str(unknown[0]), f"unknown key; accepted keys: {', '.join(_CONFIG_TOP_KEYS)}"
        )
    result = dict(resources)
    if "network_mbps" in config:
        mbps = parse_number(config["network_mbps"], field=prefix + "network_mbps", accepted="Mbit/s > 0")
        if mbps <= 0:
            raise InvalidInputError(prefix + "network_mbps", "must be greater than 0")
        if "network" in result:
            result["network"] = result["network"].model_copy(
                update={"capacity": mbps, "derived_from": "config network_mbps"}
            )
    entries = config.get("resources", {})
    if not isinstance(entries, Mapping):
        raise InvalidInputError(prefix + "resources", "must be an object mapping resource id -> settings")
    for rid, entry in entries.items():
        where = f"{prefix}resources.{rid}"
        if entry is None:  # null removes a default resource
            result.pop(str(rid), None)
            continue
        if not isinstance(entry, Mapping):
            raise InvalidInputError(where, "must be an object (or null to remove the resource)")
        bad = sorted(set(entry) - set(_CONFIG_RESOURCE_KEYS))
        if bad:
            raise InvalidInputError(
                f"{where}.{bad[0]}", f"unknown setting; accepted: {', '.join(_CONFIG_RESOURCE_KEYS)}"
            )
        base = result.get(str(rid))
        values: dict[str, Any] = base.model_dump() if base is not None else {"id": rid, "name": str(rid)}
        if "type" in entry:
            values["type"] = parse_type(entry["type"], f"{where}.type")
        elif base is None:
            values["type"] = ResourceType.CUSTOM
        if base is None and "capacity" not in entry:
            raise InvalidInputError(f"{where}.capacity", "required for a new resource")
        sized = values["type"] in SIZED_TYPES
        if sized:  # amounts of memory and storage are parsed as MiB: the unit says so
            if entry.get("unit", "MiB") != "MiB":
                raise InvalidInputError(
                    f"{where}.unit",
                    f'{values["type"].value} amounts are in MiB (sizes such as "16GB" are converted); '
                    f'leave unit out or set it to "MiB", got {shown(entry["unit"])}',
                )
            values["unit"] = "MiB"
        for key, raw in entry.items():
            if key == "type":
                continue
            if key in _AMOUNT_KEYS and raw is not None:
                values[key] = (
                    parse_size_mib(raw, field=f"{where}.{key}")
                    if sized
                    else parse_number(raw, field=f"{where}.{key}", accepted="a number >= 0")
                )
            else:
                values[key] = raw
        if "capacity" in entry:
            values["capacity_known"] = True
            values["derived_from"] = "config"
        try:
            result[str(rid)] = Resource(**values)
        except ValidationError as exc:
            raise InvalidInputError.from_validation(
                exc, where=where, accepted=_CONFIG_RESOURCE_KEYS
            ) from None
    return result
