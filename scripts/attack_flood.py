#!/usr/bin/env python3
"""Measure a forward flood from one peer against ``fednode run`` processes: the issue's targets.

Layout: a chain node-a - node-b - node-c of ``fednode run`` processes (generated TOML, free ports),
the test fixture attached twice at node-c (``slow`` and ``fast``), and "evil", a configured peer of
node-b with valid credentials, played by this script over the peer protocol. A legitimate client
(the official SDK's ``mcp.Client``, 2026-07-28 era) calls ``fast__add`` through node-a every 50 ms.

1. Quiet: ``--calls`` calls, no attack: the client's p95 latency.
2. Flood: evil sends node-b ``--flood`` ``fed/forward`` requests for the slow tool at node-c and
   keeps them coming: each one answered is sent again, a refused one a second later (so the flood
   stays at about ``--flood`` a second at most once node-b refuses it), while the client makes
   ``--calls`` more calls.

Targets (printed as PASS/FAIL; the exit status is 1 if one is missed): during the flood the
client's calls succeed >= 99%, with p95 within 1.5x of the quiet p95 of the same run.

Usage::

    .venv/bin/python scripts/attack_flood.py            # about 30 s
    .venv/bin/python scripts/attack_flood.py --calls 100 --flood 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import trio
from mcp import Client
from mcp.shared.exceptions import MCPError
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

import fednode
from fednode._peers import _wire as wire

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "tests" / "mcp_fixtures" / "test_server.py")
FEDNODE = str(Path(sys.executable).parent / "fednode")
#: A script-only HS512 secret (>= 64 bytes); never a real deployment's.
SECRET = "attack-secret-" + "0123456789abcdef" * 5
SUCCESS_TARGET = 0.99
P95_TARGET = 1.5


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (all bound at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_toml(node_id: str, control: int, data: int, peers: list[tuple[str, int | None]],
              servers: tuple[str, ...] = ()) -> str:
    """A node's configuration: ``peers`` as (id, control port or None), fixture ``servers`` by id."""
    lines = ["[node]", f"id = {json.dumps(node_id)}", f"control = \"ws://{HOST}:{control}\"",
             f"data = \"http://{HOST}:{data}\"", "", "[auth]", f"secret = {json.dumps(SECRET)}", "",
             "[backoff]", 'initial = "0.1s"', 'max = "1s"', ""]
    for peer_id, port in peers:
        lines += ["[[peers]]", f"id = {json.dumps(peer_id)}"]
        if port is not None:
            lines.append(f"control = \"ws://{HOST}:{port}\"")
        lines.append("")
    for server_id in servers:
        lines += ["[[servers]]", f"id = {json.dumps(server_id)}", f"command = {json.dumps(sys.executable)}",
                  f"args = {json.dumps([FIXTURE])}", ""]
    return "\n".join(lines)


def evil_token(audience: str) -> str:
    """A valid link token from "evil" to ``audience``."""
    config = fednode.NodeConfig.from_mapping({"node": {"id": "evil"}, "auth": {"secret": SECRET},
                                              "peers": [{"id": audience}]})
    return fednode.AuthManager("evil", config.auth, {p.id: p for p in config.peers}).create_token(audience)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Evil:
    """The hostile peer: keeps ``size`` forwards for the slow tool outstanding, counts the answers."""

    def __init__(self, ws: WebSocketConnection, size: int) -> None:
        self.ws = ws
        self.size = size
        self.next_id = 0
        self.outstanding = 0
        self.answers: dict[str, int] = {}

    async def send_one(self) -> None:
        self.next_id += 1
        self.outstanding += 1
        params = {"origin": "node-c", "server": "slow", "method": "tools/call", "timeout": 120, "trace": ["evil"],
                  "params": {"name": "slow", "arguments": {"seconds": 120}}}
        await self.ws.send_message(wire.encode(wire.Request(id=self.next_id, method="fed/forward", params=params,
                                                            timeout=120)))

    async def run(self) -> None:
        for _ in range(self.size):
            await self.send_one()
        async with trio.open_nursery() as nursery:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    message = wire.decode(await self.ws.get_message())
                    if isinstance(message, wire.Ping):
                        await self.ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
                    elif isinstance(message, wire.Response | wire.Error):
                        key = "answered" if isinstance(message, wire.Response) else str(message.code)
                        self.answers[key] = self.answers.get(key, 0) + 1
                        self.outstanding -= 1
                        # the flood goes on: at once after an answer, a second after a refusal
                        nursery.start_soon(self.again, 1.0 if isinstance(message, wire.Error) else 0.0)
            nursery.cancel_scope.cancel()

    async def again(self, delay: float) -> None:
        await trio.sleep(delay)
        with contextlib.suppress(ConnectionClosed):
            await self.send_one()


