"""End to end: the SDK's own client at node A reaches SDK-built servers attached at B and C (chain A-B-C)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

import fednode

from conftest import node_config

FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")
MODES = ["auto", "legacy", "2026-07-28"]


def fixture_server(server_id: str = "fx", *args: str, prefix: str | None = None) -> fednode.ServerConfig:
    return fednode.ServerConfig(id=server_id, command=sys.executable, args=(FIXTURE, *args), prefix=prefix)


def notes_server() -> fednode.ServerConfig:
    return fednode.ServerConfig(id="notes", command=sys.executable, args=("-m", "fednode.examples.notes"))


@asynccontextmanager
async def chain(backoff: dict[str, Any] | None = None, jitter: Any = None, mcp: dict[str, Any] | None = None,
                link: dict[str, Any] | None = None,
                **servers: list[fednode.ServerConfig]) -> AsyncIterator[dict[str, fednode.Node]]:
    """Nodes node-a - node-b - node-c; ``servers["b"]`` are attached at node-b, and so on."""
    sections = {key: value for key, value in (("backoff", backoff), ("mcp", mcp), ("link", link)) if value}
    async with AsyncExitStack() as stack:
        nodes = {i: await stack.enter_async_context(fednode.open_node(node_config(f"node-{i}", **sections),
                                                                      jitter=jitter)) for i in "abc"}
        for left, right in (("a", "b"), ("b", "c")):
            await nodes[right].register_peer(fednode.PeerConfig(id=f"node-{left}"), wait=False)
            await nodes[left].register_peer(fednode.PeerConfig(id=f"node-{right}", control=nodes[right].control_url))
        for where, configs in servers.items():
            for config in configs:
                await nodes[where].add_server(config, timeout=60)
        yield {f"node-{i}": node for i, node in nodes.items()}


async def until_listed(node: fednode.Node, *names: str, timeout: float = 30) -> None:
    await node.federation.wait_for(*names, timeout=timeout)


async def until_started(marker: Path) -> None:
    """Wait until the fixture's ``slow`` tool has started (the call reached the server)."""
    started = trio.Path(f"{marker}.started")
    with trio.fail_after(30):
        while not await started.exists():
            await trio.sleep(0.02)


def dump(model: Any) -> dict[str, Any]:
    result: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    result.pop("_meta", None)  # the serving side stamps its own serverInfo there
    return result


