"""The routing table and the catalog without sockets: policy, limits, loops, best routes, deltas, names.

Plain synchronous tests of :class:`fednode._federation._routing.RoutingTable` (and
:class:`fednode._federation._catalog.Catalog`), and hypothesis properties over random advertisements:
no route through this node is ever accepted or offered, a link going down removes everything learned over
it, the best routes do not depend on the order advertisements arrive in, and export/import policy holds
for whatever is offered or learned.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode._config._config import PeerConfig
from fednode._federation._advertiser import frame_json, pack_frames
from fednode._federation._catalog import Catalog
from fednode._federation._route_proof import ROUTE_TTL, Proof, RouteProofs, RouteRefusal, Tombstone
from fednode._federation._routes import Advertisement, Limits, Route, catalog_digest
from fednode._federation._routing import FAILURE_MEMORY, FAILURE_THRESHOLD, RoutingTable
from fednode._federation._withdrawn import WithdrawnNames

from helpers import keyring

ME = "node-a"
NOW = 1_800_000_000.0


def Policy(*, export: Iterable[str] | None = None, import_: Iterable[str] | None = None,
           transit: bool = True, vouch: bool = False) -> PeerConfig:
    """A peer's policy as the configuration gives it (``None``: every server)."""
    return PeerConfig(id="peer", export=None if export is None else tuple(sorted(export)),
                      import_=None if import_ is None else tuple(sorted(import_)), transit=transit, vouch=vouch)


OPEN = Policy()


def route(origin: str, server: str, *via: str, tools: tuple[str, ...] = ("t",), prefix: str | None = None,
          description: str = "") -> Route:
    """A route for ``server`` on ``origin`` as it arrives over ``via`` (the path after the origin)."""
    catalog = {kind: () for kind in ("tools", "prompts", "resources", "resourceTemplates")}
    catalog["tools"] = tuple({"name": t, "description": description, "inputSchema": {"type": "object"}} for t in tools)
    return Route(origin=origin, server=server, prefix=server if prefix is None else prefix, path=(origin, *via),
                 digest=catalog_digest({**catalog, "extensions": {}, "timeout": None}), catalog=catalog)


def local(server: str, tools: tuple[str, ...] = ("t",)) -> dict[tuple[str, str], Route]:
    return {(ME, server): route(ME, server, tools=tools)}


def advert(*routes: Route, withdrawn: tuple[tuple[str, str], ...] = (), full: bool = False,
           more: bool = False) -> Advertisement:
    return Advertisement(routes=routes, withdrawn=withdrawn, full=full, more=more)


def learned(table: RoutingTable, peer: str) -> set[tuple[str, str]]:
    return set(table.learned.get(peer, {}))


