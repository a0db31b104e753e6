"""What one server claims in the exposed catalog, kept between rebuilds while its routes stay the same.

:class:`fednode._federation._catalog.Catalog` rebuilds the exposed entries whenever the best routes
change. Building an entry (its exposed name, a copy of its definition under that name) is most of the
cost of a rebuild, and a route update from a peer usually changes a few servers out of many: a
:class:`ServerClaim` holds the entries of one server's catalog, built once from its replicas, and is
reused as long as they are the same routes in the same order. Resolving name conflicts between servers
is left to the catalog (it depends on every server), which does it with these prebuilt entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._routes import KINDS, Route

#: Replicas of one server, nearest first: each route and the peer it goes through (None: attached here).
Replicas = Sequence[tuple[Route, "str | None"]]


@attrs.frozen
class Entry:
    """One item a client sees: a tool, prompt, resource or template with its exposed name."""

    kind: str
    exposed: str
    name: str
    server: str
    definition: dict[str, Any] = attrs.field(eq=False, repr=False)
    origins: tuple[str, ...] = ()


def item_name(kind: str, definition: Mapping[str, Any]) -> str | None:
    """The name a definition of ``kind`` is known by (a URI for resources, a URI template for templates)."""
    key = "uri" if kind == "resources" else "uriTemplate" if kind == "resourceTemplates" else "name"
    value = definition.get(key)
    return value if isinstance(value, str) else None


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
        self.items: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
        #: kind -> exposed name -> entry, for all items of the kind; None when two of them share an
        #: exposed name (the catalog then resolves them one by one)
        self.plain: dict[str, dict[str, Entry] | None] = {}
        self._made: dict[tuple[str, int, str], Entry] = {}
        for kind in KINDS:
            items: list[tuple[str, str, Mapping[str, Any]]] = []
            for definition in nearest.catalog.get(kind, ()):
                name = item_name(kind, definition)
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
            shown = dict(definition)
            if kind in ("tools", "prompts"):
                shown["name"] = exposed
            made = self._made[(kind, index, exposed)] = Entry(
                kind=kind, exposed=exposed, name=name, server=self.server, definition=shown, origins=self.origins)
        return made
