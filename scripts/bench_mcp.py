#!/usr/bin/env python3
"""Benchmark MCP ``tools/call`` through fednode against direct calls and FastMCP proxies, in one run.

Every path ends at the same tool (the SDK-built fixture's ``add``), in both protocol eras
(``2026-07-28`` and ``legacy``). The client always speaks Streamable HTTP to the entry point (the
fixture itself, node A, or a proxy); what differs is the *upstream* transport, the one between the
last hop and the fixture. Every ratio compares paths with the same upstream transport:

* ``direct, HTTP``: the fixture serving Streamable HTTP itself: the reference for HTTP upstreams;
* ``direct, stdio``: the fixture as a child process of the client: the reference for stdio upstreams
  (its client leg is a pipe, not HTTP: a chain ending in stdio pays one HTTP leg it does not);
* ``fednode A``, ``A -> B``, ``A -> B -> C``, stdio upstream: the fixture attached over stdio at the
  last node; ``fednode A`` and ``A -> B``, HTTP upstream: a fixture serving HTTP attached by URL at A,
  and at B;
* FastMCP's ``create_proxy`` in front of the fixture, over stdio and over HTTP, each with ONE
  REUSED upstream session (a connected client passed to ``create_proxy``: the fair reference) and in
  FastMCP's default mode (a fresh upstream session per request; labelled "fresh", fewer calls).
  FastMCP is installed into this interpreter's environment on first use (only for the benchmark).

Phase 1, sequential (one caller, the official SDK's ``mcp.Client``, ``cache=None``): every client
is opened and warmed up, then ``--rounds`` rounds alternate between the paths (in a rotating
order) so that drift hits all alike; each row reports calls/s, p50 and p99 with the spread of the
per-round p50 (min-max), and the CPU time each process spent per call (user+system, from
``/proc/PID/task/*/schedstat`` in ns; ``/proc/PID/stat`` counts 10 ms ticks; per node, proxy,
fixture and this client), over all rounds together and min-max per round.

Phase 2, load (``bench_load.py``): ``--workers`` client processes, each with a lean raw-HTTP
client and one call in flight, synchronised start, ``--load-seconds`` per run, ``--load-rounds``
runs per target in rotating order; calls/s, p50/p99, failures, and per node its CPU seconds per
second and "calls/s of its own CPU budget" (calls/s / CPU s per s). A null JSON-RPC server shows
the generator's own ceiling.

A failed call is counted (by kind, with an example) and the run goes on; a path that keeps failing
is dropped with a note. Results are printed as each phase ends (each load run as it ends), and
what was measured is printed too when the run is stopped (Ctrl-C, SIGTERM, SIGHUP). The issue's
targets are printed as PASS/FAIL lines with the measured figures, never as an exit status.

Process layout: nodes (``fednode run``, a chain A - B - C from generated TOML), fixtures, proxies
and load workers are subprocesses; the SDK clients run in this process; all on 127.0.0.1. On a
2-core machine everything shares the cores: throughput is a whole-system figure, which is why CPU
per call per process is reported beside it. Every process started is ended by PID at the end.

Usage::

    .venv/bin/python scripts/bench_mcp.py            # default run (about 4 minutes on 2 cores)
    .venv/bin/python scripts/bench_mcp.py --quick    # smoke run (about 1.5 minutes)
    .venv/bin/python scripts/bench_mcp.py --paths node2,direct-http --modes 2026-07-28 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

import trio
from _bench_procs import (
    FASTMCP_PROXY,
    HOST,
    TAG,
    Proc,
    cpu_seconds,
    ensure_fastmcp,
    fixture_args,
    fixture_pids,
    free_ports,
    git_revision,
    node_argv,
    node_toml,
    own_cpu_seconds,
    package_version,
    say,
    split,
    sweep_fixtures,
)
from _bench_profile import summarize_profile
from _bench_report import PathSpec, Row, report_load, report_sequential, report_targets
from bench_load import LoadPool, LoadResult, start_null_server, stop
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

import fednode

MODES = ("2026-07-28", "legacy")
ERA = {"2026-07-28": "modern", "legacy": "legacy"}
PATH_KEYS = ("direct-http", "direct-stdio", "node1", "node1-http", "node2", "node2-http", "node3",
             "fastmcp-stdio", "fastmcp-http", "fastmcp-stdio-fresh", "fastmcp-http-fresh")
LOAD_KEYS = ("null", "direct-http", "node1", "node1-http", "node2", "node2-http", "fastmcp-stdio", "fastmcp-http")
CALL_TIMEOUT = 30.0  # s: one SDK call; past it the call counts as failed
MAX_STRAIGHT_FAILURES = 10  # a path failing this many calls in a row is dropped from the run


# -- phase 1: sequential, SDK client ---------------------------------------------------------------


class PathBroken(Exception):
    """A path failed too many calls in a row: it is dropped, the run goes on."""


async def call(row: Row, i: int) -> None:
    with trio.fail_after(CALL_TIMEOUT):
        result = await row.client.call_tool(row.path.tool, {"a": i, "b": 1})
    if result.is_error or result.structured_content != {"result": i + 1}:
        raise RuntimeError(f"unexpected result for add({i}, 1): {result!r}"[:300])


async def run_sequential(row: Row, count: int, first: int, samples: list[int] | None) -> None:
    """``count`` calls one at a time; a failed call is counted on the row, not raised."""
    clock = time.perf_counter_ns
    for i in range(first, first + count):
        started = clock()
        try:
            await call(row, i)
        except Exception as exc:  # any failure of one call: counted, the run goes on
            row.failed(exc)
            if row.straight_failures >= MAX_STRAIGHT_FAILURES:
                raise PathBroken(f"{row.straight_failures} calls failed in a row, last: {row.examples[-1]}") from exc
            continue
        row.straight_failures = 0
        if samples is not None:
            samples.append(clock() - started)


def cpu_snapshot(row: Row, *, before: bool) -> dict[str, dict[int, float]]:
    """CPU seconds per process, by column. Pids are looked up each time (a proxy may spawn its
    upstream anew); this process's own time is read last before the calls and first after them, so
    the /proc scans are not charged to the client."""
    snapshot: dict[str, dict[int, float]] = {}
    if not before:
        snapshot["client"] = {0: own_cpu_seconds()}
    for column, pids in row.path.cpu(row.mode).items():
        snapshot[column] = {pid: cpu_seconds(pid) for pid in pids}
    if before:
        snapshot["client"] = {0: own_cpu_seconds()}
    return snapshot


async def measure_sequential(rows: list[Row], args: argparse.Namespace, profiling: Callable[[bool], None]) -> None:
    for row in rows:  # warm up: the client lists tools (output schema), caches, lazy imports, upstream sessions
        if row.error is None:
            try:
                await row.client.list_tools()
                await run_sequential(row, max(5, row.calls // 10) if args.warmup is None else args.warmup, 0, None)
            except Exception as exc:
                row.drop(exc)
            row.failures, row.kinds, row.examples = 0, {}, []  # warm-up failures are not the measurement's
    profiling(True)
    say("sequential rounds: ", end="")
    for r in range(args.rounds):
        live = [row for row in rows if row.error is None]
        shift = r % len(live) if live else 0
        for row in live[shift:] + live[:shift]:
            n = split(row.calls, args.rounds)[r]
            before = cpu_snapshot(row, before=True)
            samples: list[int] = []
            try:
                await run_sequential(row, n, 10_000 * (r + 1), samples)
            except PathBroken as exc:
                row.drop(exc)
            after = cpu_snapshot(row, before=False)
            row.add_round(samples, {column: sum(value - before[column].get(pid, 0.0) for pid, value in times.items())
                                    for column, times in after.items()})
        say(f"{r + 1}", end=" ")
    profiling(False)
    say()


# -- phase 2: load from client processes -------------------------------------------------------------


async def measure_load(targets: list[tuple[str, str, str, str, Callable[[], dict[str, list[int]]]]],
                       args: argparse.Namespace,
                       work: Path, results: dict[tuple[str, str], list[LoadResult]]) -> None:
    """Each (key, mode, url, tool, pids) target ``--load-rounds`` times, rotating, into ``results``;
    each run printed as it ends."""
    say(f"load: {args.workers} client processes (lean raw-HTTP client, 1 call in flight each), "
        f"{args.load_seconds:g} s per run, {args.load_rounds} round(s); each run as it ends:")
    pool = await trio.to_thread.run_sync(LoadPool, args.workers, work)
    try:
        for r in range(args.load_rounds):
            shift = r % len(targets) if targets else 0
            for key, mode, url, tool, pids in targets[shift:] + targets[:shift]:
                label = LABELS[key]
                try:
                    result = await trio.to_thread.run_sync(functools.partial(
                        pool.run, label, url, mode, tool, seconds=args.load_seconds, pids=pids))
                except RuntimeError as exc:  # a worker died or hung: this run is lost, not the benchmark
                    result = LoadResult(label, mode, args.workers, args.load_seconds, error=str(exc))
                results.setdefault((key, mode), []).append(result)
                say(f"  r{r + 1} {result.line()}")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)


# -- main ---------------------------------------------------------------------------------------

LABELS = {
    "null": "null JSON-RPC server (generator ceiling)",
    "direct-http": "direct, HTTP",
    "direct-stdio": "direct, stdio",
    "node1": "fednode A, stdio upstream",
    "node1-http": "fednode A, HTTP upstream",
    "node2": "fednode A -> B, stdio upstream",
    "node2-http": "fednode A -> B, HTTP upstream",
    "node3": "fednode A -> B -> C, stdio upstream",
    "fastmcp-stdio": "FastMCP proxy, stdio up, reused session",
    "fastmcp-http": "FastMCP proxy, HTTP up, reused session",
    "fastmcp-stdio-fresh": "FastMCP proxy, stdio up, fresh (default)",
    "fastmcp-http-fresh": "FastMCP proxy, HTTP up, fresh (default)",
}


class Bench:
    """The processes of one run (fixtures, nodes A - B - C, FastMCP proxies) and the paths through them."""

    def __init__(self, args: argparse.Namespace, work: Path, profile_dir: Path | None, devnull: TextIO) -> None:
        self.args, self.work, self.profile_dir, self.devnull = args, work, profile_dir, devnull
        self.procs: dict[str, Proc] = {}
        self.fastmcp_urls: dict[tuple[str, str, str], str] = {}
        self.direct_url = self.upstream_url = self.a_url = ""

    async def start(self, have_fastmcp: bool) -> None:
        procs, work = self.procs, self.work
        for name in ("direct-http", "upstream-http"):
            procs[name] = Proc(name, [sys.executable, *fixture_args(name, "--http", "0")], work, pipe_stdout=True)
            await procs[name].start()
        self.direct_url = await procs["direct-http"].read_line("url", 30)
        self.upstream_url = upstream = await procs["upstream-http"].read_line("url", 30)
        setups = [(kind, session, mode) for kind in ("stdio", "http") for session in ("reused", "fresh")
                  for mode in self.args.modes] if have_fastmcp else []
        ports = free_ports(6 + len(setups))
        control, data = dict(zip("abc", ports[0:3], strict=True)), dict(zip("abc", ports[3:6], strict=True))
        configs = {
            "a": node_toml("node-a", control["a"], data["a"], [("node-b", control["b"])],
                           [("fxa", "fxa"), ("fxh", upstream)]),
            "b": node_toml("node-b", control["b"], data["b"], [("node-a", None), ("node-c", control["c"])],
                           [("fxb", "fxb"), ("fxbh", upstream)]),
            "c": node_toml("node-c", control["c"], data["c"], [("node-b", None)], [("fxc", "fxc")]),
        }
        for n, text in configs.items():
            path = work / f"node-{n}.toml"
            path.write_text(text)
            procs[f"node-{n}"] = Proc(f"node-{n}", node_argv(path, self.profile_dir, f"node-{n}"), work)
        # One proxy per era and setup: a reused session has one era, and a "fresh" proxy serving both
        # eras restarts a stdio upstream at every switch between them (~1 s), which rounds would measure.
        for (kind, session, mode), port in zip(setups, ports[6:], strict=True):
            name = f"fastmcp-{kind}-{session}-{ERA[mode]}"
            backend = [sys.executable, *fixture_args(f"up-{name}")] if kind == "stdio" else [upstream]
            procs[name] = Proc(name, [sys.executable, "-c", FASTMCP_PROXY, str(port), kind, session, mode, *backend],
                               work)
            self.fastmcp_urls[(kind, session, mode)] = f"http://{HOST}:{port}/mcp"
        for proc in procs.values():
            if proc.process is None:
                await proc.start()
        for n in "abc":
            await procs[f"node-{n}"].wait_port(data[n], 30)
        self.a_url = f"http://{HOST}:{data['a']}/mcp"
        wanted = {"fxa__add", "fxb__add", "fxc__add", "fxh__add", "fxbh__add"}
        async with Client(self.a_url, mode="legacy", cache=None) as probe:
            with trio.fail_after(60):
                while True:
                    for n in "abc":
                        procs[f"node-{n}"].check_running()
                    if wanted <= {tool.name for tool in (await probe.list_tools()).tools}:
                        break
                    await trio.sleep(0.1)
        for (kind, session, mode), url in self.fastmcp_urls.items():
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            await procs[f"fastmcp-{kind}-{session}-{ERA[mode]}"].wait_port(port, 60)

    def pid(self, name: str) -> list[int]:
        return [self.procs[name].pid]

    def nodes(self, *letters: str) -> dict[str, list[int]]:
        return {f"node {n.upper()}": self.pid(f"node-{n}") for n in letters}

    def paths(self) -> list[PathSpec]:
        """Every path of this run, each with its client target and the processes whose CPU counts."""
        pid, nodes, a_url = self.pid, self.nodes, self.a_url

        def stdio_target(mode: str) -> Any:
            params = StdioServerParameters(command=sys.executable, args=fixture_args(f"direct-stdio-{ERA[mode]}"))
            return stdio_client(params, errlog=self.devnull)

        def fastmcp(kind: str, session: str) -> PathSpec:
            def name(mode: str) -> str:
                return f"fastmcp-{kind}-{session}-{ERA[mode]}"

            def cpu(mode: str) -> dict[str, list[int]]:
                server = fixture_pids(f"up-{name(mode)}", prefix=True) if kind == "stdio" else pid("upstream-http")
                return {"proxy": pid(name(mode)), "server": server}
            key = f"fastmcp-{kind}" + ("-fresh" if session == "fresh" else "")
            return PathSpec(key, LABELS[key], "add", lambda m: self.fastmcp_urls[(kind, session, m)], cpu, kind,
                            fresh=session == "fresh")

        return [
            PathSpec("direct-http", LABELS["direct-http"], "add", lambda m: self.direct_url,
                     lambda m: {"server": pid("direct-http")}, "http"),
            PathSpec("direct-stdio", LABELS["direct-stdio"], "add", stdio_target,
                     lambda m: {"server": fixture_pids(f"direct-stdio-{ERA[m]}")}, "stdio"),
            PathSpec("node1", LABELS["node1"], "fxa__add", lambda m: a_url,
                     lambda m: {**nodes("a"), "server": fixture_pids("fxa")}, "stdio"),
            PathSpec("node1-http", LABELS["node1-http"], "fxh__add", lambda m: a_url,
                     lambda m: {**nodes("a"), "server": pid("upstream-http")}, "http"),
            PathSpec("node2", LABELS["node2"], "fxb__add", lambda m: a_url,
                     lambda m: {**nodes("a", "b"), "server": fixture_pids("fxb")}, "stdio"),
            PathSpec("node2-http", LABELS["node2-http"], "fxbh__add", lambda m: a_url,
                     lambda m: {**nodes("a", "b"), "server": pid("upstream-http")}, "http"),
            PathSpec("node3", LABELS["node3"], "fxc__add", lambda m: a_url,
                     lambda m: {**nodes("a", "b", "c"), "server": fixture_pids("fxc")}, "stdio"),
            *([fastmcp(kind, session) for kind in ("stdio", "http") for session in ("reused", "fresh")]
              if self.fastmcp_urls else []),
        ]

    def profiling(self, on: bool) -> None:
        """Switch the nodes' cProfile on or off (``--profile``)."""
        if self.profile_dir is not None:
            for n in "abc":
                process = self.procs[f"node-{n}"].process
                if process is not None and process.returncode is None:
                    process.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    async def stop(self) -> None:
        """End every process (by PID), then report node exit statuses and unexpected log lines."""
        procs = self.procs
        with trio.CancelScope(shield=True):
            statuses = {}
            for name in reversed(list(procs)):  # FastMCP proxies, then C, B, A, then the HTTP fixtures
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
                say(f"note: {name} logged {len(problems)} unexpected warning(s)/error(s) (and {expected} expected: "
                    "resource conflicts, dials before a peer listens, upstream connections shared under load), e.g.:")
                for line in problems[:4]:
                    say(f"  | {line[:300]}")


