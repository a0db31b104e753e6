"""Catalog propagation over real links: path-vector routes, loop freedom, withdrawal, policy, conflicts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import structlog
import trio

import fednode

from conftest import node_config
from helpers import signed


@attrs.frozen
class Catalog:
    """Stands in for an attached server's catalog (the upstream driver's ServerCatalog has these fields)."""

    tools: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    resource_templates: tuple[dict[str, Any], ...] = ()


def tools(*names: str) -> Catalog:
    return Catalog(tools=tuple({"name": n, "description": f"the {n} tool", "inputSchema": {"type": "object"},
                                "_meta": {"x": n}} for n in names))


@asynccontextmanager
async def topology(edges: Iterable[tuple[str, str]], policies: dict[tuple[str, str], dict[str, Any]] | None = None,
                   ) -> AsyncIterator[dict[str, fednode.Node]]:
    """Nodes linked along ``edges`` (the first of each pair dials); ``policies[(a, b)]`` = a's policy for b."""
    edges = list(edges)
    ids = sorted({n for edge in edges for n in edge})
    policies = policies or {}
    async with AsyncExitStack() as stack:
        nodes = {i: await stack.enter_async_context(fednode.open_node(node_config(i))) for i in ids}
        for a, b in edges:
            pa = {k: tuple(v) if isinstance(v, list) else v for k, v in policies.get((a, b), {}).items()}
            pb = {k: tuple(v) if isinstance(v, list) else v for k, v in policies.get((b, a), {}).items()}
            await nodes[b].register_peer(fednode.PeerConfig(id=a, **pb), wait=False)
            await nodes[a].register_peer(fednode.PeerConfig(id=b, control=nodes[b].control_url, **pa))
        yield nodes


