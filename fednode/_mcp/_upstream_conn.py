"""One live connection to an attached MCP server, and what travels over it.

A :class:`Connection` holds the state of one process or HTTP session: the SDK's low-level
``JSONRPCDispatcher`` (driven with raw dicts, so requests and results pass through unchanged), the
era the handshake found, the server's capabilities, and the per-request plumbing (progress queues,
HTTP headers). The functions here shape what fednode sends over it: forwarded params, progress
delivery, pings, and the mapping of the SDK's errors to fednode's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any, Self

import anyio
import attrs
import trio
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)

from .._errors import CONNECTION_CLOSED, FednodeError, ServerUnavailableError, SessionFailed, UpstreamError, leaves
from .._version import __version__

#: The protocol version of the stateless era (no handshake; an envelope in every request's ``_meta``).
MODERN_ERA = "2026-07-28"

#: What fednode says it is, in ``initialize`` and in the envelope of its own requests.
CLIENT_INFO: dict[str, Any] = {"name": "fednode", "version": __version__}

#: Server notifications a session connection hands to its client session.
SESSION_NOTIFICATIONS = frozenset({"notifications/message", "notifications/resources/updated",
                                   "notifications/tasks/status"})
#: The requests a server may send its client, and the client capability each needs.
QUESTION_CAPABILITY = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
#: Server-to-client requests a session connection relays to its client session.
SESSION_REQUESTS = frozenset(QUESTION_CAPABILITY)
#: Questions a session connection's server may have waiting for the client at once.
MAX_SESSION_QUESTIONS = 16

#: Progress notifications waiting for a slow caller, per request; newer ones are dropped.
PROGRESS_QUEUE = 64

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
Progress = tuple[float, float | None, str | None]

# The reserved envelope keys of the 2026-07-28 era; a legacy server refuses requests carrying them.
_ENVELOPE_KEYS = (PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY)
# What the SDK's HTTP client answers a request with when the HTTP exchange itself failed.
_HTTP_STAND_INS = ("Server returned an error response", "Session terminated", "Not Found")


@attrs.define
class SessionHooks:
    """What a per-client-session connection needs from its owner.

    Attributes:
        capabilities: the client's declared capabilities, sent in ``initialize``.
        client_info: the client's ``clientInfo`` (None: fednode's own).
        notify: called with each of the server's session notifications (must not block).
        ask: awaited for each server-to-client request; returns the client's result dict.
    """

    capabilities: Mapping[str, Any]
    client_info: Mapping[str, Any] | None
    notify: Callable[[str, dict[str, Any]], None]
    ask: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def own_capabilities() -> dict[str, Any]:
    """The client capabilities fednode's own requests declare (legacy ``initialize`` of a shared
    connection, 2026-07-28 lists): every one whose requests it can relay to a client.

    A server may list some tools only to clients that declare a capability (a tool that needs the
    client's roots, say); the catalog holds everything it offers, and each call carries its own
    client's capabilities, so the server accepts or refuses it as it would for that client.
    """
    return {capability: {} for capability in sorted(set(QUESTION_CAPABILITY.values()))}


class Connection:
    """The state of one live connection (one process, or one HTTP session)."""

    dispatcher: JSONRPCDispatcher[TransportContext]

    def __init__(self, *, http: bool) -> None:
        self.http = http
        self.era: str | None = None
        self.modern = False
        self.capabilities: dict[str, Any] = {}
        self._lost = False
        self.end_reason: str | None = None
        self.scope: trio.CancelScope | None = None
        self.progress: dict[str, trio.MemorySendChannel[Progress]] = {}
        self.dirty: set[str] = set()
        self.changed = trio.Event()
        self.listen_acked = trio.Event()
        self.header_maps: dict[str, dict[tuple[str, ...], str]] = {}
        self._ids = 0

    def is_lost(self) -> bool:
        # A method, not an attribute test, so type checkers do not assume it stays as last read.
        return self._lost

    def lose(self, reason: str) -> None:
        if not self._lost:
            self._lost = True
            self.end_reason = self.end_reason or reason

    def next_id(self, kind: str = "") -> str:
        # String ids that never parse as integers cannot collide with ids the dispatcher mints.
        self._ids += 1
        return f"fednode-{kind}{self._ids}"

    def mark_dirty(self, kinds: tuple[str, ...]) -> None:
        self.dirty.update(kinds)
        self.changed.set()

    def take_progress(self, params: Mapping[str, Any]) -> bool:
        """Queue a progress notification for the request it names; False if it names none of ours.

        Called synchronously in receive order, so progress is delivered in the order it was sent.
        """
        token = params.get("progressToken")
        channel = self.progress.get(token) if isinstance(token, str) else None
        progress = params.get("progress")
        if channel is None or not isinstance(progress, int | float) or isinstance(progress, bool):
            return False
        total = params.get("total")
        message = params.get("message")
        # A caller that cannot keep up loses progress (the newest), never its result.
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            channel.send_nowait((float(progress), float(total) if isinstance(total, int | float) else None,
                                 message if isinstance(message, str) else None))
        return True

    def own_meta(self) -> dict[str, Any]:
        """The envelope of fednode's own requests in the modern era."""
        assert self.era is not None
        return {PROTOCOL_VERSION_META_KEY: self.era, CLIENT_INFO_META_KEY: dict(CLIENT_INFO),
                CLIENT_CAPABILITIES_META_KEY: own_capabilities()}

    def headers_for(self, method: str, params: Mapping[str, Any]) -> dict[str, str]:
        """The per-request HTTP headers a Streamable HTTP server checks (ignored by stdio)."""
        if not self.modern:
            return {MCP_PROTOCOL_VERSION_HEADER: self.era} if self.era else {}
        meta = params.get("_meta")
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
        headers = {MCP_PROTOCOL_VERSION_HEADER: version if isinstance(version, str) else MODERN_ERA,
                   MCP_METHOD_HEADER: method}
        name_key = NAME_BEARING_METHODS.get(method)
        if name_key is not None and isinstance(name := params.get(name_key), str):
            headers[MCP_NAME_HEADER] = encode_header_value(name)
        if method == "tools/call" and isinstance(name := params.get("name"), str):
            header_map = self.header_maps.get(name)
            arguments = params.get("arguments")
            if header_map and isinstance(arguments, Mapping):
                headers.update(mcp_param_headers(header_map, arguments))
        return headers


def forward_params(conn: Connection, params: Mapping[str, Any] | None, progress_token: str | None) -> dict[str, Any]:
    """A forwarded request's params as this connection's server must see them (see ``UpstreamServer.call``)."""
    out = dict(params or {})
    raw_meta = out.get("_meta")
    if raw_meta is not None and not isinstance(raw_meta, Mapping):
        return out  # not ours to repair: the server will say what is wrong with it
    meta = dict(raw_meta or {})
    # Progress tokens are hop-by-hop: the server's notifications must come back to us.
    meta.pop("progressToken", None)
    if progress_token is not None:
        meta["progressToken"] = progress_token
    if conn.modern:
        meta.setdefault(PROTOCOL_VERSION_META_KEY, conn.era)
        meta.setdefault(CLIENT_CAPABILITIES_META_KEY, {})
    else:
        for key in _ENVELOPE_KEYS:
            meta.pop(key, None)
    if meta:
        out["_meta"] = meta
    else:
        out.pop("_meta", None)
    return out


async def send_with_progress(conn: Connection, request_id: str, method: str, params: dict[str, Any],
                             opts: CallOptions, on_progress: ProgressCallback,
                             on_callback_error: Callable[[Exception], None]) -> dict[str, Any]:
    """Send one request whose progress notifications go to ``on_progress``, all before this returns.

    Progress is queued in receive order by :meth:`Connection.take_progress` and delivered by one
    task, so every notification that preceded the response is delivered before we return (the
    dispatcher's own on_progress runs each in a spawned task, which may run late). While
    :data:`PROGRESS_QUEUE` of them wait for a slow caller, newer ones are dropped: memory stays bounded.
    """
    send, receive = trio.open_memory_channel[Progress](PROGRESS_QUEUE)
    conn.progress[request_id] = send
    result: dict[str, Any] = {}
    error: MCPError | None = None

    async def deliver() -> None:
        async with receive:
            async for progress, total, message in receive:
                try:
                    await on_progress(progress, total, message)
                except Exception as exc:  # the caller's callback must not fail the request
                    on_callback_error(exc)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            try:
                result = await conn.dispatcher.send_raw_request(method, params, opts)
            except MCPError as exc:
                error = exc  # raised after the nursery, so it is not wrapped in a group
            finally:
                conn.progress.pop(request_id, None)
                send.close()
    finally:
        conn.progress.pop(request_id, None)
    if error is not None:
        raise error
    return result


async def ping(conn: Connection) -> None:
    """One liveness request: ``ping`` (legacy), or ``server/discover`` (the 2026-07-28 era defines no ping)."""
    opts: CallOptions = {"request_id": conn.next_id("ping-"), "cancel_on_abandon": False}
    if conn.modern:
        method, params = "server/discover", {"_meta": conn.own_meta()}
    else:
        method, params = "ping", {}
    if conn.http:
        opts["headers"] = conn.headers_for(method, params)
    await conn.dispatcher.send_raw_request(method, params, opts)


async def ping_loop(conn: Connection, interval: float, limit: float,
                    on_unresponsive: Callable[[Connection, float], None], log: Any) -> None:
    """Ping the server every ``interval``; one that does not answer within ``limit`` is down.

    A server can stay alive yet stop reading its input (stuck in a blocking call, a deadlock):
    without this it would look up for ever while every call waited out its deadline. Any answer,
    an error included, shows it is reading. When one does not come, ``on_unresponsive(conn, limit)``
    is called once and the loop ends; it ends too when the connection is lost.
    An in-process server is not pinged: it runs on the node's own event loop.
    """
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(limit):
            try:
                await ping(conn)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED and conn.is_lost():
                    return
                log.debug("upstream.ping_error", code=exc.code, error=exc.message[:200])
            continue
        if not conn.is_lost():
            on_unresponsive(conn, limit)
        return


def translate(server_id: str, conn: Connection, exc: MCPError) -> FednodeError:
    """The fednode error for an error the dispatcher raised for a forwarded request."""
    # The dispatcher fails pending requests with exactly this error when the connection closes
    # (by then the read stream has marked the connection lost; the message is a second check).
    closed = exc.message == "Connection closed" and exc.data is None
    if exc.code == CONNECTION_CLOSED and (conn.is_lost() or closed):
        return ServerUnavailableError(server_id, "the connection was lost during the request")
    if conn.http and exc.data is None and (exc.message in _HTTP_STAND_INS
                                           or exc.message.startswith("Unexpected content type:")):
        # Not the server's own error but the SDK's word for an HTTP failure: say whose.
        return UpstreamError(exc.code, f"Server {server_id!r} (HTTP): {exc.message}; the node's log "
                             f"has the HTTP status", None, server_id=server_id)
    return UpstreamError(exc.code, exc.message, exc.data, server_id=server_id)


def header_maps(tools: tuple[dict[str, Any], ...]) -> dict[str, dict[tuple[str, ...], str]]:
    """Each tool's ``x-mcp-header`` annotations, mirrored into ``Mcp-Param-*`` headers over HTTP."""
    maps: dict[str, dict[tuple[str, ...], str]] = {}
    for tool in tools:
        name, schema = tool.get("name"), tool.get("inputSchema")
        if not (isinstance(name, str) and isinstance(schema, dict)) or find_invalid_x_mcp_header(schema):
            continue
        if header_map := x_mcp_header_map(schema):
            maps[name] = header_map
    return maps


class WatchedReadStream:
    """A transport's read stream that reports its end before the dispatcher sees it.

    Any way out of ``receive`` other than an item (end of stream, a closed stream, cancellation
    while the dispatcher is torn down) means the connection is over.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None], on_bad: Callable[[Exception], None]) -> None:
        self._inner = inner
        self._on_end = on_end
        self._on_bad = on_bad

    @property
    def last_context(self) -> Any:
        # The dispatcher runs each message's handler in the sender's context when the stream has one.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except BaseException:
            self._on_end()
            raise
        if isinstance(item, Exception):
            self._on_bad(item)
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> WatchedReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def describe(exc: BaseException) -> str:
    """A short human-readable reason for ``last_error`` (groups are unwrapped to their first leaf)."""
    leaf = next(leaves(exc))
    if isinstance(leaf, SessionFailed):
        text = str(leaf)
    elif isinstance(leaf, MCPError):
        text = f"the server answered with error {leaf.code}: {leaf.message}"
    else:
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
    return text[:300]
