"""Serving what a peer asks of us over a link: its requests and notifications.

Every request is handled in a task of its own (or, for inline handlers, by the link's reader itself),
and keeps a ``max_inflight`` slot until its answer has been sent (or dropped with the link): a peer
that stops reading cannot make us hold more than ``max_inflight`` requests and answers. Requests
the link passes on to another link count against the same limit.

A task that has answered its request waits for the next one (up to :data:`IDLE_WORKERS` of them per
link), so a request usually costs neither a task spawn nor a cancel scope of its own: each such
worker serves its requests one at a time under one scope, which carries the deadline of the request
being served and is cancelled when the peer cancels that request (the worker then ends).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

import attrs
import trio

from .._config._logging import ThrottledLog
from .._errors import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    OVERLOADED,
    RATE_LIMITED,
    LinkClosedError,
    ProtocolError,
    RequestError,
)
from . import _wire as wire


@attrs.frozen
class RequestContext:
    """What a request handler knows about the request it serves."""

    peer_id: str
    method: str
    timeout: float | None


RequestHandler = Callable[[Any, RequestContext], Awaitable[Any]]
InlineHandler = Callable[[Any, RequestContext], Any]
NotificationHandler = Callable[[Any, RequestContext], Awaitable[None]]
InlineNotificationHandler = Callable[[Any, RequestContext], None]


class MethodTable(Protocol):
    """The handlers requests and notifications are dispatched to (a :class:`fednode._peers._link.Handlers`)."""

    @property
    def requests(self) -> Mapping[str, RequestHandler]: ...
    @property
    def inline(self) -> Mapping[str, InlineHandler]: ...
    @property
    def notifications(self) -> Mapping[str, NotificationHandler]: ...
    @property
    def inline_notifications(self) -> Mapping[str, InlineNotificationHandler]: ...
    @property
    def admit(self) -> Callable[[str], float] | None: ...


#: Tasks per link kept waiting for the peer's next request once they have answered one.
IDLE_WORKERS = 4


class _Worker:
    """A task serving the peer's requests one at a time (see :meth:`Serving.start_request`)."""

    __slots__ = ("request", "scope", "task")

    def __init__(self, request: wire.Request) -> None:
        self.request: wire.Request | None = request  # the one being served (None while idle)
        #: cancelled when the peer cancels the request being served, or at its deadline (for good)
        self.scope = trio.CancelScope()
        self.task: trio.lowlevel.Task | None = None


def retry_after(seconds: float) -> float:
    """A retry hint for a client or peer: ``seconds`` rounded up to the millisecond."""
    return math.ceil(seconds * 1000) / 1000


