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

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs
import mcp_types
from pydantic import BaseModel, ValidationError

from .._config._config import MAX_REQUEST_TIMEOUT
from ._route_proof import Proof, RouteProofs, RouteRefusal, Tombstone

Key = tuple[str, str]
"""A route's identity: (owning node id, server id)."""
Path = tuple[str, ...]

KINDS = ("tools", "prompts", "resources", "resourceTemplates")

MAX_PATH = 32  # longer advertised paths are refused: a sane federation is far smaller
MAX_ROUTES_PER_PEER = 1024  # routes (attached servers) accepted from one peer
# What one peer's routes may add up to: catalog items (tools, prompts, resources, templates) and
# their size as JSON. Routes beyond either are refused (logged), so no peer can make this node hold,
# or rebuild its catalog from, more than this.
MAX_ITEMS_PER_PEER = 20_000
MAX_CATALOG_BYTES_PER_PEER = 32 * 1024 * 1024
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


@attrs.frozen
class Limits:
    """What the routes learned from one peer may add up to."""

    routes: int = MAX_ROUTES_PER_PEER
    items: int = MAX_ITEMS_PER_PEER
    bytes: int = MAX_CATALOG_BYTES_PER_PEER


@attrs.frozen
class Route:
    """One attached server as reachable from here: owner, server id, prefix, path and catalog."""

    origin: str
    server: str
    prefix: str
    path: Path
    digest: str
    catalog: Mapping[str, tuple[dict[str, Any], ...]] = attrs.field(eq=False, repr=False)
    extensions: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    #: the owning node's deadline for this server's requests (``[[servers]] timeout``), if it set one
    timeout: float | None = attrs.field(default=None, eq=False)
    #: the size of the catalog as JSON (bytes; counted for routes learned from peers)
    size: int = attrs.field(default=0, eq=False)
    #: the origin's version and expiry, and the attestations of the path (None: none came)
    proof: Proof | None = attrs.field(default=None, eq=False, repr=False)
    #: the peer whose word this route was taken on, unverified (``[[peers]] vouch``); None: verified
    vouched_by: str | None = attrs.field(default=None, eq=False)

    @property
    def items(self) -> int:
        return sum(len(v) for v in self.catalog.values())

    @property
    def key(self) -> Key:
        return (self.origin, self.server)

    @property
    def stamp(self) -> str:
        """What tells one advertisement of this route from another: the digest, and the signed version
        (a re-signed advertisement is sent again even when its catalog did not change)."""
        return self.digest if self.proof is None else f"{self.digest}@{self.proof.version}"

    def to_wire(self, path: Path, proof: Proof | None = None) -> dict[str, Any]:
        """As advertised with ``path``, carrying ``proof`` (this node's attestation included) if given."""
        wire: dict[str, Any] = {"origin": self.origin, "server": self.server, "prefix": self.prefix, "path": list(path),
                "digest": self.digest, "catalog": {k: list(v) for k, v in self.catalog.items()},
                "extensions": dict(self.extensions)}
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if proof is not None:
            wire["proof"] = proof.to_wire()
        return wire

    def signed_digest(self) -> str:
        """The digest of this route's catalog, extensions and timeout, as the origin computes it."""
        return catalog_digest({**self.catalog, "extensions": self.extensions, "timeout": self.timeout})


