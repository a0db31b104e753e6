"""Exponential backoff with full jitter (sans-I/O: it only computes delays)."""

from __future__ import annotations

import random
from collections.abc import Callable

from .._config._config import BackoffConfig


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
        #: Links in a row that ended before ``reset_after``.
        self.short_links = 0

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
        """Start again from ``initial``."""
        self.attempt = 0
        self.short_links = 0

    def link_ended(self, uptime: float) -> None:
        """Set the counter after a link that was up (authenticated) for ``uptime`` seconds has ended.

        A link that stayed up ``reset_after`` starts the sequence over. A shorter one still proves
        the peer reachable and willing, so the dials that failed before it no longer count: the next
        delay is at most ``initial`` once more (a restarted peer is found again at the first dial
        after it is back). But links that keep ending early are counted: each one in a row doubles
        the delay before the next dial, so a peer that accepts and drops is not hammered.
        """
        if uptime >= self.config.reset_after:
            self.short_links = 0
        else:
            self.short_links += 1
        self.attempt = max(0, self.short_links - 1)
