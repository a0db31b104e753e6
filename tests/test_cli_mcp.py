"""`fednode mcp`: a desktop MCP host launches the node as a stdio server and reaches the federation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

import fednode

from conftest import SECRET, node_config

FEDNODE = str(Path(sys.executable).parent / "fednode")
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")


def stdio_node_config(tmp_path: Path, peer: fednode.Node, extra: str = "") -> Path:
    """The configuration file of node-s, the node `fednode mcp` runs, dialing ``peer``."""
    config = tmp_path / "node-s.toml"
    config.write_text('[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
                      f'[auth]\nsecret = "{SECRET}"\n{extra}'
                      f'[[peers]]\nid = "node-b"\ncontrol = "{peer.control_url}"\n')
    return config


@pytest.mark.parametrize(("mode", "given"), [("legacy", "option"), ("2026-07-28", "option"),
                                             ("legacy", "positional"), ("2026-07-28", "environment")])
async def test_stdio_client_reaches_a_server_on_a_peer(tmp_path: Path, mode: str, given: str) -> None:
    """A host launches `fednode mcp` with the configuration as --config, as FILE, or in FEDNODE_CONFIG."""
    with trio.fail_after(120):
        async with fednode.open_node(node_config("node-b", peers=[{"id": "node-s"}])) as b:
            await b.add_server(fednode.ServerConfig(id="fx", command=sys.executable, args=(FIXTURE,)), timeout=60)
            config = stdio_node_config(tmp_path, b)
            args = {"option": ["mcp", "--config", str(config)], "positional": ["mcp", str(config)],
                    "environment": ["mcp"]}[given]
            env = {"PATH": "/usr/bin:/bin", **({"FEDNODE_CONFIG": str(config)} if given == "environment" else {})}
            params = StdioServerParameters(command=FEDNODE, args=args, env=env)
            async with Client(params, mode=mode, cache=None) as client:
                with trio.fail_after(45):
                    while "fx__add" not in {t.name for t in (await client.list_tools()).tools}:
                        await trio.sleep(0.1)
                result = await client.call_tool("fx__add", {"a": 20, "b": 22})
                assert not result.is_error
                assert result.structured_content is not None and 42 in result.structured_content.values()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_first_list_right_after_start_up_is_complete(tmp_path: Path, mode: str) -> None:
    """The client's very first tools/list, sent as soon as `fednode mcp` answers, already holds the
    peer's tools: it waits until the peer has linked and sent its catalog (no retry loop here)."""
    with trio.fail_after(120):
        async with fednode.open_node(node_config("node-b", peers=[{"id": "node-s"}])) as b:
            await b.add_server(fednode.ServerConfig(id="fx", command=sys.executable, args=(FIXTURE,)), timeout=60)
            config = stdio_node_config(tmp_path, b, '[mcp]\nfirst_list_wait = "50s"\n')
            params = StdioServerParameters(command=FEDNODE, args=["mcp", "--config", str(config)],
                                           env={"PATH": "/usr/bin:/bin"})
            async with Client(params, mode=mode, cache=None) as client:
                assert "fx__add" in {t.name for t in (await client.list_tools()).tools}
