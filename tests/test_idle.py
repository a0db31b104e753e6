"""The idle wait that closes unused per-session and per-call server connections, under MockClock."""

from __future__ import annotations

import trio
import trio.testing

from fednode._mcp._sessions import until_idle


async def test_returns_one_idle_period_after_the_last_use(autojump_clock: trio.testing.MockClock) -> None:
    last_used = 0.0

    async def used_at(when: float) -> None:
        nonlocal last_used
        await trio.sleep_until(when)
        last_used = when

    async with trio.open_nursery() as nursery:
        nursery.start_soon(used_at, 7.0)
        nursery.start_soon(used_at, 15.0)
        await until_idle(10.0, lambda: last_used)
        assert trio.current_time() == 25.0


async def test_never_while_busy(autojump_clock: trio.testing.MockClock) -> None:
    busy = True

    async def finish_at(when: float) -> None:
        nonlocal busy
        await trio.sleep_until(when)
        busy = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_at, 95.0)
        await until_idle(10.0, lambda: 0.0, lambda: busy)
        # in use until 95: the first look after that is at 100, one period after the look at 90
        assert trio.current_time() == 100.0
