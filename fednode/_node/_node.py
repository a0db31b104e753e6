"""The node: owns the root nursery, the listener and one supervisor per peer; the public API."""

from __future__ import annotations

import collections
import functools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
import trio

from .._config._auth import AuthManager
from .._config._config import NodeConfig, PeerConfig, ServerConfig
from .._config._signing import Keyring
from .._errors import (
    BindError,
    PeerUnavailableError,
    UnknownPeerError,
    reraise,
    sole_leaf,
)
from .._federation._audit import AuditLog
from .._federation._federation import Federation, new_routing_table
from .._federation._pins import Pinning
from .._federation._route_proof import RouteProofs
from .._mcp._attached import AttachedServers
from .._mcp._client_auth import ClientAuth
from .._mcp._edge import MCPEdge
from .._mcp._edge_http import ClientLimits
from .._mcp._forwarder import NOTICE_BUFFER, ClientCalls, FederationForwarder, Notice
from .._mcp._upstream import UpstreamServer
from .._peers import _wire as wire
from .._peers._handshake import Handshake
from .._peers._link import (
    Handlers,
    InlineHandler,
    LinkSettings,
    NotificationHandler,
    RequestContext,
    RequestHandler,
)
from .._peers._listener import Listener
from .._peers._registry import PeerRegistry
from .._peers._supervisor import PeerStatus, PeerSupervisor
from .._version import __version__
from ._metrics import CONTENT_TYPE, NodeMetrics
from ._pins import PinKeeper
from ._reload import ReloadResult as ReloadResult
from ._reload import reload_node
from ._status import node_status, status_routes

DEFAULT_REQUEST_TIMEOUT = 30.0

