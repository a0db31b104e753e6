"""The MCP client-facing edge of a node: serves MCP clients of both protocol eras.

List methods are answered from the node's federated catalog; ``tools/call``, ``prompts/get``,
``resources/read`` and ``completion/complete`` are handed to a :class:`~fednode._mcp._edge_call.Forwarder`
(with an :class:`~fednode._mcp._edge_call.EdgeCall` for each request). Everything
else (``initialize``, ``server/discover``, ``ping``, ``subscriptions/listen``, the HTTP session
machinery, Host/Origin checks) is left to the official MCP SDK's lowlevel ``Server``.

The forwarded and listed methods are answered from a ``Server.middleware`` that returns the
result dict without calling the rest of the chain: that skips the SDK's result sieve
(``extra="ignore"`` would drop fields the node must pass through unchanged), so the edge owns
the envelope of those results itself (see :mod:`fednode._mcp._edge_results`). The HTTP transport's own
parts (client tokens, the SSE event store, serving) are in :mod:`fednode._mcp._edge_http`, the hot
requests' fast path in :mod:`fednode._mcp._edge_fast` and the HTTP server in :mod:`fednode._mcp._http_server`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio
import mcp_types
import structlog
import trio
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
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
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.routing import Route
from starlette.types import ASGIApp

from .._config._callers import Caller
from .._config._config import ClientsConfig
from .._errors import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RATE_LIMITED,
    EdgeError,
    sole_leaf,
)
from .._peers._serving import retry_after
from ._client_auth import ClientAuth
from ._edge_call import FORWARDED_METHODS, EdgeCall, Forwarder, caller_of
from ._edge_fast import FastPath
from ._edge_http import BearerAuth, BoundedEventStore, ClientLimits, client_key, healthz, serve_asgi
from ._edge_results import decode_cursor, encode_cursor, shape_result

__all__ = ["PAGE_SIZE", "MCPEdge"]

#: Items per page of a list result.
PAGE_SIZE = 100

_TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})

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
        client_tokens: static (unnamed) client tokens, when no ``auth`` is given: HTTP requests
            other than ``/healthz`` must then carry ``Authorization: Bearer <one of them>``.
        routes: more Starlette routes served beside /mcp and /healthz; they need a client token
            like /mcp when tokens are configured.
        limits: the ``[clients]`` rate and connection limits on HTTP (None: none).
        auth: who HTTP clients are (``[clients]`` tokens and OAuth); default: ``client_tokens`` only.
    """

    def __init__(self, forwarder: Forwarder, *, name: str, version: str, logger: Any = None,
                 client_tokens: Sequence[str] = (), routes: Sequence[Route] = (),
                 limits: ClientLimits | None = None, auth: ClientAuth | None = None) -> None:
        self.forwarder = forwarder
        self.limits = limits
        self.log: Any = logger if logger is not None else structlog.get_logger("fednode.edge")
        self.routes: list[Route] = list(routes)
        self.auth = auth if auth is not None else ClientAuth(tokens=client_tokens, log=self.log)
        self._bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self._bus)
        # Live legacy connections (HTTP sessions and stdio) -> their session key; entries remove
        # themselves when the SDK unwinds the connection's exit stack.
        self._legacy: dict[Connection, str] = {}
        # The same HTTP connections by session id (for the fast path, see _edge_fast).
        self._legacy_ids: dict[str, Connection] = {}
        # catalog kinds changed and not yet announced (see announce_changes)
        self._changed_kinds: set[str] = set()
        #: the fast path of the app :meth:`asgi_app` built last (None before)
        self.fast: FastPath | None = None
        self._kinds_changed = trio.Event()
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

    def set_clients(self, clients: ClientsConfig) -> None:
        """Apply a reloaded ``[clients]`` section: its tokens and ``oauth``, and (if limits are kept) its
        ``rate`` and ``max_connections`` from now on."""
        self.auth.update(clients)
        if self.limits is not None:
            self.limits.update(clients, trio.current_time())

    def set_client_tokens(self, tokens: Sequence[str]) -> None:
        """Replace the static client tokens (unnamed; also for apps already serving); none (and no
        OAuth) = no token needed."""
        self.auth.set_tokens((token.encode(), None) for token in tokens)

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
            custom_starlette_routes=[Route("/healthz", healthz, methods=["GET"]), *self.auth.routes(), *self.routes],
            # Resumable SSE (priming events, Last-Event-ID) and a retry hint, as the spec asks.
            event_store=BoundedEventStore(),
            retry_interval=1000,
        )
        manager = self.server.session_manager
        self.fast = FastPath(app, self, path=path, security=manager.security_settings, manager=manager)
        return BearerAuth(self.fast, self.auth, self.limits)

    async def serve_http(self, host: str, port: int, *, path: str = "/mcp", certfile: str | None = None,
                         keyfile: str | None = None,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve :meth:`asgi_app` with the edge's HTTP/1.1 server until cancelled (HTTPS with a cert and key).

        ``task_status.started(port)`` reports the bound port once listening (useful with port 0).
        Cancelling the task stops the server at once, open streams included.
        """
        await serve_asgi(self.asgi_app(host=host, path=path), host, port, path=path, certfile=certfile,
                         keyfile=keyfile, log=self.log, task_status=task_status)

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
        if ctx.request_id is not None:
            self._check_rate(ctx)
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

    def _check_rate(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Refuse a request over its client's ``[clients] rate`` (HTTP only: stdio is the node's own process)."""
        request = ctx.request
        scope = getattr(request, "scope", None)
        key = client_key(scope) if isinstance(scope, dict) and self.limits is not None else None
        if key is None or self.limits is None:
            return
        wait = self.limits.take(key, trio.current_time())
        if wait:
            raise MCPError(RATE_LIMITED, "Rate limit exceeded; retry later", {"retryAfter": retry_after(wait)})

    async def _fallback_handler(self, ctx: ServerRequestContext[Any, Any], params: BaseModel) -> HandlerResult:
        return await self._serve(ctx)

    async def _serve(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        if ctx.method in _LIST_METHODS:
            return await self.answer_list(ctx.method, ctx.params, ctx.protocol_version, caller_of(ctx))
        return await self._forward(ctx)

    async def answer_list(self, method: str, params: Mapping[str, Any] | None, version: str,
                          caller: Caller | None) -> dict[str, Any]:
        """The result of a list request (one page), shaped for ``version``; MCPError for a bad cursor."""
        # Right after start-up the catalog may still be filling in (peers linking, servers
        # starting): a client must not take an empty or partial list for the federation's.
        settled = getattr(self.forwarder, "wait_settled", None)
        if settled is not None:
            await settled()
        return shape_result(self.server, method, version, self._list(method, params, caller))

    def _check_request(self, ctx: ServerRequestContext[Any, Any]) -> None:
        # What the SDK does before its handlers, which the short-circuit skips: request-surface
        # validation per version (the params themselves still go out raw) and the legacy gate
        # against requests before `initialize`.
        try:
            mcp_methods.validate_client_request(ctx.method, ctx.protocol_version, ctx.params)
        except KeyError:
            # Extension methods (tasks/*) are not in the core tables; their server validates them.
            if ctx.method not in _TASK_METHODS:
                raise MCPError(METHOD_NOT_FOUND, "Method not found", ctx.method) from None
        connection = _connection(ctx)
        if connection is not None and not connection.initialize_accepted:
            raise MCPError(INVALID_PARAMS, "Invalid request parameters", "")

    def _list(self, method: str, params: Mapping[str, Any] | None, caller: Caller | None) -> dict[str, Any]:
        kind = _LIST_METHODS[method]
        cursor = (params or {}).get("cursor")
        offset = decode_cursor(kind, cursor) if cursor is not None else 0
        try:
            items = self.forwarder.list_items(kind, caller)
        except Exception as exc:
            self.log.exception("edge.list_failed", kind=kind)
            raise MCPError(INTERNAL_ERROR, "Internal error", None) from exc
        result: dict[str, Any] = {kind: items[offset:offset + PAGE_SIZE]}
        if offset + PAGE_SIZE < len(items):
            result["nextCursor"] = encode_cursor(kind, offset + PAGE_SIZE)
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
        return await self.answer_forwarded(dict(ctx.params or {}), call)

    async def answer_forwarded(self, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        """The result of a forwarded request, shaped for the call's version; MCPError for the client."""
        try:
            # Any: the forwarder is the node's code, but what it returns goes on the wire.
            result: Any = await self.forwarder.forward(call.method, params, call)
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
            self.log.exception("edge.forward_failed", method=call.method)
            raise MCPError(INTERNAL_ERROR, "Internal error", None) from exc
        if not isinstance(result, dict):
            self.log.error("edge.forward_bad_result", method=call.method, type=type(result).__name__)
            raise MCPError(INTERNAL_ERROR, "Internal error", None)
        return shape_result(self.server, call.method, call.protocol_version, result)

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
            if connection.session_id is not None:
                self._legacy_ids[connection.session_id] = connection
                connection.exit_stack.callback(self._legacy_ids.pop, connection.session_id, None)
            connection.exit_stack.callback(self._session_ended, key)
        return key

    def legacy_connection(self, session_id: str) -> Connection | None:
        """The initialized legacy HTTP connection of a session id (None: unknown, or not initialized)."""
        connection = self._legacy_ids.get(session_id)
        return connection if connection is not None and connection.initialize_accepted else None

    def _session_ended(self, key: str) -> None:
        ended = getattr(self.forwarder, "session_ended", None)
        if ended is not None:
            ended(key)

    def catalog_changed(self, kinds: Iterable[str], extensions: Mapping[str, Any]) -> None:
        """The catalog changed (these kinds): clients are told by :meth:`announce_changes` (coalesced).

        ``extensions`` are those the attached servers support (anywhere): advertised to clients as ours.
        """
        self.server.extensions = dict(extensions)
        self._changed_kinds.update(kinds)
        self._kinds_changed.set()

    async def announce_changes(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tell clients of each catalog change (:meth:`notify_list_changed`), one round at a time.

        Changes that arrive while a round is being sent are sent together in the next one. Runs
        until cancelled.
        """
        task_status.started()
        while True:
            await self._kinds_changed.wait()
            self._kinds_changed = trio.Event()
            kinds, self._changed_kinds = self._changed_kinds, set()
            await self.notify_list_changed(kinds)

    async def relay_notices(self, notices: trio.MemoryReceiveChannel[tuple[str, str, dict[str, Any]]], *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Put each ``(session key, method, params)`` received on that legacy session's standalone stream.

        Servers' notifications for sessions with no request in flight come this way. Runs until
        cancelled.
        """
        task_status.started()
        async with notices:
            async for key, method, params in notices:
                await self.notify_session(key, method, params)

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


def _as_mcp_error(exc: EdgeError | MCPError) -> MCPError:
    if isinstance(exc, MCPError):
        return exc
    return MCPError(exc.code, exc.message, exc.data)


def _sole_error(group: BaseExceptionGroup[Any]) -> EdgeError | MCPError | None:
    """The one EdgeError/MCPError a (nested) exception group consists of, else None."""
    leaf = sole_leaf(group)
    return leaf if isinstance(leaf, EdgeError | MCPError) else None
