#!/usr/bin/env python3
"""A simulated federation of many fednode nodes in one process: convergence and cost per change.

Every node is a real :class:`fednode.Node` (peers layer, federation, route proofs, catalog) with one
server of its own attached; links are WebSocket pairs over in-memory streams; time is Trio's
MockClock (autojump), so every figure but the wall time is in virtual time and the same on any
machine. Per topology (chain, ring, random degree 4, two regions of degree 4 joined by 2 links):

1. start: every node and link comes up; the mesh settles (memory per node measured here, with
   tracemalloc: everything allocated from before the first node to the settled mesh, / nodes);
2. server: a server appears at ``n000``;
3. link: a link dies (chain: the middle one; ring: ``n000-n001``; random: the first link of
   ``n000``; regions: one of the two bridges);
4. node: a node dies (chain: ``n001``; ring: ``n050``; random: ``n001``; regions: an end of the
   other bridge, which cuts the regions apart).

Each change is measured until the mesh is quiet (no best route changed and no route frame sent
for 5 virtual seconds), and then every node's table is checked against a breadth-first search of
the graph (column ``ok``). Convergence is the time of the last best-route change anywhere; the
target is the issue's: diameter x one advertisement interval (``1 / ROUTE_UPDATES_PER_SECOND`` =
0.5 s, a peer's route updates are applied at most that often) + 1 s, the diameter capped at
MAX_PATH (routes go no farther). Frames and bytes are the ``fed/routes`` messages written on every
link (heartbeats left out); ``per link`` is frames / (2 x links): a change that every node passes to
every neighbour once costs 1.

Usage::

    .venv/bin/python scripts/bench_mesh.py                       # 100 nodes, every topology
    .venv/bin/python scripts/bench_mesh.py --quick               # 30 nodes
    .venv/bin/python scripts/bench_mesh.py --nodes 50 --topologies ring,random --no-memory

The exit status is 1 if a change did not settle to the expected routes (a bug), else 0: the
targets are reported, not enforced (tests/test_mesh_sim.py enforces them on smaller meshes).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import tracemalloc
from pathlib import Path

import structlog
import trio
import trio.testing

from fednode._federation._route_intake import ROUTE_UPDATES_PER_SECOND

# The simulation is shared with tests/test_mesh_sim.py; it lives with the tests (it drives nodes
# through test-only hooks), so the script imports it from there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import meshsim

INTERVAL = 1.0 / ROUTE_UPDATES_PER_SECOND
COLUMNS = ("topology", "nodes", "links", "diam", "change", "converged", "target", "frames", "per link",
           "KiB", "KiB/node", "ok", "CPU s", "wall s")


def target(diameter: int) -> float:
    """The issue's bound on convergence after one change (virtual seconds)."""
    return diameter * INTERVAL + 1.0


def row(topology: meshsim.Topology, outcome: meshsim.Outcome, cpu: float, wall: float, memory: str = "") -> str:
    links = len(topology.links)
    cells = (topology.name, str(len(topology.nodes)), str(links), str(outcome.diameter), outcome.change,
             f"{outcome.convergence:.1f} s" if outcome.settled else f"> {meshsim.SETTLE_BOUND:.0f} s",
             f"{target(outcome.diameter):.1f} s", f"{outcome.frames:,}", f"{outcome.frames / (2 * links):.2f}",
             f"{outcome.bytes / 1024:,.0f}", memory, "yes" if outcome.correct else "NO", f"{cpu:.1f}", f"{wall:.1f}")
    return "| " + " | ".join(cells) + " |"


async def run_topology(topology: meshsim.Topology, memory: bool = True) -> list[meshsim.Outcome]:
    """Start ``topology`` and make the changes, printing a row for each as it comes. With ``memory``,
    the start runs under tracemalloc (about twice the CPU)."""
    outcomes = []
    async with trio.open_nursery() as nursery:
        mesh = meshsim.Mesh(topology)
        gc.collect()
        if memory:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        cpu, wall = time.process_time(), time.perf_counter()
        started, frames = trio.current_time(), mesh.traffic.snapshot()
        await mesh.start(nursery)
        outcome = await mesh.settle("start", started, frames)
        gc.collect()
        per_node = (tracemalloc.get_traced_memory()[0] - before) / len(topology.nodes) / 1024
        tracemalloc.stop()
        print(row(topology, outcome, time.process_time() - cpu, time.perf_counter() - wall,
                  f"{per_node:,.0f}" if memory else ""), flush=True)
        outcomes.append(outcome)
        for change, act in mesh.changes():
            cpu, wall = time.process_time(), time.perf_counter()
            outcome = await mesh.measure(change, act)
            print(row(topology, outcome, time.process_time() - cpu, time.perf_counter() - wall), flush=True)
            for problem in outcome.problems:
                print(f"    {problem}", file=sys.stderr)
            outcomes.append(outcome)
        nursery.cancel_scope.cancel()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes per topology (default 100)")
    parser.add_argument("--topologies", default="chain,ring,random,regions",
                        help=f"comma-separated, of {', '.join(meshsim.TOPOLOGIES)}")
    parser.add_argument("--quick", action="store_true", help="30 nodes (a smoke run)")
    parser.add_argument("--no-memory", action="store_true", help="no tracemalloc at start (faster; no KiB/node)")
    args = parser.parse_args()
    nodes = 30 if args.quick else args.nodes
    names = [name.strip() for name in args.topologies.split(",") if name.strip()]
    unknown = [name for name in names if name not in meshsim.TOPOLOGIES]
    if unknown or nodes < 8:
        parser.error(f"unknown topology {unknown}" if unknown else "--nodes must be at least 8")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    print(f"# {nodes} nodes per topology; one advertisement interval = {INTERVAL:g} s; "
          f"target = diameter x interval + 1 s (virtual time)")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    failed = 0
    for name in names:
        topology = meshsim.TOPOLOGIES[name](nodes)
        outcomes = trio.run(run_topology, topology, not args.no_memory,
                            clock=trio.testing.MockClock(autojump_threshold=0))
        failed += sum(1 for o in outcomes if not o.correct or not o.settled)
    if failed:
        print(f"{failed} change(s) did not settle to the expected routes", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
