"""The catalog a client sees: exposed names built from the best routes, with name conflicts resolved.

Replicas (the same server id on several nodes) merge into one entry, nearest first. When two
different servers claim one exposed name, a server attached to this node keeps it, then the one
that claimed it first; the other is exposed with its owning node's id in front (tools, prompts) or
not at all (resources, templates), and the conflict is reported. Names that left with their
server's last route are remembered for a while (:mod:`fednode._federation._withdrawn`), so a client asking for
one hears why it is unreachable rather than that it is unknown. Tools and prompts whose definitions
changed since they were pinned (:mod:`fednode._federation._pins`) are held: left out, and refused by name.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Collection, Generator, Mapping
from typing import Any

from .._errors import (
    DEFINITION_HELD,
    METHOD_NOT_FOUND,
    NODE_UNREACHABLE,
    SERVER_UNAVAILABLE,
    UNKNOWN_NAME,
    ForwardError,
)
from ._claims import Entry, ServerClaim
from ._pacer import drain
from ._pins import Held, Pinning
from ._routes import KINDS, Key, Route, item_name
from ._withdrawn import WithdrawnNames, template_regex

__all__ = ["Catalog", "Entry", "HeldEntry", "item_name"]

#: Tools whose unpacked input schema is kept (those called most recently; bounded).
_SCHEMAS_KEPT = 1024

HeldEntry = tuple[Entry, tuple[Held, ...]]
"""A held item: its entry as it would be listed, and why it is held (one :class:`Held` per replica that changed)."""

#: Entries compared between two pauses of a paced rebuild (see :meth:`Catalog.rebuilding`).
CHECK_STEP = 2000


class Catalog:
    """The exposed entries of one node, rebuilt from the best routes whenever they change.

    Args:
        node_id: this node's id (its servers' entries have it among their origins).
        log: where conflicts are logged.
        withdrawn: where names that left with their server's last route are remembered.
        incremental: reuse the entries of servers whose routes did not change since the last rebuild
            (:class:`fednode._federation._claims.ServerClaim`); False builds every entry afresh each
            time (the reference the incremental rebuild is tested against).
        pins: the pinned definitions: items whose definitions changed are held (None: nothing is pinned).
    """

    def __init__(self, node_id: str, log: Any, withdrawn: WithdrawnNames | None = None, *,
                 incremental: bool = True, pins: Pinning | None = None) -> None:
        self.node_id = node_id
        self.incremental = incremental
        self.pins = pins
        #: per kind: the items held (left out of :attr:`entries`) by exposed name, each with why
        self.held: dict[str, dict[str, HeldEntry]] = {kind: {} for kind in KINDS}
        # server id -> its entries as of the last rebuild (servers no longer routed are dropped)
        self._servers: dict[str, ServerClaim] = {}
        self.log = log
        self.withdrawn = withdrawn if withdrawn is not None else WithdrawnNames()
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: list[str] = []
        # exposed tool name -> (its entry, the input schema unpacked from it): see tool_input_schema
        self._schemas: dict[str, tuple[Entry, Mapping[str, Any] | None]] = {}
        # server id -> when its exposed names were first claimed (an ever-increasing number): older
        # claims keep their names when another server claims the same ones
        self._claimed: dict[str, int] = {}
        self._claims = itertools.count()
        # (server keeping the names, other server) -> the contested names last logged (catalog.conflict)
        self._conflict_sets: dict[tuple[str, str], tuple[str, ...]] = {}
        self._templates: list[tuple[re.Pattern[str], Entry]] = []
        #: how many rebuilds were applied (a paced one that finds another applied meanwhile is void)
        self.generation = 0

    def rebuild(self, best: Mapping[Key, tuple[Route, str | None]], rtts: Mapping[str, float],
                attached: Collection[str]) -> set[str]:
        """Rebuild the entries from ``best`` (see :meth:`fednode._federation._routing.RoutingTable.update`).

        Args:
            rtts: round-trip time per peer (orders replicas; unknown counts as infinite).
            attached: the servers attached to this node now (a name of one removed from it on
                purpose is not remembered as withdrawn).

        Returns:
            The kinds whose entries changed.
        """
        changed = drain(self.rebuilding(best, rtts, attached))
        assert changed is not None  # nothing else ran meanwhile
        return changed

    def rebuilding(self, best: Mapping[Key, tuple[Route, str | None]], rtts: Mapping[str, float],
                   attached: Collection[str]) -> Generator[None, None, set[str] | None]:
        """:meth:`rebuild`, a server at a time: a generator that yields between servers (see
        :class:`~fednode._federation._pacer.Pacer`), and while comparing the entries with the last
        ones, and returns the kinds that changed, or None if another rebuild finished meanwhile
        (then this one changed nothing: ``best`` may be out of date). The entries are replaced at
        the end, in one step.
        """
        generation = self.generation
        before = self.entries  # never changed in place: a rebuild makes new dictionaries
        built = yield from self._building(best, rtts)
        entries = built[0]
        changed: set[str] = set()
        for kind in KINDS:
            yield
            old, new = before[kind], entries[kind]
            if old.keys() != new.keys():
                changed.add(kind)
                continue
            # An entry reused from the last rebuild (the same object) is unchanged: only new ones are compared.
            for index, (name, entry) in enumerate(new.items()):
                if index % CHECK_STEP == CHECK_STEP - 1:
                    yield
                if entry is not old[name] and not entry.same_as(old[name]):
                    changed.add(kind)
                    break
        if self.generation != generation:
            return None
        self._commit(*built)
        self._note_withdrawn(before, {server for _origin, server in best}, attached)
        return changed

    def _building(self, best: Mapping[Key, tuple[Route, str | None]], rtts: Mapping[str, float]
                  ) -> Generator[None, None, tuple[dict[str, dict[str, Entry]], dict[str, ServerClaim],
                                                   dict[str, int], list[str], dict[tuple[str, str], list[str]],
                                                   dict[str, dict[str, HeldEntry]]]]:
        # Group by server id: the same id on several nodes is one server with replicas.
        by_server: dict[str, list[tuple[Route, str | None]]] = {}
        for route, via in best.values():
            by_server.setdefault(route.server, []).append((route, via))
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        held_items: dict[str, dict[str, HeldEntry]] = {kind: {} for kind in KINDS}
        conflicts: list[str] = []
        contested: dict[tuple[str, str], list[str]] = {}  # (keeps the names, the other) -> contested names
        # Who keeps a contested name: a server attached here, then the one that claimed it first
        # (names already given stay put), then the server id. A peer cannot take over a name.
        claimed = {sid: order for sid, order in self._claimed.items() if sid in by_server}
        for server_id in sorted(by_server.keys() - claimed.keys()):
            claimed[server_id] = next(self._claims)
        order = sorted(by_server, key=lambda sid: (all(via is not None for _, via in by_server[sid]),
                                                   claimed[sid], sid))
        inf = float("inf")
        claims: dict[str, ServerClaim] = {}
        for server_id in order:
            yield
            # Nearest first: fewest hops, then the lowest RTT of the first hop (local is 0), then a stable order.
            replicas = sorted(by_server[server_id], key=lambda rv: (
                len(rv[0].path), 0.0 if rv[1] is None else rtts.get(rv[1], inf), rv[0].origin))
            held = (yield from self.pins.checking(replicas)) if self.pins is not None else {}
            claim = self._servers.get(server_id) if self.incremental else None
            if claim is None or not claim.same(replicas):
                claim = ServerClaim(server_id, replicas)
            claims[server_id] = claim
            for kind in KINDS:
                taken = entries[kind]
                plain = claim.plain[kind] if self.incremental else None
                if plain is not None and not held and taken.keys().isdisjoint(plain):
                    taken.update(plain)  # no name contested: every item under its own name, in order
                    continue
                for index, (exposed, name, _definition) in enumerate(claim.items[kind]):
                    if exposed in taken:
                        other = taken[exposed]
                        contested.setdefault((other.server, server_id), []).append(exposed)
                        if kind in ("resources", "resourceTemplates"):
                            conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                             f"{other.server!r} serves it")
                            continue
                        renamed = f"{claim.origin}__{exposed}"
                        if renamed in taken:
                            conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                             f"{renamed!r} is taken too, so the second is not exposed")
                            continue
                        conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                         f"the second is exposed as {renamed!r}")
                        exposed = renamed
                    taken[exposed] = claim.entry(kind, index, exposed)
                    if held and (kind, name) in held:
                        held_items[kind][exposed] = (taken[exposed], held[(kind, name)])
        # Held items keep their names (others are named as if they were listed), and are left out.
        for kind, hidden in held_items.items():
            for exposed in hidden:
                del entries[kind][exposed]
        if self.pins is not None:
            self.pins.retain(best.keys())
        return entries, claims, claimed, conflicts, contested, held_items

    def _commit(self, entries: dict[str, dict[str, Entry]], claims: dict[str, ServerClaim], claimed: dict[str, int],
                conflicts: list[str], contested: dict[tuple[str, str], list[str]],
                held: dict[str, dict[str, HeldEntry]]) -> None:
        self.generation += 1
        self._log_held(held)
        self.held = held
        self._servers = claims
        self._claimed = claimed
        self._log_conflicts(contested, conflicts)
        self.conflicts = conflicts
        self.entries = entries
        compiled = {id(entry): pattern for pattern, entry in self._templates}  # an entry kept keeps its regex
        self._templates = [(compiled.get(id(entry)) or template_regex(name), entry)
                           for name, entry in entries["resourceTemplates"].items()]

    def _log_conflicts(self, contested: Mapping[tuple[str, str], list[str]], conflicts: list[str]) -> None:
        """One warning per pair of servers claiming the same names, when that set of names is new or changed.

        A catalog update that leaves a pair's contested names as they were logs nothing, so a start-up
        with many overlapping names (or every later update) does not flood the log.
        """
        sets = {pair: tuple(sorted(set(names))) for pair, names in contested.items()}
        for (keeper, other), names in sorted(sets.items()):
            if self._conflict_sets.get((keeper, other)) == names:
                continue
            example = next((c for c in conflicts if f"servers {keeper!r} and {other!r}" in c), "")
            self.log.warning("catalog.conflict", servers=[keeper, other], kept_by=keeper, count=len(names),
                             names=list(names[:20]), example=example)
        self._conflict_sets = sets

    def _log_held(self, held: Mapping[str, Mapping[str, HeldEntry]]) -> None:
        """One warning per rebuild that holds items not held before (at most 20 of them named)."""
        new = sorted((kind, name) for kind in ("tools", "prompts") for name in held[kind].keys() - self.held[kind])
        if new:
            kind, name = new[0]
            self.log.warning("pins.held", count=len(new), names=[n for _k, n in new[:20]],
                             example=held[kind][name][1][0].message(name))

    def _note_withdrawn(self, before: Mapping[str, Mapping[str, Entry]], routed: Collection[str],
                        attached: Collection[str]) -> None:
        """Remember the names that left the catalog with their server's last route; forget those back.

        A name that left while its server is still routed was removed by the server itself: it is
        unknown now, and not remembered.
        """
        for kind in KINDS:
            now = self.entries[kind]
            self.withdrawn.forget_all(kind, now.keys() - before[kind].keys())
            gone: dict[tuple[str, tuple[str, ...], bool], list[str]] = {}
            for name in before[kind].keys() - now.keys():
                entry = before[kind][name]
                if entry.server in routed:
                    continue
                local = self.node_id in entry.origins
                if local and entry.server not in attached:
                    continue  # removed from this node on purpose, not down
                gone.setdefault((entry.server, entry.origins, local), []).append(name)
            self.withdrawn.remember_many(kind, [(names, server, origins, local)
                                                for (server, origins, local), names in gone.items()])

    # -- looking things up --------------------------------------------------------------------

    def list_items(self, kind: str, allowed: Callable[[Entry], bool] | None = None) -> list[dict[str, Any]]:
        """The exposed definitions of one kind (those ``allowed`` says yes to), sorted by exposed name."""
        return [entry.definition for _, entry in sorted(self.entries.get(kind, {}).items())
                if allowed is None or allowed(entry)]

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of an exposed tool (None: no such tool, or it has none)."""
        entry = self.entries["tools"].get(name)
        if entry is None:
            return None
        known = self._schemas.get(name)
        if known is not None and known[0] is entry:
            return known[1]
        # Asked for every call of the tool: a packed definition is parsed once per entry, not each time
        # (the same object is returned while the entry stands, so callers can cache what they derive).
        schema = entry.definition.get("inputSchema")
        shown = schema if isinstance(schema, Mapping) else None
        if len(self._schemas) >= _SCHEMAS_KEPT:
            self._schemas.clear()
        self._schemas[name] = (entry, shown)
        return shown

    def resolve(self, method: str, params: Mapping[str, Any]) -> tuple[Entry, dict[str, Any]]:
        """Find the entry a client request is about; returns it and the params to send upstream.

        Raises:
            ForwardError: unknown name or URI (-32602); a name withdrawn recently with its server's
                last route: -32050 (owning node unreachable) or -32051 (server attached here down),
                naming the server, its node and since when.
        """
        upstream_params = dict(params)
        if method in ("tools/call", "prompts/get"):
            kind = "tools" if method == "tools/call" else "prompts"
            name = params.get("name")
            entry = self.entries[kind].get(name) if isinstance(name, str) else None
            if entry is None:
                raise (self._held_error(kind, name) or self._withdrawn_error(kind, name)
                       or ForwardError(UNKNOWN_NAME, f"Unknown {kind[:-1]}: {name}"))
            upstream_params["name"] = entry.name
            return entry, upstream_params
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            if isinstance(uri, str):
                entry = self.entries["resources"].get(uri) or self._template_for(uri)
                if entry is not None:
                    return entry, upstream_params
            raise self._withdrawn_error("resources", uri) or ForwardError(UNKNOWN_NAME, f"Unknown resource: {uri}",
                                                                          {"uri": uri})
        if method == "completion/complete":
            ref = params.get("ref")
            if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
                entry = self.entries["prompts"].get(ref.get("name", ""))
                if entry is not None:
                    upstream_params["ref"] = {**ref, "name": entry.name}
                    return entry, upstream_params
                prompt = ref.get("name")
                error = self._held_error("prompts", prompt) or self._withdrawn_error("prompts", prompt)
                if error is not None:
                    raise error
            if isinstance(ref, dict) and ref.get("type") == "ref/resource":
                uri = ref.get("uri", "")
                entry = self.entries["resourceTemplates"].get(uri) or self.entries["resources"].get(uri)
                if entry is not None:
                    return entry, upstream_params
                error = self._withdrawn_error("resourceTemplates", uri) or self._withdrawn_error("resources", uri)
                if error is not None:
                    raise error
            raise ForwardError(UNKNOWN_NAME, f"Unknown completion reference: {json.dumps(ref)[:200]}")
        raise ForwardError(METHOD_NOT_FOUND, f"Method not forwarded: {method}")

    def held_items(self, *, definitions: bool = False) -> list[dict[str, Any]]:
        """The tools and prompts held because their definitions changed (see :mod:`._pins`), by exposed
        name; with ``definitions``, each with the definition it is held with, as a client would see it."""
        return [{**item.to_json(exposed), **({"definition": entry.definition} if definitions else {})}
                for kind in ("tools", "prompts")
                for exposed, (entry, items) in sorted(self.held[kind].items()) for item in items]

    def accept_held(self, names: list[str] | None) -> list[dict[str, Any]]:
        """Pin the definitions the held items exposed as ``names`` (None: all of them) have now: an
        operator accepted them. They are listed at the next rebuild (the caller's to start).

        Returns:
            The items accepted (as :meth:`held_items` shows them).

        Raises:
            LookupError: a name that is not held (saying whether it is listed, or unknown).
        """
        chosen: list[tuple[str, Held]] = []
        for name in names if names is not None else sorted({*self.held["tools"], *self.held["prompts"]}):
            found = [(name, item) for kind in ("tools", "prompts") for item in self.held[kind].get(name, (None, ()))[1]]
            if not found:
                listed = any(name in self.entries[kind] for kind in ("tools", "prompts"))
                raise LookupError(f"{name!r} is not held (it is listed and callable)" if listed else
                                  f"no tool or prompt named {name!r} is held here (fednode pins list shows those held)")
            chosen += found
        if chosen and self.pins is not None:
            self.pins.accept(item for _name, item in chosen)
        return [item.to_json(name) for name, item in chosen]

    def _template_for(self, uri: str) -> Entry | None:
        for pattern, entry in self._templates:
            if pattern.match(uri):
                return entry
        return None

    def _held_error(self, kind: str, name: object) -> ForwardError | None:
        """The error for a held tool or prompt, naming what changed (None: not held)."""
        found = self.held[kind].get(name) if isinstance(name, str) else None
        if found is None:
            return None
        held = found[1]
        changed = sorted({field for item in held for field in item.changed})
        return ForwardError(DEFINITION_HELD, held[0].message(str(name)),
                            {"name": name, "server": held[0].server, "origin": held[0].origin, "changed": changed})

    def _withdrawn_error(self, kind: str, name: object) -> ForwardError | None:
        """The unreachable error for a name withdrawn recently (None: not one of those)."""
        if not isinstance(name, str):
            return None
        found = self.withdrawn.for_uri(name) if kind == "resources" else self.withdrawn.get(kind, name)
        if found is None:
            return None
        message, data = found.describe(self.withdrawn.now())
        return ForwardError(SERVER_UNAVAILABLE if found.local else NODE_UNREACHABLE, message, data)
