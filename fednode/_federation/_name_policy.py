"""Tool-level ``export`` and ``import`` rules applied to routes (see :mod:`fednode._config._export_rules`).

A route's catalog is signed by its origin over its digest, so only the origin can trim it:

- this node's **own** routes are offered to a peer whose ``export`` leaves out some of their tools or
  prompts as a *variant*: the catalog trimmed to what the peer may see, with a digest of its own that
  this node signs like any of its advertisements (the variants' digests are part of what the
  version covers, see :meth:`fednode._federation._route_proof.RouteProofs.local_proof`);
- a route this node **passes on** is offered whole or not at all: if the peer's ``export``, or the
  ``import`` of the peer it was learned from, leaves out any of its tools or prompts, it is held back
  (logged once per peer and route, listed in ``/status``), so nothing hidden leaks;
- tools and prompts a peer's ``import`` leaves out are not in the catalog this node's clients see
  (:meth:`NamePolicy.imported_view`, applied before the catalog is built), so calling one is refused
  as an unknown name.

Trimmed catalogs are built once per (server, digest, rules) and kept in a small cache, so a catalog
is neither hashed nor trimmed again for every advertisement.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs

from .._config._export_rules import NAMED_KINDS, NameRules
from ._route_proof import RouteProofs
from ._routes import Item, Key, Path, Route, item_name, unpacked

#: Trimmed catalogs (and "does it trim" answers) remembered; the least recently used go first.
CACHE_SIZE = 1024
#: Routes listed as held back from one peer (for /status) at most.
MAX_HELD = 4096


def forwarded_item(method: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """The kind and name (at its server) of the tool or prompt a forwarded request is about (None:
    a request tool-level rules do not decide, e.g. resources/read)."""
    if method in ("tools/call", "prompts/get"):
        name = params.get("name")
        return ("tools" if method == "tools/call" else "prompts"), name if isinstance(name, str) else ""
    ref = params.get("ref")
    if method == "completion/complete" and isinstance(ref, Mapping) and ref.get("type") == "ref/prompt":
        name = ref.get("name")
        return "prompts", name if isinstance(name, str) else ""
    return None


class RulesPolicy(Protocol):
    """A peer's parsed ``export``/``import`` (:class:`fednode.PeerConfig` is one)."""

    @property
    def export_rules(self) -> NameRules | None: ...

    @property
    def import_rules(self) -> NameRules | None: ...


def route_names(route: Route, kind: str) -> Iterable[str | None]:
    """The names of ``route``'s items of ``kind``, in order (kept names of a packed route, else parsed)."""
    names = route.names.get(kind) if route.names is not None else None
    if names is not None:
        return names
    return (item_name(kind, unpacked(item)) for item in route.catalog.get(kind, ()))


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


