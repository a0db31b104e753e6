"""Link behaviour under MockClock: heartbeat, deadlines, request correlation, protocol errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode import _wire as wire
from fednode._link import CLOSE_POLICY, Direction, Handlers, Link, Transit

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


TRANSIT_TIMEOUT = 3.0


def _transit_error(why: str) -> tuple[int, str]:
    return {"timeout": -32052, "lost": -32050, "too large": -32603}[why.split(":")[0]], f"transit: {why}"


@asynccontextmanager
async def relay_chain(c_handlers: Handlers, *, b_served: list[Any] | None = None
                      ) -> AsyncIterator[tuple[Link, Link, Link, Link]]:
    """Links a-b1 and b2-c, with node-b passing ``relay`` requests from a on to c (``local`` ones it serves)."""
    b_handlers = Handlers()
    links: dict[str, Link] = {}

    def relay(params: Any, context: fednode.RequestContext, inbound: Link) -> Transit | None:
        if params == "local":
            return None
        if params == "refuse":
            raise fednode.RequestError(-32602, "refused at b")
        timeout = params.get("t", TRANSIT_TIMEOUT) if isinstance(params, dict) else TRANSIT_TIMEOUT
        return Transit(onward=links["b2"], params=params, timeout=timeout, error=_transit_error)

    async def local(params: Any, context: fednode.RequestContext) -> Any:
        if b_served is not None:
            b_served.append(params)
        return "served at b"

    b_handlers.transit["relay"] = relay
    b_handlers.requests["relay"] = local
    async with trio.open_nursery() as nursery:
        ws_a, ws_b1 = await ws_pair(nursery)
        ws_b2, ws_c = await ws_pair(nursery)
        a = make_link(ws_a, "node-a", "node-b")
        links["b1"] = b1 = make_link(ws_b1, "node-b", "node-a", b_handlers)
        links["b2"] = b2 = make_link(ws_b2, "node-b", "node-c", b_handlers)
        c = make_link(ws_c, "node-c", "node-b", c_handlers)
        for link in (a, b1, b2, c):
            nursery.start_soon(link.run)
        yield a, b1, b2, c
        nursery.cancel_scope.cancel()


class TestTransit:
    """A request passed on by a transit handler travels without a task at the middle node, and every
    way it can end (answer, error, cancel, deadline, either link lost, a stalled peer) is handled there."""

    @staticmethod
    def c_handlers(events: list[str], *, gate: trio.Event | None = None) -> Handlers:
        handlers = Handlers()

        async def serve(params: Any, context: fednode.RequestContext) -> Any:
            events.append(f"start {params['op']}")
            try:
                if params["op"] == "fail":
                    raise fednode.RequestError(-32099, "failed at c", {"where": "c"})
                if params["op"] == "wait":
                    if gate is None:
                        await trio.sleep_forever()
                    await gate.wait()
                events.append(f"timeout {context.timeout:g}")
                return {"echo": params, "from": context.peer_id}
            except trio.Cancelled:
                events.append(f"cancelled {params['op']}")
                raise

        handlers.requests["relay"] = serve
        return handlers

    async def test_answers_and_errors_come_back_unchanged(self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, b2, _c):
            result = await a.request("relay", {"op": "echo", "x": [1, "two"]}, timeout=100)
            assert result == {"echo": {"op": "echo", "x": [1, "two"]}, "from": "node-b"}
            # c saw the transit's own timeout, not the caller's
            assert events == ["start echo", f"timeout {TRANSIT_TIMEOUT:g}"]
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", {"op": "fail"}, timeout=100)
            error = (info.value.code, info.value.remote_message, info.value.data)
            assert error == (-32099, "failed at c", {"where": "c"})
            assert b1._transits_in == {} and b2._transits_out == {}

    async def test_no_task_at_the_middle_node(self, autojump_clock: trio.testing.MockClock) -> None:
        gate = trio.Event()
        events: list[str] = []
        async with relay_chain(self.c_handlers(events, gate=gate)) as (a, b1, b2, _c):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(a.request, "relay", {"op": "wait"}, timeout=100))
                await wait_until(lambda: events == ["start wait"])
                assert b1._serving == {} and len(b1._transits_in) == 1 and len(b2._transits_out) == 1
                gate.set()
            assert b1._transits_in == {} and b2._transits_out == {}

    async def test_handler_may_serve_or_refuse(self, autojump_clock: trio.testing.MockClock) -> None:
        served: list[Any] = []
        async with relay_chain(self.c_handlers([]), b_served=served) as (a, _b1, _b2, _c):
            assert await a.request("relay", "local", timeout=5) == "served at b"
            assert served == ["local"]
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", "refuse", timeout=5)
            assert (info.value.code, info.value.remote_message) == (-32602, "refused at b")

    async def test_cancel_follows_the_request(self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, b2, _c):
            with trio.move_on_after(2):
                await a.request("relay", {"op": "wait"}, timeout=100)
            await wait_until(lambda: "cancelled wait" in events)
            assert b1._transits_in == {} and b2._transits_out == {}

    async def test_deadline_at_the_middle_node_is_exact(self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, b2, _c):
            start = trio.current_time()
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", {"op": "wait"}, timeout=100)
            assert trio.current_time() - start == pytest.approx(TRANSIT_TIMEOUT)
            assert (info.value.code, info.value.remote_message) == (-32052, "transit: timeout")
            await wait_until(lambda: "cancelled wait" in events)
            assert b1._transits_in == {} and b2._transits_out == {}

    async def test_onward_link_lost_fails_the_request_at_once(self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, _b2, c):
            async def drop_later() -> None:
                await trio.sleep(1)
                c.stop(1000, "bye")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drop_later)
                start = trio.current_time()
                with pytest.raises(fednode.RemoteError) as info:
                    await a.request("relay", {"op": "wait"}, timeout=100)
                assert trio.current_time() - start == pytest.approx(1)
            assert info.value.code == -32050 and info.value.remote_message.startswith("transit: lost: ")
            assert b1._transits_in == {}
            # and a request arriving while the onward link is down is refused the same way
            await wait_until(lambda: not _b2.is_up)
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", {"op": "echo"}, timeout=100)
            assert info.value.code == -32050

    async def test_inbound_link_lost_cancels_onward(self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, b2, _c):
            async with trio.open_nursery() as nursery:
                async def ask() -> None:
                    with pytest.raises(fednode.LinkClosedError):
                        await a.request("relay", {"op": "wait"}, timeout=100)

                nursery.start_soon(ask)
                await wait_until(lambda: events == ["start wait"])
                b1.stop(1000, "bye")
            await wait_until(lambda: "cancelled wait" in events)
            assert b2._transits_out == {} and b2.is_up

    async def test_peer_that_stops_reading_is_dropped_not_the_asker(
            self, autojump_clock: trio.testing.MockClock) -> None:
        events: list[str] = []
        async with relay_chain(self.c_handlers(events)) as (a, b1, b2, _c):
            stream: Any = b2.ws._stream

            async def stalled(data: bytes) -> None:
                await trio.sleep_forever()

            stream.send_all = stalled  # node-c's side stops reading: b2's sends never finish
            start = trio.current_time()
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", {"op": "echo", "t": 50}, timeout=100)
            # dropped after half the heartbeat slack, well before a's own heartbeat would give up on b
            assert trio.current_time() - start == pytest.approx((TIMEOUT - INTERVAL) / 2)
            assert info.value.code == -32050 and "stopped reading" in info.value.remote_message
            assert not b2.is_up and b1.is_up and a.is_up
            assert events == []


async def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
