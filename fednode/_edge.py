"""The MCP client-facing edge of a node: serves MCP clients of both protocol eras.

List methods are answered from the node's federated catalog; ``tools/call``, ``prompts/get``,
``resources/read`` and ``completion/complete`` are handed to a :class:`Forwarder`. Everything
else (``initialize``, ``server/discover``, ``ping``, ``subscriptions/listen``, the HTTP session
machinery, Host/Origin checks) is left to the official MCP SDK's lowlevel ``Server``.

The forwarded and listed methods are answered from a ``Server.middleware`` that returns the
result dict without calling the rest of the chain: that skips the SDK's result sieve
(``extra="ignore"`` would drop fields the node must pass through unchanged), so the edge owns
the envelope of those results itself (see :func:`_shape_result`).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import cache, partial
from types import UnionType
from typing import Any, Literal, Protocol, cast, get_args

import anyio
import attrs
import hypercorn.config
import hypercorn.trio
import mcp_types
import structlog
import trio
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types import methods as mcp_methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import FednodeError, sole_leaf

__all__ = ["FORWARDED_METHODS", "KINDS", "PAGE_SIZE", "EdgeCall", "EdgeError", "Forwarder", "MCPEdge",
           "ProgressReporter"]

#: Items per page of a list result.
PAGE_SIZE = 100

#: The catalog kinds, as passed to :meth:`Forwarder.list_items` and :meth:`MCPEdge.notify_list_changed`.
KINDS = ("tools", "prompts", "resources", "resourceTemplates")

#: Methods handed to :meth:`Forwarder.forward`.
FORWARDED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete",
                               "tasks/get", "tasks/update", "tasks/cancel",
                               "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
_TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
HEADER_MISMATCH = -32020

# list method -> catalog kind (which is also the result key holding the page).
_LIST_METHODS: dict[str, str] = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}

# kind -> the legacy notification and the 2026-07-28 listen event announcing a change of it.
_CHANGE_NOTIFICATIONS: dict[str, tuple[str, ServerEvent]] = {
    "tools": ("notifications/tools/list_changed", ToolsListChanged()),
    "prompts": ("notifications/prompts/list_changed", PromptsListChanged()),
    "resources": ("notifications/resources/list_changed", ResourcesListChanged()),
    "resourceTemplates": ("notifications/resources/list_changed", ResourcesListChanged()),
}

# The params model of each intercepted method, for registering the SDK handlers that make it
# advertise the capabilities (the middleware answers before they would run).
_PARAMS_TYPES: dict[str, type[BaseModel]] = {
    "tools/list": mcp_types.PaginatedRequestParams,
    "prompts/list": mcp_types.PaginatedRequestParams,
    "resources/list": mcp_types.PaginatedRequestParams,
    "resources/templates/list": mcp_types.PaginatedRequestParams,
    "tools/call": mcp_types.CallToolRequestParams,
    "prompts/get": mcp_types.GetPromptRequestParams,
    "resources/read": mcp_types.ReadResourceRequestParams,
    "completion/complete": mcp_types.CompleteRequestParams,
    "logging/setLevel": mcp_types.SetLevelRequestParams,
    "resources/subscribe": mcp_types.SubscribeRequestParams,
    "resources/unsubscribe": mcp_types.UnsubscribeRequestParams,
}

_SESSION_KEY_STATE = "fednode.edge.session_key"
_NOTIFY_TIMEOUT = 5.0


class Forwarder(Protocol):
    """What the edge needs from the node: the federated catalog and a way to execute requests."""

    def list_items(self, kind: str) -> list[dict[str, Any]]:
        """The federated definitions of ``kind`` (one of :data:`KINDS`), already renamed to their
        exposed names, as raw dicts returned to clients unchanged."""
        ...

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of the exposed tool ``name``, or None when unknown.

        Synchronous and called for every 2026-07-28 ``tools/call`` (the SDK validates
        ``Mcp-Param-*`` headers with it), so it should be a cache lookup.
        """
        ...

    # Optional: ``async wait_settled() -> None``, awaited before every list is answered (holds the
    # lists clients send right after start-up until the catalog has filled in; bounded).

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        """Execute ``tools/call``, ``prompts/get``, ``resources/read`` or ``completion/complete``
        somewhere in the federation and return the raw result dict.

        ``params`` are the client's raw params, ``_meta`` included. Raise :class:`EdgeError` to
        answer with a JSON-RPC error (e.g. unknown tool -32602, unreachable -32001); an upstream
        server's own error should be raised as an EdgeError with its code unchanged.
        """
        ...


