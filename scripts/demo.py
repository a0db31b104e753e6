#!/usr/bin/env python3
"""The demo behind ./scripts/demo: a local 3-node federation (node-a <-> node-b <-> node-c).

node-b and node-c run as `fednode run` processes with the example MCP servers "notes" (node-b) and
"clock" (node-c) attached; node-a runs embedded in this Trio program (the library use case).
node-a exchanges peer requests with node-b, then an MCP client at node-a lists the federated tools
and calls one two hops away. Everything shuts down with SIGTERM and every exit status is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio
from mcp import Client

import fednode
from fednode._config._logging import configure_logging

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
LOGS = ROOT / ".demo"
FEDNODE = str(Path(sys.executable).parent / "fednode")


def say(text: str) -> None:
    # Output piped into `head` and closed: keep going, so the nodes still get shut down cleanly.
    with contextlib.suppress(BrokenPipeError):
        print(text, flush=True)


def port_free(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def start_node(name: str) -> subprocess.Popen[bytes]:
    log = (LOGS / f"{name}.log").open("wb")
    return subprocess.Popen([FEDNODE, "run", "--config", str(CONFIGS / f"{name}.toml")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def log_events(name: str) -> list[dict[str, object]]:
    events = []
    for line in (LOGS / f"{name}.log").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            events.append({"event": line})
    return events


def wait_started(processes: dict[str, subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """Wait (bounded) until every process has logged node.started, so node-a's first dial succeeds."""
    deadline = time.monotonic() + timeout
    for name, process in processes.items():
        while not any(e.get("event") == "node.started" for e in log_events(name)):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}; see .demo/{name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {timeout:g} s; see .demo/{name}.log")
            time.sleep(0.05)
        say(f"{name} started (pid {process.pid})")


def stop(name: str, process: subprocess.Popen[bytes]) -> bool:
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        say(f"  {name}: did not stop within 10 s; killed")
        return False
    say(f"  {name}: SIGTERM -> exit status {status} after {time.monotonic() - start:.2f} s")
    return status == 0


async def exchange() -> None:
    config = fednode.load_config(CONFIGS / "node-a.toml")
    async with fednode.open_node(config) as node_a:
        say(f"node-a running in-process, listening on {node_a.control_url}")
        await node_a.wait_connected("node-b", timeout=20)
        status = node_a.peer_states()["node-b"]
        say(f"node-a linked to node-b ({status.direction}, authenticated with HS512 JWTs both ways)")

        started = time.perf_counter()
        reply = await node_a.request("node-b", "echo", {"hello": "from node-a"}, timeout=10)
        say(f"node-a -> node-b echo: {json.dumps(reply)} in {(time.perf_counter() - started) * 1000:.2f} ms")

        # node-b's own view of the federation: linked to node-a and node-c.
        with trio.fail_after(20):
            while True:
                info = await node_a.request("node-b", "node/info", timeout=10)
                if info["peers"] == ["node-a", "node-c"]:
                    break
                await trio.sleep(0.2)
        say(f"node-a -> node-b node/info: {json.dumps(info)}")

        # An MCP client (the official SDK's) at node-a sees every server in the federation.
        await node_a.federation.wait_for("clock__now", "notes__add_note", timeout=30)
        say(f"\n== an MCP client at node-a ({node_a.mcp_url})")
        async with Client(node_a.mcp_url, cache=None) as client:
            tools = (await client.list_tools()).tools
            for tool in tools:
                where = node_a.federation.entries["tools"][tool.name].origins[0]
                say(f"  tool {tool.name:<22} on {where}: {tool.description}")
            started = time.perf_counter()
            result = await client.call_tool("clock__now", {"timezone": "Europe/Paris"})
            elapsed = (time.perf_counter() - started) * 1000
            say(f"  clock__now(timezone='Europe/Paris') -> {result.content[0].text}  "  # type: ignore[union-attr]
                f"(node-a -> node-b -> node-c and back, {elapsed:.1f} ms)")
            result = await client.call_tool("notes__add_note", {"text": "federated hello"})
            say(f"  notes__add_note(text='federated hello') -> {result.content[0].text}")  # type: ignore[union-attr]
            read = await client.read_resource("notes://all")
            say(f"  read notes://all -> {read.contents[0].text!r}")  # type: ignore[union-attr]
    say("node-a left its `async with` block: links closed with a normal close frame")


def main() -> int:
    LOGS.mkdir(exist_ok=True)
    for name in ("node-a", "node-b", "node-c"):
        config = fednode.load_config(CONFIGS / f"{name}.toml")
        if not port_free(config.control):
            say(f"demo: {config.control} ({name}) is already in use; stop whatever holds it and retry")
            return 1
    say("== configuration (fednode check-config configs/node-b.toml)")
    subprocess.run([FEDNODE, "check-config", str(CONFIGS / "node-b.toml")], check=True)

    say("\n== starting node-c and node-b with `fednode run` (logs in .demo/)")
    # SIGTERM (or a closed pipe) must still reach the finally below, which stops the child nodes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    try:
        for name in ("node-c", "node-b"):
            processes[name] = start_node(name)
        wait_started(processes)
        say("\n== node-a joins, embedded in this Trio program")
        configure_logging("console", "info")
        trio.run(exchange)
        ok = True
    except (Exception, KeyboardInterrupt) as exc:
        say(f"demo failed: {type(exc).__name__}: {exc}")
        ok = False
    finally:
        say("\n== shutting down")
        for name, process in processes.items():
            ok = stop(name, process) and ok

    say("\n== what the nodes logged about their links")
    for name in ("node-b", "node-c"):
        for event in log_events(name):
            if str(event.get("event", "")).startswith(("link.", "node.", "auth.")):
                fields = {k: v for k, v in event.items() if k not in ("timestamp", "event", "node", "level")}
                say(f"  {name}: {event['event']:<14} {json.dumps(fields)}")
    say("\ndemo " + ("completed: 3 nodes connected, an MCP client at node-a called a server two hops away, "
                      "and everything shut down cleanly" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