async def eventually(check: Any, timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds; ``timeout`` is only a safety net (a busy machine is slow)."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


def _context(peer_id: str) -> Any:
    from fednode._peers._link import RequestContext

    return RequestContext(peer_id=peer_id, method="fed/routes", timeout=None)


def names(node: fednode.Node, kind: str = "tools") -> set[str]:
    return set(node.federation.entries[kind])


class TestPropagation:
    """A server attached anywhere shows up everywhere, with a loop-free path, and leaves when it goes."""

    async def test_chain(self) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                c.federation.set_local_catalog("time", tools("now", "zone"))
                await eventually(lambda: names(a) == {"time__now", "time__zone"})
                entry = a.federation.entries["tools"]["time__now"]
                assert entry.origins == ("node-c",) and entry.name == "now" and entry.server == "time"
                assert entry.definition == {"name": "time__now", "description": "the now tool",
                                            "inputSchema": {"type": "object"}, "_meta": {"x": "now"}}
                route, via = a.federation.best_routes()[("node-c", "time")]
                assert route.path == ("node-c", "node-b") and via == "node-b"
                # A change travels as a delta; removal withdraws everywhere.
                c.federation.set_local_catalog("time", tools("now"))
                await eventually(lambda: names(a) == {"time__now"})
                c.federation.set_local_catalog("time", None)
                await eventually(lambda: names(a) == set() and names(nodes["node-b"]) == set())

    async def test_link_loss_withdraws_at_once_and_heals(self) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")]) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                c.federation.set_local_catalog("time", tools("now"))
                await eventually(lambda: names(a) == {"time__now"})
                await b.remove_peer("node-c")
                # At once: well within the 30 s heartbeat timeout, the other way a loss is noticed.
                await eventually(lambda: names(a) == set(), timeout=15)
                await c.remove_peer("node-b")
                await c.register_peer(fednode.PeerConfig(id="node-b"), wait=False)
                await b.register_peer(fednode.PeerConfig(id="node-c", control=c.control_url))
                await eventually(lambda: names(a) == {"time__now"})

    async def test_ring_of_four_is_loop_free(self) -> None:
        ring = [("node-a", "node-b"), ("node-b", "node-c"), ("node-c", "node-d"), ("node-a", "node-d")]
        with trio.fail_after(60):
            async with topology(ring) as nodes:
                for node_id, node in nodes.items():
                    node.federation.set_local_catalog(f"s-{node_id[-1]}", tools("t"))
                expected = {f"s-{i}__t" for i in "abcd"}
                await eventually(lambda: all(names(n) == expected for n in nodes.values()))
                for node in nodes.values():
                    for (origin, _), (route, _via) in node.federation.best_routes().items():
                        assert len(set(route.path)) == len(route.path), route.path
                        assert node.id not in route.path or origin == node.id
                        assert len(route.path) <= 3  # opposite corner: two hops either way
                # Cut one edge: everything is still reachable the long way round.
                await nodes["node-a"].remove_peer("node-b")
                await nodes["node-b"].remove_peer("node-a")
                await eventually(lambda: all(names(n) == expected for n in nodes.values()))
                route, via = nodes["node-a"].federation.best_routes()[("node-b", "s-b")]
                assert route.path == ("node-b", "node-c", "node-d") and via == "node-d"

    async def test_full_mesh_of_five_prefers_direct_routes(self) -> None:
        ids = [f"node-{i}" for i in "abcde"]
        edges = [(x, y) for i, x in enumerate(ids) for y in ids[i + 1:]]
        with trio.fail_after(60):
            async with topology(edges) as nodes:
                for node_id, node in nodes.items():
                    node.federation.set_local_catalog(f"s-{node_id[-1]}", tools("t"))

                def direct(node: fednode.Node) -> bool:
                    return all(via == (None if origin == node.id else origin) and len(route.path) == 1
                               for (origin, _), (route, via) in node.federation.best_routes().items())

                await eventually(lambda: all(len(names(n)) == 5 for n in nodes.values()))
                # A route through another node may come first (updates are applied at a bounded
                # rate); the direct ones win once every update is in.
                await eventually(lambda: all(direct(n) for n in nodes.values()))


class TestPolicy:
    """export, import and transit decide what crosses each link."""

    async def test_export_and_import(self) -> None:
        policies = {("node-b", "node-a"): {"export": ["public"]}, ("node-b", "node-c"): {"import_": ["time"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")], policies) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                b.federation.set_local_catalog("public", tools("p"))
                b.federation.set_local_catalog("private", tools("q"))
                c.federation.set_local_catalog("time", tools("now"))
                c.federation.set_local_catalog("secret", tools("s"))
                await eventually(lambda: names(b) == {"public__p", "private__q", "time__now"})
                await eventually(lambda: names(c) == {"public__p", "private__q", "time__now", "secret__s"})
                # A change b then makes to "public" reaches a after anything b would have leaked.
                b.federation.set_local_catalog("public", tools("p", "marker"))
                await eventually(lambda: "public__marker" in names(a))
                assert names(a) == {"public__p", "public__marker"}  # only "public" (not even c's "time")

    async def test_no_transit(self) -> None:
        policies = {("node-b", "node-a"): {"transit": False}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")], policies) as nodes:
                nodes["node-b"].federation.set_local_catalog("own", tools("o"))
                nodes["node-c"].federation.set_local_catalog("far", tools("f"))
                await eventually(lambda: names(nodes["node-b"]) == {"own__o", "far__f"})
                # A change b then makes to its own server reaches a after anything b would have leaked.
                nodes["node-b"].federation.set_local_catalog("own", tools("o", "marker"))
                await eventually(lambda: "own__marker" in names(nodes["node-a"]))
                assert names(nodes["node-a"]) == {"own__o", "own__marker"}


class TestNames:
    """Replicas merge into one entry; different servers claiming one name both stay reachable."""

    async def test_replicas_and_conflicts(self) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")]) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                b.federation.set_local_catalog("time", tools("now"))
                c.federation.set_local_catalog("time", tools("now"))
                await eventually(lambda: a.federation.entries["tools"].get("time__now") is not None
                                 and len(a.federation.entries["tools"]["time__now"].origins) == 2)
                assert a.federation.entries["tools"]["time__now"].origins == ("node-b", "node-c")
                # Two different servers whose prefixes make the same exposed name: both stay reachable.
                b.federation.set_local_catalog("aa", tools("bb__cc"))   # exposed "aa__bb__cc"
                await eventually(lambda: "aa__bb__cc" in names(a))
                c.federation.set_local_catalog("aa__bb", tools("cc"))   # exposed "aa__bb__cc" too
                await eventually(lambda: len([n for n in names(a) if n.endswith("aa__bb__cc")]) == 2)
                tools_at_a = a.federation.entries["tools"]
                assert tools_at_a["aa__bb__cc"].server == "aa"  # "aa" claimed the name first: it keeps it
                assert tools_at_a["node-c__aa__bb__cc"].server == "aa__bb"  # the other gets its node id
                assert tools_at_a["node-c__aa__bb__cc"].definition["name"] == "node-c__aa__bb__cc"
                assert any("aa__bb__cc" in conflict for conflict in a.federation.conflicts)


    async def test_a_peer_cannot_take_over_names(self) -> None:
        """Names given stay with their servers: a local server's always, then the first claimant's."""

        def forged(server: str, prefix: str, tool: str) -> dict[str, Any]:
            # What a peer that chose its server id and prefix to collide would advertise.
            return signed({"origin": "node-b", "server": server, "prefix": prefix, "path": ["node-b"],
                           "digest": server, "catalog": {"tools": [{"name": tool, "inputSchema": {"type": "object"}}]}},
                          to="node-a")

        with trio.fail_after(60):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                b.federation.set_local_catalog("zz", tools("now"))
                await eventually(lambda: "zz__now" in names(a))
                # A server id that sorts first, with a prefix that collides: renamed, whoever it is.
                a.federation._on_routes({"set": [forged("aa", "zz", "now")]}, _context("node-b"))
                await eventually(lambda: "node-b__zz__now" in names(a))  # applied by the intake's task
                tools_at_a = a.federation.entries["tools"]
                assert tools_at_a["zz__now"].server == "zz" and tools_at_a["node-b__zz__now"].server == "aa"
                # A server attached here keeps its names even against an earlier claim from a peer.
                a.federation._on_routes({"set": [forged("ab", "loc", "x")]}, _context("node-b"))
                await eventually(lambda: "loc__x" in names(a))
                assert a.federation.entries["tools"]["loc__x"].server == "ab"
                a.federation.set_local_catalog("loc", tools("x"))
                tools_at_a = a.federation.entries["tools"]
                assert tools_at_a["loc__x"].server == "loc" and tools_at_a["node-b__loc__x"].server == "ab"
                assert any("'loc__x'" in conflict for conflict in a.federation.conflicts)

    async def test_definitions_a_client_cannot_accept_are_dropped(self) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                bad = Catalog(tools=({"name": "good", "inputSchema": {"type": "object"}}, {"name": "no_schema"},
                                     {"name": 5, "inputSchema": {}}),
                              prompts=({"name": "p", "arguments": "not a list"},),
                              resources=({"uri": "test://r", "name": "r"}, {"name": "no uri"}))
                b.federation.set_local_catalog("s", bad)
                await eventually(lambda: "s__good" in names(a))
                for node in (a, b):
                    assert names(node) == {"s__good"} and names(node, "prompts") == set()
                    assert names(node, "resources") == {"test://r"}
                # The same from a peer that does not check what it sends: checked on arrival.
                forged = signed({"origin": "node-b", "server": "t", "prefix": "t", "path": ["node-b"], "digest": "x",
                                 "catalog": {"tools": [{"name": "fine", "inputSchema": {"type": "object"}},
                                                       {"name": "broken"}]}}, to="node-a")
                a.federation._on_routes({"set": [forged]}, _context("node-b"))
                await eventually(lambda: "t__fine" in names(a))
                assert "t__broken" not in names(a)


class TestLargeCatalogs:
    """Catalogs larger than one frame travel in several frames and are swapped in whole."""

    async def test_big_catalog_crosses_in_several_frames(self) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                big = "x" * 2000
                for i in range(8):  # 8 servers x 150 tools x ~2 KB: several MiB in all
                    b.federation.set_local_catalog(f"s{i}", Catalog(tools=tuple(
                        {"name": f"t{j}", "description": big, "inputSchema": {"type": "object"}}
                        for j in range(150))))
                await eventually(lambda: len(names(a)) == 8 * 150)
                # A server whose catalog grows past a frame is withdrawn (with a clear log line), not left
                # stale at the peer, and comes back once it fits again.
                b.federation.set_local_catalog("huge", tools("small"))
                await eventually(lambda: "huge__small" in names(a))
                b.federation.set_local_catalog("huge", Catalog(tools=tuple(
                    {"name": f"t{j}", "description": big * 2} for j in range(400))))
                await eventually(lambda: not any(n.startswith("huge__") for n in names(a)))
                assert len(names(a)) == 8 * 150 and a.connected_peers() == ["node-b"]
                b.federation.set_local_catalog("huge", tools("again"))
                await eventually(lambda: "huge__again" in names(a))


class TestSlowPeers:
    """A peer that takes its advertisements slowly (or never) holds up only its own updates."""

    async def test_a_stuck_peer_delays_only_itself(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-a", "node-c")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                a.federation.set_local_catalog("s0", tools("t"))
                await eventually(lambda: "s0__t" in names(b) and "s0__t" in names(nodes["node-c"]))
                notify = a.notify

                async def stuck_to_c(peer_id: str, method: str, params: Any) -> None:
                    if peer_id == "node-c":
                        await trio.sleep_forever()
                    await notify(peer_id, method, params)

                monkeypatch.setattr(a, "notify", stuck_to_c)
                for i in range(1, 4):
                    a.federation.set_local_catalog(f"s{i}", tools("t"))
                    await eventually(lambda: f"s{i}__t" in names(b))  # noqa: B023 - awaited at once


class TestEnforcement:
    """A peer cannot reach a server that policy keeps from it, even by asking for it directly."""

    async def test_forward_to_unexported_server_is_refused(self) -> None:
        policies = {("node-b", "node-a"): {"export": ["public"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")], policies) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                b.federation.set_local_catalog("public", tools("p"))
                b.federation.set_local_catalog("private", tools("q"))
                await eventually(lambda: names(a) == {"public__p"})
                forged = {"origin": "node-b", "server": "private", "method": "tools/call",
                          "params": {"name": "q", "arguments": {}}, "timeout": 5, "trace": ["node-a"]}
                with pytest.raises(fednode.RemoteError) as info:
                    await a.request("node-b", "fed/forward", forged, timeout=30)
                assert info.value.code == -32602 and "not offered" in info.value.remote_message


class TestLimits:
    """A peer advertising without bound cannot make a node hold unbounded state."""

    async def test_catalog_items_and_bytes_per_peer_are_capped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fednode._federation import _federation

        monkeypatch.setattr(_federation, "MAX_ITEMS_PER_PEER", 10)
        monkeypatch.setattr(_federation, "MAX_CATALOG_BYTES_PER_PEER", 2000)
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                for i in range(4):  # 4 x 3 items: the fourth server would make 12 > 10
                    b.federation.set_local_catalog(f"s{i}", tools("t1", "t2", "t3"))
                await eventually(lambda: len(a.federation.learned.get("node-b", {})) == 3)
                b.federation.set_local_catalog("big", Catalog(tools=(
                    {"name": "t", "description": "x" * 3000, "inputSchema": {"type": "object"}},)))
                b.federation.set_local_catalog("s3", None)
                await eventually(lambda: "s3__t1" not in names(a))
                assert set(a.federation.learned["node-b"]) == {("node-b", f"s{i}") for i in range(3)}

    async def test_routes_per_peer_are_capped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fednode._federation import _federation

        monkeypatch.setattr(_federation, "MAX_ROUTES_PER_PEER", 5)
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                for i in range(8):
                    b.federation.set_local_catalog(f"s{i}", tools("t"))
                await eventually(lambda: len(a.federation.learned.get("node-b", {})) == 5)
                # A change to an accepted server reaches a after the routes b advertised before it.
                _, kept = sorted(a.federation.learned["node-b"])[0]
                b.federation.set_local_catalog(kept, tools("t", "marker"))
                await eventually(lambda: f"{kept}__marker" in names(a))
                assert len(a.federation.learned["node-b"]) == 5 and len(names(a)) == 6
                # A peer advertising far more is refused, and cannot make the log say so without bound.
                flood = [signed({"origin": "node-b", "server": f"x{i}", "prefix": "x", "path": ["node-b"],
                                 "digest": "d", "catalog": {"tools": [{"name": "t"}]}}, to="node-a")
                         for i in range(500)]  # invalid as well
                with structlog.testing.capture_logs() as logs:
                    a.federation._on_routes({"set": flood}, _context("node-b"))
                    # most are refused at once, by the reader; the rest when applied
                    await eventually(lambda: a.federation.intake.pending("node-b").empty)  # type: ignore[union-attr]
                # at most the burst (some may have gone on the earlier adverts); then one a second
                assert 1 <= len([e for e in logs if e["event"] == "routes.limit"]) <= 10
                # Refused before their definitions were checked: over a limit costs little.
                assert [e for e in logs if e["event"] == "routes.invalid_items"] == []
                assert len(a.federation.learned["node-b"]) == 5


def full_catalog(*tool_names: str) -> Catalog:
    """Tools, a prompt, a resource and a resource template."""
    return attrs.evolve(tools(*tool_names), prompts=({"name": "greet"},),
                        resources=({"uri": "kv://static", "name": "static"},),
                        resource_templates=({"uriTemplate": "kv://items/{id}", "name": "item"},))


async def forward_error(node: fednode.Node, method: str, params: dict[str, Any]) -> Any:
    from fednode._errors import ForwardError

    with pytest.raises(ForwardError) as info:
        await node.federation.execute(method, params, timeout=5)
    return info.value


class TestWithdrawnNames:
    """A name that left with its server's last route answers "unreachable", naming server, node and since
    when; a name never seen stays "unknown"."""

    async def test_owning_node_stopped(self) -> None:
        with trio.fail_after(30):
            async with fednode.open_node(node_config("node-a")) as a:
                async with fednode.open_node(node_config("node-b")) as b:
                    await b.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
                    await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
                    b.federation.set_local_catalog("kv", full_catalog("get", "put"))
                    await eventually(lambda: names(a) == {"kv__get", "kv__put"})
                # node-b has stopped: its routes are gone at node-a
                await eventually(lambda: not names(a))
                for method, params in (("tools/call", {"name": "kv__get"}), ("prompts/get", {"name": "kv__greet"}),
                                       ("resources/read", {"uri": "kv://static"}),
                                       ("resources/read", {"uri": "kv://items/7"}),
                                       ("completion/complete", {"ref": {"type": "ref/prompt", "name": "kv__greet"}}),
                                       ("completion/complete", {"ref": {"type": "ref/resource",
                                                                        "uri": "kv://items/{id}"}})):
                    error = await forward_error(a, method, params)
                    assert error.code == -32050, (method, params)
                    assert "'kv'" in str(error) and "'node-b'" in str(error) and "since" in str(error)
                    assert error.data["server"] == "kv" and error.data["node"] == "node-b"
                    assert error.data["since"].endswith("Z") and error.data["withdrawnSecondsAgo"] >= 0
                # a name that was never there is still unknown
                assert (await forward_error(a, "tools/call", {"name": "kv__gte"})).code == -32602
                assert (await forward_error(a, "resources/read", {"uri": "kv://other"})).code == -32602

    async def test_back_in_the_catalog_or_removed_by_its_server(self) -> None:
        with trio.fail_after(20):
            async with topology([("node-a", "node-b")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                b.federation.set_local_catalog("kv", tools("get", "put"))
                await eventually(lambda: names(a) == {"kv__get", "kv__put"})
                # the server itself dropped a tool: that tool is unknown now, not unreachable
                b.federation.set_local_catalog("kv", tools("get"))
                await eventually(lambda: names(a) == {"kv__get"})
                assert (await forward_error(a, "tools/call", {"name": "kv__put"})).code == -32602
                b.federation.set_local_catalog("kv", None)
                await eventually(lambda: not names(a))
                assert (await forward_error(a, "tools/call", {"name": "kv__get"})).code == -32050
                assert len(a.federation.withdrawn) == 1
                b.federation.set_local_catalog("kv", tools("get"))
                await eventually(lambda: names(a) == {"kv__get"})
                assert len(a.federation.withdrawn) == 0  # back: forgotten

    async def test_local_server_down_is_32051_and_removed_is_unknown(self) -> None:
        with trio.fail_after(20):
            async with fednode.open_node(node_config("node-a")) as a:
                # attached here (a stand-in for its driver), and then it stopped answering its pings
                a.attached.upstreams["kv"] = SimpleNamespace(  # type: ignore[assignment]
                    config=fednode.ServerConfig(id="kv", command="kv"), server_info=None, state="backoff", restarts=1)
                a.federation.set_local_catalog("kv", tools("get"))
                a.federation.set_local_catalog("kv", None)
                error = await forward_error(a, "tools/call", {"name": "kv__get"})
                assert error.code == -32051 and "'kv'" in str(error) and "'node-a'" in str(error)
                assert error.data["node"] == "node-a"
                # a server detached on purpose is not "down": its names are simply unknown
                a.federation.set_local_catalog("gone", tools("x"))
                a.federation.set_local_catalog("gone", None)
                assert (await forward_error(a, "tools/call", {"name": "gone__x"})).code == -32602


class TestWithdrawnMemory:
    """The memory of withdrawn names is bounded by age and by count."""

    def test_expires_and_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fednode._federation import _withdrawn
        from fednode._federation._withdrawn import WithdrawnNames

        now = [100.0]
        memory = WithdrawnNames(ttl=600.0, limit=3, clock=lambda: now[0], wall_clock=lambda: 0.0)
        memory.remember("tools", "a", "s", ("n",), local=False)
        now[0] += 599.0
        assert memory.get("tools", "a") is not None
        message, data = memory.get("tools", "a").describe(now[0])  # type: ignore[union-attr]
        assert "599s ago" in message and data["since"] == "1970-01-01T00:00:00Z"
        now[0] += 1.0
        assert memory.get("tools", "a") is None and len(memory) == 0  # ten minutes later: forgotten
        for name in "bcde":
            memory.remember("tools", name, "s", ("n",), local=False)
        assert len(memory) == 3 and memory.get("tools", "b") is None  # the oldest went first
        memory.remember("resourceTemplates", "x://{id}", "s", ("n",), local=False)
        found = memory.for_uri("x://42")
        assert found is not None and found.kind == "resourceTemplates"
        memory.forget("resourceTemplates", "x://{id}")
        assert memory.for_uri("x://42") is None
        # templates (each one a pattern tried per lookup) are capped on their own
        monkeypatch.setattr(_withdrawn, "MAX_WITHDRAWN_TEMPLATES", 2)
        for prefix in "pqr":
            memory.remember("resourceTemplates", f"{prefix}://{{id}}", "s", ("n",), local=False)
        assert memory.for_uri("p://1") is None and memory.for_uri("r://1") is not None
        assert memory.get("resourceTemplates", "p://{id}") is None
        # what a peer chose is bounded in size too: an overlong name is not remembered
        memory = WithdrawnNames(clock=lambda: now[0])
        memory.remember("tools", "x" * 1025, "s", ("n",), local=False)
        memory.remember("tools", "x" * 1024, "s", ("n",), local=False)
        assert memory.get("tools", "x" * 1025) is None and len(memory) == 1


    def test_a_server_s_names_are_remembered_and_forgotten_together(self) -> None:
        from fednode._federation._withdrawn import WithdrawnNames

        now = [0.0]
        memory = WithdrawnNames(ttl=600.0, limit=5, clock=lambda: now[0], wall_clock=lambda: 0.0)
        memory.remember_all("tools", ["a", "b", "c"], "s", ("n1",), local=False)
        now[0] += 1
        memory.remember_all("tools", ["d", "e", "f", "b"], "t", ("n2", "n3"), local=True)
        # five at most: one of s's three went (the oldest); b is t's now (withdrawn again, later)
        assert len(memory) == 5 and sum(memory.get("tools", n) is not None for n in "ac") == 1
        found = memory.get("tools", "b")
        assert found is not None and (found.name, found.server, found.nodes, found.local, found.at) == (
            "b", "t", ("n2", "n3"), True, 1.0)
        assert memory.get("prompts", "b") is None and memory.get("tools", "zz") is None
        memory.forget_all("tools", ["d", "e", "zz"])
        assert len(memory) == 3 and memory.get("tools", "d") is None and memory.get("tools", "f") is not None
        now[0] += 600
        assert memory.get("tools", "f") is None and len(memory) == 0 and memory.snapshot() == []


class TestConflictLog:
    """Name conflicts are logged as one summary per pair of servers, once while the set is unchanged."""

    async def test_one_line_per_conflict_set(self) -> None:
        with trio.fail_after(20):
            async with fednode.open_node(node_config("node-a")) as a:
                with structlog.testing.capture_logs() as logs:
                    a.federation.set_local_catalog("aa", tools(*(f"bb__t{i}" for i in range(9))))
                    a.federation.set_local_catalog("aa__bb", tools(*(f"t{i}" for i in range(9))))
                    a.federation.set_local_catalog("other", tools("x"))  # an unrelated update
                    a.federation.set_local_catalog("aa__bb", tools(*(f"t{i}" for i in range(9))))
                conflicts = [e for e in logs if e["event"] == "catalog.conflict"]
                assert len(a.federation.conflicts) == 9
                assert len(conflicts) == 1 and conflicts[0]["log_level"] == "warning"
                assert conflicts[0]["servers"] == ["aa", "aa__bb"] and conflicts[0]["count"] == 9
                assert conflicts[0]["names"] == sorted(f"aa__bb__t{i}" for i in range(9))
                with structlog.testing.capture_logs() as logs:
                    a.federation.set_local_catalog("aa__bb", tools(*(f"t{i}" for i in range(10))))  # no clash
                    a.federation.set_local_catalog("aa", tools(*(f"bb__t{i}" for i in range(10))))  # t9 clashes now
                assert [e["count"] for e in logs if e["event"] == "catalog.conflict"] == [10]
