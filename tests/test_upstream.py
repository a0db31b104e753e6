"""The driver of one attached MCP server, against real SDK-built servers in subprocesses.

The server is ``tests/mcp_fixtures/test_server.py``; ``--legacy-only`` makes it refuse
``server/discover`` the way a pre-2026 server does, so most tests run once per protocol era.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from fednode._config._config import BackoffConfig, ServerConfig
from fednode._errors import ServerUnavailableError, UpstreamError, UpstreamTimeoutError
from fednode._mcp._upstream import MODERN_ERA, ServerCatalog, UpstreamServer

FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")
FAST_BACKOFF = BackoffConfig(initial=0.05, max=0.5, multiplier=2.0, reset_after=10.0)
ERAS = pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
# roots_only: the node declares roots (and sampling, elicitation), so it sees what such clients see.
FIXTURE_TOOLS = ["roots_only", "add", "echo", "fail", "slow", "progress", "grow", "pid", "meta", "ask",
                 "task_status"]


def fixture_args(*extra: str, legacy: bool = False) -> tuple[str, ...]:
    return (FIXTURE, *extra, *(("--legacy-only",) if legacy else ()))


def stdio_config(*extra: str, legacy: bool = False, server_id: str = "fx",
                 timeout: float | None = None) -> ServerConfig:
    return ServerConfig(id=server_id, command=sys.executable, args=fixture_args(*extra, legacy=legacy),
                        timeout=timeout)


class Catalogs:
    """Records every catalog the driver publishes; lets a test wait for one that matches."""

    def __init__(self) -> None:
        self.seen: list[ServerCatalog] = []
        self._changed = trio.Event()

    def __call__(self, catalog: ServerCatalog) -> None:
        self.seen.append(catalog)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Any) -> ServerCatalog:
        while not (self.seen and predicate(self.seen[-1])):
            await self._changed.wait()
        return self.seen[-1]


@asynccontextmanager
async def running(config: ServerConfig, *, ready: bool = True) -> AsyncIterator[tuple[UpstreamServer, Catalogs]]:
    """Run an UpstreamServer in a nursery (cancelled on exit); by default wait until it is up."""
    catalogs = Catalogs()
    server = UpstreamServer(config, backoff=FAST_BACKOFF, on_catalog=catalogs, jitter=lambda cap: cap)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        if ready:
            await server.wait_ready(60)
        yield server, catalogs
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_fixture(*extra: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """The fixture serving Streamable HTTP on 127.0.0.1 (any free port): its process and URL; killed on exit."""
    process = await trio.lowlevel.open_process([sys.executable, FIXTURE, "--http", "0", *extra],
                                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1024)
            assert chunk, "the HTTP fixture exited"
            line += chunk
        url = line.decode().split()[1]
        assert url.startswith("http://127.0.0.1:")
        yield process, url
    finally:
        process.kill()
        await process.wait()


def names(definitions: tuple[dict[str, Any], ...]) -> list[str]:
    return [d["name"] for d in definitions]


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def assert_gone(pid: int) -> None:
    """The process no longer exists (our own child: reaped, so even a zombie would fail this)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def is_gone(pid: int) -> bool:
    """A process that is not our child is gone once it no longer exists or is a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


async def wait_file(path: Path, timeout: float = 30) -> str:
    """The file's text, once it has some (``timeout``: a safety net)."""
    file = trio.Path(path)
    with trio.fail_after(timeout):
        while not await file.exists() or not await file.read_text():
            await trio.sleep(0.02)
    return await file.read_text()


def started_file(marker: Path) -> Path:
    """Where the fixture's ``slow`` tool says it has started (the call reached the server)."""
    return Path(f"{marker}.started")


async def logged_line(logs: list[dict[str, Any]], prefix: str) -> str:
    """The first stderr line of the server starting with ``prefix``, once it has been logged."""
    with trio.fail_after(30):
        while True:
            for event in logs:
                if event["event"] == "upstream.stderr" and event["line"].startswith(prefix):
                    return str(event["line"])
            await trio.sleep(0.02)


