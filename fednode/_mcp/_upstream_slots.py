"""How many connections a node may open to one attached server on behalf of its callers, and for whom.

A legacy client session gets a connection of its own at each server it uses, and so may a call whose
server may ask its client a question (:mod:`fednode._mcp._sessions`, :mod:`fednode._mcp._parking`). Left
unbounded, callers elsewhere in the federation could make the node owning a server start one server
process per caller. :class:`ConnectionSlots` caps them: ``[[servers]] max_connections`` counts every
connection to the server, its shared one included, and the callers arriving through any one peer
(or this node's own clients) may hold at most half of them. A caller who finds no slot is served on
the shared connection; the owner decides what that means for it.

No I/O: a slot is taken when a connection is about to be opened and given back once it is gone (its
process has exited), so the count is of processes, not of connections in use.
"""

from __future__ import annotations

import collections

import attrs

from .._peers._shares import LOCAL


@attrs.define(eq=False)
class Slot:
    """One extra connection's place, charged to the source it was opened for."""

    source: str
    released: bool = False


class ConnectionSlots:
    """The extra connections to one server: at most ``max_connections - 1`` (the shared one is the
    first), at most ``max_connections // 2`` (at least 1) for one source.

    Args:
        max_connections: ``[[servers]] max_connections``.
    """

    def __init__(self, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        #: extra connections at most (the shared connection is not one of them)
        self.limit = max_connections - 1
        #: extra connections at most for the callers of one source
        self.share = min(self.limit, max(1, max_connections // 2))
        self._held: collections.Counter[str] = collections.Counter()

    @property
    def in_use(self) -> int:
        """Slots taken now (connections open, opening or still closing)."""
        return sum(self._held.values())

    def held_by(self, source: str) -> int:
        """Slots taken now for callers of ``source``."""
        return self._held[source]

    def why_full(self, source: str) -> str | None:
        """Why no slot can be taken for ``source`` now (None: one can)."""
        if self.in_use >= self.limit:
            return f"all {self.max_connections} connections to the server are open"
        if self._held[source] >= self.share:
            who = "this node's clients" if source == LOCAL else f"callers through {source}"
            return f"{who} hold {self.share} connections, their share"
        return None

    def acquire(self, source: str) -> Slot | None:
        """Take a slot for a connection opened for callers of ``source``; None if none is free."""
        if self.why_full(source) is not None:
            return None
        self._held[source] += 1
        return Slot(source)

    def release(self, slot: Slot) -> None:
        """Give a slot back (its connection is gone). Releasing twice is harmless."""
        if slot.released:
            return
        slot.released = True
        self._held[slot.source] -= 1
        if not self._held[slot.source]:
            del self._held[slot.source]

    def move(self, slot: Slot, source: str) -> bool:
        """Charge an open connection to ``source`` instead (a caller of ``source`` reuses it).

        Returns False, changing nothing, if ``source`` has no room left in its share.
        """
        if slot.released:
            return False
        if slot.source == source:
            return True
        if self._held[source] >= self.share:
            return False
        self.release(slot)
        slot.released = False
        slot.source = source
        self._held[source] += 1
        return True
