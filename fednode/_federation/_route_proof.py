"""Proven route origins and paths: who signs what in an advertisement, and how a receiver checks it.

The node that owns a server signs each advertisement of it: origin, server id, prefix, catalog
digest, a *version* that only grows (milliseconds of wall-clock time, so it grows across restarts
too, and at least one more than the last within a process) and an *expiry*. It signs it *to* the
neighbour it sends it to, and every node that passes the route on signs it onward to its next hop:
attestation ``i`` is made by ``path[i]`` over the advertisement, ``path[:i + 1]`` and the node it
was sent to (``path[i + 1]``, or the receiver for the last). So, as in BGPsec (and unlike origin
validation alone), a peer cannot pass on a genuine advertisement with a shorter or altered path: it
would need a signature from the node before it, made out to itself.

The receiver checks every attestation with the signer's key (:class:`fednode._signing.Keyring`),
the expiry, and that the version is not lower than the highest it has verified for that
(origin, server): an old advertisement cannot bring back a changed catalog. The origin signs a new
version whenever the catalog changes, and again before half its lifetime has passed, so a
withdrawn server's last advertisement is dead everywhere once it expires (:data:`ROUTE_TTL`).

Withdrawing does not wait for that: when a server it owns goes, the origin signs a *tombstone*
(:class:`Tombstone`: origin, server, a version above every advertisement it signed of it, and the
advertisement lifetime as expiry), which travels with the route withdrawal and is flooded onward
once per version. A node that verifies it raises its highest known version for that (origin,
server) to the tombstone's: every older advertisement, wherever it comes from, is a replay from
then on, and the origin's next advertisement (a newer version) is believed again.

No I/O: the wall clock is a parameter (tests give their own).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

from .._config._signing import Keyring, Signature, SignatureReason, canonical, signatures_from_wire
from .._errors import SignatureError

#: What every route signature covers first (a signature for anything else never verifies as one).
CONTEXT = "fednode-route/1"
#: What every tombstone signature covers first.
TOMBSTONE_CONTEXT = "fednode-withdrawn/1"
#: How long an origin's signed advertisement stays valid; it re-signs after half of it.
ROUTE_TTL = 3600.0
#: Advertisements valid longer than this are refused (they would pin the version memory).
MAX_ROUTE_TTL = 86400.0
#: Clock difference between nodes tolerated when checking expiry.
CLOCK_LEEWAY = 60.0
#: Most (origin, server) versions remembered; beyond it the ones expiring soonest are forgotten.
MAX_VERSIONS = 65536
_MAX_INT = 2**53  # exact in every JSON implementation

Key = tuple[str, str]
Sigs = tuple[Signature, ...] | None


class RouteRefusal(enum.StrEnum):
    """Why a route was refused (the ``reason`` of ``fednode_routes_refused_total``)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    TOO_LONG_LIVED = "too_long_lived"
    DIGEST_MISMATCH = "digest_mismatch"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"


@attrs.frozen
class Proof:
    """The signed part of an advertisement: version, expiry (Unix seconds) and one attestation per
    hop of the path (None: that hop did not sign; only a vouching peer's routes can have one)."""

    version: int
    expires: int
    sigs: tuple[Sigs, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "expires": self.expires,
                "sigs": [None if sigs is None else [s.to_wire() for s in sigs] for sigs in self.sigs]}

    @classmethod
    def from_wire(cls, item: object, path_length: int) -> Proof:
        """Parse a route's ``proof``.

        Raises:
            ValueError: saying what is wrong.
        """
        if not isinstance(item, dict):
            raise ValueError("proof must be an object")
        version, expires, sigs = item.get("version"), item.get("expires"), item.get("sigs")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_INT for v in (version, expires)):
            raise ValueError("proof version and expires must be non-negative integers")
        if not isinstance(sigs, list) or len(sigs) != path_length:
            raise ValueError("proof must have one list of signatures per hop of the path")
        try:
            parsed = tuple(None if hop is None else signatures_from_wire(hop) for hop in sigs)
        except SignatureError as exc:
            raise ValueError(f"proof: {exc.detail}") from None
        assert isinstance(version, int) and isinstance(expires, int)
        return cls(version=version, expires=expires, sigs=parsed)


