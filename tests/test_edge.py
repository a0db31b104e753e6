"""The MCP edge against the official SDK's client, over real HTTP on 127.0.0.1 and over stdio pipes."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import httpx2
import mcp_types
import pytest
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ToolsListChanged

from fednode._errors import EdgeError
from fednode._mcp._edge import PAGE_SIZE, MCPEdge
from fednode._mcp._edge_call import EdgeCall
from fednode._mcp._edge_http import BoundedEventStore
from fednode._mcp._edge_results import decode_cursor, encode_cursor, shape_result

MODES = ["auto", "legacy", "2026-07-28"]
MODERN = "2026-07-28"
SERVER_INFO = mcp_types.SERVER_INFO_META_KEY

ECHO_RESULT: dict[str, Any] = {
    "content": [
        {"type": "text", "text": "hello", "annotations": {"audience": ["user"], "priority": 0.5}},
        {"type": "text", "text": "second", "_meta": {"example.com/part": 2}},
    ],
    "structuredContent": {"answer": 42, "nested": {"list": [1, "two", None]}},
    "isError": False,
    "_meta": {"example.com/trace": "abc-123"},
    "example.com/extra": {"kept": True},
}

PROMPT_RESULT: dict[str, Any] = {
    "description": "a greeting",
    "messages": [{"role": "user", "content": {"type": "text", "text": "Hello, world"}}],
}

RESOURCE_RESULT: dict[str, Any] = {
    "contents": [{"uri": "mem://a", "mimeType": "text/plain", "text": "content of a"}],
}


class FakeForwarder:
    """An in-memory federation: a dict catalog and canned raw results."""

    def __init__(self, extra_tools: int = 0) -> None:
        self.catalog: dict[str, list[dict[str, Any]]] = {
            "tools": [
                {"name": "echo", "description": "canned result",
                 "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
                 "example.com/vendor": {"kept": True}},
                {"name": "progress", "inputSchema": {"type": "object"}},
                {"name": "slow", "inputSchema": {"type": "object"}},
                {"name": "grouped", "inputSchema": {"type": "object"}},
                *({"name": f"bulk-{i:03d}", "inputSchema": {"type": "object"}} for i in range(extra_tools)),
            ],
            "prompts": [{"name": "greet", "arguments": [{"name": "who", "required": False}]}],
            "resources": [{"uri": "mem://a", "name": "a", "mimeType": "text/plain"}],
            "resourceTemplates": [{"uriTemplate": "mem://{key}", "name": "by key"}],
        }
        self.calls: list[tuple[str, dict[str, Any], EdgeCall]] = []
        self.slow_started = trio.Event()
        self.slow_cancelled = trio.Event()

    def list_items(self, kind: str, caller: Any = None) -> list[dict[str, Any]]:
        return self.catalog[kind]

    def tool_input_schema(self, name: str) -> dict[str, Any] | None:
        return next((t["inputSchema"] for t in self.catalog["tools"] if t["name"] == name), None)

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        self.calls.append((method, params, call))
        if method == "tools/call":
            name = params["name"]
            if name == "echo":
                return copy.deepcopy(ECHO_RESULT)
            if name == "progress":
                for step in (1, 2, 3):
                    await call.report_progress(step, 3, f"step {step}")
                return {"content": [{"type": "text", "text": "done"}]}
            if name == "slow":
                self.slow_started.set()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    self.slow_cancelled.set()
                    raise
            if name == "grouped":
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_raise_unreachable)
            raise EdgeError(-32602, f"Unknown tool: {name}", {"tool": name})
        if method == "prompts/get":
            if params["name"] != "greet":
                raise EdgeError(-32602, f"Unknown prompt: {params['name']}")
            return copy.deepcopy(PROMPT_RESULT)
        if method == "resources/read":
            if params["uri"] != "mem://a":
                raise EdgeError(-32002, "Resource not found", {"uri": params["uri"]})
            return copy.deepcopy(RESOURCE_RESULT)
        if method == "completion/complete":
            return {"completion": {"values": ["alpha", "beta"], "total": 2, "hasMore": False}}
        raise AssertionError(f"unexpected method {method}")


async def _raise_unreachable() -> None:
    raise EdgeError(-32001, "peer unreachable", {"peer": "node-b"})


@asynccontextmanager
async def running_edge(forwarder: FakeForwarder, **kwargs: Any) -> AsyncIterator[tuple[MCPEdge, str]]:
    edge = MCPEdge(forwarder, name="edge-test", version="9.9.9", **kwargs)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(edge.serve_http, "127.0.0.1", 0)
        yield edge, f"http://127.0.0.1:{port}/mcp"
        nursery.cancel_scope.cancel()


def client(url: str, mode: str, **kwargs: Any) -> Client:
    return Client(url, mode=mode, cache=None, **kwargs)


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[no-any-return]


def without_server_info(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k != SERVER_INFO}


# -- listing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_lists_and_capabilities(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            assert c.protocol_version == (MODERN if mode != "legacy" else "2025-11-25")
            caps = c.server_capabilities
            if mode == MODERN:  # pinned: the client synthesizes a discover result, it asks nothing
                raw = await c.session.send_discover(MODERN)
                caps = mcp_types.DiscoverResult.model_validate(raw).capabilities
            assert caps.tools is not None and caps.tools.list_changed
            assert caps.prompts is not None and caps.prompts.list_changed
            assert caps.resources is not None and caps.resources.list_changed
            assert caps.completions is not None
            tools = await c.list_tools()
            assert [t.name for t in tools.tools] == ["echo", "progress", "slow", "grouped"]
            assert tools.next_cursor is None
            assert [p.name for p in (await c.list_prompts()).prompts] == ["greet"]
            assert [str(r.uri) for r in (await c.list_resources()).resources] == ["mem://a"]
            templates = (await c.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["mem://{key}"]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_pagination(mode: str) -> None:
    forwarder = FakeForwarder(extra_tools=246)  # 250 tools: pages of 100, 100, 50
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            names: list[str] = []
            pages = 0
            cursor: str | None = None
            while True:
                page = await c.list_tools(cursor=cursor)
                pages += 1
                assert len(page.tools) <= PAGE_SIZE
                names += [t.name for t in page.tools]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages == 3
            assert names == [t["name"] for t in forwarder.catalog["tools"]]
            with pytest.raises(MCPError) as info:
                await c.list_tools(cursor="not-a-cursor")
            assert info.value.code == -32602


async def test_raw_modern_results_pass_through_exactly() -> None:
    """Byte-level check without a client's parsing: raw dicts out, plus only the 2026 envelope."""
    forwarder = FakeForwarder()
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"MCP-Protocol-Version": MODERN, "Accept": "application/json, text/event-stream"}
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), httpx2.AsyncClient() as http:
            async def post(method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
                extra = {"Mcp-Method": method} | ({"Mcp-Name": name} if name else {})
                body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
                response = await http.post(url, json=body, headers=headers | extra)
                assert response.status_code == 200, response.text
                return response.json()  # type: ignore[no-any-return]

            result = (await post("tools/call", {"name": "echo", "arguments": {"text": "x"}}, "echo"))["result"]
            assert result.pop("resultType") == "complete"
            assert result.pop("_meta") == {**ECHO_RESULT["_meta"],
                                           SERVER_INFO: {"name": "edge-test", "version": "9.9.9"}}
            assert result == {k: v for k, v in ECHO_RESULT.items() if k != "_meta"}
            _, params, call = forwarder.calls[-1]
            assert params == {"name": "echo", "arguments": {"text": "x"}, "_meta": meta}
            assert (call.era, call.protocol_version, call.session_key, call.meta) == ("modern", MODERN, None, meta)

            listed = (await post("tools/list", {}))["result"]
            assert listed["tools"] == forwarder.catalog["tools"]  # vendor keys kept
            assert (listed["resultType"], listed["ttlMs"], listed["cacheScope"]) == ("complete", 0, "private")
            read = (await post("resources/read", {"uri": "mem://a"}, "mem://a"))["result"]
            assert read["contents"] == RESOURCE_RESULT["contents"]
            assert (read["resultType"], read["ttlMs"], read["cacheScope"]) == ("complete", 0, "private")


# -- forwarding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_call_tool_returns_the_raw_result(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            result = dump(await c.call_tool("echo", {"text": "hi"}))
            assert result["content"] == ECHO_RESULT["content"]
            assert result["structuredContent"] == ECHO_RESULT["structuredContent"]
            assert result["isError"] is False
            assert without_server_info(result.get("_meta")) == ECHO_RESULT["_meta"]
            method, params, call = forwarder.calls[-1]
            assert method == "tools/call"
            assert (params["name"], params["arguments"]) == ("echo", {"text": "hi"})
            if mode == "legacy":
                assert call.era == "legacy" and call.protocol_version == "2025-11-25"
                assert call.session_key is not None and call.client_info is not None
                assert "resultType" not in result or result["resultType"] == "complete"  # model default only
            else:
                assert call.era == "modern" and call.session_key is None
                assert result["_meta"][SERVER_INFO]["name"] == "edge-test"


@pytest.mark.parametrize("mode", MODES)
async def test_errors_keep_their_code(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            with pytest.raises(MCPError) as info:
                await c.call_tool("nope", {})
            assert (info.value.code, info.value.message, info.value.data) == (
                -32602, "Unknown tool: nope", {"tool": "nope"})
            # Raised inside the forwarder's nursery: arrives as an ExceptionGroup, leaves unwrapped.
            with pytest.raises(MCPError) as info:
                await c.call_tool("grouped", {})
            assert (info.value.code, info.value.data) == (-32001, {"peer": "node-b"})
            with pytest.raises(MCPError) as info:
                await c.read_resource("mem://missing")
            assert info.value.code == -32002


@pytest.mark.parametrize("mode", MODES)
async def test_prompts_resources_completion(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            prompt = dump(await c.get_prompt("greet", {"who": "world"}))
            assert prompt["messages"] == PROMPT_RESULT["messages"]
            assert prompt["description"] == PROMPT_RESULT["description"]
            assert forwarder.calls[-1][1]["arguments"] == {"who": "world"}
            read = dump(await c.read_resource("mem://a"))
            assert read["contents"] == RESOURCE_RESULT["contents"]
            completion = await c.complete(mcp_types.PromptReference(type="ref/prompt", name="greet"),
                                          {"name": "who", "value": "a"})
            assert completion.completion.values == ["alpha", "beta"]
            assert forwarder.calls[-1][0] == "completion/complete"


@pytest.mark.parametrize("mode", MODES)
async def test_progress_reaches_the_client(mode: str) -> None:
    forwarder = FakeForwarder()
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            result = await c.call_tool("progress", {}, progress_callback=on_progress)
            assert dump(result)["content"] == [{"type": "text", "text": "done"}]
            while len(seen) < 3:  # progress callbacks run in their own tasks
                await trio.sleep(0.01)
            assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
            # Without a progress token, report_progress is a quiet no-op.
            await c.call_tool("progress", {})


@pytest.mark.parametrize("mode", MODES)
async def test_client_cancel_cancels_forward(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            await cancel_a_slow_call(c, forwarder)
            # The session still works afterwards.
            assert dump(await c.call_tool("echo", {}))["structuredContent"] == ECHO_RESULT["structuredContent"]


async def cancel_a_slow_call(c: Client, forwarder: FakeForwarder) -> None:
    """Call ``slow``, cancel the call once the forwarder has it, and see the forward cancelled."""
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.call_tool, "slow", {})
            await forwarder.slow_started.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    await forwarder.slow_cancelled.wait()


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_client_timeout_cancels_forward(mode: str) -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), client(url, mode) as c:
            # The client's timeout must expire while the call is being forwarded: on a busy
            # machine it may not even have started within 0.3 s, so then try a longer one.
            for limit in (0.3, 2.0, 8.0):
                forwarder.slow_started, forwarder.slow_cancelled = trio.Event(), trio.Event()
                with pytest.raises(MCPError) as info:
                    await c.call_tool("slow", {}, read_timeout_seconds=limit)
                assert info.value.code == mcp_types.REQUEST_TIMEOUT
                if forwarder.slow_started.is_set():
                    break
            await forwarder.slow_cancelled.wait()


# -- notifications ------------------------------------------------------------------------------


async def test_list_changed_reaches_legacy_client() -> None:
    forwarder = FakeForwarder()
    received: list[str] = []
    arrived = trio.Event()

    async def on_message(message: Any) -> None:
        method = getattr(message, "method", None)
        if isinstance(method, str):
            received.append(method)
            if method == "notifications/tools/list_changed":
                arrived.set()

    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), client(url, "legacy", message_handler=on_message):
            while len(edge.legacy_sessions) != 1:  # notifications/initialized is processed asynchronously
                await trio.sleep(0.01)
            # The client opens its GET stream after the handshake; until then the SDK drops
            # standalone notifications, so repeat until one lands.
            while not arrived.is_set():
                await edge.notify_list_changed(["tools", "bogus"])
                with trio.move_on_after(0.2):
                    await arrived.wait()
            await edge.notify_list_changed(["prompts", "resourceTemplates"])
            while not {"notifications/prompts/list_changed", "notifications/resources/list_changed"} <= set(received):
                await trio.sleep(0.01)
        # The session ended with the client: no longer tracked, and notifying is harmless.
        while edge.legacy_sessions:
            await trio.sleep(0.01)
        await edge.notify_list_changed(["tools"])


async def test_list_changed_reaches_modern_listener() -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url), client(url, MODERN) as c, \
                c.listen(tools_list_changed=True) as subscription:
            await edge.notify_list_changed(["prompts", "tools"])  # prompts: not subscribed, not delivered
            async for event in subscription:
                assert event == ToolsListChanged()
                break


