"""Per-client-session state across the mesh, for legacy (2025-11-25 and older) MCP clients.

A legacy client's session has state a shared server connection cannot hold apart from other
clients': its log level, its resource subscriptions, and the server's log messages and questions
meant for it alone. So the node that owns a server opens, on first use, one connection to that
server per client session (``initialize`` with that client's capabilities), and keeps the path the
session's last request came by. Whatever the server sends on that connection belongs to that
session and travels back along the path: notifications as ``fed/session_event`` (in order, through
one bounded relay queue per node), server-to-client requests as ``fed/session_request`` (answered
by the client on its request stream). Connections close when the client session ends
(``fed/session_end``), after ``SESSION_IDLE`` seconds unused, when the pool is full (least
recently used first), or with their server: each runs under its server's own scope
(``UpstreamServer.start_extra``), so removing the server ends it and nothing here needs closing.

Each such connection takes one of its server's slots (``[[servers]] max_connections``, see
:mod:`fednode._mcp._upstream_slots`), charged to the peer the session's requests arrive through. A
session that finds none free is served on the server's shared connection: its calls succeed, but
the server's log messages and questions for it cannot be told from other clients' there (they are
logged at this node, and questions refused), and its log level is not applied. It tries again for a
connection of its own at its next request.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import trio
from mcp.shared.exceptions import MCPError

from .._config._logging import ThrottledLog
from .._errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    OVERLOADED,
    FednodeError,
    ForwardError,
    RemoteError,
    ServerUnavailableError,
    UpstreamError,
)
from .._peers._link import Handlers, RequestContext
from .._peers._shares import LOCAL
from ._upstream import SessionHooks, UpstreamServer
from ._upstream_slots import Slot

SESSION_EVENT = "fed/session_event"
SESSION_REQUEST = "fed/session_request"
SESSION_END = "fed/session_end"
SESSION_IDLE = 600.0
MAX_SESSION_UPSTREAMS = 64
_RELAY_BUFFER = 256

#: Sends a request to a peer: ``request(peer, method, params, timeout=...) -> result``.
Request = Callable[..., Awaitable[Any]]
#: Sends a notification to a peer: ``notify(peer, method, params)``.
Notify = Callable[[str, str, Any], Awaitable[None]]


class ClientSessions(Protocol):
    """This node's own legacy client sessions, as the way back from their servers reaches them."""

    async def deliver(self, session_id: str, method: str, params: dict[str, Any]) -> None:
        """Hand a server's notification to the client session ``session_id``."""
        ...

    async def ask(self, session_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the client session ``session_id`` a server's question; return its answer."""
        ...


class NextHops(Protocol):
    """Where requests for other nodes' servers go next (the routing table)."""

    def next_hop(self, key: tuple[str, str]) -> str | None:
        """The peer towards the owner of ``(origin, server)`` (None: no route)."""
        ...


@attrs.define
class _Held:
    upstream: UpstreamServer
    scope: trio.CancelScope
    finished: trio.Event
    path: tuple[str, ...]
    last_used: float
    slot: Slot
    level: str | None = None


async def until_idle(idle: float, last_used: Callable[[], float], busy: Callable[[], bool] = lambda: False) -> None:
    """Return once ``idle`` seconds have passed since ``last_used()`` while not ``busy()``."""
    wake = last_used() + idle
    while True:
        await trio.sleep_until(wake)
        now = trio.current_time()
        if busy():
            wake = now + idle  # in use (a long call): look again one idle period from now
        elif now >= last_used() + idle:
            return
        else:
            wake = last_used() + idle


class Sessions:
    """Session connections at owning nodes and the return paths of their traffic (one per node).

    Args:
        node_id: this node's id (client session ids start with it).
        upstreams: the servers attached here, by id (read at each use).
        request: sends a request to a peer (``fed/session_request`` on the way back).
        notify: sends a notification to a peer (session events and ends).
        routes: the next hop towards the node owning a server.
        request_timeout: the deadline of a client's answer relayed from a peer, read at each use.
        log: the node's logger.
        client: this node's own client sessions (events and questions for them end there).

    The node serves :attr:`handlers` (``fed/session_event``, ``fed/session_request`` and
    ``fed/session_end``) to its peers and runs :meth:`relay`.
    """

    def __init__(self, node_id: str, upstreams: Mapping[str, UpstreamServer], *, request: Request, notify: Notify,
                 routes: NextHops, request_timeout: Callable[[], float], log: Any, client: ClientSessions) -> None:
        self.node_id = node_id
        self._upstreams = upstreams
        self._request = request
        self._notify = notify
        self._routes = routes
        self._client = client
        self._request_timeout = request_timeout
        self.log = log
        self._throttled = ThrottledLog(self.log)
        self._held: dict[tuple[str, str], _Held] = {}
        self._opening: dict[tuple[str, str], trio.Event] = {}
        # (next hop or "" for a local client, method, message): events and session ends, in order
        self._relay_send, self._relay_recv = trio.open_memory_channel[tuple[str, str, dict[str, Any]]](_RELAY_BUFFER)
        #: the methods peers call on this node for sessions, for the node to serve
        self.handlers = Handlers(requests={SESSION_REQUEST: self.on_request},
                                 inline_notifications={SESSION_EVENT: self.on_event, SESSION_END: self.on_end})

    # -- at the owning node ---------------------------------------------------------------------

    async def upstream_for(self, server_id: str, session: dict[str, Any], trace: tuple[str, ...],
                           timeout: float, source: str = LOCAL) -> UpstreamServer | None:
        """The session's own connection to ``server_id`` (opened on first use), or None to use the shared one.

        ``source`` is the peer the request arrived from (:data:`~fednode._peers._shares.LOCAL` for
        this node's own clients): a new connection is charged to its share of the server's slots,
        and with no slot free the session uses the shared connection.

        Raises:
            ServerUnavailableError: the server is being removed.
        """
        shared = self._upstreams.get(server_id)
        session_id = session.get("id")
        if shared is None or shared.in_process or not isinstance(session_id, str):
            return None
        key = (server_id, session_id)
        opening = self._opening.get(key)
        if opening is not None:  # the session's first requests arrive together: open one connection
            with trio.fail_after(timeout):
                await opening.wait()
        held = self._held.get(key)
        if held is not None and not held.finished.is_set():
            held.path, held.last_used = trace, trio.current_time()
            await held.upstream.wait_ready(timeout)
            return held.upstream
        if len(self._held) >= MAX_SESSION_UPSTREAMS:
            # Make room by closing the least recently used connection that is idle: never one with
            # a call in flight or still opening (that would fail another client's call).
            idle = [k for k, h in self._held.items() if not h.upstream.busy and k not in self._opening]
            if not idle:
                raise ForwardError(OVERLOADED, f"All {MAX_SESSION_UPSTREAMS} session connections of this node are "
                                               f"busy; retry later")
            self._close(min(idle, key=lambda k: self._held[k].last_used), "pool full")
        slot = shared.slots.acquire(source)
        if slot is None:
            # Nothing a remote client does may make this node start processes without bound.
            self._throttled.warning("session.shared", key=server_id, server=server_id,
                                    source=source or LOCAL, reason=shared.slots.why_full(source))
            return None
        capabilities = session.get("capabilities")
        client_info = session.get("clientInfo")
        hooks = SessionHooks(capabilities=capabilities if isinstance(capabilities, dict) else {},
                             client_info=client_info if isinstance(client_info, dict) else None,
                             notify=functools.partial(self._emit, key), ask=functools.partial(self._ask, key))
        upstream = shared.extra_connection(session=hooks)
        held = _Held(upstream=upstream, scope=trio.CancelScope(), finished=trio.Event(), path=trace,
                     last_used=trio.current_time(), slot=slot)
        self._held[key] = held
        self._opening[key] = opened = trio.Event()
        try:
            try:
                await shared.start_extra(self._run, key, held, functools.partial(shared.slots.release, slot))
            except ServerUnavailableError:
                del self._held[key]
                shared.slots.release(slot)
                raise
            await upstream.wait_ready(timeout)
        finally:
            del self._opening[key]
            opened.set()
        self.log.info("session.opened", server=server_id, session=session_id)
        return upstream

    async def apply_level(self, server_id: str, session: dict[str, Any], upstream: UpstreamServer) -> None:
        """Bring the session connection's log level to the client's (``logging/setLevel``), if it changed.

        The node accepts ``logging/setLevel`` for the whole federation, so the level reaches servers
        that have no logging: those are left alone (the spec lets a client send it only to a server
        declaring the ``logging`` capability), and a server that refuses it anyway is logged, not
        passed on. Either way the client's request that brought the level here goes ahead: it did
        not ask for the level (clients such as the MCP Inspector set one right after ``initialize``).
        """
        level = session.get("logLevel")
        held = self._held.get((server_id, str(session.get("id"))))
        if held is None or not isinstance(level, str) or held.level == level:
            return
        held.level = level  # once per change, whatever the server makes of it
        capabilities = (upstream.server_info or {}).get("capabilities")
        if not isinstance(capabilities, dict) or capabilities.get("logging") is None:
            return
        try:
            await upstream.call("logging/setLevel", {"level": level})
        except UpstreamError as exc:
            # A client can change its level at will: limited, like other lines outsiders can cause.
            self._throttled.warning("session.level_refused", key=server_id, server=server_id, level=level,
                                    code=exc.code, error=exc.message[:200])

    async def _run(self, key: tuple[str, str], held: _Held, release: Callable[[], None], *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with held.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(held.upstream.run)
                    task_status.started()
                    # close the connection once the session has not used it for a while
                    await until_idle(SESSION_IDLE, lambda: held.last_used)
                    self.log.info("session.idle", server=key[0], session=key[1])
                    nursery.cancel_scope.cancel()
        finally:
            release()  # the connection (and a stdio server's process) is gone by now
            held.finished.set()
            if self._held.get(key) is held:
                del self._held[key]

    def _close(self, key: tuple[str, str], why: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self.log.info("session.closed", server=key[0], session=key[1], reason=why)
            held.scope.cancel()

    def _emit(self, key: tuple[str, str], method: str, params: dict[str, Any]) -> None:
        held = self._held.get(key)
        if held is not None:
            self._route_event({"session": key[1], "path": list(held.path), "method": method, "params": params})

    async def _ask(self, key: tuple[str, str], method: str, params: dict[str, Any]) -> dict[str, Any]:
        held = self._held.get(key)
        path = list(held.path) if held is not None else []
        return await self._route_request({"session": key[1], "path": path, "method": method, "params": params})

    # -- on the way back ---------------------------------------------------------------------------

    def _route_event(self, event: dict[str, Any]) -> None:
        path = event["path"]
        hop = path[-1] if path else None
        outgoing = {**event, "path": path[:-1]}
        try:
            self._relay_send.send_nowait((hop or "", SESSION_EVENT, outgoing))
        except trio.WouldBlock:
            self.log.warning("session.event_dropped", session=event["session"], method=event["method"])

    async def relay(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send session events and ends on, one at a time and in order (local events to the client).

        Runs until cancelled.
        """
        task_status.started()
        async for hop, method, message in self._relay_recv:
            with contextlib.suppress(FednodeError):
                if hop:
                    await self._notify(hop, method, message)
                else:
                    await self._client.deliver(message["session"], message["method"], message["params"])

    def on_event(self, params: Any, context: RequestContext) -> None:
        """``fed/session_event`` from a peer: pass it on towards its client."""
        if not (isinstance(params, dict) and isinstance(params.get("session"), str)
                and isinstance(params.get("path"), list) and isinstance(params.get("method"), str)
                and isinstance(params.get("params"), dict)):
            return
        if not params["path"] and not params["session"].startswith(f"{self.node_id}/"):
            return  # not ours: a peer cannot make this node talk to another node's clients
        self._route_event(params)

    async def _route_request(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request["path"]
        if not path:
            if not request["session"].startswith(f"{self.node_id}/"):
                raise MCPError(INTERNAL_ERROR, "no client session to ask")
            return await self._client.ask(request["session"], request["method"], request["params"])
        try:
            result = await self._request(path[-1], SESSION_REQUEST, {**request, "path": path[:-1]},
                                         timeout=self._request_timeout())
        except RemoteError as exc:
            raise MCPError(exc.code, exc.remote_message, exc.data) from None
        except FednodeError as exc:
            raise MCPError(INTERNAL_ERROR, f"the client could not be reached: {exc}") from None
        if not isinstance(result, dict):
            raise MCPError(INTERNAL_ERROR, "malformed answer from the client")
        return result

    async def on_request(self, params: Any, context: RequestContext) -> Any:
        """``fed/session_request`` from a peer: ask the client it is for (here, or one hop nearer)."""
        if not (isinstance(params, dict) and isinstance(params.get("session"), str)
                and isinstance(params.get("path"), list) and isinstance(params.get("method"), str)
                and isinstance(params.get("params"), dict)):
            raise ForwardError(INVALID_PARAMS, "malformed fed/session_request")
        try:
            return await self._route_request(params)
        except MCPError as exc:
            raise ForwardError(exc.error.code, exc.error.message, exc.error.data) from None

    # -- session end ------------------------------------------------------------------------------

    def end(self, session_id: str, used: set[tuple[str, str]]) -> None:
        """A local client session ended: close its connections wherever they are."""
        for origin, server in used:
            self._route_end({"session": session_id, "origin": origin, "server": server})

    def _route_end(self, message: dict[str, Any]) -> None:
        origin, server = message["origin"], message["server"]
        if origin == self.node_id:
            self._close((server, message["session"]), "client session ended")
            return
        hop = self._routes.next_hop((origin, server))
        if hop is not None:
            # Sent by the relay task, after the session's events (a full queue drops it: the
            # connection then closes when idle).
            try:
                self._relay_send.send_nowait((hop, SESSION_END, message))
            except trio.WouldBlock:
                self.log.warning("session.end_dropped", session=message["session"], server=server)

    def on_end(self, params: Any, context: RequestContext) -> None:
        """``fed/session_end`` from a peer: close the session's connection here, or pass it on."""
        # Harmless whoever sends it: it only closes a connection that reopens on the session's next use.
        if isinstance(params, dict) and all(isinstance(params.get(k), str) for k in ("session", "origin", "server")):
            self._route_end(params)
