"""Serving what a peer asks of us over a link: its requests and notifications.

Every request is handled in its own task (or, for inline handlers, by the link's reader itself),
and keeps a ``max_inflight`` slot until its answer has been sent (or dropped with the link): a peer
that stops reading cannot make us hold more than ``max_inflight`` requests and answers. Requests
the link passes on to another link count against the same limit.
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
        #: requests being served, by the peer's ids: cancelling the scope stops the handler
        self.scopes: dict[int, trio.CancelScope] = {}
        self._notifying = 0

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
        scope = self.scopes.get(request_id)
        if scope is None:
            return False
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
        """Serve a request in its own task in ``nursery`` (unless :meth:`admit` refuses it)."""
        if not admitted and not self.admit(request):
            return
        scope = trio.CancelScope()
        if request.timeout is not None and math.isfinite(request.timeout) and request.timeout > 0:
            scope.relative_deadline = request.timeout
        self.scopes[request.id] = scope
        nursery.start_soon(self._serve_request, request, scope)

    async def _serve_request(self, request: wire.Request, scope: trio.CancelScope) -> None:
        # The request keeps its max_inflight slot until its answer is sent (or dropped with the link),
        # so a peer that stops reading cannot make us hold more than max_inflight requests and answers.
        reply: wire.Message | None = None
        try:
            with scope:
                handler = self.handlers.requests.get(request.method)
                if handler is None:
                    reply = wire.Error(id=request.id, code=METHOD_NOT_FOUND,
                                       message=f"unknown method {request.method[:100]!r}")
                else:
                    context = RequestContext(peer_id=self.peer_id, method=request.method, timeout=request.timeout)
                    try:
                        reply = wire.Response(id=request.id, result=await handler(request.params, context))
                    except Exception as exc:
                        reply = self.error_reply(request, exc)
            # else cancelled by the caller or past its deadline: nobody waits for an answer
            if reply is not None:
                await self.reply(request.id, reply)
        finally:
            del self.scopes[request.id]

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
