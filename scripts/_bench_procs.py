"""Processes and /proc readings shared by the MCP benchmarks (``bench_mcp.py``, ``bench_load.py``).

A private module of ``scripts/``: the scripts put their own folder on ``sys.path`` (as running
``python scripts/X.py`` does), so ``import _bench_procs`` finds it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO

import trio

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "tests" / "mcp_fixtures" / "test_server.py")
FEDNODE = str(Path(sys.executable).parent / "fednode")
#: A benchmark-only HS512 secret (>= 64 bytes); never a real deployment's.
SECRET = "bench-secret-" + "0123456789abcdef" * 5
TAG = f"bench{os.getpid()}"  # in every fixture's --name: finds (and, at the end, sweeps) this run's fixtures
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SCHEDSTAT = os.path.exists(f"/proc/self/task/{os.getpid()}/schedstat")

# A FastMCP proxy (``create_proxy``) on 127.0.0.1:PORT in front of the fixture, in one of two setups:
# "fresh", FastMCP's default for a URL or a transport (a new upstream session for every request,
# its era mirrored from the request), or "reused": one upstream session, opened at start in ERA
# and passed to ``create_proxy`` as a connected client, which FastMCP then reuses for every request.
FASTMCP_PROXY = """
import asyncio, sys
from fastmcp import Client
from fastmcp.server import create_proxy
port, kind, session, era, target = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
if kind == "stdio":
    from fastmcp.client.transports import StdioTransport
    backend = StdioTransport(command=target[0], args=target[1:])
else:
    backend = target[0]
async def main():
    serve = dict(transport="http", host="127.0.0.1", port=port, show_banner=False, log_level="WARNING")
    if session == "fresh":
        await create_proxy(backend, name="fastmcp-proxy").run_async(**serve)
        return
    async with Client(backend, mode=era) as client:
        await create_proxy(client, name="fastmcp-proxy").run_async(**serve)
asyncio.run(main())
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
    """User + system CPU time of a process in seconds (0 once it is gone).

    Read from ``/proc/PID/task/*/schedstat`` (the scheduler's run time in nanoseconds, summed over
    the live threads) where the kernel has it: ``/proc/PID/stat``'s utime+stime count whole clock
    ticks (10 ms at 100 Hz), too coarse for a round of calls costing a few ms each. What a thread
    that exited in between had run is lost from the schedstat sum; the nodes run their calls on one
    thread, so that is only start-up or DNS helper threads.
    """
    if not SCHEDSTAT:
        return stat_cpu_seconds(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as file:
                total += int(file.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def stat_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from ``/proc/PID/stat`` (clock ticks; 0 once it is gone)."""
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

        Expected here: resource conflicts (the same fixture is attached several times, and resources
        keep their URIs), failed dials of a peer that is not listening yet (all nodes start at once),
        and ``session.shared``: under load, more legacy client sessions than a server's share of
        upstream connections (each load worker opens its own session) share connections.
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
            if name in ("catalog.conflict", "session.shared") or (
                    name == "peer.connect_failed" and "all attempts to connect" in error):
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


# -- FastMCP ------------------------------------------------------------------------------------


async def ensure_fastmcp() -> tuple[bool, str]:
    """(available, note): install FastMCP into this interpreter's environment when it is missing."""
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


