"""A peer or client with valid credentials that floods a node: fair shares and rate limits keep the others served.

Chain node-a - node-b - node-c, servers ``slow`` and ``fast`` (the fixture) at node-c, and "evil": a
configured peer of node-b, driven by hand over the peer protocol.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx2
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode._config._config import parse_rate
from fednode._errors import OVERLOADED, RATE_LIMITED
from fednode._peers import _wire as wire

from conftest import node_config
from helpers import raw_peer

FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")
MODERN = "2026-07-28"


def fixture(server_id: str) -> fednode.ServerConfig:
    return fednode.ServerConfig(id=server_id, command=sys.executable, args=(FIXTURE,))


@asynccontextmanager
async def chain_with_evil(max_inflight: int, evil: dict[str, Any] | None = None,
                          ) -> AsyncIterator[dict[str, fednode.Node]]:
    """node-a - node-b - node-c with ``slow`` and ``fast`` at node-c; node-b also accepts "evil"."""
    link = {"max_inflight": max_inflight}
    async with AsyncExitStack() as stack:
        # node-b's peers are in its configuration (so that a reload compares with them); the others dial it.
        b_peers = [{"id": "node-a"}, {"id": "node-c"}, {"id": "evil", **(evil or {})}]
        b = await stack.enter_async_context(fednode.open_node(node_config("node-b", b_peers, link=link)))
        nodes = {"b": b}
        for i in "ac":
            nodes[i] = await stack.enter_async_context(fednode.open_node(node_config(f"node-{i}", link=link)))
            await nodes[i].register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
        for server_id in ("slow", "fast"):
            await nodes["c"].add_server(fixture(server_id), timeout=60)
        await nodes["a"].federation.wait_for("fast__add", "slow__slow", timeout=60)
        await nodes["b"].federation.wait_for("fast__add", "slow__slow", timeout=60)
        yield {f"node-{i}": node for i, node in nodes.items()}


class Evil:
    """The hostile peer's side of its link: sends requests, answers pings, collects the answers."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.answers: dict[int, wire.Message] = {}
        self.answered = trio.Event()
        self._next = 0

    async def read(self) -> None:
        try:
            while True:
                message = wire.decode(await self.ws.get_message())
                if isinstance(message, wire.Ping):
                    await self.ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
                elif isinstance(message, wire.Response | wire.Error) and message.id is not None:
                    self.answers[message.id] = message
                    self.answered.set()
                    self.answered = trio.Event()
        except ConnectionClosed:
            pass

    async def send(self, method: str, params: Any, timeout: float = 60.0) -> int:
        self._next += 1
        await self.ws.send_message(wire.encode(wire.Request(id=self._next, method=method, params=params,
                                                            timeout=timeout)))
        return self._next

    def codes(self) -> list[int]:
        return [a.code for a in self.answers.values() if isinstance(a, wire.Error)]

    async def wait_answers(self, count: int) -> None:
        with trio.fail_after(60):
            while len(self.answers) < count:
                await self.answered.wait()


def forward(server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"origin": "node-c", "server": server, "method": "tools/call", "timeout": 60, "trace": ["evil"],
            "params": {"name": tool, "arguments": arguments}}


class TestForwardFlood:
    """One peer flooding a slow server through node-b gets -32004; a client's calls to another server succeed."""

    async def test_legitimate_calls_succeed_during_the_flood(self) -> None:
        with trio.fail_after(150):
            async with chain_with_evil(max_inflight=16) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                async with raw_peer(b, "evil") as ws, trio.open_nursery() as nursery:
                    evil = Evil(ws)
                    nursery.start_soon(evil.read)
                    flood = 300
                    for _ in range(flood):
                        await evil.send("fed/forward", forward("slow", "slow", {"seconds": 60}))
                    # The flood is on: node-b has passed on all it would take, the rest came back refused.
                    link = b.supervisor("evil").link  # type: ignore[union-attr]
                    assert link is not None
                    with trio.fail_after(60):
                        while link.passing_on < 8 or len(evil.answers) < flood - 16:
                            await trio.sleep(0.05)
                    async with Client(a.mcp_url, mode=MODERN, cache=None) as client:
                        outcomes = []
                        for i in range(40):  # a call every 50 ms, to the other server at node-c
                            try:
                                result = await client.call_tool("fast__add", {"a": i, "b": 1})
                                outcomes.append(result.structured_content == {"result": i + 1})
                            except MCPError as exc:
                                outcomes.append(exc.error.code)  # type: ignore[arg-type]
                            await trio.sleep(0.05)
                    assert link.passing_on >= 8  # the flood lasted the whole time
                    assert outcomes.count(True) >= 0.99 * len(outcomes), outcomes
                    codes = evil.codes()
                    assert codes and set(codes) == {OVERLOADED}, set(codes)
                    nursery.cancel_scope.cancel()
                # node-b counted evil's refusals in its fair share of the link to node-c
                assert 'fednode_share_refused_total{party="evil",pool="link",reason="server"}' in \
                    b.metrics.render().decode()


