#!/usr/bin/env python3
"""Benchmark fednode links against a bare trio-websocket echo, measured in the same run.

Everything but one memory figure runs in this one process, on 127.0.0.1 with port 0, under one
``trio.run``:

1. Round trip over one link. A bare trio-websocket echo server/client pair and two fednode nodes
   (``node-a`` dials ``node-b``) are set up side by side; measurement rounds alternate between
   them so drift (CPU frequency, other load) hits all alike. fednode's echo is served on the path
   a forwarded request takes at the node owning the server (``bench/echo``: the link's reader
   offers it to a transit handler, which declines it as ``fed/forward`` does for the node's own
   servers, and then it is served in a task of its own under a cancel scope holding its deadline).
   The built-in ``echo`` (run by the reader itself, no task, no scope) is shown too, for reference
   only: no forwarded request takes that path.
   * sequential: one request at a time; p50, p99 and mean round trip in microseconds, and the CPU
     time of this process per round trip (both ends of the link, and the client, are in it);
   * pipelined: ``--inflight`` requests in flight over the same single connection; messages/s.
2. One relay hop: the same, direct and through a middle node that passes the request on from its
   link's reader (:class:`fednode.Transit`, what carries ``fed/forward`` through a transit node).
3. Memory per idle link, counting both ends: ``--links`` bare WebSocket connections, then one
   fednode hub with ``--links`` spoke nodes each dialing it. tracemalloc compares a snapshot taken
   once every node (or the bare server) is up but before any link exists with one taken after
   every link is up and has idled for a couple of heartbeat intervals. The VmRSS delta (minus
   tracemalloc's own bookkeeping) is printed too; and, with the hub in a separate process (this
   script run with ``--hub``, untraced), the hub's RSS growth plus this process's (the spokes').

Targets (from the issue): fednode's echo on the forward path costs at most 1.3x the bare round trip
(sequential p50, same run), and an idle link costs at most 100 KiB counting both ends (tracemalloc).
Results are printed, never turned into an exit status. The CPU a transit node and an owning node
spend per forwarded ``tools/call`` is measured by ``scripts/bench_transit.py``.

Usage::

    .venv/bin/python scripts/bench_links.py            # default run (~1-2 minutes on 2 cores)
    .venv/bin/python scripts/bench_links.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from importlib.metadata import version

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, connect_websocket, serve_websocket

import fednode
from fednode._config._config_load import Rate

HOST = "127.0.0.1"
#: A benchmark-only HS512 secret (>= 64 bytes); never a real deployment's.
SECRET = "bench-secret-" + "0123456789abcdef" * 5
RTT_TARGET = 1.3  # fednode sequential p50 on the forward path / bare sequential p50
LINK_TARGET_KIB = 100.0  # tracemalloc KiB per idle link, both ends
ROUNDS = 5  # alternating measurement rounds per mode
FORWARD_ECHO = "bench/echo"  # an echo served on the path of a forwarded request (see serve_on_forward_path)
UNLIMITED = Rate(10**9, 60.0)  # the benchmark measures the link, not the peers' request rate limit

RoundTrip = Callable[[int], Awaitable[None]]


# -- helpers ----------------------------------------------------------------------------------


def quiet_logging() -> None:
    """Only fednode warnings and errors, on stderr (info events would flood stdout and cost time)."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def raise_fd_limit(links: int) -> None:
    """Each fednode link costs two sockets plus a listener per spoke node; make room for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 6 * links + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def node_config(node_id: str, *, interval: float, timeout: float, inflight: int) -> fednode.NodeConfig:
    return fednode.NodeConfig.from_mapping({
        "node": {"id": node_id, "control": f"ws://{HOST}:0", "data": f"http://{HOST}:0", "shutdown_grace": "2s"},
        "auth": {"secret": SECRET},
        "heartbeat": {"interval": interval, "timeout": timeout},
        "backoff": {"initial": "0.05s", "max": "0.5s", "reset_after": "1s"},
        "link": {"handshake_timeout": "20s", "max_inflight": max(128, inflight)},
    })


def peer(node_id: str, control: str | None = None) -> fednode.PeerConfig:
    return fednode.PeerConfig(id=node_id, control=control, rate=UNLIMITED)


async def _echo_task(params: object, context: fednode.RequestContext) -> object:
    return params


def _decline(params: object, context: fednode.RequestContext, inbound: object) -> None:
    return None  # what fed/forward's transit handler answers for a request to this node's own server


def serve_on_forward_path(node: fednode.Node, method: str = FORWARD_ECHO) -> None:
    """Serve ``method`` (an echo) the way a node serves a ``fed/forward`` for one of its own servers:
    the link's reader offers it to the method's transit handler, which declines it, and it then runs
    in a task of its own, under a cancel scope holding the request's deadline."""
    node.register_handler(method, _echo_task)
    node.handlers.transit[method] = _decline


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


