"""What MCP clients see of the federation: lists held until it has settled at start-up, tools a server
lists only to clients with a capability, and resources two servers claim with the same URI."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types
import pytest
import structlog
import trio
import trio.testing
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

import fednode
from fednode._peers import _supervisor

from conftest import node_config, raw_config
from helpers import BlackholeProxy, refusing_dial

FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")


def fixture_server(server_id: str, *args: str) -> fednode.ServerConfig:
    return fednode.ServerConfig(id=server_id, command=sys.executable, args=(FIXTURE, *args))


class TestFirstListHold:
    """A client asking right after start-up never gets an empty or partial catalog (bounded wait)."""

    @pytest.mark.parametrize(("setting", "bound"), [(None, 10.0), ("3s", 3.0)])
    async def test_bounded_by_first_list_wait(self, autojump_clock: trio.testing.MockClock,
                                              monkeypatch: pytest.MonkeyPatch, setting: str | None,
                                              bound: float) -> None:
        """A peer this node dials never links: lists wait exactly ``first_list_wait`` from start-up, then never."""
        attempts: list[float] = []
        monkeypatch.setattr(_supervisor, "dial", refusing_dial(attempts))
        mcp = {"first_list_wait": setting} if setting is not None else {}
        config = node_config("node-a", peers=[{"id": "node-b", "control": "ws://127.0.0.1:9"}], mcp=mcp)
        async with fednode.open_node(config) as node:
            assert not node.federation.settled()
            with structlog.testing.capture_logs() as logs:
                await node.federation.wait_settled()
            assert trio.current_time() - node.started_at == bound
            assert len(attempts) > 1  # it kept trying meanwhile
            # The operator learns what never showed up.
            assert [(e["event"], e["missing"]) for e in logs if e["event"] == "catalog.not_settled"] == \
                [("catalog.not_settled", ["peer node-b"])]
            await node.federation.wait_settled()  # once over, never again
            assert trio.current_time() - node.started_at == bound

    async def test_zero_means_never_held(self, autojump_clock: trio.testing.MockClock,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_supervisor, "dial", refusing_dial([]))
        config = node_config("node-a", peers=[{"id": "node-b", "control": "ws://127.0.0.1:9"}],
                             mcp={"first_list_wait": "0s"})
        async with fednode.open_node(config) as node:
            await node.federation.wait_settled()
            assert trio.current_time() == node.started_at

    async def test_peers_that_only_dial_in_and_failed_servers_are_not_waited_for(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A peer without a control URL may never come; a server whose first start failed is done starting."""
        config = node_config("node-a", peers=[{"id": "node-b"}])
        async with fednode.open_node(config) as node:
            await node.add_server(fednode.ServerConfig(id="gone", command="/nonexistent/fednode-test-server"),
                                  wait=False)
            await node.federation.wait_settled()
            assert trio.current_time() - node.started_at < 1.0
            assert node.servers()["gone"].state == "backoff"

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_first_list_waits_for_configured_servers(self, mode: str) -> None:
        """A list asked the moment the node is up holds the tools of the servers it starts itself."""
        raw = raw_config("node-a", mcp={"first_list_wait": "50s"})
        raw["servers"] = [{"id": "fx", "command": sys.executable, "args": [FIXTURE]}]
        with trio.fail_after(60):
            async with fednode.open_node(fednode.NodeConfig.from_mapping(raw)) as a, \
                    Client(a.mcp_url, mode=mode, cache=None) as client:
                assert "fx__add" in {tool.name for tool in (await client.list_tools()).tools}
                assert a.servers()["fx"].restarts == 0

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_first_list_waits_for_a_peer_that_links_late(self, mode: str) -> None:
        """node-a dials node-b, which is not there yet: a list asked meanwhile is answered once node-b
        has linked and sent its catalog, and holds node-b's tools."""
        listed: list[set[str]] = []
        called: list[Any] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                proxy = BlackholeProxy(target_port=0)  # refuses until it is given node-b's port
                await nursery.start(proxy.serve)
                config = node_config("node-a", peers=[{"id": "node-b", "control": proxy.url}],
                                     mcp={"first_list_wait": "50s"})
                async with fednode.open_node(config) as a, Client(a.mcp_url, mode=mode, cache=None) as client:
                    assert not a.federation.settled()
                    listed_done, called_done = trio.Event(), trio.Event()

                    async def list_tools() -> None:
                        listed.append({tool.name for tool in (await client.list_tools()).tools})
                        listed_done.set()

                    async def call_tool() -> None:  # a call naming what is on its way waits too
                        called.append(await client.call_tool("fx__add", {"a": 1, "b": 2}))
                        called_done.set()

                    nursery.start_soon(list_tools)
                    nursery.start_soon(call_tool)
                    while proxy.connections < 1:  # node-a has tried (and failed) to reach node-b
                        await trio.sleep(0.01)
                    async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}])) as b:
                        await b.add_server(fixture_server("fx"), timeout=30)
                        proxy.target_port = int(b.control_url.rsplit(":", 1)[1])
                        await listed_done.wait()
                        await called_done.wait()
                nursery.cancel_scope.cancel()  # the proxy
        assert len(listed) == 1 and "fx__add" in listed[0], listed
        assert len(called) == 1 and not called[0].is_error and called[0].structured_content == {"result": 3}


