"""Who is calling: caller rules, the entry node's signed caller statement, and ``[[servers]] callers``
enforced across hops (issue 13, parts 2 and 3)."""

from __future__ import annotations

import copy
import sys
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import fednode
from fednode._config._callers import EVERYBODY, Caller, CallerRules, rule_problem
from fednode._errors import FORBIDDEN, ConfigError, ForwardError
from fednode._federation._caller_proof import CallerRefusal, CallerStatements, params_digest
from fednode._federation._routes import Route, catalog_digest, compact_json, route_from_wire

from conftest import node_config, raw_config
from helpers import keyring

ALICE = Caller(entry="node-a", kind="oauth", subject="alice@example.org", client="cli", scopes=("notes",))
BOB = Caller(entry="node-a", kind="token", subject="bob")


class TestRules:
    def test_principals(self) -> None:
        assert ALICE.principals() == ("node:node-a", "sub:alice@example.org", "client:cli", "scope:notes")
        assert Caller(entry="node-a").principals() == ("node:node-a", "anonymous")
        assert Caller.of_node("node-b").principals() == ("node:node-b",)

    @pytest.mark.parametrize(("rules", "alice", "bob"), [
        (None, True, True),
        ([], False, False),
        (["*"], True, True),
        (["sub:*@example.org"], True, False),
        (["scope:notes"], True, False),
        (["node:node-a", "!sub:bob"], True, False),
        (["*", "!client:cli"], False, True),
        (["anonymous"], False, False),
        (["node:node-b"], False, False),
        (["node:node-a&scope:notes"], True, False),
        (["node:node-b&scope:notes", "sub:bob"], False, True),
        (["*", "!node:node-a&sub:bob"], True, False),
    ])
    def test_allows(self, rules: list[str] | None, alice: bool, bob: bool) -> None:
        parsed = CallerRules.parse(rules)
        assert (parsed.allows(ALICE), parsed.allows(BOB)) == (alice, bob)

    @given(st.lists(st.sampled_from(["*", "sub:alice*", "node:node-a", "scope:notes", "anonymous", "client:cli"]),
                    max_size=4), st.sampled_from(["sub:alice*", "node:node-a", "scope:notes", "*"]))
    def test_an_exclusion_always_wins(self, rules: list[str], excluded: str) -> None:
        parsed = CallerRules.parse([*rules, f"!{excluded}"])
        for caller in (ALICE, BOB, Caller(entry="node-a")):
            if excluded == "*" or CallerRules.parse([excluded]).allows(caller):
                assert not parsed.allows(caller)

    @pytest.mark.parametrize("rule", ["", "alice", "sub:", "user:alice", "!", "!!sub:x", "sub:a&", "node:a&user:b",
                                      "sub:" + "x" * 300])
    def test_bad_rules_are_named(self, rule: str) -> None:
        assert rule_problem(rule) is not None
        with pytest.raises(ValueError):
            CallerRules.parse([rule])

    def test_wire_round_trip_and_limits(self) -> None:
        assert Caller.from_wire(ALICE.to_wire()) == ALICE
        for bad in ({"node": "a", "kind": "root"}, {"node": "", "kind": "node"}, [],
                    {"node": "a", "kind": "oauth", "sub": "x" * 300},
                    {"node": "a", "kind": "oauth", "scopes": ["s"] * 65}):
            with pytest.raises(ValueError):
                Caller.from_wire(bad)


class TestConfig:
    def test_peer_and_server_callers(self) -> None:
        raw = raw_config("node-a", peers=[{"id": "node-b", "callers": "own"}])
        raw["servers"] = [{"id": "notes", "command": "python3", "callers": ["sub:*@example.org"]}]
        config = fednode.NodeConfig.from_mapping(raw)
        assert config.peers[0].callers == "own"
        assert config.servers[0].caller_rules.allows(ALICE) and not config.servers[0].caller_rules.allows(BOB)
        assert node_config("node-a", peers=[{"id": "node-b"}]).peers[0].callers == "any"

    def test_bad_values_are_reported_with_their_path(self) -> None:
        raw = raw_config("node-a", peers=[{"id": "node-b", "callers": "some"}])
        raw["servers"] = [{"id": "notes", "command": "python3", "callers": ["sub:ok", "user:alice"]}]
        with pytest.raises(ConfigError) as info:
            fednode.NodeConfig.from_mapping(raw)
        text = str(info.value)
        assert "peers[0].callers" in text and "servers[0].callers[1]" in text and "user:alice" in text


