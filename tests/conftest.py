"""Shared helpers: node configurations on 127.0.0.1 port 0, and small node-running utilities."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

import fednode

#: A valid HS512 test secret (>= 64 bytes). Tests only; never a real deployment's.
SECRET = "test-secret-" + "0123456789abcdef" * 5


def raw_config(node_id: str, peers: list[dict[str, Any]] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A raw configuration mapping for a node on 127.0.0.1 port 0 with test-friendly timings.

    Reconnection is fast; the deadlines that decide a link is dead (heartbeat, handshake) are long,
    so a busy machine, whose event loops may stall for seconds, never drops a link by accident.
    Tests of those deadlines set short ones of their own (and most run under MockClock).
    """
    raw: dict[str, Any] = {
        "node": {"id": node_id, "control": "ws://127.0.0.1:0", "data": "http://127.0.0.1:0",
                 "shutdown_grace": "2s"},
        "auth": {"secret": SECRET},
        "heartbeat": {"interval": "0.5s", "timeout": "30s"},
        "backoff": {"initial": "0.05s", "max": "0.5s", "reset_after": "1s"},
        "link": {"handshake_timeout": "20s"},
        "peers": copy.deepcopy(peers or []),
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def node_config(node_id: str, peers: list[dict[str, Any]] | None = None,
                **sections: dict[str, Any]) -> fednode.NodeConfig:
    """A validated NodeConfig (see :func:`raw_config`)."""
    return fednode.NodeConfig.from_mapping(raw_config(node_id, peers, **sections))


def peer(node: fednode.Node | str, *, dial: bool = True) -> fednode.PeerConfig:
    """A PeerConfig for a running node (dialable) or a bare id (dials in only)."""
    if isinstance(node, str):
        return fednode.PeerConfig(id=node)
    return fednode.PeerConfig(id=node.id, control=node.control_url if dial else None)


@asynccontextmanager
async def mesh(*ids: str, **sections: dict[str, Any]) -> AsyncIterator[dict[str, fednode.Node]]:
    """Run nodes that all know each other; the node with the smaller id dials, the other waits.

    Yields once every link is up.
    """
    async with AsyncExitStack() as stack:
        nodes: dict[str, fednode.Node] = {}
        for node_id in ids:
            nodes[node_id] = await stack.enter_async_context(fednode.open_node(node_config(node_id, **sections)))
        for node_id, node in nodes.items():
            for other_id, other in nodes.items():
                if other_id == node_id:
                    continue
                # Exactly one side dials so the links come up deterministically.
                await node.register_peer(peer(other, dial=node_id < other_id), wait=False)
        for node in nodes.values():
            await node.wait_connected(timeout=60)
        yield nodes


@pytest.fixture
def secret() -> str:
    return SECRET
