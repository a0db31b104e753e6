"""Route updates from peers, applied at a bounded rate per peer: a burst is coalesced to its latest state.

Applying a ``fed/routes`` frame costs far more than reading it: its definitions are validated, the
best routes and the exposed catalog are rebuilt, and every other peer is sent what changed. A peer
sending frames as fast as its link allows would have this node (and, through it, the whole
federation) do all of that for each one. So the link's reader does only the cheap part: it parses
the frame, and merges it into the peer's :class:`PendingRoutes` (the routes to set, latest per
server, and the keys to withdraw), checking the per-peer limits on what was sent before anything is
validated. A task per peer with pending updates, started in :class:`RouteIntake`'s own nursery,
applies them at most :data:`ROUTE_UPDATES_PER_SECOND` times a second, and spaced so that applying
them takes at most :data:`ROUTE_APPLY_SHARE` of the node's time (a large catalog costs more to
rebuild); whatever arrives meanwhile is merged, so a burst of N frames is applied as one. The first
update after a quiet moment is applied at once, and so are the withdrawals pending, once between two
of those updates: news of a loss must travel faster than the longer paths peers fall back on (see
:mod:`fednode._federation._advertiser`); a withdrawal needs an announcement before it, so this at
most doubles the rate. An update is applied a route at a time, letting the
node's other tasks run between short slices (:mod:`fednode._federation._pacer`), so that a large one
never holds clients' calls for long.

What one peer makes this node hold is bounded by :class:`~fednode._federation._routes.Limits`
four times over at most: the routes accepted from it, a full advertisement being applied
(:meth:`~fednode._federation._routing.RoutingTable.receive`'s staging, only while it is), and here
the pending updates and, while a full advertisement arrives, the complete ones before it. The
pending ones go with the peer's link (:meth:`RouteIntake.drop`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any

import attrs
import trio

from ._pacer import Pacer
from ._route_proof import Tombstone
from ._routes import Advertisement, Key, Limits, Route, measured

#: Route updates applied per second per peer, at most (each one may coalesce many frames).
ROUTE_UPDATES_PER_SECOND = 2.0
#: The share of this node's time one peer's route updates may take: after an update that took t
#: seconds to apply (validation, catalog rebuild), the next waits at least t / share.
ROUTE_APPLY_SHARE = 0.1


@attrs.define
class PendingRoutes:
    """A peer's route updates not applied yet, merged into one advertisement (no I/O).

    Merging frames and applying the result once leaves the routing table as applying each frame in
    turn would, within the limits (see the tests).
    """

    #: whether the updates replace everything learned from the peer (a full advertisement)
    full: bool = False
    #: False while a full advertisement's frames are still arriving (it is applied whole)
    complete: bool = True
    #: the routes to set, by key (the latest one sent for each)
    routes: dict[Key, Route] = attrs.field(factory=dict)
    #: the keys to withdraw (only keys the peer's routes hold: others cost nothing to forget)
    withdrawn: set[Key] = attrs.field(factory=set)
    #: catalog items and bytes (see :func:`~fednode._federation._routes.measured`) of :attr:`routes`
    items: int = 0
    size: int = 0
    #: origins' tombstones (signed withdrawals), the highest version per key: they bar older
    #: advertisements wherever they came from, so the order they apply in does not matter
    revoked: dict[Key, Tombstone] = attrs.field(factory=dict)
    #: updates that were complete when a full advertisement began arriving: applied unless it
    #: completes first (which makes them moot, but for their tombstones), as frame by frame
    earlier: Advertisement | None = None

    @property
    def empty(self) -> bool:
        """Whether nothing is pending."""
        return (not self.full and not self.routes and not self.withdrawn and not self.revoked
                and self.earlier is None)

    @property
    def withdrawals(self) -> bool:
        """Whether withdrawals (or tombstones) are pending that can be applied ahead of the rest (see
        :meth:`take_withdrawals`)."""
        return bool(self.withdrawn or self.revoked) and not self.full and self.complete and self.earlier is None

    def take_withdrawals(self) -> Advertisement:
        """The pending withdrawals and tombstones alone, as one advertisement; the routes to set stay
        pending.

        Applying them first and the rest later leaves the table as applying all at once would: a key
        is never both withdrawn and set here (the later frame's word replaces the earlier's), and
        tombstones apply in any order. A withdrawal goes with the origin's tombstone, if it came with
        one: the old advertisement is barred from the moment it is withdrawn.
        """
        taken = Advertisement(routes=(), withdrawn=tuple(sorted(self.withdrawn)), revoked=tuple(self.revoked.values()))
        self.withdrawn, self.revoked = set(), {}
        return taken

    @property
    def ready(self) -> bool:
        """Whether there is something to apply now (not only a full advertisement still arriving)."""
        return (self.complete and not self.empty) or self.earlier is not None

    def add(self, advertisement: Advertisement, known: Collection[Key], limits: Limits) -> list[tuple[Key, str]]:
        """Merge one frame. ``known``: the keys of the routes accepted from the peer so far.

        Returns the routes refused because the pending ones would exceed ``limits``, with the limit;
        a refused route is withdrawn, as :meth:`~fednode._federation._routing.RoutingTable.receive` does.
        """
        receiving = self.full and not self.complete  # the frames of a full advertisement, until one says no more
        if advertisement.full and not receiving:
            # A new full advertisement replaces whatever was pending, once it is complete.
            earlier = None if self.empty else self._take()
            self._clear()
            self.full, self.earlier, receiving = True, earlier, True
        refused: list[tuple[Key, str]] = []
        for tombstone in advertisement.revoked:
            current = self.revoked.get(tombstone.key)
            if current is None and len(self.revoked) >= limits.routes:
                refused.append((tombstone.key, f"more than {limits.routes} tombstones"))
            elif current is None or tombstone.version >= current.version:
                self.revoked[tombstone.key] = tombstone
        for key in advertisement.withdrawn:
            self._withdraw(key, known)
        for route in advertisement.routes:
            self._withdraw(route.key, known)
            if not route.size:
                route = measured(route)
            why = None
            if len(self.routes) >= limits.routes:
                why = f"more than {limits.routes} routes"
            elif self.items + route.items > limits.items:
                why = f"more than {limits.items} catalog items"
            elif self.size + route.size > limits.bytes:
                why = f"more than {limits.bytes // (1024 * 1024)} MiB of catalogs"
            if why is not None:
                refused.append((route.key, why))
                continue
            self.withdrawn.discard(route.key)
            self.routes[route.key] = route
            self.items += route.items
            self.size += route.size
        if receiving:
            self.complete = not advertisement.more
            if self.complete and self.earlier is not None:
                for tombstone in self.earlier.revoked:  # the only part of it that still matters
                    current = self.revoked.get(tombstone.key)
                    if current is None or tombstone.version > current.version:
                        self.revoked[tombstone.key] = tombstone
                self.earlier = None
        return refused

    def take(self) -> Advertisement:
        """The merged updates to apply now, as one advertisement (see :attr:`ready`)."""
        if self.earlier is not None:  # a full advertisement is still arriving: what came before it
            earlier, self.earlier = self.earlier, None
            return earlier
        return self._take()

    def _take(self) -> Advertisement:
        taken = Advertisement(routes=tuple(self.routes.values()), withdrawn=tuple(sorted(self.withdrawn)),
                              full=self.full, revoked=tuple(self.revoked.values()))
        self._clear()
        return taken

    def _withdraw(self, key: Key, known: Collection[Key]) -> None:
        old = self.routes.pop(key, None)
        if old is not None:
            self.items -= old.items
            self.size -= old.size
        if not self.full and key in known:
            self.withdrawn.add(key)

    def _clear(self) -> None:
        self.full, self.complete, self.earlier = False, True, None
        self.routes, self.withdrawn, self.revoked = {}, set(), {}
        self.items = self.size = 0


@attrs.define(eq=False)
class _Peer:
    pending: PendingRoutes = attrs.field(factory=PendingRoutes)
    #: the earliest time the next update may be applied
    next_at: float = float("-inf")
    #: whether withdrawals were applied ahead since the last update (once between two)
    early: bool = False
    #: the task applying this peer's updates, while there is one
    worker: trio.CancelScope | None = None
    arrived: trio.Event = attrs.field(factory=trio.Event)
    #: the keys of the routes the update being applied sets (not all in the table yet)
    applying: frozenset[Key] = frozenset()


class _Known:
    """The keys a peer's withdrawal can name: the routes accepted from it so far, and those the update
    being applied is adding a route at a time (a withdrawal of one of those must not be dropped as
    naming nothing: the route would stay once its apply ends)."""

    __slots__ = ("_accepted", "_applying")

    def __init__(self, accepted: Collection[Key], applying: frozenset[Key]) -> None:
        self._accepted = accepted
        self._applying = applying

    def __contains__(self, key: object) -> bool:
        return key in self._applying or key in self._accepted

    def __iter__(self) -> Iterator[Key]:
        yield from self._accepted
        yield from (key for key in self._applying if key not in self._accepted)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class RouteIntake:
    """Takes peers' route updates from their links' readers and applies them at a bounded rate.

    Args:
        apply: ``await apply(peer_id, advertisement, pacer)`` applies merged updates, pausing with
            ``pacer`` (:class:`~fednode._federation._pacer.Pacer`) between pieces of the work.
        known: ``known(peer_id)``: the keys of the routes accepted from a peer so far.
        limits: what one peer's pending updates may add up to (the routing table's limits).
        log: where an update that could not be applied is logged.
        rate: updates applied per second per peer, at most.

    Start :meth:`run` in a nursery; until it runs, updates are held (bounded) and not applied.
    """

    def __init__(self, apply: Callable[[str, Advertisement, Pacer], Awaitable[None]], *,
                 known: Callable[[str], Collection[Key]], limits: Limits, log: Any,
                 rate: float = ROUTE_UPDATES_PER_SECOND) -> None:
        self._apply = apply
        self._log = log
        self._known = known
        self.limits = limits
        self.interval = 1.0 / rate
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None

    def pending(self, peer_id: str) -> PendingRoutes | None:
        """What is pending from ``peer_id`` (None: nothing was received from it on this link)."""
        peer = self._peers.get(peer_id)
        return peer.pending if peer is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the tasks that apply peers' updates. Runs until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer_id, peer in self._peers.items():  # held until now
                    self._start(peer_id, peer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def offer(self, peer_id: str, advertisement: Advertisement) -> list[tuple[Key, str]]:
        """Take a frame from ``peer_id`` (from its link's reader: returns at once).

        Returns the routes refused at once for a limit (see :meth:`PendingRoutes.add`).
        """
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer()
        known = self._known(peer_id)
        refused = peer.pending.add(advertisement, _Known(known, peer.applying) if peer.applying else known,
                                   self.limits)
        peer.arrived.set()
        if peer.worker is None and self._nursery is not None:
            self._start(peer_id, peer)
        return refused

    def drop(self, peer_id: str) -> None:
        """The link to ``peer_id`` is gone: forget its pending updates, and stop applying them."""
        peer = self._peers.pop(peer_id, None)
        if peer is not None and peer.worker is not None:
            peer.worker.cancel()

    def _start(self, peer_id: str, peer: _Peer) -> None:
        assert self._nursery is not None
        peer.worker = trio.CancelScope()
        self._nursery.start_soon(self._work, peer_id, peer, peer.worker)

    async def _work(self, peer_id: str, peer: _Peer, scope: trio.CancelScope) -> None:
        """Apply ``peer_id``'s updates at most once per interval; end when nothing is pending."""
        try:
            with scope:
                while True:
                    # Meanwhile, frames are merged; withdrawals go ahead, once between two updates.
                    ahead = False
                    if peer.next_at > trio.current_time():
                        with trio.move_on_at(peer.next_at):
                            while peer.early or not peer.pending.withdrawals:
                                peer.arrived = trio.Event()
                                await peer.arrived.wait()
                            ahead = True
                    if ahead:
                        peer.early = True
                        await self._apply_now(peer_id, peer, peer.pending.take_withdrawals())
                        continue
                    peer.early = False
                    while not peer.pending.ready:
                        if peer.pending.empty:
                            return  # the next frame starts another task
                        peer.arrived = trio.Event()  # a full advertisement is still arriving
                        await peer.arrived.wait()
                    started = trio.current_time()
                    busy = await self._apply_now(peer_id, peer, peer.pending.take())
                    peer.next_at = started + max(self.interval, busy / ROUTE_APPLY_SHARE)
        finally:
            if peer.worker is scope:
                peer.worker = None

    async def _apply_now(self, peer_id: str, peer: _Peer, advertisement: Advertisement) -> float:
        """Apply ``advertisement``; returns the time that took (the time others ran in between not counted).
        An update applied ahead pushes the next one back by what it cost, beyond the interval."""
        started = trio.current_time()
        pacer = Pacer()
        peer.applying = frozenset(route.key for route in advertisement.routes)
        try:
            await self._apply(peer_id, advertisement, pacer)
        except Exception:  # a bug must not stop the node (nor this peer's later updates)
            self._log.exception("routes.apply_failed", peer=peer_id)
        finally:
            peer.applying = frozenset()
        if peer.early:
            peer.next_at = max(peer.next_at, started + pacer.busy / ROUTE_APPLY_SHARE)
        return pacer.busy

    def stats(self) -> dict[str, Any]:
        """Per peer with updates pending: how many routes, items and bytes (for tests and status)."""
        return {peer_id: {"routes": len(p.pending.routes), "items": p.pending.items, "bytes": p.pending.size}
                for peer_id, p in self._peers.items() if not p.pending.empty}
