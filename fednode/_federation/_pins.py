"""Pinned tool and prompt definitions ("rug pull" protection), without I/O.

A node records a hash of every tool and prompt definition it imports (from a peer's routes or a
server attached here), per (owning node, server id, kind, name): its *pin*. The first definition
seen is pinned (trust on first use). When a route later brings a different definition, the item is
*held*: :class:`fednode._federation._catalog.Catalog` leaves it out of the lists and refuses calls of it,
naming the fields that changed, until an operator accepts the new definition (:meth:`Pinning.accept`)
or the peer or server it comes through is configured with ``pin = false`` (its definitions are then
re-pinned as they come). An item that goes away keeps its pin, so one that comes back changed is held.

Each field is hashed on its own (:data:`FIELDS`), so a held item says what changed. Hashing happens
once per catalog a route brings (a new advertisement brings a new catalog object), and a definition
whose JSON text is the one pinned is not parsed at all: a route of 16,000 tools re-sent unchanged
costs one short hash of each text. The pins are bounded (:data:`MAX_PINS`), so a peer renaming its tools without end
cannot grow them (nor the file they are kept in) without bound.

Persistence is the node's (:mod:`fednode._node._pins`): :meth:`PinStore.snapshot` with
:func:`pins_json`, and :meth:`PinStore.load`, are the file's contents, and ``on_change`` tells the
node to save.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from typing import Any

import attrs

from .._errors import StateError
from ._routes import Item, Key, Route, item_name, packed_item, unpacked

__all__ = ["FIELDS", "MAX_PINS", "Held", "PinStore", "Pinning", "field_hashes", "pin_key"]

#: The fields of a definition that are pinned, per kind (the name is part of the pin's key).
FIELDS: Mapping[str, tuple[str, ...]] = {
    "tools": ("title", "description", "inputSchema", "outputSchema", "annotations"),
    "prompts": ("title", "description", "arguments"),
}
#: Bytes of each hash (of a definition's text, and of each field).
HASH = 8
#: Pins kept at most; beyond, those of items no route offers now go first (see :meth:`PinStore.trim`).
MAX_PINS = 100_000
#: Definitions hashed (or compared) between two pauses of a paced catalog rebuild.
CHECK_STEP = 500
#: The pins file's format name and version.
FORMAT, VERSION = "fednode-pins", 1

_ABSENT = bytes(HASH)  # a field the definition does not have


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH).digest()


def text_hash(item: Item) -> bytes:
    """The hash of a definition's JSON text, as a route holds it (a shortcut: the same text, the same fields)."""
    return _digest(packed_item(item).encode())


#: JSON with sorted keys: the same value hashes the same however its keys were ordered (one encoder,
#: made once: ``json.dumps`` with options builds a new one at each call)
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode


def field_hashes(kind: str, definition: Mapping[str, Any]) -> bytes:
    """The hashes of the pinned fields of a definition of ``kind``, one after the other (see :data:`FIELDS`)."""
    return b"".join(_digest(_canonical(definition[field]).encode()) if field in definition else _ABSENT
                    for field in FIELDS[kind])


def changed_fields(kind: str, pinned: bytes, current: bytes) -> tuple[str, ...]:
    """The fields whose hashes differ between two records of ``kind`` (text hash first, then the fields)."""
    return tuple(field for index, field in enumerate(FIELDS[kind])
                 if pinned[HASH * (index + 1):HASH * (index + 2)] != current[HASH * (index + 1):HASH * (index + 2)])


def _listed(words: Collection[str]) -> str:
    items = list(words)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@attrs.frozen
