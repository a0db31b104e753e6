"""Attacks on what a node spends for others: a peer flooding route updates, and remote clients that would
make a node start a server process each.

Each test runs the attack with real nodes on 127.0.0.1 (and real stdio servers where processes are
counted), while legitimate traffic goes on, and checks what the attacked nodes hold afterwards.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import trio
from mcp import Client
from test_mcp_chain import FIXTURE, chain, fixture_server, until_listed


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
                before = server_processes(FIXTURE)
                assert before == [fx.pid]
                peak = {"processes": 0, "through_b": 0}
                results: list[int] = []

                async def sample(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    task_status.started()
                    while True:  # cancelled below
                        peak["processes"] = max(peak["processes"], len(server_processes(FIXTURE)))
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
                        peak["processes"] = max(peak["processes"], len(server_processes(FIXTURE)))
                    watch.cancel_scope.cancel()
                assert sorted(results) == [i + 1 for i in range(sessions)]  # every call succeeded
                # The shared connection and at most half of max_connections for callers through node-b.
                assert 2 <= peak["processes"] <= 1 + 4
                assert peak["through_b"] == 4
                # Once the sessions end, their connections close and their slots are free again.
                with trio.fail_after(60):
                    while server_processes(FIXTURE) != [fx.pid] or fx.slots.in_use:
                        await trio.sleep(0.05)
