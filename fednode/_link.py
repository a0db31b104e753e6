"""One authenticated peer link: reader, heartbeat, request/response correlation, handler dispatch.

A :class:`Link` wraps a trio-websocket connection whose handshake, authentication and hello have
already succeeded. :meth:`Link.run` drives it until it ends and reports why. The reader never stops
draining frames (trio-websocket answers WebSocket pings, and we answer heartbeat pings, only while
messages are read), so a busy application never makes a live link look dead: every request is
handled in its own task, bounded by ``max_inflight``.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from . import _wire as wire
from ._config import NodeConfig
from ._errors import (
    LinkClosedError,
    MessageTooLargeError,
    ProtocolError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
)

log = structlog.get_logger("fednode")

#: Close codes fednode uses besides the standard ones.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_DUPLICATE = 4001
CLOSE_HEARTBEAT = 4002

# Control frames (pongs, cancels, protocol-error replies) queue here so the reader never blocks on
# a send; when the queue is full the frame is dropped, which is safe for each of them (the next
# ping gets its pong; a dropped cancel only means the peer finishes work nobody waits for).
_CONTROL_QUEUE = 64


class Direction(enum.StrEnum):
    """Which side dialed the link."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"


@attrs.frozen
class RequestContext:
    """What a request handler knows about the request it serves."""

    peer_id: str
    method: str
    timeout: float | None


RequestHandler = Callable[[Any, RequestContext], Awaitable[Any]]
InlineHandler = Callable[[Any, RequestContext], Any]
NotificationHandler = Callable[[Any, RequestContext], Awaitable[None]]


@attrs.define
class Handlers:
    """The node's method table, shared by all its links.

    ``inline`` handlers are plain functions run by the link's reader itself, saving a task per
    request; they must return at once (no I/O, no waiting). Everything else runs in its own task.
    """

    requests: dict[str, RequestHandler] = attrs.field(factory=dict)
    inline: dict[str, InlineHandler] = attrs.field(factory=dict)
    notifications: dict[str, NotificationHandler] = attrs.field(factory=dict)
    inline_notifications: dict[str, Callable[[Any, RequestContext], None]] = attrs.field(factory=dict)


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    timed_out: bool = False


