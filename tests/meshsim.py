"""A federation of many real nodes in one process, linked over in-memory streams, for MockClock runs.

Used by ``tests/test_mesh_sim.py`` (small meshes, exact assertions) and ``scripts/bench_mesh.py``
(100 nodes, the table in the README). It lives with the tests, not in the package: it drives nodes
through test-only hooks (links handed to the supervisors as if accepted, a counting WebSocket
wrapper, a recording wrapper on each routing table's ``update``).

Each node is a real :class:`fednode.Node` (peers layer, federation, catalog, route proofs, the
client edge built but not serving) without its listeners: each link is a WebSocket pair over
``trio.testing.memory_stream_pair`` whose two ends are handed to the two nodes' supervisors, as
their listeners would after the handshake. Every peer is configured without a control URL, so a
link that dies stays dead (nobody redials), as after a peer's permanent loss.

Measured, in virtual time (the caller runs under ``trio.testing.MockClock(autojump_threshold=0)``):

- convergence: the last moment any node's best routes changed after a change (every node then
  holds, for every attached server within ``MAX_PATH`` hops, a route as short as the graph allows,
  and nothing else: :meth:`Mesh.check` compares each table with a breadth-first search);
- messages and bytes: the ``fed/routes`` frames sent on every link (the WebSocket message texts,
  counted where the link writes them); heartbeats are counted apart (they are periodic, not caused
  by a change).
"""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

import fednode
from fednode._federation._routes import MAX_PATH, Key
from fednode._federation._routing import RoutingTable
from fednode._mcp._upstream_catalog import ServerCatalog

#: A simulation-only HS512 secret (>= 64 bytes) shared by every node (each verifies every hop's attestation).
SECRET = "meshsim-secret-" + "0123456789abcdef" * 5
#: The tool every node's own server offers; a server that appears later offers :data:`NEW_TOOL`.
TOOL = {"name": "echo", "description": "Echoes.", "inputSchema": {"type": "object"}}
NEW_TOOL = {"name": "ping", "description": "Answers.", "inputSchema": {"type": "object"}}
#: A change is over once no best route changed and no advertisement was sent for this long (virtual s).
QUIET = 5.0
#: How long a change may take to settle at most (virtual s); past it the run reports it unsettled.
SETTLE_BOUND = 300.0

Edge = tuple[str, str]


# -- topologies -------------------------------------------------------------------------------


@attrs.frozen
class Topology:
    """A graph of node ids (``n000``...) and undirected links."""

    name: str
    nodes: tuple[str, ...]
    links: tuple[Edge, ...]

    def neighbours(self, removed_links: Iterable[Edge] = (), removed_nodes: Iterable[str] = ()
                   ) -> dict[str, set[str]]:
        """Adjacency of the graph without ``removed_links`` and ``removed_nodes``."""
        gone_links = {frozenset(link) for link in removed_links}
        gone = set(removed_nodes)
        adjacency: dict[str, set[str]] = {node: set() for node in self.nodes if node not in gone}
        for a, b in self.links:
            if a in gone or b in gone or frozenset((a, b)) in gone_links:
                continue
            adjacency[a].add(b)
            adjacency[b].add(a)
        return adjacency

    @property
    def degree(self) -> float:
        """The mean degree."""
        return 2 * len(self.links) / len(self.nodes)


def node_ids(count: int) -> list[str]:
    """``count`` node ids that sort in order."""
    return [f"n{index:03d}" for index in range(count)]


def chain(count: int) -> Topology:
    """``n000 - n001 - ... - n(count-1)``."""
    ids = node_ids(count)
    return Topology("chain", tuple(ids), tuple(itertools.pairwise(ids)))


def ring(count: int) -> Topology:
    """A chain whose ends are linked too."""
    ids = node_ids(count)
    return Topology("ring", tuple(ids), tuple(zip(ids, ids[1:] + ids[:1], strict=True)))


def _regular_links(ids: list[str], degree: int, rng: random.Random) -> list[Edge]:
    """A connected random graph on ``ids`` where every node has ``degree`` links (the pairing model,
    redrawn until simple and connected; a bounded number of draws)."""
    for _attempt in range(1000):
        stubs = [node for node in ids for _ in range(degree)]
        rng.shuffle(stubs)
        pairs = {tuple(sorted(pair)) for pair in zip(stubs[::2], stubs[1::2], strict=True)}
        if len(pairs) * 2 != len(stubs) or any(a == b for a, b in pairs):
            continue  # a double link or a loop: draw again
        links = sorted((a, b) for a, b in pairs)
        if _connected(ids, links):
            return links
    raise RuntimeError(f"no simple connected {degree}-regular graph on {len(ids)} nodes in 1000 draws")


