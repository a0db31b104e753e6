"""Attacks on what a node spends for others: a peer flooding route updates, and remote clients that would
make a node start a server process each.

Each test runs the attack with real nodes on 127.0.0.1 (and real stdio servers where processes are
counted), while legitimate traffic goes on, and checks what the attacked nodes hold afterwards.
"""

from __future__ import annotations

import json
import os
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError
from test_mcp_chain import FIXTURE, chain, fixture_server, notes_server, until_listed
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode._peers import _wire as wire

from helpers import raw_peer, signed


def server_processes(script: str) -> list[int]:
    """The live child processes of this test process running ``script`` (zombies do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and script.encode() in args:
            found.append(int(entry))
    return found


class TestRemoteSessionsCannotAmplify:
    """Legacy client sessions far away make the owning node open at most max_connections to a server."""

    async def test_many_remote_sessions_share_a_bounded_number_of_processes(self) -> None:
        sessions = 20  # well over the default max_connections (8), and over any one peer's half (4)
        with trio.fail_after(120):
            async with chain(c=[fixture_server()]) as nodes:
                a, c = nodes["node-a"], nodes["node-c"]
                await until_listed(a, "fx__add")
                fx = c.servers()["fx"]
                # Any left by an earlier test (still exiting) are not node-c's.
                stale = set(server_processes(FIXTURE)) - {fx.pid}

                def running() -> set[int]:
                    return set(server_processes(FIXTURE)) - stale

                peak = {"processes": 0, "through_b": 0}
                results: list[int] = []

                async def sample(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    task_status.started()
                    while True:  # cancelled below
                        peak["processes"] = max(peak["processes"], len(running()))
                        peak["through_b"] = max(peak["through_b"], fx.slots.held_by("node-b"))
                        await trio.sleep(0.01)

                async def call(client: Client, i: int) -> None:
                    result = await client.call_tool("fx__add", {"a": i, "b": 1})
                    assert not result.is_error
                    results.append(result.structured_content["result"])  # type: ignore[index]

                async with trio.open_nursery() as watch:
                    await watch.start(sample)
                    async with AsyncExitStack() as stack:
                        clients = [await stack.enter_async_context(Client(a.mcp_url, mode="legacy", cache=None))
                                   for _ in range(sessions)]
                        async with trio.open_nursery() as calls:
                            for i, client in enumerate(clients):
                                calls.start_soon(call, client, i)
                        # Every session still open: what they made node-c start is still there.
                        peak["processes"] = max(peak["processes"], len(running()))
                    watch.cancel_scope.cancel()
                assert sorted(results) == [i + 1 for i in range(sessions)]  # every call succeeded
                # The shared connection and at most half of max_connections for callers through node-b.
                assert 2 <= peak["processes"] <= 1 + 4
                assert peak["through_b"] == 4
                # Once the sessions end, their connections close and their slots are free again.
                with trio.fail_after(60):
                    while running() != {fx.pid} or fx.slots.in_use:
                        await trio.sleep(0.05)


# -- a route flood -------------------------------------------------------------------------------------

FLOOD_FRAMES = 40
ROUTES_PER_FRAME = 8
LIMIT_ROUTES = 64
LIMIT_BYTES = 2 * 1024 * 1024


def flood_frame(number: int) -> dict[str, Any]:
    """One ``fed/routes`` frame from evil: new servers with large catalogs (about 250 KB in all)."""
    routes = []
    for i in range(ROUTES_PER_FRAME):
        catalog = {"tools": [{"name": f"t{j}", "description": f"{number}-{j}-" + "x" * 1000,
                              "inputSchema": {"type": "object"}} for j in range(30)]}
        # Signed: evil is a genuine origin of its own servers (its credentials are valid).
        routes.append(signed({"origin": "evil", "server": f"x{number}-{i}", "prefix": f"x{number}-{i}",
                              "path": ["evil"], "digest": "", "catalog": catalog}, "node-a"))
    return {"set": routes, "withdraw": [], "full": False, "more": False}


def evil_routes(node: fednode.Node) -> tuple[int, int]:
    """How many routes owned by evil ``node`` holds, and their catalogs' size as JSON."""
    found = [route for table in node.federation.learned.values() for key, route in table.items() if key[0] == "evil"]
    # Packed definitions are JSON already: their lengths (no parsing, this runs every 10 ms).
    return len(found), sum(len(item) if isinstance(item, str) else len(json.dumps(item))
                           for route in found for items in route.catalog.values() for item in items)


async def answer_pings(ws: WebSocketConnection) -> None:
    """Keep evil's link alive (and its receive buffer drained) while it floods."""
    try:
        while True:
            message = wire.decode(await ws.get_message())
            if isinstance(message, wire.Ping):
                await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
    except ConnectionClosed:
        pass


def p95(seconds: list[float]) -> float:
    return sorted(seconds)[max(0, int(len(seconds) * 0.95) - 1)]