def proc_rss(pid: int | str = "self") -> int | None:
    """VmRSS of a process, in bytes (None where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Stats:
    """Round-trip samples (ns) and pipelined totals for one contender."""

    def __init__(self) -> None:
        self.sequential_ns: list[int] = []
        self.pipelined_ns: list[int] = []
        self.pipelined_messages = 0
        self.pipelined_elapsed_ns = 0
        self.cpu_ns = 0  # CPU time of this process during the sequential rounds

    def cpu_us(self) -> float:
        """CPU time of this process per sequential round trip, in microseconds."""
        return self.cpu_ns / len(self.sequential_ns) / 1000

    def seq(self, fraction: float | None = None) -> float:
        """Sequential round trip in microseconds: a percentile, or the mean when fraction is None."""
        if fraction is None:
            return sum(self.sequential_ns) / len(self.sequential_ns) / 1000
        return percentile(sorted(self.sequential_ns), fraction) / 1000

    def pipe_p50(self) -> float:
        return percentile(sorted(self.pipelined_ns), 0.5) / 1000

    def throughput(self) -> float:
        return self.pipelined_messages / (self.pipelined_elapsed_ns / 1e9)


# -- round-trip measurement ---------------------------------------------------------------------


async def run_sequential(call: RoundTrip, count: int, first: int, samples: list[int],
                         stats: Stats | None = None) -> None:
    clock = time.perf_counter_ns
    cpu = time.process_time_ns()
    for i in range(first, first + count):
        started = clock()
        await call(i)
        samples.append(clock() - started)
    if stats is not None:
        stats.cpu_ns += time.process_time_ns() - cpu


async def run_pipelined_tasks(call: RoundTrip, count: int, inflight: int, first: int, stats: Stats) -> None:
    """``inflight`` tasks each issue requests back to back over the same link, ``count`` in total."""
    clock = time.perf_counter_ns

    async def worker(start: int, n: int) -> None:
        for i in range(start, start + n):
            began = clock()
            await call(i)
            stats.pipelined_ns.append(clock() - began)

    started = clock()
    async with trio.open_nursery() as nursery:
        start = first
        for n in split(count, inflight):
            nursery.start_soon(worker, start, n)
            start += n
    stats.pipelined_elapsed_ns += clock() - started
    stats.pipelined_messages += count


async def bare_echo_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


class BareClient:
    """The bare trio-websocket contender: JSON text out, the same text echoed back, JSON parsed."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def round_trip(self, i: int) -> None:
        await self.ws.send_message(json.dumps({"seq": i}))
        reply = json.loads(await self.ws.get_message())
        if reply["seq"] != i:
            raise RuntimeError(f"bare echo out of order: sent {i}, got {reply!r}")

    async def pipelined(self, count: int, inflight: int, first: int, stats: Stats) -> None:
        """One sender and one receiver task; at most ``inflight`` messages unanswered at a time."""
        clock = time.perf_counter_ns
        window = trio.Semaphore(inflight)
        sent_at: deque[int] = deque()

        async def sender() -> None:
            for i in range(first, first + count):
                await window.acquire()
                sent_at.append(clock())
                await self.ws.send_message(json.dumps({"seq": i}))

        async def receiver() -> None:
            for i in range(first, first + count):
                reply = json.loads(await self.ws.get_message())
                stats.pipelined_ns.append(clock() - sent_at.popleft())
                if reply["seq"] != i:
                    raise RuntimeError(f"bare echo out of order: sent {i}, got {reply!r}")
                window.release()

        started = clock()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
        stats.pipelined_elapsed_ns += clock() - started
        stats.pipelined_messages += count