class TestHandshake:
    """Era detection and the catalog."""

    @ERAS
    async def test_era_and_full_catalog(self, legacy: bool) -> None:
        """17 tools over pages of 4 (5 pages) plus a prompt, a resource and a template; both eras."""
        with trio.fail_after(60):
            async with running(stdio_config("--many", "10", legacy=legacy)) as (server, catalogs):
                assert server.state == "up"
                assert server.era == ("2025-11-25" if legacy else MODERN_ERA)
                assert server.server_info is not None
                assert server.server_info["serverInfo"]["name"] == "fixture"
                assert set(server.server_info["capabilities"]) >= {"tools", "prompts", "resources"}
                catalog = server.catalog
                assert names(catalog.tools) == FIXTURE_TOOLS + [f"extra_{i}" for i in range(10)]
                assert names(catalog.prompts) == ["greet"]
                assert [r["uri"] for r in catalog.resources] == ["test://static"]
                assert [t["uriTemplate"] for t in catalog.resource_templates] == ["test://items/{id}"]
                # Raw definitions, exactly as sent (camelCase keys, the output schema included).
                add = catalog.tools[1]
                assert add["inputSchema"]["required"] == ["a", "b"] and "outputSchema" in add
                assert catalogs.seen == [catalog]
                assert server.pid is not None and server.restarts == 0 and server.last_error is None

    @ERAS
    async def test_slow_start_is_not_bound_by_the_request_timeout(self, legacy: bool) -> None:
        """The handshake and each first list page take 0.5 s, five times the server's 0.1 s timeout:
        the server still comes up at the first attempt, and that timeout then bounds forwarded calls."""
        config = stdio_config("--slow-start", "0.5", legacy=legacy, timeout=0.1)
        with trio.fail_after(90):
            async with running(config) as (server, _):
                assert server.era == ("2025-11-25" if legacy else MODERN_ERA)
                assert names(server.catalog.tools) == FIXTURE_TOOLS and server.catalog.prompts
                assert server.restarts == 0 and server.last_error is None
                with pytest.raises(UpstreamTimeoutError) as info:
                    await server.call("tools/call", tool_call("slow", seconds=30))
                assert info.value.timeout == 0.1

    async def test_unavailable_until_up(self) -> None:
        with trio.fail_after(60):
            async with running(stdio_config(), ready=False) as (server, _):
                assert server.state == "starting"
                with pytest.raises(ServerUnavailableError):
                    await server.call("tools/call", tool_call("add", a=1, b=2))
                await server.wait_ready(60)
                assert (await server.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] == {
                    "result": 3}

    async def test_missing_command_backs_off(self) -> None:
        config = ServerConfig(id="nothing", command="fednode-no-such-command-xyz")
        with trio.fail_after(30):
            async with running(config, ready=False) as (server, _):
                while server.restarts < 2:  # two attempts failed, and it keeps trying
                    await trio.sleep(0.01)
                assert server.state in ("backoff", "starting")
                assert server.last_error is not None and "not found" in server.last_error
                with pytest.raises(ServerUnavailableError):
                    await server.call("tools/call", tool_call("add", a=1, b=2))


