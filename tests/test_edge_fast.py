"""The edge's fast path (fednode._mcp._edge_fast): which requests it serves, which it leaves to the SDK, and how."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import mcp_types
import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import HEADER_MISMATCH
from oauth_issuer import serve_app
from test_edge import (
    ECHO_RESULT,
    MODERN,
    PROMPT_RESULT,
    RESOURCE_RESULT,
    FakeForwarder,
    cancel_a_slow_call,
    client,
    dump,
    running_edge,
)

from fednode._mcp._edge import MCPEdge
from fednode._mcp._edge_call import EdgeCall
from fednode._mcp._edge_fast import PING_INTERVAL

META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
HEADERS = {"MCP-Protocol-Version": MODERN, "Accept": "application/json, text/event-stream",
           "Content-Type": "application/json"}


def modern_request(method: str, params: dict[str, Any], name: str | None = None,
                   request_id: int = 1) -> tuple[dict[str, Any], dict[str, str]]:
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}}
    return body, HEADERS | {"Mcp-Method": method} | ({"Mcp-Name": name} if name else {})


async def legacy_session(http: httpx2.AsyncClient, url: str, *, initialized: bool = True) -> dict[str, str]:
    """Open a 2025-11-25 session with raw HTTP (initialize, then notifications/initialized); its headers."""
    legacy = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    session = (await http.post(url, content=json.dumps(init), headers=legacy)).headers["mcp-session-id"]
    headers = legacy | {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    if initialized:
        await http.post(url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                        headers=headers)
    return headers


def served(edge: Any) -> int:
    return int(edge.fast.served)


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_the_hot_requests_take_the_fast_path(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), client(url, mode) as c:
            before = served(edge)
            assert [t.name for t in (await c.list_tools()).tools][:2] == ["echo", "progress"]
            called = dump(await c.call_tool("echo", {"text": "x"}))
            assert called["structuredContent"] == ECHO_RESULT["structuredContent"]
            assert dump(await c.get_prompt("greet"))["messages"] == PROMPT_RESULT["messages"]
            assert dump(await c.read_resource("mem://a"))["contents"] == RESOURCE_RESULT["contents"]
            assert [p.name for p in (await c.list_prompts()).prompts] == ["greet"]
            assert served(edge) - before == 5
            # completion/complete is not a hot method: the SDK serves it, as before
            await c.complete(mcp_ref(), {"name": "who", "value": "a"})
            assert served(edge) - before == 5
    _, _, call = forwarder.calls[1]
    assert call.era == ("legacy" if mode == "legacy" else "modern")
    if mode == "legacy":
        assert call.session_key is not None and call.client_info is not None and call.client_info["name"]
        assert call.can_ask  # on the request's own stream, answered by a POST the fast path takes


def mcp_ref() -> Any:
    import mcp_types

    return mcp_types.PromptReference(type="ref/prompt", name="greet")


async def test_requests_the_rules_refuse_are_left_to_the_sdk() -> None:
    """Each refusal below is the SDK's own answer: the fast path serves none of them."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), httpx2.AsyncClient() as http:
            body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}}, "other")
            wrong_name = await http.post(url, content=json.dumps(body), headers=headers)
            assert (wrong_name.status_code, wrong_name.json()["error"]["code"]) == (400, HEADER_MISMATCH)
            body, headers = modern_request("tools/call", {"name": "echo"}, "echo")
            del body["params"]["_meta"]
            no_envelope = await http.post(url, content=json.dumps(body), headers=headers)
            assert no_envelope.json()["error"]["code"] == -32602
            body, headers = modern_request("tools/call", {"name": "echo", "arguments": "not an object"}, "echo")
            invalid = await http.post(url, content=json.dumps(body), headers=headers)
            assert invalid.json()["error"]["code"] == -32602
            body, headers = modern_request("tools/call", {"name": "echo"}, "echo")
            batch = await http.post(url, content=json.dumps([body]), headers=headers)
            assert batch.status_code == 400
            not_json = await http.post(url, content=b"{", headers=headers)
            assert not_json.json()["error"]["code"] == -32700
            foreign = await http.post(url, content=json.dumps(body), headers=headers | {"Origin": "http://evil.example"})
            assert foreign.status_code == 403
            assert served(edge) == 0
            assert forwarder.calls == []
            # and the same request, well-formed, is served here
            fine = await http.post(url, content=json.dumps(body), headers=headers)
            assert fine.headers["content-type"] == "application/json"
            assert fine.json()["result"]["structuredContent"] == ECHO_RESULT["structuredContent"]
            assert served(edge) == 1


