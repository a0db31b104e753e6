"""Link behaviour under MockClock: heartbeat, deadlines, request correlation, protocol errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode import _wire as wire
from fednode._link import CLOSE_POLICY, Direction, Handlers, Link

from conftest import node_config
from helpers import next_frame as next_answered_frame
from memws import ws_pair

INTERVAL, TIMEOUT = 5.0, 15.0


def make_link(ws: WebSocketConnection, local: str, remote: str, handlers: Handlers | None = None,
              **link: Any) -> Link:
    config = node_config(local, heartbeat={"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s"},
                         link=link or {})
    direction = Direction.OUTBOUND if local < remote else Direction.INBOUND
    return Link(ws, local_id=local, peer_id=remote, direction=direction, config=config,
                handlers=handlers or Handlers())


@asynccontextmanager
async def linked_pair(a_handlers: Handlers | None = None,
                      b_handlers: Handlers | None = None) -> AsyncIterator[tuple[Link, Link]]:
    """Two running links joined by an in-memory WebSocket."""
    async with trio.open_nursery() as nursery:
        ws_a, ws_b = await ws_pair(nursery)
        a = make_link(ws_a, "node-a", "node-b", a_handlers)
        b = make_link(ws_b, "node-b", "node-a", b_handlers)
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        yield a, b
        nursery.cancel_scope.cancel()


async def next_frame(ws: WebSocketConnection, skip: tuple[type, ...] = (wire.Ping, wire.Pong)) -> wire.Message:
    while True:
        message = wire.decode(await ws.get_message())
        if not isinstance(message, skip):
            return message


class TestHeartbeat:
    """A link stays up while pongs flow and ends exactly one timeout after the last pong."""

    async def test_live_link_stays_up_and_measures_rtt(self, autojump_clock: trio.testing.MockClock) -> None:
        async with linked_pair() as (a, b):
            await trio.sleep(10 * TIMEOUT)
            assert a.is_up and b.is_up
            assert a.rtt is not None and a.rtt >= 0

    async def test_silent_peer_detected_at_exactly_timeout(self, autojump_clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            ws_a, _ws_b = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")
            start = trio.current_time()
            reason = await a.run()  # nobody reads ws_b: no pong ever comes back
            assert trio.current_time() - start == pytest.approx(TIMEOUT)
            assert reason == f"heartbeat timeout: no pong for {TIMEOUT:g}s"
            nursery.cancel_scope.cancel()

    async def test_peer_going_silent_later(self, autojump_clock: trio.testing.MockClock) -> None:
        """The deadline counts from the last pong, not from the start."""
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")

            async def answer_pings_until_42s() -> None:
                with trio.move_on_after(42):
                    while True:
                        message = wire.decode(await raw.get_message())
                        if isinstance(message, wire.Ping):
                            await raw.send_message(wire.encode(wire.Pong(seq=message.seq)))
                # then stop reading, keeping the connection open: a silent death

            start = trio.current_time()
            nursery.start_soon(answer_pings_until_42s)
            reason = await a.run()
            assert reason.startswith("heartbeat timeout")
            # Pings go out at t=0, 5, ..., 40; the last pong is at t=40, so the link ends at 40 + 15.
            assert trio.current_time() - start == pytest.approx(40 + TIMEOUT)
            nursery.cancel_scope.cancel()

    async def test_busy_application_is_not_mistaken_for_dead(self, autojump_clock: trio.testing.MockClock) -> None:
        """A handler busy for many timeouts does not stop the reader from answering pings."""
        handlers = Handlers()

        async def slow(params: Any, context: fednode.RequestContext) -> Any:
            await trio.sleep(10 * TIMEOUT)
            return "done"

        handlers.requests["slow"] = slow
        async with linked_pair(b_handlers=handlers) as (a, b):
            start = trio.current_time()
            assert await a.request("slow", timeout=20 * TIMEOUT) == "done"
            assert trio.current_time() - start == pytest.approx(10 * TIMEOUT)
            assert a.is_up and b.is_up


class TestRequests:
    """Requests are answered, time out exactly, are cancelled remotely and fail at once when the link drops."""

    async def test_timeout_is_exact_and_cancels_the_remote_handler(
            self, autojump_clock: trio.testing.MockClock) -> None:
        handlers = Handlers()
        cancelled = trio.Event()

        async def never(params: Any, context: fednode.RequestContext) -> Any:
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

        handlers.requests["never"] = never
        async with linked_pair(b_handlers=handlers) as (a, _b):
            start = trio.current_time()
            with pytest.raises(fednode.RequestTimeoutError, match="within 3s"):
                await a.request("never", timeout=3)
            assert trio.current_time() - start == pytest.approx(3)
            with trio.fail_after(1):
                await cancelled.wait()

    async def test_link_drop_fails_waiting_requests_at_once(self, autojump_clock: trio.testing.MockClock) -> None:
        handlers = Handlers()

        async def never(params: Any, context: fednode.RequestContext) -> Any:
            await trio.sleep_forever()

        handlers.requests["never"] = never
        async with linked_pair(b_handlers=handlers) as (a, b):
            async def drop_later() -> None:
                await trio.sleep(7)
                b.stop(1000, "bye")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drop_later)
                start = trio.current_time()
                with pytest.raises(fednode.LinkClosedError, match="closed before the answer"):
                    await a.request("never", timeout=1000)
                assert trio.current_time() - start == pytest.approx(7)

    async def test_errors_are_reported(self, autojump_clock: trio.testing.MockClock) -> None:
        handlers = Handlers()

        async def fail(params: Any, context: fednode.RequestContext) -> Any:
            raise fednode.RequestError(-32050, "nope", {"why": "testing"})

        async def crash(params: Any, context: fednode.RequestContext) -> Any:
            raise RuntimeError("secret internals")

        handlers.requests.update(fail=fail, crash=crash)
        async with linked_pair(b_handlers=handlers) as (a, _b):
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("fail", timeout=5)
            assert (info.value.code, info.value.remote_message, info.value.data) == (-32050, "nope", {"why": "testing"})
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("crash", timeout=5)
            assert info.value.code == wire.INTERNAL_ERROR and "secret internals" not in str(info.value)
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("no/such", timeout=5)
            assert info.value.code == wire.METHOD_NOT_FOUND

    async def test_too_large_request_fails_locally_and_link_stays(
            self, autojump_clock: trio.testing.MockClock) -> None:
        handlers = Handlers()

        async def echo(params: Any, context: fednode.RequestContext) -> Any:
            return params

        handlers.requests["echo"] = echo
        async with linked_pair(b_handlers=handlers) as (a, _b):
            with pytest.raises(fednode.MessageTooLargeError):
                await a.request("echo", "x" * (2 * 1024 * 1024), timeout=5)
            assert await a.request("echo", "small", timeout=5) == "small"

    async def test_notifications_reach_their_handler(self, autojump_clock: trio.testing.MockClock) -> None:
        handlers = Handlers()
        got: list[Any] = []

        async def on_note(params: Any, context: fednode.RequestContext) -> None:
            got.append((context.peer_id, params))

        handlers.notifications["note"] = on_note
        async with linked_pair(b_handlers=handlers) as (a, _b):
            await a.notify("note", {"n": 1})
            await trio.sleep(1)
            assert got == [("node-a", {"n": 1})]


class TestLimits:
    """A peer cannot make a node run more than max_inflight handlers at once."""

    async def test_requests_beyond_max_inflight_are_refused(self, autojump_clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            handlers = Handlers()
            started: list[int] = []

            async def slow(params: Any, context: fednode.RequestContext) -> Any:
                started.append(params)
                await trio.sleep(100)
                return params

            handlers.requests["slow"] = slow
            a = make_link(ws_a, "node-a", "node-b", handlers, max_inflight=2)
            nursery.start_soon(a.run)
            for i in range(3):
                await raw.send_message(wire.encode(wire.Request(id=i, method="slow", params=i)))
            reply = await next_answered_frame(raw)
            assert reply == wire.Error(id=2, code=wire.OVERLOADED, message="node 'node-a' is busy; retry later")
            assert started == [0, 1]
            replies = {await next_answered_frame(raw), await next_answered_frame(raw)}
            assert replies == {wire.Response(id=0, result=0), wire.Response(id=1, result=1)}
            nursery.cancel_scope.cancel()


class TestProtocolErrors:
    """Malformed frames get an error reply; a peer that keeps sending them is disconnected with 1008."""

    async def test_garbage_gets_error_replies_then_disconnect(self, autojump_clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b", max_protocol_errors=3)
            nursery.start_soon(a.run)
            bad = ["not json", json.dumps({"type": "teleport"}), json.dumps({"type": "request", "id": 7})]
            for frame in bad[:2]:
                await raw.send_message(frame)
                reply = await next_frame(raw)
                assert isinstance(reply, wire.Error) and reply.id is None
            await raw.send_message(bad[2])
            reply = await next_frame(raw)
            assert isinstance(reply, wire.Error) and reply.id == 7 and reply.code == wire.INVALID_REQUEST
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await raw.get_message()
            assert info.value.reason is not None and info.value.reason.code == CLOSE_POLICY
            await a.ended.wait()
            assert a.end_reason == "closed locally: too many protocol errors"

    async def test_binary_and_hello_frames_are_protocol_errors(self, autojump_clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")
            nursery.start_soon(a.run)
            await raw.send_message(b"\x00\x01binary")
            assert isinstance(await next_frame(raw), wire.Error)
            await raw.send_message(wire.encode(wire.Hello(node="node-b")))
            assert isinstance(await next_frame(raw), wire.Error)
            # Still serving: a ping is answered.
            await raw.send_message(wire.encode(wire.Ping(seq=99)))
            assert await next_frame(raw, skip=(wire.Ping,)) == wire.Pong(seq=99)
            assert a.is_up
            nursery.cancel_scope.cancel()