class NodeClient:
    """The fednode contender: ``node-a`` requests an echo from ``node-b`` over their link."""

    def __init__(self, node: fednode.Node, peer_id: str, method: str = FORWARD_ECHO) -> None:
        self.node = node
        self.peer_id = peer_id
        self.method = method

    async def round_trip(self, i: int) -> None:
        params = {"seq": i}
        reply = await self.node.request(self.peer_id, self.method, params, timeout=10)
        if reply != params:
            raise RuntimeError(f"fednode echo mismatch: sent {params!r}, got {reply!r}")

    async def pipelined(self, count: int, inflight: int, first: int, stats: Stats) -> None:
        await run_pipelined_tasks(self.round_trip, count, inflight, first, stats)


async def bench_round_trips(args: argparse.Namespace) -> tuple[Stats, Stats, Stats]:
    bare, node, inline = Stats(), Stats(), Stats()
    config_a = node_config("node-a", interval=5.0, timeout=15.0, inflight=args.inflight)
    config_b = node_config("node-b", interval=5.0, timeout=15.0, inflight=args.inflight)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        server = await nursery.start(serve_websocket, bare_echo_handler, HOST, 0, None)
        ws = await connect_websocket(nursery, HOST, server.port, "/", use_ssl=False)
        bare_client = BareClient(ws)

        a = await stack.enter_async_context(fednode.open_node(config_a))
        b = await stack.enter_async_context(fednode.open_node(config_b))
        await b.register_peer(peer(a.id), wait=False)  # dials in only
        await a.register_peer(peer(b.id, b.control_url))
        await a.wait_connected(b.id, timeout=10)
        await b.wait_connected(a.id, timeout=10)
        serve_on_forward_path(b)

        contenders: list[tuple[BareClient | NodeClient, Stats]] = [
            (bare_client, bare), (NodeClient(a, b.id), node), (NodeClient(a, b.id, "echo"), inline)]
        warmup = args.warmup
        for client, _ in contenders:  # warm caches, lazy imports, cattrs' generated hooks
            await run_sequential(client.round_trip, warmup, 0, [])
            await client.pipelined(max(warmup, args.inflight * 4), args.inflight, 0, Stats())

        for r, per_round in enumerate(split(args.messages, ROUNDS)):
            ordered = contenders if r % 2 == 0 else contenders[::-1]
            for client, stats in ordered:
                await run_sequential(client.round_trip, per_round, r * per_round, stats.sequential_ns, stats)
        for r, per_round in enumerate(split(args.messages, ROUNDS)):
            ordered = contenders if r % 2 == 0 else contenders[::-1]
            for client, stats in ordered:
                await client.pipelined(per_round, args.inflight, r * per_round, stats)

        if a.connected_peers() != [b.id]:
            raise RuntimeError(f"fednode link dropped during the benchmark: {a.peer_states()}")
        await ws.aclose()
        nursery.cancel_scope.cancel()
    return bare, node, inline


# -- one relay hop ----------------------------------------------------------------------------------


def bare_relay_handler(target_port: int) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """A bare trio-websocket relay: each client connection gets its own connection to the target
    and one task per direction copying messages across (what a relay on this stack looks like)."""
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with trio.open_nursery() as nursery:
            upstream = await connect_websocket(nursery, HOST, target_port, "/", use_ssl=False)

            async def pump(source: WebSocketConnection, sink: WebSocketConnection) -> None:
                try:
                    while True:
                        await sink.send_message(await source.get_message())
                except ConnectionClosed:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump, ws, upstream)
            nursery.start_soon(pump, upstream, ws)
    return handler


