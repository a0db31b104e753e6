"""One authenticated peer link: its tasks, and the reader that dispatches what the peer sends.

A :class:`Link` wraps a trio-websocket connection whose handshake, authentication and hello have
already succeeded. :meth:`Link.run` drives it until it ends and reports why. The reader never stops
draining frames (trio-websocket answers WebSocket pings, and we answer heartbeat pings, only while
messages are read), so a busy application never makes a live link look dead: every request is
handled in its own task, bounded by ``max_inflight`` until its answer has been sent.

The converse holds too: a peer that stops reading cannot hold the link up. Only a pong answering a
ping we sent and have not seen answered counts (ping seqs are random, so they cannot be guessed),
and a frame we write that the peer does not take within the stall limit closes the link.

A link runs four tasks (see :meth:`Link.run`): the reader, the sender, the heartbeat and, from the
first request sent on it (an idle link saves the task), the deadline keeper. Their state lives in
parts of their own, each given what it needs when built:
:class:`~fednode._peers._heartbeat.Heartbeat` (pings due, pongs matched, dead-at; no I/O),
:class:`~fednode._peers._sender.FrameSender` (one frame written at a time, the send queue),
:class:`~fednode._peers._requests.RequestTable` (requests sent and not answered, with their deadlines) and
:class:`~fednode._peers._serving.Serving` (the peer's requests and notifications being served). What
stays here ties them together, and passes requests from one link to another (:class:`Transit`).
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .._config._config import HeartbeatConfig, LinkConfig
from .._config._logging import ThrottledLog
from .._errors import LinkClosedError, ProtocolError, RemoteError, RequestTimeoutError
from . import _wire as wire
from ._heartbeat import BitSource, Heartbeat
from ._heartbeat import stall_limit as _stall_limit
from ._requests import Pending, RequestTable
from ._sender import FrameSender, Outgoing, describe_close
from ._serving import InlineHandler as InlineHandler
from ._serving import InlineNotificationHandler as InlineNotificationHandler
from ._serving import NotificationHandler as NotificationHandler
from ._serving import RequestContext as RequestContext
from ._serving import RequestHandler as RequestHandler
from ._serving import Serving

log = structlog.get_logger("fednode")

#: Close codes fednode uses besides the standard ones.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_DUPLICATE = 4001
CLOSE_HEARTBEAT = 4002


def stall_limit(heartbeat: HeartbeatConfig) -> float:
    """How long a frame may take to be written before the peer counts as no longer reading
    (see :func:`fednode._peers._heartbeat.stall_limit`)."""
    return _stall_limit(heartbeat.interval, heartbeat.timeout)


@attrs.frozen
class LinkSettings:
    """A link's own sections of the node's configuration (none of them changes on a reload).

    Attributes:
        heartbeat: the ``[heartbeat]`` section (ping interval, dead after).
        limits: the ``[link]`` section (``max_message_size``, ``max_inflight``, ``max_protocol_errors``).
        shutdown_grace: how long a closing link waits for the peer's close frame, by default.
    """

    heartbeat: HeartbeatConfig = attrs.field(factory=HeartbeatConfig)
    limits: LinkConfig = attrs.field(factory=LinkConfig)
    shutdown_grace: float = 5.0


class Direction(enum.StrEnum):
    """Which side dialed the link."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"


@attrs.define(eq=False)
class Transit:
    """A request passed on to another link by the links themselves, without a task.

    A transit handler (see :class:`Handlers`) returns one to say where a request goes next and
    with which params and timeout; the inbound link's reader sends it on through ``onward``'s send
    queue, and ``onward``'s reader sends the answer (or error) back under the original id. Cancel
    frames follow the request; its deadline is kept by ``onward``'s deadline task.

    Attributes:
        onward: the link the request continues on.
        params: the params sent onward.
        timeout: seconds the onward request may take.
        error: ``error(why)`` gives the ``(code, message)`` answered when the request fails here:
            ``why`` is ``"timeout"`` or ``"lost: <reason>"`` (the onward link ended first), or
            ``"too large: <detail>"`` (the onward frame would exceed ``max_message_size``).
        done: called once when the request is over, however it ended (``outcome`` and ``code`` say how).
        outcome: how it ended, set before ``done`` is called: ``ok``, ``tool_error`` (a result
            with ``isError``), ``error`` (answered with the error ``code``, from onward or from here)
            or ``cancelled`` (the asker cancelled it, or its link ended).
    """

    onward: Link
    params: Any
    timeout: float
    error: Callable[[str], tuple[int, str]]
    done: Callable[[], None] | None = None
    outcome: str = "cancelled"
    code: int | None = None
    inbound: Link | None = None
    inbound_id: int = 0
    onward_id: int = 0


