"""Retry policies for tasks (`@task(..., retry=...)`) and whole runs (`.v(..., retry=...)`).

    retry.fixed(max_attempts=3, delay_ms=1000)
    retry.exponential(max_attempts=5, base_delay_ms=1000, max_delay_ms=30_000, factor=2.0)
    retry.jittered(max_attempts=5, base_delay_ms=1000, max_delay_ms=30_000)  # full jitter

`max_attempts` counts every attempt, the first included: `max_attempts=1` means no retry.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["RetryPolicy", "exponential", "fixed", "jittered"]

# No retry waits longer than this, even an uncapped exponential one.
_LONGEST_DELAY_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_delay_ms: int
    max_delay_ms: int | None = None
    factor: float = 1.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.base_delay_ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {self.base_delay_ms!r}")
        if self.max_delay_ms is not None and self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms!r}")
        if self.factor < 1.0:
            raise ValueError(f"factor must be >= 1.0, got {self.factor!r}")

    def should_retry(self, failed_attempt: int) -> bool:
        """Whether another attempt follows attempt number `failed_attempt` (1-based)."""
        return failed_attempt < self.max_attempts

    def delay_ms(self, failed_attempt: int) -> int:
        """Delay before the attempt after `failed_attempt` (1-based)."""
        try:
            delay = self.base_delay_ms * self.factor ** (failed_attempt - 1)
        except OverflowError:  # a late attempt of a long policy: the cap decides
            delay = math.inf
        delay = min(delay, self.max_delay_ms if self.max_delay_ms is not None else _LONGEST_DELAY_MS)
        if self.jitter:
            delay = random.uniform(0, delay)
        return int(delay)


def fixed(max_attempts: int, delay_ms: int) -> RetryPolicy:
    """The same delay between every attempt."""
    return RetryPolicy(max_attempts=max_attempts, base_delay_ms=delay_ms)


def exponential(
    max_attempts: int, base_delay_ms: int, max_delay_ms: int | None = None, factor: float = 2.0
) -> RetryPolicy:
    """Delays base, base*factor, base*factor², … capped at `max_delay_ms`."""
    return RetryPolicy(max_attempts, base_delay_ms, max_delay_ms, factor)


def jittered(
    max_attempts: int, base_delay_ms: int, max_delay_ms: int | None = None, factor: float = 2.0
) -> RetryPolicy:
    """Exponential with full jitter: each delay is uniform in [0, exponential delay]."""
    return RetryPolicy(max_attempts, base_delay_ms, max_delay_ms, factor, jitter=True)