class NamePolicy:
    """Applies the peers' tool-level rules to routes: variants of own routes, routes held back, imports.

    Args:
        node_id: this node's id.
        policy_for: a registered peer's configuration (None: not registered).
        log: where held-back routes are logged (once per peer and route).
    """

    def __init__(self, node_id: str, policy_for: Callable[[str], RulesPolicy | None], log: Any) -> None:
        self.node_id = node_id
        self._policy_for = policy_for
        self._log = log
        # (with its own digest, rules, server, digest) -> trimmed route (None: the rules trim nothing)
        self._trimmed = _LRU(CACHE_SIZE)
        # (peer, via) + route key -> (route held, its trimmed copy) for the catalog's view
        self._imported: dict[tuple[str, Key], tuple[Route, Route]] = {}
        #: (peer, origin, server) -> why the route is not passed on to that peer
        self.held_back: dict[tuple[str, str, str], str] = {}

    # -- trimming -----------------------------------------------------------------------------

    def trimmed(self, route: Route, rules: NameRules | None) -> Route | None:
        """``route`` with only the tools and prompts ``rules`` let through (its digest and proof kept,
        not recomputed); None if they let through all of it (or none: see :meth:`NameRules.server`)."""
        return self._cached(route, rules, signed=False)

    def variant(self, route: Route, rules: NameRules | None) -> Route | None:
        """:meth:`trimmed`, with the digest of the trimmed catalog and no proof (for this node's own
        routes, which it signs)."""
        return self._cached(route, rules, signed=True)

    def _cached(self, route: Route, rules: NameRules | None, *, signed: bool) -> Route | None:
        if rules is None or rules.whole(route.server) or not rules.server(route.server):
            return None
        key = (signed, rules, route.server, route.digest)
        cacheable = route.vouched_by is None  # a vouched route's digest was not checked against its catalog
        found = self._trimmed.get(key) if cacheable else None
        if found is not None:
            cached: Route | None = found[0]
            return cached
        result = self.trimmed(route, rules) if signed else self._trim(route, rules)
        if result is not None and signed:
            result = attrs.evolve(result, proof=None, digest=result.signed_digest())
        if cacheable:
            self._trimmed.put(key, (result,))
        return result

    def _trim(self, route: Route, rules: NameRules) -> Route | None:
        catalog: dict[str, tuple[Item, ...]] = dict(route.catalog)
        names: dict[str, tuple[str | None, ...]] = dict(route.names or {})
        dropped = False
        for kind in NAMED_KINDS:
            kept = [(item, name) for item, name in zip(route.catalog.get(kind, ()), route_names(route, kind),
                                                       strict=True)
                    if name is not None and rules.item(route.server, kind, name)]
            if len(kept) != len(route.catalog.get(kind, ())):
                dropped = True
            catalog[kind] = tuple(item for item, _ in kept)
            if route.names is not None:
                names[kind] = tuple(name for _, name in kept)
        if not dropped:
            return None
        return attrs.evolve(route, catalog=catalog, names=names if route.names is not None else None, size=0)

    def variant_digests(self, route: Route, peers: Iterable[str]) -> frozenset[str]:
        """The digests of the variants of this node's own ``route`` that ``peers`` are offered."""
        digests = set()
        for peer_id in peers:
            policy = self._policy_for(peer_id)
            variant = self.variant(route, policy.export_rules) if policy is not None else None
            if variant is not None:
                digests.add(variant.digest)
        return frozenset(digests)

    def signed(self, route: Route, proofs: RouteProofs | None, peers: Iterable[str]) -> Route:
        """This node's own ``route`` with the proof of its version (None ``proofs``: as it is), which
        covers its variants for ``peers`` too (see :meth:`RouteProofs.local_proof`)."""
        if proofs is None:
            return route
        variants = self.variant_digests(route, peers)
        return attrs.evolve(route, proof=proofs.local_proof(route.server, route.digest, route.prefix, variants))

    def item_offered(self, peer_id: str, server: str, kind: str, name: str) -> bool:
        """Whether ``peer_id``'s ``export`` lets it call the item of ``kind`` called ``name`` at ``server``."""
        policy = self._policy_for(peer_id)
        return policy is not None and (policy.export_rules is None or policy.export_rules.item(server, kind, name))

    def offered_path(self, peer_id: str, policy: RulesPolicy, path: Path,
                     best: tuple[Route, str | None]) -> Path | None:
        """``path``, the path the routing table offers ``peer_id`` for the route ``best`` (with the peer
        it is learned from), unless tool-level rules hold it back."""
        return path if self.held_why(peer_id, policy, *best) is None else None

    # -- what a peer is offered -----------------------------------------------------------------

    def offered(self, peer_id: str, policy: RulesPolicy, route: Route, via: str | None) -> Route | None:
        """``route`` as offered to ``peer_id`` (offered by the routing table's policy already): this
        node's own trimmed to the peer's ``export`` (with the proof of the full one: the same version
        covers every variant), a passed-on one as it is, or None if it must be held back."""
        if via is None:
            variant = self.variant(route, policy.export_rules)
            return route if variant is None else attrs.evolve(variant, proof=route.proof)
        return None if self.held_why(peer_id, policy, route, via) is not None else route

    def held_why(self, peer_id: str, policy: RulesPolicy, route: Route, via: str | None) -> str | None:
        """Why ``route`` (learned from ``via``; None: this node's own) is not offered to ``peer_id`` as
        far as tool-level rules go (None: it is): a passed-on route is offered only whole."""
        if via is None:
            return None
        if self.trimmed(route, policy.export_rules) is not None:
            return f"export to {peer_id!r} leaves out some of its tools or prompts"
        learned_from = self._policy_for(via)
        if learned_from is not None and self.trimmed(route, learned_from.import_rules) is not None:
            return f"import from {via!r} leaves out some of its tools or prompts"
        return None

    def note_held(self, peer_id: str, held: Mapping[Key, str]) -> None:
        """The routes held back from ``peer_id`` now (each logged when it starts being held back)."""
        for (origin, server), why in held.items():
            if (peer_id, origin, server) not in self.held_back:
                self._log.warning("routes.held_back", peer=peer_id, origin=origin, server=server, why=why,
                                  hint="a route passed on cannot be trimmed (its origin signed its catalog): it "
                                       "is passed on whole or not at all; list its server whole, or exclude it "
                                       "whole")
        self.forget(peer_id)
        for (origin, server), why in list(held.items())[:MAX_HELD]:
            self.held_back[(peer_id, origin, server)] = why

    def forget(self, peer_id: str) -> None:
        """``peer_id``'s link went (or it was removed): nothing is held back from it now."""
        for held in [held for held in self.held_back if held[0] == peer_id]:
            del self.held_back[held]

    def held_back_status(self) -> dict[str, list[str]]:
        """Per peer: the routes (``origin/server``) held back from it, for ``/status``."""
        result: dict[str, list[str]] = {}
        for peer_id, origin, server in sorted(self.held_back):
            result.setdefault(peer_id, []).append(f"{origin}/{server}")
        return result

    # -- what this node's clients see -----------------------------------------------------------

    def imported_view(self, best: Mapping[Key, tuple[Route, str | None]]) -> Mapping[Key, tuple[Route, str | None]]:
        """``best`` with each route learned from a peer trimmed to that peer's ``import`` (the same
        trimmed copy while the route stays the same, so the catalog reuses its entries)."""
        view: dict[Key, tuple[Route, str | None]] | None = None
        kept: dict[tuple[str, Key], tuple[Route, Route]] = {}
        for key, (route, via) in best.items():
            if via is None:
                continue
            policy = self._policy_for(via)
            rules = policy.import_rules if policy is not None else None
            if rules is None or rules.whole(route.server):
                continue
            held = self._imported.get((via, key))
            if held is not None and held[0] is route:
                trimmed: Route | None = held[1]
            else:
                trimmed = self.trimmed(route, rules)
            if trimmed is None:
                continue
            kept[(via, key)] = (route, trimmed)
            if view is None:
                view = dict(best)
            view[key] = (trimmed, via)
        self._imported = kept
        return best if view is None else view
