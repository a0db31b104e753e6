"""The driver for one attached MCP server (an "upstream"): spawn or connect, handshake, catalog, forward.

:class:`UpstreamServer` keeps one MCP server connected, over stdio (a child process) or Streamable
HTTP. It uses the official SDK's transports (``stdio_client``, ``streamable_http_client``) driven by
the SDK's low-level ``JSONRPCDispatcher`` rather than its typed ``ClientSession``: the session
rewrites the protocol version, client info and capabilities of every request, validates results
through pydantic models (which drops unknown fields) and may issue extra requests. A forwarder must
pass requests and results through as raw dicts.

Era detection follows the SDK's ``mode="auto"`` rule: probe ``server/discover`` with the 2026-07-28
envelope; any JSON-RPC error (except -32022 naming only modern versions we do not speak), or a
result that advertises no modern version, means a legacy server, which gets ``initialize`` and
``notifications/initialized``.

Process handling (stdio). The SDK's ``stdio_client`` starts the server in a new session (so its
pid is also its process group id) and on exit closes its stdin, waits 2 s, SIGTERMs the group,
waits 2 s and SIGKILLs it, all shielded from cancellation. Three things are missing and are added
here. The pid is not exposed: the command runs under a ``/bin/sh`` shim that reports ``$$`` on
stderr and then ``exec``s the server, so the pid is the server's own. Its stderr would be shared
with ours: it goes to a pipe whose lines are logged, tagged ``server=<id>``. And when the server
exits promptly once its stdin closes, descendants left in its process group are never signalled:
the group is swept (SIGTERM, a grace period, SIGKILL) after the transport has closed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, suppress
from typing import Any, Self, TextIO

import anyio
import attrs
import httpx2
import structlog
import trio
from mcp.client import Transport
from mcp.client._memory import InMemoryTransport
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import CallOptions, DispatchContext
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
    SERVER_INFO_META_KEY,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from ._backoff import Backoff
from ._config import BackoffConfig
from ._config import ServerConfig as ServerConfig  # re-exported: the configuration this driver takes
from ._errors import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    UNSUPPORTED_PROTOCOL_VERSION,
    FednodeError,
    ServerUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    leaves,
    sole_leaf,
)
from ._errors import BadResult as _BadResult
from ._errors import SessionFailed as _SessionFailed
from ._logging import ThrottledLog
from ._version import __version__

log = structlog.get_logger("fednode")

#: The protocol version of the stateless era (no handshake; an envelope in every request's ``_meta``).
MODERN_ERA = "2026-07-28"

#: What fednode says it is, in ``initialize`` and in the envelope of its own requests.
CLIENT_INFO: dict[str, Any] = {"name": "fednode", "version": __version__}

#: The deadline of forwarded requests when neither the call nor the server's configuration gives one.
DEFAULT_TIMEOUT = 60.0

#: The least deadline of each of fednode's own requests to a server (``initialize`` and the catalog
#: reads), whatever the server's ``timeout``: that setting bounds the requests forwarded to it, and a
#: server that starts slowly (a busy machine, a cold cache) must not be taken for a broken one.
STARTUP_TIMEOUT = 60.0

#: The state names of :attr:`UpstreamServer.state`.
STARTING, UP, BACKOFF, STOPPED = "starting", "up", "backoff", "stopped"

# The SDK's own probe bound: a legacy server that ignores unknown requests costs this much once.
# Not the server's ``timeout``, which bounds forwarded requests, not the start-up.
_DISCOVER_TIMEOUT = 10.0
# How long to wait for the shim's pid line before going on without a pid.
_PID_WAIT = 5.0
# How long to wait for a listen stream's acknowledgement before reading the catalog anyway.
_ACK_WAIT = 5.0
# Pause before re-opening a listen stream the server ended, so a server that ends every stream at
# once cannot make us spin.
_RELISTEN_DELAY = 1.0
# Grace between SIGTERM and SIGKILL when sweeping a server's leftover process group.
_GROUP_GRACE = 2.0
# Time for the last stderr lines to be read once the process is gone.
_STDERR_FLUSH = 0.5
# What the SDK's HTTP client answers a request with when the HTTP exchange itself failed.
_HTTP_STAND_INS = ("Server returned an error response", "Session terminated", "Not Found")
# Bounds on what a misbehaving server can make us do or log.
_REFRESH_GAP = 1.0  # seconds between the starts of two catalog re-reads, at least
_PROGRESS_QUEUE = 64  # progress notifications waiting for a slow caller, per request; newer ones are dropped
_MAX_PAGES = 1000
_STDERR_LINE_LIMIT = 4000


class _ParseFailureFilter(logging.Filter):
    """Drops the SDK stdio reader's own report of an unparsable line (a traceback, and no server id):
    fednode logs each such line itself, tagged with the server and rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Failed to parse JSONRPC message from server"


logging.getLogger("mcp.client.stdio").addFilter(_ParseFailureFilter())

# ``$$`` is the shell's pid; ``exec`` keeps it, so it is the server's pid (and process group id).
_PID_MARKER = "fednode-upstream-pid="
_PID_SHIM = f'echo "{_PID_MARKER}$$" >&2; exec "$0" "$@"'

# The reserved envelope keys of the 2026-07-28 era; a legacy server refuses requests carrying them.
_ENVELOPE_KEYS = (PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY)

