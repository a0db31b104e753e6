"""Route updates from a peer, merged and applied at a bounded rate (no sockets; the rate under MockClock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import structlog
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_routing import OPEN, advert, route

from fednode._federation._pacer import Pacer
from fednode._federation._route_intake import PendingRoutes, RouteIntake
from fednode._federation._route_proof import Tombstone
from fednode._federation._routes import Advertisement, Key, Limits, measured
from fednode._federation._routing import RoutingTable

ROOMY = Limits(routes=1000, items=100_000, bytes=1 << 30)


def synchronous(apply: Callable[[str, Advertisement], object]) -> Callable[[str, Advertisement, Pacer],
                                                                            Awaitable[None]]:
    """An intake's apply that does its work at once (``apply(peer, advertisement)``)."""
    async def applying(peer: str, advertisement: Advertisement, pacer: Pacer) -> None:
        apply(peer, advertisement)
    return applying


class TestPendingRoutes:
    """Frames merge into one advertisement holding the latest state; limits apply to what is held."""

    def test_a_burst_of_deltas_is_one_update_with_the_latest_routes(self) -> None:
        pending = PendingRoutes()
        known = {("node-b", "gone")}
        for i in range(50):
            pending.add(advert(route("node-b", "s", tools=(f"t{i}",))), known, ROOMY)
        pending.add(advert(route("node-b", "u"), withdrawn=(("node-b", "gone"), ("node-b", "never-had"))), known,
                    ROOMY)
        assert pending.ready and len(pending.routes) == 2 and pending.items == 2
        taken = pending.take()
        assert not taken.full and taken.withdrawn == (("node-b", "gone"),)  # an unknown key costs nothing
        (latest,) = [r for r in taken.routes if r.server == "s"]
        assert latest.catalog["tools"][0]["name"] == "t49"
        assert pending.empty and not pending.ready and pending.size == pending.items == 0

    def test_a_full_advertisement_is_applied_whole_and_replaces_what_was_pending(self) -> None:
        pending = PendingRoutes()
        pending.add(advert(route("node-b", "old")), set(), ROOMY)
        pending.add(advert(route("node-b", "s1"), full=True, more=True), set(), ROOMY)
        assert set(pending.routes) == {("node-b", "s1")}
        assert pending.ready and pending.earlier is not None  # what came before it may go meanwhile
        pending.add(advert(route("node-b", "s2"), full=True, more=False), set(), ROOMY)
        assert pending.earlier is None  # moot now
        pending.add(advert(withdrawn=(("node-b", "s1"),)), {("node-b", "s1")}, ROOMY)  # a delta after it
        taken = pending.take()
        assert taken.full and not taken.more and taken.withdrawn == ()
        assert [r.server for r in taken.routes] == ["s2"]
        pending.add(advert(route("node-b", "s3"), full=True, more=True), set(), ROOMY)
        assert not pending.ready  # only a full advertisement still arriving

    def test_limits_bound_what_is_held_and_refuse_early(self) -> None:
        size = measured(route("node-b", "s0", tools=("t1", "t2"))).size
        limits = Limits(routes=3, items=5, bytes=4 * size)
        pending = PendingRoutes()
        refused = pending.add(advert(*(route("node-b", f"s{i}", tools=("t1", "t2")) for i in range(4))),
                              {("node-b", "s3")}, limits)
        assert refused == [(("node-b", f"s{i}"), "more than 5 catalog items") for i in (2, 3)]
        assert pending.items == 4 and pending.size == 2 * size
        assert pending.withdrawn == {("node-b", "s3")}  # refused: what the peer had there goes, as in the table
        refused = pending.add(advert(route("node-b", "big", description="x" * 10 * size)), set(), limits)
        assert refused == [(("node-b", "big"), "more than 0 MiB of catalogs")]
        refused = pending.add(advert(route("node-b", "s5"), route("node-b", "s6")), set(), limits)
        assert [why for _key, why in refused] == ["more than 3 routes"]
        assert len(pending.routes) == 3 and pending.items == 5

    def test_tombstones_keep_their_highest_version_and_outlive_a_full_advertisement(self) -> None:
        pending = PendingRoutes()
        limits = Limits(routes=2, items=100, bytes=1 << 20)
        pending.add(Advertisement(revoked=(Tombstone("node-c", "s", 5, 99), Tombstone("node-c", "t", 1, 99))),
                    set(), limits)
        refused = pending.add(Advertisement(revoked=(Tombstone("node-c", "s", 3, 99), Tombstone("node-c", "u", 1, 99),
                                                     Tombstone("node-c", "s", 7, 99))), set(), limits)
        assert refused == [(("node-c", "u"), "more than 2 tombstones")]
        # a full advertisement starts: the tombstones go with what was pending before it, and stay
        # once the full one is complete (they bar old advertisements whoever sent them)
        pending.add(advert(route("node-b", "x"), full=True, more=True), set(), limits)
        pending.add(advert(full=True), set(), limits)
        taken = pending.take()
        assert taken.full and {(t.key, t.version) for t in taken.revoked} == {(("node-c", "s"), 7),
                                                                                (("node-c", "t"), 1)}
        assert pending.empty

    def test_sizes_count_every_field_a_peer_chooses(self) -> None:
        plain = measured(route("node-b", "s")).size
        assert measured(attrs.evolve(route("node-b", "s"), extensions={"x": "y" * 1000})).size >= plain + 1000
        assert measured(attrs.evolve(route("node-b", "s"), digest="d" * 1000)).size >= plain + 900


