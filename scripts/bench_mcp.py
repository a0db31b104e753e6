#!/usr/bin/env python3
"""Benchmark MCP ``tools/call`` through fednode against direct connections and a FastMCP proxy, in one run.

Every path calls the same small tool (the SDK-built fixture's ``add``) with the official SDK's
``mcp.Client`` (``cache=None``), in both protocol eras (``2026-07-28`` and ``legacy``):

* direct, HTTP: the fixture serving Streamable HTTP itself (``--http``, hypercorn on Trio);
* direct, stdio: the fixture as a child process of the client;
* fednode, 1 node: the fixture attached (stdio) to node A, the node the client talks to;
* fednode, 2 nodes: the fixture attached to node B, reached through A -> B;
* fednode, 3 nodes: the fixture attached to node C, reached through A -> B -> C;
* fednode, 1 node, HTTP upstream: a second ``--http`` fixture attached to node A by URL;
* FastMCP proxy (``create_proxy``) in front of the fixture over stdio, and over HTTP (the second
  ``--http`` fixture): what a user would otherwise pick, one proxy process per era. FastMCP is
  installed into this interpreter's environment on first use (only for the benchmark); its rows
  are skipped with a note if that fails.

Process layout: the nodes run as ``fednode run`` subprocesses (a chain A - B - C from generated
TOML files in a temporary directory, free ports picked by binding port 0 first), the fixtures and
the FastMCP proxies are subprocesses too, and the clients all live in this process under one
``trio.run``. Separate processes are what a deployment looks like, and they keep the client's own
CPU work (the SDK client is not cheap) off the event loops being measured; on a 2-core machine
the processes still share the cores, so concurrent throughput is a whole-system figure.

Measurement: every client is opened and warmed up first; then ``--rounds`` rounds alternate
between the paths (in a rotating order) so drift (CPU frequency, other load) hits all alike.
Sequential: one call at a time, per-call latency (p50, p99) and calls/s. Concurrent:
``--concurrency`` tasks share each path's one client (one session), calls/s over the whole burst.
The CPU time each process spends per sequential call (from /proc) is printed too, to show where
the time goes, and the nodes' logs are checked for unexpected warnings.

Targets (from the issue), printed as PASS/FAIL per era and per sequential/concurrent, never turned
into an exit status: A -> B reaches at least 60% of the direct HTTP calls/s; each extra node
(1 -> 2, 2 -> 3) adds at most 0.5 ms to the sequential p50; one node reaches at least 10x the
calls/s of the FastMCP proxy with the same upstream transport (stdio, and HTTP).

``--profile DIR`` runs the nodes under cProfile (CPU clock, enabled only while the calls are
measured; several times slower) and prints, per node, CPU per call, the share of each package,
task spawns / socket sends / pydantic validations per call and the heaviest functions; combine
with ``--paths`` and ``--modes`` to profile one path in one era.

Usage::

    .venv/bin/python scripts/bench_mcp.py            # default run (~1.5 minutes on 2 cores)
    .venv/bin/python scripts/bench_mcp.py --quick    # smoke run
    .venv/bin/python scripts/bench_mcp.py --paths node2 --modes 2026-07-28 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import pstats
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import fednode

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "tests" / "mcp_fixtures" / "test_server.py")
FEDNODE = str(Path(sys.executable).parent / "fednode")
#: A benchmark-only HS512 secret (>= 64 bytes); never a real deployment's.
SECRET = "bench-secret-" + "0123456789abcdef" * 5
MODES = ("2026-07-28", "legacy")
TAG = f"bench{os.getpid()}"  # in every fixture's --name: finds (and, at the end, sweeps) this run's fixtures

RATIO_TARGET = 0.60  # A -> B calls/s over direct HTTP calls/s
HOP_TARGET_MS = 0.5  # p50 added per extra node
FASTMCP_TARGET = 10.0  # fednode calls/s over FastMCP proxy calls/s
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

FASTMCP_PROXY = """
import sys
try:
    from fastmcp.server import create_proxy
except ImportError:  # older FastMCP: the classmethod
    from fastmcp import FastMCP
    create_proxy = FastMCP.as_proxy
port, kind, target = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if kind == "stdio":
    from fastmcp.client.transports import StdioTransport
    backend = StdioTransport(command=target[0], args=target[1:])
else:
    backend = target[0]
