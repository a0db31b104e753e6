"""Exponential backoff with full jitter (sans-I/O: it only computes delays)."""

from __future__ import annotations

import random
from collections.abc import Callable

from ._config import BackoffConfig


def full_jitter(cap: float) -> float:
    """The default jitter: a uniform draw from ``[0, cap]``."""
    return random.uniform(0.0, cap)


class Backoff:
    """Delays for successive reconnect attempts: ``jitter(min(max, initial * multiplier**attempt))``.

    Args:
        config: the ``[backoff]`` section.
        jitter: maps the attempt's cap to the actual delay; tests pass ``lambda cap: cap``.
    """

    def __init__(self, config: BackoffConfig, jitter: Callable[[float], float] = full_jitter) -> None:
        self.config = config
        self._jitter = jitter
        self.attempt = 0

    def cap(self) -> float:
        """The upper bound of the next delay."""
        # Clamp the exponent so a long outage never overflows a float.
        exponent = min(self.attempt, 64)
        return min(self.config.max, self.config.initial * self.config.multiplier**exponent)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        delay = min(max(0.0, self._jitter(self.cap())), self.config.max)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a link stayed up for ``reset_after``)."""
        self.attempt = 0
