"""The peers layer without the node: handshake, listener, supervisors and links run on what they are given.

Each part is built here from its configuration sections and small stand-ins for the protocols of
:mod:`fednode._peers._peering`, over real WebSockets on 127.0.0.1, and nothing in the layer's source names
the node.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
import trio

import fednode
from fednode import AuthManager
from fednode._config._config import BackoffConfig, NodeConfig, TLSConfig
from fednode._peers._handshake import Handshake
from fednode._peers._link import Handlers, LinkSettings
from fednode._peers._listener import Listener
from fednode._peers._supervisor import PeerState, PeerSupervisor

from conftest import node_config

SOURCE = Path(fednode.__file__).parent / "_peers"
PEERS_LAYER = sorted(path.name for path in SOURCE.glob("*.py"))


def test_the_peers_layer_never_names_the_node() -> None:
    """No import of the node module (under TYPE_CHECKING or in a function too), no name ``Node``, and no
    part is handed the whole ``NodeConfig``: each gets its own sections."""
    assert {"_handshake.py", "_supervisor.py", "_registry.py", "_listener.py", "_link.py"} <= set(PEERS_LAYER)
    for name in PEERS_LAYER:
        tree = ast.parse((SOURCE / name).read_text(), name)
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "_node" not in imported and "fednode._node._node" not in imported, name
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        arguments = {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
        # no node type, variable or argument (the hello frame's ``node`` field is a plain string)
        assert not names & {"Node", "NodeConfig"} and "node" not in used | arguments, name
        kept = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in ("node", "Node")
                and isinstance(node.value, ast.Name) and node.value.id == "self"]
        assert kept == [], name  # no self.node


class Events:
    """A LinkEvents sink that records what a supervisor reports."""

    def __init__(self) -> None:
        self.links: list[tuple[str, bool]] = []
        self.changes = 0

    def link_changed(self, peer_id: str, up: bool) -> None:
        self.links.append((peer_id, up))

    def notify_change(self) -> None:
        self.changes += 1


class Directory:
    """A PeerDirectory over a dict of supervisors."""

    def __init__(self) -> None:
        self.closing = False
        self.supervisors: dict[str, PeerSupervisor] = {}
        self.asked: list[str] = []

    def has_peer(self, peer_id: str) -> bool:
        return peer_id in self.supervisors

    def supervisor(self, peer_id: str) -> PeerSupervisor | None:
        self.asked.append(peer_id)
        return self.supervisors.get(peer_id)


class Side:
    """One node's worth of peers-layer parts, without a node."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.refused: list[str] = []
        self.auth = AuthManager(config.id, config.auth, {p.id: p for p in config.peers})
        self.handshake = Handshake(local_id=config.id, auth=self.auth, limits=config.link, tls=config.tls,
                                   count_refused=self.refused.append)
        self.handlers = Handlers()
        self.handlers.inline["echo"] = lambda params, context: [context.peer_id, params]
        self.events = Events()
        self.directory = Directory()

    def supervisor(self, peer: fednode.PeerConfig) -> PeerSupervisor:
        return PeerSupervisor(peer, handshake=self.handshake, settings=LinkSettings(), handlers=self.handlers,
                              events=self.events, backoff=BackoffConfig(), logger=structlog.get_logger("fednode"))


@asynccontextmanager
async def listening(side: Side, nursery: trio.Nursery) -> AsyncIterator[str]:
    """Run ``side``'s listener, with a supervisor for each of its peers; yield the URL to dial."""
    for peer in side.config.peers:
        supervisor = side.directory.supervisors[peer.id] = side.supervisor(peer)
        await nursery.start(supervisor.run)
    listener = Listener(control="ws://127.0.0.1:0/fed", tls=TLSConfig(), handshake=side.handshake,
                        peers=side.directory, logger=structlog.get_logger("fednode"))
    port = await nursery.start(listener.serve)
    yield f"ws://127.0.0.1:{port}/fed"


async def test_a_supervisor_links_to_a_listener_with_no_node() -> None:
    a = Side(node_config("node-a", [{"id": "node-b"}]))
    b = Side(node_config("node-b", [{"id": "node-a"}]))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, listening(b, nursery) as url:
            dialer = a.supervisor(fednode.PeerConfig(id="node-b", control=url))
            await nursery.start(dialer.run)
            await dialer.first_attempt.wait()
            assert dialer.first_error is None and dialer.state is PeerState.UP
            assert dialer.link is not None
            # Both method tables answer, each naming the peer it heard from.
            assert await dialer.link.request("echo", "hi", timeout=30) == ["node-a", "hi"]
            accepted = b.directory.supervisors["node-a"]
            assert b.directory.asked == ["node-a"] and accepted.link is not None
            assert await accepted.link.request("echo", "ho", timeout=30) == ["node-b", "ho"]
            assert a.events.links == [("node-b", True)] and b.events.links == [("node-a", True)]

            await dialer.stop_link(1000, "done")
            assert a.events.links == [("node-b", True), ("node-b", False)]
            assert a.events.changes >= 1 and a.refused == [] and b.refused == []
            nursery.cancel_scope.cancel()


async def test_the_directory_decides_who_is_accepted_and_refusals_are_counted() -> None:
    """A listener refuses an unknown issuer (counted by its refusal counter) and answers 503 while closing."""
    a = Side(node_config("node-a", [{"id": "node-b"}]))
    b = Side(node_config("node-b"))  # node-a is not among node-b's peers
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, listening(b, nursery) as url:
            refused = a.supervisor(fednode.PeerConfig(id="node-b", control=url))
            await nursery.start(refused.run)
            await refused.first_attempt.wait()
            assert refused.first_error is not None
            assert "does not have this node ('node-a') among its [[peers]]" in str(refused.first_error)
            assert b.refused[:1] == ["unknown_issuer"] and b.directory.asked == []
            refused.scope.cancel()

            b.directory.closing = True
            closing = a.supervisor(fednode.PeerConfig(id="node-b", control=url))
            await nursery.start(closing.run)
            await closing.first_attempt.wait()
            assert "peer 'node-b' is shutting down (refused with HTTP 503" in str(closing.first_error)
            nursery.cancel_scope.cancel()
