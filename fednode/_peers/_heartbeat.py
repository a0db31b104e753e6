"""A link's heartbeat as a state machine: pings due, pongs matched, the time the link is dead.

No I/O and no clock of its own, in the spirit of h11: the caller passes the time in, sends the
pings it is handed and reports the pongs it reads. :class:`fednode._peers._link.Link` drives one with a
single trio task that sleeps until the next thing due (a ping, the heartbeat timeout, the stall
limit of a frame being written).

Only a pong answering a ping we sent and have not seen answered counts. Seqs are random, so a peer
that did not read the ping cannot answer it; a pong answering nothing (a guess, a replay, an
unsolicited one) keeps nothing alive and is only counted.
"""

from __future__ import annotations

import math
import secrets
from typing import Protocol

#: Bits of a ping seq: random, and exact as a JSON number in any peer's language.
SEQ_BITS = 53

# One for all links: each Random instance carries a Mersenne Twister state (~2.5 KiB) that the
# operating system's generator never uses.
_OS_RANDOM = secrets.SystemRandom()


class BitSource(Protocol):
    """Where ping seqs come from (``random.Random``, ``secrets.SystemRandom``, or a test's own)."""

    def getrandbits(self, k: int, /) -> int: ...


def stall_limit(interval: float, timeout: float) -> float:
    """How long a frame may take to be written before the peer counts as no longer reading.

    Half the heartbeat slack (``timeout - interval``): a reader held up writing to a stalled peer
    (an inline answer, a request passed on) still answers its own peer's pings in time.
    """
    return max((timeout - interval) / 2, 0.1)


class Heartbeat:
    """The heartbeat of one link, started at ``start``: the first ping is due at once.

    Args:
        interval: seconds from one ping to the next.
        timeout: seconds without a pong that counts after which the link is dead.
        start: the time the link came up (its liveness counts from there).
        rng: the source of ping seqs (default: the operating system's, so seqs cannot be guessed).
    """

    def __init__(self, *, interval: float, timeout: float, start: float, rng: BitSource | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval!r}")
        self.interval = interval
        self.timeout = timeout
        self.stall_limit = stall_limit(interval, timeout)
        #: when the next ping is due
        self.next_ping_at = start
        #: when the last pong that counted arrived (``start`` before the first)
        self.last_pong = start
        #: round trip of the last pong that counted, in seconds
        self.rtt: float | None = None
        #: pongs that answered no ping of ours
        self.stray_pongs = 0
        self._rng: BitSource = rng if rng is not None else _OS_RANDOM
        # The pings of the last ``timeout`` (and one more), oldest first: a pong for an older one
        # could not keep the link up anyway, and the table stays bounded whatever the peer does.
        self._pings: dict[int, float] = {}  # seq -> time sent
        self._pings_kept = math.ceil(timeout / interval) + 1

    @property
    def dead_at(self) -> float:
        """When the link is dead unless a pong that counts arrives before."""
        return self.last_pong + self.timeout

    def is_dead(self, now: float) -> bool:
        """True once ``timeout`` has passed since the last pong that counted (or the start)."""
        return now >= self.last_pong + self.timeout

    def next_ping_due(self, now: float) -> bool:
        """True when a ping should be sent at ``now`` (then call :meth:`ping`)."""
        return now >= self.next_ping_at

    def ping(self, now: float) -> int:
        """Record a ping sent at ``now`` and return its seq; the next is due ``interval`` later."""
        pings = self._pings
        seq = self._rng.getrandbits(SEQ_BITS)
        while seq in pings:
            seq = self._rng.getrandbits(SEQ_BITS)
        if len(pings) >= self._pings_kept:
            del pings[next(iter(pings))]
        pings[seq] = now
        self.next_ping_at = now + self.interval
        return seq

    def pong(self, seq: int, now: float) -> float | None:
        """A pong for ``seq`` read at ``now``: its round trip, or None if it answers no ping of ours.

        A pong that counts moves :attr:`dead_at` to ``now + timeout``. One that does not (its ping
        was never sent, already answered, or forgotten) changes nothing but :attr:`stray_pongs`:
        it is not a protocol error, which would let the rate of such pongs decide when the link
        ends; a peer sending only these is dead at the timeout, which says how many it sent.
        """
        sent_at = self._pings.pop(seq, None)
        if sent_at is None:
            self.stray_pongs += 1
            return None
        # max(): a pong cannot come before its ping, whatever the caller's clock did.
        self.rtt = rtt = max(now - sent_at, 0.0)
        self.last_pong = max(self.last_pong, now)
        return rtt

    def next_event_at(self) -> float:
        """The earliest time something is due: the next ping, or the link's death."""
        return min(self.next_ping_at, self.last_pong + self.timeout)