async def cancel_once_started(call: Any, marker: Path) -> None:
    """Await ``call`` (of the fixture's ``slow`` tool), cancelling it once the server has started it."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            async def cancel_when_started() -> None:
                await wait_file(started_file(marker))
                scope.cancel()

            nursery.start_soon(cancel_when_started)
            await call
    assert scope.cancelled_caught


class TestForwarding:
    """Requests pass through unchanged, errors and progress come back, cancellation reaches the server."""

    @ERAS
    async def test_results_equal_a_direct_sdk_client(self, legacy: bool) -> None:
        requests: list[tuple[str, dict[str, Any]]] = [
            ("tools/call", tool_call("add", a=2, b=3)),
            ("tools/call", tool_call("echo", text="hi")),
            ("tools/call", tool_call("fail")),
            ("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}}),
            ("resources/read", {"uri": "test://static"}),
            ("resources/read", {"uri": "test://items/42"}),
        ]
        with trio.fail_after(90):
            async with running(stdio_config(legacy=legacy)) as (server, _):
                ours = [await server.call(method, params) for method, params in requests]
            params = StdioServerParameters(command=sys.executable, args=list(fixture_args(legacy=legacy)))
            async with Client(params, mode="auto", cache=None) as client:
                direct = [
                    await client.call_tool("add", {"a": 2, "b": 3}),
                    await client.call_tool("echo", {"text": "hi"}),
                    await client.call_tool("fail", {}),
                    await client.get_prompt("greet", {"name": "Ada"}),
                    await client.read_resource("test://static"),
                    await client.read_resource("test://items/42"),
                ]
        for raw, typed in zip(ours, direct, strict=True):
            # Only the fields the server sent: the typed models fill in defaults (resultType, ttlMs, ...).
            assert raw == typed.model_dump(by_alias=True, mode="json", exclude_unset=True)
        add, echo, fail = ours[:3]
        assert add["structuredContent"] == {"result": 5} and add["isError"] is False
        assert fail["isError"] is True and fail["content"][0]["text"] == "it failed"
        assert echo["_meta"]["fixture/echoed"] is True  # unknown _meta keys survive

    @ERAS
    async def test_meta_envelope(self, legacy: bool) -> None:
        """Modern: envelope defaults added, the caller's kept. Legacy: envelope removed. Tokens are ours."""
        version_key, capabilities_key = "io.modelcontextprotocol/protocolVersion", \
            "io.modelcontextprotocol/clientCapabilities"
        with trio.fail_after(60):
            async with running(stdio_config(legacy=legacy)) as (server, _):
                bare = await server.call("tools/call", tool_call("meta"))
                theirs = {"custom/key": 1, "progressToken": "theirs", capabilities_key: {"sampling": {}}}
                given = await server.call("tools/call", {**tool_call("meta"), "_meta": theirs})

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    pass

                tracked = await server.call("tools/call", tool_call("meta"), on_progress=on_progress)
        assert theirs["progressToken"] == "theirs" and len(theirs) == 3  # the caller's dict is not modified
        if legacy:
            assert bare["structuredContent"]["keys"] == []
            assert given["structuredContent"]["keys"] == ["custom/key"]
        else:
            assert bare["structuredContent"]["keys"] == [capabilities_key, version_key]
            assert given["structuredContent"]["keys"] == ["custom/key", capabilities_key, version_key]
            assert given["structuredContent"]["capabilities"] == {"sampling": {}}
        token = tracked["structuredContent"]["progressToken"]
        assert isinstance(token, str) and token.startswith("fednode-")

    @ERAS
    async def test_upstream_errors_pass_through(self, legacy: bool) -> None:
        with trio.fail_after(60):
            async with running(stdio_config(legacy=legacy)) as (server, _):
                with pytest.raises(UpstreamError) as caught:
                    await server.call("tools/call", tool_call("nope"))
                assert (caught.value.code, caught.value.message, caught.value.data) == (
                    -32602, "Unknown tool: nope", {"tool": "nope"})
                with pytest.raises(UpstreamError) as caught:
                    await server.call("resources/read", {"uri": "test://missing"})
                assert caught.value.code == 404 and caught.value.data == {"uri": "test://missing"}
                with pytest.raises(UpstreamError) as caught:
                    await server.call("fednode/no-such-method", {})
                assert caught.value.code == -32601
                assert server.state == "up"

    @ERAS
    async def test_progress_delivered_before_the_result(self, legacy: bool) -> None:
        with trio.fail_after(60):
            async with running(stdio_config(legacy=legacy)) as (server, _):
                for _ in range(3):
                    seen: list[tuple[float, float | None, str | None]] = []

                    async def on_progress(progress: float, total: float | None, message: str | None,
                                          seen: list[tuple[float, float | None, str | None]] = seen) -> None:
                        seen.append((progress, total, message))

                    result = await server.call("tools/call", tool_call("progress", steps=5), on_progress=on_progress)
                    assert result["content"][0]["text"] == "5 steps"
                    assert seen == [(float(i), 5.0, f"step {i}") for i in range(1, 6)]

    @ERAS
    async def test_cancelling_the_caller_cancels_at_the_server(self, legacy: bool, tmp_path: Path) -> None:
        marker = tmp_path / "slow"
        with trio.fail_after(60):
            async with running(stdio_config(legacy=legacy)) as (server, _):
                await cancel_once_started(server.call("tools/call", tool_call("slow", seconds=30, marker=str(marker))),
                                          marker)
                assert await wait_file(marker) == "cancelled"  # not "completed": the 30 s were cut short
                assert (await server.call("tools/call", tool_call("echo", text="still here")))["content"][0][
                    "text"] == "still here"

    async def test_timeout_cancels_at_the_server(self, tmp_path: Path) -> None:
        with trio.fail_after(90):
            async with running(stdio_config(timeout=0.5)) as (server, _):
                assert server.timeout == 0.5
                # The deadline must pass while the server works on the call: on a busy machine the
                # call may not even reach it within 0.5 s, so then try again with a longer deadline.
                for attempt, limit in enumerate((None, 2.0, 8.0, 30.0)):
                    marker = tmp_path / f"slow-{attempt}"
                    with pytest.raises(UpstreamTimeoutError) as info:
                        await server.call("tools/call", tool_call("slow", seconds=60, marker=str(marker)),
                                          timeout=limit)
                    assert info.value.timeout == (limit or 0.5)  # the configured deadline, unless one is given
                    if started_file(marker).exists():
                        break
                assert await wait_file(marker) == "cancelled"
                # An explicit deadline overrides the configured one.
                result = await server.call("tools/call", tool_call("slow", seconds=0.8), timeout=10)
                assert result["content"][0]["text"] == "slept 0.8"

    @ERAS
    async def test_list_changed_is_followed(self, legacy: bool) -> None:
        with trio.fail_after(60):
            async with running(stdio_config(legacy=legacy)) as (server, catalogs):
                assert (await server.call("tools/call", tool_call("grow")))["content"][0]["text"] == "grown_1"
                catalog = await catalogs.wait_for(lambda c: "grown_1" in names(c.tools))
                assert names(catalog.tools) == [*FIXTURE_TOOLS, "grown_1"]
                assert catalog.prompts and catalog.resources  # the other lists were kept
                await server.call("tools/call", tool_call("grow"))
                await catalogs.wait_for(lambda c: "grown_2" in names(c.tools))

    async def test_streamable_http_server(self, tmp_path: Path) -> None:
        """The same over Streamable HTTP (127.0.0.1): era, catalog, calls, progress, list changes, loss."""
        with trio.fail_after(90):
            async with http_fixture() as (process, url), \
                    running(ServerConfig(id="web", url=url)) as (server, catalogs):
                assert server.era == MODERN_ERA and server.pid is None
                assert names(server.catalog.tools) == FIXTURE_TOOLS
                add = await server.call("tools/call", tool_call("add", a=1, b=2))
                assert add["structuredContent"] == {"result": 3}
                seen: list[float] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(progress)

                await server.call("tools/call", tool_call("progress", steps=3), on_progress=on_progress)
                assert seen == [1.0, 2.0, 3.0]
                # HTTP failures are not the server's JSON-RPC errors: the message says whose they are.
                with structlog.testing.capture_logs() as logs:
                    for tool, code in (("http_500", -32603), ("http_html", -32600)):
                        with pytest.raises(UpstreamError) as info:
                            await server.call("tools/call", tool_call(tool))
                        assert info.value.code == code and info.value.message.startswith("Server 'web' (HTTP): ")
                assert {"event": "upstream.http_status", "status": 500, "method": "POST", "server": "web",
                        "content_type": "text/plain", "log_level": "warning"} in logs
                await server.call("tools/call", tool_call("grow"))
                await catalogs.wait_for(lambda c: "grown_1" in names(c.tools))
                marker = tmp_path / "slow"
                await cancel_once_started(
                    server.call("tools/call", tool_call("slow", seconds=30, marker=str(marker))), marker)
                assert await wait_file(marker) == "cancelled"
                process.kill()
                await process.wait()
                with pytest.raises(ServerUnavailableError):
                    await server.call("tools/call", tool_call("add", a=1, b=2))
                while server.state == "up":
                    await trio.sleep(0.02)
                assert server.last_error

    async def test_legacy_http_server_era_probe_is_not_a_warning(self) -> None:
        """A pre-2026 HTTP server refuses the era probe with HTTP 400: expected, so a debug line; the
        server is used in the legacy era (its pings are MCP ``ping`` requests)."""
        with trio.fail_after(90):
            async with http_fixture("--legacy-only") as (_process, url):
                config = ServerConfig(id="old", url=url, ping_interval=0.05, ping_timeout=10.0)
                with structlog.testing.capture_logs() as logs:
                    async with running(config) as (server, _catalogs):
                        assert server.era != MODERN_ERA and names(server.catalog.tools) == FIXTURE_TOOLS
                        assert (await server.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] \
                            == {"result": 3}
                statuses = [e for e in logs if e["event"] == "upstream.http_status"]
                assert statuses and all(e["status"] == 400 and e["log_level"] == "debug" and e["probe"]
                                        for e in statuses)