def catalog_digest(catalog: Mapping[str, Any]) -> str:
    """A content hash of a catalog (and its server's extensions and timeout), so unchanged ones are never re-sent."""
    hashed = {k: catalog.get(k, ()) for k in (*KINDS, "extensions")}
    if catalog.get("timeout") is not None:
        hashed["timeout"] = catalog["timeout"]
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def route_from_wire(item: object) -> Route:
    """A route as a peer advertised it (``fed/routes``), checked for shape.

    Raises:
        ValueError: saying which field is wrong.
    """
    if not isinstance(item, dict):
        raise ValueError("route must be an object")
    origin, server, prefix, path = item.get("origin"), item.get("server"), item.get("prefix"), item.get("path")
    digest, catalog = item.get("digest"), item.get("catalog")
    if not (isinstance(origin, str) and isinstance(server, str) and isinstance(prefix, str)
            and isinstance(digest, str) and isinstance(path, list) and isinstance(catalog, dict)):
        raise ValueError("route fields have the wrong types")
    if not path or len(path) > MAX_PATH or not all(isinstance(p, str) for p in path) or path[0] != origin:
        raise ValueError("route path must start at its origin")
    kinds: dict[str, tuple[dict[str, Any], ...]] = {}
    for kind in KINDS:
        items = catalog.get(kind, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"catalog {kind} must be a list of objects")
        kinds[kind] = tuple(items)
    extensions = item.get("extensions", {})
    if not isinstance(extensions, dict):
        raise ValueError("extensions must be an object")
    timeout = item.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 < timeout <= MAX_REQUEST_TIMEOUT):
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT:g}]")
    proof = item.get("proof")
    return Route(origin=origin, server=server, prefix=prefix, path=tuple(path), digest=digest, catalog=kinds,
                 extensions=extensions, timeout=None if timeout is None else float(timeout),
                 proof=None if proof is None else Proof.from_wire(proof, len(path)))


_MODELS: dict[str, type[BaseModel]] = {"tools": mcp_types.Tool, "prompts": mcp_types.Prompt,
                                        "resources": mcp_types.Resource,
                                        "resourceTemplates": mcp_types.ResourceTemplate}


def valid_items(kind: str, items: Iterable[Any]) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """The definitions of ``kind`` a client can accept (checked against the SDK's models, kept as
    they are), and why each of the others is not.

    One malformed definition would otherwise make clients' whole ``*/list`` fail.
    """
    model = _MODELS[kind]
    kept: list[dict[str, Any]] = []
    problems: list[str] = []
    for item in items:
        try:
            model.model_validate(item, by_name=False)
        except ValidationError as exc:
            name = item.get("name") or item.get("uri") or item.get("uriTemplate") if isinstance(item, dict) else None
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            message = errors[0]["msg"] if errors else "invalid"
            problems.append(f"{kind} {str(name)[:80]!r}: {where or 'item'}: {message}"[:300])
            continue
        kept.append(item)
    return tuple(kept), problems


def checked_route(route: Route) -> tuple[Route, list[str]]:
    """``route`` with only the definitions a client can accept and its size; why the others were dropped."""
    kinds: dict[str, tuple[dict[str, Any], ...]] = {}
    problems: list[str] = []
    for kind in KINDS:
        kinds[kind], found = valid_items(kind, route.catalog.get(kind, ()))
        problems += found
    size = len(json.dumps(kinds, separators=(",", ":"), ensure_ascii=False, default=str))
    return attrs.evolve(route, catalog=kinds, size=size), problems