# -- HTTP surface -------------------------------------------------------------------------------


async def test_healthz_and_client_tokens() -> None:
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder, client_tokens=["token-one", "token-two"]) as (_, url):
            base = url.removesuffix("/mcp")
            async with httpx2.AsyncClient() as http:
                health = await http.get(f"{base}/healthz")
                assert (health.status_code, health.text) == (200, "ok")
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic token-one"}):
                    response = await http.post(url, json={}, headers=headers)
                    assert response.status_code == 401
                    assert response.headers["www-authenticate"].startswith("Bearer")
            with pytest.raises(Exception):  # noqa: B017 - the SDK's transport error type is not the point
                async with client(url, "legacy"):
                    pass
            for mode, token in (("legacy", "token-one"), (MODERN, "token-two")):
                http_client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
                async with http_client, Client(streamable_http_client(url, http_client=http_client), mode=mode) as c:
                    assert [t.name for t in (await c.list_tools()).tools][:1] == ["echo"]


async def test_foreign_host_and_origin_rejected() -> None:
    forwarder = FakeForwarder()
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                             "clientInfo": {"name": "raw", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url), httpx2.AsyncClient() as http:
            response = await http.post(url, json=initialize, headers=accept | {"Host": "evil.example:80"})
            assert response.status_code == 421
            response = await http.post(url, json=initialize, headers=accept | {"Origin": "http://evil.example"})
            assert response.status_code == 403
            modern = accept | {"Host": "attacker.test", "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}
            response = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=modern)
            assert response.status_code == 421
            response = await http.post(url, json=initialize, headers=accept)
            assert response.status_code == 200