class TestAccepting:
    def test_a_route_through_this_node_is_never_accepted(self) -> None:
        table = RoutingTable(ME)
        received = table.receive("node-b", OPEN, advert(route("node-c", "s", ME, "node-b"), route("node-b", "t")))
        assert received.applied and learned(table, "node-b") == {("node-b", "t")}
        table.receive("node-b", OPEN, advert(route(ME, "mine", "node-b")))  # our own server, looped back
        assert learned(table, "node-b") == {("node-b", "t")}

    def test_a_forged_path_is_never_accepted(self) -> None:
        """A route must have come from the peer that sent it: its path ends there."""
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-c", "s"), route("node-c", "u", "node-x")))
        assert learned(table, "node-b") == set()

    def test_import_policy(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", Policy(import_=frozenset({"time"})),
                      advert(route("node-b", "time"), route("node-b", "secret")))
        assert learned(table, "node-b") == {("node-b", "time")}

    def test_definitions_a_client_cannot_accept_are_dropped_and_reported(self) -> None:
        bad = Route(origin="node-b", server="s", prefix="s", path=("node-b",), digest="d",
                    catalog={"tools": ({"name": "fine", "inputSchema": {"type": "object"}}, {"name": "broken"})})
        table = RoutingTable(ME)
        received = table.receive("node-b", OPEN, advert(bad))
        kept = table.learned["node-b"][("node-b", "s")]
        assert [t["name"] for t in kept.unpacked_catalog()["tools"]] == ["fine"] and kept.size > 0
        assert len(received.invalid) == 1 and "broken" in received.invalid[0][1][0]

    def test_routes_per_peer_are_capped(self) -> None:
        table = RoutingTable(ME, Limits(routes=5))
        received = table.receive("node-b", OPEN, advert(*(route("node-b", f"s{i}") for i in range(8))))
        assert learned(table, "node-b") == {("node-b", f"s{i}") for i in range(5)}
        assert [key for key, _why in received.refused] == [("node-b", f"s{i}") for i in range(5, 8)]
        assert received.refused[0][1] == "more than 5 routes"
        # An update to an accepted route is not a new one: it is taken at the cap.
        table.receive("node-b", OPEN, advert(route("node-b", "s0", tools=("t", "marker"))))
        assert len(table.learned["node-b"][("node-b", "s0")].catalog["tools"]) == 2
        assert len(table.learned["node-b"]) == 5

    def test_catalog_items_and_bytes_per_peer_are_capped(self) -> None:
        table = RoutingTable(ME, Limits(items=10, bytes=2000))
        table.receive("node-b", OPEN, advert(*(route("node-b", f"s{i}", tools=("t1", "t2", "t3")) for i in range(4))))
        assert learned(table, "node-b") == {("node-b", f"s{i}") for i in range(3)}  # 12 items > 10
        received = table.receive("node-b", OPEN, advert(route("node-b", "big", description="x" * 3000),
                                                        withdrawn=(("node-b", "s2"),)))
        assert learned(table, "node-b") == {("node-b", "s0"), ("node-b", "s1")}
        assert [key for key, _why in received.refused] == [("node-b", "big")] and "MiB" in received.refused[0][1]
        # Withdrawing frees room for another.
        table.receive("node-b", OPEN, advert(route("node-b", "s9", tools=("t1", "t2", "t3"))))
        assert ("node-b", "s9") in learned(table, "node-b")

    def test_a_full_advertisement_is_swapped_in_with_its_last_frame(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-b", "old")))
        first = table.receive("node-b", OPEN, advert(route("node-b", "s1"), full=True, more=True))
        assert not first.applied and learned(table, "node-b") == {("node-b", "old")}
        last = table.receive("node-b", OPEN, advert(route("node-b", "s2")))
        assert last.applied and learned(table, "node-b") == {("node-b", "s1"), ("node-b", "s2")}

    def test_a_link_going_down_drops_everything_learned_over_it(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-b", "s"), route("node-c", "s", "node-b")))
        table.receive("node-c", OPEN, advert(route("node-c", "s")))
        table.update({}, {})
        assert table.link_down("node-b") and "node-b" not in table.learned
        assert set(table.update({}, {})) == {("node-c", "s")}
        assert not table.link_down("node-b")  # nothing left to drop

    def test_malformed_frames_are_refused_whole(self) -> None:
        with pytest.raises(ValueError, match="path must start at its origin"):
            Advertisement.from_wire({"set": [{"origin": "b", "server": "s", "prefix": "", "path": ["c"],
                                              "digest": "d", "catalog": {}}]})
        with pytest.raises(ValueError, match="route must be an object"):
            Advertisement.from_wire({"set": {"not": "a list"}})
        with pytest.raises(TypeError):
            Advertisement.from_wire({"withdraw": 5})
        parsed = Advertisement.from_wire({"full": True, "withdraw": [["b", "s"], ["bad"]]})
        assert parsed.full and not parsed.more and parsed.withdrawn == (("b", "s"),)


class TestBestRoutes:
    def test_fewest_hops_then_lowest_rtt_then_peer_id(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-x", "s", "node-y", "node-b")))
        table.receive("node-c", OPEN, advert(route("node-x", "s", "node-c")))
        table.receive("node-d", OPEN, advert(route("node-x", "s", "node-d")))
        assert table.update({}, {"node-c": 0.5, "node-d": 0.1})[("node-x", "s")][1] == "node-d"
        assert table.update({}, {"node-c": 0.1})[("node-x", "s")][1] == "node-c"  # unknown RTT: last
        assert table.update({}, {})[("node-x", "s")][1] == "node-c"  # a tie: the peer id
        assert table.next_hop(("node-x", "s")) == "node-c"
        table.link_down("node-c")
        table.link_down("node-d")
        assert table.update({}, {})[("node-x", "s")][1] == "node-b"  # the longer path, once it is the only one

    def test_a_server_attached_here_is_always_local(self) -> None:
        table = RoutingTable(ME)
        best = table.update(local("s"), {})
        assert best[(ME, "s")][1] is None and table.next_hop((ME, "s")) is None


class TestOffering:
    def test_export_policy(self) -> None:
        table = RoutingTable(ME)
        table.update({**local("public"), **local("private")}, {})
        offers = table.offers("node-b", Policy(export=frozenset({"public"})))
        assert set(offers) == {(ME, "public")} and offers[(ME, "public")][1] == (ME,)

    def test_transit_per_peer_and_per_node(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-c", OPEN, advert(route("node-c", "far")))
        table.update(local("own"), {})
        assert set(table.offers("node-b", OPEN)) == {(ME, "own"), ("node-c", "far")}
        assert table.offers("node-b", OPEN)[("node-c", "far")][1] == ("node-c", ME)
        assert set(table.offers("node-b", Policy(transit=False))) == {(ME, "own")}
        assert set(table.offers("node-b", OPEN, node_transit=False)) == {(ME, "own")}

    def test_a_route_is_never_offered_back_along_its_path(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-c", "s", "node-b")))
        table.update({}, {})
        assert table.offers("node-b", OPEN) == {} and table.offers("node-c", OPEN) == {}
        assert set(table.offers("node-d", OPEN)) == {("node-c", "s")}

    def test_deltas_full_then_changes_then_withdrawals(self) -> None:
        table = RoutingTable(ME)
        table.update({**local("s1"), **local("s2")}, {})
        table.link_up("node-b")
        first = table.delta("node-b", table.offers("node-b", OPEN))
        assert first.full and set(first.routes) == {(ME, "s1"), (ME, "s2")} and not first.withdrawn
        table.sent("node-b", first)
        assert table.delta("node-b", table.offers("node-b", OPEN)).empty
        table.update({**local("s1", tools=("t", "u")), **local("s3")}, {})
        change = table.delta("node-b", table.offers("node-b", OPEN))
        assert not change.full and set(change.routes) == {(ME, "s1"), (ME, "s3")}
        assert change.withdrawn == ((ME, "s2"),)
        table.not_sent("node-b")  # failed: owed a full advertisement again
        assert table.delta("node-b", table.offers("node-b", OPEN)).full

    def test_frames_stay_within_the_budget(self) -> None:
        routes = [({"n": i}, 400) for i in range(5)]
        frames = pack_frames(True, routes, [["b", "s"]], 1000)
        assert [len(f["set"]) for f in frames] == [2, 2, 1]
        assert [f["more"] for f in frames] == [True, True, False]
        assert [f["withdraw"] for f in frames] == [[], [], [["b", "s"]]]
        assert all(f["full"] for f in frames)


class TestNames:
    """Who keeps a contested name: a server attached here, then the first claimant; never a peer by choice."""

    def test_a_peer_cannot_take_over_names(self) -> None:
        table = RoutingTable(ME)
        catalog = Catalog(ME, structlog.get_logger())

        def rebuild(local_routes: dict[tuple[str, str], Route], attached: tuple[str, ...] = ()) -> None:
            catalog.rebuild(table.update(local_routes, {}), {}, attached)

        table.receive("node-b", OPEN, advert(route("node-b", "zz", tools=("now",))))
        rebuild({})
        # A server id that sorts first, with a prefix that collides: renamed, whoever it is.
        table.receive("node-b", OPEN, advert(route("node-b", "aa", prefix="zz", tools=("now",))))
        rebuild({})
        tools = catalog.entries["tools"]
        assert tools["zz__now"].server == "zz" and tools["node-b__zz__now"].server == "aa"
        assert tools["node-b__zz__now"].definition["name"] == "node-b__zz__now"
        # A server attached here keeps its names even against an earlier claim from a peer.
        table.receive("node-b", OPEN, advert(route("node-b", "ab", prefix="loc", tools=("x",))))
        rebuild({})
        assert catalog.entries["tools"]["loc__x"].server == "ab"
        rebuild(local("loc", tools=("x",)), ("loc",))
        tools = catalog.entries["tools"]
        assert tools["loc__x"].server == "loc" and tools["node-b__loc__x"].server == "ab"
        assert any("'loc__x'" in conflict for conflict in catalog.conflicts)

    def test_replicas_merge_nearest_first(self) -> None:
        table = RoutingTable(ME)
        catalog = Catalog(ME, structlog.get_logger(), WithdrawnNames(clock=lambda: 100.0))
        table.receive("node-b", OPEN, advert(route("node-b", "time"), route("node-c", "time", "node-b")))
        changed = catalog.rebuild(table.update({}, {}), {}, ())
        assert changed == {"tools"} and catalog.entries["tools"]["time__t"].origins == ("node-b", "node-c")
        # The last route to a server going: its names are remembered as withdrawn, not just unknown.
        table.link_down("node-b")
        catalog.rebuild(table.update({}, {}), {}, ())
        assert catalog.entries["tools"] == {} and len(catalog.withdrawn) == 1


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def signed_table(clock: Clock, node: str = ME) -> RoutingTable:
    return RoutingTable(node, proofs=RouteProofs(node, keyring(node), clock=clock))


def proven(r: Route, clock: Clock, *, to: str = ME, version: int | None = None, secrets: dict[str, str] | None = None,
           path: tuple[str, ...] | None = None) -> Route:
    """``r`` as its path would send it to ``to``: the origin's proof, each hop's attestation (shared secret)."""
    origin = RouteProofs(r.origin, keyring(r.origin, **({"secret": secrets[r.origin]} if secrets and r.origin
                                                         in secrets else {})), clock=clock)
    proof = origin.local_proof(r.server, r.digest, r.prefix)
    if version is not None:
        proof = Proof(version, proof.expires)
    signers = path or r.path
    for index, hop in enumerate(signers):
        hop_keys = keyring(hop, **({"secret": secrets[hop]} if secrets and hop in secrets else {}))
        next_hop = signers[index + 1] if index + 1 < len(signers) else to
        proof = RouteProofs(hop, hop_keys, clock=clock).attest(r.origin, r.server, r.prefix, r.digest, proof,
                                                               signers[:index + 1], next_hop)
    return attrs.evolve(r, proof=proof)


def unverified(received: Any) -> list[tuple[tuple[str, str], RouteRefusal]]:
    return [(key, why) for key, why, _detail in received.unverified]


class TestProvenRoutes:
    """With route proofs, a route is believed only if its origin and every hop signed it as it came."""

    def test_a_catalog_verified_once_is_held_once(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b", tools=("a", "b")), clock)))
        # The same advertisement through node-d, its catalog swapped for another under the same
        # (signed) digest: the catalog that matches the digest is the one held, and only once.
        through_d = proven(route("node-c", "s", "node-d", tools=("a", "b")), clock)
        tampered = attrs.evolve(through_d, catalog={"tools": ({"name": "evil", "inputSchema": {"type": "object"}},)})
        received = table.receive("node-d", OPEN, advert(tampered))
        assert received.applied and not received.unverified
        via_b, via_d = table.learned["node-b"][("node-c", "s")], table.learned["node-d"][("node-c", "s")]
        assert via_d.catalog is via_b.catalog and [t["name"] for t in via_d.unpacked_catalog()["tools"]] == ["a", "b"]
        assert all(isinstance(item, str) for item in via_b.catalog["tools"])  # held packed, names kept
        assert via_b.names is not None and via_d.names == via_b.names and via_b.names["tools"] == ("a", "b")
        # Without a copy held, the same tampered catalog is refused for its digest.
        table.link_down("node-b")
        table.link_down("node-d")
        assert unverified(table.receive("node-d", OPEN, advert(tampered))) == [
            (("node-c", "s"), RouteRefusal.DIGEST_MISMATCH)]

    def test_signed_routes_are_accepted_and_offered_on(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        received = table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock)))
        assert received.applied and not received.unverified and learned(table, "node-b") == {("node-c", "s")}
        table.update({}, {})
        assert set(table.offers("node-d", OPEN)) == {("node-c", "s")}

    def test_a_forged_or_shortened_path_is_refused_never_used_never_offered(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        genuine = proven(route("node-c", "s", "node-b", ME), clock, to="evil")  # what this node sent evil
        assert genuine.proof is not None
        # evil keeps node-c's attestation (made out to node-b), drops the rest, and signs on to this node.
        evil = RouteProofs("evil", keyring("evil"), clock=clock)
        kept = Proof(genuine.proof.version, genuine.proof.expires, genuine.proof.sigs[:1])
        shortened = route("node-c", "s", "evil")
        shortened = attrs.evolve(shortened, proof=evil.attest("node-c", "s", "s", shortened.digest, kept,
                                                               ("node-c", "evil"), ME))
        forged_key = proven(route("node-c", "t", "evil"), clock, secrets={"node-c": "x" * 64})
        received = table.receive("evil", OPEN, advert(shortened, route("node-c", "u", "evil"), forged_key))
        assert unverified(received) == [(("node-c", "s"), RouteRefusal.BAD_SIGNATURE),
                                        (("node-c", "u"), RouteRefusal.UNSIGNED),
                                        (("node-c", "t"), RouteRefusal.UNKNOWN_KEY)]
        assert learned(table, "evil") == set()
        assert table.update({}, {}) == {} and table.offers("node-b", OPEN) == {}

    def test_a_catalog_that_is_not_the_signed_one_is_refused(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        good = proven(route("node-b", "s"), clock)
        swapped = attrs.evolve(good, catalog=route("node-b", "s", tools=("evil",)).catalog)
        assert unverified(table.receive("node-b", OPEN, advert(swapped))) == [
            (("node-b", "s"), RouteRefusal.DIGEST_MISMATCH)]

    def test_a_vouching_peer_is_taken_at_its_word_and_this_node_signs_on(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        received = table.receive("node-b", Policy(vouch=True), advert(route("node-x", "s", "node-b")))
        assert not received.unverified and [k for k, _why, _d in received.vouched] == [("node-x", "s")]
        assert table.learned["node-b"][("node-x", "s")].vouched_by == "node-b"
        table.update({}, {})
        offered, path = table.offers("node-d", OPEN)[("node-x", "s")]
        assert table.proofs is not None
        proof = table.proofs.attest(offered.origin, offered.server, offered.prefix, offered.digest, offered.proof,
                                    path, "node-d")
        assert proof.sigs[:2] == (None, None) and proof.sigs[2] is not None  # only this node signed
        # node-d believes it only if it trusts this node to vouch too.
        downstream = signed_table(clock, "node-d")
        refused = downstream.receive(ME, OPEN, advert(attrs.evolve(offered, path=path, proof=proof)))
        assert unverified(refused) == [(("node-x", "s"), RouteRefusal.UNSIGNED)]
        assert not downstream.receive(ME, Policy(vouch=True), advert(attrs.evolve(offered, path=path,
                                                                                  proof=proof))).unverified
        # What is proven stale is refused whoever vouches for it.
        table.receive("node-c", OPEN, advert(proven(route("node-y", "s", "node-c"), clock, version=200)))
        stale = proven(route("node-y", "s", "node-b"), clock, version=100)
        assert unverified(table.receive("node-b", Policy(vouch=True), advert(stale))) == [
            (("node-y", "s"), RouteRefusal.REPLAY)]

    def test_an_older_version_is_a_replay_and_a_superseded_route_is_not_used(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        old = proven(route("node-c", "s", "node-b"), clock, version=100)
        table.receive("node-b", OPEN, advert(old))
        assert table.update({}, {})[("node-c", "s")][1] == "node-b"
        # The origin changed its catalog (a new version) and it arrives over a longer path first.
        new = proven(route("node-c", "s", "node-x", "node-d", tools=("t", "new")), clock, version=200)
        table.receive("node-d", OPEN, advert(new))
        best, via = table.update({}, {})[("node-c", "s")]
        assert via == "node-d" and len(best.catalog["tools"]) == 2  # the shorter, older one is not used
        # The old one again (a replay through any peer) is refused.
        replayed = proven(route("node-c", "s", "node-e"), clock, version=100)
        assert unverified(table.receive("node-e", OPEN, advert(replayed))) == [(("node-c", "s"), RouteRefusal.REPLAY)]
        assert unverified(table.receive("node-b", OPEN, advert(old))) == [(("node-c", "s"), RouteRefusal.REPLAY)]

    def test_an_expired_route_is_not_used(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock)))
        clock.now += ROUTE_TTL
        assert set(table.update({}, {})) == {("node-c", "s")}
        clock.now += 61  # past the expiry and the clock leeway
        assert table.update({}, {}) == {}
        assert unverified(table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), Clock())))) == [
            (("node-c", "s"), RouteRefusal.EXPIRED)]

    def test_a_route_resent_unchanged_is_not_verified_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = Clock()
        table = signed_table(clock)
        signed = proven(route("node-c", "s", "node-b"), clock)
        table.receive("node-b", OPEN, advert(signed))
        assert table.proofs is not None
        calls: list[str] = []
        verify = table.proofs.verify
        monkeypatch.setattr(table.proofs, "verify", lambda *args: calls.append("v") or verify(*args))
        table.receive("node-b", OPEN, advert(signed))
        assert calls == [] and learned(table, "node-b") == {("node-c", "s")}


def withdrawal(origin: str, server: str, version: int, clock: Clock, *, secret: str | None = None) -> Tombstone:
    """``origin``'s signed tombstone of ``server`` at ``version`` (as it arrives: through the wire)."""
    signer = RouteProofs(origin, keyring(origin, **({"secret": secret} if secret else {})), clock=clock)
    tombstone = Tombstone(origin, server, version, int(clock() + ROUTE_TTL))
    return Tombstone.from_wire(signer.tombstone_to(tombstone, ME).to_wire())


def revoking(*tombstones: Tombstone, withdrawn: tuple[tuple[str, str], ...] = ()) -> Advertisement:
    return Advertisement(withdrawn=withdrawn, revoked=tombstones)


class TestTombstones:
    """An origin's signed withdrawal drops older routes everywhere, bars replays, and is passed on once."""

    def test_a_tombstone_drops_older_routes_from_every_peer_and_bars_replays(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock, version=100)))
        table.receive("evil", OPEN, advert(proven(route("node-c", "s", "node-b", "evil"), clock, version=100),
                                           proven(route("node-c", "u", "evil"), clock, version=100)))
        table.receive("node-v", Policy(vouch=True), advert(route("node-c", "s", "node-v")))  # unsigned, vouched
        assert set(table.update({}, {})) == {("node-c", "s"), ("node-c", "u")}
        received = table.receive("node-b", OPEN, revoking(withdrawal("node-c", "s", 150, clock),
                                                          withdrawn=(("node-c", "s"),)))
        assert received.applied and not received.unverified
        assert learned(table, "node-b") == set() and learned(table, "evil") == {("node-c", "u")}
        assert learned(table, "node-v") == set()
        assert set(table.update({}, {})) == {("node-c", "u")}
        # evil replays what it held (the last genuine advertisement), a vouching peer cannot bring it back.
        replayed = proven(route("node-c", "s", "node-b", "evil"), clock, version=100)
        assert unverified(table.receive("evil", OPEN, advert(replayed))) == [(("node-c", "s"), RouteRefusal.REPLAY)]
        assert unverified(table.receive("node-v", Policy(vouch=True), advert(route("node-c", "s", "node-v")))) == [
            (("node-c", "s"), RouteRefusal.REPLAY)]
        assert unverified(table.receive("node-v", Policy(vouch=True), advert(
            proven(route("node-c", "s", "node-v"), clock, version=150)))) == [(("node-c", "s"), RouteRefusal.REPLAY)]
        assert set(table.update({}, {})) == {("node-c", "u")} and table.offers("node-d", OPEN).keys() == {
            ("node-c", "u")}
        # Re-attached: its next advertisement is newer and believed, through anyone.
        table.receive("evil", OPEN, advert(proven(route("node-c", "s", "evil"), clock, version=200)))
        assert table.update({}, {})[("node-c", "s")][1] == "evil"

    def test_a_tombstone_is_passed_on_once_per_version_where_the_route_could_go(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        for peer in ("node-b", "node-d", "node-e"):
            table.link_up(peer)
            table.sent(peer, table.delta(peer, {}))
        table.receive("node-b", OPEN, revoking(withdrawal("node-c", "s", 150, clock)))
        key = ("node-c", "s")
        assert table.revocations("node-b", OPEN) == {}  # not back to where it came from
        assert table.revocations("node-c", OPEN) == {}  # nor to its origin
        assert table.revocations("node-d", Policy(export=("other",))) == {}  # export policy
        assert table.revocations("node-d", Policy(transit=False)) == {}  # transit, per peer and per node
        assert table.revocations("node-d", OPEN, node_transit=False) == {}
        offered = table.revocations("node-d", OPEN)
        assert set(offered) == {key}
        delta = table.delta("node-d", {}, offered)
        assert not delta.empty and set(delta.revoked) == {key}
        table.sent("node-d", delta)
        assert table.delta("node-d", {}, table.revocations("node-d", OPEN)).empty  # once per version
        # The same tombstone from another peer is not news: not passed on again.
        table.receive("node-e", OPEN, revoking(withdrawal("node-c", "s", 150, clock)))
        assert table.proofs is not None and table.proofs.tombstones[key][1] == "node-b"
        assert table.delta("node-d", {}, table.revocations("node-d", OPEN)).empty
        assert set(table.revocations("node-e", OPEN)) == {key}  # node-b's, still owed to node-e
        # A newer version is; a link coming up is owed every live one again.
        table.receive("node-e", OPEN, revoking(withdrawal("node-c", "s", 170, clock)))
        assert table.delta("node-d", {}, table.revocations("node-d", OPEN)).revoked[key].version == 170
        assert table.revocations("node-e", OPEN) == {}
        table.link_up("node-d")
        assert set(table.delta("node-d", {}, table.revocations("node-d", OPEN)).revoked) == {key}
        # Superseded by a newer advertisement, or expired: passed on no more.
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock, version=200)))
        assert table.revocations("node-d", OPEN) == {}
        table.receive("node-b", OPEN, revoking(withdrawal("node-c", "s", 300, clock)))
        clock.now += ROUTE_TTL + 61
        assert table.revocations("node-d", OPEN) == {}

    def test_this_nodes_own_tombstones_are_signed_to_each_peer(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        assert table.proofs is not None
        table.proofs.local_proof("s", "d1", "s")
        table.proofs.keep_local(())  # detached
        offered = table.revocations("node-b", OPEN)
        assert set(offered) == {(ME, "s")}
        assert table.revocations("node-b", Policy(transit=False)) == offered  # its own: export policy only
        assert table.revocations("node-b", Policy(export=())) == {}
        downstream = signed_table(clock, "node-b")
        wire = table.proofs.tombstone_to(offered[(ME, "s")], "node-b").to_wire()
        assert not downstream.receive(ME, OPEN, Advertisement.from_wire({"revoked": [wire]})).unverified
        assert downstream.proofs is not None and (ME, "s") in downstream.proofs.tombstones

    def test_an_unverifiable_tombstone_is_refused_and_not_passed_on(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b"), clock, version=100)))
        forged = withdrawal("node-c", "s", 150, clock, secret="x" * 64)
        altered = attrs.evolve(withdrawal("node-c", "s", 150, clock), version=151)
        received = table.receive("evil", OPEN, revoking(forged, altered))
        assert unverified(received) == [(("node-c", "s"), RouteRefusal.UNKNOWN_KEY),
                                        (("node-c", "s"), RouteRefusal.BAD_SIGNATURE)]
        assert learned(table, "node-b") == {("node-c", "s")}
        assert table.update({}, {})[("node-c", "s")][1] == "node-b"
        assert table.revocations("node-d", OPEN) == {}

    def test_old_frames_stay_valid_and_malformed_tombstones_refuse_the_frame(self) -> None:
        clock = Clock()
        assert Advertisement.from_wire({"set": [], "withdraw": [["node-c", "s"]]}).revoked == ()
        wire = withdrawal("node-c", "s", 150, clock).to_wire()
        assert Advertisement.from_wire({"revoked": [wire]}).revoked[0].version == 150
        for bad in ({"revoked": {"x": 1}}, {"revoked": [{**wire, "version": -1}]}, {"revoked": [{**wire, "sigs": []}]},
                    {"revoked": [{**wire, "server": 5}]}):
            with pytest.raises(ValueError):
                Advertisement.from_wire(bad)
        # Without proofs (tests of the table alone) tombstones are ignored.
        plain = RoutingTable(ME)
        plain.receive("node-b", OPEN, advert(route("node-c", "s", "node-b")))
        plain.receive("node-b", OPEN, revoking(withdrawal("node-c", "s", 150, clock)))
        assert learned(plain, "node-b") == {("node-c", "s")} and plain.revocations("node-d", OPEN) == {}

    def test_routes_and_frames_as_text_are_what_they_are_as_objects(self) -> None:
        clock = Clock()
        table = signed_table(clock)
        table.receive("node-b", OPEN, advert(proven(route("node-c", "s", "node-b", tools=("a", "b")), clock)))
        learned_route = table.learned["node-b"][("node-c", "s")]  # packed
        local_route = attrs.evolve(local("x")[(ME, "x")], extensions={"e": {"v": 1}}, timeout=2.5)
        for r in (learned_route, local_route):
            path = (*r.path, ME)
            proof = r.proof
            assert json.loads(r.wire_text(path, proof)) == r.to_wire(path, proof)
        texts = [(learned_route.wire_text((*learned_route.path, ME)), 10), (local_route.wire_text((ME,)), 10)]
        for frame in pack_frames(True, texts, [["b", "s"]], 15, [(json.dumps({"t": 1}), 10)]):
            parsed = json.loads(frame_json(frame).text)
            assert parsed == {**frame, "set": [json.loads(t) for t in frame["set"]],
                              **({"revoked": [json.loads(t) for t in frame["revoked"]]} if "revoked" in frame else {})}

    def test_frames_carry_tombstones_within_the_budget(self) -> None:
        frames = pack_frames(False, [({"r": 1}, 600)], [["b", "s"]], 1000, [({"t": i}, 300) for i in range(3)])
        assert [(len(f["set"]), len(f.get("revoked", []))) for f in frames] == [(1, 1), (0, 2)]
        assert [f["more"] for f in frames] == [True, False] and frames[-1]["withdraw"] == [["b", "s"]]
        assert "revoked" not in pack_frames(False, [], [["b", "s"]], 1000)[0]  # the optional field


class TestFailingPeers:
    """A peer whose forwards keep failing loses preference to healthy routes, and regains it."""

    def test_penalized_after_failures_in_a_row_until_a_success_or_time(self) -> None:
        table = RoutingTable(ME)
        table.receive("node-b", OPEN, advert(route("node-x", "s", "node-b")))
        table.receive("node-c", OPEN, advert(route("node-x", "s", "node-y", "node-c")))
        assert table.update({}, {}, now=0.0)[("node-x", "s")][1] == "node-b"
        changes = [table.forward_failed("node-b", 1.0 + i) for i in range(FAILURE_THRESHOLD)]
        assert changes == [False] * (FAILURE_THRESHOLD - 1) + [True]
        assert table.update({}, {}, now=5.0)[("node-x", "s")][1] == "node-c"  # longer, but healthy
        assert table.forward_succeeded("node-b", 6.0)  # answered again: preferred again
        assert table.update({}, {}, now=6.0)[("node-x", "s")][1] == "node-b"
        for i in range(FAILURE_THRESHOLD):
            table.forward_failed("node-b", 10.0 + i)
        last = 10.0 + FAILURE_THRESHOLD - 1
        assert table.update({}, {}, now=last + FAILURE_MEMORY - 0.001)[("node-x", "s")][1] == "node-c"
        assert table.update({}, {}, now=last + FAILURE_MEMORY)[("node-x", "s")][1] == "node-b"  # forgotten
        # A failure and a success of another peer change nothing of node-b's.
        assert not table.forward_failed("node-c", 100.0) and not table.forward_succeeded("node-c", 100.0)

    def test_a_link_going_down_forgets_the_failures(self) -> None:
        table = RoutingTable(ME)
        for i in range(FAILURE_THRESHOLD):
            table.forward_failed("node-b", float(i))
        assert table.penalized("node-b", 3.0)
        table.link_down("node-b")
        table.link_up("node-b")
        assert not table.penalized("node-b", 3.0)


class Mesh:
    """Routing tables of several nodes exchanging deltas directly, in memory, until nothing changes."""

    def __init__(self, edges: list[tuple[str, str]], servers: dict[str, tuple[str, ...]],
                 policies: dict[tuple[str, str], PeerConfig] | None = None, *, signed: bool = False) -> None:
        self.edges = {frozenset(edge) for edge in edges}
        self.policies = policies or {}
        nodes = sorted({node for edge in edges for node in edge})
        # With ``signed``, every node signs what it sends and verifies what it receives (one shared secret).
        self.tables = {node: RoutingTable(node, proofs=RouteProofs(node, keyring(node), clock=lambda: NOW)
                                          if signed else None) for node in nodes}
        self.local = {node: {(node, s): self.own(node, route(node, s)) for s in servers.get(node, ())}
                      for node in self.tables}
        for a, b in edges:
            self.tables[a].link_up(b)
            self.tables[b].link_up(a)

    def own(self, node: str, local_route: Route) -> Route:
        proofs = self.tables[node].proofs
        if proofs is None:
            return local_route
        return attrs.evolve(local_route, proof=proofs.local_proof(local_route.server, local_route.digest,
                                                                  local_route.prefix))

    def wire(self, node: str, peer: str, local_route: Route, path: tuple[str, ...]) -> dict[str, Any]:
        proofs = self.tables[node].proofs
        proof = None if proofs is None else proofs.attest(local_route.origin, local_route.server, local_route.prefix,
                                                          local_route.digest, local_route.proof, path, peer)
        return local_route.to_wire(path, proof)

    def policy(self, node: str, peer: str) -> PeerConfig:
        return self.policies.get((node, peer), OPEN)

    def neighbours(self, node: str) -> list[str]:
        return sorted(peer for edge in self.edges if node in edge for peer in edge - {node})

    def converge(self, rng: random.Random | None = None) -> int:
        """Exchange until quiet, nodes and their peers taken in sorted order (or as ``rng`` shuffles them);
        returns the rounds it took (bounded)."""
        for node, table in self.tables.items():
            table.update(self.local[node], {})
        for rounds in range(1, 50):
            quiet = True
            order = sorted(self.tables.items())
            if rng is not None:
                rng.shuffle(order)
            for node, table in order:
                peers = self.neighbours(node)
                if rng is not None:
                    rng.shuffle(peers)
                for peer in peers:
                    policy = self.policy(node, peer)
                    delta = table.delta(peer, table.offers(peer, policy), table.revocations(peer, policy))
                    if delta.empty:
                        continue
                    quiet = False
                    routes = [self.wire(node, peer, r, path) for r, path in delta.routes.values()]
                    wire = {"full": delta.full, "set": routes,
                            "withdraw": [list(key) for key in delta.withdrawn]}
                    if table.proofs is not None and delta.revoked:
                        wire["revoked"] = [table.proofs.tombstone_to(t, peer).to_wire() for t in delta.revoked.values()]
                    table.sent(peer, delta)
                    received = self.tables[peer].receive(node, self.policy(peer, node), Advertisement.from_wire(wire))
                    if received.applied:
                        self.tables[peer].update(self.local[peer], {})
            if quiet:
                return rounds
        raise AssertionError("no convergence in 50 rounds")

    def detach(self, node: str, server: str) -> None:
        """``server`` is no longer attached at ``node`` (which withdraws it, signed when signing)."""
        del self.local[node][(node, server)]
        proofs = self.tables[node].proofs
        if proofs is not None:
            proofs.keep_local(s for _origin, s in self.local[node])

    def attach(self, node: str, server: str) -> None:
        self.local[node][(node, server)] = self.own(node, route(node, server))

    def cut(self, a: str, b: str) -> None:
        self.edges.discard(frozenset((a, b)))
        self.tables[a].link_down(b)
        self.tables[b].link_down(a)

    def best(self, node: str) -> dict[tuple[str, str], tuple[str, ...]]:
        return {key: r.path for key, (r, _via) in self.tables[node].best.items()}


class TestMeshWithoutSockets:
    """Whole topologies converge, loop-free, on tables alone (the mesh tests' routing logic)."""

    def test_ring_of_four_is_loop_free_and_heals(self) -> None:
        ring = ["node-a", "node-b", "node-c", "node-d"]
        mesh = Mesh([(ring[i], ring[(i + 1) % 4]) for i in range(4)], {n: (f"s-{n[-1]}",) for n in ring})
        mesh.converge()
        for node in ring:
            paths = mesh.best(node)
            assert len(paths) == 4 and all(len(set(p)) == len(p) and node not in p[1:] for p in paths.values())
        assert len(mesh.best("node-a")[("node-c", "s-c")]) == 2  # two hops either way round
        mesh.cut("node-a", "node-b")
        mesh.converge()
        assert mesh.best("node-a")[("node-b", "s-b")] == ("node-b", "node-c", "node-d")
        mesh.cut("node-c", "node-d")
        mesh.converge()  # a-d and b-c are split: each side loses the other's servers
        assert set(mesh.best("node-a")) == {("node-a", "s-a"), ("node-d", "s-d")}
        assert set(mesh.best("node-c")) == {("node-b", "s-b"), ("node-c", "s-c")}

    def test_full_mesh_of_five_prefers_direct_routes(self) -> None:
        nodes = [f"node-{c}" for c in "abcde"]
        mesh = Mesh([(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]], {n: ("s",) for n in nodes})
        mesh.converge()
        for node in nodes:
            assert all(len(p) == 1 for p in mesh.best(node).values()) and len(mesh.best(node)) == 5

    def test_a_withdrawal_reaches_every_node_and_a_replay_of_the_last_advertisement_is_refused(self) -> None:
        mesh = Mesh([("node-a", "node-b"), ("node-b", "node-c")], {"node-c": ("s",)}, signed=True)
        mesh.converge()
        key = ("node-c", "s")
        # What node-b offered evil while the server was live; evil signs it on to node-a.
        b = mesh.tables["node-b"]
        offered, path = b.offers("evil", OPEN)[key]
        assert b.proofs is not None
        proof = b.proofs.attest(*key, offered.prefix, offered.digest, offered.proof, path, "evil")
        evil = RouteProofs("evil", keyring("evil"), clock=lambda: NOW)
        replay = attrs.evolve(offered, path=(*path, "evil"),
                              proof=evil.attest(*key, offered.prefix, offered.digest, proof, (*path, "evil"), ME))
        a = mesh.tables["node-a"]
        # While it is live, the same version through evil is believed (an equal version is no replay).
        assert not a.receive("evil", OPEN, advert(replay)).unverified
        a.link_down("evil")
        mesh.detach("node-c", "s")
        mesh.converge()
        for node in ("node-a", "node-b"):
            assert key not in mesh.tables[node].best
            proofs = mesh.tables[node].proofs
            assert proofs is not None and key in proofs.tombstones
        assert unverified(a.receive("evil", OPEN, advert(replay))) == [(key, RouteRefusal.REPLAY)]
        assert key not in a.update({}, {}) and a.revocations("node-b", OPEN) == {}  # not back to node-b
        # Attached again: everyone has it again, newer than the tombstone.
        mesh.attach("node-c", "s")
        mesh.converge()
        assert mesh.best("node-a")[key] == ("node-c", "node-b")
        assert all(not table.proofs or not table.proofs.tombstones for table in mesh.tables.values())

    def test_export_import_and_transit_along_a_chain(self) -> None:
        chain = [("node-a", "node-b"), ("node-b", "node-c")]
        servers = {"node-b": ("public", "private"), "node-c": ("time", "secret")}
        mesh = Mesh(chain, servers, {("node-b", "node-a"): Policy(export=frozenset({"public"})),
                                     ("node-b", "node-c"): Policy(import_=frozenset({"time"}))})
        mesh.converge()
        assert set(mesh.best("node-a")) == {("node-b", "public")}
        assert set(mesh.best("node-b")) == {("node-b", "public"), ("node-b", "private"), ("node-c", "time")}
        mesh = Mesh(chain, servers, {("node-b", "node-a"): Policy(transit=False)})
        mesh.converge()
        assert set(mesh.best("node-a")) == {("node-b", "public"), ("node-b", "private")}


# -- properties -----------------------------------------------------------------------------------

PEERS = ("node-b", "node-c", "node-d")
NODES = (ME, *PEERS, "node-x", "node-y")
SERVERS = ("s1", "s2", "s3")

policies = st.builds(Policy, export=st.none() | st.frozensets(st.sampled_from(SERVERS)),
                     import_=st.none() | st.frozensets(st.sampled_from(SERVERS)), transit=st.booleans())


@st.composite
def routes_from(draw: Any, peer: str) -> Route:
    """A route as ``peer`` might advertise it: any origin, any path ending at ``peer`` (loops included)."""
    origin = draw(st.sampled_from(NODES))
    middle = draw(st.lists(st.sampled_from(NODES), max_size=3))
    path = (origin,) if origin == peer and not middle else (origin, *middle, peer)
    tools = tuple(draw(st.lists(st.sampled_from(("t", "u", "v")), max_size=2, unique=True)))
    return route(origin, draw(st.sampled_from(SERVERS)), *path[1:], tools=tools)


@st.composite
def frames_from(draw: Any, peer: str) -> list[Advertisement]:
    """What ``peer`` sends over one link: a full advertisement, then deltas."""
    frames = [advert(*draw(st.lists(routes_from(peer), max_size=4)), full=True)]
    for _ in range(draw(st.integers(0, 3))):
        withdrawn = draw(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(SERVERS)), max_size=2))
        frames.append(advert(*draw(st.lists(routes_from(peer), max_size=3)), withdrawn=tuple(withdrawn)))
    return frames