class TestThroughTheChain:
    """What a client gets through node A equals what a direct call to the server returns."""

    @pytest.mark.parametrize("mode", MODES)
    async def test_list_and_call_two_hops_away(self, mode: str) -> None:
        with trio.fail_after(60):
            async with chain(b=[notes_server()], c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__add", "notes__add_note")
                params = StdioServerParameters(command=sys.executable, args=[FIXTURE])
                async with Client(a.mcp_url, mode=mode, cache=None) as client, \
                        Client(params, mode=mode, cache=None) as direct:
                    listed = {t.name: t for t in (await client.list_tools()).tools}
                    assert {"fx__add", "fx__echo", "fx__fail", "notes__add_note", "notes__word_count"} <= set(listed)
                    direct_tools = {t.name: t for t in (await direct.list_tools()).tools}
                    # Only the name changes: description, schemas and annotations pass through.
                    assert dump(listed["fx__add"]) == {**dump(direct_tools["add"]), "name": "fx__add"}

                    via = await client.call_tool("fx__add", {"a": 2, "b": 40})
                    assert dump(via) == dump(await direct.call_tool("add", {"a": 2, "b": 40}))
                    failed = await client.call_tool("fx__fail", {})
                    assert failed.is_error and dump(failed) == dump(await direct.call_tool("fail", {}))
                    noted = await client.call_tool("notes__add_note", {"text": "hello"})
                    assert noted.content[0].text == "note 1 stored"  # type: ignore[union-attr]

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_prompts_and_resources(self, mode: str) -> None:
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__add")
                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    prompts = {p.name for p in (await client.list_prompts()).prompts}
                    assert "fx__greet" in prompts
                    prompt = await client.get_prompt("fx__greet", {"name": "Ada"})
                    assert "Ada" in str(prompt.messages[0].content)
                    resources = {str(r.uri) for r in (await client.list_resources()).resources}
                    assert "test://static" in resources
                    read = await client.read_resource("test://static")
                    assert read.contents and read.contents[0].uri == "test://static"
                    templated = await client.read_resource("test://items/42")
                    assert "42" in str(templated.contents[0])

    async def test_errors_are_clear(self) -> None:
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__add")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("nope__nothing", {})
                    assert info.value.error.code == -32602 and "nope__nothing" in info.value.error.message
                    # The owning node becomes unreachable: a clear error, at once.
                    await nodes["node-b"].remove_peer("node-c")
                    with trio.fail_after(15):  # well below the 30 s heartbeat timeout
                        while "fx__add" in a.federation.entries["tools"]:
                            await trio.sleep(0.02)
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("fx__add", {"a": 1, "b": 2})
                    # withdrawn a moment ago, not a typo: the owning node and server are named
                    error = info.value.error
                    assert error.code == -32050 and "'fx'" in error.message and "'node-c'" in error.message
                    assert isinstance(error.data, dict) and error.data["server"] == "fx"
                    assert error.data["node"] == "node-c" and "since" in error.data


class TestServersAtRuntime:
    """Servers attached and removed at runtime appear and disappear across the federation."""

    async def test_add_and_remove(self) -> None:
        with trio.fail_after(60):
            async with chain() as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await c.add_server(fixture_server("late"), timeout=60)
                await until_listed(a, "late__add")
                await c.remove_server("late")
                with trio.fail_after(30):
                    while "late__add" in a.federation.entries["tools"]:
                        await trio.sleep(0.02)


class TestProgressAndCancellation:
    """Progress travels back across hops; a client's cancellation reaches the server two hops away."""

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_progress_two_hops(self, mode: str) -> None:
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__progress")
                seen: list[tuple[float, float | None, str | None]] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append((progress, total, message))

                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    result = await client.call_tool("fx__progress", {"steps": 4}, progress_callback=on_progress)
                assert not result.is_error
                assert seen == [(float(i), 4.0, f"step {i}") for i in range(1, 5)]

    async def test_cancel_reaches_the_server(self, tmp_path: Path) -> None:
        marker = tmp_path / "marker"
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__slow")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    # The session's own connection to the server opens on first use (a process start).
                    await client.call_tool("fx__add", {"a": 1, "b": 1})
                    # The client gives up once the call is running at the server (a fixed timeout
                    # could expire before the call got there on a busy machine).
                    with trio.CancelScope() as scope:
                        async with trio.open_nursery() as nursery:
                            async def give_up_once_started() -> None:
                                await until_started(marker)
                                scope.cancel()

                            nursery.start_soon(give_up_once_started)
                            await client.call_tool("fx__slow", {"seconds": 30, "marker": str(marker)})
                    assert scope.cancelled_caught
                with trio.fail_after(30):
                    while not marker.exists():
                        await trio.sleep(0.05)
                assert marker.read_text() == "cancelled"


class TestDeadlines:
    """The owning node's per-server timeout decides; a deadline is reported as one, in either era."""

    async def test_server_timeout_longer_than_the_callers_default(self) -> None:
        slow = attrs.evolve(fixture_server(), timeout=20.0)
        with trio.fail_after(60):
            async with chain(mcp={"request_timeout": "0.5s"}, c=[slow]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__slow")
                assert a.federation.best_routes()[("node-c", "fx")][0].timeout == 20.0
                async with Client(a.mcp_url, mode="2026-07-28", cache=None) as client:
                    result = await client.call_tool("fx__slow", {"seconds": 1.5})
                assert not result.is_error

    @pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
    async def test_deadline_at_a_legacy_server_is_a_deadline(self, mode: str) -> None:
        hasty = attrs.evolve(fixture_server("old", "--legacy-only"), timeout=0.5)
        with trio.fail_after(60):
            async with chain(c=[hasty]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "old__slow")
                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("old__slow", {"seconds": 10})
                assert info.value.error.code == -32052, info.value.error


class TestFaults:
    """Servers and nodes that die are noticed fast, reported clearly, and come back."""

    async def test_a_hanging_server_leaves_room_for_the_others(self) -> None:
        """One server's calls hold at most half a link's in-flight requests (max_inflight 4 -> 2)."""
        with trio.fail_after(60):
            async with chain(link={"max_inflight": 4}, b=[fixture_server("slow"), fixture_server("fast")]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "slow__slow", "fast__add")
                hanging = {"name": "slow__slow", "arguments": {"seconds": 30}}
                async with trio.open_nursery() as nursery:
                    for _ in range(2):
                        nursery.start_soon(a.federation.execute, "tools/call", hanging)
                    while a.federation.in_flight < 2:
                        await trio.sleep(0.01)
                    with pytest.raises(fednode.RequestError) as info:
                        await a.federation.execute("tools/call", hanging)
                    assert info.value.code == -32004 and "'slow'" in str(info.value)
                    result = await a.federation.execute("tools/call", {"name": "fast__add",
                                                                       "arguments": {"a": 1, "b": 2}})
                    assert result["structuredContent"] == {"result": 3}
                    nursery.cancel_scope.cancel()

    async def test_killed_server_fails_fast_and_restarts(self) -> None:
        # A fixed 10 s restart delay (no jitter), so the server is surely down when the call arrives,
        # even on a busy machine.
        with trio.fail_after(90):
            async with chain(c=[fixture_server()], backoff={"initial": "10s", "max": "10s"},
                             jitter=lambda cap: cap) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "fx__add")
                upstream = c.servers()["fx"]
                pid = upstream.pid
                assert pid is not None
                # 2026-07-28 clients share the server's main connection (legacy sessions get their own).
                async with Client(a.mcp_url, mode="2026-07-28", cache=None) as client:
                    os.kill(pid, signal.SIGKILL)
                    with trio.fail_after(30):
                        while upstream.state == "up":
                            await trio.sleep(0.01)
                    start = trio.current_time()
                    with pytest.raises(MCPError) as info:
                        await client.call_tool("fx__add", {"a": 1, "b": 1})
                    assert info.value.error.code == -32051 and "down" in info.value.error.message
                    assert trio.current_time() - start < 10  # not held until the restart
                    # The server restarts after the backoff and works again.
                    with trio.fail_after(60):
                        while upstream.state != "up" or upstream.pid == pid:
                            await trio.sleep(0.05)
                    result = await client.call_tool("fx__add", {"a": 1, "b": 1})
                    assert not result.is_error and upstream.restarts == 1

    async def test_a_lost_node_withdraws_its_tools_and_they_return_with_it(self) -> None:
        heartbeat = {"interval": "0.5s", "timeout": "5s"}
        with trio.fail_after(90):
            async with AsyncExitStack() as stack:
                a = await stack.enter_async_context(fednode.open_node(node_config("node-a", heartbeat=heartbeat)))
                b = await stack.enter_async_context(fednode.open_node(node_config("node-b", heartbeat=heartbeat)))
                c_scope = trio.CancelScope()
                c_ready: list[fednode.Node] = []
                gone = trio.Event()

                async def run_c() -> None:
                    with c_scope:
                        async with fednode.open_node(node_config("node-c", heartbeat=heartbeat)) as c:
                            c_ready.append(c)
                            await c.register_peer(fednode.PeerConfig(id="node-b"), wait=False)
                            await b.register_peer(fednode.PeerConfig(id="node-c", control=c.control_url))
                            await c.add_server(fixture_server(), timeout=60)
                            await trio.sleep_forever()
                    gone.set()

                await b.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
                await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_c)
                    await until_listed(a, "fx__add", timeout=60)
                    # node-c goes away for node-b: it drops the link and refuses node-b's redials
                    # (b redials at once, so a node that still accepted would be back before the
                    # withdrawal could be seen, and the test would race).
                    (c,) = c_ready
                    start = trio.current_time()
                    await c.remove_peer("node-b")
                    with trio.fail_after(a.config.heartbeat.timeout + 2):
                        while "fx__add" in a.federation.entries["tools"]:
                            await trio.sleep(0.01)
                    assert trio.current_time() - start < a.config.heartbeat.timeout + 1
                    # ... and the tools return with the node.
                    await c.register_peer(fednode.PeerConfig(id="node-b"), wait=False)
                    await until_listed(a, "fx__add", timeout=60)
                    c_scope.cancel()

    async def test_replica_failover(self) -> None:
        with trio.fail_after(60):
            async with chain(b=[fixture_server()], c=[fixture_server()]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                await a.federation.wait_for("fx__add", timeout=30)
                with trio.fail_after(30):
                    while a.federation.entries["tools"]["fx__add"].origins != ("node-b", "node-c"):
                        await trio.sleep(0.02)
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    assert not (await client.call_tool("fx__add", {"a": 1, "b": 2})).is_error
                    # The nearest replica's server goes away: calls go to the next one.
                    await b.remove_server("fx")
                    result = await client.call_tool("fx__add", {"a": 1, "b": 2})
                    assert not result.is_error
                    assert a.federation.entries["tools"]["fx__add"].origins == ("node-c",)

    async def test_in_flight_request_fails_at_once_when_its_route_dies(self, tmp_path: Path) -> None:
        marker = tmp_path / "slow"
        with trio.fail_after(90):
            async with chain(c=[fixture_server()]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                await until_listed(a, "fx__slow")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    cut: list[float] = []

                    async def cut_once_started() -> None:
                        await until_started(marker)
                        cut.append(trio.current_time())
                        await b.remove_peer("node-a")

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(cut_once_started)
                        with pytest.raises(MCPError) as info:
                            await client.call_tool("fx__slow", {"seconds": 60, "marker": str(marker)})
                        # not the 60 s of the tool, nor the 60 s deadline, nor the 30 s heartbeat timeout
                        assert trio.current_time() - cut[0] < 20
                    assert info.value.error.code == -32050


class TestEras:
    """A client of either era uses a server of the other era."""

    @pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
    async def test_legacy_only_server(self, mode: str) -> None:
        with trio.fail_after(60):
            async with chain(c=[fixture_server("old", "--legacy-only")]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "old__add")
                assert c.servers()["old"].era != "2026-07-28"
                async with Client(a.mcp_url, mode=mode, cache=None) as client:
                    result = await client.call_tool("old__add", {"a": 1, "b": 2})
                    assert not result.is_error and result.structured_content is not None
                    prompt = await client.get_prompt("old__greet", {"name": "Bo"})
                    assert "Bo" in str(prompt.messages[0].content)


class TestCatalogChanges:
    """A server changing its tools at runtime is seen, and announced, at the far end of the chain."""

    async def test_grown_tool_reaches_a_listening_client(self) -> None:
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__grow")
                before = set(a.federation.entries["tools"])
                async with Client(a.mcp_url, mode="2026-07-28", cache=None) as client, \
                        client.listen(tools_list_changed=True) as subscription:
                    await client.call_tool("fx__grow", {})
                    async for event in subscription:
                        assert type(event).__name__ == "ToolsListChanged"
                        break
                    grown = {t.name for t in (await client.list_tools()).tools} - before
                    assert grown and all(name.startswith("fx__") for name in grown)


class TestEmbedding:
    """An SDK server object in the embedding program is attached without a subprocess."""

    async def test_in_process_server(self) -> None:
        from mcp.server.mcpserver import MCPServer

        app = MCPServer("embedded")

        @app.tool()
        def shout(text: str) -> str:
            """Upper-case a text."""
            return text.upper()

        with trio.fail_after(60):
            async with chain() as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await c.add_server(fednode.ServerConfig(id="emb"), server=app, timeout=60)
                assert c.servers()["emb"].pid is None
                await until_listed(a, "emb__shout")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    result = await client.call_tool("emb__shout", {"text": "hi"})
                    assert result.content[0].text == "HI"  # type: ignore[union-attr]


class TestAskingTheClient:
    """A server two hops away asks the client for input; clients of either era answer."""

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_elicitation_and_sampling(self, mode: str) -> None:
        import mcp_types

        conformance = str(Path(__file__).parent / "mcp_fixtures" / "conformance_server.py")
        asked: list[str] = []

        async def on_elicit(context: Any, params: Any) -> Any:
            asked.append(f"elicit: {params.message}")
            return mcp_types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.org"})

        async def on_sample(context: Any, params: Any) -> Any:
            asked.append("sample")
            return mcp_types.CreateMessageResult(role="assistant", model="test-model",
                                                 content=mcp_types.TextContent(type="text", text="forty-two"))

        with trio.fail_after(60):
            async with chain(c=[fednode.ServerConfig(id="conf", command=sys.executable, args=(conformance,))]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "conf__test_elicitation", "conf__test_sampling")
                async with Client(a.mcp_url, mode=mode, cache=None, elicitation_callback=on_elicit,
                                  sampling_callback=on_sample) as client:
                    elicited = await client.call_tool("conf__test_elicitation", {"message": "Who are you?"})
                    assert "action=accept" in elicited.content[0].text  # type: ignore[union-attr]
                    assert "ada@example.org" in elicited.content[0].text  # type: ignore[union-attr]
                    sampled = await client.call_tool("conf__test_sampling", {"prompt": "meaning?"})
                    assert sampled.content[0].text == "LLM response: forty-two"  # type: ignore[union-attr]
                assert asked == ["elicit: Who are you?", "sample"]


    async def test_undeclared_question_is_refused_at_the_server(self) -> None:
        """A legacy client that declared no elicitation is never asked: the server hears "not declared"."""
        with trio.fail_after(60):
            async with chain(c=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__ask")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    try:
                        outcome = str(await client.call_tool("fx__ask", {"question": "Who?"}))
                    except MCPError as exc:
                        outcome = str(exc)
                assert "did not declare the elicitation capability" in outcome, outcome


class TestLegacySessions:
    """A legacy client session has its own log level and log messages at a server two hops away."""

    async def test_a_full_pool_never_closes_a_busy_connection(self, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
        from fednode._mcp import _sessions

        monkeypatch.setattr(_sessions, "MAX_SESSION_UPSTREAMS", 1)
        with trio.fail_after(60):
            async with chain(b=[fixture_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "fx__slow")
                async with Client(a.mcp_url, mode="legacy", cache=None) as first, \
                        Client(a.mcp_url, mode="legacy", cache=None) as second:
                    done: list[bool] = []
                    marker, release = tmp_path / "slow", tmp_path / "release"

                    async def long_call() -> None:
                        # Runs until released, so it is surely in flight while the second session asks.
                        result = await first.call_tool("fx__slow", {"seconds": 60, "marker": str(marker),
                                                                    "release": str(release)})
                        done.append(not result.is_error)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(long_call)
                        await until_started(marker)  # the call is in flight there
                        with pytest.raises(MCPError) as info:
                            await second.call_tool("fx__add", {"a": 1, "b": 2})
                        assert info.value.error.code == -32004 and "busy" in info.value.error.message
                        release.write_text("go")
                    assert done == [True]  # not cut off to make room
                    # Once the first connection is idle, it makes room for the second session.
                    result = await second.call_tool("fx__add", {"a": 1, "b": 2})
                    assert not result.is_error

    @pytest.mark.filterwarnings("ignore:The logging capability is deprecated")  # deprecated in 2026-07-28 only
    async def test_a_log_level_does_not_break_calls_to_a_server_without_logging(self) -> None:
        """What the MCP Inspector does at legacy: setLevel first, then a call to a server without logging."""
        with trio.fail_after(60):
            async with chain(b=[notes_server()]) as nodes:
                a = nodes["node-a"]
                await until_listed(a, "notes__word_count")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    await client.set_logging_level("debug")  # the node has logging: it accepts
                    result = await client.call_tool("notes__word_count", {"text": "three little words"})
                    assert not result.is_error
                    assert result.content[0].text == "3"  # type: ignore[union-attr]
                    await client.set_logging_level("error")  # a change is no more trouble than the first
                    result = await client.call_tool("notes__word_count", {"text": "two words"})
                    assert result.content[0].text == "2"  # type: ignore[union-attr]

    @pytest.mark.filterwarnings("ignore:The logging capability is deprecated")  # deprecated in 2026-07-28 only
    async def test_a_server_refusing_the_log_level_still_serves_the_call(self) -> None:
        with trio.fail_after(60):
            async with chain(b=[fixture_server("fx", "--refuse-log-level")]) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                await until_listed(a, "fx__add")
                async with Client(a.mcp_url, mode="legacy", cache=None) as client:
                    await client.set_logging_level("debug")
                    result = await client.call_tool("fx__add", {"a": 2, "b": 40})
                    assert not result.is_error and result.structured_content == {"result": 42}
                    # It was asked (it declares logging) and refused: the held level says it was tried.
                    (held,) = b.attached.sessions._held.values()
                    assert "logging" in (held.upstream.server_info or {})["capabilities"]
                    assert held.level == "debug"

    @pytest.mark.filterwarnings("ignore:The logging capability is deprecated")  # deprecated in 2026-07-28 only
    async def test_logs_reach_only_their_session(self) -> None:
        conformance = str(Path(__file__).parent / "mcp_fixtures" / "conformance_server.py")
        with trio.fail_after(60):
            async with chain(c=[fednode.ServerConfig(id="conf", command=sys.executable, args=(conformance,))]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "conf__test_tool_with_logging")
                first: list[Any] = []
                second: list[Any] = []

                async def log_first(params: Any) -> None:
                    first.append(params)

                async def log_second(params: Any) -> None:
                    second.append(params)

                async with Client(a.mcp_url, mode="legacy", cache=None, logging_callback=log_first) as one, \
                        Client(a.mcp_url, mode="legacy", cache=None, logging_callback=log_second) as two:
                    await one.set_logging_level("debug")
                    result = await one.call_tool("conf__test_tool_with_logging", {})
                    assert not result.is_error
                    assert len(first) == 3 and second == []  # the other session hears nothing
                    await two.call_tool("conf__test_simple_text", {})
                    assert second == []
                    assert len(c.attached.sessions._held) == 2  # one connection per client session
                with trio.fail_after(30):  # and they close with the client sessions
                    while c.attached.sessions._held:
                        await trio.sleep(0.05)


class TestParkedCalls:
    """A 2026-07-28 client answers a legacy-only server's question: the call is parked across rounds."""

    async def test_modern_client_answers_a_legacy_server(self) -> None:
        import mcp_types

        asked: list[str] = []

        async def on_elicit(context: Any, params: Any) -> Any:
            asked.append(params.message)
            return mcp_types.ElicitResult(action="accept", content={"answer": "forty-two"})

        with trio.fail_after(60):
            async with chain(c=[fixture_server("old", "--legacy-only")]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "old__ask")
                assert c.servers()["old"].era != "2026-07-28"
                async with Client(a.mcp_url, mode="2026-07-28", cache=None, elicitation_callback=on_elicit) as client:
                    result = await client.call_tool("old__ask", {"question": "The answer?"})
                    assert result.content[0].text == 'accept: {"answer": "forty-two"}'  # type: ignore[union-attr]
                    # A client that cannot answer gets a clear error, and nothing stays parked.
                async with Client(a.mcp_url, mode="2026-07-28", cache=None) as mute:
                    with pytest.raises(MCPError, match="did not declare the elicitation capability"):
                        await mute.call_tool("old__ask", {"question": "Anyone?"})
                assert asked == ["The answer?"]
                with trio.fail_after(30):
                    while c.attached.parking._parked:
                        await trio.sleep(0.02)

    async def test_concurrent_questions_each_reach_their_own_client(self) -> None:
        import mcp_types

        both_asked = trio.Event()
        asked: list[str] = []

        def answering(answer: str) -> Any:
            async def on_elicit(context: Any, params: Any) -> Any:
                asked.append(params.message)
                if len(asked) == 2:
                    both_asked.set()
                await both_asked.wait()  # neither answers before both calls wait for input at once
                return mcp_types.ElicitResult(action="accept", content={"answer": answer})
            return on_elicit

        with trio.fail_after(60):
            async with chain(c=[fixture_server("old", "--legacy-only")]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "old__ask")
                results: dict[str, str] = {}
                async with Client(a.mcp_url, mode="2026-07-28", cache=None, elicitation_callback=answering("one")) \
                        as one, Client(a.mcp_url, mode="2026-07-28", cache=None,
                                       elicitation_callback=answering("two")) as two:
                    async def call(name: str, client: Client) -> None:
                        result = await client.call_tool("old__ask", {"question": f"for {name}?"})
                        results[name] = result.content[0].text  # type: ignore[union-attr]

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(call, "one", one)
                        nursery.start_soon(call, "two", two)
                assert sorted(asked) == ["for one?", "for two?"]
                assert results == {"one": 'accept: {"answer": "one"}', "two": 'accept: {"answer": "two"}'}
                # each call had a connection of its own; they stay for reuse, and go with the server
                solos = c.attached.parking.solo_connections("old")
                pids = [solo.pid for solo in solos]
                assert len(solos) == 2 and all(pids)
                await c.remove_server("old")
                assert c.attached.parking.solo_connections("old") == []
                with trio.fail_after(30):
                    while any(_alive(pid) for pid in pids if pid is not None):
                        await trio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # a zombie is as good as gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
