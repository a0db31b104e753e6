"""Memory a peer's routes held goes back to the system once they go (glibc's malloc_trim)."""

from __future__ import annotations

import platform

import trio
import trio.testing

from fednode._config._memory import MemoryTrimmer, give_back_memory


def test_memory_is_given_back_where_the_c_library_can() -> None:
    assert give_back_memory() is (platform.libc_ver()[0] == "glibc")


async def test_a_burst_of_requests_is_one_trim_after_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    trims: list[float] = []

    def trim() -> bool:
        trims.append(trio.current_time())
        return True

    trimmer = MemoryTrimmer(delay=1.0, trim=trim)
    async with trio.open_nursery() as nursery:
        await nursery.start(trimmer.run)
        for _ in range(5):
            trimmer.soon()
            await trio.sleep(0.1)
        await trio.sleep(5)
        assert trims == [1.0] and trimmer.trims == 1
        trimmer.soon()
        await trio.sleep(5)
        assert trims == [1.0, 6.5] and trimmer.trims == 2
        nursery.cancel_scope.cancel()
