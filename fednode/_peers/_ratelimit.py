"""Rate limits as token buckets, without I/O: the caller passes the time in.

A bucket for a :class:`~fednode._config.Rate` of ``count`` per ``per`` seconds refills at
``count / per`` tokens a second up to :attr:`Rate.burst` (10 seconds' worth), starts full, and
each request takes one token. A request finding no token is refused with the seconds until
the next one (the ``retryAfter`` a caller is told). :class:`RateLimiter` keeps one bucket per key
(a peer, a client token, an address) and never more than ``max_keys`` of them: a full bucket is
the same as none, so full ones are dropped first, then the least recently used.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Hashable

from .._config._config_load import Rate

_EPSILON = 1e-9

#: Buckets a limiter keeps at most (keys such as addresses are not bounded by the configuration).
MAX_KEYS = 10_000


class TokenBucket:
    """One token bucket; starts full at time ``now``."""

    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.rate.burst, self.tokens + (now - self.updated) * self.rate.per_second)
            self.updated = now

    def is_full(self, now: float) -> bool:
        """Whether the bucket is full at ``now`` (it then says nothing a new bucket would not)."""
        self._refill(now)
        return self.tokens >= self.rate.burst

    def take(self, now: float) -> float:
        """Take a token at ``now``: 0.0 when taken, else the seconds until one is there (nothing taken)."""
        self._refill(now)
        if self.tokens >= 1.0 - _EPSILON:  # (a token refilled to the instant is there, rounding or not)
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate.per_second

    def set_rate(self, rate: Rate, now: float) -> None:
        """Change the rate from ``now`` on (tokens above the new burst are dropped)."""
        self._refill(now)
        self.rate = rate
        self.tokens = min(self.tokens, rate.burst)


class RateLimiter:
    """Token buckets by key, all at one rate (which may change); at most ``max_keys`` buckets kept."""

    def __init__(self, rate: Rate, *, max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[Hashable, TokenBucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def set_rate(self, rate: Rate, now: float) -> None:
        """Apply a new rate to every key from ``now`` on."""
        self.rate = rate
        for bucket in self._buckets.values():
            bucket.set_rate(rate, now)

    def take(self, key: Hashable, now: float) -> float:
        """Take a token for ``key`` at ``now``: 0.0 when taken, else the seconds until one is there."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        """Make room for more buckets: drop the full ones, else the least recently used eighth (so that
        keys arriving one after another cost a scan of the buckets only now and then)."""
        for key in [key for key, bucket in self._buckets.items() if bucket.is_full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for _ in range(max(1, self.max_keys // 8)):
                self._buckets.popitem(last=False)


class PeerRates:
    """One token bucket per peer, each at that peer's own configured rate (looked up at every request,
    so a reload that changes it applies at once).

    Args:
        rate_of: the rate of a registered peer (None: not registered, not limited here).
        on_limited: called with the peer's id for each request refused.
    """

    def __init__(self, rate_of: Callable[[str], Rate | None], on_limited: Callable[[str], None] | None = None) -> None:
        self._rate_of = rate_of
        self._on_limited = on_limited
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, peer_id: str, now: float) -> float:
        """Take a token for a request from ``peer_id`` at ``now``: 0.0, or the seconds until one is there."""
        rate = self._rate_of(peer_id)
        if rate is None:
            return 0.0
        bucket = self._buckets.get(peer_id)
        if bucket is None:
            bucket = self._buckets[peer_id] = TokenBucket(rate, now)
        elif bucket.rate != rate:
            bucket.set_rate(rate, now)
        wait = bucket.take(now)
        if wait and self._on_limited is not None:
            self._on_limited(peer_id)
        return wait

    def retune(self, peer_id: str, now: float) -> None:
        """The peer's rate changed at ``now`` (a reload): it applies from then on, not from its next request."""
        bucket, rate = self._buckets.get(peer_id), self._rate_of(peer_id)
        if bucket is not None and rate is not None:
            bucket.set_rate(rate, now)

    def keep(self, peer_ids: Collection[str]) -> None:
        """Drop the buckets of peers not among ``peer_ids`` (removed ones)."""
        for peer_id in self._buckets.keys() - set(peer_ids):
            del self._buckets[peer_id]
