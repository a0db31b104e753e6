"""`fednode run` as a real process: starts, links, and exits 0 on SIGTERM/SIGINT within the grace period."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import fednode

from conftest import SECRET, node_config
from helpers import BlackholeProxy

FEDNODE = str(Path(sys.executable).parent / "fednode")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "node-s.toml"
    path.write_text(
        '[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:0"\nshutdown_grace = "10s"\n'
        '[auth]\nsecret = "${TEST_SECRET}"\n'
        # Long enough that a busy machine never drops the link by accident (nor ends the wait for
        # a blackholed peer's close before the second signal).
        '[heartbeat]\ninterval = "0.5s"\ntimeout = "30s"\n'
        '[[peers]]\nid = "node-t"\n')
    return path


async def read_events(stream: trio.abc.ReceiveStream, events: list[dict[str, object]]) -> None:
    buffer = b""
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            events.append(json.loads(line))  # every stderr line must be a JSON log event


@asynccontextmanager
async def fednode_run(config_path: Path) -> AsyncIterator[tuple[trio.Process, list[dict[str, Any]], str, trio.Nursery]]:
    """`fednode run` as a child process; yields it, its log events (live), its control URL and a nursery."""
    events: list[dict[str, Any]] = []
    process = await trio.lowlevel.open_process(
        [FEDNODE, "run", "--config", str(config_path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(read_events, process.stderr, events)
            while not any(e["event"] == "node.started" for e in events):
                await trio.sleep(0.02)
            control = str(next(e["control"] for e in events if e["event"] == "node.started"))
            yield process, events, control, nursery
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # only the process this test started, by its own handle
            process.kill()
            await process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_links_and_exits_zero_on_signal(tmp_path: Path, signum: int) -> None:
    with trio.fail_after(60):
        async with fednode_run(write_config(tmp_path)) as (process, events, control, _), \
                fednode.open_node(node_config("node-t")) as t:
            await t.register_peer(fednode.PeerConfig(id="node-s", control=control))
            assert (await t.request("node-s", "node/info", timeout=30))["id"] == "node-s"
            start = trio.current_time()
            with structlog.testing.capture_logs() as t_logs:
                process.send_signal(signum)
                status = await process.wait()
                elapsed = trio.current_time() - start
                with trio.fail_after(30):
                    while t.connected_peers():
                        await trio.sleep(0.01)
            assert status == 0
            assert elapsed < 10.0  # the configured shutdown_grace: the peer answered the close
            downs = [e["reason"] for e in t_logs if e["event"] == "link.down"]
            assert downs == ["connection closed (1000: node shutting down)"]
    names = [e["event"] for e in events]
    assert names.count("node.shutdown") == 1 and names[-1] == "node.stopped"
    assert "link.up" in names and "link.down" in names
    assert all(e.get("node") == "node-s" for e in events)
    assert SECRET not in json.dumps(events)


async def test_run_refuses_to_start_when_the_port_is_taken(tmp_path: Path) -> None:
    with trio.fail_after(30):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        path = tmp_path / "busy.toml"
        path.write_text(f'[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:{port}"\n[auth]\nsecret = "{SECRET}"\n')
        result = await trio.run_process([FEDNODE, "run", "--config", str(path)], capture_stdout=True,
                                        capture_stderr=True, check=False)
        await listeners[0].aclose()
    assert result.returncode == 1
    assert f"cannot start node 'node-s' on ws://127.0.0.1:{port}" in result.stderr.decode()


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """While shutdown waits for a peer that no longer answers, a second signal ends the process at once."""
    with trio.fail_after(60):
        async with fednode_run(write_config(tmp_path)) as (process, events, control, nursery):
            proxy = BlackholeProxy(int(control.rsplit(":", 1)[1]))
            await nursery.start(proxy.serve)
            async with fednode.open_node(node_config("node-t")) as t:
                await t.register_peer(fednode.PeerConfig(id="node-s", control=proxy.url))
                proxy.blackhole = True  # node-s's close frame will never be answered
                process.send_signal(signal.SIGTERM)
                while not any(e["event"] == "node.shutdown" for e in events):
                    await trio.sleep(0.02)
                start = trio.current_time()
                process.send_signal(signal.SIGINT)
                status = await process.wait()
                assert trio.current_time() - start < 5.0  # well inside the 10 s grace period
                assert status == 128 + signal.SIGINT
    assert not any(e["event"] == "node.stopped" for e in events)