class Held:
    """An item held because its definition changed since it was pinned.

    Attributes:
        kind: ``tools`` or ``prompts``.
        name: its name at its server.
        server: the server id.
        origin: the node the server is attached to.
        changed: the fields that changed (see :data:`FIELDS`).
        record: the hashes of the definition it is held with: what accepting it pins (a definition
            that changed again since is held again).
    """

    kind: str
    name: str
    server: str
    origin: str
    changed: tuple[str, ...]
    record: bytes = attrs.field(default=b"", eq=False, repr=False)

    def message(self, exposed: str) -> str:
        """Why a call of ``exposed`` (this item's exposed name) is refused, and what accepts it."""
        what = f"its {_listed(self.changed)} changed" if self.changed else "its definition changed"
        return (f"{self.kind[:-1]} {exposed!r} (server {self.server} on {self.origin}) is held: {what} since it "
                f"was pinned; an operator must accept it: fednode pins accept {exposed}")

    def to_json(self, exposed: str) -> dict[str, Any]:
        """As ``/pins`` and ``/status`` show it."""
        return {"kind": self.kind, "name": exposed, "original": self.name, "server": self.server,
                "origin": self.origin, "changed": list(self.changed)}


def pin_key(server: str, kind: str, name: str) -> bytes:
    """What a pin is kept under, beside its owning node: a hash of the server id, kind and name
    (16 bytes, however long the names: a peer's long names cost no more to remember)."""
    return hashlib.blake2b(f"{server}\0{kind}\0{name}".encode(), digest_size=16).digest()


