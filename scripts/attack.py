#!/usr/bin/env python3
"""Measure what a hostile peer can do to a federation of `fednode run` processes (issue 12's attacks).

Layout, all on 127.0.0.1 with free ports, configurations generated in a temporary directory:

* a chain node-a <-> node-b <-> node-c of ``fednode run`` processes sharing one ``[auth]`` secret (as in
  the demo), with the example servers ``notes`` and ``clock`` and the test fixture ``fx`` (its ``slow``
  tool) attached at node-c over stdio;
* "evil", a configured peer of node-a and of node-b with valid credentials of its own (a per-pair
  secret: it does not know the federation's shared secret). Evil is not a fednode process: it is this
  script speaking the peer protocol with fednode's own handshake and wire classes, in a Trio loop and
  thread of its own (so its heartbeat answers are as prompt as a peer's on its own machine: node-a
  ranks routes of equal length by the round-trip time it measured last). It answers heartbeats and
  nothing else;
* a legitimate MCP client (the official SDK's ``mcp.Client`` over Streamable HTTP at node-a's
  ``{data}/mcp``) starting a call of ``notes__word_count`` (served at node-c, two hops away) every
  50 ms for the whole run, each call bounded by its own timeout, at most 32 in flight (a tick that
  finds 32 in flight counts as a failed call). Latency percentiles are those of its successful calls
  (a fast refusal is no better service than a slow answer); failures show in the success rate.

Phases (``--phases``, in this order; each prints its table as soon as it ends):

1. ``quiet``: the client alone: p50/p95/p99 and success, the reference for the ratios below.
2. ``forged``: evil advertises to node-a the route (node-c, notes) with the path [node-c, evil] (built by
   evil), then replays node-a's own advertisement of it with its path shortened to [node-c, evil], each
   re-sent every 0.5 s (each arrival makes node-a rank the routes afresh). Evil never answers a forward,
   so every ``fed/forward`` it receives is a legitimate call sent to it.
3. ``forward``: evil sends node-b 300 ``fed/forward`` for ``fx``'s slow tool at node-c, and tops them up
   every 0.5 s so that 300 stay unanswered (a slot that frees up is evil's again), while the client keeps
   calling ``notes`` at node-c through node-a (a different server, another peer's path).
4. ``routes``: two floods, one after the other, each of 32 ``fed/routes`` frames (~500 KB, new routes
   in each) to each of node-a and node-b over 20 s: first routes of unknown origins (refused outright),
   then routes of evil's own servers, validly signed by evil as their origin, within the per-peer
   limits (accepted: 320 routes, 16,000 tools). For each: the client's figures, and the resident
   memory (VmRSS) of the three nodes before, at the end, and once evil has gone and its routes with
   it (sampled until it settles, bounded).
5. ``amplify``: 80 legacy (2025-11-25) MCP sessions opened at node-a, each calling ``clock__now`` at
   node-c once: how many ``clock`` processes node-c runs, its open fds and memory, before, at the peak
   and after the sessions closed.

The summary compares with issue 12's targets: forged routes never used; during a forward or route
flood the client succeeds >= 99% with p95 <= 1.5 x its quiet p95 (the ``quiet`` phase is run first
whenever a ratio needs it); <= 8 server processes after 80 remote legacy sessions; memory back within
10 MB of before once the attack's state has expired. It is a measurement: the exit status is 0 when
targets are missed, 1 when the federation could not be set up, 130 when interrupted. Every process
started (the nodes, and the servers they started) is ended by pid at the end, on errors and Ctrl-C too.

Usage::

    scripts/attack                          # every phase (~3 minutes on 2 cores)
    scripts/attack --quick                  # shorter phases, 16 sessions instead of 80
    scripts/attack --phases forged,forward  # some phases (quiet is added when a ratio needs it)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from _bench_procs import HOST, Proc, free_ports, percentile, q  # scripts/: the benchmark's process helpers
from mcp import Client
from mcp.shared.exceptions import MCPError
from trio_websocket import ConnectionClosed, WebSocketConnection

import fednode
from fednode._config._signing import Keyring
from fednode._federation._route_proof import RouteProofs
from fednode._federation._routes import route_from_wire
from fednode._peers import _wire as wire
from fednode._peers._handshake import Handshake, dial

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "tests" / "mcp_fixtures" / "test_server.py")
FEDNODE = str(Path(sys.executable).parent / "fednode")
EVIL = "evil"
PHASES = ("quiet", "forged", "forward", "routes", "amplify")
NEEDS_QUIET = {"forward", "routes"}  # phases whose targets are ratios to the quiet p95

CLIENT_TOOL, CLIENT_ARGS = "notes__word_count", {"text": "one two three"}
SESSION_TOOL = "clock__now"
PERIOD = 0.05  # the legitimate client starts a call every 50 ms
MAX_CLIENT_INFLIGHT = 32

SUCCESS_TARGET = 99.0  # percent
P95_RATIO_TARGET = 1.5
PROCESS_TARGET = 8
RSS_TARGET_MB = 10.0


@dataclass(frozen=True)
class Timing:
    """How long (and how much) each phase runs."""

    quiet: float
    forged: float  # each of its two halves
    forward: float
    forwards: int
    route_frames: int
    route_seconds: float
    settle_max: float
    sessions: int
    call_timeout: float


FULL = Timing(quiet=15, forged=10, forward=20, forwards=300, route_frames=32, route_seconds=20, settle_max=60,
              sessions=80, call_timeout=10)
QUICK = Timing(quiet=5, forged=4, forward=6, forwards=300, route_frames=8, route_seconds=5, settle_max=15,
               sessions=16, call_timeout=5)


# -- output -------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    with contextlib.suppress(BrokenPipeError):  # piped into `head`: keep going, so the nodes get stopped
        print(text, flush=True)


def table(title: str, header: list[str], rows: Iterable[list[Any]]) -> None:
    """A Markdown table (so it pastes into the README as is)."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    say(f"\n{title}")
    for n, row in enumerate(cells):
        say("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            say("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


# -- processes seen through /proc ------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (VmRSS, MB), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root``: pid -> (start time, command line)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[1]
    found: dict[int, tuple[int, str]] = {}
    todo = list(parents.get(root, []))
    while todo and len(found) < 10_000:
        pid = todo.pop()
        found[pid] = (starts[pid], _cmdline(pid))
        todo.extend(parents.get(pid, []))
    return found


def server_processes(node_pid: int, module: str) -> list[int]:
    """Pids of the processes under a node that run ``python -m <module>``."""
    return [pid for pid, (_, cmd) in descendants(node_pid).items() if f"-m {module}" in cmd]


def kill_leftovers(snapshot: dict[int, tuple[int, str]]) -> int:
    """SIGKILL the processes of ``snapshot`` still alive (same pid and start time: not a reused pid)."""
    killed = 0
    for pid, (start, _) in snapshot.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


# -- the federation ---------------------------------------------------------------------------------


def node_toml(node_id: str, control: int, data: int, peers: list[tuple[str, int | None, bool]],
              servers: list[tuple[str, list[str]]]) -> str:
    """A node's configuration; ``peers`` as (id, control port or None, uses evil's per-pair secret)."""
    lines = ["[node]", f"id = {q(node_id)}", f"control = {q(f'ws://{HOST}:{control}')}",
             f"data = {q(f'http://{HOST}:{data}')}", 'shutdown_grace = "2s"', "",
             "[auth]", 'secret = "${FEDNODE_SECRET}"', "",
             "[backoff]", 'initial = "0.2s"', 'max = "2s"', ""]
    for peer_id, port, evil in peers:
        lines += ["[[peers]]", f"id = {q(peer_id)}"]
        if port is not None:
            lines.append(f"control = {q(f'ws://{HOST}:{port}')}")
        if evil:
            lines.append('secret = "${EVIL_SECRET}"')  # its own credentials, as another organisation has
        lines.append("")
    for server_id, argv in servers:
        lines += ["[[servers]]", f"id = {q(server_id)}", f"command = {q(sys.executable)}",
                  f"args = {json.dumps(argv)}", ""]
    return "\n".join(lines)


@dataclass
class Federation:
    """The three ``fednode run`` processes and what the attacks need to know about them."""

    work: Path
    secret: str
    evil_secret: str
    control: dict[str, int]
    data: dict[str, int]
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def mcp_url(self) -> str:
        return f"http://{HOST}:{self.data['node-a']}/mcp"

    def control_url(self, node: str) -> str:
        return f"ws://{HOST}:{self.control[node]}"

    def pid(self, node: str) -> int:
        return self.procs[node].pid

    def rss(self) -> dict[str, float | None]:
        return {node: rss_mb(proc.pid) for node, proc in self.procs.items()}

    async def status(self, node: str, *keys: str) -> Any:
        """A value from ``{data}/status`` of ``node`` (keys in turn), or why there is none."""
        def get() -> Any:
            with urllib.request.urlopen(f"http://{HOST}:{self.data[node]}/status", timeout=5) as reply:
                value = json.load(reply)
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return value

        try:
            return await trio.to_thread.run_sync(get)
        except Exception as exc:
            return f"(no status: {describe_error(exc)})"

    async def routes(self) -> dict[str, Any]:
        """How many routes each node holds (``/status``: routes.total)."""
        return {node: await self.status(node, "routes", "total") for node in self.procs}

    def check_running(self) -> None:
        for proc in self.procs.values():
            proc.check_running()


def plan_federation(work: Path) -> Federation:
    """Ports, secrets and configuration files of the three nodes (nothing started yet)."""
    ports = free_ports(6)
    nodes = ("node-a", "node-b", "node-c")
    fed = Federation(work=work, secret=secrets.token_urlsafe(64), evil_secret=secrets.token_urlsafe(64),
                     control=dict(zip(nodes, ports[:3], strict=True)), data=dict(zip(nodes, ports[3:], strict=True)))
    configs = {
        "node-a": node_toml("node-a", fed.control["node-a"], fed.data["node-a"],
                            [("node-b", fed.control["node-b"], False), (EVIL, None, True)], []),
        "node-b": node_toml("node-b", fed.control["node-b"], fed.data["node-b"],
                            [("node-a", None, False), ("node-c", fed.control["node-c"], False), (EVIL, None, True)],
                            []),
        "node-c": node_toml("node-c", fed.control["node-c"], fed.data["node-c"], [("node-b", None, False)],
                            [("notes", ["-m", "fednode.examples.notes"]), ("clock", ["-m", "fednode.examples.clock"]),
                             ("fx", [FIXTURE, "--name", f"attack{os.getpid()}"])]),
    }
    for node in ("node-c", "node-b", "node-a"):
        path = work / f"{node}.toml"
        path.write_text(configs[node])
        fed.procs[node] = Proc(node, [FEDNODE, "run", "--config", str(path), "--log-level", "info"], work)
    return fed


async def start_federation(fed: Federation) -> None:
    """Start the nodes and wait (bounded) until node-a lists the tools the phases call."""
    # The secrets reach the nodes through their environment (Proc passes ours on), never a file.
    os.environ["FEDNODE_SECRET"], os.environ["EVIL_SECRET"] = fed.secret, fed.evil_secret
    for proc in fed.procs.values():
        await proc.start()
    for node, proc in fed.procs.items():
        await proc.wait_port(fed.data[node], 30)  # (a probe of the control port would be logged as an intruder)
    wanted = {CLIENT_TOOL, SESSION_TOOL, "fx__slow"}
    names: set[str] = set()
    with trio.move_on_after(60) as waiting:
        while not wanted <= names:
            fed.check_running()
            with contextlib.suppress(Exception), trio.move_on_after(10):
                async with Client(fed.mcp_url, cache=None) as probe:
                    names = {tool.name for tool in (await probe.list_tools()).tools}
            if not wanted <= names:
                await trio.sleep(0.3)
    if waiting.cancelled_caught:
        raise RuntimeError(f"node-a did not list {sorted(wanted - names)} within 60 s "
                           f"(it lists {sorted(names)[:10]})")


async def stop_federation(fed: Federation) -> list[str]:
    """Stop the nodes (C last), then kill any server process of node-c that outlived it."""
    problems = []
    for node in ("node-a", "node-b", "node-c"):
        proc = fed.procs.get(node)
        if proc is None or proc.process is None:
            continue
        leftovers = descendants(proc.pid)
        status = await proc.stop(grace=10)
        if status not in (0, None):
            problems.append(f"{node} exited with status {status}")
        if killed := kill_leftovers(leftovers):
            problems.append(f"{killed} process(es) started by {node} outlived it and were killed")
    return problems


# -- evil: this script as a peer --------------------------------------------------------------------


@dataclass
class EvilLink:
    """Evil's authenticated link to one node, in evil's loop: what it received, and a way to send.

    The main loop reads the counters (plain values) and sends through :class:`Evil`.
    """

    target: str
    ws: WebSocketConnection
    routes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    answers: dict[int, str] = field(default_factory=dict)  # our request id -> "ok" or the error code
    pings: int = 0
    bad_frames: int = 0
    closed: str | None = None
    stop: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)  # closed, its tasks ended
    _in_full: bool = False  # a full advertisement spanning several frames is being received

    async def send_all(self, texts: list[str]) -> None:
        with trio.move_on_after(60):  # a node that stops reading cannot hold evil (nor this script)
            for text in texts:
                await self.ws.send_message(text)

    async def read(self) -> None:
        """Answer heartbeats, note what arrives, answer nothing else; until the link closes."""
        try:
            while True:
                frame = await self.ws.get_message()
                try:
                    message = wire.decode(frame)
                except fednode.ProtocolError:
                    self.bad_frames += 1
                    continue
                if isinstance(message, wire.Ping):
                    self.pings += 1
                    await self.ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
                elif isinstance(message, wire.Request):
                    self.requests[message.method] += 1  # never answered: evil holds its callers
                elif isinstance(message, wire.Notification) and message.method == "fed/routes":
                    self._note_routes(message.params)
                elif isinstance(message, wire.Response):
                    self.answers[message.id] = "ok"
                elif isinstance(message, wire.Error) and message.id is not None:
                    self.answers[message.id] = str(message.code)
        except ConnectionClosed as exc:
            self.closed = f"close code {exc.reason.code if exc.reason else '?'}"

    def _note_routes(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        routes = dict(self.routes)  # swapped in whole: the main loop may be looking at the old one
        if params.get("full") and not self._in_full:
            routes = {}
        self._in_full = bool(params.get("full") and params.get("more"))
        for key in params.get("withdraw", []):
            if isinstance(key, list) and len(key) == 2:
                routes.pop((str(key[0]), str(key[1])), None)
        for item in params.get("set", []):
            if isinstance(item, dict):
                routes[(str(item.get("origin")), str(item.get("server")))] = item
        self.routes = routes


class Evil:
    """Evil's own Trio loop, in a thread of its own, and its links.

    In its own loop, evil answers heartbeats as promptly as a peer on a machine of its own would: in
    the main loop, the legitimate client's calls would delay its pongs, and node-a (which ranks
    routes of equal length by the round-trip time it measured last) would prefer node-b's route to
    evil's for a reason a real attacker does not have.
    """

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evil", daemon=True)
        self.error: str | None = None

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by the calls that find the loop gone
            self.error = describe_error(exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery, self._token = nursery, trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    async def start(self) -> None:
        self._thread.start()
        await trio.to_thread.run_sync(self._ready.wait, 10)
        if self._token is None:
            raise RuntimeError(f"evil's loop did not start: {self.error}")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await ``fn(*args)`` in evil's loop (from the main loop)."""
        assert self._token is not None
        # Abandoned on cancellation (Ctrl-C): evil's loop is cancelled as a whole at the end anyway.
        return await trio.to_thread.run_sync(
            functools.partial(trio.from_thread.run, fn, *args, trio_token=self._token), abandon_on_cancel=True)

    async def stop(self) -> None:
        if self._token is not None and self._nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._nursery.cancel_scope.cancel)
            await trio.to_thread.run_sync(self._thread.join, 5)

    async def _hold(self, target: str, *, task_status: trio.TaskStatus[EvilLink]) -> None:
        """Dial ``target`` as evil with valid credentials (fednode's own handshake); read until told to stop."""
        config = fednode.NodeConfig.from_mapping({
            "node": {"id": EVIL}, "auth": {"secret": self.fed.evil_secret},
            "peers": [{"id": target, "control": self.fed.control_url(target)}],
            "link": {"max_message_size": 16 * 1024 * 1024}})
        peer = config.peers[0]
        handshake = Handshake(local_id=EVIL, auth=fednode.AuthManager(EVIL, config.auth, {target: peer}),
                              limits=config.link, tls=config.tls, count_refused=lambda reason: None)
        async with trio.open_nursery() as nursery:
            ws = await dial(handshake, peer, nursery)
            link = EvilLink(target=target, ws=ws)
            nursery.start_soon(link.read)
            task_status.started(link)
            try:
                await link.stop.wait()
                with trio.move_on_after(2):
                    await ws.aclose()
            finally:
                nursery.cancel_scope.cancel()
                link.done.set()

    async def _open(self, target: str) -> EvilLink:
        assert self._nursery is not None
        link: EvilLink = await self._nursery.start(self._hold, target)
        return link

    @asynccontextmanager
    async def link(self, target: str) -> AsyncIterator[EvilHandle]:
        """A link from evil to ``target`` for the duration of the block."""
        link = await self.call(self._open, target)
        try:
            yield EvilHandle(self, link)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(trio.RunFinishedError):
                await self.call(self._close, link)

    @staticmethod
    async def _close(link: EvilLink) -> None:
        link.stop.set()
        with trio.move_on_after(5):
            await link.done.wait()


@dataclass
class EvilHandle:
    """One of evil's links, seen from the main loop."""

    evil: Evil
    link: EvilLink

    @property
    def forwards(self) -> int:
        return self.link.requests["fed/forward"]

    async def send(self, *messages: wire.Message) -> None:
        await self.evil.call(self.link.send_all, [wire.encode(m) for m in messages])

    async def send_text(self, text: str) -> None:
        await self.evil.call(self.link.send_all, [text])

    async def wait_for(self, what: Callable[[EvilLink], bool], timeout: float, describe: str) -> None:
        with trio.move_on_after(timeout):
            while True:
                if what(self.link):
                    return
                if self.link.closed is not None:
                    raise RuntimeError(f"{self.link.target} closed evil's link: {self.link.closed}")
                await trio.sleep(0.05)
        raise RuntimeError(f"evil: no {describe} from {self.link.target} within {timeout:g} s")


# -- the legitimate client --------------------------------------------------------------------------


@dataclass
class Call:
    started: float  # trio.current_time()
    seconds: float | None = None  # None: still running, or never sent (too many in flight)
    error: str | None = None
    done: bool = False


@dataclass
class Stats:
    calls: int
    ok: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    errors: Counter[str]

    @property
    def success(self) -> float:
        return 100.0 * self.ok / self.calls if self.calls else 0.0

    def row(self) -> list[Any]:
        top = "; ".join(f"{n} x {e}" for e, n in self.errors.most_common(2)) or "-"
        return [self.calls, f"{self.success:.1f}", ms(self.p50), ms(self.p95), ms(self.p99), ms(self.max), top]


STATS_HEADER = ["calls", "ok %", "p50 ms", "p95 ms", "p99 ms", "max ms", "most frequent errors"]
"""Columns of a client's figures; the latencies are those of its successful calls."""


def describe_error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"{exc.error.code} {exc.error.message}"[:90]
    return f"{type(exc).__name__}: {exc}"[:90]


class LegitClient:
    """Starts a call of ``CLIENT_TOOL`` at node-a every ``PERIOD`` s and records each one."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.calls: list[Call] = []
        self.in_flight = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Call until cancelled; a session that fails is reopened (its failure is on the calls)."""
        started = False
        while True:
            try:
                async with Client(self.url, cache=None) as client, trio.open_nursery() as nursery:
                    if not started:
                        started = True
                        task_status.started()
                    next_tick = trio.current_time()
                    while True:
                        call = Call(started=trio.current_time())
                        self.calls.append(call)
                        if self.in_flight >= MAX_CLIENT_INFLIGHT:
                            call.done, call.error = True, f"not sent: {MAX_CLIENT_INFLIGHT} calls in flight"
                        else:
                            nursery.start_soon(self._call, client, call)
                        # A tick missed while this process was busy (building evil's frames) is
                        # skipped: a burst of calls to catch up would measure this process, not the nodes.
                        next_tick = max(next_tick + PERIOD, trio.current_time())
                        await trio.sleep_until(next_tick)
            except Exception as exc:
                self.calls.append(Call(started=trio.current_time(), done=True,
                                       error=f"session failed: {describe_error(exc)}"))
                await trio.sleep(0.5)

    async def _call(self, client: Client, call: Call) -> None:
        self.in_flight += 1
        try:
            with trio.move_on_after(self.timeout) as scope:
                result = await client.call_tool(CLIENT_TOOL, CLIENT_ARGS)
                if result.is_error:
                    call.error = f"tool error: {str(result.content)[:60]}"
            if scope.cancelled_caught:
                call.error = f"no answer within the client's {self.timeout:g} s"
        except Exception as exc:
            call.error = describe_error(exc)
        finally:
            self.in_flight -= 1
            call.seconds, call.done = trio.current_time() - call.started, True

    async def settle(self, until: float) -> None:
        """Wait (bounded by the call timeout) until every call started before ``until`` has ended."""
        with trio.move_on_after(self.timeout + 2):
            while True:
                if all(c.done for c in self.calls if c.started < until):
                    return
                await trio.sleep(0.05)

    def stats(self, start: float, end: float) -> Stats:
        window = [c for c in self.calls if start <= c.started < end]
        # Latency of the calls that succeeded (a fast refusal is no better service than a slow one);
        # the failures are in the success rate, and by what they were in the errors.
        latencies = sorted(c.seconds for c in window if c.seconds is not None and c.done and c.error is None)
        errors = Counter(c.error if c.done else "still running" for c in window if c.error or not c.done)

        def p(fraction: float) -> float | None:
            return percentile(latencies, fraction) if latencies else None

        ok = sum(1 for c in window if c.done and c.error is None)
        return Stats(calls=len(window), ok=ok, p50=p(0.5), p95=p(0.95), p99=p(0.99),
                     max=latencies[-1] if latencies else None, errors=errors)

    async def measure(self, seconds: float) -> tuple[float, float]:
        start = trio.current_time()
        await trio.sleep(seconds)
        end = trio.current_time()
        await self.settle(end)
        return start, end


# -- phases -----------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    measured: str
    ok: bool | None  # None: could not be measured


@dataclass
class Run:
    fed: Federation
    client: LegitClient
    evil: Evil
    timing: Timing
    quiet_p95: float | None = None
    targets: list[Target] = field(default_factory=list)

    def ratio_targets(self, what: str, stats: Stats) -> None:
        self.targets.append(Target(f"{what}: client success >= {SUCCESS_TARGET:g}%", f"{stats.success:.1f}%",
                                   stats.success >= SUCCESS_TARGET))
        if self.quiet_p95 and stats.p95 is not None:
            ratio = stats.p95 / self.quiet_p95
            self.targets.append(Target(f"{what}: client p95 <= {P95_RATIO_TARGET:g} x quiet p95",
                                       f"{ratio:.2f} x ({ms(stats.p95)} ms / {ms(self.quiet_p95)} ms)",
                                       ratio <= P95_RATIO_TARGET))
        elif self.quiet_p95:
            self.targets.append(Target(f"{what}: client p95 <= {P95_RATIO_TARGET:g} x quiet p95",
                                       "no call succeeded", False))
        else:
            self.targets.append(Target(f"{what}: client p95 <= {P95_RATIO_TARGET:g} x quiet p95",
                                       "n/a (no quiet p95)", None))


async def phase_quiet(run: Run) -> None:
    start, end = await run.client.measure(run.timing.quiet)
    stats = run.client.stats(start, end)
    run.quiet_p95 = stats.p95
    table(f"quiet baseline ({run.timing.quiet:g} s)", STATS_HEADER, [stats.row()])


def forged_route(genuine: dict[str, Any]) -> dict[str, Any]:
    """The route (node-c, notes) as evil makes it up: its own digest, the path [node-c, evil]."""
    catalog = genuine.get("catalog", {})
    digest = hashlib.sha256(json.dumps(catalog, sort_keys=True).encode()).hexdigest()[:32]
    return {"origin": "node-c", "server": "notes", "prefix": genuine.get("prefix", "notes"),
            "path": ["node-c", EVIL], "digest": digest, "catalog": catalog, "extensions": {}}


async def phase_forged(run: Run) -> None:
    key = ("node-c", "notes")
    rows, used = [], 0
    async with run.evil.link("node-a") as evil:
        await evil.wait_for(lambda link: key in link.routes, 30, "advertisement of (node-c, notes)")
        # Let node-a time evil's heartbeat first: a route's rank depends on its next hop's round trip.
        with contextlib.suppress(RuntimeError):
            await evil.wait_for(lambda link: link.pings >= 1, 20, "heartbeat")
        genuine = evil.link.routes[key]
        replayed = {**genuine, "path": ["node-c", EVIL]}  # node-a's own advertisement, its path shortened
        for label, route in (("forged (node-c, notes) path [node-c, evil]", forged_route(genuine)),
                             ("replayed, path shortened to [node-c, evil]", replayed)):
            before = evil.forwards
            advertise = wire.Notification("fed/routes", {"full": False, "set": [route], "withdraw": [], "more": False})
            start = trio.current_time()
            # Sent again every half second: each arrival makes node-a rank the routes afresh with the
            # round-trip times it measured last, which is all that tells evil's route from node-b's.
            while trio.current_time() < start + run.timing.forged:
                await evil.send(advertise)
                await trio.sleep(min(0.5, start + run.timing.forged - trio.current_time()))
            end = trio.current_time()
            await evil.send(wire.Notification("fed/routes", {"full": False, "set": [], "withdraw": [list(key)],
                                                             "more": False}))
            await run.client.settle(end)  # the calls evil holds end at the client's timeout
            stats = run.client.stats(start, end)
            received = evil.forwards - before
            used += received
            rows.append([label, received, *stats.row()])
    table(f"forged routes ({run.timing.forged:g} s each, re-sent every 0.5 s; evil never answers a forward)",
          ["attack", "client calls sent to evil", *STATS_HEADER], rows)
    run.targets.append(Target("forged routes never used", f"{used} client calls sent to evil", used == 0))


async def phase_forward(run: Run) -> None:
    timing = run.timing
    hold = timing.forward + 2  # each slow call outlasts the window
    budget = 10 * timing.forwards  # forwards evil may send in all

    def forward(i: int) -> wire.Request:
        return wire.Request(id=i, method="fed/forward", timeout=hold + 30, params={
            "origin": "node-c", "server": "fx", "method": "tools/call", "timeout": hold + 30, "trace": [EVIL],
            "params": {"name": "slow", "arguments": {"seconds": hold}}})

    async with run.evil.link("node-b") as evil:
        await evil.wait_for(lambda link: ("node-c", "fx") in link.routes, 30, "advertisement of (node-c, fx)")
        sent = 0
        in_flight: dict[str, Any] = {}
        start = trio.current_time()
        # All at once, then topped up every 0.5 s: evil keeps that many without an answer, so a slot
        # that frees up (a refusal, a call that ends) is evil's again, as a determined attacker would.
        while (now := trio.current_time()) < start + timing.forward:
            outstanding = sum(1 for i in range(1, sent + 1) if i not in evil.link.answers)
            more = min(timing.forwards - outstanding, budget - sent)
            if more > 0:
                await evil.send(*(forward(i) for i in range(sent + 1, sent + more + 1)))
                sent += more
            if not in_flight and now >= start + timing.forward / 2:
                in_flight = {node: await run.fed.status(node, "in_flight") for node in ("node-b", "node-c")}
            await trio.sleep(min(0.5, max(0.0, start + timing.forward - trio.current_time())))
        end = trio.current_time()
        answers = Counter(evil.link.answers.get(i, "no answer yet") for i in range(1, sent + 1))
        await run.client.settle(end)
    await trio.sleep(3)  # the slow calls end (hold is 2 s past the window), so the next phase starts clean
    stats = run.client.stats(start, end)
    ratio = f"{stats.p95 / run.quiet_p95:.2f}" if run.quiet_p95 and stats.p95 is not None else "n/a"
    table(f"forward flood: evil keeps {timing.forwards} fed/forward for fx's slow tool at node-c unanswered at "
          f"node-b (all at once, topped up every 0.5 s; {timing.forward:g} s)",
          [*STATS_HEADER, "p95 / quiet p95"], [[*stats.row(), ratio]])
    say(f"evil's {sent} forwards, by node-b's answer at the end of the window: "
        + ", ".join(f"{what}: {n}" for what, n in answers.most_common())
        + "; in flight half-way (/status): " + ", ".join(f"{n} {v}" for n, v in in_flight.items()))
    run.ratio_targets("forward flood", stats)


def flood_catalog(seed: str, tools: int) -> dict[str, Any]:
    """A catalog of ``tools`` tools of ~1 KB each, whose descriptions are new for every ``seed``."""
    filler = hashlib.sha256(seed.encode()).hexdigest() * 14  # ~900 characters
    return {"tools": [{"name": f"t{j}", "description": f"{j} {filler}",
                       "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}}
                      for j in range(tools)]}


def flood_frame(i: int, routes: int = 10, tools: int = 50) -> str:
    """One ``fed/routes`` frame of ~500 KB: ``routes`` new routes of ``tools`` tools of ~1 KB each."""
    catalog = flood_catalog(str(i), tools)
    items = []
    for k in range(routes):
        origin = f"flood-{i:03d}-{k:02d}"
        items.append({"origin": origin, "server": "junk", "prefix": origin, "path": [origin, EVIL],
                      "digest": hashlib.sha256(origin.encode()).hexdigest()[:32], "catalog": catalog,
                      "extensions": {}})
    return wire.encode(wire.Notification("fed/routes", {"full": False, "set": items, "withdraw": [],
                                                        "more": False}))


async def sample_rss(fed: Federation, peaks: dict[str, float], *, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    while True:
        for node, value in fed.rss().items():
            if value is not None:
                peaks[node] = max(peaks.get(node, 0.0), value)
        await trio.sleep(0.5)


async def settle_rss(fed: Federation, limit: float) -> tuple[dict[str, float | None], float]:
    """Sample every second until no node's RSS moved by 1 MB over the last 5 samples (bounded by ``limit``)."""
    samples: list[dict[str, float | None]] = []
    started = trio.current_time()
    while trio.current_time() - started < limit:
        samples.append(fed.rss())
        recent = samples[-5:]
        if len(recent) == 5 and all(
                max(s[n] or 0.0 for s in recent) - min(s[n] or 0.0 for s in recent) < 1.0 for n in fed.procs):
            break
        await trio.sleep(1)
    return samples[-1], trio.current_time() - started


def own_flood_frames(count: int, to: str, secret: str, routes: int = 10, tools: int = 50) -> list[str]:
    """``count`` ``fed/routes`` frames of ~500 KB that node ``to`` accepts: routes of evil's own servers,
    validly signed by evil as their origin (its per-pair secret), new servers in each frame, within the
    per-peer limits (``count`` x ``routes`` routes of ``tools`` tools: 320 routes and 16,000 tools for
    the full run, of at most 1,024 routes and 20,000 items)."""
    auth = fednode.AuthConfig(secrets=(fednode.Secret(secret),))
    proofs = RouteProofs(EVIL, Keyring(EVIL, auth=lambda: auth, peer=lambda _peer_id: None, nodes=lambda: ()))
    frames = []
    for i in range(count):
        catalog = flood_catalog(f"own{i}", tools)
        items = []
        for k in range(routes):
            server = f"own-{i:03d}-{k:02d}"
            route = route_from_wire({"origin": EVIL, "server": server, "prefix": server, "path": [EVIL],
                                     "digest": "", "catalog": catalog, "extensions": {}})
            digest = route.signed_digest()
            proof = proofs.local_proof(server, digest, server)
            proof = proofs.attest(EVIL, server, server, digest, proof, (EVIL,), to)
            items.append({"origin": EVIL, "server": server, "prefix": server, "path": [EVIL], "digest": digest,
                          "catalog": catalog, "extensions": {}, "proof": proof.to_wire()})
        frames.append(wire.encode(wire.Notification("fed/routes", {"full": False, "set": items, "withdraw": [],
                                                                    "more": False})))
    return frames


@dataclass
class FloodResult:
    """What one route flood did: the client's figures and the nodes' memory and routes."""

    stats: Stats
    size_kb: float
    before: dict[str, float | None]
    peaks: dict[str, float]
    at_end: dict[str, float | None]
    settled: dict[str, float | None]
    waited: float
    routes: dict[str, tuple[Any, Any, Any]]  # before / end / expired


async def route_flood(run: Run, frames: dict[str, list[str]]) -> FloodResult:
    """Send ``frames[node]`` to node-a and node-b over the phase's time, measure, then let evil go."""
    timing, fed = run.timing, run.fed
    count = len(frames["node-a"])
    size_kb = sum(len(f.encode()) for f in frames["node-a"]) / count / 1024
    before, routes_before = fed.rss(), await fed.routes()
    peaks: dict[str, float] = {}
    async with trio.open_nursery() as sampler:
        await sampler.start(sample_rss, fed, peaks)
        async with run.evil.link("node-a") as to_a, run.evil.link("node-b") as to_b:
            start = trio.current_time()
            interval = timing.route_seconds / count
            for i in range(count):
                await to_a.send_text(frames["node-a"][i])
                await to_b.send_text(frames["node-b"][i])
                await trio.sleep_until(start + (i + 1) * interval)
            await trio.sleep(3)  # what the nodes still do after the last frame counts too
            end = trio.current_time()
            at_end, routes_at_end = fed.rss(), await fed.routes()
        sampler.cancel_scope.cancel()
    await run.client.settle(end)
    stats = run.client.stats(start, end)
    settled, waited = await settle_rss(fed, timing.settle_max)
    routes_settled = await fed.routes()
    return FloodResult(stats=stats, size_kb=size_kb, before=before, peaks=peaks, at_end=at_end, settled=settled,
                       waited=waited, routes={n: (routes_before[n], routes_at_end[n], routes_settled[n])
                                              for n in fed.procs})


async def phase_routes(run: Run) -> None:
    """Two floods, one after the other: routes node-a and node-b refuse outright (unknown origins),
    then routes they accept (evil's own servers, signed by evil, within the per-peer limits)."""
    timing, fed = run.timing, run.fed
    refused = [flood_frame(i) for i in range(timing.route_frames)]
    results = {"refused": await route_flood(run, {"node-a": refused, "node-b": refused})}
    del refused
    own = {node: own_flood_frames(timing.route_frames, node, fed.evil_secret) for node in ("node-a", "node-b")}
    results["accepted"] = await route_flood(run, own)
    del own

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def diff(later: float | None, earlier: float | None) -> float | None:
        return None if later is None or earlier is None else later - earlier

    def ratio(stats: Stats) -> str:
        return f"{stats.p95 / run.quiet_p95:.2f}" if run.quiet_p95 and stats.p95 is not None else "n/a"

    kinds = {"refused": "unknown origins, refused", "accepted": "evil's own servers, signed by evil, accepted"}
    table(f"route flood: {timing.route_frames} fed/routes frames of ~{results['accepted'].size_kb:.0f} KB "
          f"to each of node-a and node-b in {timing.route_seconds:g} s, per flood (measured until 3 s after the "
          "last)", ["flood", *STATS_HEADER, "p95 / quiet p95"],
          [[kinds[name], *result.stats.row(), ratio(result.stats)] for name, result in results.items()])
    table("route flood: resident memory (VmRSS, MB); 'expired' = after evil left, settled "
          f"after {results['refused'].waited:.0f} s / {results['accepted'].waited:.0f} s",
          ["flood", "node", "before", "peak", "end of flood", "expired", "expired - before",
           "routes held: before/end/expired"],
          [[name, node, mb(r.before[node]), mb(r.peaks.get(node)), mb(r.at_end[node]), mb(r.settled[node]),
            mb(diff(r.settled[node], r.before[node])), " / ".join(str(v) for v in r.routes[node])]
           for name, r in results.items() for node in fed.procs])
    for name, result in results.items():
        run.ratio_targets(f"route flood ({name})", result.stats)
        growth = {n: (result.settled[n] or 0.0) - (result.before[n] or 0.0) for n in fed.procs}
        worst = max(growth, key=lambda n: growth[n])
        run.targets.append(Target(f"route flood ({name}): RSS back within {RSS_TARGET_MB:g} MB once expired",
                                  f"worst {worst} +{growth[worst]:.1f} MB", growth[worst] <= RSS_TARGET_MB))


async def phase_amplify(run: Run) -> None:
    fed, count = run.fed, run.timing.sessions
    c_pid = fed.pid("node-c")

    def look() -> tuple[int, int | None, float | None, float]:
        pids = server_processes(c_pid, "fednode.examples.clock")
        return len(pids), fd_count(c_pid), rss_mb(c_pid), sum(rss_mb(p) or 0.0 for p in pids)

    before = look()
    peak = list(before)
    outcomes: Counter[str] = Counter()
    all_done, release = trio.Event(), trio.Event()
    opening = trio.CapacityLimiter(10)  # sessions being opened and called at once; all stay open until released

    def finished(outcome: str) -> None:
        outcomes[outcome] += 1
        if sum(outcomes.values()) == count:
            all_done.set()

    async def session() -> None:
        # Each session is entered and left by its own task (the SDK client's task groups require it).
        outcome: str | None = None
        await opening.acquire()
        held = True
        try:
            async with Client(fed.mcp_url, mode="legacy", cache=None) as client:
                result = await client.call_tool(SESSION_TOOL, {})
                outcome = "error result" if result.is_error else "ok"
                opening.release()
                held = False
                finished(outcome)
                await release.wait()
        except Exception as exc:
            if outcome is None:
                finished(describe_error(exc))
        finally:
            if held:
                opening.release()

    async def watch() -> None:
        while True:
            now = look()
            peak[0], peak[2] = max(peak[0], now[0]), max(peak[2] or 0.0, now[2] or 0.0)
            peak[1], peak[3] = max(peak[1] or 0, now[1] or 0), max(peak[3], now[3])
            await trio.sleep(0.25)

    started = trio.current_time()
    async with trio.open_nursery() as watcher:
        watcher.start_soon(watch)
        async with trio.open_nursery() as sessions:
            for _ in range(count):
                sessions.start_soon(session)
            with trio.move_on_after(max(60.0, count * 1.5)):
                await all_done.wait()
            took = trio.current_time() - started
            reported = Counter(outcomes)  # as of now: a session finishing later is not counted twice
            if missing := count - sum(outcomes.values()):
                reported["not done within the phase's bound"] = missing
            await trio.sleep(1)
            at_peak = look()
            release.set()
            sessions.cancel_scope.deadline = trio.current_time() + 30  # closing is bounded too
        watcher.cancel_scope.cancel()
    after, waited = look(), 0.0
    with trio.move_on_after(20):
        while after[0] > before[0]:
            await trio.sleep(0.5)
            waited += 0.5
            after = look()

    def opt(value: float | None, fmt: str = "{:.0f}") -> str:
        return "-" if value is None else fmt.format(value)

    table(f"amplification: {count} legacy sessions at node-a, each calling {SESSION_TOOL} at node-c once "
          f"(calls done in {took:.1f} s; results: {', '.join(f'{k}: {n}' for k, n in reported.most_common())})",
          ["at node-c", "clock processes", "fds of node-c", "RSS node-c MB", "RSS clock processes MB"],
          [["before", before[0], opt(before[1]), opt(before[2], "{:.1f}"), opt(before[3], "{:.1f}")],
           ["peak while open", peak[0], opt(peak[1]), opt(peak[2], "{:.1f}"), opt(peak[3], "{:.1f}")],
           ["all calls done", at_peak[0], opt(at_peak[1]), opt(at_peak[2], "{:.1f}"), opt(at_peak[3], "{:.1f}")],
           [f"sessions closed (+{waited:.0f} s)", after[0], opt(after[1]), opt(after[2], "{:.1f}"),
            opt(after[3], "{:.1f}")]])
    run.targets.append(Target(f"{count} remote legacy sessions: <= {PROCESS_TARGET} server processes",
                              f"peak {peak[0]} clock processes", peak[0] <= PROCESS_TARGET))
    if before[2] is not None and after[2] is not None:
        growth = after[2] - before[2]
        run.targets.append(Target(f"amplification: node-c RSS back within {RSS_TARGET_MB:g} MB once closed",
                                  f"+{growth:.1f} MB", growth <= RSS_TARGET_MB))


PHASE_RUNNERS = {"quiet": phase_quiet, "forged": phase_forged, "forward": phase_forward, "routes": phase_routes,
                 "amplify": phase_amplify}
PHASE_TITLES = {"quiet": "quiet baseline", "forged": "forged routes", "forward": "forward flood",
                "routes": "route flood", "amplify": "amplification by remote legacy sessions"}


# -- main -------------------------------------------------------------------------------------------


async def watch_signals(scope: trio.CancelScope, interrupted: list[bool]) -> None:
    """The first SIGINT (Ctrl-C), SIGTERM or SIGHUP ends the run, cleanly: the nodes are still stopped."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
        async for _ in received:
            interrupted.append(True)
            scope.cancel()
            return


async def main(args: argparse.Namespace) -> int:
    timing = QUICK if args.quick else FULL
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    say(f"fednode {fednode.__version__} under attack: {os.cpu_count()} CPUs, load average {load}; "
        f"phases {', '.join(args.phases)}{' (quick)' if args.quick else ''}")
    work = Path(tempfile.mkdtemp(prefix="fednode-attack-"))
    fed: Federation | None = None
    evil: Evil | None = None
    interrupted: list[bool] = []
    status = 0
    try:
        with trio.CancelScope() as everything:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals, everything, interrupted)
                say(f"starting node-a, node-b, node-c (logs in {work}) ...")
                try:
                    fed = plan_federation(work)
                    with trio.fail_after(120):
                        await start_federation(fed)
                except Exception as exc:
                    say(f"attack: setup failed: {describe_error(exc)}")
                    for proc in (fed.procs.values() if fed else ()):
                        say(f"{proc.name}'s log ends with:\n{proc.log_tail()}")
                    status = 1
                    nursery.cancel_scope.cancel()
                    return status
                say(f"federation up: client at {fed.mcp_url} calling {CLIENT_TOOL} (node-c) every "
                    f"{PERIOD * 1000:.0f} ms, each call bounded by {timing.call_timeout:g} s")
                client = LegitClient(fed.mcp_url, timing.call_timeout)
                try:
                    with trio.fail_after(60):
                        await nursery.start(client.run)
                except trio.TooSlowError:
                    say("attack: setup failed: the MCP client could not open a session at node-a within 60 s")
                    status = 1
                    nursery.cancel_scope.cancel()
                    return status
                evil = Evil(fed)
                await evil.start()
                run = Run(fed=fed, client=client, evil=evil, timing=timing)
                for n, phase in enumerate(args.phases, 1):
                    say(f"\n== phase {n}/{len(args.phases)}: {PHASE_TITLES[phase]} ...")
                    try:
                        fed.check_running()
                        await PHASE_RUNNERS[phase](run)
                    except Exception as exc:
                        say(f"phase {phase} failed: {describe_error(exc)}")
                        run.targets.append(Target(f"{PHASE_TITLES[phase]}", f"phase failed: {describe_error(exc)}",
                                                  None))
                    await trio.sleep(1)
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                table(f"summary (issue 12 targets; load average now {load}, {os.cpu_count()} CPUs)",
                      ["target", "measured", "ok?"],
                      [[t.name, t.measured, "?" if t.ok is None else "yes" if t.ok else "NO"] for t in run.targets])
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if evil is not None:
                await evil.stop()
            if fed is not None and fed.procs:
                say("\nstopping the nodes ...")
                for problem in await stop_federation(fed):
                    say(f"  {problem}")
            if args.keep or status:
                say(f"logs kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        say("attack: interrupted")
        return 130
    return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                     epilog="Phases: " + ", ".join(PHASES))
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter phases and 16 sessions instead of 80")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs and node logs)")
    args = parser.parse_args(argv)
    chosen = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not chosen or chosen - set(PHASES):
        parser.error(f"--phases: choose from {', '.join(PHASES)}")
    if chosen & NEEDS_QUIET:
        chosen.add("quiet")  # their targets are ratios to the quiet p95 of the same run
    args.phases = [p for p in PHASES if p in chosen]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        sys.exit(trio.run(main, arguments))
    except BaseException as exc:  # Ctrl-C before (or after) the signal watcher: nothing of ours runs then
        if not isinstance(exc, KeyboardInterrupt) and not (
                isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None):
            raise
        say("attack: interrupted")
        sys.exit(130)