proxy = create_proxy(backend, name="fastmcp-proxy")
proxy.run(transport="http", host="127.0.0.1", port=port, show_banner=False, log_level="WARNING")
"""


# -- helpers ----------------------------------------------------------------------------------


def say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (all bound at once, so they differ), for other processes."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def fixture_args(name: str, *extra: str) -> list[str]:
    return [FIXTURE, "--name", f"{TAG}-{name}", *extra]


def fixture_pids(name: str, *, prefix: bool = False) -> list[int]:
    """Pids of this run's fixture processes started with ``fixture_args(name)`` (any name with ``prefix``)."""
    wanted = f"{TAG}-{name}"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        # python FIXTURE --name TAG-name ...: not the /bin/sh shim of a node, nor a proxy naming it in its args
        if len(argv) > 3 and argv[1] == FIXTURE and argv[2] == "--name" and (
                argv[3].startswith(wanted) if prefix else argv[3] == wanted):
            pids.append(int(entry))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


async def git_revision() -> str:
    """`` (git abc1234)`` for the checkout measured, with ``+changes`` when it has uncommitted ones."""
    try:
        head = await trio.run_process(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                      capture_stdout=True, capture_stderr=True, check=False)
        dirty = await trio.run_process(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                       capture_stdout=True, capture_stderr=True, check=False)
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    return f" (git {head.stdout.decode().strip()}{'+changes' if dirty.stdout.strip() else ''})"


# -- subprocesses -----------------------------------------------------------------------------


class Proc:
    """One subprocess of the benchmark, in its own session, with stderr (and stdout) in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, pipe_stdout: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.pipe_stdout = pipe_stdout
        self.process: trio.Process | None = None
        self._log: TextIO | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("w")
        self.process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if self.pipe_stdout else self._log,
            stderr=self._log, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_running(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "  (no log)"
        return "\n".join(f"  | {line[:300]}" for line in text)

    def log_problems(self) -> tuple[list[str], int]:
        """(unexpected, expected): the log lines at warning level or above (``fednode run`` logs JSON lines).

        Expected here: resource conflicts (the same fixture is attached four times, and resources keep
        their URIs) and failed dials of a peer that is not listening yet (all nodes start at once).
        """
        problems, expected = [], 0
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return [], 0
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                problems.append(line)  # not a log event: a traceback or the like
                continue
            if not isinstance(event, dict) or event.get("level") in ("debug", "info"):
                continue
            name, error = event.get("event"), str(event.get("error"))
            if name == "catalog.conflict" or (name == "peer.connect_failed" and "all attempts to connect" in error):
                expected += 1
            else:
                problems.append(line)
        return problems, expected

    async def read_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (the fixture prints ``url <URL>``)."""
        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        with trio.fail_after(timeout):
            while True:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    self.check_running()
                    raise RuntimeError(f"{self.name} closed its stdout:\n{self.log_tail()}")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").strip()
                    if text.startswith(prefix):
                        return text[len(prefix):].strip()

    async def wait_port(self, port: int, timeout: float) -> None:
        with trio.fail_after(timeout):
            while True:
                self.check_running()
                try:
                    stream = await trio.open_tcp_stream(HOST, port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; then sweep what is left of its process group."""
        if self.process is None:
            return None
        process = self.process
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session): leftovers only
            if process.stdout is not None:
                await process.stdout.aclose()
        if self._log is not None:
            self._log.close()
        return process.returncode


def sweep_fixtures() -> list[int]:
    """Kill any fixture this run started (directly or through a node or proxy) that is still alive."""
    pids = fixture_pids("", prefix=True)  # every fixture name of this run
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


# -- the fednode chain ------------------------------------------------------------------------


def q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def node_toml(node_id: str, control: int, data: int, peers: list[tuple[str, int | None]],
              servers: list[tuple[str, str]]) -> str:
    """A node configuration: ``peers`` as (id, control port or None), ``servers`` as (id, stdio name or URL)."""
    lines = [
        "[node]", f"id = {q(node_id)}", f"control = {q(f'ws://{HOST}:{control}')}",
        f"data = {q(f'http://{HOST}:{data}')}", 'shutdown_grace = "2s"', "",
        "[auth]", f"secret = {q(SECRET)}", "",
        "[backoff]", 'initial = "0.1s"', 'max = "1s"', "",
        "[link]", "max_inflight = 512", "",
        # The benchmark measures throughput from one address: [clients] rate would be what it measures.
        "[clients]", 'rate = "100000000/min"', "",
    ]
    for peer_id, port in peers:
        lines += ["[[peers]]", f"id = {q(peer_id)}"]
        if port is not None:
            lines.append(f"control = {q(f'ws://{HOST}:{port}')}")
        lines.append("")
    for server_id, where in servers:
        lines += ["[[servers]]", f"id = {q(server_id)}"]
        if where.startswith("http"):
            lines.append(f"url = {q(where)}")
        else:
            lines += [f"command = {q(sys.executable)}", f"args = {json.dumps(fixture_args(where))}"]
        lines.append("")
    return "\n".join(lines)


# Runs a script under cProfile counting CPU time (not wall time: on a busy machine a wall-clock profile
# charges a process for being preempted, typically inside the send() that woke its peer), enabled
# by SIGUSR1 and disabled by SIGUSR2, so that start-up (imports) and warm-up stay out of it.
PROFILE_WRAPPER = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = sys.argv[2:]
profiler = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: profiler.disable())
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def node_argv(config: Path, profile_dir: Path | None, node_id: str) -> list[str]:
    argv = [FEDNODE, "run", "--config", str(config), "--log-level", "warning"]
    if profile_dir is None:
        return argv
    return [sys.executable, "-c", PROFILE_WRAPPER, str(profile_dir / f"{node_id}.prof"), *argv]


# -- paths and rows -----------------------------------------------------------------------------


@dataclass
class PathSpec:
    """One way of reaching the fixture's ``add``."""

    key: str
    label: str
    tool: str
    target: Callable[[str], Any]  # mode -> a fresh mcp.Client target (URL or transport)
    cpu: Callable[[str], dict[str, list[int]]]  # mode -> column -> pids whose CPU time counts there
    fastmcp: bool = False


@dataclass
class Row:
    path: PathSpec
    mode: str
    calls: int
    client: Any = None
    seq_ns: list[int] = field(default_factory=list)
    conc_calls: int = 0
    conc_elapsed_ns: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # column -> CPU seconds over the sequential calls
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seq_ns)

    def seq_rate(self) -> float:
        return len(self.seq_ns) / (sum(self.seq_ns) / 1e9)

    def p(self, fraction: float) -> float:
        return percentile(sorted(self.seq_ns), fraction) / 1e6

    def conc_rate(self) -> float:
        return self.conc_calls / (self.conc_elapsed_ns / 1e9) if self.conc_elapsed_ns else float("nan")


