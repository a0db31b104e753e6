"""Long work in short slices: a large route update (routes, then the catalog) lets other tasks run meanwhile."""

from __future__ import annotations

from collections.abc import Generator

import pytest
import structlog
import trio
import trio.testing
from test_routing import ME, OPEN, Clock, advert, learned, proven, revoking, route, signed_table, withdrawal

from fednode._federation._catalog import Catalog
from fednode._federation._pacer import Pacer, drain
from fednode._federation._routes import Route
from fednode._federation._routing import RoutingTable
from fednode._federation._withdrawn import WithdrawnNames


class Ticks:
    """A clock that moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestPacer:
    async def test_it_lets_others_run_only_once_a_slice_is_used_up(self) -> None:
        ticks = Ticks()
        pacer = Pacer(slice_length=0.002, clock=ticks)
        ticks.now = 0.001
        with trio.testing.assert_no_checkpoints():  # within the slice: the work goes on
            await pacer.pause()
        ticks.now = 0.0025
        with trio.testing.assert_checkpoints():  # used up: others run before the work goes on
            await pacer.pause()
        assert pacer.pauses == 1
        ticks.now = 0.0035
        with trio.testing.assert_no_checkpoints():  # a new slice began when it resumed
            await pacer.pause()

    async def test_busy_time_leaves_out_what_others_ran(self) -> None:
        # The clock as the pacer reads it: at the start, when it pauses (3 ms of work), when it
        # resumes (others ran for half a second), and 1 ms of work later.
        readings = iter([0.0, 0.003, 0.503, 0.504])
        pacer = Pacer(slice_length=0.002, clock=lambda: next(readings))
        await pacer.pause()
        assert pacer.pauses == 1 and pacer.busy == pytest.approx(0.004)

    async def test_drive_returns_the_value_and_closes_a_cancelled_generator(self) -> None:
        closed: list[bool] = []

        def steps(n: int) -> Generator[None, None, int]:
            try:
                for _ in range(n):
                    yield
                return n
            finally:
                closed.append(True)

        assert await Pacer(slice_length=0).drive(steps(3)) == 3 and drain(steps(2)) == 2
        with trio.CancelScope() as scope:
            scope.cancel()
            await Pacer(slice_length=0).drive(steps(3))
        assert scope.cancelled_caught and closed == [True, True, True]


def _big(routes: int = 30) -> list[Route]:
    return [route("node-b", f"s{i}", tools=tuple(f"t{j}" for j in range(20))) for i in range(routes)]


class TestPacedReceive:
    """A routing table applies an update a route at a time, consistent with whatever ran in between."""

    async def test_other_tasks_run_between_routes(self) -> None:
        table = RoutingTable(ME)
        log: list[str] = []

        async def ticker() -> None:
            for _ in range(100):
                log.append("tick")
                await trio.lowlevel.checkpoint()

        steps = table.receiving("node-b", OPEN, advert(*_big()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            received = await Pacer(slice_length=0).drive(_logged(steps, log))
        assert received.applied and len(learned(table, "node-b")) == 30
        first, last = log.index("route"), len(log) - 1 - log[::-1].index("route")
        assert log[first:last].count("tick") >= 20  # the ticker ran all along the update

    async def test_a_link_that_goes_down_meanwhile_takes_the_update_with_it(self) -> None:
        table = RoutingTable(ME)
        table.link_up("node-b")
        steps = table.receiving("node-b", OPEN, advert(*_big()))
        for _ in range(10):
            next(steps)
        table.link_down("node-b")
        table.link_up("node-b")  # back, and owed a full advertisement: the old link's update is void
        received = drain(steps)
        assert not received.applied and learned(table, "node-b") == set()

    async def test_a_tombstone_verified_meanwhile_still_applies(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        steps = table.receiving("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock, version=100),
                                                       proven(route("node-c", "u", "node-b"), clock, version=100)))
        next(steps)
        next(steps)  # (node-c, s) is taken; then node-c's withdrawal of it arrives through another peer
        assert table.receive("node-d", OPEN, revoking(withdrawal("node-c", "s", 150, clock))).applied
        assert drain(steps).applied
        assert learned(table, "node-b") == {("node-c", "u")}


def _logged(steps: Generator[None, None, object], log: list[str]) -> Generator[None, None, object]:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        log.append("route")
        yield


def _catalog() -> Catalog:
    return Catalog(ME, structlog.get_logger("test"), WithdrawnNames(clock=lambda: 0.0, wall_clock=lambda: 0.0))


class TestPacedRebuild:
    """The exposed catalog is rebuilt a server at a time; a rebuild that finished meanwhile wins."""

    def _table(self, servers: int) -> RoutingTable:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(*_big(servers)))
        return table

    def test_a_paced_rebuild_builds_what_a_rebuild_does(self) -> None:
        table = self._table(30)
        best = table.update({}, {})
        paced, whole = _catalog(), _catalog()
        steps = paced.rebuilding(best, {}, ())
        pieces = 0
        while True:
            try:
                next(steps)
                pieces += 1
            except StopIteration as stop:
                changed = stop.value
                break
        assert pieces == 30 + 4 and changed == {"tools"} == whole.rebuild(best, {}, ())  # servers, then kinds
        assert {k: list(v) for k, v in paced.entries.items()} == {k: list(v) for k, v in whole.entries.items()}
        assert len(paced.entries["tools"]) == 600 and paced.generation == 1

    def test_a_rebuild_that_finished_meanwhile_voids_a_paced_one(self) -> None:
        table = self._table(30)
        catalog = _catalog()
        steps = catalog.rebuilding(table.update({}, {}), {}, ())
        next(steps)
        table.link_down("node-b")
        assert catalog.rebuild(table.update({}, {}), {}, ()) == set()  # nothing was exposed yet
        assert drain(steps) is None  # out of date: it changes nothing
        assert catalog.entries["tools"] == {} and catalog.generation == 1
