"""The federated catalog of one node: routing, catalog, advertising and forwarding, wired together.

Every node advertises to each peer one *route* per attached MCP server it can reach: the server's
catalog (raw definitions), the prefix its owner chose, and the path of node ids the advertisement
travelled (owner first). A node never accepts a route whose path contains its own id. After the
first full exchange on a link, only differences travel; when a link goes down, every route learned
over it is dropped at once and the change propagates as withdrawals, so convergence never waits
for a periodic re-sync.

The parts, each in its own module: the routing table (:mod:`fednode._federation._routing`, no I/O: policy,
limits, best routes, deltas), the exposed catalog with its name conflicts (:mod:`fednode._federation._catalog`),
the advertiser sending each peer its delta (:mod:`fednode._federation._advertiser`), and forwarding requests
hop by hop to the owning node (:mod:`fednode._federation._forwarding`). :class:`Federation` feeds them what
the node sees (links up and down, frames from peers, attached servers' catalogs) and keeps the
start-up hold (clients' first lists wait until the federation has settled).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from .._config._callers import EVERYBODY, Caller
from .._config._config import LinkConfig, MCPConfig, PeerConfig
from .._config._logging import ThrottledLog
from .._config._memory import MemoryTrimmer
from .._peers._link import Handlers, Link, RequestContext
from .._peers._supervisor import PeerSupervisor
from ._advertiser import ROUTES_METHOD, Advertiser
from ._audit import AuditLog
from ._caller_proof import CallerStatements
from ._catalog import Catalog, Entry
from ._forwarding import (
    CLIENT_CAPABILITIES_KEY,
    FORWARD_METHOD,
    MAX_TASKS,
    MODERN_ERA,
    PROGRESS_METHOD,
    PROTOCOL_VERSION_KEY,
    TASK_METHODS,
    TASKS_EXTENSION,
    Forwarding,
)
from ._local import LocalServers, ProgressFn, ServerCatalogLike
from ._name_policy import NamePolicy
from ._pacer import Pacer
from ._route_intake import RouteIntake
from ._route_proof import ROUTE_TTL, Proof, RouteProofs
from ._routes import (
    KINDS,
    MAX_CATALOG_BYTES_PER_PEER,
    MAX_ITEMS_PER_PEER,
    MAX_PATH,
    MAX_ROUTES_PER_PEER,
    Advertisement,
    Key,
    Limits,
    Path,
    Route,
    catalog_digest,
    valid_items,
)
from ._routing import RoutingTable
from ._withdrawn import WithdrawnNames

__all__ = [
    "CLIENT_CAPABILITIES_KEY", "FORWARD_METHOD", "KINDS",
    "MAX_CATALOG_BYTES_PER_PEER", "MAX_ITEMS_PER_PEER", "MAX_PATH", "MAX_ROUTES_PER_PEER", "MAX_TASKS",
    "MODERN_ERA", "PROGRESS_METHOD", "PROTOCOL_VERSION_KEY",
    "ROUTES_METHOD", "TASKS_EXTENSION", "TASK_METHODS", "Entry", "Federation",
    "Peers", "ProgressFn", "Route", "catalog_digest", "new_routing_table", "valid_items",
]

_CATALOG_FIELDS = {"tools": "tools", "prompts": "prompts", "resources": "resources",
                   "resourceTemplates": "resource_templates"}


def unverified(log: ThrottledLog, entry: str, reason: str) -> None:
    """Log a caller statement not believed for want of the entry node's key (a configuration gap)."""
    log.warning("caller.unverified", key=entry, entry=entry, reason=reason,
                hint="configure that node's key in [[nodes]] to believe what it says of its callers")


