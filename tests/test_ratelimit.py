"""Token buckets (fednode._ratelimit): no I/O, times passed in, so exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode._config._config import Rate, parse_rate
from fednode._peers._ratelimit import PeerRates, RateLimiter, TokenBucket


class TestTokenBucket:
    """A bucket starts full, holds 10 s worth of its rate, and says when the next token comes."""

    def test_burst_then_the_rate(self) -> None:
        bucket = TokenBucket(Rate(60, 60.0), now=0.0)  # 1/s, burst 10
        assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
        assert bucket.take(0.0) == pytest.approx(1.0)
        assert bucket.take(0.5) == pytest.approx(0.5)
        assert bucket.take(1.0) == 0.0
        assert bucket.take(1.0) == pytest.approx(1.0)
        assert bucket.take(100.0) == 0.0  # refilled to the burst, not beyond
        assert sum(bucket.take(100.0) == 0.0 for _ in range(20)) == 9

    def test_a_slow_rate_has_a_burst_of_one(self) -> None:
        bucket = TokenBucket(parse_rate("6/min"), now=0.0)  # 0.1/s: 10 s worth is one token
        assert bucket.take(0.0) == 0.0
        assert bucket.take(0.0) == pytest.approx(10.0)

    def test_a_new_rate_applies_at_once(self) -> None:
        bucket = TokenBucket(Rate(6000, 60.0), now=0.0)  # burst 1000
        bucket.set_rate(Rate(60, 60.0), now=0.0)
        assert sum(bucket.take(0.0) == 0.0 for _ in range(50)) == 10

    @settings(max_examples=200, deadline=None)
    @given(count=st.integers(1, 10_000), steps=st.lists(st.floats(0, 5), max_size=200))
    def test_never_more_than_the_burst_plus_the_rate(self, count: int, steps: list[float]) -> None:
        rate = Rate(count, 60.0)
        bucket = TokenBucket(rate, now=0.0)
        now, granted = 0.0, 0
        for step in steps:
            now += step
            wait = bucket.take(now)
            granted += wait == 0.0
            assert wait >= 0.0
        assert granted <= rate.burst + now * rate.per_second + 1e-6


class TestRateLimiter:
    """One bucket per key, and never more than max_keys of them."""

    def test_keys_are_independent(self) -> None:
        limiter = RateLimiter(Rate(6, 60.0))  # burst 1
        assert limiter.take("a", 0.0) == 0.0
        assert limiter.take("a", 0.0) > 0
        assert limiter.take("b", 0.0) == 0.0

    def test_memory_is_bounded(self) -> None:
        limiter = RateLimiter(Rate(6, 60.0), max_keys=16)
        for i in range(1000):
            limiter.take(f"address-{i}", 0.0)
            assert len(limiter) <= 16
        # full buckets go first: a key seen long ago costs nothing to forget
        assert limiter.take("fresh", 1000.0) == 0.0 and len(limiter) <= 16


def test_peer_rates_follow_each_peers_configured_rate() -> None:
    rates = {"node-b": Rate(6, 60.0)}
    limited: list[str] = []
    peers = PeerRates(rates.get, limited.append)
    assert peers.take("node-b", 0.0) == 0.0
    assert peers.take("node-b", 0.0) == pytest.approx(10.0)
    assert peers.take("stranger", 0.0) == 0.0  # not registered: not limited here
    rates["node-b"] = Rate(60, 60.0)  # a reload at 1.0: 1/s from then on (0.1 token was there)
    peers.retune("node-b", 1.0)
    assert peers.take("node-b", 1.5) == pytest.approx(0.4)
    assert peers.take("node-b", 1.9) == 0.0
    rates["node-b"] = Rate(6, 60.0)  # not retuned: from the next request on (burst 1 from then)
    assert peers.take("node-b", 3.9) == 0.0
    assert peers.take("node-b", 3.9) == pytest.approx(10.0)
    assert limited == ["node-b", "node-b", "node-b"]


@pytest.mark.parametrize(("text", "rate"), [("6000/min", Rate(6000, 60.0)), ("100/s", Rate(100, 1.0)),
                                            (" 5 / hour ", Rate(5, 3600.0)), ("1/second", Rate(1, 1.0))])
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate
