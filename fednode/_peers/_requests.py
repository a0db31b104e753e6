"""The requests a link has sent and not seen answered yet: their ids and their deadlines.

Two kinds share one id space and one deadline heap: the link's own requests (a :class:`Pending`
each, which a task waits on) and requests passed on to the peer from another link (a transit,
which no task waits on: the link's deadline keeper answers the asker when its time is up).

Deadlines are kept by one task per link rather than a cancel scope per request (a scope costs more
than the rest of a round trip's bookkeeping). Entries are dropped lazily: an answered request
leaves its heap entry behind until the keeper reaches it, and the heap is compacted when such
entries dominate it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import attrs
import trio

#: What a request passed on from another link is recorded as (a link's Transit).
Passed = TypeVar("Passed")

#: Compact the heap once it holds more than this many entries, and 4 times as many as are live.
_COMPACT_ABOVE = 1024


@attrs.define
class Pending:
    """One of the link's own requests, waiting for its answer (or error, or its deadline)."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    timed_out: bool = False


class RequestTable(Generic[Passed]):
    """The requests sent on one link and not answered yet, by the ids the link gave them."""

    def __init__(self) -> None:
        #: the link's own requests
        self.pending: dict[int, Pending] = {}
        #: requests passed on to the peer from another link
        self.passed: dict[int, Passed] = {}
        self._next_id = 1
        self._heap: list[tuple[float, int]] = []  # (deadline, request id)
        self._sweep_at = math.inf  # when the keeper looks next
        # set when a deadline earlier than that is added (None until the keeper first looks: an idle
        # link's keeper is not started, see Link._keep_deadlines, and it looks before it waits)
        self._wake: trio.Event | None = None

    def new_id(self) -> int:
        """An id for the next request sent on the link."""
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def add(self, request_id: int, deadline: float) -> Pending:
        """Record one of our requests, due at ``deadline``; the caller removes it from :attr:`pending`."""
        pending = self.pending[request_id] = Pending()
        self._schedule(deadline, request_id)
        return pending

    def add_passed(self, item: Passed, deadline: float) -> int:
        """Record a request passed on to the peer, due at ``deadline``; return the id it goes out with."""
        request_id = self.new_id()
        self.passed[request_id] = item
        self._schedule(deadline, request_id)
        return request_id

    def _schedule(self, deadline: float, request_id: int) -> None:
        heapq.heappush(self._heap, (deadline, request_id))
        if deadline < self._sweep_at and self._wake is not None:
            self._wake.set()

    def expired(self, now: float) -> Iterator[Pending | Passed]:
        """The requests whose deadline is ``now`` or earlier: our own not yet done, and those passed on.

        Each is forgotten by the heap once the caller has dealt with it (and asks for the next);
        the caller marks a Pending timed out, and removes a passed-on request from :attr:`passed`.
        """
        heap = self._heap
        while heap:
            deadline, request_id = heap[0]
            pending = self.pending.get(request_id)
            if pending is not None and not pending.done.is_set():
                if deadline > now:
                    break
                yield pending
            elif (passed := self.passed.get(request_id)) is not None:
                if deadline > now:
                    break
                yield passed
            heapq.heappop(heap)
        # Answered requests leave their entries behind; compact once they dominate the heap.
        live = len(self.pending) + len(self.passed)
        if len(heap) > _COMPACT_ABOVE and len(heap) > 4 * live:
            heap[:] = [entry for entry in heap if entry[1] in self.pending or entry[1] in self.passed]
            heapq.heapify(heap)
        self._sweep_at = heap[0][0] if heap else math.inf
        self._wake = trio.Event()

    async def wait(self) -> None:
        """Sleep until the earliest deadline left by :meth:`expired`, or until an earlier one is added."""
        assert self._wake is not None, "expired() comes first"
        with trio.move_on_at(self._sweep_at):
            await self._wake.wait()