# -- merged == one at a time ---------------------------------------------------------------------

_servers = st.sampled_from(["s0", "s1", "s2", "s3"])
_frames = st.lists(st.tuples(st.lists(st.tuples(_servers, st.sampled_from(["a", "b", "c"])), max_size=3),
                             st.lists(_servers, max_size=2), st.booleans(), st.booleans(), st.booleans()),
                   max_size=12)


class TestMergedEqualsOneAtATime:
    """Applying merged frames leaves the table as applying each frame in turn does."""

    @settings(max_examples=300, deadline=None)
    @given(_frames)
    def test_same_routes_learned(self, frames: list[tuple[list[tuple[str, str]], list[str], bool, bool, bool]]
                                 ) -> None:
        direct, merged = RoutingTable("node-a", ROOMY), RoutingTable("node-a", ROOMY)
        pending = PendingRoutes()
        for sets, withdrawals, full, more, apply_now in frames:
            frame = advert(*(route("node-b", server, tools=(tool,)) for server, tool in sets),
                           withdrawn=tuple(("node-b", s) for s in withdrawals), full=full, more=more)
            direct.receive("node-b", OPEN, frame)
            pending.add(frame, merged.learned.get("node-b", {}), ROOMY)
            if apply_now and pending.ready:
                merged.receive("node-b", OPEN, pending.take())
        if pending.ready:
            merged.receive("node-b", OPEN, pending.take())
        assert _state(merged) == _state(direct)


def _state(table: RoutingTable) -> dict[Key, Any]:
    return {key: (r.digest, r.catalog["tools"]) for key, r in table.learned.get("node-b", {}).items()}


# -- the rate ----------------------------------------------------------------------------------------

