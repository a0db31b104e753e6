"""The MCP servers attached to this node: one supervisor task each, and how requests reach them.

:class:`AttachedServers` is what the federation layer knows as
:class:`~fednode._federation._local.LocalServers`. Each server runs as one task in the nursery it
is given, under a cancel scope of its own; the extra connections opened to it for legacy client
sessions (:mod:`._sessions`) and for parked calls (:mod:`._parking`) run under that same scope
(``UpstreamServer.start_extra``), so removing a server cancels one scope and nothing else needs
closing.

Task tree (one per attached server)::

    nursery (the node's)
    └── server <id>            cancel scope: removing the server cancels everything below
        ├── its process or HTTP connection, catalog reader, pings
        ├── per-session connections (legacy clients' sessions)
        └── per-call connections (parked calls)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import trio

from .._config._config import MAX_REQUEST_TIMEOUT, BackoffConfig, ServerConfig
from .._errors import (
    DEADLINE_EXCEEDED,
    SERVER_UNAVAILABLE,
    FednodeError,
    ForwardError,
    ServerUnavailableError,
    UpstreamError,
)
from .._federation._forwarding import MODERN_ERA, PROTOCOL_VERSION_KEY
from .._federation._local import LocalRoute, ProgressFn
from .._peers._shares import LOCAL
from ._parking import Parking
from ._sessions import ClientSessions, NextHops, Notify, Request, Sessions
from ._upstream import STARTING, ServerCatalog, UpstreamServer

#: Methods a modern (stateless) client may be asked questions during, by a legacy server.
_PARKABLE = ("tools/call", "prompts/get", "resources/read")


class AttachedServers:
    """The servers attached to one node, their supervisors, and the client sessions' connections to them.

    Args:
        node_id: this node's id.
        nursery: where each server's supervisor task runs.
        backoff: the ``[backoff]`` section (restarts).
        log: the node's logger.
        jitter: backoff jitter (tests); default full jitter.
        request: sends a request to a peer (a session's questions on the way back to its client).
        notify: sends a notification to a peer (session events and ends).
        routes: next hops towards other nodes' servers (a session's end travels there).
        request_timeout: ``[mcp] request_timeout`` in force, read at each use.
        client: this node's own legacy client sessions (their notifications and questions).
    """

    def __init__(self, node_id: str, nursery: trio.Nursery, *, backoff: BackoffConfig, log: Any,
                 jitter: Callable[[float], float] | None, request: Request, notify: Notify, routes: NextHops,
                 request_timeout: Callable[[], float], client: ClientSessions) -> None:
        self._node_id = node_id
        self._nursery = nursery
        self._backoff = backoff
        self._log = log
        self._jitter = jitter
        #: the servers by id (their supervisors: state, era, restarts, last error, catalog)
        self.upstreams: dict[str, UpstreamServer] = {}
        self._scopes: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        #: legacy client sessions' own connections here, and the way back to their clients
        self.sessions = Sessions(node_id, self.upstreams, request=request, notify=notify, routes=routes,
                                 request_timeout=request_timeout, log=log, client=client)
        #: calls of modern clients to legacy servers that may be asked questions
        self.parking = Parking(node_id)

    async def add(self, config: ServerConfig, *, on_catalog: Callable[[ServerCatalog | None], None],
                  on_state: Callable[[], None], server: Any = None) -> UpstreamServer:
        """Start a server's supervisor (the caller removes one with the same id first); return it.

        ``on_catalog`` gets each catalog it reads (None: gone), ``on_state`` each change of state.
        """
        upstream = UpstreamServer(config, backoff=self._backoff, logger=self._log, server=server,
                                  jitter=self._jitter, on_state=on_state, on_catalog=on_catalog)
        scope, finished = trio.CancelScope(), trio.Event()
        self.upstreams[config.id] = upstream
        self._scopes[config.id] = (scope, finished)
        await self._nursery.start(self._run, upstream, scope, finished)
        return upstream

    async def _run(self, upstream: UpstreamServer, scope: trio.CancelScope, finished: trio.Event, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await upstream.run(task_status=task_status)
        finally:
            finished.set()

    async def remove(self, server_id: str) -> None:
        """Stop a server: its process, and its sessions' and parked calls' connections, end.

        Raises:
            KeyError: no server with that id is attached.
        """
        scope, finished = self._scopes.pop(server_id)
        del self.upstreams[server_id]
        scope.cancel()
        with trio.CancelScope(shield=True):
            await finished.wait()

    # -- what the federation reads (LocalServers) -------------------------------------------------

    def ids(self) -> Collection[str]:
        return self.upstreams.keys()

    def retune(self, config: ServerConfig) -> None:
        """Use ``config`` for an attached server whose ``callers`` alone changed (it keeps running)."""
        upstream = self.upstreams.get(config.id)
        if upstream is not None:
            upstream.config = config

    def route_of(self, server_id: str) -> LocalRoute | None:
        upstream = self.upstreams.get(server_id)
        if upstream is None:
            return None
        capabilities = (upstream.server_info or {}).get("capabilities")
        found = capabilities.get("extensions") if isinstance(capabilities, dict) else None
        timeout = upstream.config.timeout
        return LocalRoute(prefix=upstream.config.exposed_prefix, extensions=found if isinstance(found, dict) else {},
                          timeout=min(timeout, MAX_REQUEST_TIMEOUT) if timeout is not None else None,
                          callers=upstream.config.caller_rules)

    def starting(self) -> list[str]:
        return sorted(server_id for server_id, upstream in self.upstreams.items()
                      if upstream.state == STARTING and upstream.restarts == 0)

    async def call(self, server_id: str, method: str, params: dict[str, Any], *, timeout: float,
                   progress: ProgressFn | None, session: dict[str, Any] | None,
                   trace: tuple[str, ...], source: str = LOCAL) -> dict[str, Any]:
        """Run one request on ``server_id``; errors become :class:`ForwardError` with the caller's code.

        ``source`` (the peer the request came from) is charged with any connection opened for it.
        """
        upstream = self.upstreams.get(server_id)
        if upstream is None:
            raise ForwardError(SERVER_UNAVAILABLE, f"Server {server_id!r} is not attached to node {self._node_id!r}")
        if upstream.config.timeout is not None:
            timeout = min(timeout, upstream.config.timeout)
        try:
            if session is not None:
                # A legacy client session gets its own connection: its log level, subscriptions and
                # the server's messages for it stay its own.
                try:
                    own = await self.sessions.upstream_for(server_id, session, trace, timeout, source)
                except trio.TooSlowError:
                    raise ForwardError(DEADLINE_EXCEEDED,
                                       f"Deadline exceeded while server {server_id!r} opened a session") from None
                if own is not None:
                    upstream = own
                    await self.sessions.apply_level(server_id, session, upstream)
            meta = params.get("_meta")
            client_era = meta.get(PROTOCOL_VERSION_KEY) if isinstance(meta, dict) else None
            if session is None and client_era == MODERN_ERA and upstream.era != MODERN_ERA and method in _PARKABLE:
                # A legacy server may ask this stateless client questions: park the call (see _parking).
                return await self.parking.call(server_id, upstream, method, params, timeout, progress, source)
            return await upstream.call(method, params, timeout=timeout, on_progress=progress)
        except UpstreamError as exc:
            raise ForwardError(exc.code, exc.message, exc.data) from None
        except ServerUnavailableError as exc:
            raise ForwardError(SERVER_UNAVAILABLE, f"Server {server_id!r} is down: {exc}") from None
        except ForwardError:  # already carries the code the client should see (parked calls)
            raise
        except FednodeError as exc:  # the upstream's own timeout, and the like
            code = DEADLINE_EXCEEDED if "timeout" in type(exc).__name__.lower() else SERVER_UNAVAILABLE
            raise ForwardError(code, f"Server {server_id!r}: {exc}") from None