class Node:
    """A running fednode. Obtain one from :func:`open_node` or :func:`serve`; don't construct it directly.

    Attributes:
        config: the configuration the node was started with.
        id: this node's id.
        auth: the node's :class:`AuthManager`.
        handlers: the method table for requests and notifications from peers.
    """

    peers: PeerRegistry  # (the method table's admit reads it before it is assigned)

    def __init__(self, config: NodeConfig, nursery: trio.Nursery, *,
                 jitter: Callable[[float], float] | None = None) -> None:
        self.config = config
        self.id = config.id
        self.log = structlog.get_logger("fednode").bind(node=config.id)
        self.auth = AuthManager(config.id, config.auth)
        self.refused: collections.Counter[str] = collections.Counter()
        self.started_at = trio.current_time()
        self._nursery = nursery
        # What the peers layer is given instead of the node: its sections, and the node as the
        # small protocols it calls (a peer directory, a link-event sink, a refusal counter).
        self._handshake = Handshake(local_id=config.id, auth=self.auth, limits=config.link, tls=config.tls,
                                    count_refused=self.count_refused)
        self._link_settings = LinkSettings(heartbeat=config.heartbeat, limits=config.link,
                                           shutdown_grace=config.shutdown_grace)
        #: whether start-up is done: the configured peers and servers are registered
        self.started = False
        self.metrics = NodeMetrics(self)
        #: the audit log (``[audit]``): opened at start-up, reopened on reload
        self.audit = AuditLog(config.id, log=self.log, counted=self.metrics.observe_audit)
        self.handlers = Handlers(on_rtt=self.metrics.observe_rtt, admit=lambda peer_id: self.peers.admit(peer_id))
        self.peers = PeerRegistry(config.id, nursery, handshake=self._handshake, settings=self._link_settings,
                                  handlers=self.handlers, on_link=self._link_changed, auth=self.auth,
                                  backoff=config.backoff, shutdown_grace=config.shutdown_grace, log=self.log,
                                  jitter=jitter, on_limited=functools.partial(self.metrics.observe_limited, "peer"))
        self._listener = Listener(control=config.control, tls=config.tls, handshake=self._handshake,
                                  peers=self.peers, logger=self.log)
        self.register_handler("echo", _echo, inline=True)
        self.register_handler("node/info", self._node_info, inline=True)
        self.reload_count = 0
        self.last_reload: ReloadResult | None = None
        self._reload_lock = trio.Lock()
        # The layers, bottom up, each given what it uses. The routing table is shared: the
        # federation fills it, the attached servers' sessions look up next hops in it.
        # Route advertisements are signed and verified with the keys of the configuration in force.
        keyring = Keyring(config.id, auth=lambda: self.config.auth, peer=self.peers.peer_config,
                          nodes=lambda: self.config.nodes)
        table = new_routing_table(config.id, RouteProofs(config.id, keyring))
        # servers' notifications for this node's legacy sessions with no request in flight, to the edge
        notices, self._notices_received = trio.open_memory_channel[Notice](NOTICE_BUFFER)
        calls = ClientCalls(config.id, notices, self._request_timeout)
        #: the pinned tool and prompt definitions, kept in [node] state_dir (or in memory)
        self.pin_keeper = PinKeeper(config.state_dir, self.log)
        self.attached = AttachedServers(config.id, nursery, backoff=config.backoff, log=self.log, jitter=jitter,
                                        request=self.request, notify=self.notify, routes=table,
                                        request_timeout=self._request_timeout, client=calls)
        self.federation = Federation(config.id, self.log, peers=self.peers, local=self.attached, table=table,
                                     mcp=lambda: self.config.mcp, limits=config.link, request=self.request,
                                     notify=self.notify, observe=self.metrics.observe_forward,
                                     started=lambda: self.started, started_at=self.started_at,
                                     on_change=self._catalog_changed, refused=self.metrics.observe_refused,
                                     audit=self.audit)
        # Pinned definitions are checked by the catalog's rebuilds (none has run yet).
        self.federation.catalog.pins = Pinning(self.pin_keeper.store, config.id, self._pin_enabled)
        self.handlers.merge(self.federation.handlers)
        self.handlers.merge(self.attached.sessions.handlers)
        forwarder = FederationForwarder(self.federation, calls, self.attached.sessions.end, config.id,
                                        self._request_timeout)
        # Who HTTP clients are ([clients] tokens, [clients.oauth]); the default audience is {data}/mcp.
        auth = ClientAuth(config.id, config.clients, resource=lambda: self.mcp_url, log=self.log,
                          on_refused=self.metrics.observe_client_refused)
        self.edge = MCPEdge(forwarder, name=f"fednode {config.id}", version=__version__, logger=self.log,
                            auth=auth,
                            routes=[*status_routes(self.status, self.metrics.render, CONTENT_TYPE),
                                    *self.pin_keeper.routes(self.federation, lambda: self.config.clients.tokens)],
                            limits=ClientLimits(config.clients, self.metrics.observe_limited))
        self.data_port: int | None = None

    def _request_timeout(self) -> float:
        """``[mcp] request_timeout`` in force (read at each use: a reload may change it)."""
        return self.config.mcp.request_timeout

    # -- addresses --------------------------------------------------------------------------

    @property
    def control_url(self) -> str:
        """The control URL peers dial, with the real port when the config asked for port 0."""
        return _with_port(self.config.control, self._listener.port)

    @property
    def control_path(self) -> str:
        """The HTTP path of the control endpoint (``/`` unless the control URL names one)."""
        return urlsplit(self.config.control).path or "/"

    # -- peers ------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once the node has begun to shut down."""
        return self.peers.closing

    def has_peer(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is registered."""
        return self.peers.has_peer(peer_id)

    def supervisor(self, peer_id: str) -> PeerSupervisor | None:
        """The supervisor of a registered peer, if any."""
        return self.peers.supervisor(peer_id)

    def peer_config(self, peer_id: str) -> PeerConfig | None:
        """The configuration of a registered peer, if any."""
        return self.peers.peer_config(peer_id)

    def _link_changed(self, peer_id: str, up: bool) -> None:
        """A peer's link came up or started to go down (told by the peer registry)."""
        if up:
            self.federation.link_up(peer_id)
        else:
            self.federation.link_down(peer_id)

    async def register_peer(self, peer: PeerConfig, *, wait: bool = True, keep_retrying: bool = True) -> None:
        """Add a peer at runtime (or replace the registered peer with the same id).

        Args:
            peer: the peer to add.
            wait: when the peer has a control URL, return only once the first dial has succeeded.
            keep_retrying: if the first dial fails, keep the peer and its supervisor retrying with
                backoff (True), or remove it again (False). Either way the error is raised.

        Raises:
            PeerConnectError: ``wait`` was set and the first dial failed.
            ValueError: the peer has this node's own id.
        """
        await self.peers.register(peer, wait=wait, keep_retrying=keep_retrying)

    async def remove_peer(self, peer_id: str) -> None:
        """Remove a peer: close its link with a normal close frame and end its supervisor.

        Returns once the supervisor and its link have ended (bounded by ``shutdown_grace``).

        Raises:
            UnknownPeerError: no such peer is registered.
        """
        await self.peers.remove(peer_id)

    def peer_ids(self) -> list[str]:
        """Ids of the registered peers, sorted."""
        return self.peers.peer_ids()

    def connected_peers(self) -> list[str]:
        """Ids of the peers with a live link, sorted."""
        return self.peers.connected_peers()

    def peer_states(self) -> dict[str, PeerStatus]:
        """Each registered peer's state, last RTT, reconnect count and last error."""
        return self.peers.states()

    async def wait_connected(self, *peer_ids: str, timeout: float = 10.0) -> None:
        """Wait until every named peer (default: all registered) has a live link.

        Raises:
            trio.TooSlowError: not all of them connected within ``timeout``.
        """
        await self.peers.wait_connected(peer_ids, timeout)

    # -- attached MCP servers ---------------------------------------------------------------

    async def add_server(self, config: ServerConfig, *, wait: bool = True, timeout: float = 30.0,
                         server: Any = None) -> None:
        """Attach an MCP server (or replace the attached server with the same id).

        Its supervisor starts the process (or connects), reads its catalog and keeps it running,
        restarting with backoff. With ``wait``, return once it is up. For embedding, ``server`` may
        be an official-SDK server object (lowlevel ``Server`` or ``MCPServer``) run in this process
        (then ``config`` gives only the id, prefix and timeout).

        Raises:
            trio.TooSlowError: ``wait`` was set and the server was not up within ``timeout``
                (its supervisor keeps trying).
        """
        if config.id in self.attached.upstreams:
            await self.remove_server(config.id)
        upstream = await self.attached.add(config, server=server, on_state=self.federation.state_changed,
                                           on_catalog=functools.partial(self.federation.set_local_catalog, config.id))
        if wait:
            await upstream.wait_ready(timeout)

    async def remove_server(self, server_id: str) -> None:
        """Detach an MCP server: its process is terminated and its catalog withdrawn everywhere.

        Raises:
            KeyError: no server with that id is attached.
        """
        await self.attached.remove(server_id)  # its client sessions' and parked calls' connections too
        self.federation.set_local_catalog(server_id, None)
        self.log.info("server.removed", server=server_id)

    def servers(self) -> dict[str, UpstreamServer]:
        """The attached MCP servers by id (their supervisors: state, era, restarts, last error, catalog)."""
        return dict(sorted(self.attached.upstreams.items()))

    # -- requests ---------------------------------------------------------------------------

    def register_handler(self, method: str, handler: RequestHandler | InlineHandler, *, inline: bool = False) -> None:
        """Serve requests for ``method``: ``await handler(params, context)`` returns the result.

        The handler may raise :class:`~fednode.RequestError` to answer with a specific error.
        Each request runs in its own task, so slow handlers never stall the link. With
        ``inline=True`` the handler is a plain function called by the link's reader itself
        (cheaper, for answers computed at once, without I/O or waiting). Registering a method
        again replaces its handler.
        """
        self.handlers.requests.pop(method, None)
        self.handlers.inline.pop(method, None)
        if inline:
            self.handlers.inline[method] = handler
        else:
            self.handlers.requests[method] = handler

    def register_notification_handler(self, method: str, handler: NotificationHandler | InlineHandler, *,
                                      inline: bool = False) -> None:
        """Handle notifications for ``method``: ``await handler(params, context)``.

        With ``inline=True`` the handler is a plain function run by the link's reader, so a peer's
        notifications of that method are handled one at a time, in the order they were sent.
        """
        self.handlers.notifications.pop(method, None)
        self.handlers.inline_notifications.pop(method, None)
        if inline:
            self.handlers.inline_notifications[method] = handler  # type: ignore[assignment]
        else:
            self.handlers.notifications[method] = handler

    def _live_link(self, peer_id: str) -> Any:
        supervisor = self.peers.supervisor(peer_id)
        if supervisor is None:
            raise UnknownPeerError(peer_id, f"no peer {peer_id!r} is registered")
        link = supervisor.link
        if link is None or not link.is_up:
            detail = f"; last error: {supervisor.last_error}" if supervisor.last_error else ""
            raise PeerUnavailableError(
                peer_id, f"peer {peer_id!r} has no live link (state: {supervisor.state.value}{detail})")
        return link

    async def request(self, peer_id: str, method: str, params: Any = None, *,
                      timeout: float = DEFAULT_REQUEST_TIMEOUT) -> Any:
        """Send a request to a peer and return its result.

        Raises:
            UnknownPeerError: the peer is not registered.
            PeerUnavailableError: the peer has no live link right now.
            LinkClosedError: the link closed before the answer (raised at once).
            RequestTimeoutError: no answer within ``timeout`` seconds.
            RemoteError: the peer answered with an error.
            MessageTooLargeError: the request exceeds ``max_message_size``.
        """
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return await self._live_link(peer_id).request(method, params, timeout=timeout)

    async def notify(self, peer_id: str, method: str, params: Any = None) -> None:
        """Send a notification to a peer (no answer).

        Raises:
            UnknownPeerError, PeerUnavailableError, LinkClosedError, MessageTooLargeError.
        """
        await self._live_link(peer_id).notify(method, params)

    def _node_info(self, params: Any, context: RequestContext) -> dict[str, Any]:
        return {
            "id": self.id,
            "software": "fednode",
            "version": __version__,
            "protocol": wire.PROTOCOL_VERSION,
            "peers": self.connected_peers(),
            "uptime": round(trio.current_time() - self.started_at, 3),
        }

    # -- bookkeeping ------------------------------------------------------------------------

    def _catalog_changed(self, kinds: set[str]) -> None:
        # Only ever called after __init__ (changes come from servers and peers added later).
        # Extensions the attached servers support (anywhere) are advertised to clients as ours.
        self.edge.catalog_changed(kinds - {"extensions"}, self.federation.extensions)

    def _pin_enabled(self, via: str | None, server: str) -> bool:
        """Whether the definitions of ``server`` reached through peer ``via`` (None: attached here) are
        pinned: the ``pin`` of that peer, or of that server (read at each check: a reload may change it)."""
        if via is None:
            upstream = self.attached.upstreams.get(server)
            return upstream is None or upstream.config.pin
        peer = self.peers.peer_config(via)
        return peer is None or peer.pin

    def count_refused(self, reason: str) -> None:
        """Count one refused authentication by reason (shown by the metrics)."""
        self.refused[reason] += 1

    # -- status, metrics, reload ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document served at ``{data}/status`` (see the README)."""
        return node_status(self)

    def in_flight(self) -> int:
        """Forwarded MCP requests being executed or passed on by this node right now."""
        return self.federation.in_flight + self.peers.passing_on()

    async def reload(self, source: NodeConfig | str | os.PathLike[str]) -> ReloadResult:
        """Apply a new configuration (or re-read a file) without a restart.

        Peers and servers added, removed or changed (compared with the configuration in use) are
        registered, removed or re-registered / restarted one at a time; unchanged ones keep their
        links and processes. ``[auth]``, ``[mcp]`` and ``[clients]`` apply at once (to new links,
        requests and clients). The other sections take effect at the next start and are listed in
        ``restart_needed``. A configuration that does not load, or names another node id, is
        refused and the running one stays. The outcome is logged and shown by status and metrics.
        """
        async with self._reload_lock:
            result = await reload_node(self, source)
            self.reload_count += 1
            self.last_reload = result
            self.metrics.reloads.labels("ok" if result.ok else "refused").inc()
            return result

    @property
    def data_url(self) -> str:
        """The data URL (MCP clients at ``{data_url}/mcp``), with the real port once serving."""
        # The edge serves /mcp and /healthz at the root whatever path the configured URL has.
        return _with_port(self.config.data, self.data_port, keep_path=False)

    @property
    def mcp_url(self) -> str:
        """Where MCP clients connect over Streamable HTTP."""
        return self.data_url + "/mcp"

    async def serve_mcp_stdio(self) -> None:
        """Serve one MCP client on this process's stdin/stdout until end of input (``fednode mcp``)."""
        await self.edge.serve_stdio()

    async def _start(self) -> None:
        self.audit.open(self.config.audit.path)  # a path that cannot be opened stops the start here
        await self._nursery.start(self.audit.run)
        await self._nursery.start(self.federation.exchange_routes)
        await self._nursery.start(self.attached.sessions.relay)
        await self._nursery.start(self.edge.relay_notices, self._notices_received)
        await self._nursery.start(self.edge.announce_changes)
        await self._nursery.start(self.federation.refresh)
        await self._nursery.start(self.pin_keeper.keep_saved)
        # Peers first: a configured peer dialing in the moment the listener opens must find its
        # supervisor (and its key) in place, not be refused as an unknown issuer.
        for peer in self.config.peers:
            await self.register_peer(peer, wait=False)
        await self._start_server("control", self.config.control, self._listener.serve)
        parts = urlsplit(self.config.data)
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        tls = self.config.tls if parts.scheme == "https" else None
        self.data_port = await self._start_server("data", self.config.data, functools.partial(
            self.edge.serve_http, parts.hostname or "127.0.0.1", port,
            certfile=str(tls.cert) if tls and tls.cert else None, keyfile=str(tls.key) if tls and tls.key else None))
        self.log.info("node.started", control=self.control_url, peers=len(self.config.peers),
                      version=__version__)
        for server in self.config.servers:
            await self.add_server(server, wait=False)
        self.started = True
        self.federation.state_changed()

    async def _start_server(self, role: str, url: str, server: Callable[..., Awaitable[None]]) -> int:
        """Start a listening task in the node's nursery; return the port it bound."""
        return await start_listening(self._nursery, role, url, server)

    async def _shutdown(self) -> None:
        """Close every link gracefully (bounded by ``shutdown_grace``), then cancel all node tasks."""
        with trio.CancelScope(shield=True):
            if not self.peers.closing:
                started = trio.current_time()
                self.log.info("node.shutdown", peers=len(self.peers.peer_ids()), grace=self.config.shutdown_grace)
                await self.peers.close("node shutting down")
                await self.pin_keeper.save()  # pins made in the last moments too
                self.pin_keeper.close()
                self._nursery.cancel_scope.cancel()
                self.log.info("node.stopped", seconds=round(trio.current_time() - started, 3))


async def start_listening(nursery: trio.Nursery, role: str, url: str, server: Callable[..., Awaitable[None]]) -> int:
    """Start a listening task (``role`` at ``url``) in ``nursery``; return the port it bound.

    Raises:
        BindError: it could not listen on ``url`` (the servers report that from inside nested
            nurseries; the operating system's error is the one cause).
    """
    try:
        port: int = await nursery.start(server)
    except BaseException as exc:
        cause = sole_leaf(exc)
        if isinstance(cause, OSError):
            raise BindError(role, url, cause) from cause
        raise
    return port


def _with_port(url: str, port: int | None, *, keep_path: bool = True) -> str:
    """``url`` with the port actually bound (the configured one may be 0); unchanged before binding."""
    if port is None:
        return url
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path if keep_path else "", "", ""))


