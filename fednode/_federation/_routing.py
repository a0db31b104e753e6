"""The path-vector routing table, without I/O: advertisements in, best routes and deltas out.

Every node advertises to each peer one *route* per attached MCP server it can reach: the server's
catalog (raw definitions), the prefix its owner chose, and the path of node ids the advertisement
travelled (owner first). :class:`RoutingTable` holds what each peer advertised and applies this
node's policy to it:

- a route whose path contains this node's id is never accepted (a loop), nor one whose path does
  not end at the peer that sent it (forged);
- with route proofs (:mod:`fednode._route_proof`), a route is believed only if its origin and every
  hop of its path signed it (or the peer that sent it is trusted to ``vouch``), its catalog matches
  the signed digest, and its version is not older than one verified before;
- a tombstone (the origin's signed withdrawal of a server) that verifies drops every route held for
  that server with an older version and bars older ones from then on; it is passed on once per
  version, to the peers the route itself could have been offered to (:meth:`RoutingTable.revocations`);
- a peer's ``import`` list decides what is accepted from it, its ``export`` list and ``transit``
  (with the node's own ``[mcp] transit``) what is offered to it; a route is never offered back
  to a peer on its path;
- what one peer may make this node hold is capped (:class:`Limits`);
- a peer whose forwards keep failing loses preference to healthy ones (:meth:`RoutingTable.forward_failed`).

It knows nothing of links, sockets, clocks or the node: the caller feeds it what arrived
(:meth:`RoutingTable.receive`, :meth:`~RoutingTable.link_up`, :meth:`~RoutingTable.link_down`)
with the peer's policy as plain data, asks for the best routes given the round-trip times it
measured (:meth:`~RoutingTable.update`), and for what to send each peer (:meth:`~RoutingTable.delta`),
reporting back what was delivered (:meth:`~RoutingTable.sent`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from typing import Protocol

import attrs

from .._config._export_rules import NameRules
from ._pacer import drain
from ._route_proof import RouteProofs, RouteRefusal, Tombstone
from ._routes import MAX_PATH, Advertisement, Key, Limits, Path, Route, checked_route, measured, packed

# A peer whose forwards failed (no answer in time, link lost) this many times in a row loses
# preference to healthy routes for a while (the failures are forgotten after FAILURE_MEMORY seconds).
FAILURE_THRESHOLD = 3
FAILURE_MEMORY = 60.0
# Refusals a vouching peer cannot override.
STALE = frozenset({RouteRefusal.REPLAY, RouteRefusal.EXPIRED})


class PeerPolicy(Protocol):
    """What this node's configuration says about one peer (:class:`fednode.PeerConfig` is one)."""

    @property
    def transit(self) -> bool:
        """Whether routes learned from other peers are offered to this peer."""
        ...

    def exports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` may be offered to this peer."""
        ...

    def imports(self, server_id: str) -> bool:
        """Whether routes to ``server_id`` are accepted from this peer."""
        ...

    @property
    def vouch(self) -> bool:
        """Whether routes from this peer that cannot be verified are accepted on its word."""
        ...

    @property
    def export_rules(self) -> NameRules | None:
        """Its ``export`` parsed (tool-level rules, see :mod:`fednode._federation._name_policy`; None: all)."""
        ...

    @property
    def import_rules(self) -> NameRules | None:
        """Its ``import`` parsed (None: all)."""
        ...


@attrs.frozen
class Received:
    """What :meth:`RoutingTable.receive` did with a frame."""

    #: whether the best routes must be recomputed: the peer's routes were replaced, or a tombstone
    #: was verified (it may have dropped routes learned from any peer)
    applied: bool
    #: routes refused for a per-peer limit, with the limit
    refused: tuple[tuple[Key, str], ...] = ()
    #: routes kept without some definitions, and why those were dropped
    invalid: tuple[tuple[Route, tuple[str, ...]], ...] = ()
    #: routes (and tombstones) refused because their origin or path could not be verified: key, reason, detail
    unverified: tuple[tuple[Key, RouteRefusal, str], ...] = ()
    #: routes accepted unverified on the word of the peer (``vouch``): key, why they did not verify
    vouched: tuple[tuple[Key, RouteRefusal, str], ...] = ()


@attrs.frozen
class Delta:
    """What to send one peer so that it holds what this node offers it now."""

    #: a full advertisement (the peer holds nothing from us yet): everything offered is in ``routes``
    full: bool
    #: routes new or changed since the last delivered advertisement, with the path each carries
    routes: Mapping[Key, tuple[Route, Path]]
    #: keys the peer had from us and must drop
    withdrawn: tuple[Key, ...]
    #: everything offered, as :meth:`RoutingTable.sent` records it once delivered
    offered: Mapping[Key, tuple[Path, str]]
    #: tombstones the peer was not sent yet (in this version)
    revoked: Mapping[Key, Tombstone] = attrs.field(factory=dict)
    #: the version of every tombstone offered, as :meth:`RoutingTable.sent` records it
    revoked_offered: Mapping[Key, int] = attrs.field(factory=dict)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to send."""
        return not self.full and not self.routes and not self.withdrawn and not self.revoked


class RoutingTable:
    """Routes learned from peers, the best route per server, and what each peer was last sent.

    Args:
        node_id: this node's id (never on the path of an accepted route).
        limits: what one peer's routes may add up to.
        proofs: verifies routes' origins and paths (None: routes are taken as they come; for tests
            of the table alone).
    """

    def __init__(self, node_id: str, limits: Limits | None = None, proofs: RouteProofs | None = None) -> None:
        self.node_id = node_id
        self.limits = limits or Limits()
        self.proofs = proofs
        # peer -> (forwards through it that failed in a row, when the last one failed)
        self._failures: dict[str, tuple[int, float]] = {}
        #: peer -> the routes accepted from it
        self.learned: dict[str, dict[Key, Route]] = {}
        #: peer -> what it was last sent and received ((path, stamp) per key); None: nothing yet
        self.advertised: dict[str, dict[Key, tuple[Path, str]] | None] = {}
        #: peer -> the version of each tombstone it was sent (the ones offered when last sent)
        self.revoked_sent: dict[str, dict[Key, int]] = {}
        # peer -> a full advertisement being received over several frames (swapped in whole)
        self._staging: dict[str, dict[Key, Route]] = {}
        # peer -> how many times its link came up or went down (an update being applied or
        # advertised when it does is void)
        self._epochs: dict[str, int] = {}
        # tombstones verified so far (an update being applied meanwhile drops what they revoked)
        self._revocations = 0
        #: (origin, server) -> the best route and the peer it goes through (None: attached here),
        #: as of the last :meth:`update`
        self.best: dict[Key, tuple[Route, str | None]] = {}

    # -- inputs -----------------------------------------------------------------------------

    def link_up(self, peer_id: str) -> None:
        """A link to ``peer_id`` came up: it is owed a full advertisement."""
        self.advertised[peer_id] = None
        self._failures.pop(peer_id, None)
        self._epochs[peer_id] = self.link_epoch(peer_id) + 1

    def link_down(self, peer_id: str) -> bool:
        """The link to ``peer_id`` is gone: forget everything learned over it. Returns whether any route went."""
        self.advertised.pop(peer_id, None)
        self.revoked_sent.pop(peer_id, None)
        self._staging.pop(peer_id, None)
        self._failures.pop(peer_id, None)
        self._epochs[peer_id] = self.link_epoch(peer_id) + 1
        return bool(self.learned.pop(peer_id, None))

    def link_epoch(self, peer_id: str) -> int:
        """A number that changes whenever the link to ``peer_id`` comes up or goes down."""
        return self._epochs.get(peer_id, 0)

    def receive(self, peer_id: str, policy: PeerPolicy, advertisement: Advertisement) -> Received:
        """Apply a frame from ``peer_id``, accepting only what ``policy`` imports and the limits allow.

        A full advertisement may span several frames; it is staged and swapped in whole with its
        last frame, so the best routes never reflect a half-received catalog.
        """
        return drain(self.receiving(peer_id, policy, advertisement))

    def receiving(self, peer_id: str, policy: PeerPolicy, advertisement: Advertisement
                  ) -> Generator[None, None, Received]:
        """:meth:`receive`, a route at a time: a generator that yields after each route (so that
        the caller can let other work run, see :class:`~fednode._federation._pacer.Pacer`) and
        returns what :meth:`receive` returns.

        The peer's routes are replaced only at the end, in one step. Whatever ran in between is
        taken into account then: if the link to the peer went down meanwhile nothing is applied,
        and routes a tombstone verified meanwhile revoked are dropped. Closed before its end, it
        changes nothing but the versions it verified (which only ever grow).
        """
        epoch = self.link_epoch(peer_id)
        staging = self._staging.get(peer_id)
        if advertisement.full and staging is None:
            staging = self._staging[peer_id] = {}
        table = staging if staging is not None else dict(self.learned.get(peer_id, {}))
        for key in advertisement.withdrawn:
            table.pop(key, None)
        unverified: list[tuple[Key, RouteRefusal, str]] = []
        revoked = self._revoke(peer_id, advertisement.revoked, table, unverified)
        revocations = self._revocations
        items = sum(r.items for r in table.values())
        size = sum(r.size for r in table.values())
        refused: list[tuple[Key, str]] = []
        invalid: list[tuple[Route, tuple[str, ...]]] = []
        vouched: list[tuple[Key, RouteRefusal, str]] = []
        for route in advertisement.routes:
            yield  # between routes, others may run (the table is replaced at the end)
            old = table.pop(route.key, None)
            if old is not None:
                items, size = items - old.items, size - old.size
            if self.node_id in route.path or route.path[-1] != peer_id or not policy.imports(route.server):
                continue  # a loop, a forged path or not imported: never used
            # The same catalog verified already (from another peer, or before): neither hashed nor
            # validated again, and held once (a route arrives from each neighbour that has it).
            known = self._verified_copy(route, old, peer_id)
            if self.proofs is not None:
                refusal = self._verify(route, old, digest_checked=known is not None)
                # A vouching peer's word stands in for what cannot be verified, not for what is
                # proven stale (an older version, an expired advertisement).
                if refusal is not None and (not policy.vouch or refusal[0] in STALE):
                    unverified.append((route.key, *refusal))
                    continue  # never used, never passed on
                if refusal is not None:
                    vouched.append((route.key, *refusal))
                    route = attrs.evolve(route, vouched_by=peer_id)
            if not route.size:
                route = measured(route)
            # A peer cannot make this node hold unbounded state, whatever it advertises. Checked on
            # what was sent, before the definitions are validated: a route over a limit costs little.
            why = None
            if len(table) >= self.limits.routes:
                why = f"more than {self.limits.routes} routes"
            elif items + route.items > self.limits.items:
                why = f"more than {self.limits.items} catalog items"
            elif size + route.size > self.limits.bytes:
                why = f"more than {self.limits.bytes // (1024 * 1024)} MiB of catalogs"
            if why is not None:
                refused.append((route.key, why))
                continue
            if known is not None and route.vouched_by is None:
                route = attrs.evolve(route, catalog=known.catalog, names=known.names, extensions=known.extensions,
                                     timeout=known.timeout)
                problems: list[str] = []
            else:
                route, problems = checked_route(route)
                route = packed(route)
            if problems:
                invalid.append((route, tuple(problems)))
            table[route.key] = route
            items, size = items + route.items, size + route.size
            if self.proofs is not None and route.vouched_by is None and route.proof is not None:
                self.proofs.remember(route.key, route.proof)
        if self.link_epoch(peer_id) != epoch:  # the link went down (or down and up) meanwhile
            return Received(applied=False)
        if revocations != self._revocations:  # tombstones from other peers verified meanwhile
            self._drop_revoked(table)
        applied = staging is None or not advertisement.more
        if applied:
            self._staging.pop(peer_id, None)
            self.learned[peer_id] = table
        return Received(applied=applied or revoked, refused=tuple(refused), invalid=tuple(invalid),
                        unverified=tuple(unverified), vouched=tuple(vouched))

    def _revoke(self, peer_id: str, tombstones: Iterable[Tombstone], table: dict[Key, Route],
                unverified: list[tuple[Key, RouteRefusal, str]]) -> bool:
        """Apply the tombstones ``peer_id`` sent (those that are news and verify), before its routes:
        every route held for their key with an older version goes, from every peer (``table`` is the
        one being built for ``peer_id``). Refusals go to ``unverified``. Returns whether any applied."""
        if self.proofs is None:
            return False
        applied = False
        for tombstone in tombstones:
            outcome = self.proofs.revoke(tombstone, peer_id)
            if outcome is False:
                continue  # known already (or this node's own): not passed on again
            if outcome is not None:
                unverified.append((tombstone.key, *outcome))
                continue  # never believed, never passed on
            applied = True
            self._revocations += 1
            for routes in (table, *self.learned.values(), *self._staging.values()):
                route = routes.get(tombstone.key)
                if route is not None and self._is_revoked(route):
                    del routes[tombstone.key]
        return applied

    def _is_revoked(self, route: Route) -> bool:
        return self.proofs is not None and self.proofs.revoked(route.key, 0 if route.proof is None
                                                                else route.proof.version)

    def _drop_revoked(self, table: dict[Key, Route]) -> None:
        for key in [key for key, route in table.items() if self._is_revoked(route)]:
            del table[key]

    def _verified_copy(self, route: Route, old: Route | None, peer_id: str) -> Route | None:
        """A route held for ``route``'s key with its digest, whose catalog was verified against
        it (None: none, or routes are not verified)."""
        if self.proofs is None:
            return None
        candidates = [old, *(routes.get(route.key) for peer, routes in self.learned.items() if peer != peer_id)]
        return next((held for held in candidates if held is not None and held.digest == route.digest
                     and held.vouched_by is None and held.proof is not None), None)

    def _verify(self, route: Route, old: Route | None, *, digest_checked: bool = False
                ) -> tuple[RouteRefusal, str] | None:
        """Why ``route`` cannot be believed (None: it can); see :meth:`RouteProofs.verify`.
        ``digest_checked``: its catalog is one that was checked against its digest already."""
        assert self.proofs is not None
        if route.proof is None:  # before the digest: what is refused costs little
            if self.proofs.revoked(route.key, 0):  # not even a vouching peer brings it back
                return RouteRefusal.REPLAY, "its origin withdrew it (a tombstone)"
            return RouteRefusal.UNSIGNED, "the route carries no proof"
        if not digest_checked and route.signed_digest() != route.digest:
            return RouteRefusal.DIGEST_MISMATCH, "the catalog does not match the signed digest"
        if self.proofs.revoked(route.key, route.proof.version):  # not even a vouching peer brings it back
            return RouteRefusal.REPLAY, f"its origin withdrew version {route.proof.version} (a tombstone)"
        if (old is not None and old.vouched_by is None and old.proof is not None and old.proof == route.proof
                and old.path == route.path and old.prefix == route.prefix and old.digest == route.digest
                and self.proofs.usable(route.key, route.proof)):
            return None  # the same advertisement again (a peer re-sending its table): verified already
        return self.proofs.verify(route.origin, route.server, route.prefix, route.digest, route.proof, route.path)

    # -- forwards' outcomes -----------------------------------------------------------------

    def penalized(self, peer_id: str, now: float) -> bool:
        """Whether routes through ``peer_id`` rank after healthy ones: its last
        :data:`FAILURE_THRESHOLD` forwards failed, the last less than :data:`FAILURE_MEMORY` ago."""
        count, last = self._failures.get(peer_id, (0, 0.0))
        return count >= FAILURE_THRESHOLD and now - last < FAILURE_MEMORY

    def forward_failed(self, peer_id: str, now: float) -> bool:
        """A forward through ``peer_id`` got no answer in time (or lost its link). Returns whether that
        made the peer penalized (the best routes must be recomputed)."""
        before = self.penalized(peer_id, now)
        count, _last = self._failures.get(peer_id, (0, 0.0))
        self._failures[peer_id] = (min(count + 1, FAILURE_THRESHOLD), now)
        return self.penalized(peer_id, now) != before

    def forward_succeeded(self, peer_id: str, now: float) -> bool:
        """A forward through ``peer_id`` was answered. Returns whether it was penalized until now."""
        before = self.penalized(peer_id, now)
        self._failures.pop(peer_id, None)
        return before

    # -- best routes ------------------------------------------------------------------------

    def best_routes(self, local: Mapping[Key, Route], rtts: Mapping[str, float], now: float = 0.0
                    ) -> dict[Key, tuple[Route, str | None]]:
        """For each (origin, server): the best route and the peer it goes through (None = local).

        Local routes (``local``, servers attached here) always win; learned ones rank healthy
        before penalized (see :meth:`penalized`, at time ``now``), then by fewest hops, then the
        lowest round-trip time to the peer (``rtts``; unknown counts as infinite), then the peer id,
        so the result does not depend on the order things arrived in. A verified route that has
        expired, or whose version a newer verified one superseded, is not used.
        """
        best: dict[Key, tuple[Route, str | None]] = {key: (route, None) for key, route in local.items()}
        ranks: dict[Key, tuple[bool, int, float, str]] = {}
        inf = float("inf")
        for peer_id, table in self.learned.items():
            penalized = self.penalized(peer_id, now)
            for key, route in table.items():
                if key[0] == self.node_id or key in local:
                    continue
                if self.proofs is not None and route.vouched_by is None and not self.proofs.usable(key, route.proof):
                    continue
                rank = (penalized, len(route.path), rtts.get(peer_id, inf), peer_id)
                if key not in ranks or rank < ranks[key]:
                    best[key] = (route, peer_id)
                    ranks[key] = rank
        return best

    def update(self, local: Mapping[Key, Route], rtts: Mapping[str, float], now: float = 0.0
               ) -> dict[Key, tuple[Route, str | None]]:
        """Recompute :attr:`best` (see :meth:`best_routes`) and return it."""
        self.best = self.best_routes(local, rtts, now)
        return self.best

    def next_hop(self, key: Key) -> str | None:
        """The peer a request for ``key`` goes to next, as of the last :meth:`update` (None: local or no route)."""
        best = self.best.get(key)
        return best[1] if best is not None else None

    # -- what peers are offered -------------------------------------------------------------

    def offered_path(self, peer_id: str, policy: PeerPolicy, key: Key, *, node_transit: bool = True) -> Path | None:
        """The path this node offers ``peer_id`` for ``key``, or None if policy keeps it from that peer.

        Args:
            node_transit: this node's own ``[mcp] transit``: whether it passes on learned routes at all.
        """
        best = self.best.get(key)
        if best is None:
            return None
        route, via = best
        if peer_id in route.path or self.node_id in route.path[:-1] or not policy.exports(route.server):
            return None
        if via is not None and not (policy.transit and node_transit):
            return None
        path = route.path if via is None else (*route.path, self.node_id)
        return path if len(path) <= MAX_PATH else None

    def offers(self, peer_id: str, policy: PeerPolicy, *, node_transit: bool = True) -> dict[Key, tuple[Route, Path]]:
        """Everything this node offers ``peer_id``: each route with the path it carries."""
        result = {}
        for key, (route, _via) in self.best.items():
            path = self.offered_path(peer_id, policy, key, node_transit=node_transit)
            if path is not None:
                result[key] = (route, path)
        return result

    def revocations(self, peer_id: str, policy: PeerPolicy, *, node_transit: bool = True) -> dict[Key, Tombstone]:
        """The tombstones this node passes on to ``peer_id``: its own, and those it verified, except
        to the peer it came from; only where the route itself could have been offered (export and
        transit policy as in :meth:`offered_path`), so a peer learns of no withdrawal it could not
        have seen the route of. Expired ones are left out."""
        if self.proofs is None:
            return {}
        cutoff = self.proofs.clock() - self.proofs.leeway
        result = {}
        for key, (tombstone, source) in self.proofs.tombstones.items():
            if peer_id in (source, tombstone.origin) or tombstone.expires < cutoff:
                continue
            if not policy.exports(tombstone.server) or (source is not None and not (policy.transit and node_transit)):
                continue
            result[key] = tombstone
        return result

    def delta(self, peer_id: str, offers: Mapping[Key, tuple[Route, Path]],
              revocations: Mapping[Key, Tombstone] | None = None) -> Delta:
        """What ``peer_id`` must be sent so that it holds ``offers`` (from :meth:`offers`, maybe trimmed)
        and knows of ``revocations`` (from :meth:`revocations`; each version sent once)."""
        previous = self.advertised.get(peer_id)
        routes = {key: (route, path) for key, (route, path) in offers.items()
                  if previous is None or previous.get(key) != (path, route.stamp)}
        withdrawn = () if previous is None else tuple(key for key in previous if key not in offers)
        revocations = revocations or {}
        known = {} if previous is None else self.revoked_sent.get(peer_id, {})
        return Delta(full=previous is None, routes=routes, withdrawn=withdrawn,
                     offered={key: (path, route.stamp) for key, (route, path) in offers.items()},
                     revoked={key: t for key, t in revocations.items() if known.get(key) != t.version},
                     revoked_offered={key: t.version for key, t in revocations.items()})

    def sent(self, peer_id: str, delta: Delta) -> None:
        """``delta`` was delivered to ``peer_id``: later deltas are relative to it."""
        self.advertised[peer_id] = dict(delta.offered)
        self.revoked_sent[peer_id] = dict(delta.revoked_offered)

    def not_sent(self, peer_id: str) -> None:
        """Sending to ``peer_id`` failed: it is owed a full advertisement again."""
        self.advertised.pop(peer_id, None)