async def calls(client: Client, count: int) -> tuple[list[float], list[str]]:
    """``count`` calls of fast__add, one every 50 ms: latencies of the good ones, and the failures."""
    latencies, failures = [], []
    for i in range(count):
        started = trio.current_time()
        try:
            result = await client.call_tool("fast__add", {"a": i, "b": 1})
            if result.structured_content == {"result": i + 1}:
                latencies.append(trio.current_time() - started)
            else:
                failures.append(f"wrong result {result.structured_content}")
        except MCPError as exc:
            failures.append(f"{exc.error.code} {exc.error.message}")
        await trio.sleep(0.05)
    return latencies, failures


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="attack-flood-") as tmp:
        work = Path(tmp)
        control_a, control_b, control_c, data_a, data_b, data_c = free_ports(6)
        configs = {
            "node-a": node_toml("node-a", control_a, data_a, [("node-b", control_b)]),
            "node-b": node_toml("node-b", control_b, data_b, [("node-a", None), ("node-c", control_c),
                                                              ("evil", None)]),
            "node-c": node_toml("node-c", control_c, data_c, [("node-b", None)], ("slow", "fast")),
        }
        processes = []
        try:
            for name, text in configs.items():
                (work / f"{name}.toml").write_text(text)
                log = (work / f"{name}.log").open("w")
                processes.append(await trio.lowlevel.open_process(
                    [FEDNODE, "run", "--config", str(work / f"{name}.toml"), "--log-level", "warning"],
                    stdout=log, stderr=log, start_new_session=True))
            url = f"http://{HOST}:{data_a}/mcp"
            with trio.fail_after(90):
                while True:
                    with contextlib.suppress(Exception):
                        async with Client(url, mode="2026-07-28", cache=None) as probe:
                            names = {tool.name for tool in (await probe.list_tools()).tools}
                            if {"fast__add", "slow__slow"} <= names:
                                break
                    await trio.sleep(0.2)
            async with Client(url, mode="2026-07-28", cache=None) as client:
                await calls(client, 10)  # warm-up
                quiet, quiet_failures = await calls(client, args.calls)
                headers = [("authorization", f"Bearer {evil_token('node-b')}")]
                async with open_websocket_url(f"ws://{HOST}:{control_b}/", extra_headers=headers) as ws:
                    await ws.send_message(wire.encode(wire.Hello(node="evil")))
                    if not isinstance(wire.decode(await ws.get_message()), wire.Hello):
                        raise SystemExit("node-b did not answer evil's hello")
                    evil = Evil(ws, args.flood)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(evil.run)
                        await trio.sleep(1.0)  # the flood builds up
                        flood, flood_failures = await calls(client, args.calls)
                        nursery.cancel_scope.cancel()
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for process in processes:
                    await process.wait()
            for process in processes:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
    quiet_p95, flood_p95 = percentile(quiet, 0.95), percentile(flood, 0.95) if flood else math.inf
    success = len(flood) / args.calls
    print(f"quiet: {len(quiet)}/{args.calls} calls ok, p50 {percentile(quiet, 0.5) * 1000:.1f} ms, "
          f"p95 {quiet_p95 * 1000:.1f} ms" + (f"; failures {quiet_failures[:3]}" if quiet_failures else ""))
    print(f"flood: {len(flood)}/{args.calls} calls ok ({success:.1%}), p95 {flood_p95 * 1000:.1f} ms "
          f"({flood_p95 / quiet_p95:.2f}x quiet)" + (f"; failures {flood_failures[:3]}" if flood_failures else ""))
    print(f"evil: {evil.next_id} forwards sent, answers by code: {dict(sorted(evil.answers.items()))}")
    met = [("success >= 99%", success >= SUCCESS_TARGET), ("p95 <= 1.5x quiet", flood_p95 <= P95_TARGET * quiet_p95)]
    for what, ok in met:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    return 0 if all(ok for _, ok in met) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="client calls per phase (default 100)")
    parser.add_argument("--flood", type=int, default=300, help="forwards evil keeps outstanding (default 300)")
    sys.exit(trio.run(main, parser.parse_args()))
