"""Giving memory the process freed back to the operating system, where the C library can.

CPython hands large blocks (a packed catalog's definitions among them) to the C library's
``malloc``, whose ``free`` keeps the memory for reuse: the process's resident size stays where it
was after a large catalog goes. glibc's ``malloc_trim`` returns the free pages to the system; the
node calls it a moment after a peer's routes went (:class:`MemoryTrimmer`). Elsewhere (another C
library, another system) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import trio

#: Seconds between a peer's routes going and the memory they held being given back (what goes
#: with them is freed by then: the catalog rebuilt, the advertisements to other peers sent).
TRIM_DELAY = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_TRIM = _malloc_trim()


def give_back_memory() -> bool:
    """Return the C library's free memory to the system (glibc); whether it could."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class MemoryTrimmer:
    """Gives freed memory back a moment after something large went (see :func:`give_back_memory`).

    :meth:`soon` may be called any number of times; :meth:`run` trims once per burst, at most
    once per :data:`TRIM_DELAY`.
    """

    def __init__(self, *, delay: float = TRIM_DELAY, trim: Callable[[], bool] = give_back_memory) -> None:
        self.delay = delay
        self._trim = trim
        self._due = trio.Event()
        #: how many times memory was given back
        self.trims = 0

    def soon(self) -> None:
        """Something large was freed (or is about to be): trim after the delay."""
        self._due.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Trim whenever asked to, after the delay. Runs until cancelled."""
        task_status.started()
        while True:
            await self._due.wait()
            await trio.sleep(self.delay)
            self._due = trio.Event()  # what is freed while trimming asks for another round
            if self._trim():
                self.trims += 1