@attrs.frozen
class Tombstone:
    """The origin's signed word that it withdrew ``server``: every advertisement of it with a version
    up to this one is dead. ``sigs`` are the origin's (empty for this node's own, signed per peer on
    sending)."""

    origin: str
    server: str
    version: int
    expires: int
    sigs: tuple[Signature, ...] = attrs.field(default=(), repr=False)

    @property
    def key(self) -> Key:
        return (self.origin, self.server)

    def message(self) -> bytes:
        """What the origin signs (not addressed to anyone: it is passed on as it is)."""
        return canonical([TOMBSTONE_CONTEXT, self.origin, self.server, self.version, self.expires])

    def to_wire(self) -> dict[str, Any]:
        return {"origin": self.origin, "server": self.server, "version": self.version, "expires": self.expires,
                "sigs": [s.to_wire() for s in self.sigs]}

    @classmethod
    def from_wire(cls, item: object) -> Tombstone:
        """Parse one tombstone (an entry of a ``fed/routes`` frame's ``revoked``).

        Raises:
            ValueError: saying what is wrong.
        """
        if not isinstance(item, dict):
            raise ValueError("a tombstone must be an object")
        origin, server, version, expires = item.get("origin"), item.get("server"), item.get("version"), \
            item.get("expires")
        if not (isinstance(origin, str) and isinstance(server, str)):
            raise ValueError("tombstone origin and server must be strings")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_INT for v in (version, expires)):
            raise ValueError("tombstone version and expires must be non-negative integers")
        try:
            sigs = signatures_from_wire(item.get("sigs"))
        except SignatureError as exc:
            raise ValueError(f"tombstone: {exc.detail}") from None
        assert isinstance(version, int) and isinstance(expires, int)
        return cls(origin=origin, server=server, version=version, expires=expires, sigs=sigs)


def route_message(origin: str, server: str, prefix: str, digest: str, version: int, expires: int,
                  path: Iterable[str], to: str) -> bytes:
    """What the last node of ``path`` signs when it sends the advertisement to ``to``."""
    return canonical([CONTEXT, origin, server, prefix, digest, version, expires, list(path), to])