class TestRoutes:
    def test_callers_are_advertised_and_covered_by_the_digest(self) -> None:
        kinds: dict[str, Any] = {"tools": ({"name": "t", "inputSchema": {"type": "object"}},)}
        rules = CallerRules.parse(["sub:alice*"])
        plain = catalog_digest({**kinds, "extensions": {}, "timeout": None})
        digest = catalog_digest({**kinds, "extensions": {}, "timeout": None, "callers": rules.to_wire()})
        assert digest != plain
        route = Route(origin="node-c", server="s", prefix="s", path=("node-c",), digest=digest, catalog=kinds,
                      callers=rules)
        assert route.signed_digest() == digest
        wire = route.to_wire(("node-c",))
        assert wire["callers"] == ["sub:alice*"] and compact_json(wire) == route.wire_text(("node-c",))
        back = route_from_wire(wire)
        assert back.callers == rules and back.signed_digest() == digest
        # A transit node that drops or widens the rules changes what the origin signed.
        assert attrs.evolve(back, callers=EVERYBODY).signed_digest() != digest
        with pytest.raises(ValueError, match="caller rule"):
            route_from_wire({**wire, "callers": ["everyone"]})


def statements(node_id: str, trust: str | None = "any", clock: list[float] | None = None,
               unverified: list[str] | None = None) -> CallerStatements:
    now = clock if clock is not None else [1_000_000.0]
    found = unverified if unverified is not None else []
    return CallerStatements(node_id, keyring(node_id), trust=lambda peer: trust, clock=lambda: now[0],
                            on_unverified=lambda entry, reason: found.append(entry))


class TestStatements:
    PARAMS = {"name": "add_note", "arguments": {"text": "hi"}, "_meta": {"traceparent": "00-" + "1" * 32 + "-" +
                                                                           "2" * 16 + "-01"}}

    def stated(self, clock: list[float] | None = None) -> dict[str, Any]:
        statement = statements("node-a", clock=clock).state(ALICE, origin="node-c", server="notes",
                                                            method="tools/call", params=self.PARAMS, timeout=30)
        assert statement is not None
        return statement

    def believe(self, statement: object, params: dict[str, Any] | None = None, **kwargs: Any) -> Caller:
        return statements("node-c", **kwargs).believe(statement, peer="node-b", origin="node-c", server="notes",
                                                      method="tools/call", params=params or self.PARAMS)

    def test_a_genuine_statement_is_believed_through_a_transit_node(self) -> None:
        assert self.believe(self.stated()) == ALICE
        # Each hop may name its own span in the traceparent: not part of what was signed.
        other_span = {**self.PARAMS, "_meta": {"traceparent": "00-" + "1" * 32 + "-" + "3" * 16 + "-01"}}
        assert params_digest(other_span) == params_digest(self.PARAMS)
        assert self.believe(self.stated(), other_span) == ALICE

    def test_trust_own_and_none(self) -> None:
        assert self.believe(self.stated(), trust="own") == Caller.of_node("node-b")
        assert self.believe(self.stated(), trust="none") == Caller.of_node("node-b")
        assert self.believe(None) == Caller.of_node("node-b")
        own = statements("node-b").state(attrs.evolve(ALICE, entry="node-b"), origin="node-c", server="notes",
                                          method="tools/call", params=self.PARAMS, timeout=30)
        assert self.believe(own, trust="own") == attrs.evolve(ALICE, entry="node-b")

    @pytest.mark.parametrize(("change", "reason"), [
        (lambda s, p: p["arguments"].update(text="other"), CallerRefusal.BAD_SIGNATURE),
        (lambda s, p: s["caller"].update(sub="admin@example.org"), CallerRefusal.BAD_SIGNATURE),
        (lambda s, p: s.update(exp=s["exp"] - 1), CallerRefusal.BAD_SIGNATURE),
        (lambda s, p: s.update(exp=s["exp"] + 3600), CallerRefusal.FUTURE),
        (lambda s, p: s.update(sigs="none"), CallerRefusal.MALFORMED),
        (lambda s, p: s.update(nonce=7), CallerRefusal.MALFORMED),
        (lambda s, p: s["caller"].update(node="node-c"), CallerRefusal.SELF),
    ])
    def test_a_changed_statement_or_request_is_refused(self, change: Any, reason: CallerRefusal) -> None:
        statement, params = self.stated(), copy.deepcopy(self.PARAMS)
        change(statement, params)
        with pytest.raises(ForwardError) as info:
            self.believe(statement, params)
        assert info.value.code == FORBIDDEN and info.value.data == {"reason": reason.value}

    def test_replayed_expired_and_future_statements_are_refused(self) -> None:
        clock = [1_000_000.0]
        owner = statements("node-c", clock=clock)
        statement = self.stated()

        def believe() -> Caller:
            return owner.believe(statement, peer="node-b", origin="node-c", server="notes", method="tools/call",
                                 params=self.PARAMS)

        assert believe() == ALICE
        with pytest.raises(ForwardError, match="already used"):
            believe()
        clock[0] += 31 + 61
        with pytest.raises(ForwardError, match="expired"):
            self.believe(self.stated([1_000_000.0]), clock=clock)
        with pytest.raises(ForwardError, match="future"):
            self.believe(self.stated([1_000_000.0 + 3600]))

    def test_a_statement_without_a_known_key_is_not_believed(self) -> None:
        seen: list[str] = []
        stranger = CallerStatements("node-a", keyring("node-a", secret="another-secret-" + "9" * 60),
                                    trust=lambda peer: "any", clock=lambda: 1_000_000.0)
        statement = stranger.state(ALICE, origin="node-c", server="notes", method="tools/call", params=self.PARAMS,
                                   timeout=30)
        assert self.believe(statement, unverified=seen) == Caller.of_node("node-b")
        assert seen == ["node-a"]


