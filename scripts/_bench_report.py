"""Rows, tables and the issue's targets for ``bench_mcp.py`` (a private module of ``scripts/``).

Spread: every sequential figure is shown with the min-max of its per-round values (``[lo-hi]``),
every load figure with the min-max over its runs, so that a difference smaller than the spread
reads as what it is.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _bench_procs import percentile, say
from bench_load import LoadResult

ENTRY_TARGET_MS = {"2026-07-28": 0.5, "legacy": 1.0}  # entry node CPU per forwarded tools/call
TRANSIT_TARGET_MS = 0.3
RATIO_TARGET = 0.75  # A -> B over direct, same upstream transport
FASTMCP_TARGET = 2.0  # fednode over FastMCP with a reused session, same upstream transport
BUDGET_TARGET = 2000.0  # calls/s of one node's own CPU budget
BUDGET_WORKERS = 16  # ... from at least this many client processes
CPU_COLUMNS = ("client", "node A", "node B", "node C", "proxy", "server")


@dataclass
class PathSpec:
    """One way of reaching the fixture's ``add``."""

    key: str
    label: str
    tool: str
    target: Callable[[str], Any]  # mode -> an mcp.Client target (URL or transport)
    cpu: Callable[[str], dict[str, list[int]]]  # mode -> column -> pids whose CPU time counts there
    upstream: str  # "http" or "stdio": the transport into the fixture
    fresh: bool = False  # FastMCP's default mode: a fresh upstream session per request


@dataclass
class Row:
    """One path in one era, measured sequentially with the SDK client."""

    path: PathSpec
    mode: str
    calls: int
    client: Any = None
    seq_ns: list[int] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)  # ms, one per round
    round_cpu: dict[str, list[float]] = field(default_factory=dict)  # column -> ms per call, one per round
    cpu: dict[str, float] = field(default_factory=dict)  # column -> CPU seconds over all rounds
    failures: int = 0
    straight_failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    error: str | None = None  # set once the path is dropped

    @property
    def measured(self) -> int:
        return len(self.seq_ns)

    @property
    def ok(self) -> bool:
        return bool(self.seq_ns)

    def failed(self, exc: BaseException) -> None:
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        kind = type(leaf).__name__
        self.failures += 1
        self.straight_failures += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < 3:
            self.examples.append(f"{kind}: {leaf}"[:200])

    def drop(self, exc: BaseException) -> None:
        self.failed(exc)
        self.error = self.examples[-1]
        say(f"\n  ! {self.path.label} [{self.mode}] dropped: {exc}"[:300])

    def add_round(self, samples: list[int], cpu: dict[str, float]) -> None:
        if not samples:
            return
        self.seq_ns += samples
        self.round_p50.append(statistics.median(samples) / 1e6)
        for column, seconds in cpu.items():
            self.cpu[column] = self.cpu.get(column, 0.0) + seconds
            self.round_cpu.setdefault(column, []).append(1000 * seconds / len(samples))

    def rate(self) -> float:
        return self.measured / (sum(self.seq_ns) / 1e9)

    def p(self, fraction: float) -> float:
        return percentile(sorted(self.seq_ns), fraction) / 1e6

    def cpu_ms(self, column: str) -> float:
        return 1000 * self.cpu[column] / self.measured


def spread(values: list[float], digits: int = 2) -> str:
    return f"[{min(values):.{digits}f}-{max(values):.{digits}f}]" if len(values) > 1 else ""


# -- phase 1 ------------------------------------------------------------------------------------