async def test_serve_http_stops_promptly_when_cancelled() -> None:
    edge = MCPEdge(FakeForwarder(), name="edge-test", version="9.9.9")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(edge.serve_http, "127.0.0.1", 0)
            assert port > 0
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


# -- stdio --------------------------------------------------------------------------------------


def pipe_files() -> dict[str, TextIO]:
    """Two pipes as text files: client -> server (stdin) and server -> client (stdout)."""
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    return {name: open(fd, mode="r" if name.endswith("_r") else "w", encoding="utf-8")
            for name, fd in (("server_in_r", to_server_r), ("client_out_w", to_server_w),
                             ("client_in_r", to_client_r), ("server_out_w", to_client_w))}


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_stdio(mode: str) -> None:
    """serve_stdio on in-process pipes; the client side reuses the SDK's stdio framing."""
    forwarder = FakeForwarder()
    edge = MCPEdge(forwarder, name="edge-test", version="9.9.9")
    files = pipe_files()
    done = trio.Event()
    seen: list[float] = []
    changed = trio.Event()

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changed.set()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def run_server() -> None:
        try:
            await edge.serve_stdio(anyio.wrap_file(files["server_in_r"]), anyio.wrap_file(files["server_out_w"]))
        finally:
            files["server_out_w"].close()  # EOF for the client's reader
            done.set()

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_server)
                transport = stdio_server(anyio.wrap_file(files["client_in_r"]), anyio.wrap_file(files["client_out_w"]))
                async with Client(transport, mode=mode, cache=None, message_handler=on_message) as c:
                    assert [t.name for t in (await c.list_tools()).tools][:2] == ["echo", "progress"]
                    result = dump(await c.call_tool("echo", {}))
                    assert result["structuredContent"] == ECHO_RESULT["structuredContent"]
                    await c.call_tool("progress", {}, progress_callback=on_progress)
                    while len(seen) < 3:
                        await trio.sleep(0.01)
                    with pytest.raises(MCPError) as info:
                        await c.call_tool("nope", {})
                    assert info.value.code == -32602
                    call = forwarder.calls[-1][2]
                    assert call.caller is None  # stdio: the node's own process, no client identity
                    if mode == "legacy":
                        assert call.era == "legacy" and call.session_key is not None
                        assert edge.legacy_sessions == [call.session_key]
                        await edge.notify_list_changed(["tools"])  # rides the pipe
                        await changed.wait()
                    else:
                        assert call.era == "modern" and call.session_key is None
                    files["client_out_w"].close()  # EOF: serve_stdio returns
                    await done.wait()
    finally:
        for file in files.values():
            if not file.closed:
                file.close()
    assert not edge.legacy_sessions