def notes_server(callers: list[str] | None) -> fednode.ServerConfig:
    return fednode.ServerConfig(id="notes", command=sys.executable, args=("-m", "fednode.examples.notes"),
                                callers=None if callers is None else tuple(callers))


def listed(node: fednode.Node, caller: Caller | None) -> set[str]:
    return {item["name"] for item in node.federation.list_items("tools", caller)}


class TestAcrossHops:
    """node-a - node-b - node-c, notes attached at node-c for some callers only."""

    async def test_callers_see_and_call_only_what_the_owner_allows(self) -> None:
        from test_mcp_chain import chain, until_listed

        with trio.fail_after(90):
            async with chain(c=[notes_server(["sub:*@example.org", "!sub:mallory@example.org"])]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "notes__add_note")
                mallory = attrs.evolve(ALICE, subject="mallory@example.org")
                assert "notes__add_note" in listed(a, ALICE)
                assert not listed(a, BOB) & {"notes__add_note", "notes__word_count"}
                assert not listed(a, mallory) & {"notes__add_note"} and not listed(a, None) & {"notes__add_note"}
                call = {"name": "notes__word_count", "arguments": {"text": "two words"}}
                result = await a.federation.execute("tools/call", call, caller=ALICE)
                assert result.get("isError") is not True
                # Refused at the entry node already, with the documented error.
                with pytest.raises(ForwardError) as info:
                    await a.federation.execute("tools/call", call, caller=BOB)
                assert info.value.code == FORBIDDEN and info.value.data["caller"] == BOB.to_wire()
                assert "bob" in str(info.value) and "'notes'" in str(info.value)

                # node-a asking node-c for it anyway, through node-b, stating bob: refused by the owner.
                params = {"name": "word_count", "arguments": {"text": "two words"}}
                own = a.federation.forwarding.callers.statements
                assert own is not None
                forward = {"origin": "node-c", "server": "notes", "method": "tools/call", "params": params,
                           "timeout": 20, "trace": ["node-a"]}
                stated_bob = own.state(BOB, origin="node-c", server="notes", method="tools/call", params=params,
                                       timeout=20)
                with pytest.raises(fednode.RemoteError) as remote:
                    await a.request("node-b", "fed/forward", {**forward, "caller": stated_bob}, timeout=30)
                assert remote.value.code == FORBIDDEN and remote.value.data["caller"]["sub"] == "bob"
                # Stating alice but changing the arguments on the way: the statement does not verify.
                stated_alice = own.state(ALICE, origin="node-c", server="notes", method="tools/call", params=params,
                                         timeout=20)
                changed = {**forward, "params": {**params, "arguments": {"text": "one"}}, "caller": stated_alice}
                with pytest.raises(fednode.RemoteError) as remote:
                    await a.request("node-b", "fed/forward", changed, timeout=30)
                assert remote.value.code == FORBIDDEN and remote.value.data == {"reason": "bad_signature"}
                # The genuine one works once; the same again is a replay.
                genuine = {**forward, "caller": stated_alice}
                answered = await a.request("node-b", "fed/forward", genuine, timeout=30)
                assert answered.get("isError") is not True
                with pytest.raises(fednode.RemoteError) as remote:
                    await a.request("node-b", "fed/forward", genuine, timeout=30)
                assert remote.value.data == {"reason": "replay"}
                # Without a statement the caller is just the peer, which the rules leave out.
                with pytest.raises(fednode.RemoteError) as remote:
                    await a.request("node-b", "fed/forward", forward, timeout=30)
                assert remote.value.code == FORBIDDEN and remote.value.data["caller"] == {"node": "node-b",
                                                                                          "kind": "node"}

                # node-c stops believing what node-b relays: alice arrives as node:node-b.
                # (What a reload does for a peer whose callers alone changed: see test_reload_retunes_callers.)
                peer_b = c.peer_config("node-b")
                assert peer_b is not None
                c.peers.retune([attrs.evolve(peer_b, callers="own")])
                with pytest.raises(ForwardError) as info:
                    await a.federation.execute("tools/call", call, caller=ALICE)
                assert info.value.code == FORBIDDEN and "node:node-b" in str(info.value)