TransitHandler = Callable[[Any, RequestContext, "Link"], Transit | None]


@attrs.define
class Handlers:
    """The node's method table, shared by all its links.

    ``inline`` handlers are plain functions run by the link's reader itself, saving a task per
    request; they must return at once (no I/O, no waiting). A ``transit`` handler, also run by the
    reader, returns a :class:`Transit` to pass the request on to another link, or None to have it
    served by ``requests[method]`` after all. Everything else runs in a task (one serving one request
    at a time, kept for the next when it is done: see :mod:`fednode._peers._serving`).
    """

    requests: dict[str, RequestHandler] = attrs.field(factory=dict)
    inline: dict[str, InlineHandler] = attrs.field(factory=dict)
    transit: dict[str, TransitHandler] = attrs.field(factory=dict)
    #: called with (peer id, seconds) for each heartbeat round trip measured
    on_rtt: Callable[[str, float], None] | None = None
    notifications: dict[str, NotificationHandler] = attrs.field(factory=dict)
    inline_notifications: dict[str, InlineNotificationHandler] = attrs.field(factory=dict)
    #: called with the peer's id for each request it sends that is not inline (served in a task or
    #: passed on); returns 0 to take it, else the seconds until the peer's rate allows one more
    #: (the request is then answered with RATE_LIMITED and ``data.retryAfter``)
    admit: Callable[[str], float] | None = None

    def merge(self, other: Handlers) -> None:
        """Serve every method of ``other`` too (a part's own table; replaces same-named methods here)."""
        for method in (*other.requests, *other.inline, *other.transit):
            self.requests.pop(method, None)
            self.inline.pop(method, None)
        for method in (*other.notifications, *other.inline_notifications):
            self.notifications.pop(method, None)
            self.inline_notifications.pop(method, None)
        self.requests.update(other.requests)
        self.inline.update(other.inline)
        self.transit.update(other.transit)
        self.notifications.update(other.notifications)
        self.inline_notifications.update(other.inline_notifications)


