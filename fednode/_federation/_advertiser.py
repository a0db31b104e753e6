"""Sending each peer what changed in the routes this node offers it (``fed/routes``), with the
origins' tombstones of withdrawn servers it has not been sent yet.

A route that got worse (a longer path than the one the peer was last sent) is withdrawn from the
peer at once and offered again only :data:`WORSE_HOLD` later (ghost flushing). When a node dies or
a link goes, the routes through it do not vanish everywhere at once: each node falls back on the
longer paths its other peers sent before they heard the news, most of them through the same loss.
Offered on at once, those ghosts would travel as fast as the news, and every node would try
ever longer dead paths, one round per advertisement interval on every link, until MAX_PATH (a path
vector's path exploration). Withdrawn instead, the news outruns them: once it has gone round, a
longer path still held is a real one, and it goes out when its hold ends.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from .._config._logging import ThrottledLog
from .._errors import FednodeError
from .._peers._wire import RawJSON
from ._name_policy import NamePolicy
from ._pacer import Pacer
from ._route_intake import ROUTE_UPDATES_PER_SECOND
from ._route_proof import Proof, Tombstone
from ._routes import Key, Path, Route, compact_json
from ._routing import PeerPolicy, RoutingTable

ROUTES_METHOD = "fed/routes"
#: Advertisement frames are packed up to this size (bytes of JSON); a route larger than it is sent
#: in a frame of its own (up to the link's ``max_message_size``).
FRAME_TARGET = 64 * 1024
#: How long a route that got worse for a peer is withdrawn from it before it is offered again
#: (seconds): one interval of the peer's route intake (see :mod:`fednode._federation._route_intake`),
#: by when the withdrawals caused by the same loss have been applied around it.
WORSE_HOLD = 1.0 / ROUTE_UPDATES_PER_SECOND


class Advertiser:
    """Sends each connected peer the delta of what it is offered, whenever something changed.

    Args:
        table: the routing table (what each peer is offered and was last sent).
        connected_peers: the peers with a live link now.
        policy_for: a registered peer's policy (None: not registered).
        node_transit: this node's ``[mcp] transit`` now (it can change on reload).
        notify: sends one notification to a peer.
        max_message_size: the link's ``max_message_size`` (frames stay well under it).
        log: where what could not be sent is logged.
        attest: the proof a route carries to a peer, with this node's attestation (None: routes
            are sent without proofs). Raises :class:`fednode._errors.FednodeError` if it cannot sign.
        names: applies the peers' tool-level ``export``/``import`` rules (None: server ids only).
    """

    def __init__(self, table: RoutingTable, *, connected_peers: Callable[[], list[str]],
                 policy_for: Callable[[str], PeerPolicy | None], node_transit: Callable[[], bool],
                 notify: Callable[[str, str, Any], Awaitable[None]], max_message_size: int, log: Any,
                 attest: Callable[[Route, Path, str], Proof] | None = None,
                 names: NamePolicy | None = None) -> None:
        self._table = table
        self._connected_peers = connected_peers
        self._policy_for = policy_for
        self._node_transit = node_transit
        self._notify = notify
        self._max_message_size = max_message_size
        self._log = log
        self._attest = attest
        self._names = names
        # for lines a peer can cause at will, and repeated ones
        self._throttled = ThrottledLog(log)
        self._dirty = trio.Event()
        # peers an advertisement is being sent to -> whether another is due when it is done
        self._advertising: dict[str, bool] = {}
        # peer -> routes that got worse for it, withdrawn until when (trio time); see WORSE_HOLD
        self._held: dict[str, dict[Key, float]] = {}
        self._holds_changed = trio.Event()

    def changed(self) -> None:
        """Something peers are offered may have changed: compare and send (from :meth:`run`)."""
        self._dirty.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send each connected peer what changed, whenever something changed. Runs until cancelled.

        Each peer is sent to by a task of its own, so a slow peer delays only its own updates; a
        change while one is being sent means one more round for that peer when it is done.
        """
        task_status.started()
        async with trio.open_nursery() as senders:
            senders.start_soon(self._release_holds)
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                for peer_id in self._connected_peers():
                    if peer_id in self._advertising:
                        self._advertising[peer_id] = True
                    else:
                        self._advertising[peer_id] = False
                        senders.start_soon(self._advertise_to, peer_id)

    async def _advertise_to(self, peer_id: str) -> None:
        try:
            while True:
                await self._advertise(peer_id)
                if not self._advertising.get(peer_id):
                    return
                self._advertising[peer_id] = False
        finally:
            del self._advertising[peer_id]

    async def _release_holds(self) -> None:
        """Advertise again whenever a hold ends (see :data:`WORSE_HOLD`). Runs until cancelled."""
        while True:
            self._holds_changed = trio.Event()
            ends = min((until for held in self._held.values() for until in held.values()), default=math.inf)
            with trio.move_on_at(ends):
                await self._holds_changed.wait()
                continue
            now = trio.current_time()
            for held in self._held.values():
                for key in [key for key, until in held.items() if until <= now]:
                    del held[key]
            self.changed()

    def _hold_worse(self, peer_id: str, offers: dict[Key, tuple[Route, Path]]) -> None:
        """Leave out of ``offers`` the routes whose path is longer than the one ``peer_id`` was last
        sent (and those still held): they are withdrawn from it until their hold ends."""
        previous = self._table.advertised.get(peer_id)
        if previous is None:  # a full advertisement: nothing was sent that could have got worse
            self._held.pop(peer_id, None)
            return
        held = self._held.setdefault(peer_id, {})
        ends = trio.current_time() + WORSE_HOLD
        for key, (_route, path) in offers.items():
            sent = previous.get(key)
            if sent is not None and len(path) > len(sent[0]) and key not in held:
                held[key] = ends
                self._holds_changed.set()
        for key in held:
            offers.pop(key, None)

    def offers(self, peer_id: str) -> dict[Key, tuple[Route, Path]]:
        """What ``peer_id`` is offered now (see :meth:`fednode._federation._routing.RoutingTable.offers`)."""
        policy = self._policy_for(peer_id)
        if policy is None:
            return {}
        offers = self._table.offers(peer_id, policy, node_transit=self._node_transit())
        if self._names is None:
            return offers
        # Tool-level rules: this node's own routes trimmed per peer, passed-on ones whole or not at all.
        result: dict[Key, tuple[Route, Path]] = {}
        held: dict[Key, str] = {}
        for key, (route, path) in offers.items():
            via = self._table.best[key][1]
            why = self._names.held_why(peer_id, policy, route, via)
            if why is not None:
                held[key] = why
                continue
            offered = self._names.offered(peer_id, policy, route, via)
            if offered is not None:
                result[key] = (offered, path)
        self._names.note_held(peer_id, held)
        return result

    def revocations(self, peer_id: str) -> dict[Key, Tombstone]:
        """The tombstones ``peer_id`` is passed now (see :meth:`RoutingTable.revocations`)."""
        policy = self._policy_for(peer_id)
        if policy is None:
            return {}
        return self._table.revocations(peer_id, policy, node_transit=self._node_transit())

    async def _advertise(self, peer_id: str) -> None:
        epoch = self._table.link_epoch(peer_id)
        offers = self.offers(peer_id)
        self._hold_worse(peer_id, offers)
        revocations = self.revocations(peer_id)
        delta = self._table.delta(peer_id, offers, revocations)
        # Signing and measuring each route is work in proportion to what is offered: in slices.
        pacer = Pacer()
        texts: dict[Key, str] = {}  # each route as JSON (a packed catalog's definitions as they are)
        for key, (route, path) in delta.routes.items():
            texts[key] = route.wire_text(path, self._proof(route, path, peer_id))
            await pacer.pause()
        sizes = {key: len(text) for key, text in texts.items()}
        if self._table.link_epoch(peer_id) != epoch:
            # The link went down (and maybe up again, owed a full advertisement) meanwhile: this
            # delta is for a link that is gone. Another round, for the link there is now.
            self._advertising[peer_id] = True
            return
        budget = self.frame_budget()
        too_large = [key for key, size in sizes.items() if size > budget]
        for key in too_large:
            # It cannot be sent: the peer must not keep routing to what it had before (withdrawn
            # below), and it is not recorded as sent, so it goes out once it fits again.
            self._throttled.error("routes.too_large", key=key[1], peer=peer_id, server=key[1], origin=key[0],
                                  size=sizes[key], limit=budget, hint="raise [link] max_message_size on every node")
            del offers[key]
        if too_large:
            delta = self._table.delta(peer_id, offers, revocations)
        if delta.empty:
            return
        revoked = [item for item in (self._tombstone(tombstone, peer_id) for tombstone in delta.revoked.values())
                   if item is not None]
        # Frames of at most FRAME_TARGET (a larger route alone in its own): reading one is a single
        # step of the peer's reader, which holds its other tasks meanwhile.
        frames = pack_frames(delta.full, [(texts[key], sizes[key]) for key in delta.routes],
                             [list(key) for key in delta.withdrawn], min(budget, FRAME_TARGET), revoked)
        try:
            for frame in frames:
                await self._notify(peer_id, ROUTES_METHOD, frame_json(frame))
        except FednodeError as exc:
            self._table.not_sent(peer_id)  # resent in full when the link is back
            self._log.info("routes.not_sent", peer=peer_id, error=str(exc))
            return
        self._table.sent(peer_id, delta)

    def _proof(self, route: Route, path: Path, peer_id: str) -> Proof | None:
        if self._attest is None:
            return None
        try:
            return self._attest(route, path, peer_id)
        except FednodeError as exc:  # no key to sign with: the peer refuses it unless it vouches for us
            self._throttled.error("routes.not_signed", key=peer_id, peer=peer_id, error=str(exc))
            return None

    def _tombstone(self, tombstone: Tombstone, peer_id: str) -> tuple[str, int] | None:
        """``tombstone`` as sent to ``peer_id`` (this node's own signed to it) as JSON, with its size."""
        assert self._table.proofs is not None  # the table offers no tombstones without proofs
        try:
            item = self._table.proofs.tombstone_to(tombstone, peer_id).to_wire()
        except FednodeError as exc:  # no key to sign with: the peer cannot believe it anyway
            self._throttled.error("routes.not_signed", key=peer_id, peer=peer_id, error=str(exc))
            return None
        text = compact_json(item)
        return text, len(text)

    def frame_budget(self) -> int:
        """The largest route (as JSON) that fits in one advertisement frame."""
        return int(self._max_message_size * 0.9) - 1024


