"""The driver for one attached MCP server (an "upstream"): spawn or connect, handshake, catalog, forward.

:class:`UpstreamServer` keeps one MCP server connected, over stdio (a child process) or Streamable
HTTP. It uses the official SDK's transports (``stdio_client``, ``streamable_http_client``) driven by
the SDK's low-level ``JSONRPCDispatcher`` rather than its typed ``ClientSession``: the session
rewrites the protocol version, client info and capabilities of every request, validates results
through pydantic models (which drops unknown fields) and may issue extra requests. A forwarder must
pass requests and results through as raw dicts.

The driver's collaborators, each in its own module: the transports and the stdio process (pid,
stderr, process-group sweep: :mod:`fednode._mcp._upstream_process`), one live connection and what is
sent over it (:mod:`fednode._mcp._upstream_conn`), era detection (:mod:`fednode._mcp._upstream_era`), the
catalog reader (:mod:`fednode._mcp._upstream_catalog`) and the errors (:mod:`fednode._upstream_errors`).
The names other modules use are re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, NoReturn

import structlog
import trio
from mcp.shared.dispatcher import CallOptions, DispatchContext
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.transport_context import TransportContext

from .._config._config import BackoffConfig
from .._config._config import ServerConfig as ServerConfig  # re-exported: the configuration this driver takes
from .._config._logging import ThrottledLog
from .._errors import INTERNAL_ERROR, METHOD_NOT_FOUND, sole_leaf
from .._errors import ServerUnavailableError as ServerUnavailableError
from .._errors import UpstreamError as UpstreamError
from .._errors import UpstreamTimeoutError as UpstreamTimeoutError
from .._peers._backoff import Backoff
from ._upstream_catalog import LIST_CHANGED, CatalogReader
from ._upstream_catalog import ServerCatalog as ServerCatalog
from ._upstream_conn import CLIENT_INFO as CLIENT_INFO
from ._upstream_conn import MAX_SESSION_QUESTIONS as MAX_SESSION_QUESTIONS
from ._upstream_conn import MODERN_ERA as MODERN_ERA
from ._upstream_conn import PROGRESS_QUEUE as _PROGRESS_QUEUE  # noqa: F401 - the name tests know
from ._upstream_conn import QUESTION_CAPABILITY as QUESTION_CAPABILITY
from ._upstream_conn import SESSION_NOTIFICATIONS as SESSION_NOTIFICATIONS
from ._upstream_conn import SESSION_REQUESTS as SESSION_REQUESTS
from ._upstream_conn import (
    Connection,
    WatchedReadStream,
    describe,
    forward_params,
    ping_loop,
    send_with_progress,
    translate,
)
from ._upstream_conn import ProgressCallback as ProgressCallback
from ._upstream_conn import SessionHooks as SessionHooks
from ._upstream_conn import own_capabilities as own_capabilities
from ._upstream_era import handshake
from ._upstream_process import StdioProcess, open_transport

log = structlog.get_logger("fednode")

#: The deadline of forwarded requests when neither the call nor the server's configuration gives one.
DEFAULT_TIMEOUT = 60.0

#: The least deadline of each of fednode's own requests to a server (``initialize`` and the catalog
#: reads), whatever the server's ``timeout``: that setting bounds the requests forwarded to it, and a
#: server that starts slowly (a busy machine, a cold cache) must not be taken for a broken one.
STARTUP_TIMEOUT = 60.0

#: The state names of :attr:`UpstreamServer.state`.
STARTING, UP, BACKOFF, STOPPED = "starting", "up", "backoff", "stopped"

Asker = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


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

    Its parts: a :class:`~fednode._mcp._upstream_catalog.CatalogReader` (the catalog, kept fresh) and
    a :class:`~fednode._mcp._upstream_process.StdioProcess` (a stdio server's pid, stderr, process group).
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
        self._in_flight: dict[Any, Asker | None] = {}
        self.timeout = config.timeout if config.timeout is not None else DEFAULT_TIMEOUT
        self.own_timeout = max(self.timeout, STARTUP_TIMEOUT)
        self.state = STOPPED
        self.era: str | None = None
        self.server_info: dict[str, Any] | None = None
        self.restarts = 0
        self._questions = 0  # questions to a session's client waiting for an answer
        self.last_error: str | None = None
        self._logger = logger or log
        self.log = self._logger.bind(server=config.id)
        self._throttled = ThrottledLog(self.log)  # for lines the server can cause at will
        self._backoff_config = backoff
        self._backoff = Backoff(backoff, jitter) if jitter else Backoff(backoff)
        self._reader = CatalogReader(on_catalog, timeout=self.own_timeout, log=self.log)
        self._process = StdioProcess(config, log=self.log)
        self._on_state = on_state  # called after every change of state
        self._conn: Connection | None = None
        self._state_changed = trio.Event()
        self._running = False
        self._extras: trio.Nursery | None = None  # the tasks that end with run(): see start_extra
        self._up_since: float | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def in_process(self) -> bool:
        """Whether the server is an SDK object running in this process."""
        return self._in_process is not None

    @property
    def catalog(self) -> ServerCatalog:
        """The server's catalog as last read (see the class's attributes)."""
        return self._reader.catalog

    @property
    def pid(self) -> int | None:
        """The process id of a stdio server while it runs."""
        return self._process.pid

    @property
    def busy(self) -> bool:
        """Whether requests are in flight to the server."""
        return bool(self._in_flight)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the server until cancelled: connect, serve, and restart after backoff when it ends.

        Reports started at once; use :meth:`wait_ready` to wait for the server itself.

        Cancellation: cancelling this task is removing the server. The main connection, and every
        task started with :meth:`start_extra` (the connections of client sessions and of single
        calls), run under this task's own nursery and end with it: nothing else needs closing.
        """
        if self._running:
            raise RuntimeError(f"server {self.config.id!r} is already running")
        self._running = True
        self._set_state(STARTING)
        try:
            async with trio.open_nursery() as extras:
                self._extras = extras
                task_status.started()
                await self._supervise()
        finally:
            self._extras = None
            self._conn = None
            self._running = False
            self._set_state(STOPPED)

    def extra_connection(self, *, session: SessionHooks | None = None) -> UpstreamServer:
        """Another connection to this server: same configuration, backoff and logger; its catalog goes nowhere.

        For one client session (``session``: legacy era, that client's capabilities and hooks) or
        for calls whose server may ask questions. Run it with :meth:`start_extra`, so that it ends
        when this server is removed.
        """
        return UpstreamServer(self.config, backoff=self._backoff_config, logger=self._logger,
                              server=self._in_process, on_catalog=lambda _catalog: None, session=session)

    async def start_extra(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> Any:
        """Start a task under this server's own scope, as ``nursery.start`` does; return what it reported.

        The task (typically one running an :meth:`extra_connection`) is cancelled when :meth:`run`
        is, that is when the server is removed or the node stops.

        Raises:
            ServerUnavailableError: :meth:`run` is not running (the server was removed).
        """
        if self._extras is None:
            raise ServerUnavailableError(self.config.id, f"it is {self.state}")
        return await self._extras.start(async_fn, *args)

    async def _supervise(self) -> NoReturn:
        """Connect, serve, and restart after backoff, for ever (until cancelled)."""
        while True:
            try:
                reason = await self._session()
            except Exception as exc:  # any failure of one attempt only costs a restart
                reason = describe(exc)
            except BaseExceptionGroup as group:
                # Stopped while the connection was failing: the failure no longer matters, and
                # must not reach the caller's nursery along with the cancellation.
                cancelled, failures = group.split(trio.Cancelled)
                if cancelled is None:
                    raise
                if failures is not None:
                    self.log.debug("upstream.failed_while_stopping", error=describe(failures))
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
                   on_question: Asker | None = None,
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
        out = forward_params(conn, params, request_id if on_progress is not None else None)
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
                return await send_with_progress(conn, request_id, method, out, opts, on_progress,
                                                self._progress_callback_failed)
        except MCPError as exc:
            raise translate(self.config.id, conn, exc) from None
        except BaseExceptionGroup as group:
            # An MCPError that crossed a task group under trio arrives wrapped: unwrap it.
            matched, _ = group.split(MCPError)
            leaf = sole_leaf(matched) if matched is not None else None
            if isinstance(leaf, MCPError):
                raise translate(self.config.id, conn, leaf) from None
            raise
        finally:
            del self._in_flight[request_id]
        raise UpstreamTimeoutError(self.config.id, method, limit)

    def _progress_callback_failed(self, exc: Exception) -> None:
        self.log.error("upstream.progress_callback_failed", error=repr(exc)[:300])

    # -- one connection -------------------------------------------------------------------------

    async def _session(self) -> str:
        """Run one connection until it ends; return why it ended (or raise why it failed)."""
        target = self.config.url or " ".join((self.config.command or "", *self.config.args))
        self.log.info("upstream.starting", target=target[:300], attempt=self.restarts)
        async with trio.open_nursery() as aux:  # the stderr reader, which outlives the transport
            try:
                async with AsyncExitStack() as stack:
                    transport, errlog = await open_transport(self.config, in_process=self._in_process,
                                                             process=self._process, stack=stack, aux=aux, log=self.log)
                    try:
                        read, write = await stack.enter_async_context(transport)
                    finally:
                        # The child holds its own copy of the stderr pipe's write end once spawned;
                        # ours must close so the reader sees end-of-file when the process is gone.
                        if errlog is not None:
                            errlog.close()
                    await self._process.wait_pid()
                    conn = Connection(http=self.config.url is not None)
                    ended = "the server process exited" if self.config.command is not None else "the connection closed"
                    watched = WatchedReadStream(read, functools.partial(self._lose, conn, ended), self._bad_message)
                    conn.dispatcher = JSONRPCDispatcher(watched, write)
                    try:
                        async with trio.open_nursery() as nursery:
                            conn.scope = nursery.cancel_scope
                            await nursery.start(self._drive, conn)
                            if self.pid is not None:
                                nursery.start_soon(self._process.watch_exit, self.pid,
                                                   functools.partial(self._end, conn, "the server process exited"))
                            self.server_info = await handshake(conn, session=self.session, timeout=self.own_timeout,
                                                               log=self.log)
                            self.era = conn.era
                            if conn.modern:
                                await self._reader.start_listen(conn, nursery)
                            await self._reader.read(conn, fresh=True)
                            self._conn = conn
                            self._up_since = trio.current_time()
                            self._set_state(UP)
                            self.log.info("upstream.up", era=conn.era, pid=self.pid, tools=len(self.catalog.tools),
                                          prompts=len(self.catalog.prompts), resources=len(self.catalog.resources),
                                          resource_templates=len(self.catalog.resource_templates))
                            nursery.start_soon(self._reader.refresh_loop, conn)
                            if self.config.ping_interval > 0 and self._in_process is None:
                                nursery.start_soon(ping_loop, conn, self.config.ping_interval,
                                                   self.config.ping_timeout, self._unresponsive, self.log)
                    finally:
                        self._lose(conn, "connection closed")
                return conn.end_reason or "connection closed"
            finally:
                # The process is gone by now; give its last stderr lines a moment, then stop reading.
                await self._process.flush_stderr()
                aux.cancel_scope.cancel()

    def _unresponsive(self, conn: Connection, limit: float) -> None:
        """A ping went unanswered: the server is down (calls fail at once), its catalog withdrawn, its
        connection torn down (the process terminated), so :meth:`run` restarts it with backoff."""
        reason = f"no answer to a ping within {limit:g}s"
        self.log.warning("upstream.unresponsive", timeout=limit, pid=self.pid)
        self._lose(conn, reason)
        self._reader.withdraw()
        self._end(conn, reason)

    def _lose(self, conn: Connection, reason: str) -> None:
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

    async def _drive(self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher's receive loop; the connection ends when it does."""
        await conn.dispatcher.run(self._on_request, self._on_notify, functools.partial(self._intercept, conn),
                                  task_status=task_status)
        self._end(conn, "the connection closed")

    def _end(self, conn: Connection, reason: str) -> None:
        """Mark a connection lost and tear it down (the process is terminated; :meth:`run` restarts it)."""
        self._lose(conn, reason)
        assert conn.scope is not None
        conn.scope.cancel()

    # -- inbound messages ---------------------------------------------------------------------

    def _intercept(self, conn: Connection, method: str, params: Mapping[str, Any] | None) -> bool:
        """Called synchronously, in receive order, for every notification; True = consumed."""
        if method == "notifications/progress" and params is not None:
            return conn.take_progress(params)
        if (kinds := LIST_CHANGED.get(method)) is not None:
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


