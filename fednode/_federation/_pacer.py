"""Long work in short slices, so that what one peer sends never holds the node's other tasks for long.

Applying a large route update, or building the advertisement of one for a peer, is synchronous
work proportional to what the peer sent (validating, verifying, encoding each route). Done in one
go, it holds every other task of the node (clients' calls included) for as long as it takes. A
:class:`Pacer` is given to such work, which calls :meth:`Pacer.pause` between its pieces (or runs
them as a generator with :meth:`Pacer.drive`): once a slice of :data:`SLICE` seconds is used up,
the next piece waits until the other tasks are idle (at most :data:`MAX_WAIT`), so such work runs
in the node's spare time and delays a client's call by one slice at most each time it waits. It
also adds up the time the work took in its slices (:attr:`Pacer.busy`), not counting the time
others ran in between, so that the work can be spaced by what it cost (see
:mod:`fednode._federation._route_intake`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar, cast

import trio
import trio.testing

#: How long a piece of work runs before it lets the node's other tasks run (seconds).
SLICE = 0.001
#: How long a piece of work waits at most for the node's other tasks to be idle (seconds): on a
#: node that is never idle, such work still gets about a tenth of its time (a slice per 10 ms).
MAX_WAIT = 0.01

T = TypeVar("T")


class Pacer:
    """Lets other tasks run whenever a slice of work is used up, and adds up the work's time.

    Args:
        slice_length: seconds of work between pauses.
        clock: the clock slices are measured with (Trio's by default: MockClock-friendly).
    """

    def __init__(self, *, slice_length: float = SLICE, max_wait: float = MAX_WAIT,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.slice_length = slice_length
        self.max_wait = max_wait
        self._clock = clock
        self._since = clock()
        self._busy = 0.0
        #: how many times the work let other tasks run
        self.pauses = 0

    @property
    def busy(self) -> float:
        """The work's time so far (seconds), the slice under way included, others' turns excluded."""
        return self._busy + self._clock() - self._since

    async def pause(self) -> None:
        """A point where the work may stop for a while: other tasks run if this slice is used up.

        Raises:
            trio.Cancelled: only when it lets others run, if the work was cancelled meanwhile.
        """
        now = self._clock()
        if now - self._since < self.slice_length:
            return
        self._busy += now - self._since
        self.pauses += 1
        # Idle priority: the work goes on once every other task is blocked (waiting for I/O or a
        # timer), so that a client's call, a heartbeat or a forward runs before the next slice and
        # waits for at most the slice under way. Under full load, the work goes on anyway after
        # max_wait: it slows down, but never stops.
        with trio.move_on_after(self.max_wait):
            await trio.testing.wait_all_tasks_blocked()
        self._since = self._clock()

    async def drive(self, steps: Generator[None, None, T]) -> T:
        """Run ``steps`` (a generator that yields between pieces of work) to its end; its return value.

        If this is cancelled, the generator is closed where it stood.
        """
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as stop:
                    return cast(T, stop.value)
                await self.pause()
        finally:
            steps.close()


def drain(steps: Generator[None, None, T]) -> T:
    """Run ``steps`` to its end at once (no pauses); its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return cast(T, stop.value)