def test_reload_retunes_callers() -> None:
    """A peer whose callers alone changed keeps its link: the new setting applies to its next request."""
    from fednode._node._reload import plan_reload

    old = node_config("node-a", peers=[{"id": "node-b"}])
    new = node_config("node-a", peers=[{"id": "node-b", "callers": "none"}])
    plan = plan_reload(old, new)
    assert plan.peers_retuned == ("node-b",) and plan.peers_changed == ()
    moved = node_config("node-a", peers=[{"id": "node-b", "callers": "none", "transit": False}])
    assert plan_reload(old, moved).peers_changed == ("node-b",)


async def test_a_reload_changes_who_may_call_without_a_restart() -> None:
    """``[[servers]] callers`` changed by a reload: the server keeps running, its routes carry the new rules."""
    from test_mcp_chain import until_listed

    raw = raw_config("node-c")
    raw["servers"] = [{"id": "notes", "command": "python3", "args": ["-m", "fednode.examples.notes"],
                       "callers": ["sub:alice@example.org"]}]
    config_c = fednode.NodeConfig.from_mapping(raw)
    with trio.fail_after(90):
        async with fednode.open_node(config_c) as c, fednode.open_node(node_config("node-a")) as a:
            await c.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
            await a.register_peer(fednode.PeerConfig(id="node-c", control=c.control_url))
            await until_listed(a, "notes__add_note")
            assert "notes__add_note" in listed(a, attrs.evolve(ALICE, subject="alice@example.org"))
            assert "notes__add_note" not in listed(a, BOB)
            widened = attrs.evolve(config_c, servers=(attrs.evolve(config_c.servers[0], callers=("*",)),))
            result = await c.reload(widened)
            assert result.ok and result.servers_retuned == ("notes",) and result.servers_changed == ()
            assert "server callers ~notes" in result.summary
            while "notes__add_note" not in listed(a, BOB):  # bounded by fail_after
                await trio.sleep(0.05)
            assert c.servers()["notes"].restarts == 0
            await a.federation.execute("tools/call", {"name": "notes__word_count", "arguments": {"text": "a b"}},
                                       caller=BOB)