def report_sequential(rows: list[Row], args: argparse.Namespace) -> None:
    by = {(row.path.key, row.mode): row for row in rows if row.ok}
    say()
    say(f"Sequential tools/call add(a, b), one caller, the SDK's mcp.Client; {args.rounds} alternating rounds; "
        "[lo-hi] = min-max of the per-round p50. 'same upstream' divides by the direct path with the fixture's "
        "transport (HTTP or stdio); 'vs direct HTTP' by direct HTTP whatever the upstream (the client leg is HTTP "
        "in both)")
    head = (f"  {'path':<42}{'mode':<12}{'calls':>6}{'failed':>7}{'calls/s':>9}{'p50 ms':>8} {'[per-round]':<14}"
            f"{'p99 ms':>7}{'same upstream':>15}{'vs direct HTTP':>16}")
    say(head)
    say("  " + "-" * (len(head) - 2))
    for row in rows:
        if not row.ok:
            say(f"  {row.path.label:<42}{row.mode:<12}  not measured: {row.error}")
            continue
        same = by.get(("direct-stdio" if row.path.upstream == "stdio" else "direct-http", row.mode))
        http = by.get(("direct-http", row.mode))
        direct = row.path.key.startswith("direct")
        same_text = f"{row.rate() / same.rate():.2f}x" if same and not direct else "-"
        http_text = f"{row.rate() / http.rate():.2f}x" if http and not direct else "-"
        say(f"  {row.path.label:<42}{row.mode:<12}{row.measured:>6}{row.failures:>7}{row.rate():>9,.0f}"
            f"{row.p(0.5):>8.2f} {spread(row.round_p50):<14}{row.p(0.99):>7.2f}{same_text:>15}{http_text:>16}"
            + (f"   (dropped: {row.error})" if row.error else ""))
    say()
    say("CPU per sequential call, ms (user+system per process, from /proc/PID/task/*/schedstat; all rounds together "
        "[min-max per round]; 'server' = the fixture the call ends at; 'client' = this process, the SDK client)")
    say(f"  {'path':<42}{'mode':<12}" + "".join(f"{c:>19}" for c in CPU_COLUMNS))
    for row in rows:
        if not row.ok:
            continue
        cells = [f"{row.cpu_ms(c):.2f} {spread(row.round_cpu[c])}" if c in row.cpu else "" for c in CPU_COLUMNS]
        say(f"  {row.path.label:<42}{row.mode:<12}" + "".join(f"{cell:>19}" for cell in cells))
    failing = [row for row in rows if row.failures]
    if failing:
        say("failed calls (counted above, not in the latencies):")
        for row in failing:
            say(f"  {row.path.label} [{row.mode}]: {row.failures} by kind {row.kinds}, e.g. {row.examples[0]!r}")


# -- phase 2 ------------------------------------------------------------------------------------


@dataclass
class LoadSummary:
    """The runs of one load target, taken together."""

    runs: list[LoadResult]
    calls: int
    seconds: float
    failures: int
    rates: list[float]
    p50s: list[float]
    p99s: list[float]
    cpu: dict[str, float]  # process -> CPU seconds over all runs

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def cpu_ms(self, name: str) -> float:
        return 1000 * self.cpu[name] / max(self.calls, 1)

    def budget(self, name: str) -> float:
        per_s = self.cpu[name] / self.seconds
        return self.rate / per_s if per_s > 0 else float("inf")


def summarize(results: list[LoadResult]) -> LoadSummary | None:
    good = [result for result in results if result.error is None and result.calls]
    if not good:
        return None
    cpu: dict[str, float] = {}
    for result in good:
        for name, seconds in result.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    return LoadSummary(good, sum(r.calls for r in good), sum(r.seconds for r in good),
                       sum(r.failures for r in good), [r.rate for r in good], [r.p50_ms for r in good],
                       [r.p99_ms for r in good], cpu)


def report_load(load: dict[tuple[str, str], list[LoadResult]], args: argparse.Namespace) -> None:
    say()
    say(f"Load: {args.workers} client processes (lean raw-HTTP client, one call in flight each), "
        f"{args.load_rounds} x {args.load_seconds:g} s per target; [lo-hi] = min-max over the runs; per process: "
        "CPU seconds per second, ms per call, and calls/s of its own CPU budget (calls/s / its CPU s per s)")
    for (_, mode), results in load.items():
        label = results[0].label
        summary = summarize(results)
        if summary is None:
            errors = {result.error for result in results if result.error} or {"no call succeeded"}
            say(f"  {label:<42}{mode:<12} not measured: {'; '.join(sorted(errors))[:300]}")
            continue
        clients = sum(r.client_cpu for r in summary.runs) / summary.seconds
        say(f"  {label:<42}{mode:<12}{summary.rate:>7,.0f} calls/s {spread(summary.rates, 0):<12} "
            f"p50 {statistics.median(summary.p50s):.2f} ms{' ' * (len(summary.runs) > 1)}{spread(summary.p50s)}, "
            f"p99 {statistics.median(summary.p99s):.2f} ms, {summary.failures} failed, clients {clients:.2f} CPU s/s")
        for name in summary.cpu:
            say(f"      {name:<12}{summary.cpu[name] / summary.seconds:.2f} CPU s/s, "
                f"{summary.cpu_ms(name):.2f} ms/call, {summary.budget(name):,.0f} calls/s of its own CPU")
        kinds: dict[str, int] = {}
        for result in results:
            for kind, count in result.kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        if kinds:
            example = next(example for result in results for example in result.examples)
            say(f"      failures by kind {kinds}, e.g. {example!r}")


# -- targets ------------------------------------------------------------------------------------

Line = tuple[bool | None, str]