def test_cursor_is_opaque_but_checked() -> None:

    assert decode_cursor("tools", encode_cursor("tools", 200)) == 200
    for bad in ("", "!!", encode_cursor("prompts", 100), json.dumps({"offset": 1}), 5):
        with pytest.raises(MCPError) as info:
            decode_cursor("tools", bad)
        assert info.value.code == -32602


def test_results_are_shaped_for_the_client_era() -> None:
    server = MCPEdge(FakeForwarder(), name="edge-test", version="9.9.9").server
    modern_result = {"content": [], "resultType": "complete", "ttlMs": 5, "x-keep": 1}
    legacy = shape_result(server, "tools/call", "2025-11-25", modern_result)
    assert legacy == {"content": [], "ttlMs": 5, "x-keep": 1}  # tools/call has no ttlMs in any revision
    read = shape_result(server, "resources/read", "2025-06-18",
                         {"contents": [], "resultType": "complete", "ttlMs": 5, "cacheScope": "public"})
    assert read == {"contents": []}
    with pytest.raises(MCPError) as info:
        shape_result(server, "tools/call", "2025-11-25", {"resultType": "input_required", "inputRequests": {}})
    assert info.value.code == -32603
    pending = {"resultType": "input_required", "inputRequests": {}, "requestState": "s"}
    shaped = shape_result(server, "resources/read", MODERN, pending)
    assert "ttlMs" not in shaped and shaped["requestState"] == "s"
    upstream_stamp = {SERVER_INFO: {"name": "upstream", "version": "1"}}
    kept = shape_result(server, "resources/read", MODERN,
                         {"contents": [], "ttlMs": 60000, "cacheScope": "public", "_meta": upstream_stamp})
    assert (kept["ttlMs"], kept["cacheScope"], kept["_meta"]) == (60000, "public", upstream_stamp)


