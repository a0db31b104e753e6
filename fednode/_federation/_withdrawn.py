"""A bounded memory of catalog names that were withdrawn recently, so a client can tell an outage from a typo.

When every route to a server goes (its node was stopped, killed or partitioned away, or the server stopped
answering), its tools, prompts, resources and templates leave the catalog, and a call naming one of them
would get the same "Unknown tool" (-32602) as a misspelt name. The federation remembers such names for a
while (:data:`WITHDRAWN_TTL`, at most :data:`MAX_WITHDRAWN` of them, the oldest forgotten first) and
answers a call of one of them with the unreachable error that names the server, its owning node and
since when. A name that comes back is forgotten at once. The names are held as hashes, a group
per server and time (what a peer's catalog held may be large, see :class:`WithdrawnNames`).
"""

from __future__ import annotations

import array
import bisect
import collections
import itertools
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import attrs
import trio

#: How long a withdrawn name is remembered (seconds).
WITHDRAWN_TTL = 600.0
#: How many withdrawn names are remembered at most, all kinds together (the oldest are forgotten first).
MAX_WITHDRAWN = 10_000
#: Withdrawn resource templates matched against a URI at most (each lookup tries them in turn).
MAX_WITHDRAWN_TEMPLATES = 256
#: Longer names are not remembered, so what the memory holds is bounded in bytes too (a peer chooses them).
MAX_REMEMBERED_NAME = 1024

_SINGULAR = {"tools": "tool", "prompts": "prompt", "resources": "resource", "resourceTemplates": "resource template"}


