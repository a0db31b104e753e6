"""The HTTP side of the client edge: serving its ASGI app, client authentication, SSE resumption.

None of it knows MCP: :meth:`~fednode._mcp._edge.MCPEdge.asgi_app` builds the app (the SDK's Streamable
HTTP transport) with these parts and :meth:`~fednode._mcp._edge.MCPEdge.serve_http` serves it here.
"""

from __future__ import annotations

import collections
import secrets
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import trio
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._config._config import ClientsConfig
from .._peers._ratelimit import RateLimiter
from ._client_auth import ClientAuth
from ._edge_call import CALLER_KEY
from ._http_server import serve_http

__all__ = ["BearerAuth", "BoundedEventStore", "ClientLimits", "client_key", "healthz", "serve_asgi"]

#: Where :class:`BearerAuth` leaves the key the client's requests are rate-limited under, in
#: ``scope["state"]`` (the SDK hands handlers a Starlette request over the same scope).
CLIENT_KEY = "fednode_client"


class ClientLimits:
    """``[clients] rate`` and ``max_connections``, as the edge applies them (no I/O; times passed in).

    Args:
        clients: the ``[clients]`` section: ``rate`` per client key (a token's, or an address when no
            tokens are configured), ``max_connections`` per source address.
        on_limited: called with ``"client"`` or ``"connections"`` for each refusal (metrics).
    """

    def __init__(self, clients: ClientsConfig, on_limited: Callable[[str], None] | None = None) -> None:
        self.requests = RateLimiter(clients.rate)
        self.max_connections = clients.max_connections
        self.on_limited = on_limited
        self._connections: dict[str, int] = {}

    def update(self, clients: ClientsConfig, now: float) -> None:
        """Apply a reloaded ``[clients]`` section from ``now`` on."""
        self.requests.set_rate(clients.rate, now)
        self.max_connections = clients.max_connections

    def take(self, key: str, now: float) -> float:
        """Take a token for a request under ``key``: 0.0, or the seconds until one is there."""
        wait = self.requests.take(key, now)
        if wait and self.on_limited is not None:
            self.on_limited("client")
        return wait

    def connections(self, address: str) -> int:
        """HTTP connections from ``address`` open now."""
        return self._connections.get(address, 0)

    def connect(self, address: str) -> bool:
        """Count one more connection from ``address``; False (not counted) when it has its maximum."""
        count = self._connections.get(address, 0)
        if count >= self.max_connections:
            if self.on_limited is not None:
                self.on_limited("connections")
            return False
        self._connections[address] = count + 1
        return True

    def disconnect(self, address: str) -> None:
        """A connection counted by :meth:`connect` ended."""
        count = self._connections[address] - 1
        if count:
            self._connections[address] = count
        else:
            del self._connections[address]


def client_key(scope: Scope) -> str | None:
    """The rate-limit key :class:`BearerAuth` gave an HTTP request (None: not an HTTP request of the edge)."""
    state = scope.get("state")
    key = state.get(CLIENT_KEY) if isinstance(state, dict) else None
    return key if isinstance(key, str) else None


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def serve_asgi(app: ASGIApp, host: str, port: int, *, path: str, certfile: str | None, keyfile: str | None,
                     log: Any, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with the edge's HTTP/1.1 server until cancelled (HTTPS with a cert and key).

    ``task_status.started(port)`` reports the bound port once listening (useful with port 0);
    ``path`` only goes into the ``edge.listening`` log line.
    Cancelling the task stops the server at once, open streams included.
    """
    context = None
    if certfile is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)
        context.set_alpn_protocols(["http/1.1"])
    async with trio.open_nursery() as nursery:
        bound: int = await nursery.start(partial(serve_http, cast(Any, app), host, port, ssl_context=context))
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("edge.listening", url=f"{scheme}://{shown}:{bound}{path}")
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
    """ASGI middleware: who each HTTP request is from (see :class:`~fednode._mcp._client_auth.ClientAuth`).

    A request ``auth`` refuses is answered here (401, 403 or 503). With ``limits``, it also keeps
    each source address to its ``max_connections`` (HTTP 429 with ``Retry-After`` beyond). A request
    let through carries its caller and the key its JSON-RPC requests are rate-limited under in its
    scope's state (see :func:`client_key`, :func:`~fednode._mcp._edge_call.caller_of`).
    """

    def __init__(self, app: ASGIApp, auth: ClientAuth, limits: ClientLimits | None = None) -> None:
        self.app = app
        self.auth = auth
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A session's end (DELETE) frees what the session held and holds nothing itself: never
        # refused for its address's connections, nor counted among them.
        limits = self.limits if scope.get("method") != "DELETE" else None
        address = _address(scope)
        if limits is not None and not limits.connect(address):
            # Over the connections of its address: refused before anything else is looked at.
            response = PlainTextResponse("Too Many Requests", status_code=429, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        try:
            admitted = await self.auth.admit(scope, address)
            if isinstance(admitted, Response):
                await admitted(scope, receive, send)
                return
            caller, key = admitted
            # A new state dict: the server's may be shared by the requests of one connection.
            scope["state"] = {**(scope.get("state") or {}), CLIENT_KEY: key, CALLER_KEY: caller}
            await self._serve(scope, receive, send)
        finally:
            if limits is not None:
                limits.disconnect(address)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "fednode.watch" in scope.get("extensions", ()):
            # The edge's own server finishes an exchange without waking the app's wait for
            # http.disconnect (the hazard below), so the end of a response needs no shield there.
            await self.app(scope, receive, send)
            return

        async def send_last_shielded(message: Message) -> None:
            # Sending the end of a response makes an ASGI server such as hypercorn (when the app is
            # embedded in one) finish the exchange inside this call:
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
