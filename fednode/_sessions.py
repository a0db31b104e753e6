"""Per-client-session state across the mesh, for legacy (2025-11-25 and older) MCP clients.

A legacy client's session has state a shared server connection cannot hold apart from other
clients': its log level, its resource subscriptions, and the server's log messages and questions
meant for it alone. So the node that owns a server opens, on first use, one connection to that
server per client session (``initialize`` with that client's capabilities), and keeps the path the
session's last request came by. Whatever the server sends on that connection belongs to that
session and travels back along the path: notifications as ``fed/session_event`` (in order, through
one bounded relay queue per node), server-to-client requests as ``fed/session_request`` (answered
by the client on its request stream). Connections close when the client session ends
(``fed/session_end``), after ``SESSION_IDLE`` seconds unused, or when the pool is full (least
recently used first).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
from mcp.shared.exceptions import MCPError

from ._errors import INTERNAL_ERROR, INVALID_PARAMS, OVERLOADED, FednodeError, ForwardError, RemoteError, UpstreamError
from ._link import RequestContext
from ._logging import ThrottledLog

if TYPE_CHECKING:
    from ._federation import Federation
    from ._upstream import UpstreamServer

SESSION_EVENT = "fed/session_event"
SESSION_REQUEST = "fed/session_request"
SESSION_END = "fed/session_end"
SESSION_IDLE = 600.0
MAX_SESSION_UPSTREAMS = 64
_RELAY_BUFFER = 256

#: Delivers a session notification to a local client session: ``deliver(session_id, method, params)``.
Deliver = Callable[[str, str, dict[str, Any]], Awaitable[None]]
#: Asks a local client session: ``ask(session_id, method, params) -> result``.
Ask = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


@attrs.define
class _Held:
    upstream: UpstreamServer
    scope: trio.CancelScope
    finished: trio.Event
    path: tuple[str, ...]
    last_used: float
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
    """Session connections at owning nodes and the return paths of their traffic (one per node)."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.node = federation.node
        self.log = federation.log
        self._throttled = ThrottledLog(self.log)
        self.deliver: Deliver | None = None
        self.ask_local: Ask | None = None
        self._held: dict[tuple[str, str], _Held] = {}
        self._opening: dict[tuple[str, str], trio.Event] = {}
        self._relay_send, self._relay_recv = trio.open_memory_channel[tuple[str, dict[str, Any]]](_RELAY_BUFFER)
        self.node.register_notification_handler(SESSION_EVENT, self._on_event, inline=True)
        self.node.register_handler(SESSION_REQUEST, self._on_request)
        self.node.register_notification_handler(SESSION_END, self._on_end, inline=True)

    # -- at the owning node ---------------------------------------------------------------------

    async def upstream_for(self, server_id: str, session: dict[str, Any], trace: tuple[str, ...],
                           timeout: float) -> UpstreamServer | None:
        """The session's own connection to ``server_id`` (opened on first use), or None to use the shared one."""
        from ._upstream import SessionHooks, UpstreamServer

        shared = self.federation.upstreams.get(server_id)
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
        capabilities = session.get("capabilities")
        client_info = session.get("clientInfo")
        hooks = SessionHooks(capabilities=capabilities if isinstance(capabilities, dict) else {},
                             client_info=client_info if isinstance(client_info, dict) else None,
                             notify=functools.partial(self._emit, key), ask=functools.partial(self._ask, key))
        upstream = UpstreamServer(shared.config, backoff=self.node.config.backoff, logger=self.log,
                                  on_catalog=lambda _catalog: None, session=hooks)
        held = _Held(upstream=upstream, scope=trio.CancelScope(), finished=trio.Event(), path=trace,
                     last_used=trio.current_time())
        self._held[key] = held
        self._opening[key] = opened = trio.Event()
        try:
            await self.node.nursery.start(self._run, key, held)
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

    async def _run(self, key: tuple[str, str], held: _Held, *,
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
            held.finished.set()
            if self._held.get(key) is held:
                del self._held[key]

    def close_server(self, server_id: str) -> None:
        """Close every session connection to ``server_id`` (it was removed)."""
        for key in [key for key in self._held if key[0] == server_id]:
            self._close(key, "server removed")

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
            self._relay_send.send_nowait((hop or "", outgoing))
        except trio.WouldBlock:
            self.log.warning("session.event_dropped", session=event["session"], method=event["method"])

    async def relay(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send session events on, one at a time and in order (local ones to the client). Runs until cancelled."""
        task_status.started()
        async for hop, event in self._relay_recv:
            with contextlib.suppress(FednodeError):
                if hop:
                    await self.node.notify(hop, SESSION_EVENT, event)
                elif self.deliver is not None:
                    await self.deliver(event["session"], event["method"], event["params"])

    def _on_event(self, params: Any, context: RequestContext) -> None:
        if not (isinstance(params, dict) and isinstance(params.get("session"), str)
                and isinstance(params.get("path"), list) and isinstance(params.get("method"), str)
                and isinstance(params.get("params"), dict)):
            return
        if not params["path"] and not params["session"].startswith(f"{self.node.id}/"):
            return  # not ours: a peer cannot make this node talk to another node's clients
        self._route_event(params)

    async def _route_request(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request["path"]
        if not path:
            if self.ask_local is None or not request["session"].startswith(f"{self.node.id}/"):
                raise MCPError(INTERNAL_ERROR, "no client session to ask")
            return await self.ask_local(request["session"], request["method"], request["params"])
        try:
            result = await self.node.request(path[-1], SESSION_REQUEST, {**request, "path": path[:-1]},
                                             timeout=self.node.config.mcp.request_timeout)
        except RemoteError as exc:
            raise MCPError(exc.code, exc.remote_message, exc.data) from None
        except FednodeError as exc:
            raise MCPError(INTERNAL_ERROR, f"the client could not be reached: {exc}") from None
        if not isinstance(result, dict):
            raise MCPError(INTERNAL_ERROR, "malformed answer from the client")
        return result

    async def _on_request(self, params: Any, context: RequestContext) -> Any:
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
        if origin == self.node.id:
            self._close((server, message["session"]), "client session ended")
            return
        hop = self.federation.next_hop(origin, server)
        if hop is not None:
            self.node.nursery.start_soon(self._notify_quietly, hop, message)

    async def _notify_quietly(self, hop: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(FednodeError):
            await self.node.notify(hop, SESSION_END, message)

    def _on_end(self, params: Any, context: RequestContext) -> None:
        # Harmless whoever sends it: it only closes a connection that reopens on the session's next use.
        if isinstance(params, dict) and all(isinstance(params.get(k), str) for k in ("session", "origin", "server")):
            self._route_end(params)
