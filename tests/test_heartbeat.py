"""The heartbeat state machine on its own (no sockets, no sleeps, times passed in exactly), and driven by a link."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode._peers import _wire as wire
from fednode._peers._heartbeat import SEQ_BITS, Heartbeat, stall_limit
from fednode._peers._link import Direction, Handlers, Link, LinkSettings

from conftest import node_config
from memws import ws_pair

INTERVAL, TIMEOUT = 5.0, 15.0


class Scripted:
    """A seq source that hands out the given numbers in turn."""

    def __init__(self, *values: int) -> None:
        self._values: Iterator[int] = iter(values)

    def getrandbits(self, k: int, /) -> int:
        assert k == SEQ_BITS
        return next(self._values)


def heartbeat(start: float = 100.0, *seqs: int) -> Heartbeat:
    return Heartbeat(interval=INTERVAL, timeout=TIMEOUT, start=start, rng=Scripted(*seqs) if seqs else None)


def test_first_ping_is_due_at_once_then_every_interval() -> None:
    hb = heartbeat(100.0, 11, 12)
    assert hb.next_ping_due(100.0)
    assert hb.ping(100.0) == 11
    assert hb.next_ping_at == 105.0
    assert not hb.next_ping_due(104.999)
    assert hb.next_ping_due(105.0)
    assert hb.ping(105.5) == 12  # late: the next one counts from when this one was sent
    assert hb.next_ping_at == 110.5


def test_silent_peer_is_dead_exactly_one_timeout_after_the_start() -> None:
    hb = heartbeat(100.0, 1, 2, 3)
    for t in (100.0, 105.0, 110.0):
        hb.ping(t)
    assert hb.dead_at == 115.0
    assert not hb.is_dead(114.999)
    assert hb.is_dead(115.0)
    assert hb.rtt is None


def test_pong_answering_our_ping_keeps_the_link_alive_from_its_arrival() -> None:
    hb = heartbeat(100.0, 7, 8)
    hb.ping(100.0)
    hb.ping(105.0)
    assert hb.pong(7, 106.25) == 6.25  # an old ping, answered late, still counts
    assert hb.rtt == 6.25
    assert hb.dead_at == 121.25
    assert not hb.is_dead(121.0)
    assert hb.is_dead(121.25)
    assert hb.pong(8, 106.5) == 1.5
    assert hb.dead_at == 121.5
    assert hb.stray_pongs == 0


@pytest.mark.parametrize("pong", ["wrong seq", "replayed seq", "unsolicited"])
def test_pongs_answering_no_ping_of_ours_change_nothing_but_the_count(pong: str) -> None:
    hb = heartbeat(100.0, 40, 41)
    if pong != "unsolicited":
        hb.ping(100.0)
    if pong == "replayed seq":
        assert hb.pong(40, 101.0) == 1.0
    before = (hb.dead_at, hb.rtt)
    seq = {"wrong seq": 40 ^ 1, "replayed seq": 40, "unsolicited": 1}[pong]
    for i in range(3):
        assert hb.pong(seq, 102.0 + i) is None
    assert (hb.dead_at, hb.rtt) == before
    assert hb.stray_pongs == 3


def test_seqs_are_unique_among_the_pings_outstanding() -> None:
    hb = heartbeat(0.0, 5, 5, 5, 6)
    assert hb.ping(0.0) == 5
    assert hb.ping(5.0) == 6  # 5 is still waiting for its pong: drawn again
    assert hb.pong(5, 6.0) == 6.0
    assert hb.pong(6, 6.0) == 1.0


def test_default_seqs_are_random_53_bit_numbers() -> None:
    hb = Heartbeat(interval=INTERVAL, timeout=TIMEOUT, start=0.0)
    seqs = {hb.ping(float(t)) for t in range(4)}
    assert len(seqs) == 4
    assert all(0 <= seq < 2**SEQ_BITS for seq in seqs)


def test_only_the_pings_of_the_last_timeout_are_remembered() -> None:
    # ceil(15 / 5) + 1 = 4 pings kept: a pong for an older one could not keep the link up anyway.
    hb = heartbeat(0.0, 1, 2, 3, 4, 5)
    for t in range(5):
        hb.ping(5.0 * t)
    assert hb.pong(1, 20.0) is None  # forgotten
    assert hb.stray_pongs == 1
    assert hb.pong(2, 20.0) == 15.0


def test_next_event_is_the_next_ping_or_death_whichever_comes_first() -> None:
    hb = heartbeat(0.0, 1)
    assert hb.next_event_at() == 0.0
    hb.ping(0.0)
    assert hb.next_event_at() == 5.0
    hb.next_ping_at = 100.0  # as if the caller stopped pinging: death comes first
    assert hb.next_event_at() == 15.0


def test_stall_limit_is_half_the_slack() -> None:
    assert stall_limit(5.0, 15.0) == 5.0
    assert heartbeat().stall_limit == (TIMEOUT - INTERVAL) / 2
    assert stall_limit(1.0, 1.05) == 0.1  # never below 0.1 s


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        Heartbeat(interval=0.0, timeout=TIMEOUT, start=0.0)


# One step: ("ping", dt) | ("answer", dt, which outstanding ping) | ("replay", dt, which answered ping)
# | ("guess", dt, seq). Times never go backwards; dt = 0 (several events at one instant) is allowed.
_dt = st.sampled_from([0.0, 0.001, 0.5, 1.0, 4.999, 5.0, 7.5, 15.0, 30.0]) | st.floats(0, 40)
_step = st.one_of(
    st.tuples(st.just("ping"), _dt),
    st.tuples(st.just("answer"), _dt, st.integers(0, 10)),
    st.tuples(st.just("replay"), _dt, st.integers(0, 10)),
    st.tuples(st.just("guess"), _dt, st.integers(0, 2**SEQ_BITS - 1)),
)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), interval=st.floats(0.5, 10), slack=st.floats(0.01, 30),
       steps=st.lists(_step, max_size=60))
def test_only_pongs_answering_outstanding_pings_extend_liveness(
        seed: int, interval: float, slack: float, steps: list[tuple[object, ...]]) -> None:
    timeout = interval + slack
    start = now = 1000.0
    hb = Heartbeat(interval=interval, timeout=timeout, start=start, rng=random.Random(seed))
    sent: dict[int, float] = {}  # every seq handed out -> when
    answered: set[int] = set()
    latest: int | None = None  # the newest ping, always still remembered
    alive_from = start  # the last pong that counted, or the start
    strays = 0
    for step in steps:
        now += float(step[1])  # type: ignore[arg-type]
        kind = step[0]
        if kind == "ping":
            latest = hb.ping(now)
            assert latest not in sent or latest in answered  # never two outstanding pings with one seq
            sent[latest] = now
            answered.discard(latest)
            assert hb.next_ping_at == now + interval
            continue
        outstanding = [seq for seq in sent if seq not in answered]
        if kind == "answer" and outstanding:
            seq = outstanding[int(step[2]) % len(outstanding)]  # type: ignore[call-overload]
        elif kind == "replay" and answered:
            seq = sorted(answered)[int(step[2]) % len(answered)]  # type: ignore[call-overload]
        else:
            seq = int(step[2]) if kind == "guess" else 12345  # type: ignore[call-overload]
        dead_at = hb.dead_at
        rtt = hb.pong(seq, now)
        if seq == latest and seq not in answered:
            assert rtt is not None  # the newest ping is always remembered
        if rtt is None:
            strays += 1
            assert hb.dead_at == dead_at  # a pong that does not count keeps nothing alive
        else:
            assert seq in sent and seq not in answered  # only an outstanding ping's pong counts
            assert rtt >= 0
            assert rtt == now - sent[seq]
            answered.add(seq)
            alive_from = now
        assert hb.stray_pongs == strays
        assert hb.dead_at == alive_from + timeout
        assert not hb.is_dead(alive_from + timeout - min(timeout / 2, 0.001))
        assert hb.is_dead(alive_from + timeout)
        assert hb.is_dead(now) == (now >= alive_from + timeout)


async def test_link_sends_the_pings_its_heartbeat_hands_out(autojump_clock: trio.testing.MockClock) -> None:
    """The link drives the machine: the seqs it is handed go out at 0, 5, 10, ... and their pongs count."""
    async with trio.open_nursery() as nursery:
        ws_a, raw = await ws_pair(nursery)
        config = node_config("node-a", heartbeat={"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s"})
        a = Link(ws_a, local_id="node-a", peer_id="node-b", direction=Direction.OUTBOUND,
                 settings=LinkSettings(heartbeat=config.heartbeat), handlers=Handlers(),
                 rng=Scripted(101, 102, 103, 104))
        nursery.start_soon(a.run)
        start = trio.current_time()
        seen: list[tuple[int, float]] = []
        for _ in range(4):
            message = wire.decode(await raw.get_message())
            assert isinstance(message, wire.Ping)
            seen.append((message.seq, trio.current_time() - start))
            await trio.sleep(0.5)
            await raw.send_message(wire.encode(wire.Pong(seq=message.seq)))
        assert seen == [(101, 0.0), (102, 5.0), (103, 10.0), (104, 15.0)]
        await trio.sleep(0.1)
        assert a.is_up and a.rtt == pytest.approx(0.5)
        assert a.heartbeat.dead_at == pytest.approx(start + 15.5 + TIMEOUT)
        nursery.cancel_scope.cancel()