class Serving:
    """The requests and notifications from one peer being served.

    Args:
        peer_id: the peer's id (given to handlers in their :class:`RequestContext`).
        local_id: this node's id (for the "busy" answer).
        handlers: the method table.
        max_inflight: requests and notifications served at once, with those in ``passing_on``.
        passing_on: the peer's requests the link has passed on to another link, by the peer's ids.
        send: writes a frame, after those waiting (the link's send).
        send_control: queues a frame that may be dropped.
        on_duplicate: called with the protocol error for a request whose id is already in flight.
        log: the link's logger; ``throttled`` the same, limited (for lines the peer can cause at will).
    """

    def __init__(self, *, peer_id: str, local_id: str, handlers: MethodTable, max_inflight: int,
                 passing_on: Collection[int], send: Callable[[wire.Message], Awaitable[None]],
                 send_control: Callable[[wire.Message], None], on_duplicate: Callable[[ProtocolError], None],
                 log: Any, throttled: ThrottledLog) -> None:
        self.peer_id = peer_id
        self.local_id = local_id
        self.handlers = handlers
        self.max_inflight = max_inflight
        self._passing_on = passing_on
        self._send = send
        self._send_control = send_control
        self._on_duplicate = on_duplicate
        self.log = log
        self._throttled = throttled
        #: requests being served, by the peer's ids: cancelling the scope stops the handler (None: the
        #: handler is done and the answer is being sent; too late to stop)
        self.scopes: dict[int, trio.CancelScope | None] = {}
        self._notifying = 0
        self._idle: list[_Worker] = []  # workers waiting for a request, the last one idle first

    def _busy(self) -> bool:
        return len(self.scopes) + len(self._passing_on) + self._notifying >= self.max_inflight

    def admit(self, request: wire.Request) -> bool:
        """Whether a request may be served (else it was refused: duplicate id, over the peer's rate, or too busy)."""
        if request.id in self.scopes or request.id in self._passing_on:
            self._on_duplicate(ProtocolError(f"request id {request.id} is already in flight"))
            return False
        rate_limit = self.handlers.admit
        wait = rate_limit(self.peer_id) if rate_limit is not None else 0.0
        if wait > 0:
            self._send_control(wire.Error(
                id=request.id, code=RATE_LIMITED, data={"retryAfter": retry_after(wait)},
                message=f"peer {self.peer_id!r} is over its rate limit at {self.local_id!r}; retry later"))
            return False
        if self._busy():
            self._send_control(wire.Error(id=request.id, code=OVERLOADED,
                                          message=f"node {self.local_id!r} is busy; retry later"))
            return False
        return True

    def cancel(self, request_id: int) -> bool:
        """Stop serving a request the peer cancelled; False if it is not served here."""
        if request_id not in self.scopes:
            return False
        scope = self.scopes[request_id]
        if scope is not None:
            scope.cancel()
        return True

    def error_reply(self, request: wire.Request, exc: Exception) -> wire.Error:
        """The answer to a request whose handler raised: its RequestError, or a generic internal error."""
        if isinstance(exc, RequestError):
            return wire.Error(id=request.id, code=exc.code, message=str(exc), data=exc.data)
        self.log.error("link.handler_failed", method=request.method[:100], error=f"{type(exc).__name__}: {exc}"[:300])
        return wire.Error(id=request.id, code=INTERNAL_ERROR,
                          message=f"internal error while handling {request.method[:100]!r}")

    async def serve_inline(self, request: wire.Request) -> None:
        """Serve a request whose handler is inline, in the calling task (the reader)."""
        handler = self.handlers.inline[request.method]
        context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
        reply: wire.Message
        try:
            reply = wire.Response(id=request.id, result=handler(request.params, context))
        except Exception as exc:
            reply = self.error_reply(request, exc)
        await self.reply(request.id, reply)

    def start_request(self, request: wire.Request, nursery: trio.Nursery, *, admitted: bool = False) -> None:
        """Serve a request in a task (unless :meth:`admit` refuses it): an idle worker, else a new one."""
        if not admitted and not self.admit(request):
            return
        if self._idle:
            worker = self._idle.pop()
            worker.request = request
            assert worker.task is not None
            trio.lowlevel.reschedule(worker.task)
        else:
            worker = _Worker(request)
            nursery.start_soon(self._work, worker)
        if request.timeout is not None and math.isfinite(request.timeout) and request.timeout > 0:
            worker.scope.deadline = trio.current_time() + request.timeout
        self.scopes[request.id] = worker.scope

    async def _work(self, worker: _Worker) -> None:
        """Serve the worker's request, then each one handed to it while idle, until it is not needed.

        One cancel scope serves them all: it carries the deadline of the request being served, and a
        cancel from the peer (or that deadline) cancels it for good, ending the worker. The answer is
        sent with no deadline, and a cancel arriving then changes nothing (as before a task per request).
        """
        worker.task = trio.lowlevel.current_task()
        scope = worker.scope
        with scope:
            while True:
                request = worker.request
                assert request is not None
                # The request keeps its max_inflight slot until its answer is sent (or dropped with the
                # link), so a peer that stops reading cannot make us hold more than max_inflight of them.
                try:
                    reply = await self._handle(request)  # cancelled: by the peer, or past the deadline
                    # (a deadline passing between the handler's last checkpoint and here still stops
                    # the answer: the caller gave up at that same deadline)
                    scope.deadline = math.inf
                    self.scopes[request.id] = None
                    await self.reply(request.id, reply)
                finally:
                    del self.scopes[request.id]
                if scope.cancel_called or len(self._idle) >= IDLE_WORKERS:
                    return
                await self._next(worker)
        # else cancelled by the caller or past its deadline: nobody waits for an answer

    async def _next(self, worker: _Worker) -> None:
        """Wait, idle, until :meth:`start_request` hands the worker a request."""
        worker.request = None  # (its params are not kept alive while idle)
        self._idle.append(worker)

        def abort(_: object) -> trio.lowlevel.Abort:  # the link is ending
            self._idle.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _handle(self, request: wire.Request) -> wire.Message:
        """The answer to a request: its handler's result, or the error it raised."""
        handler = self.handlers.requests.get(request.method)
        if handler is None:
            return wire.Error(id=request.id, code=METHOD_NOT_FOUND, message=f"unknown method {request.method[:100]!r}")
        context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
        try:
            return wire.Response(id=request.id, result=await handler(request.params, context))
        except Exception as exc:
            return self.error_reply(request, exc)

    async def reply(self, request_id: int, reply: wire.Message) -> None:
        """Send the answer to a request; one that cannot be sent becomes an internal error."""
        try:
            await self._send(reply)
        except ProtocolError as exc:  # too large, or the handler returned something that is not JSON
            with contextlib.suppress(LinkClosedError, ProtocolError):
                await self._send(wire.Error(id=request_id, code=INTERNAL_ERROR, message=str(exc)))
        except LinkClosedError:
            pass

    def start_notification(self, notification: wire.Notification, nursery: trio.Nursery) -> None:
        """Handle a notification: inline at once, else in its own task in ``nursery`` (dropped when busy)."""
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
        if self._busy():
            self._throttled.warning("link.notification_dropped", method=notification.method[:100], reason="busy")
            return
        self._notifying += 1
        nursery.start_soon(self._serve_notification, handler, notification)

    async def _serve_notification(self, handler: NotificationHandler, notification: wire.Notification) -> None:
        context = RequestContext(peer_id=self.peer_id, method=notification.method, timeout=None)
        try:
            await handler(notification.params, context)
        except Exception as exc:
            self.log.error("link.handler_failed", method=notification.method[:100],
                           error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self._notifying -= 1