def report_targets(rows: list[Row], load: dict[tuple[str, str], list[LoadResult]], args: argparse.Namespace,
                   fastmcp_note: str) -> None:
    by = {(row.path.key, row.mode): row for row in rows if row.ok}
    loads = {key: summary for key, results in load.items() if (summary := summarize(results)) is not None}
    label = {row.path.key: row.path.label for row in rows} | {key: r[0].label for (key, _), r in load.items()}
    n = args.workers

    def ratio_lines(mode: str, ours: str, ref: str, target: float) -> list[tuple[bool | None, str]]:
        """``ours`` over ``ref`` in calls/s, sequentially and under load, each against ``target``."""
        found: list[tuple[bool | None, str]] = []
        a, b = by.get((ours, mode)), by.get((ref, mode))
        if a is not None and b is not None:
            ratio = a.rate() / b.rate()
            found.append((ratio >= target, f"{mode}, {a.path.label} / {b.path.label}, sequential: "
                                           f"{ratio:.2f}x ({a.rate():,.0f} vs {b.rate():,.0f} calls/s)"))
        x, y = loads.get((ours, mode)), loads.get((ref, mode))
        if x is not None and y is not None:
            ratio = x.rate / y.rate
            found.append((ratio >= target, f"{mode}, {label[ours]} / {label[ref]}, {n} client processes: "
                                           f"{ratio:.2f}x ({x.rate:,.0f} vs {y.rate:,.0f} calls/s)"))
        return found
    checks: list[tuple[str, list[Line]]] = []

    lines: list[Line] = []
    for mode in args.modes:
        limit = ENTRY_TARGET_MS[mode]
        for key in ("node2-http", "node2"):
            if (row := by.get((key, mode))) is not None:
                ms = row.cpu_ms("node A")
                lines.append((ms <= limit, f"{mode}, {row.path.label}, sequential: {ms:.2f} ms "
                                           f"{spread(row.round_cpu['node A'])} (target {limit} ms)"))
            if (summary := loads.get((key, mode))) is not None and "node A" in summary.cpu:
                ms = summary.cpu_ms("node A")
                lines.append((ms <= limit, f"{mode}, {label[key]}, {n} client processes: {ms:.2f} ms "
                                           f"(target {limit} ms)"))
    checks.append(("entry node CPU per forwarded tools/call <= 0.5 ms (2026-07-28), <= 1.0 ms (legacy)", lines))

    lines = []
    for mode in args.modes:
        if (row := by.get(("node3", mode))) is not None:
            ms = row.cpu_ms("node B")
            lines.append((ms <= TRANSIT_TARGET_MS, f"{mode}, node B in A -> B -> C, sequential: {ms:.2f} ms "
                                                   f"{spread(row.round_cpu['node B'])}"))
    checks.append((f"transit node CPU per tools/call <= {TRANSIT_TARGET_MS} ms", lines))

    lines = []
    for mode in args.modes:
        for ours, ref in (("node2-http", "direct-http"), ("node2", "direct-stdio")):
            lines += ratio_lines(mode, ours, ref, RATIO_TARGET)
        if ("node2", mode) in loads:
            lines.append((None, f"{mode}, stdio upstream, {n} client processes: no reference (the load clients "
                                "speak HTTP; a direct stdio server has one client)"))
    checks.append((f"A -> B >= {RATIO_TARGET}x of direct, same upstream transport", lines))

    lines = []
    for mode in args.modes:
        for ours, theirs in (("node1", "fastmcp-stdio"), ("node1-http", "fastmcp-http")):
            lines += ratio_lines(mode, ours, theirs, FASTMCP_TARGET)
    if not lines:
        lines.append((None, f"not measured in this run (FastMCP: {fastmcp_note})"))
    checks.append((f"fednode (1 node) >= {FASTMCP_TARGET:g}x FastMCP with a reused session, same upstream transport",
                   lines))

    lines = []
    for (key, mode), summary in loads.items():
        if key.startswith("node") and "node A" in summary.cpu:
            budget = summary.budget("node A")
            ok = budget >= BUDGET_TARGET if n >= BUDGET_WORKERS else None
            lines.append((ok, f"{mode}, node A in {label[key]}, {n} client processes: {budget:,.0f} calls/s of its "
                              f"own CPU ({summary.rate:,.0f} calls/s at {summary.cpu['node A'] / summary.seconds:.2f} "
                              "CPU s/s)"))
    checks.append((f"one node >= {BUDGET_TARGET:,.0f} calls/s of its own CPU budget from {BUDGET_WORKERS}+ client "
                   "processes", lines))

    say()
    say("Targets of issue 14 (measured in this run; PASS = every measured line meets it)")
    for title, results in checks:
        known = [ok for ok, _ in results if ok is not None]
        verdict = "n/a " if not known else "PASS" if all(known) else "FAIL"
        say(f"  [{verdict}] {title}")
        for ok, text in results:
            say(f"      {'n/a ' if ok is None else 'ok  ' if ok else 'MISS'} {text}")
        if not results:
            say("      n/a  not measured in this run")
    if args.profile:
        say("  (nodes ran under cProfile in the sequential phase: its fednode figures are slowed down by it)")
