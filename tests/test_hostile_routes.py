"""A configured peer that lies about routes: forged origins and paths are refused, never used, never passed on.

The scenario of issue 12: a chain node-a - node-b - node-c with ``notes`` attached at node-c, and
"evil", a peer of node-a and node-b with valid credentials of its own (its own secret: it does not
know the secret the chain shares). evil advertises (node-c, notes) with the path [node-c, evil], and
replays node-a's genuine advertisement of it with the path shortened, while a legitimate client
calls ``notes`` through node-a; and once node-c withdraws ``notes``, evil replays the last genuine
advertisement of it that node-b sent evil.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp import Client
from mcp.shared.exceptions import MCPError
from trio_websocket import WebSocketConnection

import fednode
from fednode._errors import DEADLINE_EXCEEDED
from fednode._federation._route_proof import Proof, RouteProofs
from fednode._federation._routes import route_from_wire
from fednode._peers import _wire as wire

from conftest import node_config, raw_config
from helpers import keyring, raw_peer, signed

#: evil's own link secret (>= 64 bytes): node-a and node-b know it as evil's, nobody else has it.
EVIL_SECRET = "evil-secret-" + "fedcba9876543210" * 5
NOTES = ("node-c", "notes")


def notes_server() -> fednode.ServerConfig:
    return fednode.ServerConfig(id="notes", command=sys.executable, args=("-m", "fednode.examples.notes"))


def evil_peer(*, vouch: bool = False) -> fednode.PeerConfig:
    return fednode.PeerConfig(id="evil", secrets=(fednode.Secret(EVIL_SECRET),), vouch=vouch)


@asynccontextmanager
async def chain_with_evil(*, vouch: bool = False, mcp: dict[str, Any] | None = None,
                          ) -> AsyncIterator[dict[str, fednode.Node]]:
    """node-a - node-b - node-c, notes at node-c; evil registered (dialing in) at node-a and node-b."""
    sections = {"mcp": mcp} if mcp else {}
    async with AsyncExitStack() as stack:
        nodes = {i: await stack.enter_async_context(fednode.open_node(node_config(f"node-{i}", **sections)))
                 for i in "abc"}
        for left, right in (("a", "b"), ("b", "c")):
            await nodes[right].register_peer(fednode.PeerConfig(id=f"node-{left}"), wait=False)
            await nodes[left].register_peer(fednode.PeerConfig(id=f"node-{right}", control=nodes[right].control_url))
        for node in (nodes["a"], nodes["b"]):
            await node.register_peer(evil_peer(vouch=vouch), wait=False)
        await nodes["c"].add_server(notes_server(), timeout=60)
        await nodes["a"].federation.wait_for("notes__word_count", timeout=30)
        yield {f"node-{i}": node for i, node in nodes.items()}


async def notify(ws: WebSocketConnection, method: str, params: Any) -> None:
    await ws.send_message(wire.encode(wire.Notification(method=method, params=params)))


async def synced(ws: WebSocketConnection, request_id: int) -> None:
    """Wait until the node has handled everything sent before: it answers an echo after it (in order)."""
    await ws.send_message(wire.encode(wire.Request(id=request_id, method="echo", params={}, timeout=30)))
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif isinstance(message, wire.Response) and message.id == request_id:
            return


async def applied(node: fednode.Node, peer_id: str) -> None:
    """Wait until ``node`` has applied every route update ``peer_id`` sent that it has read."""
    with trio.fail_after(30):
        while (pending := node.federation.intake.pending(peer_id)) is not None and not pending.empty:
            await trio.sleep(0.02)


async def advertised_to_evil(ws: WebSocketConnection, key: tuple[str, str]) -> dict[str, Any]:
    """The route for ``key`` the node advertises to evil (answering heartbeats meanwhile)."""
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif isinstance(message, wire.Notification) and message.method == "fed/routes":
            for route in message.params.get("set", []):
                if (route["origin"], route["server"]) == key:
                    return dict(route)


def evil_attests(route: dict[str, Any], path: list[str], to: str, *, sigs: list[Any]) -> dict[str, Any]:
    """``route`` with ``path``, the attestations ``sigs`` for the hops before evil, and evil's own to ``to``."""
    proof = Proof.from_wire({**route["proof"], "sigs": [*sigs, None]}, len(path))
    proofs = RouteProofs("evil", keyring("evil", EVIL_SECRET))
    attested = proofs.attest(route["origin"], route["server"], route["prefix"], route["digest"], proof,
                             tuple(path), to)
    return {**route, "path": path, "proof": attested.to_wire()}