async def run_phases(bench: Bench, rows: list[Row], load: dict[tuple[str, str], list[LoadResult]]) -> None:
    """Sequential, then load; ``rows`` and ``load`` filled as measured, each phase's table printed as it ends."""
    args = bench.args
    paths = bench.paths()
    rows += [Row(path, mode, args.fresh_calls if path.fresh else args.calls)
             for path in paths if path.key in args.paths for mode in args.modes]
    if rows:
        async with AsyncExitStack() as clients:
            say("connecting SDK clients ...", end=" ")
            for row in rows:
                try:
                    row.client = await clients.enter_async_context(
                        Client(row.path.target(row.mode), mode=row.mode, cache=None))
                except Exception as exc:
                    row.drop(exc)
            phase = time.perf_counter()
            try:
                await measure_sequential(rows, args, bench.profiling)
                say(f"sequential phase: {time.perf_counter() - phase:.1f}s")
            finally:  # also when interrupted: what was measured so far
                report_sequential(rows, args)
    by_key = {path.key: path for path in paths}
    targets: list[tuple[str, str, str, str, Callable[[], dict[str, list[int]]]]] = []
    null_server = None
    try:
        for key in args.load_paths:
            if key == "null":
                null_server, null_url = start_null_server(lifetime=3600)  # or until this process ends
                null_pids: Callable[[], dict[str, list[int]]] = functools.partial(
                    dict, {"null server": [null_server.pid]})
                targets += [("null", mode, null_url, "add", null_pids) for mode in args.modes]
            elif key in by_key:
                spec = by_key[key]
                targets += [(key, mode, spec.target(mode), spec.tool, functools.partial(spec.cpu, mode))
                            for mode in args.modes]
        if targets:
            try:
                await measure_load(targets, args, bench.work, load)
            finally:
                report_load(load, args)
    finally:
        if null_server is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stop, null_server)