class PinStore:
    """The pins: per owning node, per :func:`pin_key`, the hashes of the pinned definition (its *record*:
    the hash of its text, then those of its fields).

    Each node's pins are kept oldest first (a pin made again moves to the end), which is the order
    :meth:`trim` drops them in.

    Args:
        limit: pins kept at most (see :meth:`trim`).
        on_change: called after pins were added or changed (the node saves them soon after).
    """

    def __init__(self, *, limit: int = MAX_PINS, on_change: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.on_change = on_change
        #: owning node -> pin key -> record, oldest first
        self.pins: dict[str, dict[bytes, bytes]] = {}
        self._count = 0
        #: grows whenever a pin changes in a way that may change what is held (accepted, dropped)
        self.generation = 0
        #: grows at every change (the node saves when it differs from what it saved)
        self.changes = 0

    def __len__(self) -> int:
        return self._count

    def get(self, origin: str, key: bytes) -> bytes | None:
        """The record pinned for ``key`` of ``origin`` (None: never seen, or dropped)."""
        group = self.pins.get(origin)
        return group.get(key) if group is not None else None

    def put(self, origin: str, key: bytes, record: bytes) -> None:
        """Pin ``record`` for ``key`` of ``origin`` (first sight, or re-pinned without holding anything)."""
        group = self.pins.setdefault(origin, {})
        if group.pop(key, None) is None:
            self._count += 1
        group[key] = record
        self.changes += 1

    def accept(self, records: Iterable[tuple[str, bytes, bytes]]) -> int:
        """Pin these ``(origin, key, record)`` (an operator accepted them); returns how many."""
        count = 0
        for origin, key, record in records:
            self.put(origin, key, record)
            count += 1
        if count:
            self.generation += 1
            self.on_change()
        return count

    def changed(self) -> None:
        """Tell the owner that pins were added (after a batch of :meth:`put`)."""
        self.on_change()

    def trim(self, present: Collection[tuple[str, bytes]], known: Collection[str]) -> int:
        """Drop pins beyond :attr:`limit` (down to nine tenths of it, so trims are rare); returns how many.

        Those of items no route offers now (not in ``present``) go first: of nodes not in ``known``
        before the others, oldest first. The pin of an item offered now goes only when such items
        alone are over the limit (it is then pinned anew when next seen).
        """
        if self._count <= self.limit:
            return 0
        excess = self._count - self.limit * 9 // 10
        dropped = 0
        offered_dropped = False
        rounds = (([o for o in self.pins if o not in known], False), ([o for o in self.pins if o in known], False),
                  (list(self.pins), True))
        for origins, offered_too in rounds:
            for origin in origins:
                group = self.pins.get(origin, {})
                for key in list(group):
                    if dropped == excess:
                        break
                    if offered_too or (origin, key) not in present:
                        del group[key]
                        dropped += 1
                        offered_dropped |= offered_too
                if not group:
                    self.pins.pop(origin, None)
        if offered_dropped:
            self.generation += 1  # pins of items offered now went: they are looked at again
        self._count -= dropped
        self.changes += 1
        self.on_change()
        return dropped

    # -- the file's contents ----------------------------------------------------------------

    def snapshot(self) -> list[tuple[str, list[tuple[bytes, bytes]]]]:
        """The pins as they are now (cheap; :func:`pins_json` makes the file's text of it, off the event loop)."""
        return [(origin, list(group.items())) for origin, group in self.pins.items()]

    def to_json(self) -> bytes:
        """The pins as the file holds them."""
        return pins_json(self.snapshot())

    def load(self, data: bytes, source: str) -> None:
        """Replace the pins with those of a file's contents (see :meth:`to_json`).

        Raises:
            StateError: naming ``source`` and what is wrong with it.
        """

        def bad(problem: str) -> StateError:
            return StateError(f"pins file {source}: {problem}; move it away to start afresh (every "
                              "definition is then pinned anew)")

        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise bad(f"not valid JSON ({str(exc)[:100]})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise bad(f"not a pins file (no \"format\": \"{FORMAT}\")")
        if document.get("version") != VERSION:
            raise bad(f"version {document.get('version')!r} is not {VERSION}")
        nodes = document.get("pins")
        if not isinstance(nodes, dict):
            raise bad("\"pins\" must be an object (node id: list of pins)")
        lengths = {HASH * (1 + len(fields)) for fields in FIELDS.values()}
        pins: dict[str, dict[bytes, bytes]] = {}
        count = 0
        for origin, rows in nodes.items():
            if not isinstance(rows, list):
                raise bad(f"pins[{origin!r}] must be a list")
            group = pins[origin] = {}
            for index, row in enumerate(rows):
                where = f"pins[{origin!r}][{index}]"
                if not (isinstance(row, str) and row.count(":") == 1):
                    raise bad(f"{where} is not \"key:hashes\"")
                try:
                    key, record = (bytes.fromhex(part) for part in row.split(":"))
                except ValueError:
                    raise bad(f"{where} is not hexadecimal") from None
                if len(key) != 16 or len(record) not in lengths:
                    raise bad(f"{where} has the wrong length")
                group[key] = record
            count += len(group)
        self.pins, self._count = pins, count
        self.generation += 1


def pins_json(pins: Iterable[tuple[str, Iterable[tuple[bytes, bytes]]]]) -> bytes:
    """The pins file's contents for ``pins`` (see :meth:`PinStore.snapshot`): per node, its pins oldest first."""
    nodes = ",\n".join(f"{json.dumps(origin, ensure_ascii=False)}: [\n"
                       + ",\n".join(f'"{key.hex()}:{record.hex()}"' for key, record in group) + "\n]"
                       for origin, group in pins)
    head = json.dumps({"format": FORMAT, "version": VERSION, "fields": dict(FIELDS)})
    return f'{head[:-1]}, "pins": {{\n{nodes}\n}}}}\n'.encode()


@attrs.define
class _RouteState:
    """What the pins say about one route's catalog, kept while the catalog is the same object."""

    catalog: Mapping[str, tuple[Item, ...]]
    #: (kind, name) -> the record of its definition now
    records: dict[tuple[str, str], bytes]
    held: dict[tuple[str, str], Held]
    generation: int
    enabled: bool


class Pinning:
    """The pins applied to routes: which items of a server's replicas are held (see :meth:`checking`).

    Args:
        store: the pins.
        node_id: this node's id (its pins count as a known node's when pins are dropped).
        enabled: ``enabled(via, server)``: whether the items of ``server`` reached through peer ``via``
            (None: attached here) are pinned (``pin`` of that peer or server); read at each check.
    """

    def __init__(self, store: PinStore, node_id: str,
                 enabled: Callable[[str | None, str], bool] = lambda via, server: True) -> None:
        self.store = store
        self.node_id = node_id
        self.enabled = enabled
        self._routes: dict[Key, _RouteState] = {}

    def checking(self, replicas: Iterable[tuple[Route, str | None]]
                 ) -> Generator[None, None, dict[tuple[str, str], tuple[Held, ...]]]:
        """Which items of one server are held, by (kind, name): a generator that yields every
        :data:`CHECK_STEP` definitions (see :class:`~fednode._federation._pacer.Pacer`).

        Items seen for the first time are pinned; an item is held when any replica offers it with
        a definition other than the one pinned for that replica's node.
        """
        found: dict[tuple[str, str], list[Held]] = {}
        added = self.store.changes
        for route, via in replicas:
            state = yield from self._state(route, self.enabled(via, route.server))
            for item, held in state.held.items():
                found.setdefault(item, []).append(held)
        if self.store.changes != added:
            if len(self.store) > self.store.limit:
                self.store.trim(set(self._present()), {self.node_id, *(origin for origin, _ in self._routes)})
            self.store.changed()
        return {item: tuple(held) for item, held in found.items()}

    def retain(self, keys: Collection[Key]) -> None:
        """Forget what is kept for routes not among ``keys`` (the routes in use now)."""
        for key in [key for key in self._routes if key not in keys]:
            del self._routes[key]

    def accept(self, held: Iterable[Held]) -> int:
        """Pin the definitions these items were held with; returns how many were pinned."""
        return self.store.accept((item.origin, pin_key(item.server, item.kind, item.name), item.record)
                                 for item in held if item.record)

    def _present(self) -> Generator[tuple[str, bytes], None, None]:
        for (origin, server), state in self._routes.items():
            for kind, name in state.records:
                yield origin, pin_key(server, kind, name)

    def _state(self, route: Route, enabled: bool) -> Generator[None, None, _RouteState]:
        state = self._routes.get(route.key)
        if state is None or state.catalog is not route.catalog:
            state = yield from self._hashing(route, enabled)
            self._routes[route.key] = state
        elif state.generation != self.store.generation or state.enabled != enabled:
            state.held = yield from self._comparing(route, state.records, enabled)
            state.generation, state.enabled = self.store.generation, enabled
        return state

    def _hashing(self, route: Route, enabled: bool) -> Generator[None, None, _RouteState]:
        """Hash a catalog new to this route, pin what is new, and find what is held."""
        generation = self.store.generation
        records: dict[tuple[str, str], bytes] = {}
        held: dict[tuple[str, str], Held] = {}
        count = 0
        for kind in FIELDS:
            names = route.names.get(kind) if route.names is not None else None
            for index, item in enumerate(route.catalog.get(kind, ())):
                count += 1
                if count % CHECK_STEP == 0:
                    yield
                name = names[index] if names is not None else item_name(kind, unpacked(item))
                if name is None or (kind, name) in records:
                    continue  # a name twice in one catalog: the first definition is the one pinned
                key = pin_key(route.server, kind, name)
                text = text_hash(item)
                pinned = self.store.get(route.origin, key)
                if pinned is not None and pinned[:HASH] == text:
                    records[(kind, name)] = pinned  # the text pinned: the same fields (not parsed)
                    continue
                record = records[(kind, name)] = text + field_hashes(kind, unpacked(item))
                self._compare(route, kind, name, key, record, pinned, enabled, held)
        return _RouteState(route.catalog, records, held, generation, enabled)

    def _comparing(self, route: Route, records: Mapping[tuple[str, str], bytes], enabled: bool
                   ) -> Generator[None, None, dict[tuple[str, str], Held]]:
        """Find what is held of a catalog hashed before, now that pins (or ``pin``) changed."""
        held: dict[tuple[str, str], Held] = {}
        for count, ((kind, name), record) in enumerate(records.items()):
            if count % CHECK_STEP == CHECK_STEP - 1:
                yield
            key = pin_key(route.server, kind, name)
            self._compare(route, kind, name, key, record, self.store.get(route.origin, key), enabled, held)
        return held

    def _compare(self, route: Route, kind: str, name: str, key: bytes, record: bytes, pinned: bytes | None,
                 enabled: bool, held: dict[tuple[str, str], Held]) -> None:
        """Pin ``record`` when nothing is pinned, ``pin`` is off, or only the text changed; else hold it."""
        if pinned is None or not enabled or pinned[HASH:] == record[HASH:]:
            if pinned != record:
                self.store.put(route.origin, key, record)
            return
        held[(kind, name)] = Held(kind, name, route.server, route.origin, changed_fields(kind, pinned, record), record)