class TestPeerRate:
    """A peer over its [[peers]] rate gets RATE_LIMITED with data.retryAfter; a reload changes the rate at once."""

    async def test_over_the_rate_and_after_a_reload(self) -> None:
        with trio.fail_after(150):
            async with chain_with_evil(max_inflight=128, evil={"rate": "60/min"}) as nodes:
                b = nodes["node-b"]
                async with raw_peer(b, "evil") as ws, trio.open_nursery() as nursery:
                    evil = Evil(ws)
                    nursery.start_soon(evil.read)
                    started = trio.current_time()
                    sent = 100
                    for i in range(sent):
                        await evil.send("fed/forward", forward("fast", "add", {"a": i, "b": 0}))
                    await evil.wait_answers(sent)
                    elapsed = trio.current_time() - started
                    served = [a for a in evil.answers.values() if isinstance(a, wire.Response)]
                    limited = [a for a in evil.answers.values() if isinstance(a, wire.Error)]
                    # a burst of 10 s worth (10 requests), then one a second
                    assert 10 <= len(served) <= 10 + elapsed + 1, (len(served), elapsed)
                    assert limited and {a.code for a in limited} == {RATE_LIMITED}
                    assert all(0 < a.data["retryAfter"] <= 1.0 for a in limited)  # type: ignore[index]
                    assert 'fednode_rate_limited_total{limit="peer",peer="evil"}' in b.metrics.render().decode()
                    # A reload that changes only evil's rate keeps its link and applies at once.
                    config = attrs.evolve(b.config, peers=tuple(
                        attrs.evolve(p, rate=parse_rate("6000000/min")) if p.id == "evil" else p
                        for p in b.config.peers))
                    result = await b.reload(config)
                    assert result.peers_retuned == ("evil",) and "evil" not in result.peers_changed
                    await trio.sleep(0.01)  # 100,000 a second from now on: a token in 10 us
                    more = [await evil.send("fed/forward", forward("fast", "add", {"a": 1, "b": 1})) for _ in range(5)]
                    await evil.wait_answers(sent + 5)
                    after = [evil.answers[i] for i in more]
                    assert all(isinstance(answer, wire.Response) for answer in after), after
                    nursery.cancel_scope.cancel()


@asynccontextmanager
async def lone_node(**clients: Any) -> AsyncIterator[fednode.Node]:
    async with fednode.open_node(node_config("node-a", clients=clients)) as node:
        yield node


async def post_list(http: httpx2.AsyncClient, node: fednode.Node, token: str | None = None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
               "Mcp-Method": "tools/list"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    return await http.post(node.mcp_url, json=body, headers=headers)


class TestClientRate:
    """A client over [clients] rate gets RATE_LIMITED with data.retryAfter: per token, or per address without."""

    async def test_per_address(self) -> None:
        with trio.fail_after(60):
            async with lone_node(rate="60/min") as node, httpx2.AsyncClient() as http:
                started = trio.current_time()
                answers = [(await post_list(http, node)).json() for _ in range(30)]
                elapsed = trio.current_time() - started
                served = [a for a in answers if "result" in a]
                limited = [a["error"] for a in answers if "error" in a]
                assert 10 <= len(served) <= 10 + elapsed + 1, (len(served), elapsed)
                assert limited and {e["code"] for e in limited} == {RATE_LIMITED}
                assert all(0 < e["data"]["retryAfter"] <= 1.0 for e in limited)
                assert 'fednode_rate_limited_total{limit="client",peer=""}' in node.metrics.render().decode()

    async def test_per_token(self) -> None:
        tokens = ["client-token-0001", "client-token-0002"]
        with trio.fail_after(60):
            async with lone_node(rate="6/min", tokens=tokens) as node, httpx2.AsyncClient() as http:
                first = (await post_list(http, node, tokens[0])).json()
                second = (await post_list(http, node, tokens[0])).json()
                assert "result" in first and second["error"]["code"] == RATE_LIMITED
                assert "result" in (await post_list(http, node, tokens[1])).json()  # its own bucket


class TestConnections:
    """More than [clients] max_connections from one address: HTTP 429 with Retry-After; a reload raises it."""

    async def test_429_beyond_the_limit(self) -> None:
        with trio.fail_after(60):
            async with lone_node(max_connections=2) as node, httpx2.AsyncClient() as http:
                port = node.data_port
                assert port is not None
                held = []
                for _ in range(2):  # a request whose body never comes holds its connection
                    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    await sock.connect(("127.0.0.1", port))
                    await sock.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 1000\r\n\r\n")
                    held.append(sock)
                with trio.fail_after(30):
                    while node.edge.limits.connections("127.0.0.1") < 2:
                        await trio.sleep(0.02)
                response = await http.get(node.data_url + "/healthz")
                assert response.status_code == 429 and response.headers["retry-after"] == "1"
                # ending a session is never refused: it frees what the session held
                ending = await http.delete(node.mcp_url, headers={"mcp-session-id": "no-such-session"})
                assert ending.status_code != 429
                assert 'fednode_rate_limited_total{limit="connections",peer=""}' in node.metrics.render().decode()
                result = await node.reload(attrs.evolve(node.config, clients=attrs.evolve(node.config.clients,
                                                                                          max_connections=3)))
                assert result.ok
                assert (await http.get(node.data_url + "/healthz")).status_code == 200
                held[0].close()
                with trio.fail_after(30):
                    while node.edge.limits.connections("127.0.0.1") > 1:
                        await trio.sleep(0.02)
                for sock in held[1:]:
                    sock.close()