@st.composite
def worlds(draw: Any) -> dict[str, Any]:
    peers = draw(st.lists(st.sampled_from(PEERS), min_size=1, unique=True))
    return {
        "frames": {peer: draw(frames_from(peer)) for peer in peers},
        "policies": {peer: draw(policies) for peer in PEERS},
        "rtts": {peer: draw(st.sampled_from((0.01, 0.1, 1.0))) for peer in PEERS if draw(st.booleans())},
        "local": {(ME, s): route(ME, s) for s in draw(st.frozensets(st.sampled_from(SERVERS)))},
        "node_transit": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def converge(world: dict[str, Any], order: list[str]) -> RoutingTable:
    """Feed each peer's frames in its own order, the peers interleaved as ``order`` says."""
    table = RoutingTable(ME, Limits(routes=4, items=6))
    queues = {peer: list(frames) for peer, frames in world["frames"].items()}
    for peer in order:
        table.receive(peer, world["policies"][peer], queues[peer].pop(0))
    table.update(world["local"], world["rtts"])
    return table


def interleaving(world: dict[str, Any], rng: random.Random) -> list[str]:
    order = [peer for peer, frames in world["frames"].items() for _ in frames]
    rng.shuffle(order)
    return order


def summary(table: RoutingTable) -> dict[tuple[str, str], tuple[tuple[str, ...], str | None, str]]:
    return {key: (route.path, via, route.digest) for key, (route, via) in table.best.items()}


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_no_route_through_this_node_is_accepted_or_offered(world: dict[str, Any]) -> None:
    table = converge(world, interleaving(world, random.Random(world["seed"])))
    for routes in table.learned.values():
        assert all(ME not in r.path for r in routes.values())
    for key, (route, via) in table.best.items():
        assert (ME in route.path) == (via is None) == (key[0] == ME)
    for peer in PEERS:
        for _route, path in table.offers(peer, world["policies"][peer], node_transit=world["node_transit"]).values():
            assert path[-1] == ME and path.count(ME) == 1 and peer not in path


@settings(max_examples=100, deadline=None)
@given(worlds(), st.data())
def test_a_link_going_down_removes_everything_learned_over_it(world: dict[str, Any], data: Any) -> None:
    table = converge(world, interleaving(world, random.Random(world["seed"])))
    gone = data.draw(st.sampled_from(sorted(world["frames"])))
    table.link_down(gone)
    best = table.update(world["local"], world["rtts"])
    assert gone not in table.learned and all(via != gone for _route, via in best.values())
    # What is left is what the other peers alone would have given.
    others = {peer: frames for peer, frames in world["frames"].items() if peer != gone}
    alone = converge({**world, "frames": others}, [p for p, frames in others.items() for _ in frames])
    assert summary(table) == summary(alone)


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_best_routes_do_not_depend_on_the_order_advertisements_arrive_in(world: dict[str, Any]) -> None:
    rng = random.Random(world["seed"])
    first = summary(converge(world, interleaving(world, rng)))
    for _ in range(3):
        assert summary(converge(world, interleaving(world, rng))) == first


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_export_and_import_policy_hold(world: dict[str, Any]) -> None:
    table = converge(world, interleaving(world, random.Random(world["seed"])))
    for peer, routes in table.learned.items():
        assert all(world["policies"][peer].imports(r.server) for r in routes.values())
    for peer in PEERS:
        policy = world["policies"][peer]
        for key, (route, path) in table.offers(peer, policy, node_transit=world["node_transit"]).items():
            assert policy.exports(route.server)
            if table.best[key][1] is not None:  # learned from another peer: only with transit on both counts
                assert policy.transit and world["node_transit"] and path[-2] != ME


@st.composite
def topologies(draw: Any) -> list[tuple[str, str]]:
    """A connected graph of 2 to 6 nodes: a random spanning tree plus random extra links."""
    nodes = [f"node-{c}" for c in "abcdef"[:draw(st.integers(2, 6))]]
    edges = {(nodes[draw(st.integers(0, i - 1))], nodes[i]) for i in range(1, len(nodes))}
    pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
    edges |= set(draw(st.lists(st.sampled_from(pairs), max_size=6)))
    return sorted(edges)


@settings(max_examples=30, deadline=None)
@given(topologies(), st.integers(0, 2**16))
def test_a_signed_mesh_converges_as_an_unsigned_one(edges: list[tuple[str, str]], seed: int) -> None:
    """Signing and verifying every advertisement changes no route: all of them verify, hop by hop."""
    nodes = sorted({n for edge in edges for n in edge})
    servers = {n: ("s",) for n in nodes}
    plain = Mesh(edges, servers)
    plain.converge()
    signed = Mesh(edges, servers, signed=True)
    signed.converge(random.Random(seed))
    for node in nodes:
        assert plain.best(node) == signed.best(node)
        assert all(r.proof is not None and len(r.proof.sigs) == len(r.path) and None not in r.proof.sigs
                   for routes in signed.tables[node].learned.values() for r in routes.values())


@settings(max_examples=60, deadline=None)
@given(topologies(), st.integers(0, 2**16))
def test_a_mesh_converges_to_shortest_loop_free_paths_in_any_order(edges: list[tuple[str, str]], seed: int) -> None:
    nodes = sorted({n for edge in edges for n in edge})
    servers = {n: ("s",) for n in nodes}
    ordered = Mesh(edges, servers)
    ordered.converge()
    shuffled = Mesh(edges, servers)
    shuffled.converge(random.Random(seed))
    for node in nodes:
        assert ordered.best(node) == shuffled.best(node)
        # Every server is reached along a shortest path (breadth-first distance), never through itself.
        distance, frontier = {node: 0}, [node]
        for hops in range(1, len(nodes)):
            frontier = sorted({p for n in frontier for p in ordered.neighbours(n) if p not in distance})
            distance.update(dict.fromkeys(frontier, hops))
        assert set(ordered.best(node)) == {(n, "s") for n in nodes}
        for (origin, _server), path in ordered.best(node).items():
            assert len(path) - (origin == node) == distance[origin] and node not in path[1:]


@settings(max_examples=100, deadline=None)
@given(worlds(), st.lists(st.tuples(st.sampled_from(PEERS), st.integers(0, FAILURE_THRESHOLD + 1), st.booleans()),
                          max_size=5))
def test_a_healthy_route_is_always_preferred_to_a_penalized_one(world: dict[str, Any],
                                                               outcomes: list[tuple[str, int, bool]]) -> None:
    table = converge(world, interleaving(world, random.Random(world["seed"])))
    now = 0.0
    for peer, failures, then_ok in outcomes:  # some failures in a row, then maybe an answer
        for _ in range(failures):
            now += 1.0
            table.forward_failed(peer, now)
        if then_ok:
            table.forward_succeeded(peer, now)
    best = table.update(world["local"], world["rtts"], now)
    for key, (chosen, via) in best.items():
        if via is None or not table.penalized(via, now):
            continue
        # Chosen through a penalized peer: only when every peer offering it is penalized.
        offering = [peer for peer, routes in table.learned.items() if key in routes]
        assert all(table.penalized(peer, now) for peer in offering), (key, chosen.path)
    # Without penalties the choice is the plain one (fewest hops, RTT, peer id).
    for peer in PEERS:
        table.forward_succeeded(peer, now)
    plain = converge(world, interleaving(world, random.Random(world["seed"])))
    assert {k: v[1] for k, v in table.update(world["local"], world["rtts"], now).items()} == {
        k: v[1] for k, v in plain.best.items()}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ad", "tombstone"]), st.sampled_from(["node-b", "node-d", "evil"]),
                          st.integers(1, 40)), max_size=25))
def test_after_a_verified_tombstone_no_older_route_is_held_or_used(events: list[tuple[str, str, int]]) -> None:
    """Advertisements and tombstones of one server from any peers in any order: once a tombstone is
    verified, no route of its version or older is held or used, and a newer advertisement is believed."""
    clock = Clock()
    table = signed_table(clock)
    key = ("node-c", "s")
    barred, newest = 0, 0
    for kind, peer, version in events:
        if kind == "tombstone":
            assert not table.receive(peer, OPEN, revoking(withdrawal(*key, version, clock))).unverified
            if version > max(barred, newest):
                barred = version
        else:
            received = table.receive(peer, OPEN, advert(proven(route(*key, peer), clock, version=version)))
            accepted = not received.unverified
            assert accepted == (version > barred and version >= newest)
            newest = version if accepted else newest
        held = [r.proof.version for routes in table.learned.values() if key in routes
                for r in [routes[key]] if r.proof is not None]
        assert all(v > barred for v in held)
        best = table.update({}, {})
        if key in best:
            assert best[key][0].proof is not None and best[key][0].proof.version == newest > barred
        else:
            assert newest not in held or newest <= barred