async def bench_relay_hop(args: argparse.Namespace) -> tuple[Stats, Stats, Stats, Stats]:
    """Sequential round trips direct and through one relay hop, bare and fednode, alternating.

    fednode: node-a asks node-b. Direct: node-b's echo on the forward path. Through one hop: node-b's
    link reader passes ``relay/echo`` on to node-c (the same :class:`fednode.Transit` mechanism that
    carries ``fed/forward`` through a transit node), which serves it on the forward path.
    """
    bare_direct, bare_hop, node_direct, node_hop = Stats(), Stats(), Stats(), Stats()
    configs = {i: node_config(f"node-{i}", interval=5.0, timeout=15.0, inflight=args.inflight) for i in "abc"}
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        server = await nursery.start(serve_websocket, bare_echo_handler, HOST, 0, None)
        relay = await nursery.start(serve_websocket, bare_relay_handler(server.port), HOST, 0, None)
        direct_ws = await connect_websocket(nursery, HOST, server.port, "/", use_ssl=False)
        hop_ws = await connect_websocket(nursery, HOST, relay.port, "/", use_ssl=False)

        nodes = {i: await stack.enter_async_context(fednode.open_node(config)) for i, config in configs.items()}
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        for left, right in ((a, b), (b, c)):
            await right.register_peer(peer(left.id), wait=False)
            await left.register_peer(peer(right.id, right.control_url))
            await left.wait_connected(right.id, timeout=10)
        serve_on_forward_path(b)
        serve_on_forward_path(c, "relay/echo")

        def to_c(params: object, context: fednode.RequestContext, inbound: object) -> fednode.Transit:
            supervisor = b.supervisor(c.id)
            assert supervisor is not None and supervisor.link is not None
            return fednode.Transit(onward=supervisor.link, params=params, timeout=10,
                                   error=lambda why: (-32000, why))

        b.handlers.transit["relay/echo"] = to_c

        contenders: list[tuple[BareClient | NodeClient, Stats]] = [
            (BareClient(direct_ws), bare_direct), (BareClient(hop_ws), bare_hop),
                      (NodeClient(a, b.id), node_direct), (NodeClient(a, b.id, "relay/echo"), node_hop)]
        for client, _ in contenders:
            await run_sequential(client.round_trip, args.warmup, 0, [])
        for r, per_round in enumerate(split(args.messages, ROUNDS)):
            ordered = contenders if r % 2 == 0 else contenders[::-1]
            for client, stats in ordered:
                await run_sequential(client.round_trip, per_round, r * per_round, stats.sequential_ns, stats)
        await direct_ws.aclose()
        await hop_ws.aclose()
        nursery.cancel_scope.cancel()
    return bare_direct, bare_hop, node_direct, node_hop


# -- memory measurement -------------------------------------------------------------------------