@attrs.frozen
class Advertisement:
    """One ``fed/routes`` frame: routes set, routes withdrawn, origins' tombstones (``revoked``, an
    optional field); ``full`` starts a full advertisement, ``more`` says another frame of it follows."""

    routes: tuple[Route, ...] = ()
    withdrawn: tuple[Key, ...] = ()
    full: bool = False
    more: bool = False
    revoked: tuple[Tombstone, ...] = ()

    @classmethod
    def from_wire(cls, params: Mapping[str, Any]) -> Advertisement:
        """Parse a frame.

        Keys to withdraw that are not ``[origin, server]`` pairs are skipped.

        Raises:
            ValueError, TypeError: a malformed route or tombstone, or lists that are not (the whole
                frame is refused).
        """
        revoked = params.get("revoked", [])
        if not isinstance(revoked, list):
            raise ValueError("revoked must be a list of tombstones")
        return cls(routes=tuple(route_from_wire(item) for item in params.get("set", [])),
                   withdrawn=tuple((k[0], k[1]) for k in params.get("withdraw", [])
                                   if isinstance(k, list) and len(k) == 2),
                   full=bool(params.get("full")), more=bool(params.get("more")),
                   revoked=tuple(Tombstone.from_wire(item) for item in revoked))


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
        #: (origin, server) -> the best route and the peer it goes through (None: attached here),
        #: as of the last :meth:`update`
        self.best: dict[Key, tuple[Route, str | None]] = {}

    # -- inputs -----------------------------------------------------------------------------

    def link_up(self, peer_id: str) -> None:
        """A link to ``peer_id`` came up: it is owed a full advertisement."""
        self.advertised[peer_id] = None
        self._failures.pop(peer_id, None)

    def link_down(self, peer_id: str) -> bool:
        """The link to ``peer_id`` is gone: forget everything learned over it. Returns whether any route went."""
        self.advertised.pop(peer_id, None)
        self.revoked_sent.pop(peer_id, None)
        self._staging.pop(peer_id, None)
        self._failures.pop(peer_id, None)
        return bool(self.learned.pop(peer_id, None))

    def receive(self, peer_id: str, policy: PeerPolicy, advertisement: Advertisement) -> Received:
        """Apply a frame from ``peer_id``, accepting only what ``policy`` imports and the limits allow.

        A full advertisement may span several frames; it is staged and swapped in whole with its
        last frame, so the best routes never reflect a half-received catalog.
        """
        staging = self._staging.get(peer_id)
        if advertisement.full and staging is None:
            staging = self._staging[peer_id] = {}
        table = staging if staging is not None else dict(self.learned.get(peer_id, {}))
        for key in advertisement.withdrawn:
            table.pop(key, None)
        unverified: list[tuple[Key, RouteRefusal, str]] = []
        revoked = self._revoke(peer_id, advertisement.revoked, table, unverified)
        items = sum(r.items for r in table.values())
        size = sum(r.size for r in table.values())
        refused: list[tuple[Key, str]] = []
        invalid: list[tuple[Route, tuple[str, ...]]] = []
        vouched: list[tuple[Key, RouteRefusal, str]] = []
        for route in advertisement.routes:
            old = table.pop(route.key, None)
            if old is not None:
                items, size = items - old.items, size - old.size
            if self.node_id in route.path or route.path[-1] != peer_id or not policy.imports(route.server):
                continue  # a loop, a forged path or not imported: never used
            if self.proofs is not None:
                refusal = self._verify(route, old)
                # A vouching peer's word stands in for what cannot be verified, not for what is
                # proven stale (an older version, an expired advertisement).
                if refusal is not None and (not policy.vouch or refusal[0] in STALE):
                    unverified.append((route.key, *refusal))
                    continue  # never used, never passed on
                if refusal is not None:
                    vouched.append((route.key, *refusal))
                    route = attrs.evolve(route, vouched_by=peer_id)
            route, problems = checked_route(route)
            if problems:
                invalid.append((route, tuple(problems)))
            # A peer cannot make this node hold unbounded state, whatever it advertises.
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
            table[route.key] = route
            items, size = items + route.items, size + route.size
            if self.proofs is not None and route.vouched_by is None and route.proof is not None:
                self.proofs.remember(route.key, route.proof)
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
            for routes in (table, *self.learned.values(), *self._staging.values()):
                route = routes.get(tombstone.key)
                if route is not None and self.proofs.revoked(tombstone.key, 0 if route.proof is None
                                                              else route.proof.version):
                    del routes[tombstone.key]
        return applied

    def _verify(self, route: Route, old: Route | None) -> tuple[RouteRefusal, str] | None:
        """Why ``route`` cannot be believed (None: it can); see :meth:`RouteProofs.verify`."""
        assert self.proofs is not None
        if route.proof is None:  # before the digest: what is refused costs little
            if self.proofs.revoked(route.key, 0):  # not even a vouching peer brings it back
                return RouteRefusal.REPLAY, "its origin withdrew it (a tombstone)"
            return RouteRefusal.UNSIGNED, "the route carries no proof"
        if route.signed_digest() != route.digest:
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
