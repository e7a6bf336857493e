"""Retry policies: delay maths and argument validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from aiki_client import RetryPolicy, retry


def test_fixed_delay_is_the_same_every_time() -> None:
    policy = retry.fixed(max_attempts=5, delay_ms=250)

    assert [policy.delay_ms(n) for n in range(1, 5)] == [250, 250, 250, 250]
    assert policy.max_attempts == 5


def test_exponential_doubles_by_default() -> None:
    policy = retry.exponential(max_attempts=6, base_delay_ms=100)

    assert [policy.delay_ms(n) for n in range(1, 6)] == [100, 200, 400, 800, 1600]


def test_exponential_with_factor() -> None:
    policy = retry.exponential(max_attempts=5, base_delay_ms=10, factor=3.0)

    assert [policy.delay_ms(n) for n in range(1, 5)] == [10, 30, 90, 270]


def test_exponential_fractional_factor_gives_whole_milliseconds() -> None:
    policy = retry.exponential(max_attempts=4, base_delay_ms=100, factor=1.5)

    delays = [policy.delay_ms(n) for n in range(1, 4)]
    assert delays == [100, 150, 225]
    assert all(type(d) is int for d in delays)


def test_exponential_is_capped() -> None:
    policy = retry.exponential(max_attempts=10, base_delay_ms=1000, max_delay_ms=5000)

    assert [policy.delay_ms(n) for n in range(1, 7)] == [1000, 2000, 4000, 5000, 5000, 5000]


def test_cap_below_base_caps_every_delay() -> None:
    policy = retry.exponential(max_attempts=3, base_delay_ms=1000, max_delay_ms=10)

    assert [policy.delay_ms(n) for n in (1, 2)] == [10, 10]


def test_capped_exponential_stays_capped_for_very_late_attempts() -> None:
    """A "retry nearly forever, at most every 30 s" policy must not break at a high attempt number."""
    policy = retry.exponential(max_attempts=10_000, base_delay_ms=1000, max_delay_ms=30_000)

    assert policy.delay_ms(60) == 30_000
    assert policy.delay_ms(2_000) == 30_000


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_jittered_stays_within_zero_and_the_exponential_delay(attempt: int) -> None:
    policy = retry.jittered(max_attempts=10, base_delay_ms=100, max_delay_ms=1000)
    ceiling = min(100 * 2 ** (attempt - 1), 1000)

    delays = [policy.delay_ms(attempt) for _ in range(300)]

    assert all(0 <= d <= ceiling for d in delays)
    assert all(type(d) is int for d in delays)
    assert len(set(delays)) > 10  # actually random, not a constant
    assert max(delays) > ceiling / 2  # full jitter spans the range, not a slice of it


def test_jittered_is_exponential_with_jitter() -> None:
    policy = retry.jittered(max_attempts=4, base_delay_ms=100, max_delay_ms=1000, factor=3.0)

    assert policy.jitter is True
    assert dataclasses.replace(policy, jitter=False) == retry.exponential(4, 100, 1000, 3.0)


def test_zero_delay_is_allowed() -> None:
    assert retry.fixed(max_attempts=3, delay_ms=0).delay_ms(2) == 0
    assert retry.jittered(max_attempts=3, base_delay_ms=0).delay_ms(2) == 0


@pytest.mark.parametrize(
    ("policy", "retries"),
    [
        (retry.fixed(max_attempts=1, delay_ms=10), []),
        (retry.fixed(max_attempts=3, delay_ms=10), [1, 2]),
        (retry.exponential(max_attempts=5, base_delay_ms=10), [1, 2, 3, 4]),
    ],
)
def test_should_retry_counts_every_attempt(policy: RetryPolicy, retries: list[int]) -> None:
    """`max_attempts` includes the first attempt: a retry follows attempt n only while n < max."""
    assert [n for n in range(1, 10) if policy.should_retry(n)] == retries
    assert not policy.should_retry(policy.max_attempts)
    assert not policy.should_retry(policy.max_attempts + 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: retry.fixed(max_attempts=0, delay_ms=10), "max_attempts"),
        (lambda: retry.fixed(max_attempts=-1, delay_ms=10), "max_attempts"),
        (lambda: retry.fixed(max_attempts=2.5, delay_ms=10), "max_attempts"),
        (lambda: retry.fixed(max_attempts="3", delay_ms=10), "max_attempts"),
        (lambda: retry.fixed(max_attempts=3, delay_ms=-1), "delay"),
        (lambda: retry.exponential(max_attempts=3, base_delay_ms=-5), "delay"),
        (lambda: retry.exponential(max_attempts=3, base_delay_ms=10, max_delay_ms=-1), "max_delay_ms"),
        (lambda: retry.exponential(max_attempts=3, base_delay_ms=10, factor=0.5), "factor"),
        (lambda: retry.jittered(max_attempts=3, base_delay_ms=10, factor=0.0), "factor"),
        (lambda: retry.jittered(max_attempts=0, base_delay_ms=10), "max_attempts"),
    ],
)
def test_bad_arguments_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_policies_are_frozen_values() -> None:
    policy = retry.fixed(max_attempts=3, delay_ms=10)

    assert policy == retry.fixed(max_attempts=3, delay_ms=10)
    assert hash(policy) == hash(retry.fixed(max_attempts=3, delay_ms=10))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 4  # type: ignore[misc]


def test_retry_module_surface() -> None:
    assert retry.__all__ == ["RetryPolicy", "exponential", "fixed", "jittered"]
    assert retry.RetryPolicy is RetryPolicy
