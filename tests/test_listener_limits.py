"""Strangers on the control port: they cannot lock real peers out of the handshake, nor flood the log.

The connections here are in-memory streams, so all of it runs under the MockClock; each stream is
given the remote address the test wants it to come from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

import fednode
from fednode._config._logging import ThrottledLog
from fednode._peers import _listener
from fednode._peers import _wire as wire
from fednode._peers._listener import MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS, HandshakeSlots, address_of

from conftest import node_config
from helpers import token_from


class Remotes:
    """Gives each in-memory connection the remote address a test chose (the listener asks `_remote_of`)."""

    def __init__(self) -> None:
        self.of: dict[int, str] = {}

    def __call__(self, stream: trio.abc.Stream) -> str:
        return self.of.get(id(stream), "memory")


@pytest.fixture
def remotes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Remotes]:
    chosen = Remotes()
    monkeypatch.setattr(_listener, "_remote_of", chosen)
    yield chosen


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@asynccontextmanager
async def node_a() -> AsyncIterator[fednode.Node]:
    config = node_config("node-a", peers=[{"id": "node-b"}], link={"handshake_timeout": "5s"})
    with trio.fail_after(100):  # virtual seconds: a hang fails the test instead of stalling the run
        async with fednode.open_node(config) as node:
            yield node


class Silent:
    """A connection that never sends a byte; ``closed_at`` is when the node closed it."""

    def __init__(self) -> None:
        self.closed_at: float | None = None

    async def watch(self, client: trio.abc.Stream) -> None:
        while await client.receive_some(65536):
            pass
        self.closed_at = trio.current_time()


async def open_silent(node: fednode.Node, nursery: trio.Nursery, remotes: Remotes, remote: str) -> Silent:
    client, server = trio.testing.memory_stream_pair()
    remotes.of[id(server)] = remote
    silent = Silent()
    nursery.start_soon(node._listener.handle_connection, server)
    nursery.start_soon(silent.watch, client)
    await trio.testing.wait_all_tasks_blocked()
    return silent


async def upgrade(node: fednode.Node, nursery: trio.Nursery, remotes: Remotes, remote: str,
                  token: str | None) -> WebSocketConnection:
    """An HTTP upgrade to ``node`` from ``remote`` (with ``token`` as its Bearer credential, if any)."""
    client, server = trio.testing.memory_stream_pair()
    remotes.of[id(server)] = remote
    nursery.start_soon(node._listener.handle_connection, server)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    return await wrap_client_stream(nursery, client, "127.0.0.1", node.control_path, extra_headers=headers)


async def say_hello(ws: WebSocketConnection, as_id: str) -> None:
    await ws.send_message(wire.encode(wire.Hello(node=as_id)))
    assert isinstance(wire.decode(await ws.get_message()), wire.Hello)


async def refused_upgrade(node: fednode.Node, remotes: Remotes, remote: str, token: str | None) -> None:
    """An upgrade that the node must refuse (trio-websocket raises the refusal from its reader task)."""
    refused = False
    try:
        async with trio.open_nursery() as nursery:
            await upgrade(node, nursery, remotes, remote, token)
    except* ConnectionRejected:
        refused = True
    assert refused


class TestHandshakeSlots:
    """Connections that hold handshake slots open cannot keep a real peer from linking up."""

    async def test_peer_links_up_while_strangers_fill_every_slot(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        async with node_a() as a, trio.open_nursery() as nursery:
            start = trio.current_time()
            per_address = MAX_PENDING_HANDSHAKES // 16
            silent = [await open_silent(a, nursery, remotes, f"203.0.113.{i // per_address}:{40000 + i}")
                      for i in range(MAX_PENDING_HANDSHAKES)]
            assert a._listener.pending == MAX_PENDING_HANDSHAKES
            assert all(s.closed_at is None for s in silent)

            with trio.fail_after(1):
                ws = await upgrade(a, nursery, remotes, "192.0.2.7:5000", token_from("node-b", "node-a"))
                await say_hello(ws, "node-b")
                await a.wait_connected("node-b")
            assert a.peer_states()["node-b"].direction == "inbound"
            # The stranger that had waited longest made room, at once; the others still wait.
            assert [i for i, s in enumerate(silent) if s.closed_at is not None] == [0]
            assert silent[0].closed_at == start
            assert a._listener.pending == MAX_PENDING_HANDSHAKES - 1  # the peer's handshake is over
            assert a.refused == {"handshake_evicted": 1}
            assert [(e["reason"], e["remote"]) for e in events(logs, "handshake.evicted")] == [
                ("total_limit", "203.0.113.0:40000")]
            nursery.cancel_scope.cancel()

    async def test_peer_links_up_from_the_address_strangers_flood(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes) -> None:
        """On loopback every attacker shares the peer's address: the peer still gets through."""
        async with node_a() as a, trio.open_nursery() as nursery:
            start = trio.current_time()
            silent = [await open_silent(a, nursery, remotes, f"127.0.0.1:{40000 + i}")
                      for i in range(MAX_PENDING_HANDSHAKES + 44)]
            assert a._listener.pending == MAX_PENDING_PER_ADDRESS
            with trio.fail_after(1):
                ws = await upgrade(a, nursery, remotes, "127.0.0.1:5000", token_from("node-b", "node-a"))
                await say_hello(ws, "node-b")
                await a.wait_connected("node-b")
            assert trio.current_time() == start  # nobody waited for a handshake deadline
            assert sum(s.closed_at is not None for s in silent) == len(silent) - MAX_PENDING_PER_ADDRESS + 1
            nursery.cancel_scope.cancel()

    async def test_authenticated_handshake_is_not_evicted(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes) -> None:
        """Once a peer has presented a valid token, no number of strangers can take its slot."""
        async with node_a() as a, trio.open_nursery() as nursery:
            for i in range(MAX_PENDING_HANDSHAKES):
                await open_silent(a, nursery, remotes, f"203.0.113.{i % 16}:{40000 + i}")
            with trio.fail_after(1):
                ws = await upgrade(a, nursery, remotes, "192.0.2.7:5000", token_from("node-b", "node-a"))
            # Between its token and its hello, more than every slot's worth of strangers arrive.
            later = [await open_silent(a, nursery, remotes, f"198.51.100.{i % 64}:{40000 + i}")
                     for i in range(2 * MAX_PENDING_HANDSHAKES)]
            assert a._listener.pending == MAX_PENDING_HANDSHAKES
            with trio.fail_after(1):
                await say_hello(ws, "node-b")
                await a.wait_connected("node-b")
            assert sum(s.closed_at is None for s in later) == MAX_PENDING_HANDSHAKES - 1
            nursery.cancel_scope.cancel()

    async def test_an_address_at_its_cap_evicts_its_own_oldest(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        async with node_a() as a, trio.open_nursery() as nursery:
            start = trio.current_time()
            others = [await open_silent(a, nursery, remotes, f"198.51.100.9:{i}") for i in range(5)]
            flood = [await open_silent(a, nursery, remotes, f"203.0.113.5:{i}")
                     for i in range(MAX_PENDING_PER_ADDRESS)]
            assert a._listener.pending == MAX_PENDING_PER_ADDRESS + 5
            assert all(s.closed_at is None for s in others + flood)

            newest = await open_silent(a, nursery, remotes, "203.0.113.5:9999")
            # Its own address's oldest goes, although another address's connections are older still.
            assert [s.closed_at for s in flood] == [start] + [None] * (MAX_PENDING_PER_ADDRESS - 1)
            assert all(s.closed_at is None for s in [*others, newest])
            assert a._listener.pending == MAX_PENDING_PER_ADDRESS + 5
            assert [e["reason"] for e in events(logs, "handshake.evicted")] == ["address_limit"]

            # The survivors still get the whole handshake timeout.
            await trio.sleep(10)
            assert {s.closed_at for s in [*others, *flood[1:], newest]} == {start + 5.0}
            assert a._listener.pending == 0
            assert a.refused == {"handshake_evicted": 1, "handshake_timeout": MAX_PENDING_PER_ADDRESS + 5}
            nursery.cancel_scope.cancel()

    def test_ipv6_hosts_count_by_their_64(self) -> None:
        assert address_of("2001:db8:1:2:aaaa::1:443") == address_of("2001:db8:1:2:bbbb::7:80") == "2001:db8:1:2::/64"
        assert address_of("2001:db8:1:3::1:443") != address_of("2001:db8:1:2::1:443")
        assert address_of("::ffff:192.0.2.1:80") == address_of("192.0.2.1:81") == "192.0.2.1"
        assert address_of("memory") == "memory"

    @given(st.lists(st.tuples(st.sampled_from(["admit", "authenticate", "release"]), st.integers(0, 5)),
                    max_size=300))
    def test_slots_stay_bounded(self, operations: list[tuple[str, int]]) -> None:
        """Whatever arrives and leaves, no more than the limits are pending, and every eviction is a cancel."""
        trio.run(self._check_slots, operations)  # cancel scopes want a Trio run to be asked about

    @staticmethod
    async def _check_slots(operations: list[tuple[str, int]]) -> None:
        slots = HandshakeSlots(limit=8, per_address=3)
        held: list[_listener.PendingHandshake] = []
        for operation, n in operations:
            if operation == "admit":
                pending = slots.admit(f"10.0.0.{n}")
                if pending is None:
                    assert len(slots) == 8 and all(p.authenticated for p in held if p.evicted is None)
                else:
                    held.append(pending)
            elif held:
                chosen = held[n % len(held)]
                if operation == "authenticate":
                    slots.authenticated(chosen)
                else:
                    slots.release(chosen)
                    held.remove(chosen)
            live = [p for p in held if p.evicted is None]
            assert len(slots) == len(live) <= 8
            for address in {p.address for p in live}:
                assert sum(1 for p in live if p.address == address and not p.authenticated) <= 3
            assert all(p.scope.cancel_called == (p.evicted is not None) for p in held)
            assert not any(p.authenticated for p in held if p.evicted is not None)


class TestLogFlood:
    """Refused and dropped connections are logged per reason at a bounded rate, and counted in full."""

    async def test_refused_burst_is_summarised(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        async with node_a() as a:
            for i in range(200):
                await refused_upgrade(a, remotes, f"203.0.113.{i % 50}:{i}", "a.b.c" if i % 2 else None)
            assert a.refused == {"garbage": 100, "missing": 100}
            lines = events(logs, "auth.refused")
            burst = a._listener.log.burst
            # One burst of lines per reason, none of them with a count yet: nothing was suppressed before.
            assert sorted(e["reason"] for e in lines) == ["garbage"] * burst + ["missing"] * burst
            assert not any("suppressed" in e for e in lines)

            await trio.sleep(1)
            await refused_upgrade(a, remotes, "203.0.113.1:1", "a.b.c")
            last = events(logs, "auth.refused")[-1]
            assert (last["reason"], last["suppressed"], last["remote"]) == ("garbage", 100 - burst, "203.0.113.1:1")
            assert a.refused["garbage"] == 101

    async def test_sustained_flood_gets_a_line_a_second(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        async with node_a() as a:
            start = trio.current_time()
            for i in range(1000):  # 100 a second for 10 seconds
                await refused_upgrade(a, remotes, f"203.0.113.{i % 50}:{i}", "a.b.c")
                await trio.sleep(0.01)
            await trio.sleep(1)
            await refused_upgrade(a, remotes, "203.0.113.1:1", "a.b.c")
            elapsed = trio.current_time() - start
            lines = events(logs, "auth.refused")
            assert len(lines) <= a._listener.log.burst + elapsed + 1
            assert sum(1 + e.get("suppressed", 0) for e in lines) == 1001 == a.refused["garbage"]

    async def test_connect_and_close_flood(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        """Connections closed at once, and connections sending junk: a few lines for the lot."""
        async with node_a() as a, trio.open_nursery() as nursery:
            for i in range(300):
                client, server = trio.testing.memory_stream_pair()
                remotes.of[id(server)] = f"203.0.113.{i % 3}:{i}"
                nursery.start_soon(a._listener.handle_connection, server)
                if i % 2:
                    await client.send_all(b"\x16\x03\x01garbage\r\n\r\n")
                await client.aclose()
            await trio.sleep(10)
            assert a._listener.pending == 0
            lines = [e for e in logs if e["event"].startswith(("handshake.", "listener."))]
            kinds = {(e["event"], e.get("reason") or e.get("error")) for e in lines}
            assert len(lines) <= a._listener.log.burst * len(kinds)
            assert sum(1 + e.get("suppressed", 0) for e in lines) <= 300
            assert events(logs, "listener.connection_failed") == []  # junk is a failed handshake, not a fault
            nursery.cancel_scope.cancel()

    async def test_eviction_flood(
            self, autojump_clock: trio.testing.MockClock, remotes: Remotes, logs: list[dict[str, Any]]) -> None:
        """Holding every slot and churning connections (each one evicting another) is limited too."""
        async with node_a() as a, trio.open_nursery() as nursery:
            for i in range(1000):
                await open_silent(a, nursery, remotes, f"203.0.113.{i % 20}:{i}")
            evicted = 1000 - MAX_PENDING_HANDSHAKES
            assert a.refused == {"handshake_evicted": evicted}
            lines = events(logs, "handshake.evicted")
            assert len(lines) <= 2 * a._listener.log.burst  # two reasons: address_limit, total_limit
            assert events(logs, "listener.too_many_handshakes") == []
            nursery.cancel_scope.cancel()


class TestThrottledLog:
    """The limit itself: a burst per key, then one line per interval carrying the count held back."""

    def test_burst_then_one_per_interval(self) -> None:
        now = [0.0]
        throttle = ThrottledLog(None, burst=3, interval=1.0, clock=lambda: now[0])
        assert [throttle.admit("auth.refused", "garbage") for _ in range(5)] == [0, 0, 0, None, None]
        assert throttle.admit("auth.refused", "missing") == 0  # another reason has its own bucket
        now[0] = 0.5
        assert throttle.admit("auth.refused", "garbage") is None
        now[0] = 1.0
        assert throttle.admit("auth.refused", "garbage") == 3
        assert throttle.admit("auth.refused", "garbage") is None
        now[0] = 100.0  # refills up to the burst, no further
        assert [throttle.admit("auth.refused", "garbage") for _ in range(4)] == [1, 0, 0, None]