async def test_edge_call_standalone() -> None:
    call = EdgeCall(method="tools/call", protocol_version="2025-06-18", meta={"progressToken": 1})
    assert (call.era, call.session_key, call.meta) == ("legacy", None, {"progressToken": 1})
    await call.report_progress(1, 2, "no reporter: no-op")
    reports: list[tuple[float, float | None, str | None]] = []

    async def reporter(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    call = EdgeCall(method="tools/call", protocol_version=MODERN, progress=reporter)
    await call.report_progress(0.5)
    assert call.era == "modern" and reports == [(0.5, None, None)]
    assert "modern" in repr(call)


def test_tampered_request_state_names_no_node() -> None:
    """Routing reads a requestState's node unverified: anything malformed just routes nowhere special."""
    import base64

    from fednode._federation._local import TOKEN_PREFIX, token_origin

    def state(body: bytes) -> str:
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=") + ".mac"

    assert token_origin(state(b'{"origin": "node-b"}')) == "node-b"
    for body in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b'{"origin": 5}', b"not json", b"[]"):
        assert token_origin(state(body)) is None
    assert token_origin(TOKEN_PREFIX + "%%%") is None and token_origin(None) is None


async def test_event_store_is_bounded_by_count_and_size() -> None:
    import mcp_types


    def note(text: str) -> mcp_types.JSONRPCNotification:
        return mcp_types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": text})

    store = BoundedEventStore(limit=10, max_bytes=10_000)
    ids = [await store.store_event("s1", note("x")) for _ in range(15)]
    assert len(store._events) == 10 and ids[0] not in store._events  # the oldest go first
    big = [await store.store_event("s2", note("y" * 3000)) for _ in range(5)]
    assert store._bytes <= 10_000 and big[-1] in store._events and big[0] not in store._events
    replayed: list[str] = []

    async def collect(event: Any) -> None:
        replayed.append(event.event_id)

    assert await store.replay_events_after(big[-3], collect) == "s2"
    assert replayed == big[-2:]


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_connection_ends_after_a_complete_response(mode: str) -> None:
    """The node closes a `Connection: close` exchange, and arms keep-alive otherwise, in both eras."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (_, url):
            host, port = url.removeprefix("http://").split("/")[0].split(":")
            if mode == MODERN:
                meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
                        "io.modelcontextprotocol/clientCapabilities": {}}
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})
                extra = f"MCP-Protocol-Version: {MODERN}\r\nMcp-Method: tools/list\r\n"
            else:
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}})
                extra = ""
            request = (f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Accept: application/json, text/event-stream\r\n{extra}Connection: close\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(request)
                received = b""
                with trio.fail_after(30):  # without the fix: open until the client leaves
                    while chunk := await stream.receive_some(65536):
                        received += chunk
            assert received.startswith(b"HTTP/1.1 200") and b'"id":1' in received
