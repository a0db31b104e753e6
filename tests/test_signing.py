"""Signing and verifying without sockets: keys by kid, same-secret federations, Ed25519, route proofs.

Plain tests of :class:`fednode._signing.Keyring` and :class:`fednode._route_proof.RouteProofs`, and
hypothesis properties: a genuine chain of attestations verifies, any change to what was signed (a
field, a hop dropped, added, replaced or reordered, the receiver) does not, and arbitrary input to the
parsers raises only their own errors.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode import AuthConfig, NodeKeys, PeerConfig, Secret
from fednode._config._signing import Keyring, Signature, SignatureReason, signatures_from_wire
from fednode._errors import SignatureError
from fednode._federation._route_proof import MAX_ROUTE_TTL, ROUTE_TTL, Proof, RouteProofs, RouteRefusal, Tombstone

SHARED = Secret("shared-" + "0123456789abcdef" * 5)
OTHER = Secret("other-" + "fedcba9876543210" * 5)
PAIR = Secret("pair-" + "0f1e2d3c4b5a6978" * 5)
NOW = 1_800_000_000.0


def hs(node_id: str, secret: Secret | None = SHARED, *, peers: tuple[PeerConfig, ...] = (),
       nodes: tuple[NodeKeys, ...] = ()) -> Keyring:
    auth = AuthConfig(secrets=(secret,) if secret is not None else ())
    by_id = {p.id: p for p in peers}
    return Keyring(node_id, auth=lambda: auth, peer=by_id.get, nodes=lambda: nodes)


def ed(node_id: str, key: Ed25519PrivateKey, *, peers: tuple[PeerConfig, ...] = (),
       nodes: tuple[NodeKeys, ...] = ()) -> Keyring:
    auth = AuthConfig(algorithm="EdDSA", private_key=key)
    by_id = {p.id: p for p in peers}
    return Keyring(node_id, auth=lambda: auth, peer=by_id.get, nodes=lambda: nodes)


def reason(keyring: Keyring, signer: str, message: bytes, sigs: tuple[Signature, ...]) -> SignatureReason | None:
    try:
        keyring.verify(signer, message, sigs)
    except SignatureError as exc:
        return SignatureReason(exc.reason)
    return None


class TestKeyring:
    """Who verifies whose signatures with which key."""

    def test_a_same_secret_federation_needs_no_configuration(self) -> None:
        sigs = hs("node-c").sign(b"hello", to="node-b")
        assert [s.kid for s in sigs] == [SHARED.kid]
        assert reason(hs("node-a"), "node-c", b"hello", sigs) is None  # node-c is configured nowhere at node-a
        assert reason(hs("node-a"), "node-c", b"hellO", sigs) is SignatureReason.BAD_SIGNATURE
        assert reason(hs("node-a", OTHER), "node-c", b"hello", sigs) is SignatureReason.UNKNOWN_KEY

    def test_nodes_entries_and_peer_secrets_come_before_the_own_secret(self) -> None:
        sigs = hs("node-c", OTHER).sign(b"m")
        known = hs("node-a", nodes=(NodeKeys(id="node-c", secrets=(OTHER,)),))
        assert reason(known, "node-c", b"m", sigs) is None
        # A node configured with other keys is not verified with this node's own secret.
        pinned = hs("node-a", nodes=(NodeKeys(id="node-c", secrets=(PAIR,)),))
        assert reason(pinned, "node-c", b"m", hs("node-c").sign(b"m")) is SignatureReason.UNKNOWN_KEY
        peer = hs("node-a", peers=(PeerConfig(id="node-c", secrets=(PAIR,)),))
        assert reason(peer, "node-c", b"m", hs("node-c").sign(b"m")) is SignatureReason.UNKNOWN_KEY

    def test_a_per_pair_secret_signs_too_so_that_peer_can_verify(self) -> None:
        signer = hs("node-b", peers=(PeerConfig(id="node-a", secrets=(PAIR,)),))
        sigs = signer.sign(b"m", to="node-a")
        assert [s.kid for s in sigs] == [SHARED.kid, PAIR.kid]
        # node-a shares only the pair secret with node-b (and has an [auth] secret of its own).
        verifier = hs("node-a", OTHER, peers=(PeerConfig(id="node-b", secrets=(PAIR,)),))
        assert reason(verifier, "node-b", b"m", sigs) is None
        assert [s.kid for s in signer.sign(b"m", to="node-z")] == [SHARED.kid]
        only_pairs = hs("node-b", None, peers=(PeerConfig(id="node-a", secrets=(PAIR,)),))
        assert [s.kid for s in only_pairs.sign(b"m", to="node-a")] == [PAIR.kid]
        with pytest.raises(SignatureError):
            only_pairs.sign(b"m", to="node-z")

    def test_ed25519_with_peer_and_nodes_public_keys(self) -> None:
        c_key, b_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        sigs = ed("node-c", c_key).sign(b"m", to="node-b")
        assert len(sigs) == 1 and sigs[0].kid.startswith("ed-")
        a = ed("node-a", Ed25519PrivateKey.generate(),
               peers=(PeerConfig(id="node-b", public_keys=(b_key.public_key(),)),),
               nodes=(NodeKeys(id="node-c", public_keys=(c_key.public_key(),)),))
        assert reason(a, "node-c", b"m", sigs) is None
        assert reason(a, "node-b", b"m", ed("node-b", b_key).sign(b"m")) is None
        assert reason(a, "node-c", b"x", sigs) is SignatureReason.BAD_SIGNATURE
        assert reason(a, "node-b", b"m", sigs) is SignatureReason.UNKNOWN_KEY  # node-c's key is not node-b's
        assert reason(a, "node-d", b"m", sigs) is SignatureReason.UNKNOWN_KEY  # no key for node-d at all
        # An HS512 verifier can check an Ed25519 signer it has the public key of.
        assert reason(hs("node-a", nodes=(NodeKeys(id="node-c", public_keys=(c_key.public_key(),)),)),
                      "node-c", b"m", sigs) is None

    def test_a_secret_is_never_taken_for_a_public_key_by_its_kid(self) -> None:
        forged = Signature(kid=SHARED.kid, value=b"\0" * 64)
        assert reason(hs("node-a"), "node-c", b"m", (forged,)) is SignatureReason.BAD_SIGNATURE


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12))
def test_parsers_raise_only_their_own_errors(item: Any) -> None:
    try:
        signatures_from_wire(item)
    except SignatureError as exc:
        assert exc.reason == SignatureReason.MALFORMED
    for length in (1, 2):
        with contextlib.suppress(ValueError):
            Proof.from_wire(item, length)
        with contextlib.suppress(ValueError):
            Proof.from_wire({"version": 1, "expires": 2, "sigs": item}, length)
    for tombstone in (item, {"origin": "c", "server": "s", "version": 1, "expires": 2, "sigs": item}):
        with contextlib.suppress(ValueError):
            Tombstone.from_wire(tombstone)


# -- route proofs -------------------------------------------------------------------------------------

CATALOG = ("notes", "notes", "d1")  # server, prefix, digest


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def proofs(node_id: str, clock: Clock, keyring: Keyring | None = None) -> RouteProofs:
    return RouteProofs(node_id, keyring or hs(node_id), clock=clock)


def chain(path: tuple[str, ...], to: str, clock: Clock, *, server: str = "notes", prefix: str = "notes",
          digest: str = "d1", origin_proofs: RouteProofs | None = None) -> Proof:
    """What ``path`` sends ``to``: the origin's proof and each hop's attestation (same-secret keys)."""
    first = origin_proofs or proofs(path[0], clock)
    proof = first.local_proof(server, digest, prefix)
    for index, hop in enumerate(path):
        signer = first if index == 0 else proofs(hop, clock)
        next_hop = path[index + 1] if index + 1 < len(path) else to
        proof = signer.attest(path[0], server, prefix, digest, proof, path[:index + 1], next_hop)
    return proof


def check(receiver: RouteProofs, path: tuple[str, ...], proof: Proof | None, *, server: str = "notes",
          prefix: str = "notes", digest: str = "d1") -> RouteRefusal | None:
    found = receiver.verify(path[0], server, prefix, digest, proof, path)
    return None if found is None else found[0]


class TestRouteProofs:
    """The origin and every hop sign; what was not signed so is refused."""

    def test_a_genuine_chain_verifies(self) -> None:
        clock = Clock()
        path = ("node-c", "node-b")
        assert check(proofs("node-a", clock), path, chain(path, "node-a", clock)) is None

    def test_the_issues_forgeries_are_refused(self) -> None:
        clock = Clock()
        a = proofs("node-a", clock)
        genuine = chain(("node-c", "node-b", "node-a"), "evil", clock)  # what node-a sends evil
        evil = proofs("evil", clock, hs("evil", OTHER))
        # Shortened to [node-c, evil]: node-c's attestation is made out to node-b.
        shortened = evil.attest("node-c", *CATALOG, genuine, ("node-c", "evil"), "node-a")
        assert check(a, ("node-c", "evil"), shortened) is RouteRefusal.BAD_SIGNATURE
        # No proof; node-c's part signed by evil; the hop before evil left out.
        assert check(a, ("node-c", "evil"), None) is RouteRefusal.UNSIGNED
        own = evil.attest("node-c", *CATALOG, Proof(genuine.version, genuine.expires), ("node-c",), "evil")
        own = evil.attest("node-c", *CATALOG, own, ("node-c", "evil"), "node-a")
        assert check(a, ("node-c", "evil"), own) is RouteRefusal.UNKNOWN_KEY
        unsigned_hop = evil.attest("node-c", *CATALOG, Proof(genuine.version, genuine.expires),
                                   ("node-c", "evil"), "node-a")
        assert unsigned_hop.sigs[0] is None
        assert check(a, ("node-c", "evil"), unsigned_hop) is RouteRefusal.UNSIGNED

    def test_a_changed_field_is_refused(self) -> None:
        clock = Clock()
        a = proofs("node-a", clock)
        proof = chain(("node-c", "node-b"), "node-a", clock)
        assert check(a, ("node-c", "node-b"), proof, digest="d2") is RouteRefusal.BAD_SIGNATURE
        assert check(a, ("node-c", "node-b"), proof, prefix="x") is RouteRefusal.BAD_SIGNATURE
        assert check(a, ("node-c", "node-b"), proof, server="other") is RouteRefusal.BAD_SIGNATURE
        later = Proof(proof.version + 1, proof.expires, proof.sigs)
        assert check(a, ("node-c", "node-b"), later) is RouteRefusal.BAD_SIGNATURE
        # What node-b was sent is not what node-d may show node-a.
        assert check(proofs("node-d", clock), ("node-c", "node-b"), proof) is RouteRefusal.BAD_SIGNATURE

    def test_expired_and_too_long_lived(self) -> None:
        clock = Clock()
        proof = chain(("node-c",), "node-a", clock)
        assert proof.expires == int(NOW + ROUTE_TTL)
        clock.now += ROUTE_TTL + 61
        assert check(proofs("node-a", clock), ("node-c",), proof) is RouteRefusal.EXPIRED
        far = proofs("node-c", clock)
        far.ttl = MAX_ROUTE_TTL + 3600
        long_lived = chain(("node-c",), "node-a", clock, origin_proofs=far)
        assert check(proofs("node-a", clock), ("node-c",), long_lived) is RouteRefusal.TOO_LONG_LIVED

    def test_versions_only_grow_and_an_older_one_is_a_replay(self) -> None:
        clock = Clock()
        c = proofs("node-c", clock)
        first = c.local_proof("notes", "d1", "notes")
        assert c.local_proof("notes", "d1", "notes") == first  # unchanged: the same version
        changed = c.local_proof("notes", "d2", "notes")
        assert changed.version > first.version  # even within the same millisecond
        clock.now += ROUTE_TTL / 2
        renewed = c.local_proof("notes", "d2", "notes")
        assert renewed.version > changed.version and renewed.expires > changed.expires
        # A restart: a new process, later, starts above what the old one signed.
        clock.now += 1
        assert proofs("node-c", clock).local_proof("notes", "d1", "notes").version > renewed.version
        a = proofs("node-a", clock)
        new = chain(("node-c",), "node-a", clock, digest="d2", origin_proofs=c)
        assert check(a, ("node-c",), new, digest="d2") is None
        a.remember(("node-c", "notes"), new)
        old = Proof(first.version, first.expires)
        old = c.attest("node-c", "notes", "notes", "d1", old, ("node-c",), "node-a")
        assert check(a, ("node-c",), old) is RouteRefusal.REPLAY
        assert not a.usable(("node-c", "notes"), old) and a.usable(("node-c", "notes"), new)

    def test_versions_remembered_are_bounded_and_expire(self) -> None:
        clock = Clock()
        a = RouteProofs("node-a", hs("node-a"), clock=clock, max_versions=10)
        for i in range(25):
            a.remember(("node-c", f"s{i}"), Proof(version=1, expires=int(NOW + 100 + i)))
            assert len(a.versions) <= 10
        assert set(a.versions) == {("node-c", f"s{i}") for i in range(15, 25)}  # the longest-lived kept
        clock.now += 200
        a.prune()
        assert a.versions == {}

    def test_local_versions_are_forgotten_with_their_server(self) -> None:
        c = proofs("node-c", Clock())
        c.local_proof("notes", "d1", "notes")
        c.keep_local(())
        assert c._local == {}


PATH_NODES = ("node-a", "node-b", "node-c", "node-d", "node-e", "evil")


@st.composite
def chains(draw: Any) -> tuple[tuple[str, ...], str]:
    """A loop-free path and the node it is sent to (not on it)."""
    nodes = draw(st.permutations(PATH_NODES))
    length = draw(st.integers(1, len(nodes) - 1))
    return tuple(nodes[:length]), nodes[length]


@settings(max_examples=150, deadline=None)
@given(chains(), st.data())
def test_any_altered_path_is_refused(sent: tuple[tuple[str, ...], str], data: Any) -> None:
    path, receiver = sent
    clock = Clock()
    proof = chain(path, receiver, clock)
    verifier = proofs(receiver, clock)
    assert check(verifier, path, proof) is None
    # Another path of the same length, with the attestations as they are: what a relay could show.
    others = [n for n in PATH_NODES if n != receiver]
    altered = tuple(data.draw(st.permutations(others))[:len(path)])
    if altered != path:
        assert check(verifier, altered, proof) is not None
    # A shorter path (hops dropped, attestations dropped with them), ending where it ends now.
    if len(path) > 1:
        keep = sorted(data.draw(st.sets(st.integers(0, len(path) - 2), max_size=len(path) - 2)))
        indexes = [*keep, len(path) - 1]
        shorter = tuple(path[i] for i in indexes)
        dropped = Proof(proof.version, proof.expires, tuple(proof.sigs[i] for i in indexes))
        assert check(verifier, shorter, dropped) is not None
    # Sent to someone else.
    elsewhere = data.draw(st.sampled_from([n for n in PATH_NODES if n not in path and n != receiver] or [path[0]]))
    assert check(proofs(elsewhere, clock), path, proof) is not None


# -- tombstones ---------------------------------------------------------------------------------------

def withdrawn(origin: RouteProofs, server: str = "notes") -> Tombstone:
    """The tombstone ``origin`` keeps for ``server`` once it is no longer attached (unsigned yet)."""
    if server not in origin._local:
        origin.local_proof(server, "d1", server)  # advertised first
    origin.keep_local(())
    return origin.tombstones[(origin.node_id, server)][0]


def sent(tombstone: Tombstone, origin: RouteProofs, to: str) -> Tombstone:
    """``tombstone`` as it arrives (through the wire) after ``origin`` signed it to ``to``."""
    return Tombstone.from_wire(origin.tombstone_to(tombstone, to).to_wire())


class TestTombstones:
    """An origin's signed withdrawal: verified with the origin's key wherever that is known, bars older versions."""

    def test_a_withdrawal_is_newer_than_every_advertisement_and_lives_as_long(self) -> None:
        clock = Clock()
        c = proofs("node-c", clock)
        last = c.local_proof("notes", "d1", "notes")
        tombstone = withdrawn(c)
        assert tombstone.version > last.version and tombstone.expires == int(NOW + ROUTE_TTL) >= last.expires
        assert c._local == {}
        # Attached again (in the same millisecond): its next advertisement is newer than the tombstone,
        # and the tombstone is no longer passed on.
        again = c.local_proof("notes", "d1", "notes")
        assert again.version > tombstone.version and c.tombstones == {}

    def test_a_verified_tombstone_bars_older_advertisements_and_a_newer_one_is_believed(self) -> None:
        clock = Clock()
        c, a = proofs("node-c", clock), proofs("node-a", clock)
        old = chain(("node-c", "node-b"), "node-a", clock, origin_proofs=c)
        assert check(a, ("node-c", "node-b"), old) is None
        a.remember(("node-c", "notes"), old)
        tombstone = sent(withdrawn(c), c, "node-b")
        assert a.revoke(tombstone, "node-b") is None
        assert a.versions[("node-c", "notes")] == (tombstone.version, tombstone.expires)
        assert a.tombstones[("node-c", "notes")] == (tombstone, "node-b")
        assert check(a, ("node-c", "node-b"), old) is RouteRefusal.REPLAY  # through anyone
        assert not a.usable(("node-c", "notes"), old)
        # Not news a second time (flooded back along another path) and never this node's own.
        assert a.revoke(tombstone, "node-d") is False
        own = Tombstone("node-a", "notes", tombstone.version + 5, tombstone.expires)
        assert a.revoke(attrs.evolve(own, sigs=a.keyring.sign(own.message())), "node-b") is False
        # Re-attached: believed again, and the tombstone has done its work.
        new = chain(("node-c", "node-b"), "node-a", clock, origin_proofs=c)
        assert check(a, ("node-c", "node-b"), new) is None
        a.remember(("node-c", "notes"), new)
        assert a.tombstones == {} and a.usable(("node-c", "notes"), new)
        # The old tombstone again changes nothing.
        assert a.revoke(tombstone, "node-b") is False and check(a, ("node-c", "node-b"), new) is None

    def test_a_tombstone_that_does_not_verify_is_refused(self) -> None:
        clock = Clock()
        c, a = proofs("node-c", clock), proofs("node-a", clock)
        tombstone = sent(withdrawn(c), c, "node-b")

        def refusal(t: Tombstone) -> RouteRefusal | None:
            found = a.revoke(t, "evil")
            assert found is not False
            return None if found is None else found[0]

        assert refusal(Tombstone("node-c", "notes", tombstone.version + 1, tombstone.expires,
                                 tombstone.sigs)) is RouteRefusal.BAD_SIGNATURE
        assert refusal(Tombstone("node-c", "other", tombstone.version, tombstone.expires,
                                 tombstone.sigs)) is RouteRefusal.BAD_SIGNATURE
        # Signed by evil with a key of its own, or in node-c's name by a node that is not node-c.
        by_evil = proofs("evil", clock, hs("evil", OTHER))
        forged = Tombstone("node-c", "notes", tombstone.version, tombstone.expires)
        assert refusal(attrs.evolve(forged, sigs=by_evil.keyring.sign(forged.message()))) is RouteRefusal.UNKNOWN_KEY
        assert refusal(Tombstone("node-c", "notes", tombstone.version, tombstone.expires,
                                 proofs("node-b", clock).keyring.sign(b"x"))) is RouteRefusal.BAD_SIGNATURE
        # A route signature is not a tombstone signature.
        route_sigs = chain(("node-c",), "node-a", clock, origin_proofs=c).sigs[0]
        assert route_sigs is not None
        assert refusal(attrs.evolve(tombstone, sigs=route_sigs)) is RouteRefusal.BAD_SIGNATURE
        clock.now += ROUTE_TTL + 61
        assert refusal(tombstone) is RouteRefusal.EXPIRED
        clock.now = NOW
        far = proofs("node-c", clock)
        far.ttl = MAX_ROUTE_TTL + 3600
        assert refusal(sent(withdrawn(far), far, "node-a")) is RouteRefusal.TOO_LONG_LIVED
        assert a.versions == {} and a.tombstones == {}  # nothing refused is remembered

    def test_verified_with_the_keys_of_route_proofs(self) -> None:
        clock = Clock()
        # Ed25519: far nodes verify with the origin's [[nodes]] public key.
        key = Ed25519PrivateKey.generate()
        c = proofs("node-c", clock, ed("node-c", key))
        tombstone = sent(withdrawn(c), c, "node-b")
        far = proofs("node-a", clock, hs("node-a", nodes=(NodeKeys(id="node-c", public_keys=(key.public_key(),)),)))
        assert far.revoke(tombstone, "node-b") is None
        found = proofs("node-a", clock, hs("node-a", OTHER)).revoke(tombstone, "node-b")
        assert found is not None and found is not False and found[0] is RouteRefusal.UNKNOWN_KEY
        # A per-pair secret only: the neighbour verifies what was signed to it; a far node cannot.
        c = proofs("node-c", clock, hs("node-c", None, peers=(PeerConfig(id="node-b", secrets=(PAIR,)),)))
        tombstone = sent(withdrawn(c), c, "node-b")
        b = proofs("node-b", clock, hs("node-b", OTHER, peers=(PeerConfig(id="node-c", secrets=(PAIR,)),)))
        assert b.revoke(tombstone, "node-c") is None
        found = proofs("node-a", clock, hs("node-a", OTHER)).revoke(tombstone, "node-b")
        assert found is not None and found is not False and found[0] is RouteRefusal.UNKNOWN_KEY

    def test_tombstones_live_in_the_bounded_version_memory_and_expire(self) -> None:
        clock = Clock()
        a = RouteProofs("node-a", hs("node-a"), clock=clock, max_versions=10)
        for i in range(25):
            c = proofs("node-c", clock)
            clock.now += 1
            assert a.revoke(sent(withdrawn(c, f"s{i}"), c, "node-a"), "node-b") is None
            assert len(a.versions) <= 10 and set(a.tombstones) <= set(a.versions)
        assert set(a.tombstones) == {("node-c", f"s{i}") for i in range(15, 25)}  # the longest-lived kept
        clock.now += ROUTE_TTL + 61
        a.prune()
        assert a.versions == {} and a.tombstones == {}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ad", "tombstone"]), st.integers(1, 40)), max_size=30))
def test_after_a_verified_tombstone_no_older_advertisement_is_accepted(events: list[tuple[str, int]]) -> None:
    """Advertisements and tombstones of one (origin, server) in any order: an advertisement is believed
    exactly when its version is above every verified tombstone's and not below the newest believed."""
    clock = Clock()
    c, a = proofs("node-c", clock), proofs("node-a", clock)
    barred, newest = 0, 0
    for kind, version in events:
        if kind == "tombstone":
            tombstone = sent(Tombstone("node-c", "notes", version, int(NOW + ROUTE_TTL)), c, "node-a")
            outcome = a.revoke(tombstone, "node-b")
            assert (outcome is None) == (version > max(barred, newest))
            assert outcome is None or outcome is False
            if outcome is None:
                barred = version
            continue
        proof = c.attest("node-c", *CATALOG, Proof(version, int(NOW + ROUTE_TTL)), ("node-c",), "node-a")
        found = check(a, ("node-c",), proof)
        assert (found is None) == (version > barred and version >= newest)
        assert found in (None, RouteRefusal.REPLAY)
        if found is None:
            a.remember(("node-c", "notes"), proof)
            newest = max(newest, version)
        assert a.usable(("node-c", "notes"), proof) == (version > barred and version >= newest)