def has_evil(node: fednode.Node) -> bool:
    """Whether any route this node holds came through evil."""
    return any("evil" in route.path for routes in node.federation.learned.values() for route in routes.values())


class TestForgedRoutes:
    """Forged origins and paths are refused (and counted), never used and never passed on; clients keep working."""

    async def test_forged_and_shortened_routes_are_refused_while_a_client_keeps_calling(self) -> None:
        with trio.fail_after(120):
            async with chain_with_evil() as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                results: list[bool] = []
                attacked = trio.Event()

                async def legitimate_client() -> None:
                    async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                        for _ in range(60):  # bounded: 20 calls after the attack is done
                            if attacked.is_set() and len(results) >= 20:
                                return
                            try:
                                result = await client.call_tool("notes__word_count", {"text": "one two three"})
                                results.append(not result.is_error)
                            except MCPError:
                                results.append(False)
                            await trio.sleep(0.05)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(legitimate_client)
                    async with raw_peer(a, "evil", secret=EVIL_SECRET) as to_a, \
                            raw_peer(b, "evil", secret=EVIL_SECRET) as to_b:
                        genuine = await advertised_to_evil(to_a, NOTES)
                        assert genuine["path"] == ["node-c", "node-b", "node-a"]  # signed by each, out to evil
                        hops = genuine["proof"]["sigs"]
                        # 1. A's genuine advertisement with the path shortened to [node-c, evil]: node-c's
                        #    attestation was made out to node-b, not to evil.
                        shortened = evil_attests(genuine, ["node-c", "evil"], "node-a", sigs=hops[:1])
                        # 2. No proof at all, and 3. node-c's attestation made with evil's own key.
                        unsigned = {k: v for k, v in genuine.items() if k != "proof"} | {"path": ["node-c", "evil"]}
                        own_key = signed({k: v for k, v in unsigned.items()}, "node-a",
                                         secrets={"node-c": EVIL_SECRET, "evil": EVIL_SECRET})
                        for number, frame in enumerate(({"full": True, "set": [shortened]}, {"set": [unsigned]},
                                                        {"set": [own_key]}), start=11):
                            # One at a time: a peer's frames arriving together are merged (the latest route
                            # per server is what is verified), and each is to be refused for its own reason.
                            await notify(to_a, "fed/routes", frame)
                            await synced(to_a, number)
                            await applied(a, "evil")
                        await notify(to_b, "fed/routes", {"full": True, "set": [
                            evil_attests(genuine, ["node-c", "evil"], "node-b", sigs=hops[:1])]})
                        await synced(to_a, 1)
                        await synced(to_b, 1)
                        await applied(b, "evil")
                        refused = dict(a.federation.routes_refused)
                        assert refused == {"bad_signature": 1, "unsigned": 1, "unknown_key": 1}
                        assert dict(b.federation.routes_refused) == {"bad_signature": 1}
                        assert a.status()["routes"]["refused"] == refused
                        metrics = a.metrics.render().decode()
                        assert 'fednode_routes_refused_total{reason="bad_signature"} 1.0' in metrics
                        # Never believed, never used: calls still go through node-b.
                        assert NOTES not in a.federation.learned.get("evil", {})
                        assert a.federation.next_hop(*NOTES) == "node-b"
                        assert b.federation.next_hop(*NOTES) == "node-c"
                        attacked.set()
                        # Never passed on: a server attached after the attack reaches every node; by
                        # then anything the attack had made node-a or node-b offer would have too.
                        await a.add_server(fednode.ServerConfig(id="marker", command=sys.executable,
                                                                args=("-m", "fednode.examples.notes")), timeout=60)
                        await c.federation.wait_for("marker__word_count", timeout=30)
                        assert not any(has_evil(node) for node in (a, b, c))
                        # The legitimate client finishes its calls while evil is still linked.
                        with trio.fail_after(60):
                            while len(results) < 20:
                                await trio.sleep(0.05)
                assert len(results) >= 20 and all(results), results


async def withdrawn_to_evil(ws: WebSocketConnection, key: tuple[str, str]) -> dict[str, Any]:
    """The ``fed/routes`` frame in which the node withdraws ``key`` from evil (answering heartbeats meanwhile)."""
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif (isinstance(message, wire.Notification) and message.method == "fed/routes"
              and list(key) in message.params.get("withdraw", [])):
            return dict(message.params)


