"""A bounded memory of catalog names that were withdrawn recently, so a client can tell an outage from a typo.

When every route to a server goes (its node was stopped, killed or partitioned away, or the server stopped
answering), its tools, prompts, resources and templates leave the catalog, and a call naming one of them
would get the same "Unknown tool" (-32602) as a misspelt name. The federation remembers such names for a
while (:data:`WITHDRAWN_TTL`, at most :data:`MAX_WITHDRAWN` of them, the oldest forgotten first) and
answers a call of one of them with the unreachable error that names the server, its owning node and
since when. A name that comes back is forgotten at once.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
import trio

#: How long a withdrawn name is remembered (seconds).
WITHDRAWN_TTL = 600.0
#: How many withdrawn names are remembered at most, all kinds together (the oldest are forgotten first).
MAX_WITHDRAWN = 10_000
#: Withdrawn resource templates matched against a URI at most (each lookup tries them in turn).
MAX_WITHDRAWN_TEMPLATES = 256

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


class WithdrawnNames:
    """Names withdrawn from the catalog recently, bounded by age and by count.

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
        # (kind, name) -> entry, oldest first
        self._names: collections.OrderedDict[tuple[str, str], Withdrawn] = collections.OrderedDict()
        # the templates among them (URI template -> entry, oldest first), matched against URIs
        self._templates: dict[str, Withdrawn] = {}

    def __len__(self) -> int:
        return len(self._names)

    def remember(self, kind: str, name: str, server: str, nodes: tuple[str, ...], *, local: bool) -> None:
        """Remember that ``name`` of ``kind`` (offered by ``server`` on ``nodes``) left the catalog now."""
        now = self._clock()
        pattern = None
        if kind == "resourceTemplates":
            pattern = template_regex(name)
        self.forget(kind, name)
        entry = Withdrawn(kind=kind, name=name, server=server, nodes=nodes, local=local, at=now,
                          wall=self._wall_clock(), pattern=pattern)
        self._names[(kind, name)] = entry
        if pattern is not None:
            self._templates[name] = entry
        self._expire(now)
        while len(self._names) > self.limit:
            self._drop_oldest()
        while len(self._templates) > MAX_WITHDRAWN_TEMPLATES:
            self.forget("resourceTemplates", next(iter(self._templates)))

    def forget(self, kind: str, name: str) -> None:
        """The name is back in the catalog (or must not be remembered): drop it."""
        if self._names.pop((kind, name), None) is not None and kind == "resourceTemplates":
            del self._templates[name]

    def get(self, kind: str, name: str) -> Withdrawn | None:
        """The remembered withdrawal of ``name`` of ``kind``, if it is recent enough."""
        self._expire(self._clock())
        return self._names.get((kind, name))

    def for_uri(self, uri: str) -> Withdrawn | None:
        """A withdrawn resource with this URI, or else a withdrawn template it matches (newest first)."""
        found = self.get("resources", uri)
        if found is not None:
            return found
        for entry in reversed(self._templates.values()):
            if entry.pattern is not None and entry.pattern.match(uri):
                return entry
        return None

    def now(self) -> float:
        """The current time on this memory's clock."""
        return self._clock()

    def _expire(self, now: float) -> None:
        while self._names:
            oldest = next(iter(self._names.values()))
            if now - oldest.at < self.ttl:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        (kind, name), _entry = self._names.popitem(last=False)
        if kind == "resourceTemplates":
            del self._templates[name]
