"""The HTTP side of the client edge: serving an ASGI app with hypercorn, client tokens, SSE resumption.

None of it knows MCP: :meth:`~fednode._mcp._edge.MCPEdge.asgi_app` builds the app (the SDK's Streamable
HTTP transport) with these parts and :meth:`~fednode._mcp._edge.MCPEdge.serve_http` serves it here.
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import hypercorn.config
import hypercorn.trio
import trio
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BearerAuth", "BoundedEventStore", "healthz", "serve_asgi"]


async def serve_asgi(app: ASGIApp, host: str, port: int, *, path: str, certfile: str | None, keyfile: str | None,
                     log: Any, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with hypercorn's Trio worker until cancelled (HTTPS with a cert and key).

    ``task_status.started(port)`` reports the bound port once listening (useful with port 0);
    ``path`` only goes into the ``edge.listening`` log line.
    Cancelling the task stops the server at once, open streams included.
    """
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if certfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = None
    config.errorlog = logging.getLogger("fednode.edge.http")
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, cast(Any, app), config))
        bound = int(binds[0].rsplit(":", 1)[1])
        log.info("edge.listening", url=f"{binds[0]}{path}")
        task_status.started(bound)


class BoundedEventStore(EventStore):
    """SSE events kept for resumption: the newest ``limit`` of them, all streams together, and no more
    than ``max_bytes`` of them (as JSON), so a few huge messages cannot pile up in memory.

    Event ids carry a random part, so a client cannot replay another client's stream by guessing.
    """

    def __init__(self, limit: int = 4096, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._events: collections.OrderedDict[str, tuple[str, Any, int]] = collections.OrderedDict()
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._counter = 0

    async def store_event(self, stream_id: str, message: Any) -> str:
        self._counter += 1
        event_id = f"{self._counter}-{secrets.token_hex(8)}"
        size = len(message.model_dump_json(by_alias=True, exclude_none=True)) if message is not None else 0
        self._events[event_id] = (stream_id, message, size)
        self._bytes += size
        while len(self._events) > self._limit or (self._bytes > self._max_bytes and len(self._events) > 1):
            _, (_, _, dropped) = self._events.popitem(last=False)
            self._bytes -= dropped
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        known = self._events.get(last_event_id)
        if known is None:
            return None
        stream_id = known[0]
        after = False
        for event_id, (stream, message, _size) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the node is up (needs no client token)."""
    return PlainTextResponse("ok")


class BearerAuth:
    """ASGI middleware: while ``tokens`` is non-empty, every HTTP request except ``/healthz`` needs one of them."""

    def __init__(self, app: ASGIApp, tokens: list[bytes]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.tokens and scope["type"] == "http" and scope["path"] != "/healthz" and not self._authorized(scope):
            response = PlainTextResponse("Unauthorized", status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="fednode"'})
            await response(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_last_shielded(message: Message) -> None:
            # Sending the end of a response makes hypercorn finish the exchange inside this call:
            # close the connection (Connection: close) or arm its keep-alive timer. It also wakes the
            # app's wait for http.disconnect, and the SDK then cancels its handler, this call
            # included: hypercorn's close was cut off, and the connection stayed open until the
            # client left. Shielded, the exchange always finishes.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_last_shielded)

    def _authorized(self, scope: Scope) -> bool:
        headers = cast(Iterable[tuple[bytes, bytes]], scope["headers"])
        value = next((v for k, v in headers if k == b"authorization"), None)
        if value is None:
            return False
        scheme, _, presented = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = presented.strip()
        # Compare against every token without stopping early: timing then says nothing about
        # which token (or how much of one) matched.
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched
