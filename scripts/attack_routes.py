#!/usr/bin/env python3
"""Forged routes against ``fednode run`` processes: are they ever used? (issue 12, part 1's target).

Three nodes run as ``fednode run`` subprocesses, a chain node-a - node-b - node-c sharing one
``[auth]`` secret, with the ``notes`` example server attached at node-c. "evil" is a configured
peer of node-a and node-b with a secret of its own (it does not know the chain's). A legitimate
client calls ``notes__word_count`` through node-a every 50 ms: ``--quiet`` seconds first, then
``--attack`` seconds while evil, speaking the peer protocol from this process,

* replays node-a's genuine advertisement of (node-c, notes) back to node-a with the path
  shortened to ``[node-c, evil]`` (node-c's signature kept, evil's own added),
* advertises (node-c, notes) with the path ``[node-c, evil]`` and no proof, and
* advertises it with node-c's part signed with evil's own key,

to node-a and node-b, every 0.5 s, and accepts every ``fed/forward`` it is sent without answering.

Target: forged routes are never used (evil receives no forward; the client's calls all succeed),
and every forged route is counted in ``fednode_routes_refused_total``. Printed as PASS/FAIL.

Usage::

    .venv/bin/python scripts/attack_routes.py              # about 30 s
    .venv/bin/python scripts/attack_routes.py --quiet 3 --attack 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio
from mcp import Client
from trio_websocket import WebSocketConnection, open_websocket_url

sys.path.insert(0, str(Path(__file__).parent))

from bench_mcp import FEDNODE, HOST, SECRET, Proc, free_ports, q, say

import fednode
from fednode._config._signing import Keyring
from fednode._federation._route_proof import Proof, RouteProofs
from fednode._peers import _wire as wire

EVIL_SECRET = "evil-secret-" + "fedcba9876543210" * 5
NOTES = ("node-c", "notes")


def toml(node_id: str, ports: dict[str, tuple[int, int]], peers: list[tuple[str, bool]], *,
         evil: bool, notes: bool) -> str:
    """A node's configuration: ``peers`` as (id, dial it); evil (dials in) with its own secret."""
    control, data = ports[node_id]
    lines = ["[node]", f"id = {q(node_id)}", f"control = {q(f'ws://{HOST}:{control}')}",
             f"data = {q(f'http://{HOST}:{data}')}", 'shutdown_grace = "2s"', "",
             "[auth]", f"secret = {q(SECRET)}", "", "[backoff]", 'initial = "0.1s"', 'max = "1s"', "",
             "[heartbeat]", 'interval = "1s"', 'timeout = "30s"', ""]
    for peer_id, dial in peers:
        lines += ["[[peers]]", f"id = {q(peer_id)}"]
        if dial:
            lines.append(f"control = {q(f'ws://{HOST}:{ports[peer_id][0]}')}")
        lines.append("")
    if evil:
        lines += ["[[peers]]", 'id = "evil"', f"secret = {q(EVIL_SECRET)}", ""]
    if notes:
        lines += ["[[servers]]", 'id = "notes"', f"command = {q(sys.executable)}",
                  'args = ["-m", "fednode.examples.notes"]', ""]
    return "\n".join(lines)


def evil_token(audience: str) -> str:
    config = fednode.NodeConfig.from_mapping({"node": {"id": "evil"}, "auth": {"secret": EVIL_SECRET},
                                              "peers": [{"id": audience}]})
    return fednode.AuthManager("evil", config.auth, {p.id: p for p in config.peers}).create_token(audience)


def forgeries(genuine: dict[str, Any], to: str) -> list[dict[str, Any]]:
    """The three forged (node-c, notes) routes evil sends ``to`` (see the module doc)."""
    auth = fednode.AuthConfig(secrets=(fednode.Secret(EVIL_SECRET),))
    evil = RouteProofs("evil", Keyring("evil", auth=lambda: auth, peer=lambda _p: None, nodes=lambda: ()))
    path = ("node-c", "evil")
    args = (genuine["origin"], genuine["server"], genuine["prefix"], genuine["digest"])
    kept = Proof.from_wire({**genuine["proof"], "sigs": [*genuine["proof"]["sigs"][:1], None]}, 2)
    shortened = evil.attest(*args, kept, path, to)
    own = evil.attest(*args, Proof(kept.version, kept.expires), path[:1], "evil")
    own = evil.attest(*args, own, path, to)
    bare = {k: v for k, v in genuine.items() if k != "proof"} | {"path": list(path)}
    return [bare | {"proof": shortened.to_wire()}, bare, bare | {"proof": own.to_wire()}]