def _echo(params: Any, context: RequestContext) -> Any:
    return params


@asynccontextmanager
async def open_node(config: NodeConfig, *, jitter: Callable[[float], float] | None = None) -> AsyncIterator[Node]:
    """Run a node inside the caller's Trio program for the duration of the ``async with`` block.

    The listener is bound and every configured peer's supervisor started before the block begins
    (links come up in the background; see :meth:`Node.wait_connected`). Leaving the block, by any
    route including cancellation, closes every link with a normal close frame, waiting at most
    ``shutdown_grace`` for the peers to answer, then cancels everything the node started.

    Args:
        config: the node's configuration (see :func:`fednode.load_config`).
        jitter: backoff jitter function, for tests; default full jitter.

    Exceptions raised in the block, or while starting, reach the caller as they were raised: not
    wrapped in an exception group (the nursery that holds the node's tasks is an implementation detail).

    Raises:
        BindError: the control or data address cannot be listened on (e.g. it is in use).
    """
    try:
        async with trio.open_nursery() as outer:
            # The node's tasks live in a shielded scope so that cancelling the caller does not tear
            # the links down mid-frame: the finally below closes them properly, then cancels them.
            node: Node = await outer.start(_run_node_tasks, config, jitter)
            try:
                await node._start()
                yield node
            finally:
                await node._shutdown()
    except BaseExceptionGroup as group:
        # The only other task in this nursery ends without error once _shutdown cancels it, so the
        # group normally holds one exception: the block's or the start's. Several stay a group.
        if len(group.exceptions) == 1:
            reraise(group.exceptions[0])
        raise


async def _run_node_tasks(config: NodeConfig, jitter: Callable[[float], float] | None, *,
                          task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    node: Node | None = None
    try:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                node = Node(config, nursery, jitter=jitter)
                task_status.started(node)
                await trio.sleep_forever()  # until Node._shutdown cancels this nursery
    finally:
        if node is not None:
            node.audit.close()  # the lines of requests that ended while the node stopped, too


async def serve(config: NodeConfig, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled; ``node = await nursery.start(fednode.serve, config)``."""
    async with open_node(config) as node:
        task_status.started(node)
        await trio.sleep_forever()