@asynccontextmanager
async def two_nodes(a_servers: list[fednode.ServerConfig] = (),  # type: ignore[assignment]
                    b_servers: list[fednode.ServerConfig] = ()  # type: ignore[assignment]
                    ) -> AsyncIterator[tuple[fednode.Node, fednode.Node]]:
    """node-a dials node-b; servers attached (and up) at each."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(fednode.open_node(node_config("node-a")))
        b = await stack.enter_async_context(fednode.open_node(node_config("node-b")))
        await b.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
        await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
        for node, servers in ((a, a_servers), (b, b_servers)):
            for server in servers:
                await node.add_server(server, timeout=30)
        yield a, b


async def no_roots(context: Any) -> mcp_types.ListRootsResult:
    return mcp_types.ListRootsResult(roots=[])


class TestCapabilityDependentLists:
    """A tool a server lists only to clients that declare ``roots`` (the fixture's ``roots_only``, as
    server-everything's ``get-roots-list``), attached one hop away."""

    @pytest.mark.parametrize("server_era", ["auto", "legacy-only"])
    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_a_client_declaring_roots_sees_and_calls_it(self, mode: str, server_era: str) -> None:
        args = ("--legacy-only",) if server_era == "legacy-only" else ()
        with trio.fail_after(60):
            async with two_nodes(b_servers=[fixture_server("fx", *args)]) as (a, _b):
                await a.federation.wait_for("fx__add", "fx__roots_only", timeout=30)
                async with Client(a.mcp_url, mode=mode, cache=None, list_roots_callback=no_roots) as client:
                    assert "fx__roots_only" in {tool.name for tool in (await client.list_tools()).tools}
                    result = await client.call_tool("fx__roots_only", {})
                    assert not result.is_error and result.content[0].text == "roots declared"  # type: ignore[union-attr]

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_a_client_without_roots_is_refused_as_the_server_would(self, mode: str) -> None:
        """The catalog holds what the server offers to the most capable client; the call carries the
        caller's own capabilities, so the server refuses it the way it refuses that client directly."""
        with trio.fail_after(60):
            async with two_nodes(b_servers=[fixture_server("fx")]) as (a, _b):
                await a.federation.wait_for("fx__add", "fx__roots_only", timeout=30)
                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("fx__roots_only", {})
                    assert info.value.error.code == -32602
                    assert info.value.error.message == "Unknown tool: roots_only"


class TestSameResourceUri:
    """Two different servers serve ``test://static``: a URI cannot be renamed, so one server serves
    it at each node (the one attached there, else the first claimant) and the conflict is reported."""

    async def test_the_local_server_keeps_the_uri(self) -> None:
        with trio.fail_after(60):
            async with two_nodes(a_servers=[fixture_server("here", "--name", "here")],
                                 b_servers=[fixture_server("there", "--name", "there")]) as (a, b):
                for node in (a, b):
                    await node.federation.wait_for("here__add", "there__add", timeout=30)
                for node, local, other in ((a, "here", "there"), (b, "there", "here")):
                    async with Client(node.mcp_url, mode="2026-07-28", cache=None) as client:
                        uris = [str(r.uri) for r in (await client.list_resources()).resources]
                        assert uris.count("test://static") == 1
                        read = await client.read_resource("test://static")
                        assert read.contents[0].meta == {"fixture/name": local}
                        templated = await client.read_resource("test://items/7")
                        assert templated.contents[0].meta == {"fixture/name": local}
                    conflicts = node.status()["routes"]["conflicts"]
                    assert f"resources 'test://static': servers {local!r} and {other!r}; {local!r} serves it" \
                        in conflicts


class TestTaskStatusNotifications:
    """A server's ``notifications/tasks/status`` reaches the legacy client session it is meant for,
    two hops back along the path (the SDK's own client drops this method, so the client is raw)."""

    async def test_a_legacy_session_gets_them(self) -> None:
        notes: list[tuple[str, dict[str, Any]]] = []
        arrived = trio.Event()

        async def on_notify(dctx: Any, method: str, params: Any) -> None:
            notes.append((method, dict(params or {})))
            if method == "notifications/tasks/status":
                arrived.set()

        async def on_request(dctx: Any, method: str, params: Any) -> dict[str, Any]:
            raise MCPError(-32601, f"Method not found: {method}")

        version = {"headers": {"MCP-Protocol-Version": "2025-11-25"}}
        with trio.fail_after(60):
            async with two_nodes(b_servers=[fixture_server("fx")]) as (a, _b):
                await a.federation.wait_for("fx__task_status", timeout=30)
                async with streamable_http_client(a.mcp_url) as (read, write), trio.open_nursery() as nursery:
                    dispatcher = JSONRPCDispatcher(read, write)
                    await nursery.start(dispatcher.run, on_request, on_notify, lambda *_: False)
                    await dispatcher.send_raw_request("initialize", {
                        "protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "0"}}, {"request_id": 1})
                    await dispatcher.notify("notifications/initialized", None, version)  # type: ignore[arg-type]
                    call = {"name": "fx__task_status", "arguments": {}}
                    result = await dispatcher.send_raw_request("tools/call", call,
                                                               {"request_id": 2, **version})  # type: ignore[typeddict-item]
                    assert result["content"][0]["text"] == "sent"
                    await arrived.wait()
                    nursery.cancel_scope.cancel()
        statuses = [params for method, params in notes if method == "notifications/tasks/status"]
        assert statuses == [{"taskId": "fixture-task-1", "status": "working", "createdAt": "2026-01-01T00:00:00Z",
                             "lastUpdatedAt": "2026-01-01T00:00:00Z"}]
