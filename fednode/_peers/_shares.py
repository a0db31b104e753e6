"""Fair shares of a pool of in-flight slots, without I/O: who may take one more slot.

A pool has ``total`` slots (a link's ``max_inflight``, or the node's own). Each slot is held on
behalf of a *party* (the peer a request came from, its own or passed on, or ``local`` for this
node's MCP clients) and for one *server* (an ``(origin, server)`` pair). The rule:

- Each of the ``n`` known parties has ``total // (2 * n)`` slots reserved: nobody else can take
  them, so a party that holds fewer than its reserve always gets a slot (as long as the server is
  below its cap). At most half the pool is reserved; the rest is shared, first come first served.
- One server may hold at most half the pool (at least one slot), so that one hanging server (and the
  callers that keep calling it) cannot take the room of the others.

So a peer that floods a node fills the shared slots and then gets -32004 (overloaded), while every
other peer and the node's own clients keep their reserves. Parties the pool does not know (a peer
added since) take shared slots only. The invariant behind the guarantee: slots in use plus the
reserves still unused never exceed ``total``.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable

#: The party of requests from this node's own MCP clients (no node id can be spelled so: a peer
#: named "local" is a party of its own).
LOCAL = "(local)"


class Refusal(enum.Enum):
    """Why :meth:`FairShares.acquire` refused a slot."""

    #: the server already holds half the pool
    SERVER = "server"
    #: the party's reserve is used and no shared slot is free
    SHARE = "share"


class FairShares:
    """One pool of ``total`` slots shared fairly by parties and servers (see the module docstring).

    Args:
        total: the pool's size (>= 1).
        parties: the parties with a reserve (see :meth:`set_parties`).
    """

    def __init__(self, total: int, parties: Iterable[str] = ()) -> None:
        if total < 1:
            raise ValueError(f"a pool needs at least one slot, got {total}")
        self.total = total
        #: most slots one server may hold
        self.server_cap = max(1, total // 2)
        self.in_use = 0
        self._parties: frozenset[str] = frozenset()
        self.reserve = 0
        self._held: dict[str, int] = {}
        self._servers: dict[Hashable, int] = {}
        self._unused = 0  # reserves of known parties not in use, summed
        self.set_parties(parties)

    def set_parties(self, parties: Iterable[str]) -> None:
        """Set the parties that have a reserve: ``total // (2 * len(parties))`` slots each.

        Slots already held stay held; while they exceed the new rule, only reserves are granted.
        """
        self._parties = frozenset(parties)
        self.reserve = self.total // (2 * len(self._parties)) if self._parties else 0
        self._unused = sum(max(0, self.reserve - self._held.get(party, 0)) for party in self._parties)

    @property
    def parties(self) -> frozenset[str]:
        """The parties with a reserve."""
        return self._parties

    def held(self, party: str) -> int:
        """Slots ``party`` holds now."""
        return self._held.get(party, 0)

    def server_held(self, server: Hashable) -> int:
        """Slots held for ``server`` now."""
        return self._servers.get(server, 0)

    def cap(self, party: str) -> int:
        """The most slots ``party`` can hold when nobody else holds any: the pool less the others' reserves."""
        others = len(self._parties - {party})
        return self.total - others * self.reserve

    def acquire(self, party: str, server: Hashable) -> Refusal | None:
        """Take a slot for ``party`` and ``server``; None when granted, else why not (nothing taken)."""
        if self._servers.get(server, 0) >= self.server_cap:
            return Refusal.SERVER
        held = self._held.get(party, 0)
        in_reserve = party in self._parties and held < self.reserve
        if self.in_use >= self.total or (not in_reserve and self.total - self.in_use - self._unused <= 0):
            # (the pool is full only past a change of parties: reserves then wait for slots to come back)
            return Refusal.SHARE
        if in_reserve:
            self._unused -= 1
        self._held[party] = held + 1
        self._servers[server] = self._servers.get(server, 0) + 1
        self.in_use += 1
        return None

    def release(self, party: str, server: Hashable) -> None:
        """Give back a slot taken by :meth:`acquire` for ``party`` and ``server``."""
        held = self._held[party] - 1
        if held:
            self._held[party] = held
        else:
            del self._held[party]
        count = self._servers[server] - 1
        if count:
            self._servers[server] = count
        else:
            del self._servers[server]
        self.in_use -= 1
        if party in self._parties and held < self.reserve:
            self._unused += 1