class TestRouteFlood:
    """A configured peer flooding large route updates costs the node little, spreads no further than the
    limits allow, and leaves nothing behind once its link goes."""

    async def test_a_burst_of_large_route_updates(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fednode._federation import _federation

        monkeypatch.setattr(_federation, "MAX_ROUTES_PER_PEER", LIMIT_ROUTES)
        monkeypatch.setattr(_federation, "MAX_CATALOG_BYTES_PER_PEER", LIMIT_BYTES)
        with trio.fail_after(180):
            async with chain(b=[notes_server()]) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                await a.register_peer(fednode.PeerConfig(id="evil"), wait=False)
                await until_listed(a, "notes__word_count")
                await until_listed(c, "notes__word_count")
                applied: list[float] = []  # when node-a applied evil's updates
                receive = a.federation.table.receive

                def counting(peer_id: str, policy: Any, advertisement: Any) -> Any:
                    if peer_id == "evil":
                        applied.append(trio.current_time())
                    return receive(peer_id, policy, advertisement)

                monkeypatch.setattr(a.federation.table, "receive", counting)
                calls: list[tuple[bool, float]] = []
                peak = {"a": 0, "a_bytes": 0, "a_pending": 0, "b": 0, "b_bytes": 0, "c": 0}

                async def legitimate(client: Client, *, task_status: trio.TaskStatus[None]) -> None:
                    task_status.started()
                    while True:  # cancelled below
                        start = trio.current_time()
                        try:
                            result = await client.call_tool("notes__word_count", {"text": "three little words"})
                            ok = not result.is_error and result.content[0].text == "3"  # type: ignore[union-attr]
                        except MCPError:
                            ok = False
                        calls.append((ok, trio.current_time() - start))
                        await trio.sleep(0.05)

                async def sample(*, task_status: trio.TaskStatus[None]) -> None:
                    task_status.started()
                    while True:  # cancelled below
                        held = evil_routes(a)
                        pending = a.federation.intake.pending("evil")
                        for name, value in (("a", held[0]), ("a_bytes", held[1]), ("b", evil_routes(b)[0]),
                                            ("b_bytes", evil_routes(b)[1]), ("c", evil_routes(c)[0]),
                                            ("a_pending", pending.size if pending is not None else 0)):
                            peak[name] = max(peak[name], value)
                        await trio.sleep(0.01)

                frames = [wire.encode(wire.Notification(method="fed/routes", params=flood_frame(i)))
                          for i in range(FLOOD_FRAMES)]
                # The last is a small full advertisement: once node-a holds it, it has handled the flood.
                tool = {"name": "m", "inputSchema": {"type": "object"}}
                marker = signed({"origin": "evil", "server": "marker", "prefix": "marker", "path": ["evil"],
                                 "digest": "", "catalog": {"tools": [tool]}}, "node-a")
                frames.append(wire.encode(wire.Notification(method="fed/routes", params={
                    "set": [marker], "withdraw": [], "full": True, "more": False})))
                async with Client(a.mcp_url, cache=None) as client, trio.open_nursery() as nursery:
                    await nursery.start(legitimate, client)
                    await nursery.start(sample)
                    with trio.fail_after(60):
                        while len(calls) < 20:
                            await trio.sleep(0.05)
                    quiet = list(calls)
                    async with raw_peer(a, "evil") as ws:
                        nursery.start_soon(answer_pings, ws)
                        with trio.fail_after(60):
                            while "evil" not in a.connected_peers():
                                await trio.sleep(0.02)
                        flood_started = trio.current_time()
                        for frame in frames:
                            await ws.send_message(frame)
                        with trio.fail_after(60):
                            while set(a.federation.learned.get("evil", {})) != {("evil", "marker")}:
                                await trio.sleep(0.02)
                        handled = trio.current_time() - flood_started
                        with trio.fail_after(60):  # what node-a passes on ends in the same state
                            while {k for k in c.federation.table.best if k[0] == "evil"} != {("evil", "marker")}:
                                await trio.sleep(0.02)
                        during = calls[len(quiet):]
                    # evil's link goes: everything it made the nodes hold goes with it
                    with trio.fail_after(60):
                        while (evil_routes(a)[0] or evil_routes(b)[0] or evil_routes(c)[0]
                               or a.federation.intake.pending("evil") is not None):
                            await trio.sleep(0.02)
                    nursery.cancel_scope.cancel()
                # The flood was applied at most twice a second, coalesced, not frame by frame.
                assert len(applied) <= 2 + 2 * handled, (len(applied), handled)
                # What node-a held and passed on stayed within the per-peer limits (catalog bytes).
                assert peak["a"] <= LIMIT_ROUTES and peak["a_bytes"] <= LIMIT_BYTES
                assert peak["a_pending"] <= LIMIT_BYTES
                assert peak["b"] <= LIMIT_ROUTES and peak["b_bytes"] <= LIMIT_BYTES and peak["c"] <= LIMIT_ROUTES
                assert peak["a"] > 0  # the flood did arrive
                # The legitimate client's calls kept succeeding throughout.
                assert len(during) >= 1 and all(ok for ok, _ in quiet + during), calls
                assert p95([t for _, t in during]) < max(5.0, 3 * p95([t for _, t in quiet]))
                assert "evil" not in a.federation.learned and "x0-0__t0" not in a.federation.entries["tools"]