class Peers(Protocol):
    """The node's peers, as the federation sees them (the node satisfies this)."""

    def peer_ids(self) -> list[str]:
        """Every registered peer."""

    def connected_peers(self) -> list[str]:
        """The peers linked now."""

    def peer_config(self, peer_id: str) -> PeerConfig | None:
        """A registered peer's configuration (its policy), if it is registered."""

    def supervisor(self, peer_id: str) -> PeerSupervisor | None:
        """A registered peer's supervisor (where its live link is), if any."""


def new_routing_table(node_id: str, proofs: RouteProofs | None = None) -> RoutingTable:
    """A routing table for ``node_id`` with the limits of this module (tests lower them here).

    Args:
        proofs: signs this node's advertisements and verifies peers' (None: routes are neither
            signed nor verified; for tests of the parts alone).
    """
    return RoutingTable(node_id, Limits(routes=MAX_ROUTES_PER_PEER, items=MAX_ITEMS_PER_PEER,
                                        bytes=MAX_CATALOG_BYTES_PER_PEER), proofs)


class Federation:
    """Catalog, routing and forwarding for one node, built by the node from what it uses (no back-reference).

    Args:
        node_id: this node's id.
        log: the node's logger.
        peers: the node's peers (see :class:`Peers`).
        local: the MCP servers attached to this node (see :class:`~._local.LocalServers`).
        table: the routing table (:func:`new_routing_table`); the node shares it with the parts
            that look up next hops.
        mcp: gives the ``[mcp]`` section in force (called each time: reloads replace it).
        limits: the ``[link]`` section (``max_message_size``, ``max_inflight``).
        request: ``await request(peer_id, method, params, timeout=...)`` sends a peer a request.
        notify: ``await notify(peer_id, method, params)`` sends a peer a notification.
        observe: records each forwarded request's outcome (the node's metrics).
        refused: records each request refused for lack of a fair share (the node's metrics).
        started: whether the node's start-up is done (its configured peers and servers registered).
        started_at: when the node started (trio clock), for the ``first_list_wait`` bound.
        on_change: called with the kinds that changed (``tools``, ..., ``extensions``) whenever the
            exposed catalog changes; it must return at once (it runs inside the change).
        audit: the node's audit log (see :mod:`fednode._federation._audit`).

    The methods peers call on this node are in :attr:`handlers`, for the node to serve.
    """

    def __init__(self, node_id: str, log: Any, *, peers: Peers, local: LocalServers, table: RoutingTable,
                 mcp: Callable[[], MCPConfig], limits: LinkConfig,
                 request: Callable[..., Awaitable[Any]], notify: Callable[[str, str, Any], Awaitable[None]],
                 observe: Callable[..., None], started: Callable[[], bool], started_at: float,
                 on_change: Callable[[set[str]], None] = lambda kinds: None,
                 refused: Callable[[str, str, str], None] | None = None, audit: AuditLog | None = None) -> None:
        self.id = node_id
        self.log = log
        self._peers = peers
        self._mcp = mcp
        self._started = started
        self._started_at = started_at
        self._on_change = on_change
        self._send_notification = notify
        # for lines a peer can cause at will (what it advertises), and repeated ones
        self._throttled = ThrottledLog(self.log)
        self._local = local
        self._local_kinds: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {}  # validated, by kind
        self.extensions: dict[str, Any] = {}
        self.table = table
        #: route proofs (the table's): this node's signatures and the versions it verified (None: unsigned)
        self.proofs = table.proofs
        #: routes refused because their origin or path could not be verified, by reason
        self.routes_refused: collections.Counter[str] = collections.Counter()
        # names that left the catalog because every route to their server went: answered with the
        # unreachable error for a while instead of "unknown" (see _withdrawn)
        self.catalog = Catalog(node_id, self.log, WithdrawnNames())
        # Route updates from peers are merged and applied at a bounded rate (see _route_intake).
        self.intake = RouteIntake(self._apply_routes, known=lambda peer_id: self.table.learned.get(peer_id, {}),
                                  limits=self.table.limits, log=self.log)
        #: tool-level export/import rules applied to routes (see _name_policy)
        self.names = NamePolicy(node_id, peers.peer_config, self.log)
        self.advertiser = Advertiser(self.table, connected_peers=peers.connected_peers, policy_for=peers.peer_config,
                                     node_transit=lambda: mcp().transit, notify=self._notify,
                                     max_message_size=limits.max_message_size, log=self.log,
                                     attest=self._attest if self.proofs is not None else None, names=self.names)
        #: gives the memory of routes that went back to the system
        self.trimmer = MemoryTrimmer()
        self._catalog_event = trio.Event()
        # Start-up: set once the federation has settled (or the bound passed); until then clients'
        # lists are held (wait_settled). Pulsed by everything that can settle it.
        self._settled = False
        # route updates applied to the routing table whose catalog rebuild has not finished yet
        self._rebuilds_due = 0
        self._settle_changed = trio.Event()
        self.forwarding = Forwarding(
            node_id, self.table, self.catalog, local,
            request=request, notify=notify, link_to=self._link_to, offered_path=self._offered_path,
            request_timeout=lambda: mcp().request_timeout, max_inflight=limits.max_inflight,
            observe=observe, is_settled=lambda: self._settled, wait_settled=self.wait_settled,
            health_changed=self._changed, log=self.log, on_refused=refused, item_offered=self.names.item_offered,
            audit=audit,
            statements=None if self.proofs is None else CallerStatements(
                node_id, self.proofs.keyring, on_unverified=functools.partial(unverified, self._throttled),
                trust=lambda peer_id: getattr(peers.peer_config(peer_id), "callers", None)))
        #: the methods peers call on this node, for the node to serve (see :meth:`Handlers.merge`)
        self.handlers = Handlers(
            requests={FORWARD_METHOD: self.forwarding.on_forward},
            transit={FORWARD_METHOD: self.forwarding.transit},
            inline_notifications={ROUTES_METHOD: self._on_routes, PROGRESS_METHOD: self.forwarding.on_progress})

    # -- views --------------------------------------------------------------------------------

    @property
    def learned(self) -> dict[str, dict[Key, Route]]:
        """Per peer: the routes accepted from it."""
        return self.table.learned

    @property
    def entries(self) -> dict[str, dict[str, Entry]]:
        """Per kind: the exposed entries by exposed name."""
        return self.catalog.entries

    @property
    def conflicts(self) -> list[str]:
        """The name conflicts of the exposed catalog, one line each."""
        return self.catalog.conflicts

    @property
    def withdrawn(self) -> WithdrawnNames:
        """Names withdrawn recently with their server's last route."""
        return self.catalog.withdrawn

    @property
    def in_flight(self) -> int:
        """Client and peer requests being executed here (passed-on ones: see Link)."""
        return self.forwarding.in_flight

    @property
    def session_used(self) -> dict[str, set[Key]]:
        """Per local client session: the (origin, server) pairs its requests went to."""
        return self.forwarding.session_used

    # -- inputs -----------------------------------------------------------------------------

    def set_local_catalog(self, server_id: str, catalog: ServerCatalogLike | None) -> None:
        """Record (or with None, forget) the catalog of a server attached to this node.

        Definitions a client could not accept are left out (and logged).
        """
        if catalog is None:
            self._local_kinds.pop(server_id, None)
        else:
            kinds: dict[str, tuple[dict[str, Any], ...]] = {}
            problems: list[str] = []
            for kind, field in _CATALOG_FIELDS.items():
                kinds[kind], found = valid_items(kind, getattr(catalog, field))
                problems += found
            if problems:
                self.log.warning("catalog.invalid_items", server=server_id, dropped=len(problems),
                                 problems=problems[:5])
            self._local_kinds[server_id] = kinds
        self._changed()

    def link_up(self, peer_id: str) -> None:
        """A link to ``peer_id`` came up: send it everything (a full advertisement)."""
        self.table.link_up(peer_id)
        self.forwarding.shares.set_peers(self._peers.connected_peers())
        self.advertiser.changed()
        self.state_changed()

    async def exchange_routes(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send each peer what changed (:attr:`advertiser`) and apply what peers send (:attr:`intake`).

        Runs until cancelled.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.advertiser.run)
            await nursery.start(self.intake.run)
            await nursery.start(self.trimmer.run)
            task_status.started()

    def link_down(self, peer_id: str) -> None:
        """The link to ``peer_id`` is gone: drop every route learned over it, and its pending updates, now."""
        self.intake.drop(peer_id)
        self.names.forget(peer_id)
        self.forwarding.shares.set_peers([p for p in self._peers.connected_peers() if p != peer_id])
        if self.table.link_down(peer_id):
            self._changed()
            self.trimmer.soon()  # what the peer's routes held goes back to the system

    def state_changed(self) -> None:
        """Something that decides whether the federation has settled changed (see :meth:`wait_settled`)."""
        self._settle_changed.set()
        self._settle_changed = trio.Event()

    def settled(self) -> bool:
        """Whether everything expected at start-up has shown up in the catalog.

        That is: the node has attached its configured servers and each attached server has finished
        its first start attempt (up, or failed), and every peer this node dials (or that is linked
        now) is linked and has sent its first full advertisement. Peers that only dial in are not
        waited for: they may never come.
        """
        return not self._unsettled()

    def _unsettled(self) -> list[str]:
        """What :meth:`settled` is still waiting for (empty: nothing)."""
        if not self._started():
            return ["node start-up"]
        waiting = [f"server {server_id}" for server_id in self._local.starting()]
        if self._rebuilds_due:
            waiting.append("catalog rebuild")
        connected = set(self._peers.connected_peers())
        for peer_id in self._peers.peer_ids():
            peer = self._peers.peer_config(peer_id)
            expected = peer_id in connected or (peer is not None and peer.control is not None)
            if expected and (peer_id not in connected or peer_id not in self.table.learned):
                waiting.append(f"peer {peer_id}")
        return waiting

    async def wait_settled(self) -> None:
        """Return once the federation has settled (:meth:`settled`), or ``[mcp] first_list_wait``
        after the node started, whichever comes first; at once ever after.

        Clients' lists wait for this, so one asking right after start-up never gets an empty or
        partial catalog (peers still linking, servers still starting) for the federation's.
        """
        if self._settled:
            return
        with trio.move_on_at(self._started_at + self._mcp().first_list_wait) as bound:
            while not self.settled():
                await self._settle_changed.wait()
        if not self._settled and bound.cancelled_caught:
            self.log.warning("catalog.not_settled", waited=self._mcp().first_list_wait,
                             missing=self._unsettled()[:10])
        self._settled = True

    def _on_routes(self, params: Any, context: RequestContext) -> None:
        peer_id = context.peer_id
        policy = self._peers.peer_config(peer_id)
        if not isinstance(params, dict) or policy is None:
            return
        try:
            advertisement = Advertisement.from_wire(params)
        except (ValueError, TypeError) as exc:
            self.routes_refused["malformed"] += 1
            self._throttled.warning("routes.malformed", key=peer_id, peer=peer_id, error=str(exc))
            return
        # Merged with what is pending from the peer; applied by the intake's task (_apply_routes).
        for key, why in self.intake.offer(peer_id, advertisement):
            self._throttled.warning("routes.limit", key=peer_id, peer=peer_id, limit=why, dropped=list(key))

    async def _apply_routes(self, peer_id: str, advertisement: Advertisement, pacer: Pacer) -> None:
        """Apply a peer's (merged) route updates to the routing table (called by :attr:`intake`),
        a route at a time, letting other tasks run in between (``pacer``)."""
        policy = self._peers.peer_config(peer_id)
        if policy is None:
            return
        received = await pacer.drive(self.table.receiving(peer_id, policy, advertisement))
        for (origin, server), reason, detail in received.unverified:
            self.routes_refused[reason.value] += 1
            # Keyed by reason only: a peer cannot widen the set of keys (and with it the lines).
            self._throttled.warning("routes.refused", key=reason.value, peer=peer_id, origin=origin[:64],
                                    server=server[:64], reason=reason.value, detail=detail[:300])
        for (origin, server), reason, _detail in received.vouched:
            self._throttled.info("routes.vouched", key=peer_id, peer=peer_id, origin=origin[:64],
                                 server=server[:64], reason=reason.value)
        for route, problems in received.invalid:
            self._throttled.warning("routes.invalid_items", key=peer_id, peer=peer_id, origin=route.origin,
                                    server=route.server, dropped=len(problems), problems=list(problems[:5]))
        for key, why in received.refused:
            self._throttled.warning("routes.limit", key=peer_id, peer=peer_id, limit=why, dropped=list(key))
        if received.applied:
            # Start-up is not settled while routes learned are not in the catalog yet (see _unsettled).
            self._rebuilds_due += 1
            try:
                await self._changed_paced(pacer)
            finally:
                self._rebuilds_due -= 1
                self.state_changed()
            if advertisement.withdrawn or advertisement.full or advertisement.revoked:
                self.trimmer.soon()  # routes went (or were replaced): what they held goes back

    # -- routing state ----------------------------------------------------------------------

    def _local_routes(self) -> dict[Key, Route]:
        routes = {}
        for server_id, kinds in self._local_kinds.items():
            local = self._local.route_of(server_id)
            prefix = local.prefix if local is not None else server_id
            extensions = dict(local.extensions) if local is not None else {}
            timeout = local.timeout if local is not None else None
            callers = local.callers if local is not None else EVERYBODY
            digest = catalog_digest({**kinds, "extensions": extensions, "timeout": timeout,
                                     "callers": callers.to_wire()})
            route = Route(origin=self.id, server=server_id, prefix=prefix, path=(self.id,), digest=digest,
                          catalog=kinds, extensions=extensions, timeout=timeout, callers=callers)
            # Signed with one version for the full catalog and the trimmed ones peers' exports are offered.
            routes[(self.id, server_id)] = self.names.signed(route, self.proofs, self._peers.peer_ids())
        if self.proofs is not None:
            self.proofs.keep_local(self._local_kinds)
        return routes

    def _attest(self, route: Route, path: Path, peer_id: str) -> Proof:
        """The proof ``route`` carries to ``peer_id`` along ``path``: with this node's attestation."""
        assert self.proofs is not None
        return self.proofs.attest(route.origin, route.server, route.prefix, route.digest, route.proof, path, peer_id)

    async def refresh(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-sign this node's advertisements before they expire, and stop using expired ones learned
        from peers (and forget their versions). Runs until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(ROUTE_TTL / 8)
            if self.proofs is not None:
                self.proofs.prune()
            self._changed()

    def _link_to(self, peer_id: str) -> Link | None:
        supervisor = self._peers.supervisor(peer_id)
        return supervisor.link if supervisor is not None else None

    def _rtts(self) -> dict[str, float]:
        """The measured round-trip time to each peer routes were learned from (those without one are left out)."""
        rtts = {}
        for peer_id in self.table.learned:
            link = self._link_to(peer_id)
            if link is not None and link.rtt is not None:
                rtts[peer_id] = link.rtt
        return rtts

    def _offered_path(self, peer_id: str, key: Key) -> Path | None:
        policy = self._peers.peer_config(peer_id)
        if policy is None:
            return None
        path = self.table.offered_path(peer_id, policy, key, node_transit=self._mcp().transit)
        return None if path is None else self.names.offered_path(peer_id, policy, path, self.table.best[key])

    async def _notify(self, peer_id: str, method: str, params: Any) -> None:
        await self._send_notification(peer_id, method, params)

    def best_routes(self) -> dict[Key, tuple[Route, str | None]]:
        """For each (origin, server): the best route and the peer it goes through (None = local)."""
        return self.table.best_routes(self._local_routes(), self._rtts(), trio.current_time())

    def local_changed(self) -> None:
        """Something local that routes or the catalog depend on changed (an attached server's
        ``callers``, pins accepted): recompute the best routes and the catalog, and advertise."""
        self._changed()

    def _changed(self) -> None:
        rtts = self._rtts()
        best = self.table.update(self._local_routes(), rtts, trio.current_time())
        self._rebuilt(best, self.catalog.rebuild(self.names.imported_view(best), rtts, self._local.ids()))

    async def _changed_paced(self, pacer: Pacer) -> None:
        """:meth:`_changed`, the catalog rebuilt a server at a time (letting others run in between)."""
        for _attempt in range(2):
            rtts = self._rtts()
            best = self.table.update(self._local_routes(), rtts, trio.current_time())
            changed = await pacer.drive(self.catalog.rebuilding(self.names.imported_view(best), rtts,
                                                                self._local.ids()))
            if changed is not None:
                self._rebuilt(best, changed)
                return
        self._changed()  # others kept rebuilding meanwhile: once more, at once

    def _rebuilt(self, best: Mapping[Key, tuple[Route, str | None]], changed: set[str]) -> None:
        extensions: dict[str, Any] = {}
        for route, _via in best.values():
            for name, settings in route.extensions.items():
                extensions.setdefault(name, settings)
        if extensions != self.extensions:
            self.extensions = extensions
            changed.add("extensions")
        if changed:
            self._on_change(changed)
            self._catalog_event.set()
            self._catalog_event = trio.Event()
        self.advertiser.changed()
        self.state_changed()

    async def wait_for(self, *names: str, kind: str = "tools", timeout: float = 10.0) -> None:
        """Wait until every exposed name is in this node's catalog of ``kind``.

        Raises:
            trio.TooSlowError: not all of them appeared within ``timeout``.
        """
        with trio.fail_after(timeout):
            while not set(names) <= self.catalog.entries[kind].keys():
                await self._catalog_event.wait()

    # -- looking things up --------------------------------------------------------------------

    def list_items(self, kind: str, caller: Caller | None = None) -> list[dict[str, Any]]:
        """The exposed definitions of one kind ``caller`` may use (None: an anonymous client of this
        node), sorted by exposed name (see :meth:`CallerPolicy.usable_by`). Audited as a request
        served here (a list request carries no trace of its own: a new one)."""
        who = caller or Caller(entry=self.id)
        self.forwarding.audit.listed(kind, who)
        return self.catalog.list_items(kind, self.forwarding.callers.usable_by(who))

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of an exposed tool (None: no such tool, or it has none)."""
        return self.catalog.tool_input_schema(name)

    def resolve(self, method: str, params: Mapping[str, Any]) -> tuple[Entry, dict[str, Any]]:
        """Find the entry a client request is about (see :meth:`fednode._federation._catalog.Catalog.resolve`)."""
        return self.catalog.resolve(method, params)

    def routes_by_origin(self) -> dict[str, int]:
        """How many attached servers are reachable from here, per owning node (this one included)."""
        return dict(collections.Counter(origin for origin, _server in self.table.best))

    def next_hop(self, origin: str, server: str) -> str | None:
        """The peer a request for ``server`` on ``origin`` goes to next (None: no route)."""
        return self.table.next_hop((origin, server))

    async def execute(self, method: str, params: dict[str, Any], *, timeout: float | None = None,
                      progress: ProgressFn | None = None, session: dict[str, Any] | None = None,
                      caller: Caller | None = None) -> dict[str, Any]:
        """Run a client request wherever its server is (see :meth:`._forwarding.Forwarding.execute`)."""
        return await self.forwarding.execute(method, params, timeout=timeout, progress=progress, session=session,
                                             caller=caller)