async def main(args: argparse.Namespace, profile_dir: Path | None, devnull: TextIO) -> None:
    started = time.perf_counter()
    say(f"fednode MCP benchmark: python {platform.python_version()}, mcp {package_version('mcp')}, "
        f"trio {package_version('trio')}, hypercorn {package_version('hypercorn')}, fednode {fednode.__version__}"
        f"{await git_revision()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    say(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    want_fastmcp = any(key.startswith("fastmcp") for key in args.paths + args.load_paths)
    have_fastmcp, fastmcp_note = (await ensure_fastmcp()) if want_fastmcp else (False, "skipped (not asked for)")
    say(f"FastMCP rows: {fastmcp_note}")
    rows: list[Row] = []
    load: dict[tuple[str, str], list[LoadResult]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
            bench = Bench(args, Path(tmp), profile_dir, devnull)
            try:
                say("starting fixtures, nodes and proxies ...", end=" ")
                phase = time.perf_counter()
                await bench.start(have_fastmcp)
                say(f"{time.perf_counter() - phase:.1f}s")
                await run_phases(bench, rows, load)
            finally:
                await bench.stop()
    finally:  # also when interrupted: the targets, as far as they were measured
        if rows or load:
            report_targets(rows, load, args, fastmcp_note)
    if profile_dir is not None:
        say()
        say(f"CPU profiles of the nodes during the sequential phase ({profile_dir}/node-*.prof):")
        for n in "abc":
            calls = sum(row.measured for row in rows if f"node {n.upper()}" in row.cpu)
            path = profile_dir / f"node-{n}.prof"
            if path.exists():
                summarize_profile(path, args.top, calls)
            else:
                say(f"  node-{n}: no profile written")
    say(f"total {time.perf_counter() - started:.1f}s; load average now {os.getloadavg()[0]:.2f} (other processes "
        f"on this machine shift every figure; the ratios of one run are measured side by side); run tag {TAG}")


async def main_until_signalled(args: argparse.Namespace, profile_dir: Path | None, devnull: TextIO) -> None:
    """``main``, cancelled by SIGTERM or SIGHUP: what was measured is printed and every process ended."""
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    say(f"\n{signal.Signals(signum).name}: stopping; what was measured follows")
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await main(args, profile_dir, devnull)
        nursery.cancel_scope.cancel()


def keys(parser: argparse.ArgumentParser, option: str, text: str, known: tuple[str, ...]) -> list[str]:
    chosen = [key.strip() for key in text.split(",") if key.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown {option} {unknown}; choose from {', '.join(known)}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per path and era (300)")
    parser.add_argument("--fresh-calls", type=int, default=None,
                        help="sequential calls per FastMCP row in its default fresh-session mode (calls/10)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating sequential rounds (10)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per row (default: calls/10)")
    parser.add_argument("--workers", type=int, default=16, help="load: client processes (16)")
    parser.add_argument("--load-seconds", type=float, default=3.0, help="load: seconds per run (3)")
    parser.add_argument("--load-rounds", type=int, default=2, help="load: runs per target (2)")
    parser.add_argument("--paths", default=",".join(PATH_KEYS), help=f"sequential paths ({','.join(PATH_KEYS)})")
    parser.add_argument("--load-paths", default=",".join(LOAD_KEYS),
                        help=f"load targets ({','.join(LOAD_KEYS)}); empty for none")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated eras ({','.join(MODES)})")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip the FastMCP rows (and never install it)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="run the nodes under cProfile during the sequential phase; write and summarise "
                             "DIR/node-{a,b,c}.prof")
    parser.add_argument("--top", type=int, default=15, help="functions listed per profile (15)")
    parser.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds = min(args.calls, 60), min(args.rounds, 3)
        args.load_seconds, args.load_rounds = min(args.load_seconds, 1.5), 1
    if args.fresh_calls is None:
        args.fresh_calls = max(args.calls // 10, args.rounds)
    args.paths = keys(parser, "--paths", args.paths, PATH_KEYS)
    args.load_paths = keys(parser, "--load-paths", args.load_paths, LOAD_KEYS)
    if args.no_fastmcp:
        args.paths = [key for key in args.paths if not key.startswith("fastmcp")]
        args.load_paths = [key for key in args.load_paths if not key.startswith("fastmcp")]
    args.modes = keys(parser, "--modes", args.modes, MODES)
    if not args.modes:
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if min(args.calls, args.fresh_calls, args.rounds, args.workers, args.load_rounds) < 1:
        parser.error("--calls, --fresh-calls, --rounds, --workers and --load-rounds must be >= 1")
    if args.calls < args.rounds or args.fresh_calls < args.rounds:
        parser.error("--calls and --fresh-calls must be >= --rounds")
    if not 0 < args.load_seconds <= 120 or (args.warmup is not None and args.warmup < 0):
        parser.error("--load-seconds must be in (0, 120], --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> None:
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "w") as devnull:  # the direct stdio fixture's stderr
        trio.run(main_until_signalled, args, profile_dir, devnull)


if __name__ == "__main__":
    run(parse_args())