def frame_json(frame: Mapping[str, Any]) -> RawJSON:
    """A frame from :func:`pack_frames` whose routes and tombstones are JSON texts, as JSON."""
    text = (f'{{"full":{compact_json(frame["full"])},"set":[{",".join(frame["set"])}],'
            f'"withdraw":{compact_json(frame["withdraw"])},"more":{compact_json(frame["more"])}')
    if "revoked" in frame:
        text += f',"revoked":[{",".join(frame["revoked"])}]'
    return RawJSON(text + "}")


def pack_frames(full: bool, routes: list[tuple[Any, int]], withdrawn: list[list[str]],
                budget: int, revoked: Sequence[tuple[Any, int]] = ()) -> list[dict[str, Any]]:
    """Pack an advertisement (routes and tombstones with their JSON sizes) into frames of at most
    ``budget``; ``revoked`` (the optional field older nodes ignore) only in frames that carry tombstones."""
    frames: list[dict[str, Any]] = []
    current: dict[str, list[Any]] = {"set": [], "revoked": []}
    size = 0
    for field, items in (("set", routes), ("revoked", revoked)):
        for item, length in items:
            if (current["set"] or current["revoked"]) and size + length > budget:
                frames.append(_frame(full, current, [], more=True))
                current, size = {"set": [], "revoked": []}, 0
            current[field].append(item)
            size += length
    frames.append(_frame(full, current, withdrawn, more=False))
    return frames


def _frame(full: bool, items: dict[str, list[Any]], withdrawn: list[list[str]], *, more: bool
           ) -> dict[str, Any]:
    frame: dict[str, Any] = {"full": full, "set": items["set"], "withdraw": withdrawn, "more": more}
    if items["revoked"]:
        frame["revoked"] = items["revoked"]
    return frame