def _connected(ids: list[str], links: list[Edge]) -> bool:
    topology = Topology("", tuple(ids), tuple(links))
    return len(hops_from(topology.neighbours(), ids[0])) == len(ids)


def random_regular(count: int, degree: int = 4, seed: int = 1) -> Topology:
    """A random connected graph where every node has ``degree`` links (seeded: the same every run)."""
    ids = node_ids(count)
    return Topology(f"random-{degree}", tuple(ids), tuple(_regular_links(ids, degree, random.Random(seed))))


def two_regions(count: int, degree: int = 4, seed: int = 1, bridges: int = 2) -> Topology:
    """Two random ``degree``-regular halves joined by ``bridges`` links between distinct node pairs."""
    rng = random.Random(seed)
    ids = node_ids(count)
    west, east = ids[:count // 2], ids[count // 2:]
    links = _regular_links(west, degree, rng) + _regular_links(east, degree, rng)
    ends = rng.sample(west, bridges), rng.sample(east, bridges)
    links += [(a, b) for a, b in zip(*ends, strict=True)]
    return Topology("two-regions", tuple(ids), tuple(sorted(links)))


TOPOLOGIES: dict[str, Callable[[int], Topology]] = {
    "chain": chain, "ring": ring, "random": random_regular, "regions": two_regions}


def victims(topology: Topology) -> tuple[Edge, str]:
    """The link that dies and the node that dies in ``topology``: chain: the middle link and ``n001``;
    ring: ``n000-n001`` and the node opposite; two regions: one bridge and an end of the other (which
    cuts the regions apart); random: the first link of ``n000`` and ``n001``."""
    nodes = topology.nodes
    if topology.name == "chain":
        middle = len(nodes) // 2
        return (nodes[middle - 1], nodes[middle]), nodes[1]
    if topology.name == "ring":
        return (nodes[0], nodes[1]), nodes[len(nodes) // 2]
    if topology.name == "two-regions":
        half = set(nodes[:len(nodes) // 2])
        bridges = [link for link in topology.links if (link[0] in half) != (link[1] in half)]
        return bridges[0], bridges[1][0]
    first = next(link for link in topology.links if nodes[0] in link)
    return first, nodes[1]


def hops_from(adjacency: Mapping[str, set[str]], source: str) -> dict[str, int]:
    """Hop distance from ``source`` to every node it reaches (breadth first)."""
    distance = {source: 0}
    frontier = [source]
    while frontier:
        following = []
        for node in frontier:
            for neighbour in sorted(adjacency[node]):
                if neighbour not in distance:
                    distance[neighbour] = distance[node] + 1
                    following.append(neighbour)
        frontier = following
    return distance


def diameter(adjacency: Mapping[str, set[str]]) -> int:
    """The longest shortest path within any connected part (hops)."""
    return max((max(hops_from(adjacency, node).values()) for node in adjacency), default=0)


# -- counting what links send -------------------------------------------------------------------


@attrs.define
class Traffic:
    """Frames and bytes (UTF-8 message texts) sent on every link end, by kind."""

    frames: collections.Counter[str] = attrs.field(factory=collections.Counter)
    bytes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: virtual time of the last ``fed/routes`` frame sent
    last_routes: float = float("-inf")

    def count(self, message: str | bytes) -> None:
        head = message[:64]
        if isinstance(head, bytes):
            kind = "other"
        elif head.startswith(('{"type":"ping"', '{"type":"pong"')):
            kind = "heartbeat"
        elif '"fed/routes"' in head:
            kind = "routes"
            self.last_routes = trio.current_time()
        else:
            kind = "other"
        self.frames[kind] += 1
        self.bytes[kind] += len(message.encode() if isinstance(message, str) else message)

    def snapshot(self) -> tuple[int, int]:
        """Route frames and bytes sent so far."""
        return self.frames["routes"], self.bytes["routes"]


class CountingWebSocket:
    """A WebSocket whose every sent message is counted in :class:`Traffic`; everything else is the
    wrapped connection's.

    It has no send lock of its own to show (``_stream_lock``), so the link's frame sender writes
    every frame with ``send_message`` (see :func:`fednode._peers._sender.direct_lock`), where it is
    counted, rather than on its direct path past it (which saves checkpoints on real sockets only,
    and changes nothing of what is sent).
    """

    def __init__(self, ws: WebSocketConnection, traffic: Traffic) -> None:
        self._ws = ws
        self._traffic = traffic

    async def send_message(self, message: str | bytes) -> None:
        self._traffic.count(message)
        await self._ws.send_message(message)

    def __getattr__(self, name: str) -> Any:
        if name == "_stream_lock":
            raise AttributeError(name)
        return getattr(self._ws, name)


# -- the mesh -----------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """What one change cost until the mesh settled."""

    change: str
    #: virtual seconds from the change to the last best-route change anywhere
    convergence: float
    #: the graph's diameter after the change, capped at MAX_PATH (routes go no farther)
    diameter: int
    frames: int
    bytes: int
    #: whether every node's table matched the graph once settled (see :meth:`Mesh.check`)
    correct: bool
    #: whether it settled within SETTLE_BOUND
    settled: bool
    problems: tuple[str, ...] = ()


def config_for(node_id: str, peers: Iterable[str]) -> fednode.NodeConfig:
    """A node's configuration: the shared secret, the default link and heartbeat settings, its peers
    (none dialed: links are handed over)."""
    return fednode.NodeConfig.from_mapping({
        "node": {"id": node_id, "shutdown_grace": "1s"}, "auth": {"secret": SECRET},
        "peers": [{"id": peer} for peer in sorted(peers)]})


class Mesh:
    """A running federation over ``topology``: build it with :meth:`start` in a nursery.

    Every node has one server of its own attached (``srv-<node id>``, tool ``echo``) from the
    start, so each table holds a route per node.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, fednode.Node] = {}
        self.traffic = Traffic()
        #: virtual time of the last change of any node's best routes
        self.last_change = float("-inf")
        #: how many times a node's best routes changed
        self.best_changes = 0
        self.removed_links: list[Edge] = []
        self.removed_nodes: list[str] = []
        #: (origin, server) of every attached server
        self.servers: set[Key] = set()
        self._node_scopes: dict[str, trio.CancelScope] = {}
        self._streams: dict[frozenset[str], list[trio.testing.MemorySendStream]] = {}
        self._nursery: trio.Nursery | None = None

    # -- building -------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every node (with its own server) in ``nursery``, then bring every link up."""
        self._nursery = nursery
        adjacency = self.topology.neighbours()
        for node_id in self.topology.nodes:
            self.nodes[node_id] = await nursery.start(self._run_node, node_id, adjacency[node_id])
            self.attach(node_id, f"srv-{node_id}", TOOL)
        for a, b in self.topology.links:
            await self._link(a, b)

    async def _run_node(self, node_id: str, peers: set[str], *,
                        task_status: trio.TaskStatus[fednode.Node] = trio.TASK_STATUS_IGNORED) -> None:
        """One node: what :func:`fednode.open_node` starts, but no listener (links are handed over)."""
        scope = self._node_scopes[node_id] = trio.CancelScope()
        with scope:
            async with trio.open_nursery() as nursery:
                node = fednode.Node(config_for(node_id, peers), nursery)
                self._record_changes(node.federation.table)
                await nursery.start(node.federation.exchange_routes)
                await nursery.start(node.federation.refresh)
                for peer in node.config.peers:
                    await node.register_peer(peer, wait=False)
                node.started = True
                node.federation.state_changed()
                task_status.started(node)
                await trio.sleep_forever()

    def _record_changes(self, table: RoutingTable) -> None:
        """Note the time whenever ``table``'s best routes change (which route, or through whom)."""
        update = table.update

        def recording(*args: Any, **kwargs: Any) -> Any:
            before = {key: (route.path, via) for key, (route, via) in table.best.items()}
            best = update(*args, **kwargs)
            if {key: (route.path, via) for key, (route, via) in best.items()} != before:
                self.last_change = trio.current_time()
                self.best_changes += 1
            return best

        table.update = recording  # type: ignore[method-assign]

    async def _link(self, a: str, b: str) -> None:
        """Link ``a`` and ``b``: a WebSocket pair over memory streams, each end handed to a supervisor."""
        assert self._nursery is not None
        a_stream, b_stream = trio.testing.memory_stream_pair()
        self._streams[frozenset((a, b))] = [a_stream.send_stream, b_stream.send_stream]
        nursery = self._nursery
        accepted: list[WebSocketConnection] = []
        done = trio.Event()

        async def accept() -> None:
            request = await wrap_server_stream(nursery, b_stream)
            accepted.append(await request.accept())
            done.set()

        nursery.start_soon(accept)
        ws_a = await wrap_client_stream(nursery, a_stream, "127.0.0.1", "/")
        await done.wait()
        for here, there, ws in ((a, b, ws_a), (b, a, accepted[0])):
            supervisor = self.nodes[here].supervisor(there)
            assert supervisor is not None
            nursery.start_soon(supervisor.adopt, CountingWebSocket(ws, self.traffic))

    # -- changes ----------------------------------------------------------------------------------

    def attach(self, node_id: str, server_id: str, tool: Mapping[str, Any]) -> None:
        """A server with one tool appears at ``node_id`` (its catalog, as its supervisor reports it)."""
        self.servers.add((node_id, server_id))
        self.nodes[node_id].federation.set_local_catalog(server_id, ServerCatalog(tools=(dict(tool),)))

    def cut(self, a: str, b: str) -> None:
        """The link between ``a`` and ``b`` dies: both ends see the stream end (as when a TCP
        connection is reset), nobody redials."""
        for stream in self._streams.pop(frozenset((a, b))):
            stream.close()
        self.removed_links.append((a, b))

    def kill(self, node_id: str) -> None:
        """``node_id`` dies: every link of it ends at once (as when its process is killed and the
        system closes its sockets), then its tasks are cancelled."""
        for peer in sorted(self.topology.neighbours(self.removed_links, self.removed_nodes)[node_id]):
            self.cut(node_id, peer)
        self._node_scopes[node_id].cancel()
        del self.nodes[node_id]
        self.removed_nodes.append(node_id)
        self.servers = {key for key in self.servers if key[0] != node_id}

    # -- measuring ----------------------------------------------------------------------------------

    def adjacency(self) -> dict[str, set[str]]:
        """The graph as it is now (dead links and nodes left out)."""
        return self.topology.neighbours(self.removed_links, self.removed_nodes)

    def routing_diameter(self) -> int:
        """The diameter of the graph now, capped at MAX_PATH."""
        return min(diameter(self.adjacency()), MAX_PATH)

    async def settle(self, change: str, started: float, frames_before: tuple[int, int]) -> Outcome:
        """Wait until the mesh is quiet (QUIET virtual seconds without a best-route change or a route
        frame; at most SETTLE_BOUND), then check every table against the graph."""
        settled = False
        for _round in range(int(SETTLE_BOUND / QUIET) + 1):
            await trio.sleep(QUIET)
            quiet_since = max(self.last_change, self.traffic.last_routes, started)
            if trio.current_time() - quiet_since >= QUIET:
                settled = True
                break
        frames, sent = self.traffic.snapshot()
        problems = self.check()
        return Outcome(change=change, convergence=max(self.last_change - started, 0.0),
                       diameter=self.routing_diameter(), frames=frames - frames_before[0],
                       bytes=sent - frames_before[1], correct=not problems, settled=settled,
                       problems=tuple(problems[:5]))

    def check(self) -> list[str]:
        """Every live node holds a route to every server within MAX_PATH hops, as short as the graph
        allows, lists its tool, and holds nothing else. Returns what differs (empty: all as expected)."""
        adjacency = self.adjacency()
        hops = {origin: hops_from(adjacency, origin) for origin in {origin for origin, _ in self.servers}}
        problems = []
        for node_id, node in sorted(self.nodes.items()):
            best = node.federation.table.best
            expected = {key for key in self.servers if hops[key[0]].get(node_id, MAX_PATH + 1) <= MAX_PATH}
            for key in sorted(expected - best.keys()):
                problems.append(f"{node_id}: no route to {key}")
            for key in sorted(best.keys() - expected):
                problems.append(f"{node_id}: a route to {key} it should not have")
            for key in sorted(expected & best.keys()):
                length = len(best[key][0].path) if key[0] != node_id else 0
                if length != hops[key[0]][node_id]:
                    problems.append(f"{node_id}: route to {key} of {length} hops, "
                                    f"the graph's shortest is {hops[key[0]][node_id]}")
            tools = node.federation.catalog.entries["tools"].keys()
            for _origin, server in sorted(expected):
                if not any(name.startswith(f"{server}__") for name in tools):
                    problems.append(f"{node_id}: lists no tool of {server}")
        return problems

    def changes(self) -> list[tuple[str, Callable[[], None]]]:
        """The changes measured, in order: a server appears at the first node, a link dies, a node
        dies (see :func:`victims`)."""
        link, victim = victims(self.topology)
        return [("server", lambda: self.attach(self.topology.nodes[0], "new", NEW_TOOL)),
                ("link", lambda: self.cut(*link)),
                ("node", lambda: self.kill(victim))]

    async def measure(self, change: str, act: Callable[[], None]) -> Outcome:
        """Make a change (``act``) and measure it until the mesh has settled."""
        before = self.traffic.snapshot()
        started = trio.current_time()
        act()
        return await self.settle(change, started, before)