class TestProcess:
    """Restart after a crash, termination on removal, stderr to the log."""

    @ERAS
    async def test_killed_process_restarts(self, legacy: bool, tmp_path: Path) -> None:
        marker = tmp_path / "slow"
        with trio.fail_after(90):
            async with running(stdio_config(legacy=legacy)) as (server, catalogs):
                old_pid = server.pid
                assert old_pid is not None
                reported = await server.call("tools/call", tool_call("pid"))
                assert reported["content"][0]["text"] == str(old_pid)  # the shim exec'd: same pid
                in_flight: list[BaseException] = []

                async def slow_call() -> None:
                    try:
                        await server.call("tools/call", tool_call("slow", seconds=30, marker=str(marker)))
                    except ServerUnavailableError as exc:
                        in_flight.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(slow_call)
                    await wait_file(started_file(marker))  # the call is in flight at the server
                    os.kill(old_pid, signal.SIGKILL)
                assert len(in_flight) == 1  # the request in flight failed (not after its 30 s)
                assert server.state != "up"
                with pytest.raises(ServerUnavailableError):  # at once: not after the restart
                    await server.call("tools/call", tool_call("add", a=1, b=2))
                published = len(catalogs.seen)
                await server.wait_ready(60)
                assert server.restarts == 1 and server.pid not in (None, old_pid)
                assert server.last_error is not None
                assert len(catalogs.seen) == published + 1 and names(catalogs.seen[-1].tools) == FIXTURE_TOOLS
                assert (await server.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] == {
                    "result": 3}
                assert_gone(old_pid)

    @ERAS
    async def test_a_server_that_stops_reading_is_restarted(self, legacy: bool) -> None:
        """Alive but silent (stdin no longer read): the unanswered ping marks it down at once, the call in
        flight fails, the catalog is withdrawn, and it is restarted with backoff."""
        config = attrs.evolve(stdio_config("--freezable", legacy=legacy), ping_interval=0.3, ping_timeout=3.0)
        with trio.fail_after(60):
            async with running(config) as (server, catalogs):
                old_pid, before = server.pid, server.restarts
                assert old_pid is not None
                started = trio.current_time()
                with structlog.testing.capture_logs() as logs, pytest.raises(ServerUnavailableError):
                    # Without pings this call would wait out its whole deadline.
                    await server.call("tools/call", tool_call("freeze"), timeout=50)
                assert trio.current_time() - started < 40
                assert server.state != "up" and server.catalog == ServerCatalog()
                assert None in catalogs.seen  # withdrawn from the federation
                assert any(e["event"] == "upstream.unresponsive" and e["log_level"] == "warning" for e in logs)
                while server.restarts == before or server.state != "up":
                    await server._state_changed.wait()
                assert server.pid not in (None, old_pid) and "ping" in (server.last_error or "")
                assert names(catalogs.seen[-1].tools) == [*FIXTURE_TOOLS, "freeze"]
                assert (await server.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] == {
                    "result": 3}
                assert_gone(old_pid)  # the frozen process was terminated, not left behind

    async def test_cancelling_run_terminates_the_process(self) -> None:
        with trio.fail_after(60):
            async with running(stdio_config()) as (server, _):
                pid = server.pid
                assert pid is not None
                started = trio.current_time()
            # It exits when its stdin closes (at once, unless the machine is very busy: then the
            # SIGTERM after a 2 s grace period ends it).
            assert trio.current_time() - started < 10
            assert server.state == "stopped" and server.pid is None
            assert_gone(pid)

    async def test_stubborn_process_is_killed(self) -> None:
        """Ignoring stdin's end and SIGTERM only delays the end: SIGKILL follows the grace periods."""
        with trio.fail_after(60):
            async with running(stdio_config("--stubborn")) as (server, _):
                pid = server.pid
                assert pid is not None
                started = trio.current_time()
            assert 3 < trio.current_time() - started < 30  # two grace periods of 2 s, then SIGKILL
            assert_gone(pid)

    async def test_descendants_are_swept(self) -> None:
        """A grandchild left in the server's process group is terminated too."""
        with trio.fail_after(60), structlog.testing.capture_logs() as logs:
            async with running(stdio_config("--spawn-child")):
                grandchild = int((await logged_line(logs, "grandchild ")).split()[1])
                assert not is_gone(grandchild)
            with trio.fail_after(30):
                while not is_gone(grandchild):
                    await trio.sleep(0.02)
            assert any(e["event"] == "upstream.sweep" for e in logs)

    async def test_exit_is_noticed_while_a_descendant_holds_stdout(self) -> None:
        """A server that exits while its child keeps the stdout pipe open is restarted, no call needed."""
        with trio.fail_after(60), structlog.testing.capture_logs() as logs:
            # Not waiting for it to be up: on a busy machine it may exit (after 1 s) before that.
            async with running(stdio_config("--leak-stdout", "--exit-after", "1"), ready=False) as (server, _):
                grandchild = int((await logged_line(logs, "grandchild ")).split()[1])
                first = os.getpgid(grandchild)  # the first instance: its process group leader
                while server.restarts == 0:
                    await trio.sleep(0.05)
                assert server.last_error == "the server process exited"
                assert is_gone(first)
                with trio.fail_after(30):
                    while not is_gone(grandchild):  # swept with the first instance's process group
                        await trio.sleep(0.02)

    async def test_stdout_noise_is_skipped(self) -> None:
        """A line that is not UTF-8 (or not JSON) on stdout is dropped; the server stays usable."""
        with trio.fail_after(60), structlog.testing.capture_logs() as logs:
            async with running(stdio_config("--noise")) as (server, _):
                result = await server.call("tools/call", tool_call("add", a=2, b=3))
                assert result["structuredContent"] == {"result": 5} and server.restarts == 0
        # Logged (within limits), naming the server: one line each, the undecodable and the unparsable.
        bad = [e for e in logs if e["event"] == "upstream.bad_message"]
        assert len(bad) == 2 and all(e["server"] == "fx" for e in bad)

    async def test_stderr_goes_to_the_log(self, capfd: pytest.CaptureFixture[str]) -> None:
        with trio.fail_after(60), structlog.testing.capture_logs() as logs:
            async with running(stdio_config("--name", "chatty", server_id="chatty")):
                await logged_line(logs, "fixture chatty starting")
        stderr_events = [e for e in logs if e["event"] == "upstream.stderr"]
        assert {"event": "upstream.stderr", "server": "chatty", "line": "fixture chatty starting",
                "log_level": "info"} in stderr_events
        assert all(e["server"] == "chatty" for e in stderr_events)
        assert not any("fednode-upstream-pid" in e["line"] for e in stderr_events)
        captured = capfd.readouterr()
        assert "fixture chatty starting" not in captured.out + captured.err


