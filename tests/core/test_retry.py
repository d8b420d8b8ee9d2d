"""RetryPolicy: how many retries, when, and which settings are refused."""

from __future__ import annotations

import math

import pytest

from codomyrmex_orchestration.core._retry import NO_RETRY, RetryPolicy
from codomyrmex_orchestration.errors import InvalidInputError


def test_delays_grow_by_the_backoff_and_stop_after_the_last_retry() -> None:
    policy = RetryPolicy(max_retries=3, retry_delay=0.5, backoff=2.0)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, None]


def test_no_retries_is_one_shared_policy_and_ends_after_the_first_attempt() -> None:
    assert RetryPolicy.of() is NO_RETRY and RetryPolicy.of(0, 0.0, 2.0) is NO_RETRY
    assert NO_RETRY.delay_after(1) is None
    assert RetryPolicy.of(1).delay_after(1) == 0.0


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": NAN}, "max_retries"),
        ({"max_retries": "2"}, "max_retries"),
        ({"max_retries": 101}, "max_retries"),
        ({"retry_delay": -0.1}, "retry_delay"),
        ({"retry_delay": NAN}, "retry_delay"),
        ({"retry_delay": INF}, "retry_delay"),
        ({"retry_delay": 3601}, "retry_delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"backoff": NAN}, "backoff"),
        ({"backoff": INF}, "backoff"),
        ({"backoff": 1e308}, "backoff"),
    ],
)
def test_settings_outside_a_steps_ranges_are_refused_naming_the_field(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(InvalidInputError, match=rf"^{field}: "):
        RetryPolicy.of(**{"max_retries": 1, **kwargs})


def test_the_largest_settings_still_give_finite_delays() -> None:
    policy = RetryPolicy.of(max_retries=100, retry_delay="3600", backoff=10)  # type: ignore[arg-type]  # text read as a number
    delays = [policy.delay_after(n) for n in range(1, 101)]
    assert delays[0] == 3600.0 and all(d is not None and math.isfinite(d) for d in delays)
    assert policy.delay_after(101) is None