class Evil:
    """The hostile peer: its links to node-a and node-b, what it forged, the forwards it was sent."""

    def __init__(self) -> None:
        self.forwards = 0
        self.sent = 0
        self.genuine: dict[str, Any] | None = None
        self.got_genuine = trio.Event()

    async def link(self, node_id: str, control: int, attack: trio.Event, done: trio.Event) -> None:
        url = f"ws://{HOST}:{control}"
        headers = [(b"authorization", f"Bearer {evil_token(node_id)}".encode())]
        async with open_websocket_url(url, extra_headers=headers, max_message_size=16 * 1024 * 1024) as ws:
            await ws.send_message(wire.encode(wire.Hello(node="evil")))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, ws)
                await attack.wait()
                await self.got_genuine.wait()
                assert self.genuine is not None
                while not done.is_set():
                    routes = forgeries(self.genuine, node_id)
                    frame = {"full": True, "set": routes}
                    await ws.send_message(wire.encode(wire.Notification(method="fed/routes", params=frame)))
                    self.sent += len(routes)
                    with trio.move_on_after(0.5):
                        await done.wait()
                nursery.cancel_scope.cancel()

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            message = wire.decode(await ws.get_message())
            if isinstance(message, wire.Ping):
                await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
            elif isinstance(message, wire.Request) and message.method == "fed/forward":
                self.forwards += 1  # a forged route was used: never answered
            elif isinstance(message, wire.Notification) and message.method == "fed/routes" and self.genuine is None:
                for route in message.params.get("set", []):
                    if (route.get("origin"), route.get("server")) == NOTES and route.get("proof"):
                        self.genuine = route
                        self.got_genuine.set()


async def client_calls(url: str, seconds: float, results: list[tuple[float, bool]]) -> None:
    """Call ``notes__word_count`` every 50 ms for ``seconds``: (latency, ok) per call."""
    async with Client(url, mode="legacy", cache=None) as client:
        with trio.fail_after(60):  # warm-up, not counted: the session, the first list
            await client.call_tool("notes__word_count", {"text": "warm up"})
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            started = trio.current_time()
            try:
                with trio.fail_after(10):
                    result = await client.call_tool("notes__word_count", {"text": "one two three"})
                ok = not result.is_error
            except Exception:
                ok = False
            results.append((trio.current_time() - started, ok))
            await trio.sleep(0.05)


async def get(url: str) -> str:
    """The body of a GET (in a thread: urllib blocks)."""
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())
    return await trio.to_thread.run_sync(fetch)


def refused(metrics: str) -> dict[str, float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith("fednode_routes_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def p95(results: list[tuple[float, bool]]) -> float:
    ordered = sorted(latency for latency, _ok in results)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else float("nan")


async def main(args: argparse.Namespace) -> int:
    ports = dict(zip(("node-a", "node-b", "node-c"), zip(*[iter(free_ports(6))] * 2, strict=True), strict=True))
    with tempfile.TemporaryDirectory(prefix="fednode-attack-") as tmp:
        folder = Path(tmp)
        configs = {
            "node-a": toml("node-a", ports, [("node-b", True)], evil=True, notes=False),
            "node-b": toml("node-b", ports, [("node-a", False), ("node-c", True)], evil=True, notes=False),
            "node-c": toml("node-c", ports, [("node-b", False)], evil=False, notes=True),
        }
        procs = []
        for node_id, text in configs.items():
            (folder / f"{node_id}.toml").write_text(text)
            procs.append(Proc(node_id, [FEDNODE, "run", "--config", str(folder / f"{node_id}.toml"),
                                        "--log-level", "warning"], folder))
        try:
            for proc in procs:
                await proc.start()
            for proc, (_control, data) in zip(procs, ports.values(), strict=True):
                await proc.wait_port(data, 60)
            a_url = f"http://{HOST}:{ports['node-a'][1]}"
            with trio.fail_after(60):  # notes reaches node-a through node-b
                for _ in range(600):  # bounded; polled: this process is not the node's
                    status = json.loads(await get(f"{a_url}/status"))
                    if status["routes"]["by_origin"].get("node-c"):
                        break
                    await trio.sleep(0.1)
            evil = Evil()
            attack, done = trio.Event(), trio.Event()
            quiet: list[tuple[float, bool]] = []
            attacked: list[tuple[float, bool]] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(evil.link, "node-a", ports["node-a"][0], attack, done)
                nursery.start_soon(evil.link, "node-b", ports["node-b"][0], attack, done)
                say(f"quiet: {args.quiet:g} s of calls through node-a")
                await client_calls(f"{a_url}/mcp", args.quiet, quiet)
                say(f"attack: {args.attack:g} s of calls while evil sends forged routes to node-a and node-b")
                attack.set()
                await client_calls(f"{a_url}/mcp", args.attack, attacked)
                done.set()
            counts = {node_id: refused(await get(f"http://{HOST}:{ports[node_id][1]}/metrics"))
                      for node_id in ("node-a", "node-b")}
        finally:
            for proc in procs:
                await proc.stop()
    ok_rate = sum(ok for _latency, ok in attacked) / max(1, len(attacked))
    say(f"quiet:  {len(quiet)} calls, {sum(ok for _l, ok in quiet)} ok, p95 {p95(quiet) * 1000:.1f} ms")
    say(f"attack: {len(attacked)} calls, {sum(ok for _l, ok in attacked)} ok ({ok_rate:.1%}), "
        f"p95 {p95(attacked) * 1000:.1f} ms")
    say(f"evil sent {evil.sent} forged routes; forwards it was sent: {evil.forwards}")
    for node_id, found in counts.items():
        say(f"{node_id} fednode_routes_refused_total: {found}")
    passed = evil.forwards == 0 and ok_rate == 1.0 and all(sum(found.values()) > 0 for found in counts.values())
    say(f"target: forged routes never used (no forward to evil, every call ok, refusals counted): "
        f"{'PASS' if passed else 'FAIL'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of calls before the attack")
    parser.add_argument("--attack", type=float, default=15.0, help="seconds of calls during the attack")
    started = time.monotonic()
    trio.run(main, parser.parse_args())
    say(f"({time.monotonic() - started:.0f} s)")