class Link:
    """A live, authenticated link to one peer.

    Args:
        ws: the open WebSocket (handshake, authentication and hello done).
        local_id: this node's id.
        peer_id: the authenticated peer's id.
        direction: who dialed.
        config: this node's configuration (heartbeat, limits, shutdown grace).
        handlers: the method table requests and notifications are dispatched to.
    """

    def __init__(self, ws: WebSocketConnection, *, local_id: str, peer_id: str, direction: Direction,
                 config: NodeConfig, handlers: Handlers, logger: Any = None,
                 on_end: Callable[[Link], None] | None = None) -> None:
        self.ws = ws
        self.local_id = local_id
        self.peer_id = peer_id
        self.direction = direction
        self.dialer = local_id if direction is Direction.OUTBOUND else peer_id
        self.config = config
        self.handlers = handlers
        self.rtt: float | None = None
        self.started_at = trio.current_time()
        self.last_seen = self.started_at
        self.ended = trio.Event()
        self.end_reason: str | None = None
        self._close_code = CLOSE_NORMAL
        self._close_text = "closing"
        self._close_timeout = config.shutdown_grace
        self._scope: trio.CancelScope | None = None
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, request id)
        self._sweep_at = math.inf
        self._sweep_wake = trio.Event()
        self._serving: dict[int, trio.CancelScope] = {}
        self._notifying = 0
        self._next_id = 1
        self._protocol_errors = 0
        self._last_words: wire.Message | None = None
        self._ping_seq = 0
        self._ping_sent_at = 0.0
        self._last_pong = self.started_at
        self._control_send, self._control_recv = trio.open_memory_channel[wire.Message](_CONTROL_QUEUE)
        self.log = (logger or log).bind(peer=peer_id, direction=direction.value)
        self._on_end = on_end

    def __repr__(self) -> str:
        state = "ended" if self.ended.is_set() else "up"
        return f"<Link {self.local_id}->{self.peer_id} {self.direction.value} {state}>"

    @property
    def is_up(self) -> bool:
        """True until the link has started to end."""
        return self.end_reason is None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> str:
        """Drive the link until it ends; return why it ended.

        Cancellation:
            Cancelling the caller closes the link with the code set by :meth:`set_close`
            (default 1000), waiting at most ``shutdown_grace`` for the peer's close frame.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._reader)
                nursery.start_soon(self._control_sender)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._deadline_keeper)
        finally:
            self._end(self.end_reason or f"closed locally: {self._close_text}")
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
                if self._last_words is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.send_message(wire.encode(self._last_words))
                await self.ws.aclose(self._close_code, self._close_text)
            self.ended.set()
        assert self.end_reason is not None
        return self.end_reason

    async def reject(self, code: int, reason: str) -> None:
        """Close a link that never ran (e.g. the losing side of a simultaneous dial)."""
        self._end(f"closed locally: {reason}")
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
            await self.ws.aclose(code, reason)
        self.ended.set()

    def set_close(self, code: int, reason: str, *, timeout: float | None = None) -> None:
        """Choose the close frame sent when the link is cancelled or stopped."""
        self._close_code = code
        self._close_text = reason
        if timeout is not None:
            self._close_timeout = timeout

    def stop(self, code: int, reason: str, *, timeout: float | None = None, why: str | None = None) -> None:
        """End the link from this side with a close frame ``code``/``reason``.

        Args:
            timeout: how long to wait for the peer's close frame (default ``shutdown_grace``).
            why: the end reason reported (default ``"closed locally: <reason>"``).
        """
        self.set_close(code, reason, timeout=timeout)
        self._end(why or f"closed locally: {reason}")

    def _end(self, reason: str) -> None:
        """Mark the link as ended: fail every waiting request at once and stop the tasks."""
        if self.end_reason is None:
            self.end_reason = reason
            if self._on_end is not None:
                self._on_end(self)
        error_text = f"link to {self.peer_id!r} closed before the answer arrived ({self.end_reason})"
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = LinkClosedError(self.peer_id, error_text)
                pending.done.set()
        if self._scope is not None:
            self._scope.cancel()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: wire.Message) -> None:
        """Send one frame.

        Raises:
            MessageTooLargeError: the encoded frame exceeds ``max_message_size`` (the link stays up).
            LinkClosedError: the link is closed or closing.
        """
        text = wire.encode(message)
        if len(text) > self.config.link.max_message_size:
            raise MessageTooLargeError(
                f"{message.TYPE} frame of {len(text)} characters exceeds max_message_size "
                f"{self.config.link.max_message_size}")
        if self.end_reason is not None:
            raise LinkClosedError(self.peer_id, f"link to {self.peer_id!r} is closed ({self.end_reason})")
        try:
            await self.ws.send_message(text)
        except ConnectionClosed as exc:
            self._end(_describe_close(exc))
            raise LinkClosedError(self.peer_id, f"link to {self.peer_id!r} closed ({self.end_reason})") from None

    def _send_control(self, message: wire.Message) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._control_send.send_nowait(message)

    async def _control_sender(self) -> None:
        async for message in self._control_recv:
            try:
                await self.send(message)
            except LinkClosedError:
                return

    async def request(self, method: str, params: Any = None, *, timeout: float) -> Any:
        """Send a request and wait for its answer.

        The deadline is kept by the link's deadline task rather than a cancel scope per request
        (a scope costs more than the rest of a round trip's bookkeeping). It is exact while the
        request waits for its answer; a send held up because the peer stopped reading altogether
        ends at the latest when the heartbeat timeout closes the link.

        Raises:
            RequestTimeoutError: no answer within ``timeout`` (a cancel frame is sent).
            LinkClosedError: the link ended first (raised at once when it does).
            RemoteError: the peer answered with an error.
            MessageTooLargeError: the request is too large to send.

        Cancellation:
            Cancelling the caller sends a cancel frame so the peer stops working on it.
        """
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        request_id = self._next_id
        self._next_id += 1
        deadline = trio.current_time() + timeout
        pending = _Pending()
        self._pending[request_id] = pending
        heapq.heappush(self._deadlines, (deadline, request_id))
        if deadline < self._sweep_at:
            self._sweep_wake.set()
        sent = False
        try:
            await self.send(wire.Request(id=request_id, method=method, params=params, timeout=timeout))
            sent = True
            await pending.done.wait()
        except BaseException:
            if sent and not pending.done.is_set():
                self._send_control(wire.Cancel(id=request_id))
            raise
        finally:
            del self._pending[request_id]
        if pending.timed_out:
            self._send_control(wire.Cancel(id=request_id))
            raise RequestTimeoutError(
                self.peer_id, f"request {method!r} to {self.peer_id!r} got no answer within {timeout:g}s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def _deadline_keeper(self) -> None:
        """Fail requests whose deadline has passed; sleeps until the earliest live deadline."""
        heap = self._deadlines
        while True:
            now = trio.current_time()
            while heap:
                deadline, request_id = heap[0]
                pending = self._pending.get(request_id)
                if pending is not None and not pending.done.is_set():
                    if deadline > now:
                        break
                    pending.timed_out = True
                    pending.done.set()
                heapq.heappop(heap)
            # Answered requests leave their entries behind; compact once they dominate the heap.
            if len(heap) > 1024 and len(heap) > 4 * len(self._pending):
                heap[:] = [entry for entry in heap if entry[1] in self._pending]
                heapq.heapify(heap)
            self._sweep_at = heap[0][0] if heap else math.inf
            self._sweep_wake = trio.Event()
            with trio.move_on_at(self._sweep_at):
                await self._sweep_wake.wait()

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no answer)."""
        await self.send(wire.Notification(method=method, params=params))

    # -- receiving --------------------------------------------------------------------------

    async def _reader(self) -> None:
        async with trio.open_nursery() as handlers:
            while True:
                try:
                    frame = await self.ws.get_message()
                except ConnectionClosed as exc:
                    self._end(_describe_close(exc))
                    return
                self.last_seen = trio.current_time()
                try:
                    message = wire.decode(frame)
                except ProtocolError as exc:
                    self._protocol_error(exc, wire.request_id_of(frame))
                    continue
                if type(message) is wire.Request and message.method in self.handlers.inline:
                    await self._serve_inline(message)
                else:
                    self._dispatch(message, handlers)

    async def _serve_inline(self, request: wire.Request) -> None:
        handler = self.handlers.inline[request.method]
        context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
        reply: wire.Message
        try:
            reply = wire.Response(id=request.id, result=handler(request.params, context))
        except Exception as exc:
            reply = self._error_reply(request, exc)
        await self._reply(request.id, reply)

    def _error_reply(self, request: wire.Request, exc: Exception) -> wire.Error:
        """The answer to a request whose handler raised: its RequestError, or a generic internal error."""
        if isinstance(exc, RequestError):
            return wire.Error(id=request.id, code=exc.code, message=str(exc), data=exc.data)
        self.log.error("link.handler_failed", method=request.method[:100], error=f"{type(exc).__name__}: {exc}"[:300])
        return wire.Error(id=request.id, code=wire.INTERNAL_ERROR,
                          message=f"internal error while handling {request.method[:100]!r}")

    def _protocol_error(self, exc: ProtocolError, request_id: int | None) -> None:
        self._protocol_errors += 1
        limit = self.config.link.max_protocol_errors
        self.log.warning("link.protocol_error", error=str(exc), count=self._protocol_errors, limit=limit)
        reply = wire.Error(id=request_id, code=exc.code, message=str(exc))
        if self._protocol_errors >= limit:
            self._last_words = reply  # sent just before the close frame, so the peer learns why
            self.stop(CLOSE_POLICY, "too many protocol errors")
        else:
            self._send_control(reply)

    def _dispatch(self, message: wire.Message, handlers: trio.Nursery) -> None:
        match message:
            case wire.Response(id=request_id, result=result):
                pending = self._pending.get(request_id)
                if pending is not None and not pending.done.is_set():
                    pending.result = result
                    pending.done.set()
            case wire.Ping(seq=seq):
                self._send_control(wire.Pong(seq=seq))
            case wire.Pong(seq=seq):
                now = trio.current_time()
                self._last_pong = now
                if seq == self._ping_seq:
                    self.rtt = now - self._ping_sent_at
            case wire.Request():
                self._start_request(message, handlers)
            case wire.Notification():
                self._start_notification(message, handlers)
            case wire.Error(id=None, code=code, message=text):
                self.log.warning("link.peer_reported_error", code=code, error=text[:300])
            case wire.Error(id=int(request_id), code=code, message=text, data=data):
                pending = self._pending.get(request_id)
                if pending is not None and not pending.done.is_set():
                    pending.error = RemoteError(self.peer_id, code, text, data)
                    pending.done.set()
            case wire.Cancel(id=request_id):
                scope = self._serving.get(request_id)
                if scope is not None:
                    scope.cancel()
            case wire.Hello():
                self._protocol_error(ProtocolError("hello after the link is established"), None)

    def _start_request(self, request: wire.Request, handlers: trio.Nursery) -> None:
        if request.id in self._serving:
            self._protocol_error(ProtocolError(f"request id {request.id} is already in flight"), None)
            return
        if len(self._serving) + self._notifying >= self.config.link.max_inflight:
            self._send_control(wire.Error(id=request.id, code=wire.OVERLOADED,
                                          message=f"node {self.local_id!r} is busy; retry later"))
            return
        scope = trio.CancelScope()
        if request.timeout is not None and math.isfinite(request.timeout) and request.timeout > 0:
            scope.relative_deadline = request.timeout
        self._serving[request.id] = scope
        handlers.start_soon(self._serve_request, request, scope)

    async def _serve_request(self, request: wire.Request, scope: trio.CancelScope) -> None:
        reply: wire.Message | None = None
        try:
            with scope:
                handler = self.handlers.requests.get(request.method)
                if handler is None:
                    reply = wire.Error(id=request.id, code=wire.METHOD_NOT_FOUND,
                                       message=f"unknown method {request.method[:100]!r}")
                else:
                    context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
                    try:
                        reply = wire.Response(id=request.id, result=await handler(request.params, context))
                    except Exception as exc:
                        reply = self._error_reply(request, exc)
        finally:
            del self._serving[request.id]
        if reply is None:
            return  # cancelled by the caller or past its deadline: nobody waits for an answer
        await self._reply(request.id, reply)

    async def _reply(self, request_id: int, reply: wire.Message) -> None:
        try:
            await self.send(reply)
        except ProtocolError as exc:  # too large, or the handler returned something that is not JSON
            await self._send_quietly(wire.Error(id=request_id, code=wire.INTERNAL_ERROR, message=str(exc)))
        except LinkClosedError:
            pass

    async def _send_quietly(self, message: wire.Message) -> None:
        with contextlib.suppress(LinkClosedError, ProtocolError):
            await self.send(message)

    def _start_notification(self, notification: wire.Notification, handlers: trio.Nursery) -> None:
        inline = self.handlers.inline_notifications.get(notification.method)
        if inline is not None:
            # Run in the reader, so notifications of this method are handled in the order they were sent.
            try:
                inline(notification.params, RequestContext(peer_id=self.peer_id, method=notification.method,
                                                           timeout=None))
            except Exception as exc:
                self.log.error("link.handler_failed", method=notification.method[:100],
                               error=f"{type(exc).__name__}: {exc}"[:300])
            return
        handler = self.handlers.notifications.get(notification.method)
        if handler is None:
            self.log.debug("link.unknown_notification", method=notification.method[:100])
            return
        if len(self._serving) + self._notifying >= self.config.link.max_inflight:
            self.log.warning("link.notification_dropped", method=notification.method[:100], reason="busy")
            return
        self._notifying += 1
        handlers.start_soon(self._serve_notification, handler, notification)

    async def _serve_notification(self, handler: NotificationHandler, notification: wire.Notification) -> None:
        context = RequestContext(peer_id=self.peer_id, method=notification.method, timeout=None)
        try:
            await handler(notification.params, context)
        except Exception as exc:
            self.log.error("link.handler_failed", method=notification.method[:100],
                           error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self._notifying -= 1

    # -- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Send a ping every ``interval``, starting at once (so RTT is known early)."""
        while True:
            self._ping_seq += 1
            self._ping_sent_at = trio.current_time()
            self._send_control(wire.Ping(seq=self._ping_seq))
            await trio.sleep(self.config.heartbeat.interval)

    async def _watchdog(self) -> None:
        """End the link when no pong arrived for ``timeout``."""
        timeout = self.config.heartbeat.timeout
        while True:
            deadline = self._last_pong + timeout
            if trio.current_time() >= deadline:
                # The peer is gone or wedged: don't wait on a close handshake it won't answer.
                self.stop(CLOSE_HEARTBEAT, "heartbeat timeout", timeout=0,
                          why=f"heartbeat timeout: no pong for {timeout:g}s")
                return
            await trio.sleep_until(deadline)


def _describe_close(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    if reason.code == 1006:
        return "connection lost (1006)"
    text = f": {reason.reason}" if reason.reason else ""
    return f"connection closed ({reason.code}{text})"
