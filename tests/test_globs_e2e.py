"""End to end: node-b exports ``["files.read_*", "!files.read_secret"]`` of a real "files" server to node-a.

node-a's SDK client lists and calls only the allowed tools; a peer speaking the peer protocol directly
gets the trimmed route, whose proof verifies, and its forged forward for ``delete`` is refused; a
reload that narrows the export applies at once.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError

import fednode
from fednode._errors import UNKNOWN_NAME
from fednode._federation._route_proof import RouteProofs
from fednode._federation._routes import route_from_wire
from fednode._peers import _wire as wire

from conftest import raw_config
from helpers import keyring, raw_peer

FILES = str(Path(__file__).parent / "mcp_fixtures" / "files_server.py")
EXPORT = ["files.read_*", "!files.read_secret"]


def config_b(export: list[str]) -> fednode.NodeConfig:
    raw = raw_config("node-b", peers=[{"id": "node-a", "export": export}, {"id": "mallory", "export": export}])
    raw["servers"] = [{"id": "files", "command": sys.executable, "args": [FILES]}]
    return fednode.NodeConfig.from_mapping(raw)


async def listed(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


async def routes_frame(ws: Any) -> dict[str, Any]:
    """The first fed/routes frame that sets a route (heartbeats answered on the way)."""
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif isinstance(message, wire.Notification) and message.method == "fed/routes" and message.params["set"]:
            return dict(message.params)


async def answer(ws: Any, request_id: int) -> wire.Message:
    """The response (or error) to request ``request_id`` (heartbeats answered, advertisements skipped)."""
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif isinstance(message, wire.Response | wire.Error) and message.id == request_id:
            return message


def forward(name: str) -> dict[str, Any]:
    return {"origin": "node-b", "server": "files", "method": "tools/call",
            "params": {"name": name, "arguments": {"path": "/x"}}, "timeout": 20, "trace": ["mallory"]}


async def eventually_listed(client: Client, expected: set[str]) -> None:
    with trio.fail_after(30):
        while await listed(client) != expected:
            await trio.sleep(0.05)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_only_exported_tools_reach_the_peer(mode: str) -> None:
    with trio.fail_after(120):
        async with fednode.open_node(config_b(EXPORT)) as b:
            raw_a = raw_config("node-a", peers=[{"id": "node-b", "control": b.control_url}])
            async with fednode.open_node(fednode.NodeConfig.from_mapping(copy.deepcopy(raw_a))) as a:
                await a.federation.wait_for("files__read_a", "files__read_b", timeout=60)
                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    assert await listed(client) == {"files__read_a", "files__read_b"}
                    result = await client.call_tool("files__read_a", {})
                    assert result.content[0].text == "contents of a"  # type: ignore[union-attr]
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("files__delete", {"path": "/x"})
                    assert "Unknown tool" in str(info.value)

                    # A peer that speaks the protocol itself gets the trimmed route, signed for it.
                    async with raw_peer(b, "mallory") as ws:
                        frame = await routes_frame(ws)
                        route = route_from_wire(frame["set"][0])
                        assert {tool["name"] for tool in route.catalog["tools"]} == {"read_a", "read_b"}
                        assert route.signed_digest() == route.digest
                        proofs = RouteProofs("mallory", keyring("mallory"))
                        assert proofs.verify(route.origin, route.server, route.prefix, route.digest, route.proof,
                                             route.path) is None
                        # ... and whatever it asks for, delete is refused at node-b.
                        await ws.send_message(wire.encode(wire.Request(id=1, method="fed/forward",
                                                                       params=forward("delete"), timeout=30)))
                        refused = await answer(ws, 1)
                        assert isinstance(refused, wire.Error) and refused.code == UNKNOWN_NAME
                        assert "'delete' of server 'files' on 'node-b' is not offered to 'mallory'" in refused.message
                        await ws.send_message(wire.encode(wire.Request(id=2, method="fed/forward",
                                                                       params=forward("read_b"), timeout=30)))
                        allowed = await answer(ws, 2)
                        assert isinstance(allowed, wire.Response)
                        assert allowed.result["content"][0]["text"] == "contents of b"

                    # A reload narrowing the export applies at once (the link is re-established).
                    result_b = await b.reload(config_b(["files.read_a"]))
                    assert result_b.ok and "node-a" in result_b.peers_changed
                    await eventually_listed(client, {"files__read_a"})
                    with pytest.raises(fednode.RemoteError) as refused_b:
                        await a.request("node-b", "fed/forward", {**forward("read_b"), "trace": ["node-a"]},
                                        timeout=30)
                    assert refused_b.value.code == UNKNOWN_NAME