class MemoryDelta:
    """tracemalloc (and VmRSS) growth between :meth:`begin` and :meth:`end`."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.up: int | None = None  # links up when measured (fednode)
        self.traced = 0
        self.rss: int | None = None
        self.sites: list[tuple[str, int]] = []
        self._before: tuple[int, int, int | None] = (0, 0, None)
        self._snapshot: tracemalloc.Snapshot | None = None

    @staticmethod
    def _now() -> tuple[int, int, int | None]:
        gc.collect()
        return tracemalloc.get_traced_memory()[0], tracemalloc.get_tracemalloc_memory(), proc_rss()

    def begin(self) -> None:
        self._before = self._now()
        self._snapshot = tracemalloc.take_snapshot() if self.top else None

    def end(self) -> None:
        traced, overhead, rss = self._now()
        traced0, overhead0, rss0 = self._before
        self.traced = traced - traced0
        if rss is not None and rss0 is not None:
            # tracemalloc's own trace table grows with every live block: not the links' cost.
            self.rss = (rss - rss0) - (overhead - overhead0)
        if self._snapshot is not None:
            keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
            after = tracemalloc.take_snapshot().filter_traces(keep)
            diff = after.compare_to(self._snapshot.filter_traces(keep), "filename")
            self.sites = [(self._short(d.traceback[0].filename), d.size_diff) for d in diff[: self.top]]
            self._snapshot = None

    @staticmethod
    def _short(filename: str) -> str:
        for marker in ("site-packages/", "/fednode/", "/lib/python"):
            if marker in filename:
                tail = filename.split(marker, 1)[1]
                return ("fednode/" + tail) if marker == "/fednode/" else tail
        return filename


async def bench_bare_memory(links: int, idle: float, top: int) -> MemoryDelta:
    delta = MemoryDelta(top)
    accepted = 0
    all_accepted = trio.Event()

    async def idle_handler(request: WebSocketRequest) -> None:
        nonlocal accepted
        ws = await request.accept()
        accepted += 1
        if accepted == links:
            all_accepted.set()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, idle_handler, HOST, 0, None)
        delta.begin()
        async with trio.open_nursery() as clients:
            conns = [await connect_websocket(clients, HOST, server.port, "/", use_ssl=False) for _ in range(links)]
            with trio.fail_after(30):
                await all_accepted.wait()
            await trio.sleep(idle)
            delta.end()
            for ws in conns:
                await ws.aclose()
        nursery.cancel_scope.cancel()
    return delta


async def bench_node_memory(links: int, interval: float, idle: float, top: int) -> tuple[MemoryDelta, MemoryDelta]:
    """Returns (per-node delta for the hub and the spokes before any link, per-link delta)."""
    nodes_delta, links_delta = MemoryDelta(0), MemoryDelta(top)
    timeout = max(5.0, 4 * interval)

    def config(node_id: str) -> fednode.NodeConfig:
        return node_config(node_id, interval=interval, timeout=timeout, inflight=0)

    async with AsyncExitStack() as stack:
        nodes_delta.begin()
        hub = await stack.enter_async_context(fednode.open_node(config("hub")))
        spokes = [await stack.enter_async_context(fednode.open_node(config(f"spoke-{i:04d}")))
                  for i in range(links)]
        nodes_delta.end()

        links_delta.begin()
        for spoke in spokes:  # the hub knows every spoke but never dials: they dial in
            await hub.register_peer(fednode.PeerConfig(id=spoke.id), wait=False)
        hub_peer = fednode.PeerConfig(id=hub.id, control=hub.control_url)
        for spoke in spokes:
            await spoke.register_peer(hub_peer, wait=False)
        with trio.move_on_after(120):  # a machine too busy to link them all: measured anyway, and reported
            await hub.wait_connected(timeout=600)
            for spoke in spokes:
                await spoke.wait_connected(timeout=600)
        await trio.sleep(idle)
        links_delta.up = len(hub.connected_peers())
        links_delta.end()
        tracemalloc.stop()  # teardown of 2 x links sockets is much faster untraced
    return nodes_delta, links_delta


async def child_say(text: str) -> None:
    print(text, flush=True)


async def child_wait_line() -> None:
    """Wait for a line on stdin (the parent's go-ahead), or its end."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        while (chunk := await stdin.receive_some(4096)) and b"\n" not in chunk:
            pass


async def serve_role(role: str, links: int, interval: float, idle: float, hub_url: str | None) -> None:
    """A child process of :func:`bench_separate_processes`: the hub (``links`` spokes dial it) or the
    ``links`` spokes, which dial ``hub_url`` once told to on stdin. Runs until SIGTERM."""
    timeout = max(5.0, 4 * interval)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            if role == "hub":
                hub = await stack.enter_async_context(
                    fednode.open_node(node_config("hub", interval=interval, timeout=timeout, inflight=0)))
                for i in range(links):
                    await hub.register_peer(fednode.PeerConfig(id=f"spoke-{i:04d}"), wait=False)
                await child_say(f"ready {hub.control_url}")
            else:
                spokes = [await stack.enter_async_context(fednode.open_node(
                    node_config(f"spoke-{i:04d}", interval=interval, timeout=timeout, inflight=0)))
                    for i in range(links)]
                await trio.sleep(idle)
                gc.collect()
                await child_say("ready")
                await child_wait_line()
                hub_peer = fednode.PeerConfig(id="hub", control=hub_url)
                for spoke in spokes:
                    await spoke.register_peer(hub_peer, wait=False)
                for spoke in spokes:
                    await spoke.wait_connected(timeout=60)
                await trio.sleep(idle)
                gc.collect()
                await child_say("linked")
            async for _ in signals:
                break


class Child:
    """This script run as a child process in a role (see :func:`serve_role`)."""

    def __init__(self, *args: str) -> None:
        self.argv = [sys.executable, __file__, *args]
        self.process: trio.Process | None = None
        self._buffer = b""

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(self.argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE)

    async def line(self, timeout: float = 120) -> str:
        assert self.process is not None and self.process.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"child {self.argv[2:]} exited early (status {self.process.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def rss(self) -> int:
        assert self.process is not None
        rss = proc_rss(self.process.pid)
        if rss is None:
            raise RuntimeError("cannot read a child's RSS")
        return rss

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def bench_separate_processes(links: int, interval: float, idle: float) -> tuple[int, int] | None:
    """RSS growth per idle link with the hub and the spokes in two fresh processes of their own
    (untraced): (hub's end, spoke's end), in bytes."""
    if proc_rss() is None:
        return None
    common = ("--links", str(links), "--heartbeat", str(interval), "--idle", str(idle))
    hub = Child("--role", "hub", *common)
    try:
        await hub.start()
        url = (await hub.line()).split()[1]
        spokes = Child("--role", "spokes", "--hub-url", url, *common)
        try:
            await spokes.start()
            await spokes.line()
            hub_before, spokes_before = hub.rss(), spokes.rss()
            assert spokes.process is not None and spokes.process.stdin is not None
            await spokes.process.stdin.send_all(b"link\n")
            await spokes.line()
            return (hub.rss() - hub_before) // links, (spokes.rss() - spokes_before) // links
        finally:
            await spokes.stop()
    finally:
        await hub.stop()


# -- report -------------------------------------------------------------------------------------


def kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def report(args: argparse.Namespace, trips: tuple[Stats, Stats, Stats], hop: tuple[Stats, Stats, Stats, Stats],
           bare_mem: MemoryDelta, nodes_mem: MemoryDelta, node_mem: MemoryDelta, hub: tuple[int, int] | None,
           seconds: float) -> None:
    bare, node, inline = trips
    L = args.links
    w = 36
    print()
    print(f"Round trip over one link: {args.messages} messages per mode in {ROUNDS} alternating rounds, "
          f"{args.warmup} warm-up, {args.inflight} in flight when pipelined")
    print(f"  {'':{w}}{'bare trio-websocket':>20}{'fednode':>12}{'fednode/bare':>14}{'inline echo':>13}")
    print(f"  {'':{w}}{'':>20}{'fwd path':>12}{'':>14}{'(reference)':>13}")
    rows: list[tuple[str, Callable[[Stats], float], bool]] = [
        ("sequential p50 (us)", lambda st: st.seq(0.5), True),
        ("sequential p99 (us)", lambda st: st.seq(0.99), True),
        ("sequential mean (us)", lambda st: st.seq(), True),
        ("CPU per round trip, this process (us)", Stats.cpu_us, True),
        ("pipelined throughput (msg/s)", Stats.throughput, True),
        # Not a like-for-like figure: the bare sender rarely fills its window, the 32 fednode tasks
        # always do, so fednode's latency here is mostly queueing (Little's law: inflight / rate).
        ("pipelined p50 latency (us)", Stats.pipe_p50, False),
    ]
    for label, get, ratio in rows:
        fmt = "{:>20,.0f}{:>12,.0f}" if "msg/s" in label else "{:>20,.1f}{:>12,.1f}"
        b, n = get(bare), get(node)
        tail = f"{n / b:>13.2f}x" if ratio else f"{'(queueing)':>14}"
        print(f"  {label:{w}}" + fmt.format(b, n) + tail + f"{get(inline):>13,.1f}")
    print("  (CPU: both ends of the link and the client are in this process)")

    bare_direct, bare_hop, node_direct, node_hop = hop
    print()
    print(f"One relay hop: {args.messages} sequential round trips per path in {ROUNDS} alternating rounds "
          "(fednode: served on the forward path at the far end)")
    print(f"  {'':{w}}{'bare trio-websocket':>20}{'fednode':>12}{'fednode/bare':>14}")
    for label, b_stats, n_stats in (("direct p50 (us)", bare_direct, node_direct),
                                    ("through one hop p50 (us)", bare_hop, node_hop)):
        b, n = b_stats.seq(0.5), n_stats.seq(0.5)
        print(f"  {label:{w}}{b:>20,.1f}{n:>12,.1f}{n / b:>13.2f}x")
    bare_added = bare_hop.seq(0.5) - bare_direct.seq(0.5)
    node_added = node_hop.seq(0.5) - node_direct.seq(0.5)
    print(f"  {'added by the hop, p50 (us)':{w}}{bare_added:>20,.1f}{node_added:>12,.1f}"
          f"{node_added / bare_added if bare_added > 0 else math.nan:>13.2f}x")
    cpu_added = node_hop.cpu_us() - node_direct.cpu_us()
    print(f"  {'added by the hop, CPU (us)':{w}}{bare_hop.cpu_us() - bare_direct.cpu_us():>20,.1f}{cpu_added:>12,.1f}"
          "   (all nodes in this process)")

    print()
    print(f"Memory per idle link: {L} links, both ends in this process (tracemalloc; "
          f"fednode links idled {args.idle:g}s = {args.idle / args.heartbeat:g} heartbeat intervals)")
    print(f"  {'':{w}}{'bare trio-websocket':>20}{'fednode':>12}{'fednode/bare':>14}")
    b_link, n_link = bare_mem.traced / L, node_mem.traced / L
    print(f"  {'per link, both ends (KiB)':{w}}{kib(b_link):>20}{kib(n_link):>12}{n_link / b_link:>13.2f}x")
    if bare_mem.rss is not None and node_mem.rss is not None:
        print(f"  {'RSS delta per link, both ends (KiB)':{w}}{kib(bare_mem.rss / L):>20}{kib(node_mem.rss / L):>12}"
              "   (coarse: freed arenas get reused)")
    if hub is not None:
        print(f"  {'RSS per link, both ends, own processes':{w}}{'':>20}{kib(sum(hub)):>12}"
              f"   (KiB: hub's end {kib(hub[0])} + spoke's {kib(hub[1])}; two processes, untraced)")
    print(f"  {'per idle fednode node, no links (KiB)':{w}}{'':>20}{kib(nodes_mem.traced / (L + 1)):>12}"
          "   (listener, tasks; not counted above)")
    if node_mem.sites:
        print(f"  fednode per-link allocations by file (KiB per link, both ends; top {len(node_mem.sites)}):")
        for name, size in node_mem.sites:
            print(f"    {kib(size / L):>8}  {name}")

    rtt_ratio = node.seq(0.5) / bare.seq(0.5)
    per_link = n_link / 1024
    rtt_ok = rtt_ratio <= RTT_TARGET
    mem_ok = per_link <= LINK_TARGET_KIB
    if node_mem.up is not None and node_mem.up != L:
        print(f"  WARNING: only {node_mem.up} of {L} fednode links were up when memory was measured (the "
              "machine too busy for the heartbeat?): the memory figures are not reliable; run again")
    print()
    print("Targets")
    print(f"  [{'PASS' if rtt_ok else 'FAIL'}] echo on the forward path (sequential p50) <= {RTT_TARGET}x bare "
          f"trio-websocket: {rtt_ratio:.2f}x ({node.seq(0.5):.1f} us vs {bare.seq(0.5):.1f} us)")
    mem_verdict = ("PASS" if mem_ok else "FAIL") if node_mem.up in (None, L) else "----"  # ---- : not reliable
    print(f"  [{mem_verdict}] idle link <= {LINK_TARGET_KIB:g} KiB counting both ends: "
          f"{per_link:.1f} KiB (bare trio-websocket: {b_link / 1024:.1f} KiB)")
    print(f"  (info) inline echo (no forward takes this path) / bare: {inline.seq(0.5) / bare.seq(0.5):.2f}x")
    print(f"  (info) pipelined throughput fednode/bare: {node.throughput() / bare.throughput():.2f}x")
    print(f"  (info) one relay hop adds {node_added:.1f} us p50 through a fednode transit node, "
          f"{bare_added:.1f} us through a bare trio-websocket relay ({node_added / bare_added:.2f}x)"
          if bare_added > 0 else "  (info) relay hop: bare figure not positive; rerun")
    print(f"total {seconds:.1f}s")


# -- main ---------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    print(f"fednode link benchmark: python {platform.python_version()}, trio {version('trio')}, "
          f"trio-websocket {version('trio-websocket')}, fednode {fednode.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)

    print("measuring round trips ...", end=" ", flush=True)
    phase = time.perf_counter()
    trips = await bench_round_trips(args)
    print(f"{time.perf_counter() - phase:.1f}s", flush=True)

    print("measuring one relay hop ...", end=" ", flush=True)
    phase = time.perf_counter()
    hop = await bench_relay_hop(args)
    print(f"{time.perf_counter() - phase:.1f}s", flush=True)

    print(f"measuring memory of {args.links} idle links ...", end=" ", flush=True)
    phase = time.perf_counter()
    tracemalloc.start(1)
    bare_mem = await bench_bare_memory(args.links, 0.2, args.top)
    nodes_mem, node_mem = await bench_node_memory(args.links, args.heartbeat, args.idle, args.top)
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    hub = await bench_separate_processes(args.links, args.heartbeat, args.idle) if args.processes else None
    print(f"{time.perf_counter() - phase:.1f}s", flush=True)

    report(args, trips, hop, bare_mem, nodes_mem, node_mem, hub, time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="round trips per mode and contender (5000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up round trips (default: messages/10)")
    parser.add_argument("--inflight", type=int, default=32, help="requests in flight when pipelined (32)")
    parser.add_argument("--links", type=int, default=200, help="idle links for the memory measurement (200)")
    parser.add_argument("--heartbeat", type=float, default=1.0,
                        help="heartbeat interval of the memory-measurement nodes, seconds (1.0)")
    parser.add_argument("--idle", type=float, default=None,
                        help="seconds the links idle before measuring (default: 2.5 heartbeat intervals)")
    parser.add_argument("--top", type=int, default=6, help="allocation sites to list for fednode links (6; 0 = none)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    parser.add_argument("--no-processes", dest="processes", action="store_false",
                        help="skip the RSS figure with the hub and the spokes in processes of their own")
    parser.add_argument("--role", choices=("hub", "spokes"), help=argparse.SUPPRESS)  # a child's role
    parser.add_argument("--hub-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 500)
        args.links = min(args.links, 20)
        args.heartbeat = min(args.heartbeat, 0.2)
    if args.warmup is None:
        args.warmup = max(50, args.messages // 10)
    if args.idle is None:
        args.idle = 2.5 * args.heartbeat
    for name in ("messages", "inflight", "links"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.messages < ROUNDS:
        parser.error(f"--messages must be >= {ROUNDS}")
    if args.heartbeat <= 0 or args.idle < 0 or args.warmup < 0 or args.top < 0:
        parser.error("--heartbeat must be > 0; --idle, --warmup and --top must be >= 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    quiet_logging()
    raise_fd_limit(arguments.links)
    if arguments.role is not None:
        trio.run(serve_role, arguments.role, arguments.links, arguments.heartbeat, arguments.idle, arguments.hub_url)
    else:
        trio.run(main, arguments)
