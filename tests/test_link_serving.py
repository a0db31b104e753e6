"""What a request costs a link: served by a reused worker task, written without extra checkpoints,
deadlines kept by a task only once there are any. Behaviour first (deadlines, cancels), then the costs."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from test_link import INTERVAL, linked_pair, make_link
from trio_websocket import WebSocketConnection, WebSocketRequest, connect_websocket, serve_websocket

from fednode import _errors as errors
from fednode._peers import _wire as wire
from fednode._peers._link import Handlers
from fednode._peers._sender import DRAIN_BATCH, FrameSender, direct_lock, send_text
from fednode._peers._serving import IDLE_WORKERS, RequestContext

from memws import ws_pair


class Served:
    """Request handlers that record which task served each request, and when each ended."""

    def __init__(self) -> None:
        self.tasks: list[trio.lowlevel.Task] = []
        self.ended: list[tuple[str, float]] = []  # (how, when)
        self.release = trio.Event()
        self.started = 0

    async def work(self, params: Any, context: RequestContext) -> Any:
        self.tasks.append(trio.lowlevel.current_task())
        return params

    async def slow(self, params: Any, context: RequestContext) -> Any:
        self.tasks.append(trio.lowlevel.current_task())
        try:
            await trio.sleep(params["seconds"])
        except trio.Cancelled:
            self.ended.append(("cancelled", trio.current_time()))
            raise
        self.ended.append(("done", trio.current_time()))
        return params

    async def held(self, params: Any, context: RequestContext) -> Any:
        self.started += 1
        await self.release.wait()
        return params

    def handlers(self) -> Handlers:
        return Handlers(requests={"work": self.work, "slow": self.slow, "held": self.held})


class TestWorkers:
    async def test_requests_one_after_another_are_served_by_one_task(
            self, autojump_clock: trio.testing.MockClock) -> None:
        served = Served()
        async with linked_pair(b_handlers=served.handlers()) as (a, _b):
            for i in range(3):
                assert await a.request("work", {"i": i}, timeout=10) == {"i": i}
        assert len(served.tasks) == 3 and len(set(served.tasks)) == 1

    async def test_a_reused_worker_keeps_each_request_deadline(self, autojump_clock: trio.testing.MockClock) -> None:
        served = Served()
        async with linked_pair(b_handlers=served.handlers()) as (a, b):
            assert await a.request("slow", {"seconds": 1}, timeout=100) == {"seconds": 1}
            await trio.sleep(10)  # idle well past where a deadline of 2 s would have been
            assert await a.request("slow", {"seconds": 3}, timeout=100) == {"seconds": 3}
            started = trio.current_time()
            with pytest.raises(errors.RequestTimeoutError):
                await a.request("slow", {"seconds": 10}, timeout=2)
            with trio.fail_after(5):
                while len(served.ended) < 3:
                    await trio.sleep(0.01)
            how, when = served.ended[2]
            assert how == "cancelled" and when == pytest.approx(started + 2)
            assert len(set(served.tasks)) == 1  # the deadline ended the worker, after three requests
            assert b._serving == {}

    async def test_a_cancelled_request_ends_its_worker_and_the_next_is_served(
            self, autojump_clock: trio.testing.MockClock) -> None:
        served = Served()
        async with linked_pair(b_handlers=served.handlers()) as (a, b):
            await a.request("work", None, timeout=10)
            with trio.move_on_after(1):  # the caller gives up: a cancel frame goes to b
                await a.request("slow", {"seconds": 50}, timeout=100)
            with trio.fail_after(5):
                while not served.ended:
                    await trio.sleep(0.01)
            ((how, when),) = served.ended
            assert how == "cancelled" and when == pytest.approx(1)
            assert await a.request("work", {"after": 1}, timeout=10) == {"after": 1}
            first, cancelled, after = served.tasks
            assert first is cancelled and after is not cancelled
            assert b._serving == {}

    async def test_idle_workers_are_bounded(self, autojump_clock: trio.testing.MockClock) -> None:
        served = Served()
        callers = IDLE_WORKERS + 3
        async with linked_pair(b_handlers=served.handlers()) as (a, b):
            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(partial(a.request, "held", i, timeout=10))
                with trio.fail_after(5):
                    while served.started < callers:
                        await trio.sleep(0.01)
                served.release.set()
            await trio.sleep(1)
            assert len(b._inbound._idle) == IDLE_WORKERS
            assert await a.request("work", 1, timeout=10) == 1  # an idle one takes it
            assert len(b._inbound._idle) == IDLE_WORKERS


class TestDeadlineKeeper:
    async def test_an_idle_link_runs_three_tasks_and_a_request_starts_the_keeper(
            self, autojump_clock: trio.testing.MockClock) -> None:
        served = Served()
        async with linked_pair(b_handlers=served.handlers()) as (a, b):
            await trio.sleep(3 * INTERVAL)
            assert a._nursery is not None and len(a._nursery.child_tasks) == 3  # reader, sender, heartbeat
            with pytest.raises(errors.RequestTimeoutError):
                await a.request("slow", {"seconds": 10}, timeout=2)
            assert len(a._nursery.child_tasks) == 4  # and the deadline keeper, which ended the request
            assert b._nursery is not None
            assert len(b._nursery.child_tasks) == 3  # b sent no request; its worker runs elsewhere


class _Steps(trio.abc.Instrument):
    """Counts how often one task is stepped (resumed by the scheduler)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


