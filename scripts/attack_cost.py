#!/usr/bin/env python3
"""Measure what two attacks on cost do to ``fednode run`` processes: a route flood from a configured peer,
and many remote legacy client sessions.

Layout: a chain A - B - C of ``fednode run`` processes (generated TOML, free ports), the SDK-built
fixture attached at C (stdio) as ``fx``, and a peer ``evil`` configured at A (it dials in, with valid
credentials). A legitimate client at A calls ``fx__add`` (at C, through B) every 50 ms throughout.

1. Route flood: after a quiet phase, evil links to A and sends ``--frames`` ``fed/routes`` frames of
   about 583 KB each over ``--flood-seconds`` (new servers each time), then goes. Printed: the
   legitimate client's success rate and p95 latency, quiet and during the flood; the RSS of each
   node before, and once A no longer lists evil's tools plus ``--settle`` seconds.
2. Remote sessions: ``--sessions`` legacy client sessions are opened at A, each calls ``fx__add``
   once (all at once). Printed: the most ``fx`` processes node C ran (sampled), and how many are left
   once the sessions ended.

Targets (issue 12), printed as PASS/FAIL, never turned into an exit status: during the flood the
legitimate calls succeed >= 99% with p95 within 1.5x of the quiet p95; RSS back within 10 MB of
before; after 80 remote legacy sessions C has <= 8 ``fx`` processes.

Usage::

    .venv/bin/python scripts/attack_cost.py            # about a minute on 2 cores
    .venv/bin/python scripts/attack_cost.py --frames 8 --flood-seconds 5 --sessions 20   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from mcp import Client
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mcp import (
    FEDNODE,
    HOST,
    SECRET,
    Proc,
    fixture_pids,
    free_ports,
    node_toml,
    percentile,
    say,
    sweep_fixtures,
)

import fednode
from fednode._peers import _wire as wire

SUCCESS_TARGET = 0.99
P95_TARGET = 1.5  # flood p95 over quiet p95
RSS_TARGET_MB = 10.0
PROCESS_TARGET = 8


def rss_mb(pid: int) -> float:
    """A process's resident set size in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def token(issuer: str, audience: str) -> str:
    """A link token from ``issuer`` to ``audience`` under the run's shared secret (evil's valid credentials)."""
    config = fednode.NodeConfig.from_mapping({"node": {"id": issuer}, "auth": {"secret": SECRET},
                                              "peers": [{"id": audience}]})
    return fednode.AuthManager(issuer, config.auth, {p.id: p for p in config.peers}).create_token(audience)


def flood_frame(number: int) -> bytes:
    """One ``fed/routes`` frame of about 583 KB: 8 new servers with 70 tools of ~1 KB each."""
    routes = [{"origin": "evil", "server": f"x{number}-{i}", "prefix": f"x{number}-{i}", "path": ["evil"],
               "digest": f"d{number}-{i}",
               "catalog": {"tools": [{"name": f"t{j}", "description": "x" * 960, "inputSchema": {"type": "object"}}
                                     for j in range(70)]}}
              for i in range(8)]
    return wire.encode(wire.Notification(method="fed/routes", params={"set": routes, "withdraw": [], "full": False,
                                                                      "more": False}))


