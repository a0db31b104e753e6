"""Meshes of real nodes over in-memory links under MockClock: every change settles to the shortest
routes within the issue's bound (diameter x one advertisement interval + 1 s of virtual time) and
costs a number of route frames linear in the links; and the two mechanisms that keep a dead node's
routes from being explored path by path (see ``scripts/bench_mesh.py`` for 100 nodes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from test_routing import OPEN, advert, route

from fednode._federation._advertiser import WORSE_HOLD, Advertiser
from fednode._federation._route_intake import ROUTE_UPDATES_PER_SECOND
from fednode._federation._routing import RoutingTable

from meshsim import Mesh, Topology, random_regular, ring, two_regions

#: One advertisement interval: a peer's route updates are applied at most this often.
INTERVAL = 1.0 / ROUTE_UPDATES_PER_SECOND
#: Route frames per change, per link and direction, at most: linear in nodes x degree. A change every
#: node passes to each neighbour once costs 1; without the fixes a node's death cost 6 in the
#: random mesh (its routes explored path by path, one round per interval).
FRAMES_PER_LINK = 3


@pytest.mark.parametrize("topology", [ring(12), random_regular(16), two_regions(16)], ids=lambda t: t.name)
async def test_every_change_settles_within_the_bound(autojump_clock: trio.testing.MockClock,
                                                     topology: Topology) -> None:
    async with trio.open_nursery() as nursery:
        mesh = Mesh(topology)
        started = trio.current_time()
        await mesh.start(nursery)
        outcome = await mesh.settle("start", started, (0, 0))
        assert outcome.settled and outcome.problems == ()
        for change, act in mesh.changes():
            outcome = await mesh.measure(change, act)
            assert outcome.settled and outcome.problems == (), change
            assert outcome.convergence <= outcome.diameter * INTERVAL + 1.0, (change, outcome)
            assert 0 < outcome.frames <= FRAMES_PER_LINK * 2 * len(topology.links), (change, outcome)
        nursery.cancel_scope.cancel()


async def test_a_route_that_got_worse_is_withdrawn_and_offered_again_after_the_hold(
        autojump_clock: trio.testing.MockClock) -> None:
    """node-a reaches node-x's server through node-b (2 hops), and has a longer path through node-d.
    When node-b withdraws it, node-c is sent a withdrawal at once, and the longer path one hold later."""
    table = RoutingTable("node-a")
    for peer in ("node-b", "node-c", "node-d"):
        table.link_up(peer)
    table.receive("node-b", OPEN, advert(route("node-x", "s", "node-b"), full=True))
    table.receive("node-d", OPEN, advert(route("node-x", "s", "node-y", "node-d"), full=True))
    table.update({}, {})
    frames: list[tuple[float, dict[str, Any]]] = []

    async def notify(peer_id: str, method: str, params: Any) -> None:
        assert (peer_id, method) == ("node-c", "fed/routes")
        frames.append((trio.current_time(), json.loads(params.text)))

    advertiser = Advertiser(table, connected_peers=lambda: ["node-c"], policy_for=lambda peer_id: OPEN,
                            node_transit=lambda: True, notify=notify, max_message_size=1 << 20,
                            log=structlog.get_logger("test"))
    async with trio.open_nursery() as nursery:
        await nursery.start(advertiser.run)
        advertiser.changed()
        await trio.sleep(1)
        table.receive("node-b", OPEN, advert(withdrawn=(("node-x", "s"),)))
        table.update({}, {})
        advertiser.changed()
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    sent = [(at, frame["full"], [tuple(r["path"]) for r in frame["set"]], frame["withdraw"]) for at, frame in frames]
    assert sent == [
        (0.0, True, [("node-x", "node-b", "node-a")], []),
        (1.0, False, [], [["node-x", "s"]]),  # at once: the path got longer
        (1.0 + WORSE_HOLD, False, [("node-x", "node-y", "node-d", "node-a")], []),
    ]