# kind -> (list method, result key, capability that offers it)
_LISTS: dict[str, tuple[str, str, str]] = {
    "tools": ("tools/list", "tools", "tools"),
    "prompts": ("prompts/list", "prompts", "prompts"),
    "resources": ("resources/list", "resources", "resources"),
    "resource_templates": ("resources/templates/list", "resourceTemplates", "resources"),
}
_LIST_CHANGED: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools",),
    "notifications/prompts/list_changed": ("prompts",),
    # Templates have no notification of their own; a resource list change may concern them too.
    "notifications/resources/list_changed": ("resources", "resource_templates"),
}
# capability -> the ``subscriptions/listen`` filter key asking for its list_changed notifications
_LISTEN_KEYS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]


# -- configuration and results ---------------------------------------------------------------


@attrs.frozen
class ServerCatalog:
    """What a server offers: its definitions exactly as it sent them (raw dicts, every page)."""

    tools: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    resource_templates: tuple[dict[str, Any], ...] = ()


# -- one connection -----------------------------------------------------------------------------


class _Connection:
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
        self.progress: dict[str, trio.MemorySendChannel[tuple[float, float | None, str | None]]] = {}
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


# -- the driver ---------------------------------------------------------------------------------


#: Server notifications a session connection hands to its client session.
SESSION_NOTIFICATIONS = frozenset({"notifications/message", "notifications/resources/updated",
                                   "notifications/tasks/status"})
#: Server-to-client requests a session connection relays to its client session.
#: The requests a server may send its client, and the client capability each needs.
QUESTION_CAPABILITY = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
SESSION_REQUESTS = frozenset(QUESTION_CAPABILITY)
#: Questions a session connection's server may have waiting for the client at once.
MAX_SESSION_QUESTIONS = 16


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