class TestReplayedWithdrawnRoutes:
    """An origin's signed withdrawal reaches every node: the last genuine advertisement of a withdrawn
    server, replayed by a peer that kept it, is refused (a replay), never used, never passed on."""

    async def test_a_withdrawn_servers_last_advertisement_cannot_be_replayed(self) -> None:
        with trio.fail_after(120):
            async with chain_with_evil() as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                async with raw_peer(b, "evil", secret=EVIL_SECRET) as to_b:
                    captured = await advertised_to_evil(to_b, NOTES)  # while notes is live
                assert captured["path"] == ["node-c", "node-b"]  # signed by each, out to evil
                # evil signs it on to node-a: a valid chain of attestations, of the version node-a holds.
                replay = evil_attests(captured, ["node-c", "node-b", "evil"], "node-a",
                                      sigs=captured["proof"]["sigs"])
                async with raw_peer(a, "evil", secret=EVIL_SECRET) as to_a, \
                        Client(a.mcp_url, mode="legacy", cache=None) as client:
                    await advertised_to_evil(to_a, NOTES)  # so that it is withdrawn from evil below
                    await c.remove_server("notes")
                    withdrawal = await withdrawn_to_evil(to_a, NOTES)  # node-a has dropped it
                    await notify(to_a, "fed/routes", {"set": [replay]})
                    await synced(to_a, 1)
                    assert dict(a.federation.routes_refused) == {"replay": 1}
                    assert 'fednode_routes_refused_total{reason="replay"} 1.0' in a.metrics.render().decode()
                    # Never used, never passed on.
                    assert NOTES not in a.federation.learned.get("evil", {})
                    assert a.federation.next_hop(*NOTES) is None
                    assert "notes__word_count" not in {t.name for t in (await client.list_tools()).tools}
                    assert all(NOTES not in a.federation.advertiser.offers(peer) for peer in ("node-b", "evil"))
                    # The tombstone was passed on to evil too (the route could have been offered to it),
                    # signed by node-c: whoever holds node-c's key can check it.
                    [tombstone] = [t for t in withdrawal.get("revoked", []) if (t["origin"], t["server"]) == NOTES]
                    assert tombstone["version"] > captured["proof"]["version"]
                    # node-c attaches notes again: a newer advertisement, believed everywhere.
                    await c.add_server(notes_server(), timeout=60)
                    await a.federation.wait_for("notes__word_count", timeout=30)
                    assert a.federation.next_hop(*NOTES) == "node-b"
                    result = await client.call_tool("notes__word_count", {"text": "one two three"})
                    assert not result.is_error
                    # node-c's tombstone with its version raised (to withdraw the re-attached server for
                    # good) does not verify: refused, counted, not passed on; notes stays.
                    raised = {**tombstone, "version": tombstone["version"] + 10**9}
                    await notify(to_a, "fed/routes", {"revoked": [raised]})
                    await synced(to_a, 2)
                    assert dict(a.federation.routes_refused) == {"replay": 1, "bad_signature": 1}
                    assert NOTES not in a.federation.advertiser.revocations("node-b")
                    assert a.federation.next_hop(*NOTES) == "node-b"
                    assert not (await client.call_tool("notes__word_count", {"text": "four"})).is_error
                    assert not any(has_evil(node) for node in (a, b, c))
                    assert dict(b.federation.routes_refused) == {}


class TestUnansweringTransit:
    """A peer that accepts forwards and never answers holds no caller past its deadline."""

    async def test_a_call_through_a_silent_peer_ends_at_its_deadline(self) -> None:
        with trio.fail_after(120):
            async with chain_with_evil(mcp={"request_timeout": "2s"}) as nodes:
                a = nodes["node-a"]
                async with raw_peer(a, "evil", secret=EVIL_SECRET) as to_a:
                    # evil's own server, advertised with a valid signature: believed, and routed to evil.
                    own = signed({"origin": "evil", "server": "hole", "prefix": "hole", "path": ["evil"], "digest": "",
                                  "catalog": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}},
                                 "node-a", secrets={"evil": EVIL_SECRET})
                    await notify(to_a, "fed/routes", {"full": True, "set": [own]})
                    await a.federation.wait_for("hole__t", timeout=30)
                    forwards = 0

                    async def swallow() -> None:
                        nonlocal forwards
                        while True:  # accepts every fed/forward, answers none (heartbeats only)
                            message = wire.decode(await to_a.get_message())
                            if isinstance(message, wire.Ping):
                                await to_a.send_message(wire.encode(wire.Pong(seq=message.seq)))
                            elif isinstance(message, wire.Request) and message.method == "fed/forward":
                                forwards += 1

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(swallow)
                        async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                            started = trio.current_time()
                            with pytest.raises(MCPError) as info:
                                await client.call_tool("hole__t", {})
                            elapsed = trio.current_time() - started
                            assert info.value.error.code == DEADLINE_EXCEEDED
                            with trio.fail_after(30):  # evil did take the forward (it is read as it comes)
                                while forwards < 1:
                                    await trio.sleep(0.01)
                            assert forwards == 1
                            assert 2.0 <= elapsed < 30  # the deadline, not the client's own timeout
                            # The client is not held either: its next request is answered (by node-a itself:
                            # a forward to node-c might not make the 2 s deadline on a busy machine).
                            assert "hole__t" in {tool.name for tool in (await client.list_tools()).tools}
                        nursery.cancel_scope.cancel()


