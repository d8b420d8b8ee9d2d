"""Numbers given at an API boundary (seconds, counts, amounts), checked the same way everywhere: each
refusal is an :class:`InvalidInputError` naming the field and what would be accepted.

Pure functions, shared by the resource manager and the scheduler.
"""

from __future__ import annotations

import math

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["check_count", "check_seconds", "parse_number", "shown"]


def parse_number(value: object, *, field: str, accepted: str, allow_inf: bool = False) -> float:
    """``value`` (a number or a numeric string) as a finite float (``allow_inf``: or +infinity);
    ``accepted`` is said when it is not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(field, f"{shown(value)} is not a number; use {accepted}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(field, f"{shown(value)} is not a number; use {accepted}") from None
    except OverflowError:  # an integer beyond the largest float (about 1.8e308)
        raise InvalidInputError(field, f"{shown(value)} is too large; use {accepted}") from None
    if math.isnan(number) or (math.isinf(number) and not (allow_inf and number > 0)):
        raise InvalidInputError(field, f"{shown(value)} is not a finite number; use {accepted}")
    return number


def shown(value: object) -> str:
    """``repr(value)`` for a message, kept short: a huge integer is named by its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {math.floor(math.log10(abs(value))) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_seconds(
    value: float | None,
    name: str,
    *,
    allow_zero: bool,
    at_most: float | None = None,
    unlimited: bool = False,
) -> float | None:
    """``value`` as seconds (None stays None): finite, > 0 (or >= 0 when ``allow_zero``), and no more
    than ``at_most`` when given. ``unlimited``: infinity is accepted too (a wait without limit)."""
    if value is None:
        return None
    accepted = "seconds as a number (inf: without limit)" if unlimited else "seconds as a finite number"
    number = parse_number(value, field=name, accepted=accepted, allow_inf=unlimited)
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidInputError(name, f"must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    if at_most is not None and number > at_most:
        raise InvalidInputError(
            name, f"must be at most {at_most:.12g} seconds ({at_most / 86400:g} days), got {shown(value)}"
        )
    return number


def check_count(value: object, name: str, *, at_least: int, at_most: int | None = None) -> int:
    """``value`` as a whole number from ``at_least`` (to ``at_most`` when given); a bool, a fraction or
    a string is refused."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < at_least
        or (at_most is not None and value > at_most)
    ):
        bounds = f"from {at_least} to {at_most}" if at_most is not None else f"of at least {at_least}"
        raise InvalidInputError(name, f"must be a whole number {bounds}, got {shown(value)}")
    return value
