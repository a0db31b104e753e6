"""Link behaviour under MockClock: heartbeat, deadlines, request correlation, protocol errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode import _errors as errors
from fednode._peers import _wire as wire
from fednode._peers._link import CLOSE_POLICY, Direction, Handlers, Link, LinkSettings, Transit, stall_limit

from conftest import node_config
from helpers import next_frame as next_answered_frame
from memws import ws_pair

INTERVAL, TIMEOUT = 5.0, 15.0
STALL = (TIMEOUT - INTERVAL) / 2  # how long a frame may take to be written


def make_link(ws: WebSocketConnection, local: str, remote: str, handlers: Handlers | None = None,
              **link: Any) -> Link:
    config = node_config(local, heartbeat={"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s"},
                         link=link or {})
    direction = Direction.OUTBOUND if local < remote else Direction.INBOUND
    settings = LinkSettings(heartbeat=config.heartbeat, limits=config.link, shutdown_grace=config.shutdown_grace)
    return Link(ws, local_id=local, peer_id=remote, direction=direction, settings=settings,
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


def stop_taking_frames(ws: WebSocketConnection) -> None:
    """From now on the peer takes none of the frames written to ``ws``: it stopped reading and the
    socket buffers are full. As with a real socket, a write stuck this way fails once the stream is closed."""
    stream: Any = ws._stream
    closed = trio.Event()
    aclose = stream.aclose

    async def stuck(data: Any) -> None:
        await closed.wait()
        raise trio.ClosedResourceError

    async def close() -> None:
        closed.set()
        await aclose()

    stream.send_all = stuck
    stream.aclose = close


async def send_stray_pongs(ws: WebSocketConnection) -> None:
    """What the hostile peer did: a pong every second, answering nothing (until the link is closed)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send_message(wire.encode(wire.Pong(seq=1)))
            await trio.sleep(1)


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

    @pytest.mark.parametrize("pongs", ["wrong seq", "replayed seq", "unsolicited"])
    async def test_pongs_answering_no_ping_do_not_count(
            self, autojump_clock: trio.testing.MockClock, pongs: str) -> None:
        """A peer cannot keep a link up with pongs that don't answer a ping it read."""
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")

            async def peer() -> None:
                answered: int | None = None
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        message = wire.decode(await raw.get_message())
                        if not isinstance(message, wire.Ping):
                            continue
                        if pongs == "wrong seq":
                            await raw.send_message(wire.encode(wire.Pong(seq=message.seq ^ 1)))
                        elif pongs == "replayed seq":  # the first ping is answered, then its pong replayed
                            answered = message.seq if answered is None else answered
                            await raw.send_message(wire.encode(wire.Pong(seq=answered)))

            nursery.start_soon(peer)
            if pongs == "unsolicited":
                nursery.start_soon(send_stray_pongs, raw)
            start = trio.current_time()
            reason = None
            with trio.move_on_after(10 * TIMEOUT):
                reason = await a.run()
            assert reason is not None and reason.startswith(f"heartbeat timeout: no pong for {TIMEOUT:g}s (")
            assert "pongs answered no ping of ours" in reason
            # the last pong that counted was at t=0 (the first one, if replayed) or never
            assert trio.current_time() - start == pytest.approx(TIMEOUT)
            assert (a.rtt is not None) == (pongs == "replayed seq")
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

    @pytest.mark.parametrize("stuck", ["request", "frame before it", "request, long timeout"])
    async def test_timeout_covers_sending_to_a_peer_that_stopped_reading(
            self, autojump_clock: trio.testing.MockClock, stuck: str) -> None:
        """A request fails at its deadline even when its frame can't be sent; the link is closed when a
        frame is stuck being written for the stall limit, or at a request's deadline if that comes first."""
        timeout = 50 if stuck == "request, long timeout" else 2
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")
            nursery.start_soon(a.run)
            nursery.start_soon(send_stray_pongs, raw)
            await trio.sleep(1)  # the first ping has been sent; the next is due at t=5
            stop_taking_frames(ws_a)
            start = trio.current_time()
            if stuck == "frame before it":
                async def notify() -> None:
                    with pytest.raises(fednode.LinkClosedError, match="stopped reading"):
                        await a.notify("note", "first in line")

                nursery.start_soon(notify)
                await trio.testing.wait_all_tasks_blocked()  # the notification is stuck being written
            stalled = f"peer stopped reading: a frame could not be sent for {STALL:g}s"
            with trio.fail_after(10 * TIMEOUT):
                if stuck == "request, long timeout":  # the stall limit comes first
                    with pytest.raises(fednode.LinkClosedError, match="stopped reading"):
                        await a.request("echo", timeout=timeout)
                    assert trio.current_time() - start == pytest.approx(STALL)
                    assert a.end_reason == stalled
                elif stuck == "request":
                    with pytest.raises(fednode.RequestTimeoutError, match=f"within {timeout}s"):
                        await a.request("echo", timeout=timeout)
                    assert trio.current_time() - start == pytest.approx(timeout)
                    # its frame may be half-written: the link can't be used any more
                    assert a.end_reason == "peer stopped reading: a request could not be sent within its timeout"
                else:
                    with pytest.raises(fednode.RequestTimeoutError, match=f"within {timeout}s"):
                        await a.request("echo", timeout=timeout)
                    assert trio.current_time() - start == pytest.approx(timeout)
                    assert a.is_up  # the request was dropped unsent; the frame ahead of it has until STALL
                    await a.ended.wait()
                    assert trio.current_time() - start == pytest.approx(STALL)
                    assert a.end_reason == stalled
            nursery.cancel_scope.cancel()

    async def test_frames_sent_at_once_all_arrive_in_order(self, autojump_clock: trio.testing.MockClock) -> None:
        """While one frame is being written the others queue, and go out in the order they were sent."""
        handlers = Handlers()
        notes: list[int] = []

        async def echo(params: Any, context: fednode.RequestContext) -> Any:
            return params

        handlers.requests["echo"] = echo
        handlers.inline_notifications["note"] = lambda params, context: notes.append(params)
        async with linked_pair(b_handlers=handlers) as (a, _b):
            answers: dict[int, Any] = {}

            async def ask(n: int) -> None:
                answers[n] = await a.request("echo", n, timeout=5)

            async def tell() -> None:
                for n in range(50):
                    await a.notify("note", n)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tell)
                for n in range(50):
                    nursery.start_soon(ask, n)
            await wait_until(lambda: len(notes) == 50)
            assert answers == {n: n for n in range(50)} and notes == list(range(50))

    async def test_link_cancelled_from_outside_fails_frames_waiting_to_be_sent(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Whoever waits for a frame to be sent hears that it won't be when the link is cancelled."""
        async with trio.open_nursery() as nursery:
            ws_a, _raw = await ws_pair(nursery)
            a = make_link(ws_a, "node-a", "node-b")
            run_scope = trio.CancelScope()

            async def run() -> None:
                with run_scope:
                    await a.run()

            nursery.start_soon(run)
            await trio.sleep(1)
            stop_taking_frames(ws_a)
            outcomes: dict[int, float] = {}

            async def note(n: int) -> None:
                with pytest.raises(fednode.LinkClosedError):
                    await a.notify("note", n)
                outcomes[n] = trio.current_time() - start

            start = trio.current_time()
            nursery.start_soon(note, 1)  # stuck being written
            await trio.testing.wait_all_tasks_blocked()
            for n in (2, 3):  # waiting for their turn
                nursery.start_soon(note, n)
                await trio.testing.wait_all_tasks_blocked()
            run_scope.cancel()  # as when the peer is removed: no stall, no heartbeat timeout
            await wait_until(lambda: len(outcomes) == 3)
            # the queued ones at once; the one being written once the close frame gives up (shutdown_grace)
            assert outcomes == {2: 0, 3: 0, 1: pytest.approx(a.settings.shutdown_grace)}
            nursery.cancel_scope.cancel()

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
            assert info.value.code == errors.INTERNAL_ERROR and "secret internals" not in str(info.value)
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("no/such", timeout=5)
            assert info.value.code == errors.METHOD_NOT_FOUND

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
            assert reply == wire.Error(id=2, code=errors.OVERLOADED, message="node 'node-a' is busy; retry later")
            assert started == [0, 1]
            replies = {await next_answered_frame(raw), await next_answered_frame(raw)}
            assert replies == {wire.Response(id=0, result=0), wire.Response(id=1, result=1)}
            nursery.cancel_scope.cancel()

    async def test_peer_that_stops_reading_cannot_pile_up_requests(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A request keeps its slot until its answer is sent, and a peer that takes none of our
        frames is disconnected after the stall limit, however it keeps the heartbeat going."""
        async with trio.open_nursery() as nursery:
            ws_a, raw = await ws_pair(nursery)
            handlers = Handlers()
            served: list[int] = []

            async def echo(params: Any, context: fednode.RequestContext) -> Any:
                served.append(params["n"])
                return params

            handlers.requests["echo"] = echo
            a = make_link(ws_a, "node-a", "node-b", handlers, max_inflight=4)
            assert stall_limit(a.settings.heartbeat) == STALL
            stop_taking_frames(ws_a)
            nursery.start_soon(a.run)
            nursery.start_soon(send_stray_pongs, raw)
            start = trio.current_time()
            for n in range(20):
                request = wire.Request(id=n, method="echo", params={"n": n, "pad": "x" * 1000})
                await raw.send_message(wire.encode(request))
            with trio.fail_after(10 * TIMEOUT):
                await a.ended.wait()
            # four answers stuck in the socket held their slots: the other requests were refused
            assert served == [0, 1, 2, 3]
            assert trio.current_time() - start == pytest.approx(STALL)
            assert a.end_reason == f"peer stopped reading: a frame could not be sent for {STALL:g}s"
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
            assert isinstance(reply, wire.Error) and reply.id == 7 and reply.code == errors.INVALID_REQUEST
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await raw.get_message()
            assert info.value.reason is not None and info.value.reason.code == CLOSE_POLICY
            await a.ended.wait()
            assert a.end_reason == "closed locally: too many protocol errors"

    async def test_errors_the_peer_reports_are_logged_within_limits(
            self, autojump_clock: trio.testing.MockClock) -> None:
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                ws_a, raw = await ws_pair(nursery)
                a = make_link(ws_a, "node-a", "node-b")
                nursery.start_soon(a.run)
                for _ in range(200):  # all at once: valid frames, so the link stays up
                    await raw.send_message(json.dumps({"type": "error", "id": None, "code": -1, "message": "x"}))
                await trio.sleep(1.5)
                await raw.send_message(json.dumps({"type": "error", "id": None, "code": -1, "message": "y"}))
                await trio.sleep(0.1)
                assert a.end_reason is None
                nursery.cancel_scope.cancel()
        reported = [e for e in logs if e["event"] == "link.peer_reported_error"]
        assert len(reported) == 11 and reported[-1]["suppressed"] == 190  # a burst of 10, then one a second

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
            stop_taking_frames(b2.ws)  # node-c's side stops reading: b2's sends never finish
            start = trio.current_time()
            with pytest.raises(fednode.RemoteError) as info:
                await a.request("relay", {"op": "echo", "t": 50}, timeout=100)
            # dropped after half the heartbeat slack, well before a's own heartbeat would give up on b
            assert trio.current_time() - start == pytest.approx(STALL)
            assert info.value.code == -32050 and "stopped reading" in info.value.remote_message
            assert not b2.is_up and b1.is_up and a.is_up
            assert events == []
            # b1's reader, which was passing the request on, is free again
            assert await a.request("relay", "local", timeout=5) == "served at b"


async def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