class TestVouching:
    """A peer trusted to vouch may offer routes nobody can verify; that trust is not passed on."""

    async def test_vouched_routes_are_used_and_passed_on_but_not_believed_further(self) -> None:
        with trio.fail_after(120):
            async with chain_with_evil(vouch=True) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                async with raw_peer(a, "evil", secret=EVIL_SECRET) as to_a:
                    far = {"origin": "node-x", "server": "far", "prefix": "far", "path": ["node-x", "evil"],
                           "digest": "", "catalog": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]}}
                    far["digest"] = route_from_wire(far).signed_digest()  # only its signatures are missing
                    await notify(to_a, "fed/routes", {"full": True, "set": [far]})
                    await a.federation.wait_for("far__t", timeout=30)
                    assert a.federation.learned["evil"][("node-x", "far")].vouched_by == "evil"
                    assert dict(a.federation.routes_refused) == {}
                    # node-a passes it on signed by itself; node-b does not trust node-a to vouch.
                    with trio.fail_after(30):
                        while b.federation.routes_refused["unsigned"] < 1:
                            await trio.sleep(0.02)
                    assert ("node-x", "far") not in b.federation.learned.get("node-a", {})


def ed25519() -> tuple[Ed25519PrivateKey, str]:
    """A private key and its public key as PEM text (the configuration takes either a file or PEM)."""
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


class TestKeysOfOtherNodes:
    """With EdDSA, a node verifies routes of nodes it does not link to with their [[nodes]] public key."""

    async def test_an_ed25519_chain_needs_the_far_nodes_key(self, tmp_path: Any) -> None:
        keys = {n: ed25519() for n in ("node-a", "node-b", "node-c")}

        def config(node_id: str, nodes: list[dict[str, Any]] | None = None) -> fednode.NodeConfig:
            raw = raw_config(node_id)
            pem = keys[node_id][0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
            (tmp_path / f"{node_id}.pem").write_bytes(pem)
            raw["auth"] = {"algorithm": "EdDSA", "private_key": str(tmp_path / f"{node_id}.pem")}
            raw["nodes"] = nodes or []
            return fednode.NodeConfig.from_mapping(raw)

        def peer(node_id: str, control: str | None = None) -> fednode.PeerConfig:
            return fednode.PeerConfig(id=node_id, control=control, public_keys=(keys[node_id][0].public_key(),))

        far = [{"id": "node-c", "public_key": keys["node-c"][1]}]
        with trio.fail_after(120):
            for nodes_at_a in (None, far):
                async with AsyncExitStack() as stack:
                    a = await stack.enter_async_context(fednode.open_node(config("node-a", nodes_at_a)))
                    b = await stack.enter_async_context(fednode.open_node(config("node-b")))
                    c = await stack.enter_async_context(fednode.open_node(config("node-c")))
                    await b.register_peer(peer("node-a"), wait=False)
                    await a.register_peer(peer("node-b", b.control_url))
                    await c.register_peer(peer("node-b"), wait=False)
                    await b.register_peer(peer("node-c", c.control_url))
                    await b.add_server(notes_server(), timeout=60)  # node-b's own: node-a has its key
                    await c.add_server(fednode.ServerConfig(id="far", command=sys.executable,
                                                            args=("-m", "fednode.examples.notes")), timeout=60)
                    await b.federation.wait_for("far__word_count", timeout=30)
                    await a.federation.wait_for("notes__word_count", timeout=30)
                    if nodes_at_a is None:
                        with trio.fail_after(30):  # node-c is configured nowhere at node-a
                            while a.federation.routes_refused["unknown_key"] < 1:
                                await trio.sleep(0.02)
                        assert "far__word_count" not in a.federation.entries["tools"]
                    else:
                        await a.federation.wait_for("far__word_count", timeout=30)
                        assert dict(a.federation.routes_refused) == {}