class TestSendText:
    async def test_a_frame_is_written_without_the_lock_checkpoint(self) -> None:
        async with trio.open_nursery() as nursery:
            ws, peer = await ws_pair(nursery)
            lock = direct_lock(ws)
            assert lock is not None
            counts = []
            for send in (partial(ws.send_message, "via send_message"), partial(send_text, ws, "direct", lock)):
                steps = _Steps(trio.lowlevel.current_task())
                trio.lowlevel.add_instrument(steps)
                await send()
                trio.lowlevel.remove_instrument(steps)
                counts.append(steps.steps)
            assert counts[1] == counts[0] - 1
            assert [await peer.get_message(), await peer.get_message()] == ["via send_message", "direct"]
            nursery.cancel_scope.cancel()

    async def test_a_held_lock_makes_it_wait_its_turn(self) -> None:
        async with trio.open_nursery() as nursery:
            ws, peer = await ws_pair(nursery)
            lock = direct_lock(ws)
            assert lock is not None
            lock.acquire_nowait()  # another writer (trio-websocket's reader answering a ping, say)
            sent = trio.Event()

            async def send() -> None:
                await send_text(ws, "after", lock)
                sent.set()

            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            lock.release()
            with trio.fail_after(30):
                await sent.wait()
                assert await peer.get_message() == "after"
            nursery.cancel_scope.cancel()

    async def test_a_closed_connection_raises_connection_closed(self) -> None:
        from trio_websocket import ConnectionClosed

        async with trio.open_nursery() as nursery:
            ws, _peer = await ws_pair(nursery)
            lock = direct_lock(ws)
            await ws.aclose()
            with pytest.raises(ConnectionClosed):
                await send_text(ws, "late", lock)
            nursery.cancel_scope.cancel()