async def call(row: Row, i: int) -> None:
    result = await row.client.call_tool(row.path.tool, {"a": i, "b": 1})
    if result.is_error or result.structured_content != {"result": i + 1}:
        raise RuntimeError(f"{row.path.label} [{row.mode}]: unexpected result for add({i}, 1): {result!r}"[:500])


async def run_sequential(row: Row, count: int, first: int, samples: list[int] | None) -> None:
    clock = time.perf_counter_ns
    for i in range(first, first + count):
        started = clock()
        await call(row, i)
        if samples is not None:
            samples.append(clock() - started)


async def run_concurrent(row: Row, count: int, workers: int, first: int, record: bool) -> None:
    clock = time.perf_counter_ns

    async def worker(start: int, n: int) -> None:
        for i in range(start, start + n):
            await call(row, i)

    started = clock()
    async with trio.open_nursery() as nursery:
        start = first
        for n in split(count, workers):
            if n:
                nursery.start_soon(worker, start, n)
            start += n
    if record:
        row.conc_elapsed_ns += clock() - started
        row.conc_calls += count


def cpu_snapshot(row: Row, *, before: bool) -> dict[str, dict[int, float]]:
    """CPU seconds per process, by column. Pids are looked up each time (a proxy may restart its
    upstream); this process's own time is read last before the calls and first after them, so the
    /proc scans are not charged to the client."""
    snapshot: dict[str, dict[int, float]] = {}
    if not before:
        snapshot["client"] = {0: own_cpu_seconds()}
    for column, pids in row.path.cpu(row.mode).items():
        snapshot[column] = {pid: cpu_seconds(pid) for pid in pids}
    if before:
        snapshot["client"] = {0: own_cpu_seconds()}
    return snapshot


def failed(row: Row, exc: BaseException) -> None:
    leaf: BaseException = exc
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
    row.error = f"{type(leaf).__name__}: {leaf}"[:200]
    say(f"\n  ! {row.path.label} [{row.mode}] failed: {row.error}")