def template_regex(template: str) -> re.Pattern[str]:
    """A regex for an RFC 6570 level-1 URI template (``{var}`` matches one path segment or more)."""
    parts = re.split(r"(\{[^}]*\})", template)
    pattern = "".join("[^?#]+?" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(f"^{pattern}$")


@attrs.frozen
class Withdrawn:
    """One remembered name: what it was, whose, and when it left the catalog.

    Attributes:
        kind: ``tools``, ``prompts``, ``resources`` or ``resourceTemplates``.
        name: the exposed name (a URI or URI template for resources and templates).
        server: the server id that offered it.
        nodes: the node(s) that owned the server (nearest first).
        local: whether the server is attached to this node (it is down here, rather than unreachable).
        at: when it was withdrawn, on the Trio clock.
        wall: when it was withdrawn, as a Unix time (for the ISO timestamp in messages).
    """

    kind: str
    name: str
    server: str
    nodes: tuple[str, ...]
    local: bool
    at: float
    wall: float
    pattern: re.Pattern[str] | None = attrs.field(default=None, eq=False, repr=False)

    def describe(self, now: float) -> tuple[str, dict[str, object]]:
        """A message for the client and structured ``data`` for the error."""
        ago = max(0.0, now - self.at)
        since = datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        nodes = " or ".join(repr(n) for n in self.nodes)
        what = f"{_SINGULAR.get(self.kind, self.kind)} {self.name!r}"
        if self.local:
            state = "is down (it stopped answering)"
        else:
            state = f"is unreachable from here (node {nodes} is down, stopped or cut off)"
        message = (f"The {what} is unavailable: server {self.server!r} on node {nodes} {state}; its catalog was "
                   f"withdrawn {ago:.0f}s ago (since {since}). Retry later.")
        data: dict[str, object] = {"server": self.server, "node": self.nodes[0], "nodes": list(self.nodes),
                                   "kind": self.kind, "name": self.name, "since": since,
                                   "withdrawnSecondsAgo": round(ago, 1)}
        return message, data


@attrs.define(eq=False)
class _Group:
    """Names of one kind that one server's catalog lost at one time, as hashes (see :class:`WithdrawnNames`)."""

    kind: str
    server: str
    nodes: tuple[str, ...]
    local: bool
    at: float
    wall: float
    #: ``hash((kind, name))`` of each name, sorted
    hashes: array.array[int]


class WithdrawnNames:
    """Names withdrawn from the catalog recently, bounded by age and by count.

    Held compactly, as what a peer sent may be a large catalog: each group of names one server's
    catalog lost at one time (:meth:`remember_all`) is one record with the names' hashes in one
    array, and one sorted index finds a name's group; the names themselves are not kept (a lookup
    brings its own), but for resource templates, which are matched against URIs (at most
    :data:`MAX_WITHDRAWN_TEMPLATES`). Hashes are Python's own, salted per process, so a peer
    cannot choose names that collide; a collision would only make an unknown name's error say
    that a server is unreachable.

    Args:
        ttl: seconds a name is remembered.
        limit: names remembered at most (all kinds together); the oldest go first.
        clock: the monotonic clock (``trio.current_time`` by default; MockClock-friendly).
        wall_clock: the Unix time, for the timestamps in messages.
    """

    def __init__(self, *, ttl: float = WITHDRAWN_TTL, limit: int = MAX_WITHDRAWN,
                 clock: Callable[[], float] = trio.current_time, wall_clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._wall_clock = wall_clock
        # group id -> group, oldest first
        self._groups: collections.OrderedDict[int, _Group] = collections.OrderedDict()
        self._ids = itertools.count()
        # every remembered name's hash, sorted, and its group's id at the same index
        self._hashes: array.array[int] = array.array("q")
        self._owners: array.array[int] = array.array("q")
        # the templates among them (URI template -> entry, oldest first), matched against URIs
        self._templates: dict[str, Withdrawn] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def remember(self, kind: str, name: str, server: str, nodes: tuple[str, ...], *, local: bool) -> None:
        """Remember that ``name`` of ``kind`` (offered by ``server`` on ``nodes``) left the catalog now."""
        self.remember_all(kind, (name,), server, nodes, local=local)

    def remember_all(self, kind: str, names: Iterable[str], server: str, nodes: tuple[str, ...], *,
                     local: bool) -> None:
        """Remember that ``names`` of ``kind`` (offered by ``server`` on ``nodes``) left the catalog now.

        A name longer than :data:`MAX_REMEMBERED_NAME` is not remembered (it stays unknown).
        """
        self.remember_many(kind, [(names, server, nodes, local)])

    def remember_many(self, kind: str, groups: Iterable[tuple[Iterable[str], str, tuple[str, ...], bool]]) -> None:
        """:meth:`remember_all` for several servers at once: ``(names, server, nodes, local)`` each."""
        kept = [([name for name in names if len(name) <= MAX_REMEMBERED_NAME], server, nodes, local)
                for names, server, nodes, local in groups if len(server) <= MAX_REMEMBERED_NAME]
        kept = [group for group in kept if group[0]]
        if not kept:
            return
        self.forget_all(kind, [name for names, _server, _nodes, _local in kept for name in names])
        now, wall = self._clock(), self._wall_clock()
        evicted: list[str] = []  # templates beyond their own cap are forgotten altogether
        for names, server, nodes, local in kept:
            if kind == "resourceTemplates":
                for name in names:
                    self._templates[name] = Withdrawn(kind=kind, name=name, server=server, nodes=nodes, local=local,
                                                      at=now, wall=wall, pattern=template_regex(name))
                while len(self._templates) > MAX_WITHDRAWN_TEMPLATES:
                    evicted.append(next(iter(self._templates)))
                    del self._templates[evicted[-1]]
            hashes = array.array("q", sorted({hash((kind, name)) for name in names}))
            self._groups[next(self._ids)] = _Group(kind=kind, server=server, nodes=nodes, local=local, at=now,
                                                   wall=wall, hashes=hashes)
        self._expire(now, reindex=False)
        total = sum(len(group.hashes) for group in self._groups.values())
        while total > self.limit:  # the oldest go first (of a group, any: they left together)
            group_id, group = next(iter(self._groups.items()))
            excess = total - self.limit
            if len(group.hashes) <= excess:
                del self._groups[group_id]
                total -= len(group.hashes)
            else:
                del group.hashes[:excess]
                total -= excess
        self._reindex()
        if evicted:
            self.forget_all(kind, evicted)

    def forget(self, kind: str, name: str) -> None:
        """The name is back in the catalog (or must not be remembered): drop it."""
        self.forget_all(kind, (name,))

    def forget_all(self, kind: str, names: Iterable[str]) -> None:
        """The names are back in the catalog: drop them."""
        if kind == "resourceTemplates":
            names = list(names)
            for name in names:
                self._templates.pop(name, None)
        gone: dict[int, set[int]] = {}
        for name in names:
            key = hash((kind, name))
            group_id = self._find(key)
            if group_id is not None and self._groups[group_id].kind == kind:
                gone.setdefault(group_id, set()).add(key)
        if not gone:
            return
        for group_id, keys in gone.items():
            group = self._groups[group_id]
            group.hashes = array.array("q", (h for h in group.hashes if h not in keys))
            if not group.hashes:
                del self._groups[group_id]
        self._reindex()

    def get(self, kind: str, name: str) -> Withdrawn | None:
        """The remembered withdrawal of ``name`` of ``kind``, if it is recent enough."""
        self._expire(self._clock())
        group_id = self._find(hash((kind, name)))
        group = self._groups.get(group_id) if group_id is not None else None
        if group is None or group.kind != kind:
            return None
        return Withdrawn(kind=kind, name=name, server=group.server, nodes=group.nodes, local=group.local,
                         at=group.at, wall=group.wall)

    def for_uri(self, uri: str) -> Withdrawn | None:
        """A withdrawn resource with this URI, or else a withdrawn template it matches (newest first)."""
        found = self.get("resources", uri)
        if found is not None:
            return found
        for entry in reversed(self._templates.values()):
            if entry.pattern is not None and entry.pattern.match(uri) and self.get(entry.kind, entry.name):
                return entry
        return None

    def now(self) -> float:
        """The current time on this memory's clock."""
        return self._clock()

    def snapshot(self) -> list[tuple[int, str, str, tuple[str, ...], bool]]:
        """What is remembered (hash, kind, server, nodes, local per name), sorted: for comparisons in tests."""
        return sorted((h, g.kind, g.server, g.nodes, g.local) for g in self._groups.values() for h in g.hashes)

    def _find(self, key: int) -> int | None:
        index = bisect.bisect_left(self._hashes, key)
        if index < len(self._hashes) and self._hashes[index] == key:
            return self._owners[index]
        return None

    def _expire(self, now: float, *, reindex: bool = True) -> None:
        expired = False
        while self._groups:
            group_id, oldest = next(iter(self._groups.items()))
            if now - oldest.at < self.ttl:
                break
            del self._groups[group_id]
            expired = True
        for name in [name for name, entry in self._templates.items() if now - entry.at >= self.ttl]:
            del self._templates[name]
        if expired and reindex:
            self._reindex()

    def _reindex(self) -> None:
        # A hash in several groups (the same name withdrawn again, of another kind) points at the newest.
        pairs = sorted((h, group_id) for group_id, group in self._groups.items() for h in group.hashes)
        newest: dict[int, int] = {}
        for h, group_id in pairs:
            newest[h] = group_id
        self._hashes = array.array("q", newest.keys())
        self._owners = array.array("q", newest.values())