class UpstreamServer:
    """Keeps one MCP server connected and forwards requests to it.

    Start :meth:`run` in a nursery; cancel it to remove the server (a stdio process is then
    terminated: stdin closed, SIGTERM, SIGKILL after a grace period; leftovers in its process group
    are swept). Only :meth:`call` and :meth:`wait_ready` are meant for other tasks.

    Attributes:
        config: the server's configuration (``fednode.ServerConfig``, from ``[[servers]]``).
        timeout: the default deadline of requests: ``config.timeout``, or :data:`DEFAULT_TIMEOUT`
            when that is ``None``.
        own_timeout: the deadline of fednode's own requests (the handshake, catalog reads):
            ``timeout``, but at least :data:`STARTUP_TIMEOUT`.
        state: ``"starting"`` (spawning or connecting, handshake, first catalog read), ``"up"``,
            ``"backoff"`` (the connection ended; waiting before the next attempt) or ``"stopped"``
            (:meth:`run` is not running).
        era: ``"2026-07-28"`` for a modern server, else the legacy protocol version it negotiated;
            ``None`` until the first handshake. Kept while the server is down.
        server_info: the ``initialize`` result (legacy) or the ``server/discover`` result with
            ``serverInfo`` lifted from its ``_meta`` stamp (modern), as the server sent them; both
            carry ``capabilities``.
        restarts: how many times the server was started again after a failure or exit.
        last_error: why the last connection ended or failed, if it did.
        catalog: the server's tools, prompts, resources and resource templates as last read (kept
            while the server is down, except after it stopped answering pings: then emptied, and
            ``on_catalog(None)`` withdraws it; check :attr:`state`).
        pid: the process id of a stdio server while it runs.
    """

    def __init__(self, config: ServerConfig, *, backoff: BackoffConfig,
                 on_catalog: Callable[[ServerCatalog | None], None], logger: Any = None,
                 jitter: Callable[[float], float] | None = None, server: Any = None,
                 session: SessionHooks | None = None, on_state: Callable[[], None] | None = None) -> None:
        if server is None and (config.command is None) == (config.url is None):
            raise ValueError(f"server {config.id!r}: give exactly one of command and url")
        if server is not None and (config.command is not None or config.url is not None):
            raise ValueError(f"server {config.id!r}: an in-process server takes neither command nor url")
        self.config = config
        # A connection held for one client session: legacy era, that client's capabilities, and
        # the server's notifications and requests handed to the session's hooks.
        self.session = session
        # An SDK server object (lowlevel Server or MCPServer) run in this process, for embedding.
        self._in_process = server
        self._in_flight: dict[Any, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] | None] = {}
        self.timeout = config.timeout if config.timeout is not None else DEFAULT_TIMEOUT
        self.own_timeout = max(self.timeout, STARTUP_TIMEOUT)
        self.state = STOPPED
        self.era: str | None = None
        self.server_info: dict[str, Any] | None = None
        self.restarts = 0
        self._questions = 0  # questions to a session's client waiting for an answer
        self.last_error: str | None = None
        self.catalog = ServerCatalog()
        self.pid: int | None = None
        self.log = (logger or log).bind(server=config.id)
        self._throttled = ThrottledLog(self.log)  # for lines the server can cause at will
        self._backoff_config = backoff
        self._backoff = Backoff(backoff, jitter) if jitter else Backoff(backoff)
        self._on_catalog = on_catalog
        self._on_state = on_state  # called after every change of state
        self._conn: _Connection | None = None
        self._state_changed = trio.Event()
        self._running = False
        self._up_since: float | None = None
        self._stderr_done = trio.Event()
        self._pid_seen = trio.Event()

    # -- public API ---------------------------------------------------------------------------

    @property
    def in_process(self) -> bool:
        """Whether the server is an SDK object running in this process."""
        return self._in_process is not None

    @property
    def busy(self) -> bool:
        """Whether requests are in flight to the server."""
        return bool(self._in_flight)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the server until cancelled: connect, serve, and restart after backoff when it ends.

        Reports started at once; use :meth:`wait_ready` to wait for the server itself.
        """
        if self._running:
            raise RuntimeError(f"server {self.config.id!r} is already running")
        self._running = True
        self._set_state(STARTING)
        task_status.started()
        try:
            while True:
                try:
                    reason = await self._session()
                except Exception as exc:  # any failure of one attempt only costs a restart
                    reason = _describe(exc)
                except BaseExceptionGroup as group:
                    # Stopped while the connection was failing: the failure no longer matters, and
                    # must not reach the caller's nursery along with the cancellation.
                    cancelled, failures = group.split(trio.Cancelled)
                    if cancelled is None:
                        raise
                    if failures is not None:
                        self.log.debug("upstream.failed_while_stopping", error=_describe(failures))
                    raise cancelled from None
                uptime = trio.current_time() - self._up_since if self._up_since is not None else 0.0
                self._up_since = None
                self.last_error = reason
                self._set_state(BACKOFF)
                if uptime >= self._backoff_config.reset_after:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                self.log.warning("upstream.down", reason=reason, uptime=round(uptime, 3))
                self.log.info("upstream.backoff", delay=round(delay, 3), attempt=self._backoff.attempt)
                await trio.sleep(delay)
                self.restarts += 1
                self._set_state(STARTING)
        finally:
            self._conn = None
            self._running = False
            self._set_state(STOPPED)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the server is up (connected, handshake done, catalog read).

        Raises:
            trio.TooSlowError: it was not up within ``timeout`` seconds.
        """
        with trio.fail_after(timeout):
            while self.state != UP:
                await self._state_changed.wait()

    async def call(self, method: str, params: dict[str, Any] | None, *, timeout: float | None = None,
                   on_progress: ProgressCallback | None = None,
                   on_question: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
                   ) -> dict[str, Any]:
        """Forward one request and return the server's raw result dict, exactly as it was sent.

        ``params`` are forwarded as given, except ``_meta``: a ``progressToken`` is replaced by
        our own (progress goes to ``on_progress``), a modern server gets the envelope keys
        ``protocolVersion`` and ``clientCapabilities`` if missing, and a legacy server gets the
        envelope keys removed (it would refuse the request). Cancelling the caller cancels the
        request at the server.

        Args:
            method: e.g. ``tools/call``, ``prompts/get``, ``resources/read``, ``completion/complete``.
            params: the request's params.
            timeout: the deadline in seconds (default: :attr:`timeout`).
            on_progress: awaited with ``(progress, total, message)`` for each progress notification
                of this request, in order; all are delivered before this method returns.

        Raises:
            UpstreamError: the server answered with a JSON-RPC error (same code, message, data).
            ServerUnavailableError: the server is not connected, or the connection was lost.
            UpstreamTimeoutError: no answer before the deadline.
        """
        conn = self._conn
        if conn is None or conn.is_lost():
            raise ServerUnavailableError(self.config.id, f"it is {self.state}")
        limit = self.timeout if timeout is None else timeout
        request_id = conn.next_id()
        out = self._forward_params(conn, params, request_id if on_progress is not None else None)
        opts: CallOptions = {"request_id": request_id}
        if conn.http:
            opts["headers"] = conn.headers_for(method, out)
        # Questions the server asks (a legacy server sends them as requests on the connection)
        # can be matched to this call only while it is the one call in flight; see _on_request.
        self._in_flight[request_id] = on_question
        try:
            # Our own deadline rather than the dispatcher's: its timeout error has the same code
            # (-32001) as a server's own error, which must pass through unchanged.
            with trio.move_on_after(limit):
                if on_progress is None:
                    return await conn.dispatcher.send_raw_request(method, out, opts)
                return await self._call_with_progress(conn, request_id, method, out, opts, on_progress)
        except MCPError as exc:
            raise self._translate(conn, exc) from None
        except BaseExceptionGroup as group:
            # An MCPError that crossed a task group under trio arrives wrapped: unwrap it.
            matched, _ = group.split(MCPError)
            leaf = sole_leaf(matched) if matched is not None else None
            if isinstance(leaf, MCPError):
                raise self._translate(conn, leaf) from None
            raise
        finally:
            del self._in_flight[request_id]
        raise UpstreamTimeoutError(self.config.id, method, limit)

    # -- forwarding ---------------------------------------------------------------------------

    @staticmethod
    def _forward_params(conn: _Connection, params: Mapping[str, Any] | None,
                        progress_token: str | None) -> dict[str, Any]:
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

    async def _call_with_progress(self, conn: _Connection, request_id: str, method: str, params: dict[str, Any],
                                  opts: CallOptions, on_progress: ProgressCallback) -> dict[str, Any]:
        # Progress is queued in receive order by the notification intercept and delivered by one
        # task, so every notification that preceded the response is delivered before we return
        # (the dispatcher's own on_progress runs each in a spawned task, which may run late). While
        # _PROGRESS_QUEUE of them wait for a slow caller, newer ones are dropped: memory stays bounded.
        send, receive = trio.open_memory_channel[tuple[float, float | None, str | None]](_PROGRESS_QUEUE)
        conn.progress[request_id] = send
        result: dict[str, Any] = {}
        error: MCPError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver_progress, receive, on_progress)
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

    async def _deliver_progress(self, receive: trio.MemoryReceiveChannel[tuple[float, float | None, str | None]],
                                on_progress: ProgressCallback) -> None:
        async with receive:
            async for progress, total, message in receive:
                try:
                    await on_progress(progress, total, message)
                except Exception as exc:  # the caller's callback must not fail the request
                    self.log.error("upstream.progress_callback_failed", error=repr(exc)[:300])

    async def _http_response(self, response: httpx2.Response) -> None:
        """Log an HTTP server's error statuses: the SDK turns them into bare JSON-RPC errors."""
        if response.status_code >= 400:
            fields = {"status": response.status_code, "method": response.request.method,
                      "content_type": response.headers.get("content-type", "")[:100]}
            if response.status_code < 500 and response.request.headers.get(MCP_METHOD_HEADER) == "server/discover":
                # The era probe: a legacy server refusing server/discover (400, 404, 405) is expected.
                self.log.debug("upstream.http_status", probe=True, **fields)
            else:
                self.log.warning("upstream.http_status", **fields)

    def _translate(self, conn: _Connection, exc: MCPError) -> FednodeError:
        # The dispatcher fails pending requests with exactly this error when the connection closes
        # (by then the read stream has marked the connection lost; the message is a second check).
        closed = exc.message == "Connection closed" and exc.data is None
        if exc.code == CONNECTION_CLOSED and (conn.is_lost() or closed):
            return ServerUnavailableError(self.config.id, "the connection was lost during the request")
        if conn.http and exc.data is None and (exc.message in _HTTP_STAND_INS
                                               or exc.message.startswith("Unexpected content type:")):
            # Not the server's own error but the SDK's word for an HTTP failure: say whose.
            return UpstreamError(exc.code, f"Server {self.config.id!r} (HTTP): {exc.message}; the node's log "
                                 f"has the HTTP status", None, server_id=self.config.id)
        return UpstreamError(exc.code, exc.message, exc.data, server_id=self.config.id)

    # -- one connection -------------------------------------------------------------------------

    async def _session(self) -> str:
        """Run one connection until it ends; return why it ended (or raise why it failed)."""
        target = self.config.url or " ".join((self.config.command or "", *self.config.args))
        self.log.info("upstream.starting", target=target[:300], attempt=self.restarts)
        async with trio.open_nursery() as aux:  # the stderr reader, which outlives the transport
            try:
                async with AsyncExitStack() as stack:
                    transport, errlog = await self._transport(stack, aux)
                    try:
                        read, write = await stack.enter_async_context(transport)
                    finally:
                        # The child holds its own copy of the stderr pipe's write end once spawned;
                        # ours must close so the reader sees end-of-file when the process is gone.
                        if errlog is not None:
                            errlog.close()
                    if self.config.command is not None and self.pid is None and os.name == "posix":
                        with trio.move_on_after(_PID_WAIT):
                            await self._pid_seen.wait()
                    conn = _Connection(http=self.config.url is not None)
                    ended = "the server process exited" if self.config.command is not None else "the connection closed"
                    watched = _WatchedReadStream(read, functools.partial(self._lose, conn, ended), self._bad_message)
                    conn.dispatcher = JSONRPCDispatcher(watched, write)
                    try:
                        async with trio.open_nursery() as nursery:
                            conn.scope = nursery.cancel_scope
                            await nursery.start(self._drive, conn)
                            if self.pid is not None:
                                nursery.start_soon(self._watch_exit, conn, self.pid)
                            await self._handshake(conn)
                            if conn.modern:
                                await self._start_listen(conn, nursery)
                            await self._read_lists(conn, set(_LISTS), fresh=True)
                            self._conn = conn
                            self._up_since = trio.current_time()
                            self._set_state(UP)
                            self.log.info("upstream.up", era=conn.era, pid=self.pid, tools=len(self.catalog.tools),
                                          prompts=len(self.catalog.prompts), resources=len(self.catalog.resources),
                                          resource_templates=len(self.catalog.resource_templates))
                            nursery.start_soon(self._refresh_loop, conn)
                            if self.config.ping_interval > 0 and self._in_process is None:
                                nursery.start_soon(self._ping_loop, conn)
                    finally:
                        self._lose(conn, "connection closed")
                return conn.end_reason or "connection closed"
            finally:
                # The process is gone by now; give its last stderr lines a moment, then stop reading.
                with trio.move_on_after(_STDERR_FLUSH, shield=True):
                    await self._stderr_done.wait()
                aux.cancel_scope.cancel()

    async def _ping_loop(self, conn: _Connection) -> None:
        """Ping the server every ``ping_interval``; one that does not answer within ``ping_timeout`` is down.

        A server can stay alive yet stop reading its input (stuck in a blocking call, a deadlock):
        without this it would look up for ever while every call waited out its deadline. Any answer,
        an error included, shows it is reading. When one does not come, the connection is marked
        lost at once (calls in flight fail with "server down"), the server's catalog is withdrawn,
        and the connection torn down (the process terminated), so :meth:`run` restarts it with backoff.

        An in-process server is not pinged: it runs on the node's own event loop.
        """
        interval, limit = self.config.ping_interval, self.config.ping_timeout
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(limit):
                try:
                    await self._ping(conn)
                except MCPError as exc:
                    if exc.code == CONNECTION_CLOSED and conn.is_lost():
                        return
                    self.log.debug("upstream.ping_error", code=exc.code, error=exc.message[:200])
                continue
            if conn.is_lost():
                return
            reason = f"no answer to a ping within {limit:g}s"
            self.log.warning("upstream.unresponsive", timeout=limit, pid=self.pid)
            self._lose(conn, reason)
            self.catalog = ServerCatalog()
            self._publish(None)
            assert conn.scope is not None
            conn.scope.cancel()
            return

    async def _ping(self, conn: _Connection) -> None:
        """One liveness request: ``ping`` (legacy), or ``server/discover`` (the 2026-07-28 era defines no ping)."""
        opts: CallOptions = {"request_id": conn.next_id("ping-"), "cancel_on_abandon": False}
        if conn.modern:
            method, params = "server/discover", {"_meta": conn.own_meta()}
        else:
            method, params = "ping", {}
        if conn.http:
            opts["headers"] = conn.headers_for(method, params)
        await conn.dispatcher.send_raw_request(method, params, opts)

    def _lose(self, conn: _Connection, reason: str) -> None:
        """Mark a connection gone, at once, so calls fail fast while the transport winds down.

        Called by the read stream the moment it ends, before the dispatcher fails the pending
        requests, so a request failed by the closing connection never sees the server still up.
        """
        conn.lose(reason)
        if self._conn is conn:
            self._conn = None
            self.last_error = conn.end_reason  # refined by run() once the transport has closed
            self._set_state(BACKOFF)

    def _bad_message(self, exc: Exception) -> None:
        """Log a message the server sent that could not be read (it is dropped), within limits."""
        self._throttled.warning("upstream.bad_message",
                                error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))

    async def _watch_exit(self, conn: _Connection, pid: int) -> None:
        """End the connection when the server process exits, even while something else holds its stdout.

        A descendant that inherited the server's stdout keeps the pipe open after the server is
        gone, so the end of stdout alone would leave a dead server looking up until a call fails.
        Waits on a pidfd (Linux): it becomes readable when the process exits, without reaping it.
        """
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # no pidfd here: the end of stdout remains the sign
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        self._lose(conn, "the server process exited")
        assert conn.scope is not None
        conn.scope.cancel()

    async def _drive(self, conn: _Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher's receive loop; the connection ends when it does."""
        await conn.dispatcher.run(self._on_request, self._on_notify, functools.partial(self._intercept, conn),
                                  task_status=task_status)
        self._lose(conn, "the connection closed")
        assert conn.scope is not None
        conn.scope.cancel()

    async def _transport(self, stack: AsyncExitStack, aux: trio.Nursery) -> tuple[Transport, TextIO | None]:
        """The SDK transport for this server (not yet entered), and a file to close once it is.

        For stdio, this also starts the stderr reader and arranges the process-group sweep.
        """
        self._stderr_done = trio.Event()
        self._pid_seen = trio.Event()
        if self._in_process is not None:
            self._stderr_done.set()
            return InMemoryTransport(self._in_process), None
        if self.config.url is not None:
            self._stderr_done.set()
            # No read timeout: every forwarded request has its own deadline, listen streams are
            # quiet for as long as nothing changes, and one failed read ends the whole transport.
            client = httpx2.AsyncClient(headers=dict(self.config.headers), timeout=httpx2.Timeout(30.0, read=None),
                                        event_hooks={"response": [self._http_response]})
            await stack.enter_async_context(client)
            return streamable_http_client(self.config.url, http_client=client), None

        assert self.config.command is not None
        extra_env = dict(self.config.env)
        problem = _command_problem(self.config.command, get_default_environment() | extra_env, self.config.cwd)
        if problem is not None:
            self._stderr_done.set()
            raise _SessionFailed(problem)
        command, args = self.config.command, list(self.config.args)
        if os.name != "posix":  # no shim, no pipe reader: stderr is shared with ours (never our stdout)
            self._stderr_done.set()
            params = StdioServerParameters(command=command, args=args, env=extra_env or None, cwd=self.config.cwd,
                                           encoding_error_handler="replace")
            return stdio_client(params, errlog=sys.stderr), None
        read_fd, write_fd = os.pipe()
        aux.start_soon(self._read_stderr, trio.lowlevel.FdStream(read_fd))
        errlog = os.fdopen(write_fd, "w")
        stack.callback(errlog.close)  # in case the transport is never entered
        # Registered before the transport is entered, so it runs after the transport has closed.
        stack.push_async_callback(self._sweep_process_group)
        # "replace": a line that is not UTF-8 becomes one unparsable message, logged; with the SDK's
        # default ("strict") the reader would stop for good while the server looked up.
        params = StdioServerParameters(command="/bin/sh", args=["-c", _PID_SHIM, command, *args],
                                       env=extra_env or None, cwd=self.config.cwd, encoding_error_handler="replace")
        return stdio_client(params, errlog=errlog), errlog

    async def _read_stderr(self, stream: trio.lowlevel.FdStream) -> None:
        """Log the server's stderr line by line; the shim's first line is the pid."""
        buffer = b""
        try:
            async with stream:
                while chunk := await stream.receive_some(65536):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._stderr_line(line)
                    if len(buffer) > _STDERR_LINE_LIMIT:
                        self._stderr_line(buffer)
                        buffer = b""
                if buffer:
                    self._stderr_line(buffer)
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass
        finally:
            self._pid_seen.set()
            self._stderr_done.set()

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not self._pid_seen.is_set():
            self._pid_seen.set()
            if text.startswith(_PID_MARKER) and text[len(_PID_MARKER):].isdigit():
                self.pid = int(text[len(_PID_MARKER):])
                return
        if len(text) > _STDERR_LINE_LIMIT:
            text = text[:_STDERR_LINE_LIMIT] + "..."
        self.log.info("upstream.stderr", line=text)

    async def _sweep_process_group(self) -> None:
        """Terminate whatever is left of the server's process group (descendants that outlived it)."""
        pgid, self.pid = self.pid, None
        if pgid is None:
            return
        with trio.CancelScope(shield=True):
            if not _group_alive(pgid):
                return
            self.log.info("upstream.sweep", pgid=pgid)
            _signal_group(pgid, signal.SIGTERM)
            with trio.move_on_after(_GROUP_GRACE):
                while _group_alive(pgid):  # noqa: ASYNC110 - nothing to wait on but the kernel's table
                    await trio.sleep(0.02)
                return
            _signal_group(pgid, signal.SIGKILL)

    # -- handshake ----------------------------------------------------------------------------

    async def _handshake(self, conn: _Connection) -> None:
        """Find the server's era: ``server/discover`` first, ``initialize`` if it shows itself legacy."""
        if self.session is not None:
            try:
                await self._initialize(conn)
                return
            except MCPError as exc:
                raise _SessionFailed(f"initialize failed with error {exc.code}: {exc.message}"[:300]) from None
        for attempt in range(2):
            try:
                result = await self._discover(conn)
            except MCPError as exc:
                supported = _supported_versions(exc) if exc.code == UNSUPPORTED_PROTOCOL_VERSION else None
                if supported is not None and not any(v in HANDSHAKE_PROTOCOL_VERSIONS for v in supported):
                    raise _SessionFailed(f"the server speaks only protocol versions {supported}") from None
                self.log.debug("upstream.discover_refused", code=exc.code, error=exc.message[:200])
            else:
                versions = result.get("supportedVersions")
                if isinstance(versions, list) and MODERN_ERA in versions:
                    self._adopt_modern(conn, result)
                    return
                # It answers discover yet offers no modern version: a legacy advertisement.
            try:
                await self._initialize(conn)
                return
            except MCPError as exc:
                # -32022 naming a modern version: our probe timed out here but locked the
                # connection into the modern era there; probe once more.
                supported = _supported_versions(exc) if exc.code == UNSUPPORTED_PROTOCOL_VERSION else None
                if attempt == 0 and supported is not None and MODERN_ERA in supported:
                    continue
                raise _SessionFailed(f"initialize failed with error {exc.code}: {exc.message}"[:300]) from None
        raise _SessionFailed("the server refused both server/discover and initialize")

    async def _discover(self, conn: _Connection) -> dict[str, Any]:
        meta = {PROTOCOL_VERSION_META_KEY: MODERN_ERA, CLIENT_INFO_META_KEY: dict(CLIENT_INFO),
                CLIENT_CAPABILITIES_META_KEY: {}}
        # The spec forbids cancelling the negotiation requests.
        opts: CallOptions = {"request_id": conn.next_id(), "cancel_on_abandon": False,
                             "timeout": _DISCOVER_TIMEOUT,
                             "headers": {MCP_PROTOCOL_VERSION_HEADER: MODERN_ERA, MCP_METHOD_HEADER: "server/discover"}}
        return await conn.dispatcher.send_raw_request("server/discover", {"_meta": meta}, opts)

    def _adopt_modern(self, conn: _Connection, result: dict[str, Any]) -> None:
        conn.era = MODERN_ERA
        conn.modern = True
        capabilities = result.get("capabilities")
        conn.capabilities = capabilities if isinstance(capabilities, dict) else {}
        info = dict(result)
        meta = result.get("_meta")
        if isinstance(meta, Mapping) and SERVER_INFO_META_KEY in meta:
            info["serverInfo"] = meta[SERVER_INFO_META_KEY]
        self.era = conn.era
        self.server_info = info

    async def _initialize(self, conn: _Connection) -> None:
        # Without a session (shared by stateless 2026-07-28 clients) fednode can still relay a
        # legacy server's questions to the one call in flight (see _parking): say so. It also
        # makes the server list what it offers only to clients with these capabilities.
        capabilities = (dict(self.session.capabilities) if self.session is not None
                        else own_capabilities())
        client_info = dict(self.session.client_info or CLIENT_INFO) if self.session is not None else dict(CLIENT_INFO)
        params = {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": capabilities, "clientInfo": client_info}
        opts: CallOptions = {"request_id": conn.next_id(), "cancel_on_abandon": False, "timeout": self.own_timeout}
        result = await conn.dispatcher.send_raw_request("initialize", params, opts)
        version = result.get("protocolVersion")
        if not isinstance(version, str) or version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise _SessionFailed(f"the server chose protocol version {version!r}, which fednode does not speak")
        await conn.dispatcher.notify("notifications/initialized", None,
                                     {"headers": {MCP_PROTOCOL_VERSION_HEADER: version}})
        conn.era = version
        offered = result.get("capabilities")
        conn.capabilities = offered if isinstance(offered, dict) else {}
        self.era = version
        self.server_info = dict(result)

    # -- catalog ------------------------------------------------------------------------------

    async def _request(self, conn: _Connection, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One of fednode's own requests (lists, listen): envelope, headers and deadline added."""
        if conn.modern:
            params = {**params, "_meta": conn.own_meta()}
        opts: CallOptions = {"request_id": conn.next_id(), "timeout": self.own_timeout}
        if conn.http:
            opts["headers"] = conn.headers_for(method, params)
        return await conn.dispatcher.send_raw_request(method, params, opts)

    async def _list_all(self, conn: _Connection, method: str, key: str) -> tuple[dict[str, Any], ...]:
        """Every page of one list, following ``nextCursor``."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            result = await self._request(conn, method, {"cursor": cursor} if cursor is not None else {})
            page = result.get(key)
            if not isinstance(page, list):
                raise _BadResult(f"the {method} result has no {key!r} list")
            items.extend(item for item in page if isinstance(item, dict))
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return tuple(items)
            if next_cursor in seen:
                self.log.warning("upstream.pagination_loop", method=method, cursor=next_cursor[:100])
                return tuple(items)
            seen.add(next_cursor)
            cursor = next_cursor
        self.log.warning("upstream.too_many_pages", method=method, pages=_MAX_PAGES)
        return tuple(items)

    async def _read_lists(self, conn: _Connection, kinds: set[str], *, fresh: bool = False) -> None:
        """(Re)read some lists, then publish the catalog. ``fresh``: start from an empty catalog."""
        updates: dict[str, tuple[dict[str, Any], ...]] = {}
        for kind in _LISTS:
            if kind not in kinds:
                continue
            method, key, capability = _LISTS[kind]
            if conn.capabilities.get(capability) is None:
                updates[kind] = ()
                continue
            try:
                updates[kind] = await self._list_all(conn, method, key)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED or conn.is_lost():
                    raise
                # One broken list must not make the rest of the server unusable.
                self.log.warning("upstream.list_failed", method=method, code=exc.code, error=exc.message[:300])
            except _BadResult as exc:
                self.log.warning("upstream.list_failed", method=method, error=str(exc))
        base = ServerCatalog() if fresh else self.catalog
        self.catalog = attrs.evolve(base, **updates)
        if conn.http and conn.modern and "tools" in updates:
            conn.header_maps = _header_maps(self.catalog.tools)
        self.log.debug("upstream.catalog", lists=sorted(updates), tools=len(self.catalog.tools))
        self._publish(self.catalog)

    def _publish(self, catalog: ServerCatalog | None) -> None:
        """Hand the catalog (None: withdrawn, the server stopped answering) to the owner."""
        try:
            self._on_catalog(catalog)
        except Exception as exc:  # a bug in the callback must not take the server down
            self.log.error("upstream.on_catalog_failed", error=repr(exc)[:300])

    async def _refresh_loop(self, conn: _Connection) -> None:
        """Re-read the lists the server says have changed.

        The first change is read at once; a server announcing changes faster than that waits: the
        next read starts no sooner than ``_REFRESH_GAP`` (or four times the last read's duration)
        after the last one began, so a storm of ``list_changed`` costs a bounded share of the CPU.
        """
        last_start, last_took = -math.inf, 0.0
        while True:
            await conn.changed.wait()
            await trio.sleep_until(last_start + max(_REFRESH_GAP, 4 * last_took))
            conn.changed = trio.Event()
            kinds, conn.dirty = conn.dirty, set()
            self.log.info("upstream.list_changed", lists=sorted(kinds))
            last_start = trio.current_time()
            await self._read_lists(conn, kinds)
            last_took = trio.current_time() - last_start

    async def _start_listen(self, conn: _Connection, nursery: trio.Nursery) -> None:
        """Modern servers announce list changes only on a ``subscriptions/listen`` stream: open one."""
        wanted = {key: True for capability, key in _LISTEN_KEYS.items()
                  if isinstance(offer := conn.capabilities.get(capability), dict) and offer.get("listChanged")}
        if not wanted:
            return
        nursery.start_soon(self._listen, conn, wanted)
        # Read the catalog only once the stream is acknowledged, so no change can fall in between.
        with trio.move_on_after(_ACK_WAIT):
            await conn.listen_acked.wait()

    async def _listen(self, conn: _Connection, wanted: dict[str, bool]) -> None:
        first = True
        while not conn.is_lost():
            try:
                # No deadline: the stream is meant to stay open; cancelling it sends the cancel.
                params: dict[str, Any] = {"notifications": wanted, "_meta": conn.own_meta()}
                opts: CallOptions = {"request_id": conn.next_id("listen-")}
                if conn.http:
                    opts["headers"] = conn.headers_for("subscriptions/listen", params)
                if not first:
                    conn.listen_acked = trio.Event()
                    conn.mark_dirty(tuple(_LISTS))  # anything may have changed while no stream was open
                await conn.dispatcher.send_raw_request("subscriptions/listen", params, opts)
                self.log.info("upstream.listen_ended")
            except MCPError as exc:
                if conn.is_lost():
                    return
                if exc.code != CONNECTION_CLOSED:
                    self.log.warning("upstream.listen_failed", code=exc.code, error=exc.message[:300])
                    conn.listen_acked.set()
                    return
                self.log.info("upstream.listen_lost", error=exc.message[:300])
            first = False
            await trio.sleep(_RELISTEN_DELAY)

    # -- inbound messages ---------------------------------------------------------------------

    def _intercept(self, conn: _Connection, method: str, params: Mapping[str, Any] | None) -> bool:
        """Called synchronously, in receive order, for every notification; True = consumed."""
        if method == "notifications/progress" and params is not None:
            token = params.get("progressToken")
            channel = conn.progress.get(token) if isinstance(token, str) else None
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
        if (kinds := _LIST_CHANGED.get(method)) is not None:
            conn.mark_dirty(kinds)
            return True
        if method == "notifications/subscriptions/acknowledged":
            conn.listen_acked.set()
            return True
        return False

    async def _on_notify(self, dctx: DispatchContext[TransportContext], method: str,
                         params: Mapping[str, Any] | None) -> None:
        if self.session is not None and method in SESSION_NOTIFICATIONS:
            self.session.notify(method, dict(params or {}))
            return
        if method == "notifications/message" and params is not None:
            self.log.info("upstream.message", level=str(params.get("level"))[:20],
                          logger=str(params.get("logger"))[:100], data=repr(params.get("data"))[:1000])
        elif method not in ("notifications/progress", "notifications/cancelled"):
            self.log.debug("upstream.notification", method=method[:100])

    async def _on_request(self, dctx: DispatchContext[TransportContext], method: str,
                          params: Mapping[str, Any] | None) -> dict[str, Any]:
        if method == "ping":
            return {}
        if self.session is not None and method in SESSION_REQUESTS:
            # The server asks the session's client (elicitation, sampling, roots): relay and wait,
            # if the client said it can answer, and a bounded number at a time.
            capability = QUESTION_CAPABILITY[method]
            if capability not in self.session.capabilities:
                raise MCPError(METHOD_NOT_FOUND, f"the client did not declare the {capability} capability")
            if self._questions >= MAX_SESSION_QUESTIONS:
                raise MCPError(INTERNAL_ERROR, f"too many questions waiting for the client (at most "
                                               f"{MAX_SESSION_QUESTIONS})")
            self._questions += 1
            try:
                return await self.session.ask(method, dict(params or {}))
            finally:
                self._questions -= 1
        if method in SESSION_REQUESTS and len(self._in_flight) == 1:
            ask = next(iter(self._in_flight.values()))
            if ask is not None:
                return await ask(method, dict(params or {}))
        # Otherwise fednode cannot tell whose question it is: it declares no client capabilities.
        raise MCPError(METHOD_NOT_FOUND, f"Method not found: {method}")

    # -- state ----------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        if self._on_state is not None:
            self._on_state()


# -- helpers ---------------------------------------------------------------------------------------


class _WatchedReadStream:
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

    def __aiter__(self) -> _WatchedReadStream:
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


def _command_problem(command: str, env: Mapping[str, str], cwd: str | None) -> str | None:
    """Why ``command`` cannot be started, or None (the shim would only report it on stderr)."""
    if cwd is not None and not os.path.isdir(cwd):
        return f"working directory {cwd!r} does not exist"
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"command {command!r} is not an executable file"
        return None
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"command {command!r} not found on PATH"
    return None


def _group_alive(pgid: int) -> bool:
    """Whether the process group still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a member we may not signal (or a zombie on some systems): look closer
    # Orphaned zombies stay in the group until init reaps them, which some container inits do
    # late or never; on Linux, look past them instead of waiting out the grace period.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _supported_versions(exc: MCPError) -> list[str] | None:
    """The ``supported`` list of a -32022 error's data, if it has one."""
    data = exc.data
    if isinstance(data, Mapping) and isinstance(supported := data.get("supported"), list):
        return [v for v in supported if isinstance(v, str)]
    return None


def _header_maps(tools: tuple[dict[str, Any], ...]) -> dict[str, dict[tuple[str, ...], str]]:
    """Each tool's ``x-mcp-header`` annotations, mirrored into ``Mcp-Param-*`` headers over HTTP."""
    maps: dict[str, dict[tuple[str, ...], str]] = {}
    for tool in tools:
        name, schema = tool.get("name"), tool.get("inputSchema")
        if not (isinstance(name, str) and isinstance(schema, dict)) or find_invalid_x_mcp_header(schema):
            continue
        if header_map := x_mcp_header_map(schema):
            maps[name] = header_map
    return maps


def _describe(exc: BaseException) -> str:
    """A short human-readable reason for ``last_error`` (groups are unwrapped to their first leaf)."""
    leaf = next(leaves(exc))
    if isinstance(leaf, _SessionFailed):
        text = str(leaf)
    elif isinstance(leaf, MCPError):
        text = f"the server answered with error {leaf.code}: {leaf.message}"
    else:
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
    return text[:300]
