"""What one server claims in the exposed catalog, kept between rebuilds while its routes stay the same.

:class:`fednode._federation._catalog.Catalog` rebuilds the exposed entries whenever the best routes
change. Building an entry (its exposed name, a copy of its definition under that name) is most of the
cost of a rebuild, and a route update from a peer usually changes a few servers out of many: a
:class:`ServerClaim` holds the entries of one server's catalog, built once from its replicas, and is
reused as long as they are the same routes in the same order. Resolving name conflicts between servers
is left to the catalog (it depends on every server), which does it with these prebuilt entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from .._config._export_rules import NAMED_KINDS
from ._name_policy import route_names
from ._routes import KINDS, Item, Route, item_name, unpacked

#: Replicas of one server, nearest first: each route and the peer it goes through (None: attached here).
Replicas = Sequence[tuple[Route, "str | None"]]


@attrs.frozen
class Entry:
    """One item a client sees: a tool, prompt, resource or template with its exposed name."""

    kind: str
    exposed: str
    name: str
    server: str
    #: the definition as shown, or a packed one (JSON text, shown under :attr:`exposed` once parsed)
    source: Item = attrs.field(eq=False, repr=False)
    origins: tuple[str, ...] = ()

    def same_as(self, other: Entry) -> bool:
        """Whether a client sees ``other`` (an entry under the same exposed name) as it sees this one."""
        if self.origins != other.origins or self.exposed != other.exposed:
            return False
        if isinstance(self.source, str) and isinstance(other.source, str) and self.source == other.source:
            return True  # the same packed definition (parsing them would tell the same)
        return self.definition == other.definition

    @property
    def definition(self) -> dict[str, Any]:
        """The definition as a client sees it (a new object each time for a packed one)."""
        if not isinstance(self.source, str):
            return self.source
        shown = unpacked(self.source)
        if self.kind in ("tools", "prompts"):
            shown["name"] = self.exposed
        return shown


def replicas_signature(replicas: Replicas) -> tuple[tuple[int, str, str, str | None], ...]:
    """What a server's entries depend on: each replica's catalog (by identity: a route's catalog is
    never changed in place, a new advertisement brings a new one), prefix, origin and next hop, in order."""
    return tuple((id(route.catalog), route.prefix, route.origin, via) for route, via in replicas)


class ServerClaim:
    """The items one server offers, with their entries as exposed under their own names (built once).

    Args:
        server: the server id.
        replicas: its routes, nearest first (the nearest one's catalog and prefix are used).
    """

    def __init__(self, server: str, replicas: Replicas) -> None:
        nearest = replicas[0][0]
        self.server = server
        self.origin = nearest.origin
        self.origins = tuple(route.origin for route, _ in replicas)
        self.signature = replicas_signature(replicas)
        # The catalogs the signature names by identity: held, so that no other can take their ids.
        self._catalogs = tuple(route.catalog for route, _ in replicas)
        #: kind -> (exposed name, name, definition) of each item, in the catalog's order
        self.items: dict[str, list[tuple[str, str, Item]]] = {}
        #: kind -> exposed name -> entry, for all items of the kind; None when two of them share an
        #: exposed name (the catalog then resolves them one by one)
        self.plain: dict[str, dict[str, Entry] | None] = {}
        self._made: dict[tuple[str, int, str], Entry] = {}
        # kind -> name -> the origins of the replicas that have it, for kinds whose replicas differ
        # (one reached through a peer whose ``import`` leaves some out, say): a call for an item
        # goes only to the replicas that offer it.
        self._holders: dict[str, dict[str, tuple[str, ...]]] = {}
        if len(replicas) > 1:
            for kind in NAMED_KINDS:
                held = [(route.origin, set(route_names(route, kind))) for route, _ in replicas]
                if any(offered != held[0][1] for _, offered in held[1:]):
                    holders: dict[str, list[str]] = {}
                    for origin, offered in held:
                        for item in offered:
                            if item is not None:
                                holders.setdefault(item, []).append(origin)
                    self._holders[kind] = {name: tuple(origins) for name, origins in holders.items()}
        for kind in KINDS:
            items: list[tuple[str, str, Item]] = []
            names = nearest.names.get(kind) if nearest.names is not None else None  # kept when packed
            for index, definition in enumerate(nearest.catalog.get(kind, ())):
                name = names[index] if names is not None else item_name(kind, unpacked(definition))
                if name is None:
                    continue
                exposed = f"{nearest.prefix}__{name}" if kind in ("tools", "prompts") and nearest.prefix else name
                items.append((exposed, name, definition))
            self.items[kind] = items
            plain = {exposed: self.entry(kind, index, exposed) for index, (exposed, _, _) in enumerate(items)}
            self.plain[kind] = plain if len(plain) == len(items) else None

    def same(self, replicas: Replicas) -> bool:
        """Whether these are the replicas this claim was built from."""
        return replicas_signature(replicas) == self.signature

    def entry(self, kind: str, index: int, exposed: str) -> Entry:
        """The entry of item ``index`` of ``kind`` exposed as ``exposed`` (built once, then reused)."""
        made = self._made.get((kind, index, exposed))
        if made is None:
            _, name, definition = self.items[kind][index]
            source: Item = definition  # a packed one is shown under its exposed name when parsed
            if not isinstance(definition, str):
                source = dict(definition)
                if kind in ("tools", "prompts"):
                    source["name"] = exposed
            holders = self._holders.get(kind)
            origins = holders.get(name, self.origins) if holders is not None else self.origins
            made = self._made[(kind, index, exposed)] = Entry(
                kind=kind, exposed=exposed, name=name, server=self.server, source=source, origins=origins)
        return made