class TestRouteIntake:
    """At most two updates a second per peer, the first at once; a peer's pending state goes with its link."""

    async def test_a_burst_is_applied_at_a_bounded_rate(self, autojump_clock: trio.testing.MockClock) -> None:
        applied: list[tuple[float, str, Advertisement]] = []
        intake = RouteIntake(synchronous(lambda peer, adv: applied.append((trio.current_time(), peer, adv))),
                             known=lambda peer: {}, limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            intake.offer("node-b", advert(route("node-b", "s", tools=("t0",))))
            await trio.sleep(0.1)
            assert [(t, p) for t, p, _ in applied] == [(0.0, "node-b")]  # the first at once
            for i in range(1, 100):  # a burst within 0.3 s: one update, half a second after the first
                intake.offer("node-b", advert(route("node-b", "s", tools=(f"t{i}",))))
                await trio.sleep(0.003)
            intake.offer("node-c", advert(route("node-c", "x")))  # another peer is not held up
            await trio.sleep(2)
            assert [p for _, p, _ in applied] == ["node-b", "node-c", "node-b"]
            assert [t for t, p, _ in applied if p == "node-b"] == [0.0, 0.5]
            assert [t for t, p, _ in applied if p == "node-c"] == [pytest.approx(0.1 + 99 * 0.003)]
            (latest,) = applied[-1][2].routes
            assert latest.catalog["tools"][0]["name"] == "t99"
            nursery.cancel_scope.cancel()

    async def test_withdrawals_go_ahead_once_between_two_updates(self, autojump_clock: trio.testing.MockClock
                                                                 ) -> None:
        """News of a loss is not held for the interval (it must outrun the longer paths peers fall
        back on), but only once between two updates: a peer cannot double the rate more than that."""
        applied: list[tuple[float, tuple[str, ...], tuple[str, ...], tuple[Key, ...]]] = []
        intake = RouteIntake(synchronous(lambda peer, adv: applied.append(
            (trio.current_time(), tuple(r.server for r in adv.routes), tuple(s for _o, s in adv.withdrawn),
             tuple(tombstone.key for tombstone in adv.revoked)))),
            known=lambda peer: {("node-b", "s"), ("node-b", "x")}, limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            intake.offer("node-b", advert(route("node-b", "s")))
            await trio.sleep(0.1)
            # ahead of the interval, with the origin's tombstone that came with it
            intake.offer("node-b", Advertisement(withdrawn=(("node-b", "x"),),
                                                 revoked=(Tombstone("node-b", "x", 2, 99),)))
            await trio.sleep(0.1)
            intake.offer("node-b", advert(route("node-b", "y")))  # waits for the interval
            await trio.sleep(0.1)
            intake.offer("node-b", advert(withdrawn=(("node-b", "s"),)))  # once only: waits too
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
        assert [(t, routes, gone) for t, routes, gone, _revoked in applied] == [
            (0.0, ("s",), ()), (pytest.approx(0.1), (), ("x",)), (0.5, ("y",), ("s",))]
        assert [revoked for *_, revoked in applied] == [(), (("node-b", "x"),), ()]

    async def test_a_withdrawal_arriving_while_its_route_is_being_applied_is_kept(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """An update is applied a route at a time, so a route it sets is not yet among those accepted
        while it runs: a withdrawal of it arriving then is still applied after it (it was dropped as
        naming nothing, and the route stayed for good)."""
        table: set[Key] = set()
        applied: list[tuple[tuple[Key, ...], tuple[Key, ...]]] = []
        halfway = trio.Event()
        go_on = trio.Event()

        async def apply(peer: str, adv: Advertisement, pacer: Any) -> None:
            applied.append((tuple(r.key for r in adv.routes), tuple(adv.withdrawn)))
            if adv.routes:
                halfway.set()
                await go_on.wait()  # the routes go into the table at the end of the apply
            table.update(r.key for r in adv.routes)
            table.difference_update(adv.withdrawn)

        intake = RouteIntake(apply, known=lambda peer: table, limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            intake.offer("node-b", advert(route("node-b", "s")))
            await halfway.wait()
            intake.offer("node-b", advert(withdrawn=(("node-b", "s"),)))
            go_on.set()
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
        assert applied == [((("node-b", "s"),), ()), ((), (("node-b", "s"),))]
        assert table == set()

    async def test_updates_keep_coming_at_most_twice_a_second(self, autojump_clock: trio.testing.MockClock) -> None:
        applied: list[float] = []
        intake = RouteIntake(synchronous(lambda peer, adv: applied.append(trio.current_time())), known=lambda peer: {},
                             limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            for i in range(1000):  # 10 s of frames, one every 10 ms
                intake.offer("node-b", advert(route("node-b", "s", tools=(f"t{i}",))))
                await trio.sleep(0.01)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert applied == [i * 0.5 for i in range(len(applied))] and len(applied) == 21

    async def test_a_dropped_peer_is_forgotten(self, autojump_clock: trio.testing.MockClock) -> None:
        applied: list[str] = []
        intake = RouteIntake(synchronous(lambda peer, adv: applied.append(peer)), known=lambda peer: {}, limits=ROOMY,
                             log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            intake.offer("node-b", advert(route("node-b", "s")))
            await trio.sleep(0.1)
            intake.offer("node-b", advert(route("node-b", "s", tools=("later",))))
            # a full advertisement that never completes is held, bounded, until the link goes
            intake.offer("node-c", advert(route("node-c", "s"), full=True, more=True))
            assert set(intake.stats()) == {"node-b", "node-c"}
            intake.drop("node-b")
            intake.drop("node-c")
            await trio.sleep(5)
            assert applied == ["node-b"] and intake.stats() == {} and intake.pending("node-b") is None
            nursery.cancel_scope.cancel()

    async def test_a_failing_update_does_not_stop_the_others(self, autojump_clock: trio.testing.MockClock) -> None:
        applied: list[str] = []

        async def apply(peer: str, adv: Advertisement, pacer: Pacer) -> None:
            applied.append(adv.routes[0].server)
            if adv.routes[0].server == "bad":
                raise RuntimeError("a bug")

        intake = RouteIntake(apply, known=lambda peer: {}, limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            with structlog.testing.capture_logs() as logs:
                intake.offer("node-b", advert(route("node-b", "bad")))
                await trio.sleep(0.1)
                intake.offer("node-b", advert(route("node-b", "good")))
                await trio.sleep(1)
            assert applied == ["bad", "good"]
            assert [e["event"] for e in logs] == ["routes.apply_failed"]
            nursery.cancel_scope.cancel()

    async def test_costly_updates_are_spaced_to_a_tenth_of_the_time(self, autojump_clock: trio.testing.MockClock
                                                                    ) -> None:
        applied: list[float] = []

        async def apply(peer: str, adv: Advertisement, pacer: Pacer) -> None:
            applied.append(trio.current_time())
            autojump_clock.jump(0.2)  # this update took 0.2 s to apply (a large catalog)

        intake = RouteIntake(apply, known=lambda peer: {}, limits=ROOMY, log=structlog.get_logger("test"))
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            for i in range(300):  # 3 s of frames
                intake.offer("node-b", advert(route("node-b", "s", tools=(f"t{i}",))))
                await trio.sleep(0.01)
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
        assert applied == [pytest.approx(i * 2.0) for i in range(len(applied))] and len(applied) == 3