class AskingForwarder(FakeForwarder):
    """``ask`` asks the client (elicitation) and answers with what it said."""

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        if params.get("name") != "ask":
            return await super().forward(method, params, call)
        self.calls.append((method, params, call))
        answer = await call.ask("elicitation/create", {"message": "Your name?", "requestedSchema": {
            "type": "object", "properties": {"name": {"type": "string"}}}})
        return {"content": [{"type": "text", "text": json.dumps(answer, sort_keys=True)}]}


async def test_a_legacy_request_served_here_asks_its_client_on_its_stream() -> None:
    """Elicitation (sampling, roots) from the middle of a legacy call: the question goes out on the
    request's own stream and the client's answer, POSTed to the session, comes back here."""
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={"name": "ada"})

    async def refuse(context: Any, params: Any) -> Any:
        return mcp_types.ErrorData(code=-32042, message="not now")

    forwarder = AskingForwarder()
    forwarder.catalog["tools"].append({"name": "ask", "inputSchema": {"type": "object"}})
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            async with Client(url, mode="legacy", cache=None, elicitation_callback=elicit) as c:
                called = dump(await c.call_tool("ask", {}))
                assert json.loads(called["content"][0]["text"]) == {"action": "accept", "content": {"name": "ada"}}
                assert asked == ["Your name?"]
                assert served(edge) >= 1 and forwarder.calls[-1][2].can_ask
            async with Client(url, mode="legacy", cache=None, elicitation_callback=refuse) as c:
                with pytest.raises(MCPError) as refused:
                    await c.call_tool("ask", {})
                assert (refused.value.code, refused.value.message) == (-32042, "not now")
            assert edge.fast._asks == {}  # nothing left waiting


async def test_a_silent_request_turns_into_a_pinged_stream(autojump_clock: trio.testing.MockClock) -> None:
    forwarder = FakeForwarder()
    async with running_edge(forwarder) as (edge, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        body, headers = modern_request("tools/call", {"name": "slow"}, "slow")
        data = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await stream.send_all(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(data)}\r\n"
                              f"\r\n".encode() + data)
        await forwarder.slow_started.wait()
        started = trio.current_time()
        received = b""
        while b": ping" not in received:
            received += await stream.receive_some(65536)
        assert trio.current_time() - started == pytest.approx(PING_INTERVAL, abs=0.1)
        assert received.startswith(b"HTTP/1.1 200 ") and b"content-type: text/event-stream" in received
        await stream.aclose()  # the client goes: the request is cancelled
        await forwarder.slow_cancelled.wait()
        assert served(edge) == 1


