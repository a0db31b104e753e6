"""Operating a node: {data}/status, {data}/metrics, and configuration reload (API and SIGHUP)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx2
import pytest
import trio
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families
from test_cli_run import FEDNODE, read_events
from test_mcp_chain import FIXTURE, fixture_server

import fednode

from conftest import SECRET, mesh, node_config, raw_config
from helpers import token_from


async def get(node: fednode.Node, path: str, token: str | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.get(node.data_url + path, headers=headers)


async def metrics(node: fednode.Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of {data}/metrics, parsed with prometheus-client's own parser."""
    response = await get(node, "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for(predicate: Any, timeout: float = 30) -> None:
    """Wait until ``await predicate()`` holds; ``timeout`` is a safety net."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


class TestStatusAndMetrics:
    async def test_status_shows_peers_servers_routes_and_in_flight(self, tmp_path: Path) -> None:
        async with mesh("node-a", "node-b") as nodes:
            a, b = nodes["node-a"], nodes["node-b"]
            await b.add_server(fixture_server("fx"), timeout=60)
            await a.federation.wait_for("fx__slow", timeout=30)
            status = (await get(a, "/status")).json()
            assert status["node"]["id"] == "node-a" and status["node"]["version"] == fednode.__version__
            assert status["node"]["uptime_s"] >= 0 and status["node"]["reload"] == {"count": 0, "last": None}
            [peer] = status["peers"]
            assert peer["id"] == "node-b" and peer["state"] == "up" and peer["direction"] == "outbound"
            assert peer["reconnects"] == 0 and peer["last_error"] is None and peer["last_seen_s"] < 30
            assert status["routes"] == {"total": 1, "by_origin": {"node-b": 1}, "conflicts": [], "refused": {},
                                        "held_back": {}}
            assert status["servers"] == [] and status["in_flight"] == 0
            b_status = (await get(b, "/status")).json()
            [server] = b_status["servers"]
            assert server["id"] == "fx" and server["state"] == "up" and server["era"] == "2026-07-28"
            assert server["tools"] == len(b.servers()["fx"].catalog.tools) > 0 and server["restarts"] == 0
            assert b_status["routes"]["by_origin"] == {"node-b": 1}

            release = tmp_path / "release"
            async with Client(a.mcp_url, mode="2026-07-28") as client, trio.open_nursery() as nursery:
                # In flight until released, however long the status requests take on a busy machine.
                nursery.start_soon(client.call_tool, "fx__slow", {"seconds": 60, "release": str(release)})

                async def both_busy() -> bool:
                    return ((await get(a, "/status")).json()["in_flight"] == 1
                            and (await get(b, "/status")).json()["in_flight"] == 1)

                await wait_for(both_busy)
                release.write_text("go")
            assert (await get(a, "/status")).json()["in_flight"] == 0

    async def test_metrics_parse_and_follow_the_federation(self) -> None:
        async with mesh("node-a", "node-b") as nodes:
            a, b = nodes["node-a"], nodes["node-b"]
            before = await metrics(a)
            assert sample(before, "fednode_peers", state="up") == 1
            assert sample(before, "fednode_info", node="node-a", version=fednode.__version__) == 1
            assert sample(before, "fednode_catalog_items", kind="tools") == 0
            await b.add_server(fixture_server("fx"), timeout=60)
            await a.federation.wait_for("fx__add", timeout=30)
            async with Client(a.mcp_url, mode="2026-07-28") as client:
                await client.call_tool("fx__add", {"a": 1, "b": 2})
                await client.call_tool("fx__fail", {})
                with contextlib.suppress(Exception):  # the unknown tool's error is not what is checked here
                    await client.call_tool("fx__nope", {})
            after, at_b = await metrics(a), await metrics(b)
            tools = len(a.federation.entries["tools"])
            assert sample(after, "fednode_catalog_items", kind="tools") == tools > 0
            assert sample(after, "fednode_routes", origin="node-b") == 1
            ok = {"source": "client", "method": "tools/call", "outcome": "ok"}
            assert sample(after, "fednode_forwarded_requests_total", **ok) == 1
            assert sample(after, "fednode_forwarded_requests_total", **{**ok, "outcome": "tool_error"}) == 1
            assert sample(after, "fednode_forwarded_requests_total", **{**ok, "outcome": "unknown"}) == 1
            assert sample(after, "fednode_forward_duration_seconds_count", source="client", method="tools/call") == 3
            assert sample(at_b, "fednode_forwarded_requests_total", **{**ok, "source": "peer"}) == 1
            assert sample(at_b, "fednode_servers", state="up") == 1
            assert sample(at_b, "fednode_server_restarts_total", server="fx") == 0
            assert sample(after, "fednode_heartbeat_rtt_seconds_count") >= 1

            # a refused authentication is counted by reason
            upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
            async with httpx2.AsyncClient(timeout=30) as http:
                response = await http.get(a.control_url.replace("ws://", "http://"), headers={
                    "Authorization": f"Bearer {token_from('node-x', 'node-a')}", **upgrade})
            assert response.status_code in (401, 403)
            refused = await metrics(a)
            assert sum(v for (name, _), v in refused.items() if name == "fednode_auth_refused_total") == 1

            await b.remove_server("fx")
            await wait_for(lambda: _no_tools(a))
            assert sample(await metrics(a), "fednode_catalog_items", kind="tools") == 0

    async def test_endpoints_need_a_client_token_when_configured(self) -> None:
        config = node_config("node-a", clients={"tokens": ["client-token-0001"]})
        async with fednode.open_node(config) as node:
            for path in ("/status", "/metrics"):
                assert (await get(node, path)).status_code == 401
                assert (await get(node, path, token="wrong")).status_code == 401
                assert (await get(node, path, token="client-token-0001")).status_code == 200
            assert (await get(node, "/healthz")).status_code == 200
            async with httpx2.AsyncClient(timeout=30) as http:
                response = await http.post(node.data_url + "/status", headers={
                    "Authorization": "Bearer client-token-0001"})
            assert response.status_code == 405  # read-only


async def _no_tools(node: fednode.Node) -> bool:
    return not node.federation.entries["tools"]


class TestReload:
    async def test_reload_adds_a_peer_removes_a_server_and_changes_another(self) -> None:
        async with mesh("node-b", "node-c") as others:
            b, c = others["node-b"], others["node-c"]
            await b.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
            await c.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
            servers = [fixture_server("one"), fixture_server("two", prefix="two")]
            raw = raw_config("node-a", [{"id": "node-b", "control": b.control_url}])
            raw["servers"] = [_raw_server(s) for s in servers]
            async with fednode.open_node(fednode.NodeConfig.from_mapping(raw)) as a:
                await a.wait_connected("node-b", timeout=30)
                await a.federation.wait_for("one__add", "two__add", timeout=60)
                link_b = a.supervisor("node-b").link  # type: ignore[union-attr]
                one_pid, two_upstream = a.servers()["one"].pid, a.servers()["two"]

                raw["peers"].append({"id": "node-c", "control": c.control_url})
                raw["servers"] = [_raw_server(fixture_server("two", prefix="deux"))]
                result = await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert result.ok and result.peers_added == ("node-c",) and result.servers_removed == ("one",)
                assert result.servers_changed == ("two",) and not result.peers_changed
                assert result.summary == "peers +node-c; servers -one; servers ~two"

                await a.wait_connected("node-b", "node-c", timeout=30)
                await a.federation.wait_for("deux__add", timeout=60)
                assert "one__add" not in a.federation.entries["tools"]
                assert "two__add" not in a.federation.entries["tools"]
                assert a.supervisor("node-b").link is link_b  # type: ignore[union-attr]  # unchanged: same link
                assert a.servers()["two"] is not two_upstream and one_pid is not None
                status = (await get(a, "/status")).json()
                assert [p["id"] for p in status["peers"]] == ["node-b", "node-c"]
                assert [s["id"] for s in status["servers"]] == ["two"]
                assert status["node"]["reload"]["count"] == 1
                assert status["node"]["reload"]["last"]["ok"] is True
                assert sample(await metrics(a), "fednode_reloads_total", outcome="ok") == 1

                # a peer removed from the file is disconnected; the same file again changes nothing
                raw["peers"] = [peer for peer in raw["peers"] if peer["id"] != "node-b"]
                result = await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert result.peers_removed == ("node-b",) and result.summary == "peers -node-b"
                assert not a.has_peer("node-b") and a.connected_peers() == ["node-c"]
                with trio.fail_after(30):
                    while b.connected_peers() != ["node-c"]:
                        await trio.sleep(0.05)
                again = await a.reload(fednode.NodeConfig.from_mapping(raw))
                assert again.ok and again.summary == "no changes" and a.connected_peers() == ["node-c"]

    async def test_invalid_reload_leaves_the_node_as_it_was(self, tmp_path: Path) -> None:
        async with mesh("node-a", "node-b") as nodes:
            a = nodes["node-a"]
            config_before = a.config
            bad = tmp_path / "bad.toml"
            bad.write_text('[node]\nid = "node-a"\ncontrol = 12\n[auth]\nsecret = "short"\n')
            result = await a.reload(bad)
            assert not result.ok and result.error is not None and "auth.secret" in result.error
            assert SECRET not in result.error
            other = fednode.NodeConfig.from_mapping(raw_config("node-z"))
            result = await a.reload(other)
            assert not result.ok and "node ids never change" in (result.error or "")
            assert a.config is config_before and a.connected_peers() == ["node-b"]
            status = (await get(a, "/status")).json()
            assert status["node"]["reload"]["count"] == 2 and status["node"]["reload"]["last"]["ok"] is False
            assert sample(await metrics(a), "fednode_reloads_total", outcome="refused") == 2

    async def test_reload_applies_client_tokens_at_once(self) -> None:
        raw = raw_config("node-a")
        async with fednode.open_node(fednode.NodeConfig.from_mapping(raw)) as a:
            assert (await get(a, "/status")).status_code == 200
            raw["clients"] = {"tokens": ["client-token-0002"]}
            result = await a.reload(fednode.NodeConfig.from_mapping(raw))
            assert result.ok and result.summary == "clients changed" and not result.restart_needed
            assert (await get(a, "/status")).status_code == 401
            assert (await get(a, "/status", token="client-token-0002")).status_code == 200
            raw["clients"] = {}
            await a.reload(fednode.NodeConfig.from_mapping(raw))
            assert (await get(a, "/status")).status_code == 200

    async def test_sighup_reloads_fednode_run(self, tmp_path: Path) -> None:
        path = tmp_path / "node-s.toml"
        base = ('[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
                'shutdown_grace = "2s"\n[auth]\nsecret = "${TEST_SECRET}"\n')

        def server(server_id: str, prefix: str) -> str:
            return (f'[[servers]]\nid = "{server_id}"\nprefix = "{prefix}"\ncommand = {json.dumps(sys.executable)}\n'
                    f'args = [{json.dumps(FIXTURE)}]\n')

        path.write_text(base + server("one", "one") + server("two", "two"))
        events: list[dict[str, Any]] = []
        process = await trio.lowlevel.open_process(
            [FEDNODE, "run", "--config", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
        try:
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery, fednode.open_node(node_config("node-t")) as t:
                    await t.register_peer(fednode.PeerConfig(id="node-s"), wait=False)
                    assert process.stderr is not None
                    nursery.start_soon(read_events, process.stderr, events)
                    while not any(e["event"] == "edge.listening" for e in events):
                        await trio.sleep(0.02)
                    url = next(str(e["url"]) for e in events if e["event"] == "edge.listening")
                    status_url = url.removesuffix("/mcp") + "/status"
                    async with httpx2.AsyncClient(timeout=30) as http:
                        async def status() -> dict[str, Any]:
                            return (await http.get(status_url)).json()  # type: ignore[no-any-return]

                        while [s["state"] for s in (await status())["servers"]] != ["up", "up"]:
                            await trio.sleep(0.1)
                        while not (ups := [e for e in events if e["event"] == "upstream.up" and e["server"] == "two"]):
                            await trio.sleep(0.05)  # the log line may come after the status says "up"
                        two_pid = ups[0]["pid"]
                        path.write_text(base + f'[[peers]]\nid = "node-t"\ncontrol = "{t.control_url}"\n'
                                        + server("two", "deux"))
                        process.send_signal(signal.SIGHUP)
                        await t.wait_connected("node-s", timeout=30)
                        await t.federation.wait_for("deux__add", timeout=60)
                        # node-s logs the restarted server, and sees the link up, in its own time.
                        while len([e for e in events if e["event"] == "upstream.up" and e["server"] == "two"]) < 2:
                            await trio.sleep(0.05)
                        while (current := await status())["peers"][0]["state"] != "up":
                            await trio.sleep(0.05)
                        summary = current["node"]["reload"]["last"]["summary"]
                        assert summary == "peers +node-t; servers -one; servers ~two"
                        assert [(p["id"], p["state"]) for p in current["peers"]] == [("node-t", "up")]
                        assert [s["id"] for s in current["servers"]] == ["two"]
                        assert "one__add" not in t.federation.entries["tools"]
                        new_pid = [e["pid"] for e in events if e["event"] == "upstream.up" and e["server"] == "two"][-1]
                        assert new_pid != two_pid  # the changed server was restarted

                        path.write_text("this is not toml")
                        process.send_signal(signal.SIGHUP)
                        while (await status())["node"]["reload"]["count"] < 2:
                            await trio.sleep(0.1)
                        current = await status()
                    assert current["node"]["reload"]["last"]["ok"] is False
                    assert [s["id"] for s in current["servers"]] == ["two"] and t.connected_peers() == ["node-s"]
                    assert any(e["event"] == "node.reloaded" for e in events)
                    assert any(e["event"] == "node.reload_refused" and e["level"] == "error" for e in events)
                    process.send_signal(signal.SIGTERM)
                    assert await process.wait() == 0
                    nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:  # only the process this test started
                process.kill()
                await process.wait()


def _raw_server(config: fednode.ServerConfig) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": config.id, "command": config.command, "args": list(config.args)}
    if config.prefix is not None:
        raw["prefix"] = config.prefix
    return raw


class TestUnresponsiveServer:
    async def test_a_server_that_stops_answering_is_down_everywhere(self) -> None:
        """Alive but no longer reading: marked down in /status and metrics, its names withdrawn, and a
        call of one answered with the error naming the server and its node (here a long backoff keeps
        it down while that is checked)."""
        from fednode._errors import ForwardError

        slow_restart = {"initial": "60s", "max": "60s", "reset_after": "1s"}
        server = attrs.evolve(fixture_server("fx", "--freezable"), ping_interval=0.2, ping_timeout=3.0)
        with trio.fail_after(60):
            async with (fednode.open_node(node_config("node-a")) as a,
                        fednode.open_node(node_config("node-b", backoff=slow_restart), jitter=lambda cap: cap) as b):
                await b.register_peer(fednode.PeerConfig(id="node-a"), wait=False)
                await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
                await b.add_server(server, timeout=20)
                await a.federation.wait_for("fx__freeze", "fx__add")
                with pytest.raises(ForwardError) as info:
                    await a.federation.execute("tools/call", {"name": "fx__freeze", "arguments": {}}, timeout=50)
                assert info.value.code == -32051  # the call in flight failed as soon as the ping went unanswered
                [status] = (await get(b, "/status")).json()["servers"]
                assert status["state"] == "backoff" and "ping" in status["last_error"] and status["tools"] == 0
                assert sample(await metrics(b), "fednode_servers", state="backoff") == 1
                assert sample(await metrics(b), "fednode_servers", state="up") == 0
                with trio.fail_after(10):
                    while "fx__add" in a.federation.entries["tools"]:
                        await trio.sleep(0.02)
                for node, code in ((a, -32050), (b, -32051)):
                    with pytest.raises(ForwardError) as info:
                        await node.federation.execute("tools/call", {"name": "fx__add", "arguments": {}}, timeout=5)
                    assert info.value.code == code and "'fx'" in str(info.value) and "'node-b'" in str(info.value)
                    assert isinstance(info.value.data, dict) and info.value.data["node"] == "node-b"