class Link:
    """A live, authenticated link to one peer.

    Args:
        ws: the open WebSocket (handshake, authentication and hello done).
        local_id: this node's id.
        peer_id: the authenticated peer's id.
        direction: who dialed.
        settings: the link's configuration (heartbeat, limits, shutdown grace).
        handlers: the method table requests and notifications are dispatched to.
        rng: where heartbeat ping seqs come from (default: the operating system's randomness).
    """

    def __init__(self, ws: WebSocketConnection, *, local_id: str, peer_id: str, direction: Direction,
                 settings: LinkSettings, handlers: Handlers, logger: Any = None,
                 on_end: Callable[[Link], None] | None = None, rng: BitSource | None = None) -> None:
        self.ws = ws
        self.local_id = local_id
        self.peer_id = peer_id
        self.direction = direction
        self.dialer = local_id if direction is Direction.OUTBOUND else peer_id
        self.settings = settings
        self.handlers = handlers
        self.started_at = trio.current_time()
        self.heartbeat = Heartbeat(interval=settings.heartbeat.interval, timeout=settings.heartbeat.timeout,
                                   start=self.started_at, rng=rng)
        self.last_seen = self.started_at
        self.ended = trio.Event()
        self.end_reason: str | None = None
        self._close_code = CLOSE_NORMAL
        self._close_text = "closing"
        self._close_timeout = settings.shutdown_grace
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._keeping = False  # the deadline keeper has been started
        self._requests = RequestTable[Transit]()
        self._pending = self._requests.pending  # our requests waiting for answers, by id
        self._transits_in: dict[int, Transit] = {}  # requests from this peer passed on, by its ids
        self._transits_out = self._requests.passed  # requests passed on to this peer, by our ids
        self._protocol_errors = 0
        self._last_words: wire.Message | None = None
        self._out = FrameSender[Transit](ws, peer_id=peer_id, max_message_size=settings.limits.max_message_size,
                                         on_lost=self._end, on_too_large=_too_large)
        self.log = (logger or log).bind(peer=peer_id, direction=direction.value)
        self._throttled = ThrottledLog(self.log)  # for lines the peer can cause at will
        self._inbound = Serving(peer_id=peer_id, local_id=local_id, handlers=handlers,
                                max_inflight=settings.limits.max_inflight, passing_on=self._transits_in,
                                send=self._out.send, send_control=self._out.send_control,
                                on_duplicate=self._protocol_error, log=self.log, throttled=self._throttled)
        self._serving = self._inbound.scopes  # the peer's requests being served here, by its ids
        self._on_end = on_end

    def __repr__(self) -> str:
        state = "ended" if self.ended.is_set() else "up"
        return f"<Link {self.local_id}->{self.peer_id} {self.direction.value} {state}>"

    @property
    def rtt(self) -> float | None:
        """The last heartbeat round trip measured, in seconds (None before the first)."""
        return self.heartbeat.rtt

    @property
    def passing_on(self) -> int:
        """Requests from this peer currently passed on to another link."""
        return len(self._transits_in)

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
                self._scope, self._nursery = nursery.cancel_scope, nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._out.run)
                nursery.start_soon(self._heartbeat)
                if self._pending or self._transits_out:  # sent before the link ran
                    self._keep_deadlines()
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
            self.end_reason = self._out.closed = reason
            if self._on_end is not None:
                self._on_end(self)
        error_text = f"link to {self.peer_id!r} closed before the answer arrived ({self.end_reason})"
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = LinkClosedError(self.peer_id, error_text)
                pending.done.set()
        for transit in list(self._transits_out.values()):  # passed on to this peer: answer the asker
            _fail_transit(transit, f"lost: {self.end_reason}")
        for transit in list(self._transits_in.values()):  # from this peer: nobody waits any more
            transit.onward._out.send_control(wire.Cancel(id=transit.onward_id))
            _finish_transit(transit)
        self._out.close(self.end_reason)
        if self._scope is not None:
            self._scope.cancel()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: wire.Message) -> None:
        """Send one frame, after the frames already waiting to be sent.

        Raises:
            MessageTooLargeError: the encoded frame exceeds ``max_message_size`` (the link stays up).
            LinkClosedError: the link is closed or closing, or closes before the frame is sent; this
                includes a peer that does not take our frames for the stall limit.

        Cancellation:
            A frame still waiting for its turn is not sent.
        """
        await self._out.send(message)
        # A frame the socket takes at once costs no checkpoint (see send_text): a caller sending frame
        # after frame (a route flood) still lets the other tasks run between them.
        await trio.lowlevel.cancel_shielded_checkpoint()

    def forward_notification(self, method: str, params: Any) -> None:
        """Queue a notification for this peer without waiting (dropped while the queue is long)."""
        self._out.send_control(wire.Notification(method=method, params=params))

    async def request(self, method: str, params: Any = None, *, timeout: float) -> Any:
        """Send a request and wait for its answer.

        The deadline is kept by the link's deadline task rather than a cancel scope per request
        (a scope costs more than the rest of a round trip's bookkeeping). It is exact, and covers
        sending the request too. On a busy link the request is queued and the caller waits for
        the answer meanwhile; if the deadline comes first, the request is dropped unsent. On an
        idle link the caller writes the frame itself; if the peer has not taken it by the
        deadline, the link is closed: only that frees the caller, and a half-written frame would
        leave the link unusable anyway.

        Raises:
            RequestTimeoutError: no answer within ``timeout`` (a cancel frame is sent if the
                request went out).
            LinkClosedError: the link ended first (raised at once when it does).
            RemoteError: the peer answered with an error.
            MessageTooLargeError: the request is too large to send.

        Cancellation:
            Cancelling the caller sends a cancel frame so the peer stops working on it.
        """
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        request_id = self._requests.new_id()
        text = self._out.encode(wire.Request(id=request_id, method=method, params=params, timeout=timeout))
        pending = self._requests.add(request_id, trio.current_time() + timeout)
        self._keep_deadlines()
        queued: Outgoing | None = None
        written = False
        try:
            if self._out.writing or self._out.queued:  # busy: the sender task writes it in turn
                queued = Outgoing(text)
                self._out.hand_over(queued)
            else:
                await self._out.write(text, pending)
                written = True
            await pending.done.wait()
        except LinkClosedError:
            if not pending.timed_out:
                raise
            # else our frame was stuck at the deadline, and the keeper closed the link to free us
        except BaseException:
            if not pending.done.is_set() and (written or (queued is not None and queued.started)):
                self._out.send_control(wire.Cancel(id=request_id))
            raise
        finally:
            del self._pending[request_id]
            if queued is not None:
                queued.abandoned = True  # not sent at all if still queued
        if pending.timed_out:
            if written or (queued is not None and queued.started):
                self._out.send_control(wire.Cancel(id=request_id))
            raise RequestTimeoutError(
                self.peer_id, f"request {method!r} to {self.peer_id!r} got no answer within {timeout:g}s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _keep_deadlines(self) -> None:
        """Start the deadline keeper once there is a deadline to keep (an idle link saves the task)."""
        if not self._keeping and self._nursery is not None and self.end_reason is None:
            self._keeping = True
            self._nursery.start_soon(self._deadline_keeper)

    async def _deadline_keeper(self) -> None:
        """Fail requests whose deadline has passed; sleeps until the earliest live deadline."""
        table = self._requests
        while True:
            for request in table.expired(trio.current_time()):
                if isinstance(request, Pending):
                    request.timed_out = True
                    request.done.set()
                    if self._out.writer is request:
                        # Only closing the stream frees the sender, and the frame may be half-written.
                        self.stop(CLOSE_HEARTBEAT, "peer stopped reading", timeout=0,
                                  why="peer stopped reading: a request could not be sent within its timeout")
                else:
                    self._out.send_control(wire.Cancel(id=request.onward_id))
                    _fail_transit(request, "timeout")
            await table.wait()

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
                    self._end(describe_close(exc))
                    return
                self.last_seen = trio.current_time()
                try:
                    message = wire.decode(frame)
                except ProtocolError as exc:
                    self._protocol_error(exc, wire.request_id_of(frame))
                    continue
                if type(message) is wire.Request:
                    if message.method in self.handlers.inline:
                        await self._inbound.serve_inline(message)
                        continue
                    transit = self.handlers.transit.get(message.method)
                    if transit is not None:
                        await self._pass_on(message, transit, handlers)
                        continue
                await self._dispatch(message, handlers)

    async def _pass_on(self, request: wire.Request, handler: TransitHandler, handlers: trio.Nursery) -> None:
        """Send a request on to the link its transit handler names (or serve it here, if it names none)."""
        inbound = self._inbound
        if not inbound.admit(request):
            return
        context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
        try:
            transit = handler(request.params, context, self)
        except Exception as exc:
            await inbound.reply(request.id, inbound.error_reply(request, exc))
            return
        if transit is None:
            inbound.start_request(request, handlers, admitted=True)
            return
        onward = transit.onward
        transit.inbound, transit.inbound_id = self, request.id
        if not onward.is_up:
            code, text = transit.error(f"lost: {onward.end_reason}")
            transit.outcome, transit.code = "error", code
            if transit.done is not None:
                transit.done()
            await inbound.reply(request.id, wire.Error(id=request.id, code=code, message=text))
            return
        transit.onward_id = onward_id = onward._requests.add_passed(transit, trio.current_time() + transit.timeout)
        onward._keep_deadlines()
        self._transits_in[request.id] = transit
        await onward._out.relay(wire.Request(id=onward_id, method=request.method, params=transit.params,
                                             timeout=transit.timeout), transit)

    def _protocol_error(self, exc: ProtocolError, request_id: int | None = None) -> None:
        self._protocol_errors += 1
        limit = self.settings.limits.max_protocol_errors
        self.log.warning("link.protocol_error", error=str(exc), count=self._protocol_errors, limit=limit)
        reply = wire.Error(id=request_id, code=exc.code, message=str(exc))
        if self._protocol_errors >= limit:
            self._last_words = reply  # sent just before the close frame, so the peer learns why
            self.stop(CLOSE_POLICY, "too many protocol errors")
        else:
            self._out.send_control(reply)

    async def _dispatch(self, message: wire.Message, handlers: trio.Nursery) -> None:
        match message:
            case wire.Response(id=request_id, result=result):
                pending = self._pending.get(request_id)
                if pending is not None:
                    if not pending.done.is_set():
                        pending.result = result
                        pending.done.set()
                elif ((transit := self._transits_out.get(request_id)) is not None
                      and _finish_transit(transit, "tool_error" if _is_tool_error(result) else "ok")):
                    assert transit.inbound is not None
                    await transit.inbound._out.relay(wire.Response(id=transit.inbound_id, result=result), None)
            case wire.Ping(seq=seq):
                self._out.send_control(wire.Pong(seq=seq))
            case wire.Pong(seq=seq):
                rtt = self.heartbeat.pong(seq, trio.current_time())
                if rtt is None:  # answers no ping of ours: counted (see Heartbeat.pong), logged once
                    if self.heartbeat.stray_pongs == 1:
                        self.log.warning("link.stray_pong", seq=seq)
                elif self.handlers.on_rtt is not None:
                    self.handlers.on_rtt(self.peer_id, rtt)
            case wire.Request():
                self._inbound.start_request(message, handlers)
            case wire.Notification():
                self._inbound.start_notification(message, handlers)
            case wire.Error(id=None, code=code, message=text):
                self._throttled.warning("link.peer_reported_error", code=code, error=text[:300])
            case wire.Error(id=int(request_id), code=code, message=text, data=data):
                pending = self._pending.get(request_id)
                if pending is not None:
                    if not pending.done.is_set():
                        pending.error = RemoteError(self.peer_id, code, text, data)
                        pending.done.set()
                elif (transit := self._transits_out.get(request_id)) is not None and _finish_transit(
                        transit, "error", code):
                    assert transit.inbound is not None
                    await transit.inbound._out.relay(
                        wire.Error(id=transit.inbound_id, code=code, message=text, data=data), None)
            case wire.Cancel(id=request_id):
                if not self._inbound.cancel(request_id) and (transit := self._transits_in.get(request_id)) is not None:
                    transit.onward._out.send_control(wire.Cancel(id=transit.onward_id))
                    _finish_transit(transit)
            case wire.Hello():
                self._protocol_error(ProtocolError("hello after the link is established"), None)

    # -- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Drive :attr:`heartbeat`: send its pings (the first at once, so RTT is known early), and
        end the link when it is dead, or when a frame has been stuck being written for the stall
        limit (the peer stopped reading). One task, asleep until the next thing due."""
        heartbeat, out = self.heartbeat, self._out
        stall = heartbeat.stall_limit
        while True:
            now = trio.current_time()
            if heartbeat.is_dead(now):
                strays = heartbeat.stray_pongs
                stray = f" ({strays} pongs answered no ping of ours)" if strays else ""
                # The peer is gone or wedged: don't wait on a close handshake it won't answer.
                self.stop(CLOSE_HEARTBEAT, "heartbeat timeout", timeout=0,
                          why=f"heartbeat timeout: no pong for {heartbeat.timeout:g}s{stray}")
                return
            if out.writing:
                stuck_at = out.writing_since + stall
                if now >= stuck_at:
                    self.stop(CLOSE_HEARTBEAT, "peer stopped reading", timeout=0,
                              why=f"peer stopped reading: a frame could not be sent for {stall:g}s")
                    return
            else:
                # No wake-up per frame: a write starting before the next look is still caught
                # exactly at its limit, since it can't have started before now.
                stuck_at = now + stall
            if heartbeat.next_ping_due(now):
                self._out.send_control(wire.Ping(seq=heartbeat.ping(now)))
            await trio.sleep_until(min(heartbeat.next_event_at(), stuck_at))


def _finish_transit(transit: Transit, outcome: str = "cancelled", code: int | None = None) -> bool:
    """End a passed-on request (how: see :attr:`Transit.outcome`): forget it on both links; False if it
    had ended already."""
    if transit.onward._transits_out.pop(transit.onward_id, None) is None:
        return False
    assert transit.inbound is not None
    transit.inbound._transits_in.pop(transit.inbound_id, None)
    transit.outcome, transit.code = outcome, code
    if transit.done is not None:
        transit.done()
    return True


def _is_tool_error(result: Any) -> bool:
    return isinstance(result, dict) and result.get("isError") is True


def _too_large(transit: Transit, exc: ProtocolError) -> None:
    """A request passed on could not be sent onward (too large, or not JSON): the asker gets the error."""
    _fail_transit(transit, f"too large: {exc}")


def _fail_transit(transit: Transit, why: str) -> None:
    """End a passed-on request here, answering the asker with the error for ``why`` (queued)."""
    code, text = transit.error(why)
    if _finish_transit(transit, "error", code):
        assert transit.inbound is not None
        transit.inbound._out.enqueue(wire.Error(id=transit.inbound_id, code=code, message=text), None)