async def measure(rows: list[Row], args: argparse.Namespace, profiling: Callable[[bool], None]) -> None:
    live = [row for row in rows if row.error is None]
    for row in live:  # warm up: the client lists tools (output schema), caches, lazy imports, upstream sessions
        try:
            await row.client.list_tools()
            await run_sequential(row, max(5, row.calls // 10) if args.warmup is None else args.warmup, 0, None)
            await run_concurrent(row, args.concurrency * 2, args.concurrency, 0, record=False)
        except Exception as exc:
            failed(row, exc)
    profiling(True)
    say("sequential ", end="")
    for r in range(args.rounds):
        live = [row for row in rows if row.error is None]
        shift = r % len(live) if live else 0
        for row in live[shift:] + live[:shift]:
            n = split(row.calls, args.rounds)[r]
            before = cpu_snapshot(row, before=True)
            try:
                await run_sequential(row, n, r * n, row.seq_ns)
            except Exception as exc:
                failed(row, exc)
                continue
            after = cpu_snapshot(row, before=False)
            for column, times in after.items():
                # A process that ended meanwhile loses its last interval; a new one counts in full.
                spent = sum(value - before[column].get(pid, 0.0) for pid, value in times.items())
                row.cpu[column] = row.cpu.get(column, 0.0) + spent
        say(".", end="")
    say(" concurrent ", end="")
    for r in range(args.rounds):
        live = [row for row in rows if row.error is None]
        shift = r % len(live) if live else 0
        for row in live[::-1][shift:] + live[::-1][:shift]:
            n = split(row.calls, args.rounds)[r]
            try:
                await run_concurrent(row, n, args.concurrency, r * n, record=True)
            except Exception as exc:
                failed(row, exc)
        say(".", end="")
    profiling(False)
    say()


# -- FastMCP ------------------------------------------------------------------------------------


async def ensure_fastmcp(args: argparse.Namespace) -> tuple[bool, str]:
    """(available, note): install FastMCP into this interpreter's environment when it is missing."""
    if args.no_fastmcp:
        return False, "skipped (--no-fastmcp)"
    if importlib.util.find_spec("fastmcp") is None:
        say(f"FastMCP is not installed; installing it into {sys.prefix} for the FastMCP proxy rows "
            f"({sys.executable} -m pip install -q fastmcp) ...", end=" ")
        started = time.perf_counter()
        try:
            with trio.fail_after(600):
                result = await trio.run_process([sys.executable, "-m", "pip", "install", "-q", "fastmcp"],
                                                capture_stdout=True, capture_stderr=True, check=False)
        except trio.TooSlowError:
            say("timed out")
            return False, "skipped: pip install fastmcp timed out (600 s)"
        if result.returncode != 0:
            say("failed")
            lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if "is ignored" not in ln]
            return False, f"skipped: pip install fastmcp failed: {' / '.join(lines[-3:])[:300]}"
        say(f"done in {time.perf_counter() - started:.0f}s")
        importlib.invalidate_caches()
    probe = await trio.run_process([sys.executable, "-c", "import fastmcp; print(fastmcp.__version__)"],
                                   capture_stdout=True, capture_stderr=True, check=False)
    if probe.returncode != 0:
        return False, f"skipped: fastmcp does not import: {probe.stderr.decode(errors='replace')[-300:]}"
    return True, f"FastMCP {probe.stdout.decode().strip()}"


# -- profile summary ----------------------------------------------------------------------------

_BUCKETS = [
    ("trio", ("/trio/",)), ("anyio", ("/anyio/",)), ("hypercorn", ("/hypercorn/",)), ("h11", ("/h11/",)),
    ("starlette / sse-starlette", ("/starlette/", "/sse_starlette/")),
    ("mcp SDK (mcp, mcp_types)", ("/mcp/", "/mcp_types/")), ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("fednode", ("/fednode/",)), ("trio-websocket / wsproto", ("/trio_websocket/", "/wsproto/")),
    ("json", ("/json/",)), ("structlog / logging", ("/structlog/", "/logging/")),
    ("opentelemetry", ("/opentelemetry/",)), ("attrs / cattrs", ("/attr/", "/cattrs/", "/attrs/")),
]


def bucket(filename: str, funcname: str) -> str:
    for name, markers in _BUCKETS:
        if any(marker in filename for marker in markers):
            return name
    if filename == "~":
        if any(word in funcname for word in ("socket", "epoll", "select", "posix.write", "posix.read")):
            return "C: socket / pipe I/O, epoll"
        if "json" in funcname.lower() or "encode" in funcname or "scanner" in funcname:
            return "C: json"
        return "C: other builtins"
    return "other Python (stdlib, contextvars, ...)"


def summarize_profile(path: Path, top: int, calls: int) -> None:
    """Where a node's CPU went while the calls were measured (``calls`` = tools/calls it took part in)."""
    stats = pstats.Stats(str(path))
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows: list[tuple[float, float, int, str, str]] = []
    buckets: dict[str, float] = {}
    counts: dict[str, int] = {}
    for (filename, line, funcname), (_, ncalls, tottime, cumtime, _) in entries.items():
        where = funcname if filename == "~" else f"{_short(filename)}:{line}({funcname})"
        rows.append((tottime, cumtime, ncalls, where, filename))
        name = bucket(filename, funcname)
        buckets[name] = buckets.get(name, 0.0) + tottime
        for label, match in _COUNTED:
            if match(filename, funcname):
                counts[label] = counts.get(label, 0) + ncalls
    total = sum(row[0] for row in rows)
    if not total or not calls:
        say(f"  {path.stem}: nothing profiled")
        return
    say(f"  {path.stem}: {total:.2f}s CPU over {calls:,} calls = {1000 * total / calls:.2f} ms per call "
        "(profiler overhead included)")
    say("    by package (own time): " + ", ".join(
        f"{name} {100 * seconds / total:.0f}%" for name, seconds in sorted(buckets.items(), key=lambda kv: -kv[1])
        if seconds / total >= 0.01))
    say("    per call: " + ", ".join(f"{counts.get(label, 0) / calls:.1f} {label}" for label, _ in _COUNTED))
    say(f"    top {top} functions by own time:")
    for tottime, _cumulative, ncalls, where, _ in sorted(rows, reverse=True)[:top]:
        say(f"      {100 * tottime / total:5.1f}%  {1e6 * tottime / calls:7.1f} us/call own  "
            f"{ncalls / calls:6.1f} calls/call  {where}")
    ours = sorted((row for row in rows if "/fednode/" in row[4]), key=lambda row: -row[1])[:top]
    say(f"    top {len(ours)} fednode functions by cumulative time (a coroutine's own steps and what they call):")
    for _, cumtime, ncalls, where, _ in ours:
        say(f"      {100 * cumtime / total:5.1f}%  {1e6 * cumtime / calls:7.1f} us/call cum  "
            f"{ncalls / calls:6.1f} calls/call  {where}")


_COUNTED: list[tuple[str, Callable[[str, str], bool]]] = [
    ("task spawns", lambda f, fn: f.endswith("trio/_core/_run.py") and fn == "spawn_impl"),
    ("socket sends", lambda f, fn: f == "~" and fn.startswith("<method 'send' of '_socket.socket")),
    ("pipe writes", lambda f, fn: f == "~" and fn == "<built-in method posix.write>"),
    ("pydantic validations", lambda f, fn: f == "~" and "SchemaValidator" in fn and "validate" in fn),
    ("json dumps", lambda f, fn: f.endswith("json/__init__.py") and fn == "dumps"),
]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/fednode/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("fednode/" + tail) if marker == "/fednode/" else tail
    return filename


# -- report -------------------------------------------------------------------------------------


def report(rows: list[Row], args: argparse.Namespace, fastmcp_note: str, seconds: float) -> None:
    direct = {row.mode: row for row in rows if row.path.key == "direct-http" and row.ok}
    say()
    say(f"tools/call add(a, b): sequential = 1 caller; concurrent = {args.concurrency} tasks sharing one client; "
        f"{args.calls} calls per row and mode ({args.fastmcp_calls} for FastMCP) in {args.rounds} alternating rounds")
    head = (f"  {'path':<38}{'mode':<12}{'seq calls/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
            f"{f'conc({args.concurrency}) calls/s':>20}{'seq/direct':>12}{'conc/direct':>13}")
    say(head)
    say("  " + "-" * (len(head) - 2))
    for row in rows:
        if not row.ok:
            say(f"  {row.path.label:<38}{row.mode:<12}  {row.error or 'not measured'}")
            continue
        base = direct.get(row.mode)
        seq_ratio = f"{row.seq_rate() / base.seq_rate():.2f}x" if base else "-"
        conc_ratio = f"{row.conc_rate() / base.conc_rate():.2f}x" if base and row.conc_calls else "-"
        say(f"  {row.path.label:<38}{row.mode:<12}{row.seq_rate():>12,.0f}{row.p(0.5):>9.2f}{row.p(0.99):>9.2f}"
            f"{row.conc_rate():>20,.0f}{seq_ratio:>12}{conc_ratio:>13}")

    say()
    say("CPU per sequential call, ms (user+system from /proc; 'server' = the fixture the call ends at)")
    columns = ["client", "node A", "node B", "node C", "proxy", "server"]
    say(f"  {'path':<38}{'mode':<12}" + "".join(f"{c:>9}" for c in columns) + f"{'total':>9}{'wall p50':>10}")
    for row in rows:
        if not row.ok:
            continue
        n = len(row.seq_ns)
        cells = [f"{1000 * row.cpu[c] / n:>9.2f}" if c in row.cpu else f"{'':>9}" for c in columns]
        total = 1000 * sum(row.cpu.values()) / n
        say(f"  {row.path.label:<38}{row.mode:<12}" + "".join(cells) + f"{total:>9.2f}{row.p(0.5):>10.2f}")

    by = {(row.path.key, row.mode): row for row in rows if row.ok}
    say()
    say("Targets")
    checks: list[tuple[str, list[tuple[bool | None, str]]]] = []

    lines: list[tuple[bool | None, str]] = []
    for mode in args.modes:
        two, base = by.get(("node2", mode)), by.get(("direct-http", mode))
        if two is None or base is None:
            lines.append((None, f"{mode}: not measured"))
            continue
        seq, conc = two.seq_rate() / base.seq_rate(), two.conc_rate() / base.conc_rate()
        lines.append((seq >= RATIO_TARGET, f"{mode}, sequential: {seq:.2f}x ({two.seq_rate():,.0f} vs "
                                           f"{base.seq_rate():,.0f} calls/s)"))
        lines.append((conc >= RATIO_TARGET, f"{mode}, concurrent({args.concurrency}): {conc:.2f}x "
                                            f"({two.conc_rate():,.0f} vs {base.conc_rate():,.0f} calls/s)"))
    checks.append((f"through A -> B >= {RATIO_TARGET:.0%} of direct HTTP throughput", lines))

    lines = []
    for mode in args.modes:
        hops = [by.get((f"node{n}", mode)) for n in (1, 2, 3)]
        for (left, right), (a, b) in zip([(1, 2), (2, 3)], [(hops[0], hops[1]), (hops[1], hops[2])], strict=True):
            if a is None or b is None:
                lines.append((None, f"{mode}, {left} -> {right} nodes: not measured"))
                continue
            added = b.p(0.5) - a.p(0.5)
            lines.append((added <= HOP_TARGET_MS, f"{mode}, {left} -> {right} nodes: {added:+.2f} ms p50 "
                                                  f"({a.p(0.5):.2f} -> {b.p(0.5):.2f} ms)"))
    checks.append((f"each extra hop adds <= {HOP_TARGET_MS} ms p50", lines))

    lines = []
    pairs = [("node1", "fastmcp-stdio", "stdio upstream"), ("node1-http", "fastmcp-http", "HTTP upstream")]
    for mode in args.modes:
        for ours, theirs, what in pairs:
            a, b = by.get((ours, mode)), by.get((theirs, mode))
            if a is None or b is None:
                lines.append((None, f"{mode}, {what}: not measured ({fastmcp_note})"))
                continue
            seq, conc = a.seq_rate() / b.seq_rate(), a.conc_rate() / b.conc_rate()
            lines.append((seq >= FASTMCP_TARGET, f"{mode}, {what}, sequential: {seq:.1f}x "
                                                 f"({a.seq_rate():,.0f} vs {b.seq_rate():,.1f} calls/s)"))
            lines.append((conc >= FASTMCP_TARGET, f"{mode}, {what}, concurrent({args.concurrency}): {conc:.1f}x "
                                                  f"({a.conc_rate():,.0f} vs {b.conc_rate():,.1f} calls/s)"))
    checks.append((f"fednode (1 node) >= {FASTMCP_TARGET:g}x the FastMCP proxy, same upstream transport", lines))

    for title, results in checks:
        known = [ok for ok, _ in results if ok is not None]
        verdict = "n/a " if not known else "PASS" if all(known) else "FAIL"
        say(f"  [{verdict}] {title}")
        for ok, text in results:
            say(f"      {'n/a ' if ok is None else 'ok  ' if ok else 'MISS'} {text}")
    if args.profile:
        say("  (nodes ran under cProfile: the fednode figures above are slowed down by it)")
    say(f"total {seconds:.1f}s; load average now {os.getloadavg()[0]:.2f} (other processes on this machine "
        "shift every figure; the ratios of one run are measured side by side)")


# -- main ---------------------------------------------------------------------------------------


ERA = {"2026-07-28": "modern", "legacy": "legacy"}
PATH_KEYS = ("direct-http", "direct-stdio", "node1", "node2", "node3", "node1-http", "fastmcp-stdio", "fastmcp-http")


async def main(args: argparse.Namespace, profile_dir: Path | None, devnull: TextIO) -> None:
    started = time.perf_counter()
    say(f"fednode MCP benchmark: python {platform.python_version()}, mcp {package_version('mcp')}, "
        f"trio {package_version('trio')}, hypercorn {package_version('hypercorn')}, fednode {fednode.__version__}"
        f"{await git_revision()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    have_fastmcp, fastmcp_note = False, "skipped (--no-fastmcp)" if args.no_fastmcp else "skipped (not in --paths)"
    if any(key.startswith("fastmcp") for key in args.paths):
        have_fastmcp, fastmcp_note = await ensure_fastmcp(args)
    say(f"FastMCP rows: {fastmcp_note}")
    say("layout: the nodes run as `fednode run` subprocesses, not in-process: a chain A - B - C from generated TOML "
        "(the fixture attached over stdio at A, B and C, and over HTTP at A), each node with its own interpreter "
        "and event loop as deployed, and the clients' CPU work kept off the nodes' loops. The fixtures and the "
        "FastMCP proxies are subprocesses too; the clients run in this process; everything on 127.0.0.1.")
    if any(key.startswith("fastmcp") for key in args.paths):
        say("FastMCP runs one proxy process per era: a proxy serving both mirrors each request's era onto its "
            "upstream and restarts a stdio upstream at every switch between eras (~1 s each), which alternating "
            "rounds would measure instead of the proxy.")

    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        work = Path(tmp)
        procs: dict[str, Proc] = {}
        rows: list[Row] = []
        try:
            say("starting servers and nodes ...", end=" ")
            phase = time.perf_counter()
            for name in ("direct-http", "upstream-http"):
                procs[name] = Proc(name, [sys.executable, *fixture_args(name, "--http", "0")], work, pipe_stdout=True)
                await procs[name].start()
            direct_url = await procs["direct-http"].read_line("url", 30)
            upstream_url = await procs["upstream-http"].read_line("url", 30)

            ports = free_ports(6 + 2 * len(args.modes) * have_fastmcp)
            control = dict(zip("abc", ports[0:3], strict=True))
            data = dict(zip("abc", ports[3:6], strict=True))
            configs = {
                "a": node_toml("node-a", control["a"], data["a"], [("node-b", control["b"])],
                               [("fxa", "fxa"), ("fxh", upstream_url)]),
                "b": node_toml("node-b", control["b"], data["b"], [("node-a", None), ("node-c", control["c"])],
                               [("fxb", "fxb")]),
                "c": node_toml("node-c", control["c"], data["c"], [("node-b", None)], [("fxc", "fxc")]),
            }
            for n, text in configs.items():
                path = work / f"node-{n}.toml"
                path.write_text(text)
                procs[f"node-{n}"] = Proc(f"node-{n}", node_argv(path, profile_dir, f"node-{n}"), work)
            # One proxy per era: a FastMCP proxy mirrors each request's era onto its upstream session, and
            # when requests of both eras alternate it restarts its stdio upstream at every switch (~1 s each).
            fastmcp_urls: dict[tuple[str, str], str] = {}
            fastmcp_ports = iter(ports[6:])
            for kind in ("stdio", "http") if have_fastmcp else ():
                for mode in args.modes:
                    name, port = f"fastmcp-{kind}-{ERA[mode]}", next(fastmcp_ports)
                    backend = [sys.executable, *fixture_args(f"fastmcp-up-{ERA[mode]}")] if kind == "stdio" \
                        else [upstream_url]
                    procs[name] = Proc(name, [sys.executable, "-c", FASTMCP_PROXY, str(port), kind, *backend], work)
                    fastmcp_urls[(kind, mode)] = f"http://{HOST}:{port}/mcp"
            for proc in procs.values():
                if proc.process is None:
                    await proc.start()
            for n in "abc":
                await procs[f"node-{n}"].wait_port(data[n], 30)
            a_url = f"http://{HOST}:{data['a']}/mcp"
            wanted = {"fxa__add", "fxb__add", "fxc__add", "fxh__add"}
            async with Client(a_url, mode="legacy", cache=None) as probe:
                with trio.fail_after(60):
                    while True:
                        for n in "abc":
                            procs[f"node-{n}"].check_running()
                        names = {tool.name for tool in (await probe.list_tools()).tools}
                        if wanted <= names:
                            break
                        await trio.sleep(0.1)
            for (kind, mode), url in fastmcp_urls.items():
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                await procs[f"fastmcp-{kind}-{ERA[mode]}"].wait_port(port, 60)
            say(f"{time.perf_counter() - phase:.1f}s")

            def pid(name: str) -> list[int]:
                return [procs[name].pid]

            def nodes(*letters: str) -> dict[str, list[int]]:
                return {f"node {n.upper()}": pid(f"node-{n}") for n in letters}

            def stdio_target(mode: str) -> Any:
                params = StdioServerParameters(command=sys.executable, args=fixture_args(f"direct-stdio-{ERA[mode]}"))
                return stdio_client(params, errlog=devnull)

            paths = [
                PathSpec("direct-http", "direct, HTTP", "add", lambda m: direct_url,
                         lambda m: {"server": pid("direct-http")}),
                PathSpec("direct-stdio", "direct, stdio", "add", stdio_target,
                         lambda m: {"server": fixture_pids(f"direct-stdio-{ERA[m]}")}),
                PathSpec("node1", "fednode, 1 node (A)", "fxa__add", lambda m: a_url,
                         lambda m: {**nodes("a"), "server": fixture_pids("fxa")}),
                PathSpec("node2", "fednode, 2 nodes (A -> B)", "fxb__add", lambda m: a_url,
                         lambda m: {**nodes("a", "b"), "server": fixture_pids("fxb")}),
                PathSpec("node3", "fednode, 3 nodes (A -> B -> C)", "fxc__add", lambda m: a_url,
                         lambda m: {**nodes("a", "b", "c"), "server": fixture_pids("fxc")}),
                PathSpec("node1-http", "fednode, 1 node, HTTP upstream", "fxh__add", lambda m: a_url,
                         lambda m: {**nodes("a"), "server": pid("upstream-http")}),
                PathSpec("fastmcp-stdio", "FastMCP proxy, stdio upstream", "add",
                         lambda m: fastmcp_urls[("stdio", m)],
                         lambda m: {"proxy": pid(f"fastmcp-stdio-{ERA[m]}"),
                                    "server": fixture_pids(f"fastmcp-up-{ERA[m]}")}, fastmcp=True),
                PathSpec("fastmcp-http", "FastMCP proxy, HTTP upstream", "add",
                         lambda m: fastmcp_urls[("http", m)],
                         lambda m: {"proxy": pid(f"fastmcp-http-{ERA[m]}"), "server": pid("upstream-http")},
                         fastmcp=True),
            ]
            def profiling(on: bool) -> None:
                if profile_dir is not None:
                    for n in "abc":
                        process = procs[f"node-{n}"].process
                        if process is not None and process.returncode is None:
                            process.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

            rows = [Row(path, mode, args.fastmcp_calls if path.fastmcp else args.calls)
                    for path in paths if path.key in args.paths and (have_fastmcp or not path.fastmcp)
                    for mode in MODES if mode in args.modes]

            async with AsyncExitStack() as clients:
                say("connecting clients ...", end=" ")
                for row in rows:
                    try:
                        row.client = await clients.enter_async_context(
                            Client(row.path.target(row.mode), mode=row.mode, cache=None))
                    except Exception as exc:
                        failed(row, exc)
                say("measuring ...", end=" ")
                phase = time.perf_counter()
                await measure(rows, args, profiling)
                say(f"  measured in {time.perf_counter() - phase:.1f}s")
        finally:
            with trio.CancelScope(shield=True):
                statuses = {}
                for name in reversed(list(procs)):  # FastMCP proxies, then A, B, C, then the HTTP fixtures
                    statuses[name] = await procs[name].stop()
                left = sweep_fixtures()
                bad = {name: status for name, status in statuses.items()
                       if name.startswith("node-") and status not in (0, None)}
                if bad:
                    say(f"note: node exit statuses {bad} (0 expected after SIGTERM); logs:")
                    for name in bad:
                        say(procs[name].log_tail())
                if left:
                    say(f"note: killed {len(left)} leftover fixture process(es): {left}")
                for name in (name for name in procs if name.startswith("node-")):
                    problems, expected = procs[name].log_problems()
                    if problems:
                        say(f"note: {name} logged {len(problems)} unexpected warning(s)/error(s) (and {expected} "
                            "expected: resource conflicts, dials before a peer listens), e.g.:")
                        for line in problems[:4]:
                            say(f"  | {line[:300]}")

    report(rows, args, fastmcp_note, time.perf_counter() - started)
    if profile_dir is not None:
        say()
        say(f"CPU profiles of the nodes while the calls were measured ({profile_dir}/node-*.prof):")
        for n in "abc":
            path = profile_dir / f"node-{n}.prof"
            calls = sum(len(row.seq_ns) + row.conc_calls for row in rows
                        if row.ok and f"node {n.upper()}" in row.path.cpu(row.mode))
            if path.exists():
                summarize_profile(path, args.top, calls)
            else:
                say(f"  node-{n}: no profile written")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300,
                        help="calls per path and mode, for each of sequential and concurrent (300)")
    parser.add_argument("--fastmcp-calls", type=int, default=None,
                        help="calls per FastMCP row and mode (default: calls/10, at least 2 x concurrency)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (16)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating measurement rounds (10)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per row (default: calls/10)")
    parser.add_argument("--paths", default=",".join(PATH_KEYS),
                        help=f"comma-separated paths to measure (default all: {','.join(PATH_KEYS)})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated eras (default: {','.join(MODES)})")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip the FastMCP rows (and never install it)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="run the nodes under cProfile, write DIR/node-{a,b,c}.prof and summarise them")
    parser.add_argument("--top", type=int, default=15, help="functions listed per profile (15)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 60)
        args.rounds = min(args.rounds, 2)
    if args.fastmcp_calls is None:
        args.fastmcp_calls = max(args.calls // 10, 2 * args.concurrency)
    args.paths = [key.strip() for key in args.paths.split(",") if key.strip()]
    unknown = set(args.paths) - set(PATH_KEYS)
    if unknown:
        parser.error(f"unknown --paths {sorted(unknown)}; choose from {', '.join(PATH_KEYS)}")
    if args.no_fastmcp:
        args.paths = [key for key in args.paths if not key.startswith("fastmcp")]
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if min(args.calls, args.fastmcp_calls, args.concurrency, args.rounds) < 1:
        parser.error("--calls, --fastmcp-calls, --concurrency and --rounds must be >= 1")
    if args.calls < args.rounds or args.fastmcp_calls < args.rounds:
        parser.error("--calls and --fastmcp-calls must be >= --rounds")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def run(args: argparse.Namespace) -> None:
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "w") as devnull:  # the direct stdio fixture's stderr
        trio.run(main, args, profile_dir, devnull)


if __name__ == "__main__":
    run(parse_args())