@attrs.frozen
class EdgeError(FednodeError):
    """A JSON-RPC error to give the MCP client, raised by :meth:`Forwarder.forward`.

    Attributes:
        code: the JSON-RPC error code.
        message: the error message.
        data: optional JSON-serialisable detail.
    """

    code: int
    message: str
    data: Any = None

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


ProgressReporter = Callable[[float, "float | None", "str | None"], Awaitable[None]]
"""``async (progress, total, message)``: what :meth:`EdgeCall.report_progress` delegates to."""


class EdgeCall:
    """Per-request context handed to :meth:`Forwarder.forward`.

    The edge builds one per forwarded request; tests and other callers of a forwarder may build
    their own from the keyword arguments.

    Attributes:
        method: the MCP method being forwarded.
        protocol_version: the client's protocol version.
        era: ``"modern"`` for 2026-07-28 and later (stateless, per-request envelope), else
            ``"legacy"`` (initialize handshake).
        meta: the request's raw ``_meta`` (empty when absent).
        session_key: identifies the client's session, for per-session upstream state: the
            Streamable HTTP session id (or a key minted per stdio connection) for legacy clients;
            None for the stateless 2026-07-28 era.
        request_id: the client's JSON-RPC request id.
        client_info: a legacy client's ``Implementation`` (from ``initialize``) as a wire dict;
            None for 2026-07-28 requests, which carry it in ``meta``.
        client_capabilities: the capabilities a legacy client declared, as a wire dict; None for
            2026-07-28 requests (see ``meta``).
    """

    def __init__(self, *, method: str, protocol_version: str, meta: Mapping[str, Any] | None = None,
                 session_key: str | None = None, request_id: str | int | None = None,
                 client_info: dict[str, Any] | None = None, client_capabilities: dict[str, Any] | None = None,
                 progress: ProgressReporter | None = None,
                 ask: Callable[[str, Mapping[str, Any] | None], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.method = method
        self.protocol_version = protocol_version
        self.era: Literal["legacy", "modern"] = "modern" if protocol_version in MODERN_PROTOCOL_VERSIONS \
            else "legacy"
        self.meta: dict[str, Any] = dict(meta or {})
        self.session_key = session_key
        self.request_id = request_id
        self.client_info = client_info
        self.client_capabilities = client_capabilities
        self._progress = progress
        self._ask = ask
        self._notify: Callable[[str, Mapping[str, Any] | None], Awaitable[None]] | None = None

    @classmethod
    def _from_context(cls, ctx: ServerRequestContext[Any, Any], session_key: str | None) -> EdgeCall:
        call = cls._build(ctx, session_key)
        outbound = getattr(ctx.session, "_request_outbound", None)
        if outbound is not None:
            call._notify = partial(outbound.notify, opts=None)
        return call

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        """Send a notification on this request's stream (best effort)."""
        if self._notify is not None:
            with contextlib.suppress(Exception):
                await self._notify(method, params)

    @classmethod
    def _build(cls, ctx: ServerRequestContext[Any, Any], session_key: str | None) -> EdgeCall:
        raw_meta = (ctx.params or {}).get("_meta")
        # Only a legacy client's initialize-time identity is needed (a 2026-07-28 request carries
        # its own in _meta): dumping the models costs every modern request for nothing.
        legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        client_params = ctx.session.client_params if legacy else None
        capabilities = ctx.session.client_capabilities if legacy else None
        return cls(
            method=ctx.method,
            protocol_version=ctx.protocol_version,
            meta=raw_meta if isinstance(raw_meta, Mapping) else None,
            session_key=session_key,
            request_id=ctx.request_id,
            client_info=_dump(client_params.client_info) if client_params is not None else None,
            client_capabilities=_dump(capabilities) if capabilities is not None else None,
            # The SDK sends it against the caller's progress token, on this request's stream.
            progress=ctx.session.report_progress,
            # Server-to-client requests ride this request's own stream (legacy eras only). The
            # request-scoped channel is private in SDK 2.3; it is the one send_request() uses
            # with a related_request_id, minus the typed validation a raw forwarder must skip.
            ask=getattr(ctx.session, "_request_outbound", None) and partial(
                ctx.session._request_outbound.send_raw_request, opts=None),
        )

    @property
    def can_ask(self) -> bool:
        """Whether requests can be sent to this client on this request's stream (legacy eras)."""
        return self._ask is not None and self.era == "legacy"

    async def ask(self, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Send a request (``elicitation/create``, ``sampling/createMessage``, ``roots/list``) to the client.

        Raises:
            EdgeError: the client cannot be asked (modern era, or no back channel).
            MCPError: the client answered with an error.
        """
        if not self.can_ask or self._ask is None:
            raise EdgeError(-32603, f"cannot send {method} to this client")
        return await self._ask(method, params)

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Send ``notifications/progress`` for this request to its client.

        A no-op when the client sent no progress token. Best effort: a client that has gone
        away is not an error (the request is being cancelled anyway).
        """
        if self._progress is None:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._progress(progress, total, message)

    def __repr__(self) -> str:
        return (f"EdgeCall(method={self.method!r}, era={self.era!r}, protocol_version={self.protocol_version!r}, "
                f"session_key={self.session_key!r}, request_id={self.request_id!r})")


class _EdgeServer(Server[Any]):
    # The SDK builds the legacy InitializeResult from create_initialization_options() with no
    # arguments on HTTP, so listChanged would be false; the edge does send list_changed.
    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        if notification_options is None:
            notification_options = NotificationOptions(prompts_changed=True, resources_changed=True,
                                                       tools_changed=True)
        return super().create_initialization_options(notification_options, experimental_capabilities, extensions)


class MCPEdge:
    """Serves MCP clients (both protocol eras) over Streamable HTTP and stdio for one node.

    Args:
        forwarder: the node's catalog and request executor.
        name: the server name reported to clients.
        version: the server version reported to clients.
        logger: a structlog-style logger (default ``structlog.get_logger("fednode.edge")``).
        client_tokens: when non-empty, HTTP requests other than ``/healthz`` must carry
            ``Authorization: Bearer <one of them>``.
    """

    def __init__(self, forwarder: Forwarder, *, name: str, version: str, logger: Any = None,
                 client_tokens: Sequence[str] = ()) -> None:
        self.forwarder = forwarder
        self.log: Any = logger if logger is not None else structlog.get_logger("fednode.edge")
        #: more Starlette routes served beside /mcp and /healthz (add before serving); they need
        #: a client token like /mcp when tokens are configured
        self.routes: list[Route] = []
        self._tokens = [token.encode() for token in client_tokens]
        self._bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self._bus)
        # Live legacy connections (HTTP sessions and stdio) -> their session key; entries remove
        # themselves when the SDK unwinds the connection's exit stack.
        self._legacy: dict[Connection, str] = {}
        self.server = _EdgeServer(name, version=version, get_tool_input_schema=self._tool_input_schema,
                                  on_subscriptions_listen=self._listen)
        # Registered only so the SDK advertises the capabilities and knows the methods: the
        # middleware below answers them first. Should it ever be bypassed, they still work
        # (minus pass-through of unknown fields).
        for method, params_type in _PARAMS_TYPES.items():
            self.server.add_request_handler(method, params_type, self._fallback_handler)
        # The SDK preinstalls an OpenTelemetry middleware; fednode configures no tracer, so it would
        # cost every request (1-3% of a node's CPU, measured by scripts/bench_mcp.py) for nothing.
        self.server.middleware[:] = [m for m in self.server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
        self.server.middleware.append(self._middleware)

    def set_client_tokens(self, tokens: Sequence[str]) -> None:
        """Replace the client tokens (also for apps already serving); empty = no token needed."""
        self._tokens[:] = [token.encode() for token in tokens]

    @property
    def legacy_sessions(self) -> list[str]:
        """Session keys of the live legacy-era connections (2026-07-28 clients hold none)."""
        return list(self._legacy.values())

    # -- serving ----------------------------------------------------------------------------

    def asgi_app(self, *, host: str, path: str = "/mcp") -> ASGIApp:
        """An ASGI app serving MCP at ``path`` (POST/GET/DELETE, both eras), ``GET /healthz`` and :attr:`routes`.

        Host/Origin (DNS-rebinding) protection is what the SDK applies for ``host``: on for
        127.0.0.1, localhost and ::1, off otherwise. Each call builds a new app (the SDK's
        session manager runs once), whose lifespan must be run by the ASGI server.
        """
        app = self.server.streamable_http_app(
            streamable_http_path=path,
            host=host,
            custom_starlette_routes=[Route("/healthz", _healthz, methods=["GET"]), *self.routes],
            # Resumable SSE (priming events, Last-Event-ID) and a retry hint, as the spec asks.
            event_store=BoundedEventStore(),
            retry_interval=1000,
        )
        return _BearerAuth(app, self._tokens)

    async def serve_http(self, host: str, port: int, *, path: str = "/mcp", certfile: str | None = None,
                         keyfile: str | None = None,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve :meth:`asgi_app` with hypercorn's Trio worker until cancelled (HTTPS with a cert and key).

        ``task_status.started(port)`` reports the bound port once listening (useful with port 0).
        Cancelling the task stops the server at once, open streams included.
        """
        config = hypercorn.config.Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if certfile is not None:
            config.certfile, config.keyfile = certfile, keyfile
        config.accesslog = None
        config.errorlog = logging.getLogger("fednode.edge.http")
        app = self.asgi_app(host=host, path=path)
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, cast(Any, app), config))
            bound = int(binds[0].rsplit(":", 1)[1])
            self.log.info("edge.listening", url=f"{binds[0]}{path}")
            task_status.started(bound)

    async def serve_stdio(self, stdin: anyio.AsyncFile[str] | None = None,
                          stdout: anyio.AsyncFile[str] | None = None) -> None:
        """Serve one MCP client over stdio (the process's own, or the given text files).

        The client's first request fixes the connection's era. Returns at end of input.
        """
        async with stdio_server(stdin, stdout) as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())

    # -- notifications ----------------------------------------------------------------------

    async def notify_list_changed(self, kinds: Iterable[str]) -> None:
        """Tell connected clients that the catalog changed (best effort; never raises).

        Legacy sessions get ``notifications/{tools,prompts,resources}/list_changed`` on their
        standalone stream (the HTTP GET stream, or the stdio pipe); 2026-07-28 clients get the
        matching event on their ``subscriptions/listen`` streams. Unknown kinds are ignored.
        """
        try:
            changes = {_CHANGE_NOTIFICATIONS[kind] for kind in kinds if kind in _CHANGE_NOTIFICATIONS}
            for _, event in changes:
                await self._bus.publish(event)
            methods = sorted({method for method, _ in changes})
            connections = list(self._legacy)
            if not methods or not connections:
                return
            async with trio.open_nursery() as nursery:
                for connection in connections:
                    nursery.start_soon(self._notify_connection, connection, methods)
        except Exception as exc:  # best effort by contract: a catalog change must not fail the node
            self.log.warning("edge.notify_failed", error=repr(exc))

    async def _notify_connection(self, connection: Connection, methods: list[str]) -> None:
        # A client that stopped reading must not hold up the others (or the caller) for long.
        with trio.move_on_after(_NOTIFY_TIMEOUT):
            try:
                for method in methods:
                    await connection.notify(method, None)
            except Exception as exc:
                self.log.debug("edge.notify_session_failed", session=self._legacy.get(connection),
                               error=repr(exc))

    # -- request handling -------------------------------------------------------------------

    def _tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        return self.forwarder.tool_input_schema(name)

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:  # a notification
            result = await call_next(ctx)
            if ctx.method == "notifications/initialized":
                self._session_key(ctx)
            return result
        if ctx.method not in FORWARDED_METHODS and ctx.method not in _LIST_METHODS:
            return await call_next(ctx)
        self._check_request(ctx)
        self._session_key(ctx)
        return await self._serve(ctx)

    async def _fallback_handler(self, ctx: ServerRequestContext[Any, Any], params: BaseModel) -> HandlerResult:
        return await self._serve(ctx)

    async def _serve(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        if ctx.method in _LIST_METHODS:
            # Right after start-up the catalog may still be filling in (peers linking, servers
            # starting): a client must not take an empty or partial list for the federation's.
            settled = getattr(self.forwarder, "wait_settled", None)
            if settled is not None:
                await settled()
            result = self._list(ctx)
        else:
            result = await self._forward(ctx)
        return _shape_result(self.server, ctx.method, ctx.protocol_version, result)

    def _check_request(self, ctx: ServerRequestContext[Any, Any]) -> None:
        # What the SDK does before its handlers, which the short-circuit skips: request-surface
        # validation per version (the params themselves still go out raw) and the legacy gate
        # against requests before `initialize`.
        try:
            mcp_methods.validate_client_request(ctx.method, ctx.protocol_version, ctx.params)
        except KeyError:
            # Extension methods (tasks/*) are not in the core tables; their server validates them.
            if ctx.method not in _TASK_METHODS:
                raise MCPError(mcp_types.METHOD_NOT_FOUND, "Method not found", ctx.method) from None
        connection = _connection(ctx)
        if connection is not None and not connection.initialize_accepted:
            raise MCPError(mcp_types.INVALID_PARAMS, "Invalid request parameters", "")

    def _list(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        kind = _LIST_METHODS[ctx.method]
        cursor = (ctx.params or {}).get("cursor")
        offset = _decode_cursor(kind, cursor) if cursor is not None else 0
        try:
            items = self.forwarder.list_items(kind)
        except Exception as exc:
            self.log.exception("edge.list_failed", kind=kind)
            raise MCPError(mcp_types.INTERNAL_ERROR, "Internal error", None) from exc
        result: dict[str, Any] = {kind: items[offset:offset + PAGE_SIZE]}
        if offset + PAGE_SIZE < len(items):
            result["nextCursor"] = _encode_cursor(kind, offset + PAGE_SIZE)
        return result

    async def _forward(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        if ctx.method in _TASK_METHODS and ctx.request is not None:
            # An HTTP server checks the routing header itself; the attached server may be on stdio
            # (or another hop away), so the edge checks it for it.
            header = ctx.request.headers.get("mcp-name")
            task_id = (ctx.params or {}).get("taskId")
            if header is not None and header.strip() != (task_id if isinstance(task_id, str) else ""):
                raise MCPError(HEADER_MISMATCH, "Mcp-Name header does not match params.taskId")
        call = EdgeCall._from_context(ctx, self._session_key(ctx))
        try:
            # Any: the forwarder is the node's code, but what it returns goes on the wire.
            result: Any = await self.forwarder.forward(ctx.method, dict(ctx.params or {}), call)
        except (EdgeError, MCPError) as exc:
            raise _as_mcp_error(exc) from exc
        except BaseExceptionGroup as group:
            # Under Trio an error raised inside the forwarder's task group arrives wrapped; left
            # as is the SDK would answer -32603 instead of the error meant for the client.
            sole = _sole_error(group)
            if sole is None:
                raise
            raise _as_mcp_error(sole) from group
        except Exception as exc:
            self.log.exception("edge.forward_failed", method=ctx.method)
            raise MCPError(mcp_types.INTERNAL_ERROR, "Internal error", None) from exc
        if not isinstance(result, dict):
            self.log.error("edge.forward_bad_result", method=ctx.method, type=type(result).__name__)
            raise MCPError(mcp_types.INTERNAL_ERROR, "Internal error", None)
        return result

    def _session_key(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """The legacy connection's key, registering the connection for list_changed; None if modern."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        connection = _connection(ctx)
        if connection is None:
            return None
        key = self._legacy.get(connection)
        if key is None:
            key = connection.session_id or f"stdio-{uuid.uuid4().hex}"
            connection.state[_SESSION_KEY_STATE] = key
            self._legacy[connection] = key
            connection.exit_stack.callback(self._legacy.pop, connection, None)
            connection.exit_stack.callback(self._session_ended, key)
        return key

    def _session_ended(self, key: str) -> None:
        ended = getattr(self.forwarder, "session_ended", None)
        if ended is not None:
            ended(key)

    async def notify_session(self, key: str, method: str, params: Mapping[str, Any] | None) -> None:
        """Send a notification to one legacy session on its standalone stream (best effort)."""
        for connection, session_key in list(self._legacy.items()):
            if session_key == key:
                with trio.move_on_after(_NOTIFY_TIMEOUT), contextlib.suppress(Exception):
                    await connection.notify(method, params)


def _connection(ctx: ServerRequestContext[Any, Any]) -> Connection | None:
    # The per-connection state (session id, standalone channel, exit stack) is reachable from a
    # lowlevel handler only through the session's private attribute (SDK 2.3).
    connection = getattr(ctx.session, "_connection", None)
    return connection if isinstance(connection, Connection) else None


def _shape_result(server: Server[Any], method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
    """Give a raw result the envelope its client's era requires, touching nothing else.

    2026-07-28: ``resultType`` (required; ``"complete"`` unless given), ``ttlMs``/``cacheScope``
    on cacheable results (required; 0 / private unless given), and the SDK's ``serverInfo``
    ``_meta`` stamp when the result carries none. Legacy: keys that only a later revision
    defines for the method (``resultType``, ``ttlMs``, ...) are dropped, as the SDK's own
    client does; an ``input_required`` result cannot be delivered at all.
    """
    shaped = dict(result)
    if version in MODERN_PROTOCOL_VERSIONS:
        input_required = mcp_methods.is_input_required(shaped)
        shaped.setdefault("resultType", "complete")
        if method in mcp_methods.CACHEABLE_METHODS and not input_required:
            shaped.setdefault("ttlMs", 0)
            shaped.setdefault("cacheScope", "private")
        meta = shaped.get("_meta")
        if meta is None:
            shaped["_meta"] = {mcp_types.SERVER_INFO_META_KEY: server.server_info_stamp}
        elif isinstance(meta, dict) and meta.get(mcp_types.SERVER_INFO_META_KEY) is None:
            shaped["_meta"] = {**meta, mcp_types.SERVER_INFO_META_KEY: server.server_info_stamp}
        return shaped
    if mcp_methods.is_input_required(shaped):
        raise MCPError(mcp_types.INTERNAL_ERROR,
                       f"{method} needs input from the client, which a {version} client cannot be asked for", None)
    for key in _later_revision_fields(method, version) & shaped.keys():
        del shaped[key]
    return shaped


@cache
def _later_revision_fields(method: str, version: str) -> frozenset[str]:
    # Result keys that a revision after `version` defines for `method` and `version` does not.
    current = mcp_methods.SERVER_RESULTS.get((method, version))
    if current is None or version not in KNOWN_PROTOCOL_VERSIONS:
        return frozenset()
    later: set[str] = set()
    for revision in KNOWN_PROTOCOL_VERSIONS[KNOWN_PROTOCOL_VERSIONS.index(version) + 1:]:
        row = mcp_methods.SERVER_RESULTS.get((method, revision))
        if row is not None:
            later |= _wire_fields(row)
    return frozenset(later - _wire_fields(current))


def _wire_fields(target: type[BaseModel] | UnionType) -> set[str]:
    members: tuple[Any, ...] = get_args(target) if isinstance(target, UnionType) else (target,)
    return {field.alias or name
            for model in members if isinstance(model, type) and issubclass(model, BaseModel)
            for name, field in model.model_fields.items()}


def _encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode("ascii")


def _decode_cursor(kind: str, cursor: object) -> int:
    """The offset a cursor from :func:`_encode_cursor` stands for; -32602 for anything else."""
    if isinstance(cursor, str):
        try:
            cursor_kind, _, offset = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii").partition(":")
            if cursor_kind == kind and offset.isdigit():
                return int(offset)
        except (ValueError, binascii.Error):
            pass
    raise MCPError(mcp_types.INVALID_PARAMS, "Invalid cursor", None)


def _as_mcp_error(exc: EdgeError | MCPError) -> MCPError:
    if isinstance(exc, MCPError):
        return exc
    return MCPError(exc.code, exc.message, exc.data)


def _sole_error(group: BaseExceptionGroup[Any]) -> EdgeError | MCPError | None:
    """The one EdgeError/MCPError a (nested) exception group consists of, else None."""
    leaf = sole_leaf(group)
    return leaf if isinstance(leaf, EdgeError | MCPError) else None


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


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


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


class _BearerAuth:
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