class GatedForwarder(FakeForwarder):
    """``gated`` waits until :attr:`gate` is set, then answers like ``echo``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gated = trio.Event()

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        if params.get("name") == "gated":
            self.gated.set()
            await self.gate.wait()
            params = {**params, "name": "echo"}
        return await super().forward(method, params, call)


async def test_a_legacy_session_is_held_open_while_a_request_of_it_runs_here(
        autojump_clock: trio.testing.MockClock) -> None:
    """The SDK closes a legacy session idle for 30 minutes; a request served here keeps it open, as one
    served by the SDK does, and its countdown starts again when it ends."""
    forwarder = GatedForwarder()
    forwarder.catalog["tools"].append({"name": "gated", "inputSchema": {"type": "object"}})
    async with running_edge(forwarder) as (edge, url), httpx2.AsyncClient(timeout=None) as http:
        headers = await legacy_session(http, url)
        session = headers["Mcp-Session-Id"]
        manager = edge.server.session_manager
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "gated", "arguments": {}}}
        answers: list[Any] = []

        async def call_gated() -> None:
            answers.append(await http.post(url, content=json.dumps(call), headers=headers))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_gated)
            await forwarder.gated.wait()
            await trio.sleep(45 * 60)  # longer than the SDK's idle timeout (30 minutes)
            assert session in manager._server_instances
            forwarder.gate.set()
        # an SSE stream (as the SDK answers legacy requests): its priming event, then pings while silent
        answer = answers[0].text
        assert answer.startswith("id: ") and "\r\n\r\n: ping\r\n" in answer
        last = json.loads([line for line in answer.splitlines() if line.startswith("data: ")][-1][6:])
        assert last["result"]["structuredContent"] == ECHO_RESULT["structuredContent"]
        assert served(edge) == 1
        await trio.sleep(31 * 60)  # now idle: the session ends
        assert session not in manager._server_instances


async def test_mcp_param_headers_are_checked_against_the_schema() -> None:
    """A tool whose schema declares an ``Mcp-Param-*`` header: a request whose header disagrees with its
    argument is the SDK's to refuse; one that agrees is served here (the schema's reading is cached)."""
    forwarder = FakeForwarder()
    schema = {"type": "object", "properties": {"text": {"type": "string", "x-mcp-header": "Text"}}}
    forwarder.catalog["tools"][0]["inputSchema"] = schema
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), httpx2.AsyncClient() as http:
            body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}}, "echo")
            wrong = await http.post(url, content=json.dumps(body), headers=headers | {"Mcp-Param-Text": "y"})
            assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, HEADER_MISMATCH)
            missing = await http.post(url, content=json.dumps(body), headers=headers)
            assert missing.json()["error"]["code"] == HEADER_MISMATCH
            assert served(edge) == 0
            for _ in range(2):
                right = await http.post(url, content=json.dumps(body), headers=headers | {"Mcp-Param-Text": "x"})
                assert right.json()["result"]["structuredContent"] == ECHO_RESULT["structuredContent"]
            assert served(edge) == 2
            wrong = await http.post(url, content=json.dumps(body), headers=headers | {"Mcp-Param-Text": "z"})
            assert wrong.status_code == 400 and served(edge) == 2


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_under_another_asgi_server_the_fast_path_watches_with_a_task(mode: str) -> None:
    """``MCPEdge.asgi_app`` embedded in another ASGI server (hypercorn): without the edge server's
    ``fednode.watch``, the fast path watches for the client leaving with a task of its own."""
    forwarder = FakeForwarder()
    edge = MCPEdge(forwarder, name="edge-test", version="9.9.9")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_app, edge.asgi_app(host="127.0.0.1"))
            url = f"http://127.0.0.1:{port}/mcp"
            async with client(url, mode) as c:
                called = dump(await c.call_tool("echo", {"text": "x"}))
                assert called["structuredContent"] == ECHO_RESULT["structuredContent"]
                assert served(edge) >= 1
                await cancel_a_slow_call(c, forwarder)
            nursery.cancel_scope.cancel()


async def test_answers_nobody_asked_for_are_left_to_the_sdk() -> None:
    """A POSTed JSON-RPC response the fast path did not ask for (any id, even one that is not a string)
    goes to the SDK, which acknowledges or refuses it as before; nothing is delivered or fails here."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), httpx2.AsyncClient() as http:
            headers = await legacy_session(http, url, initialized=False)
            for answer_id in ([1], {"a": 1}, "fednode-1", 7):
                answer = {"jsonrpc": "2.0", "id": answer_id, "result": {}}
                response = await http.post(url, content=json.dumps(answer), headers=headers)
                assert response.status_code in (202, 400), response.text
            assert edge.fast._asks == {} and served(edge) == 0


async def test_a_legacy_answer_is_an_sse_stream_a_client_can_replay() -> None:
    """As the SDK answers a legacy request: SSE, a priming event first, every event kept in the event
    store under the request's stream, so ``GET`` with ``Last-Event-ID`` replays the answer."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), httpx2.AsyncClient() as http:
            headers = await legacy_session(http, url)
            session = headers["Mcp-Session-Id"]
            call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            answer = await http.post(url, content=json.dumps(call), headers=headers)
            assert served(edge) == 1
            assert answer.headers["content-type"] == "text/event-stream"
            assert answer.headers["mcp-session-id"] == session
            events = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                      for block in answer.text.split("\r\n\r\n") if block]
            assert "id" in events[0] and events[0]["retry"] == "1000"  # the priming event (empty data)
            assert "data: \r\n" in answer.text.split("\r\n\r\n")[0] + "\r\n"
            assert json.loads(events[-1]["data"])["result"]["structuredContent"] == ECHO_RESULT["structuredContent"]
            replayed = ""
            async with http.stream("GET", url, headers=headers | {"Accept": "text/event-stream",
                                                                   "Last-Event-ID": events[0]["id"]}) as stream:
                async for chunk in stream.aiter_text():
                    replayed += chunk
                    if events[-1]["id"] in replayed and '"id":5' in replayed:
                        break
            assert json.loads(events[-1]["data"])["id"] == 5
            assert '"id":5' in replayed and events[-1]["id"] in replayed