class TestSendTextOverTcp:
    """Over a real socket the frame goes straight to it: no pass of the event loop when it fits."""

    async def test_a_frame_that_fits_costs_no_checkpoint(self) -> None:
        async with trio.open_nursery() as nursery:
            ws, peer = await tcp_pair(nursery)
            lock = direct_lock(ws)
            assert lock is not None
            steps = _Steps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            await send_text(ws, "straight to the socket", lock)
            trio.lowlevel.remove_instrument(steps)
            assert steps.steps == 0
            with trio.fail_after(30):
                assert await peer.get_message() == "straight to the socket"
            await ws.aclose()
            nursery.cancel_scope.cancel()

    async def test_a_frame_larger_than_the_socket_takes_is_written_whole(self) -> None:
        async with trio.open_nursery() as nursery:
            ws, peer = await tcp_pair(nursery, max_message_size=64 * 1024 * 1024)
            lock = direct_lock(ws)
            big = "x" * (16 * 1024 * 1024)  # far more than the socket buffers: part of it waits in send_all
            with trio.fail_after(60):
                async with trio.open_nursery() as both:
                    both.start_soon(send_text, ws, big, lock)
                    assert await peer.get_message() == big
                await send_text(ws, "next", lock)
                assert await peer.get_message() == "next"
            await ws.aclose()
            nursery.cancel_scope.cancel()

    async def test_a_cancelled_writer_writes_nothing(self) -> None:
        async with trio.open_nursery() as nursery:
            ws, peer = await tcp_pair(nursery)
            link_ws = make_sender(ws)
            with trio.CancelScope() as scope:
                scope.cancel()
                await link_ws.write("never")
            await link_ws.write("only this")
            with trio.fail_after(30):
                assert await peer.get_message() == "only this"
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def tcp_pair(nursery: trio.Nursery, **options: Any) -> tuple[WebSocketConnection, WebSocketConnection]:
    """A (client, server) trio-websocket pair over TCP on 127.0.0.1."""
    accepted: list[WebSocketConnection] = []
    ready = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        accepted.append(await request.accept())
        ready.set()
        await trio.sleep_forever()

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None, **options))
    client = await connect_websocket(nursery, "127.0.0.1", server.port, "/", use_ssl=False, **options)
    with trio.fail_after(30):
        await ready.wait()
    return client, accepted[0]


def make_sender(ws: WebSocketConnection) -> FrameSender[None]:
    def lost(reason: str) -> None:
        raise AssertionError(reason)

    def too_large(tag: None, exc: errors.ProtocolError) -> None:
        raise AssertionError(exc)

    return FrameSender(ws, peer_id="peer", max_message_size=1 << 20, on_lost=lost, on_too_large=too_large)


class TestSendCheckpoints:
    async def test_link_send_still_checkpoints_once(self) -> None:
        """Frames the socket takes at once cost no checkpoint inside the link, but the public send still
        yields once, so a caller sending frame after frame (a route flood) lets other tasks run between them."""
        async with trio.open_nursery() as nursery:
            ws, peer = await tcp_pair(nursery)
            link = make_link(ws, "node-a", "node-b")
            steps = _Steps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            await link.notify("nobody/listens", {"n": 1})
            trio.lowlevel.remove_instrument(steps)
            assert steps.steps == 1
            with trio.fail_after(30):
                assert json.loads(await peer.get_message())["method"] == "nobody/listens"
            await ws.aclose()
            nursery.cancel_scope.cancel()

    async def test_the_sender_task_lets_others_run_while_it_drains(self) -> None:
        """Queued frames the socket takes at once cost no checkpoint each: the sender task yields every
        DRAIN_BATCH frames, so a long queue does not hold the other tasks up until it is empty."""
        frames = 3 * DRAIN_BATCH + 1
        async with trio.open_nursery() as nursery:
            ws, peer = await tcp_pair(nursery)
            sender = make_sender(ws)
            async with trio.open_nursery() as inner:
                inner.start_soon(sender.run)
                await trio.testing.wait_all_tasks_blocked()
                (task,) = inner.child_tasks
                steps = _Steps(task)
                trio.lowlevel.add_instrument(steps)
                for seq in range(frames):
                    sender.enqueue(wire.Ping(seq=seq), None)
                with trio.fail_after(30):
                    for seq in range(frames):
                        assert wire.decode(await peer.get_message()) == wire.Ping(seq=seq)
                trio.lowlevel.remove_instrument(steps)
                assert steps.steps >= 1 + frames // DRAIN_BATCH
                inner.cancel_scope.cancel()
            await ws.aclose()
            nursery.cancel_scope.cancel()