def in_process_fixture(name: str) -> Any:
    """The fixture's server state, to attach in process (so MockClock governs both sides)."""
    sys.path.insert(0, str(Path(FIXTURE).parent))
    try:
        from test_server import Fixture
    finally:
        sys.path.remove(str(Path(FIXTURE).parent))
    return Fixture(name, 0, 100)


class TestFloods:
    """A server flooding its caller costs bounded work and memory (in-process server, MockClock)."""

    async def test_progress_for_a_slow_caller_is_bounded(self, autojump_clock: trio.testing.MockClock) -> None:
        from fednode._mcp._upstream import _PROGRESS_QUEUE

        fixture = in_process_fixture("chatty")
        seen: list[float] = []

        async def slow_reader(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)
            if len(seen) == 1:
                await trio.sleep(60)  # meanwhile the server sends all its 500 steps

        server = UpstreamServer(ServerConfig(id="chatty"), backoff=FAST_BACKOFF, server=fixture.server,
                                on_catalog=lambda c: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await server.wait_ready(15)
            result = await server.call("tools/call", tool_call("progress", steps=500), on_progress=slow_reader,
                                       timeout=120)
            assert result["content"][0]["text"] == "500 steps"
            # The first, then what waited while it was being delivered; the rest were dropped.
            assert len(seen) == 1 + _PROGRESS_QUEUE and seen == sorted(seen)
            nursery.cancel_scope.cancel()

    async def test_list_changed_storm_is_coalesced(self, autojump_clock: trio.testing.MockClock) -> None:
        fixture = in_process_fixture("storm")
        catalogs = Catalogs()
        reads: list[float] = []
        server = UpstreamServer(ServerConfig(id="storm"), backoff=FAST_BACKOFF, server=fixture.server,
                                on_catalog=lambda c: (reads.append(trio.current_time()), catalogs(c)))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await server.wait_ready(15)
            reads.clear()
            started = trio.current_time()
            for _ in range(20):  # 20 announcements within 0.2 s
                await server.call("tools/call", tool_call("grow"))
                await trio.sleep(0.01)
            await catalogs.wait_for(lambda c: "grown_20" in names(c.tools))
            # The first change is read at once; the other 19 together, one gap (1 s) later.
            assert len(reads) == 2
            assert reads[0] - started < 0.05 and reads[1] - reads[0] >= 1.0
            nursery.cancel_scope.cancel()


class TestInProcessPing:
    async def test_in_process_server_stays_up(self, autojump_clock: trio.testing.MockClock) -> None:
        """A server run in this process (on the node's own loop) is not pinged down by short ping settings."""
        fixture = in_process_fixture("embedded")
        server = UpstreamServer(ServerConfig(id="embedded", ping_interval=0.5, ping_timeout=0.1), backoff=FAST_BACKOFF,
                                server=fixture.server, on_catalog=lambda c: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await server.wait_ready(15)
            await trio.sleep(100)
            assert server.state == "up" and server.restarts == 0
            assert (await server.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] == {"result": 3}
            nursery.cancel_scope.cancel()


class TestServerScope:
    """A server's extra connections and parked calls run under its own scope and end when it is removed."""

    async def test_removing_the_server_ends_its_extra_connections(self, autojump_clock: trio.testing.MockClock) -> None:
        fixture = in_process_fixture("scoped")
        server = UpstreamServer(ServerConfig(id="scoped"), backoff=FAST_BACKOFF, server=fixture.server,
                                on_catalog=lambda c: None)
        extra = server.extra_connection()
        ended = trio.Event()

        async def run_extra(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await extra.run(task_status=task_status)
            finally:
                ended.set()

        removal = trio.CancelScope()

        async def run_server(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with removal:
                await server.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(run_server)
            await server.start_extra(run_extra)
            await extra.wait_ready(15)
            assert (await extra.call("tools/call", tool_call("add", a=1, b=2)))["structuredContent"] == {"result": 3}
            removal.cancel()  # the only thing removing the server does
            with trio.fail_after(15):
                await ended.wait()
        assert extra.state == "stopped" and server.state == "stopped"
        with pytest.raises(ServerUnavailableError, match="it is stopped"):
            await server.start_extra(run_extra)

    async def test_a_parked_call_fails_at_once_when_its_server_is_removed(
            self, autojump_clock: trio.testing.MockClock) -> None:
        from fednode._mcp._parking import Parking

        fixture = in_process_fixture("parked")
        server = UpstreamServer(ServerConfig(id="parked"), backoff=FAST_BACKOFF, server=fixture.server,
                                on_catalog=lambda c: None)
        parking = Parking("node-a")
        removal = trio.CancelScope()
        failed: list[tuple[float, BaseException]] = []

        async def park() -> None:
            try:
                await parking.call("parked", server, "tools/call", tool_call("slow", seconds=1000), 3000, None)
            except ServerUnavailableError as exc:
                failed.append((trio.current_time(), exc))

        async def run_server(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with removal:
                await server.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(run_server)
            await server.wait_ready(15)
            nursery.start_soon(park)
            with trio.fail_after(15):
                while not server.busy:  # the call has reached the server
                    await trio.sleep(0.01)
            removed_at = trio.current_time()
            removal.cancel()
        # Not left waiting for its deadline (3000 s) or the server's answer (1000 s).
        ((when, error),) = failed
        assert when == removed_at and "removed during the call" in str(error)
        assert not parking._parked