class Legitimate:
    """A client at A calling ``fx__add`` every 50 ms; records (phase, ok, seconds) per call."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.phase = "quiet"
        self.calls: list[tuple[str, bool, float]] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        i = 0
        while True:  # cancelled by the caller
            phase, start = self.phase, trio.current_time()
            try:
                with trio.fail_after(10):
                    result = await self.client.call_tool("fx__add", {"a": i, "b": 1})
                ok = not result.is_error
            except Exception:
                ok = False
            self.calls.append((phase, ok, trio.current_time() - start))
            i += 1
            await trio.sleep(0.05)

    def summary(self, phase: str) -> tuple[int, float, float]:
        """(calls, success rate, p95 seconds) of one phase."""
        rows = [(ok, t) for p, ok, t in self.calls if p == phase]
        if not rows:
            return 0, 0.0, float("nan")
        return len(rows), sum(ok for ok, _ in rows) / len(rows), percentile(sorted(t for _, t in rows), 0.95)


async def evil_link(url: str, frames: int, seconds: float) -> None:
    """Link to A as evil, send the flood at an even pace, then go."""
    headers = [(b"authorization", f"Bearer {token('evil', 'node-a')}".encode())]
    async with open_websocket_url(url, extra_headers=headers, max_message_size=16 * 1024 * 1024) as ws:
        await ws.send_message(wire.encode(wire.Hello(node="evil")))
        wire.decode(await ws.get_message())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_pings, ws)
            for number in range(frames):
                await ws.send_message(flood_frame(number))
                await trio.sleep(seconds / frames)
            nursery.cancel_scope.cancel()


async def answer_pings(ws: WebSocketConnection) -> None:
    try:
        while True:
            message = wire.decode(await ws.get_message())
            if isinstance(message, wire.Ping):
                await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
    except ConnectionClosed:
        pass


async def count_tools(client: Client, prefix: str) -> int:
    return sum(tool.name.startswith(prefix) for tool in (await client.list_tools()).tools)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main(args: argparse.Namespace) -> None:
    ports = free_ports(6)
    control = dict(zip("abc", ports[:3], strict=True))
    data = dict(zip("abc", ports[3:], strict=True))
    with tempfile.TemporaryDirectory(prefix="fednode-attack-") as tmp:
        work = Path(tmp)
        configs = {
            "a": node_toml("node-a", control["a"], data["a"], [("node-b", control["b"]), ("evil", None)], []),
            "b": node_toml("node-b", control["b"], data["b"], [("node-a", None), ("node-c", control["c"])], []),
            "c": node_toml("node-c", control["c"], data["c"], [("node-b", None)], [("fx", "fx")]),
        }
        nodes = {}
        for name, text in configs.items():
            path = work / f"node-{name}.toml"
            path.write_text(text)
            nodes[name] = Proc(f"node-{name}", [FEDNODE, "run", "--config", str(path), "--log-level", "warning"],
                               work)
        try:
            for proc in nodes.values():
                await proc.start()
            for name, proc in nodes.items():
                await proc.wait_port(data[name], timeout=60)
            await flood(args, nodes, control, data)
            await sessions(args, nodes, data)
        finally:
            for proc in nodes.values():
                await proc.stop()
            sweep_fixtures()


async def flood(args: argparse.Namespace, nodes: dict[str, Proc], control: dict[str, int],
                data: dict[str, int]) -> None:
    url = f"http://{HOST}:{data['a']}/mcp"
    async with Client(url, mode="2026-07-28", cache=None) as client:
        with trio.fail_after(60):
            while await count_tools(client, "fx__") == 0:  # noqa: ASYNC110 - another process: polled
                await trio.sleep(0.2)
        legit = Legitimate(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(legit.run)
            await trio.sleep(args.quiet_seconds)
            before = {name: rss_mb(proc.pid) for name, proc in nodes.items()}
            legit.phase = "flood"
            await evil_link(f"ws://{HOST}:{control['a']}", args.frames, args.flood_seconds)
            legit.phase = "after"
            with trio.fail_after(120):
                while await count_tools(client, "x") > 0:  # noqa: ASYNC110 - another process: polled
                    await trio.sleep(0.5)
            await trio.sleep(args.settle)
            after = {name: rss_mb(proc.pid) for name, proc in nodes.items()}
            nursery.cancel_scope.cancel()
    quiet, during = legit.summary("quiet"), legit.summary("flood")
    say(f"route flood: {args.frames} frames of ~583 KB over {args.flood_seconds:g}s from evil, linked to A")
    say(f"  legitimate calls A -> B -> C: quiet {quiet[0]} calls, {quiet[1]:.1%} ok, p95 {quiet[2] * 1000:.1f} ms; "
        f"during {during[0]} calls, {during[1]:.1%} ok, p95 {during[2] * 1000:.1f} ms")
    say(f"  {verdict(during[1] >= SUCCESS_TARGET)} success >= {SUCCESS_TARGET:.0%}; "
        f"{verdict(during[2] <= P95_TARGET * quiet[2])} p95 within {P95_TARGET}x of quiet "
        f"({during[2] / quiet[2]:.2f}x)")
    for name in "abc":
        grew = after[name] - before[name]
        say(f"  node-{name} RSS {before[name]:.1f} MB before, {after[name]:.1f} MB after ({grew:+.1f}): "
            f"{verdict(grew <= RSS_TARGET_MB)} within {RSS_TARGET_MB:g} MB")


async def sessions(args: argparse.Namespace, nodes: dict[str, Proc], data: dict[str, int]) -> None:
    url = f"http://{HOST}:{data['a']}/mcp"
    peak = 0
    ok = 0

    async def sample(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal peak
        task_status.started()
        while True:  # cancelled below
            peak = max(peak, len(fixture_pids("fx")))
            await trio.sleep(0.05)

    async def call(client: Client, i: int) -> None:
        nonlocal ok
        try:
            result = await client.call_tool("fx__add", {"a": i, "b": 1})
            ok += not result.is_error
        except Exception:
            pass

    before = rss_mb(nodes["c"].pid)
    async with trio.open_nursery() as watch:
        await watch.start(sample)
        async with AsyncExitStack() as stack:
            clients: list[Any] = [await stack.enter_async_context(Client(url, mode="legacy", cache=None))
                                  for _ in range(args.sessions)]
            async with trio.open_nursery() as calls:
                for i, client in enumerate(clients):
                    calls.start_soon(call, client, i)
            held = len(fixture_pids("fx"))
        await trio.sleep(args.settle)
        watch.cancel_scope.cancel()
    left = len(fixture_pids("fx"))
    say(f"remote sessions: {args.sessions} legacy sessions at A, each calling fx__add (at C) once")
    say(f"  {ok}/{args.sessions} calls ok; fx processes at C: at most {peak}, {held} while the sessions were open, "
        f"{left} after they ended; C RSS {before:.1f} -> {rss_mb(nodes['c'].pid):.1f} MB")
    say(f"  {verdict(peak <= PROCESS_TARGET)} at most {PROCESS_TARGET} server processes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=32, help="fed/routes frames evil sends (default 32)")
    parser.add_argument("--flood-seconds", type=float, default=20.0, help="over how long (default 20)")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="quiet phase first (default 10)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring after")
    parser.add_argument("--sessions", type=int, default=80, help="remote legacy sessions (default 80)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
