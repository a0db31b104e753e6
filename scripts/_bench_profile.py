"""Summaries of cProfile output of the nodes, for ``bench_mcp.py --profile DIR``.

A private module of ``scripts/`` (see ``_bench_procs``): where a node's CPU went, by package, with
counts per call of what costs (task spawns, socket sends, pydantic validations) and the heaviest functions.
"""

from __future__ import annotations

import pstats
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench_procs import say

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