class RouteProofs:
    """This node's side of route proofs: versions of its own servers' advertisements, its
    attestations, and verifying (and remembering the versions of) what peers send.

    Args:
        node_id: this node's id.
        keyring: signs and verifies.
        clock: the wall clock (Unix seconds): expiries are compared across nodes.
        ttl: how long this node's own advertisements are valid.
        leeway: clock difference tolerated.
    """

    def __init__(self, node_id: str, keyring: Keyring, *, clock: Callable[[], float] = time.time,
                 ttl: float = ROUTE_TTL, leeway: float = CLOCK_LEEWAY, max_versions: int = MAX_VERSIONS) -> None:
        self.node_id = node_id
        self.keyring = keyring
        self.clock = clock
        self.ttl = ttl
        self.leeway = leeway
        self.max_versions = max_versions
        # server attached here -> ((digest, prefix, variants' digests) signed, version, expires)
        self._local: dict[str, tuple[tuple[str, str, frozenset[str]], int, int]] = {}
        self._last_version = 0
        #: (origin, server) -> the highest version verified, and when it expires
        self.versions: dict[Key, tuple[int, int]] = {}
        #: (origin, server) -> the tombstone that set its entry in :attr:`versions` (this node's own
        #: included), and the peer it came from (None: this node's own); pruned with the versions
        self.tombstones: dict[Key, tuple[Tombstone, str | None]] = {}

    # -- this node's own servers ------------------------------------------------------------

    def local_proof(self, server: str, digest: str, prefix: str, variants: frozenset[str] = frozenset()) -> Proof:
        """The version and expiry of this node's advertisement of ``server`` (no attestation yet).

        A new version when the catalog or prefix changed, or half the lifetime has passed.

        Args:
            variants: the digests of the trimmed catalogs of ``server`` offered to peers whose
                ``export`` leaves out some of its tools (see :mod:`fednode._federation._name_policy`).
                Every variant is advertised with this version, and a new version is signed when they
                change: a peer whose export was narrowed cannot be given its older, wider variant again.
        """
        now = self.clock()
        state = self._local.get(server)
        if state is None or state[0] != (digest, prefix, variants) or state[2] - now <= self.ttl / 2:
            version = max(int(now * 1000), self._last_version + 1)
            self._last_version = version
            state = self._local[server] = ((digest, prefix, variants), version, int(now + self.ttl))
            if self.tombstones.pop((self.node_id, server), None) is not None:  # attached again
                self.versions.pop((self.node_id, server), None)
        return Proof(version=state[1], expires=state[2])

    def keep_local(self, servers: Iterable[str]) -> None:
        """Forget the versions of servers no longer attached here, and withdraw them: a tombstone
        each, with a version above every advertisement signed of it (see :meth:`tombstone_to`)."""
        keep = set(servers)
        for server in self._local.keys() - keep:
            del self._local[server]
            now = self.clock()
            version = max(int(now * 1000), self._last_version + 1)
            self._last_version = version  # a re-attached server's next advertisement is newer still
            self._store(Tombstone(self.node_id, server, version, int(now + self.ttl)), None)

    def tombstone_to(self, tombstone: Tombstone, to: str) -> Tombstone:
        """``tombstone`` as sent to ``to``: this node's own signed now (so that a peer sharing only a
        per-pair secret with it can verify it too), another origin's as it came.

        Raises:
            SignatureError: this node has no key to sign with.
        """
        if tombstone.origin != self.node_id:
            return tombstone
        return attrs.evolve(tombstone, sigs=self.keyring.sign(tombstone.message(), to=to))

    def revoke(self, tombstone: Tombstone, source: str) -> tuple[RouteRefusal, str] | Literal[False] | None:
        """A tombstone received from the peer ``source``: False if it is not news (this node's own,
        or not newer than the highest version known: dropped, not passed on), the refusal if it cannot
        be believed, None if it was verified and now bars every older advertisement of its key."""
        known = self.versions.get(tombstone.key)
        if tombstone.origin == self.node_id or (known is not None and tombstone.version <= known[0]):
            return False  # checked first: a tombstone flooded back along other paths costs nothing
        now = self.clock()
        if tombstone.expires < now - self.leeway:
            return RouteRefusal.EXPIRED, f"tombstone expired {now - tombstone.expires:.0f}s ago"
        if tombstone.expires > now + MAX_ROUTE_TTL + self.leeway:
            return RouteRefusal.TOO_LONG_LIVED, f"tombstone valid for more than {MAX_ROUTE_TTL:g}s"
        try:
            self.keyring.verify(tombstone.origin, tombstone.message(), tombstone.sigs)
        except SignatureError as exc:
            reason = (RouteRefusal.UNKNOWN_KEY if exc.reason == SignatureReason.UNKNOWN_KEY
                      else RouteRefusal.BAD_SIGNATURE)
            return reason, f"tombstone of {tombstone.origin!r}: {exc.detail}"
        self._store(tombstone, source)
        return None

    def revoked(self, key: Key, version: int) -> bool:
        """Whether a tombstone verified here withdrew ``key``'s advertisements of ``version`` (it
        bars every version up to its own)."""
        found = self.tombstones.get(key)
        return found is not None and version <= found[0].version

    def _store(self, tombstone: Tombstone, source: str | None) -> None:
        self.versions[tombstone.key] = (tombstone.version, tombstone.expires)
        self.tombstones[tombstone.key] = (tombstone, source)
        if len(self.versions) > self.max_versions:
            self.prune()

    def attest(self, origin: str, server: str, prefix: str, digest: str, proof: Proof | None,
               path: tuple[str, ...], to: str) -> Proof:
        """``proof`` with this node's attestation (it is the last of ``path``) to ``to`` added.

        A vouched route that came without a proof gets version 0 and this node's expiry: nobody
        downstream can verify its origin, so only a node that trusts this one to vouch takes it.

        Raises:
            SignatureError: this node has no key to sign with.
        """
        if proof is None:
            proof = Proof(version=0, expires=int(self.clock() + self.ttl))
        before: list[Sigs] = list(proof.sigs[:len(path) - 1])
        before += [None] * (len(path) - 1 - len(before))
        message = route_message(origin, server, prefix, digest, proof.version, proof.expires, path, to)
        return attrs.evolve(proof, sigs=(*before, self.keyring.sign(message, to=to)))

    # -- what peers send ----------------------------------------------------------------------

    def verify(self, origin: str, server: str, prefix: str, digest: str, proof: Proof | None,
               path: tuple[str, ...]) -> tuple[RouteRefusal, str] | None:
        """Why a route received by this node (from ``path[-1]``) cannot be believed (None: it can)."""
        if proof is None:
            return RouteRefusal.UNSIGNED, "the route carries no proof"
        if len(proof.sigs) != len(path):
            return RouteRefusal.MALFORMED, "one attestation per hop expected"
        now = self.clock()
        if proof.expires < now - self.leeway:
            return RouteRefusal.EXPIRED, f"expired {now - proof.expires:.0f}s ago"
        if proof.expires > now + MAX_ROUTE_TTL + self.leeway:
            return RouteRefusal.TOO_LONG_LIVED, f"valid for more than {MAX_ROUTE_TTL:g}s"
        for index, signer in enumerate(path):
            sigs = proof.sigs[index]
            if sigs is None:
                return RouteRefusal.UNSIGNED, f"hop {signer!r} did not sign it"
            to = path[index + 1] if index + 1 < len(path) else self.node_id
            message = route_message(origin, server, prefix, digest, proof.version, proof.expires,
                                    path[:index + 1], to)
            try:
                self.keyring.verify(signer, message, sigs)
            except SignatureError as exc:
                reason = (RouteRefusal.UNKNOWN_KEY if exc.reason == SignatureReason.UNKNOWN_KEY
                          else RouteRefusal.BAD_SIGNATURE)
                return reason, f"hop {index} ({signer!r} to {to!r}): {exc.detail}"
        highest = self.versions.get((origin, server))
        if highest is not None and proof.version < highest[0]:
            return RouteRefusal.REPLAY, f"version {proof.version} is older than {highest[0]} seen"
        if self.revoked((origin, server), proof.version):
            return RouteRefusal.REPLAY, f"its origin withdrew version {proof.version} (a tombstone)"
        return None

    def remember(self, key: Key, proof: Proof) -> None:
        """A verified route for ``key`` was accepted: its version is now the lowest accepted."""
        highest = self.versions.get(key)
        if highest is None or (proof.version, proof.expires) > highest:
            self.versions[key] = (proof.version, proof.expires)
            tombstone = self.tombstones.get(key)
            if tombstone is not None and tombstone[0].version < proof.version:
                del self.tombstones[key]  # re-attached: a newer advertisement supersedes it
        if len(self.versions) > self.max_versions:
            self.prune()

    def prune(self) -> None:
        """Forget versions whose advertisement has expired, and the soonest-expiring beyond the bound."""
        cutoff = self.clock() - self.leeway
        for key in [key for key, (_version, expires) in self.versions.items() if expires < cutoff]:
            del self.versions[key]
        if len(self.versions) > self.max_versions:
            ordered = sorted(self.versions.items(), key=lambda item: item[1][1])
            for key, _ in ordered[:len(self.versions) - self.max_versions]:
                del self.versions[key]
        # A tombstone lives as long as the version it set: bounded and expiring with them.
        for key in [key for key, (tombstone, _source) in self.tombstones.items()
                    if self.versions.get(key, (None, 0))[0] != tombstone.version]:
            del self.tombstones[key]

    def usable(self, key: Key, proof: Proof | None) -> bool:
        """Whether a verified route accepted earlier may still be used: not expired, not superseded
        by a newer version of the same (origin, server) verified since."""
        if proof is None:
            return False
        if proof.expires < self.clock() - self.leeway:
            return False
        highest = self.versions.get(key)
        return (highest is None or proof.version >= highest[0]) and not self.revoked(key, proof.version)
