"""Reconnect backoff: exponential with full jitter; how links that were up set it; exact under MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import fednode
from fednode._config._config import BackoffConfig
from fednode._errors import HandshakeFailed
from fednode._peers import _supervisor
from fednode._peers._backoff import Backoff
from fednode._peers._handshake import Handshake
from fednode._peers._link import Direction, Handlers, Link, LinkSettings

from conftest import node_config
from helpers import refusing_dial
from memws import ws_pair


class TestBackoffSequence:
    """Delays double from initial up to max; jitter draws within [0, cap]; reset starts over."""

    def test_caps_double_up_to_max(self) -> None:
        backoff = Backoff(BackoffConfig(initial=0.5, max=4.0), jitter=lambda cap: cap)
        assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
        backoff.reset()
        assert backoff.next_delay() == 0.5

    def test_a_link_that_was_up_sets_the_next_delay(self) -> None:
        """After a stable link: from initial. After quick drops in a row: one more doubling per drop."""
        backoff = Backoff(BackoffConfig(initial=0.5, max=30.0, reset_after=10.0), jitter=lambda cap: cap)
        for _ in range(6):
            backoff.next_delay()  # six failed dials: the next cap would be 30 s
        backoff.link_ended(2.0)  # up, but for less than reset_after
        assert backoff.next_delay() == 0.5
        delays = []
        for _ in range(4):
            backoff.link_ended(0.1)  # accepts and drops, again and again
            delays.append(backoff.next_delay())
        assert delays == [1.0, 2.0, 4.0, 8.0]
        backoff.next_delay()  # and a failed dial in between still counts
        backoff.link_ended(0.1)
        assert backoff.next_delay() == 16.0
        backoff.link_ended(10.0)  # a stable link starts over
        assert [backoff.next_delay(), backoff.next_delay()] == [0.5, 1.0]
        backoff.link_ended(0.1)  # and the first quick drop after it is redialed quickly
        assert backoff.next_delay() == 0.5

    def test_full_jitter_stays_within_cap(self) -> None:
        backoff = Backoff(BackoffConfig(initial=1.0, max=8.0))
        for _ in range(200):
            cap = backoff.cap()
            assert 0.0 <= backoff.next_delay() <= cap

    def test_long_outage_does_not_overflow(self) -> None:
        backoff = Backoff(BackoffConfig(initial=0.5, max=30.0), jitter=lambda cap: cap)
        for _ in range(10_000):
            delay = backoff.next_delay()
        assert delay == 30.0


class TestSupervisorBackoff:
    """The supervisor waits exactly the backoff delay between failed attempts, in virtual time."""

    async def test_failed_dials_back_off_exponentially(self, autojump_clock: trio.testing.MockClock,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        attempts: list[float] = []
        monkeypatch.setattr(_supervisor, "dial", refusing_dial(attempts))
        config = node_config("node-a", backoff={"initial": "0.5s", "max": "4s"})
        async with fednode.open_node(config, jitter=lambda cap: cap) as node:
            start = trio.current_time()
            with pytest.raises(fednode.PeerConnectError, match="401 bad_signature"):
                await node.register_peer(fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:9"))
            await trio.sleep(20)
            offsets = [round(t - start, 6) for t in attempts]
            assert offsets[:7] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
            status = node.peer_states()["node-b"]
            assert status.state is fednode.PeerState.BACKOFF
            assert "401" in (status.last_error or "")

    async def test_quick_drops_back_off_and_a_stable_link_resets(self, autojump_clock: trio.testing.MockClock,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """A peer that accepts and then drops at once keeps the backoff growing; a stable link resets it."""
        attempts: list[float] = []
        # reset_after is 1 s in these configs
        monkeypatch.setattr(_supervisor, "dial", scripted_dial(attempts, [0.1, 0.1, 0.1, 5.0, 0.1, None]))
        config = node_config("node-a", backoff={"initial": "1s", "max": "60s", "reset_after": "1s"})
        async with fednode.open_node(config, jitter=lambda cap: cap) as node:
            start = trio.current_time()
            await node.register_peer(fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:9"))
            await trio.sleep(40)
            offsets = [round(t - start, 6) for t in attempts]
            # up 0.1 s, wait 1; up 0.1, wait 2; up 0.1, wait 4; up 5 s (stable: start over), wait 1;
            # up 0.1 (the first quick drop after a stable link), wait 1; fail, wait 2; fail, wait 4 ...
            assert offsets[:8] == [0.0, 1.1, 3.2, 7.3, 13.3, 14.4, 16.4, 20.4]
            assert node.peer_states()["node-b"].reconnects == 4

    async def test_failed_dials_before_a_link_do_not_delay_the_redial(
            self, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
        """The peer was down a while, then up for less than reset_after, then restarted: redialed after initial."""
        attempts: list[float] = []
        plan: list[float | None] = [None, None, None, None, 2.0, 30.0]  # 4 failures, a 2 s link, a stable one
        monkeypatch.setattr(_supervisor, "dial", scripted_dial(attempts, plan))
        config = node_config("node-a", backoff={"initial": "1s", "max": "60s", "reset_after": "10s"})
        async with fednode.open_node(config, jitter=lambda cap: cap) as node:
            start = trio.current_time()
            with pytest.raises(fednode.PeerConnectError):
                await node.register_peer(fednode.PeerConfig(id="node-b", control="ws://127.0.0.1:9"))
            await node.wait_connected("node-b", timeout=60)
            await trio.sleep(25)
            offsets = [round(t - start, 6) for t in attempts]
            # fail, wait 1; fail, wait 2; fail, wait 4; fail, wait 8; up 2 s, then the peer restarts: wait
            # initial (1 s), not the 16 s the four failures had reached; up for good.
            assert offsets == [0.0, 1.0, 3.0, 7.0, 15.0, 18.0]
            assert node.peer_states()["node-b"].state is fednode.PeerState.UP


def scripted_dial(attempts: list[float], plan: list[float | None]) -> Any:
    """A dial that follows ``plan``: None fails the dial; a number links up for that many seconds, then
    the far end drops the link. Dials beyond the plan fail."""
    lifetimes = iter(plan)

    async def dial(handshake: Handshake, peer: fednode.PeerConfig, nursery: trio.Nursery) -> Any:
        attempts.append(trio.current_time())
        lifetime = next(lifetimes, None)
        if lifetime is None:
            raise HandshakeFailed("cannot connect: connection refused")
        ws, remote = await ws_pair(nursery)
        other = Link(remote, local_id="node-b", peer_id="node-a", direction=Direction.INBOUND,
                     settings=LinkSettings(), handlers=Handlers())

        async def live_then_drop() -> None:
            with trio.move_on_after(lifetime):
                await other.run()
            other.stop(1000, "dropping")

        # The far end runs in the dialing connection's nursery: it ends with the link at the latest.
        nursery.start_soon(live_then_drop)
        return ws
    return dial
