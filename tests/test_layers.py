"""fednode's modules import one another one way: no import circle, counting every relative import.

Imports under ``TYPE_CHECKING`` and inside functions count too (they are back-references all the
same), so the check reads the source, not ``sys.modules``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import structlog
import trio

import fednode
from fednode._config._config import AuthConfig, LinkConfig, MCPConfig, PeerConfig, Secret
from fednode._config._signing import Keyring
from fednode._federation._federation import FORWARD_METHOD, ROUTES_METHOD, Federation, new_routing_table
from fednode._federation._local import LocalRoute
from fednode._federation._route_proof import ROUTE_TTL, RouteProofs
from fednode._mcp._upstream_catalog import ServerCatalog
from fednode._peers._link import Handlers
from fednode._peers._supervisor import PeerSupervisor

SOURCE = Path(fednode.__file__).parent


#: The layers, in the order data flows; a module imports only from its own layer or earlier ones.
#: "" is the package's top: the errors and version modules every layer may use.
LAYERS = ("", "_config", "_peers", "_federation", "_mcp", "_node", "_cli")


def modules_of(package: Path) -> dict[str, Path]:
    """Every module of ``package`` and its subpackages, by dotted name under it (``_peers._link``)."""
    return {".".join(path.relative_to(package).with_suffix("").parts): path for path in package.rglob("*.py")}


def import_graph(package: Path) -> dict[str, set[str]]:
    """For each module of ``package``: the modules of the package it imports, wherever in the file.

    Relative imports are resolved against the importing module's package; ``from .._peers import
    _wire`` counts as an import of ``_peers._wire``, ``from .._peers import X`` as one of the
    subpackage's ``__init__``.
    """
    modules = modules_of(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        parts = name.split(".")
        here = parts[:-1]  # the package a module (or a package's __init__) resolves relative imports in
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            stem = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:
                for candidate in (".".join([*stem, alias.name]), ".".join(stem), ".".join([*stem, "__init__"])):
                    if candidate in modules:
                        graph[name].add(candidate)
                        break
    return graph


def layer(module: str) -> int:
    """The position of ``module``'s layer in :data:`LAYERS`."""
    head = module.split(".")[0]
    return LAYERS.index(head if head in LAYERS else "")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(vertex: str) -> None:
        index[vertex] = low[vertex] = len(index)
        stack.append(vertex)
        on_stack.add(vertex)
        for target in sorted(graph[vertex]):
            if target not in index:
                visit(target)
                low[vertex] = min(low[vertex], low[target])
            elif target in on_stack:
                low[vertex] = min(low[vertex], index[target])
        if low[vertex] == index[vertex]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == vertex:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return sorted(found)


def test_the_check_finds_a_circle_through_type_checking_and_function_imports(tmp_path: Path) -> None:
    (tmp_path / "_x").mkdir()
    (tmp_path / "_x" / "__init__.py").write_text("")
    (tmp_path / "_a.py").write_text("from ._x._b import B\n")
    (tmp_path / "_x" / "_b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._c import C\n")
    (tmp_path / "_x" / "_c.py").write_text("def f():\n    from .. import _a\n")
    (tmp_path / "_d.py").write_text("from ._a import A\n")
    assert circles(import_graph(tmp_path)) == [["_a", "_x._b", "_x._c"]]


def test_fednode_has_no_import_circle() -> None:
    assert circles(import_graph(SOURCE)) == []


def test_every_layer_imports_only_itself_and_the_layers_before_it() -> None:
    graph = import_graph(SOURCE)
    assert {"_peers._link", "_federation._routing", "_mcp._edge", "_node._node"} <= graph.keys()
    upward = sorted(f"{name} imports {target}" for name, targets in graph.items() if name != "__init__"
                    for target in targets if layer(target) > layer(name))
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    for package in ("_peers", "_mcp"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "_peers" / "_link.py").write_text("def f():\n    from .._mcp._edge import Edge\n")
    (tmp_path / "_mcp" / "_edge.py").write_text("from .._peers import _link\n")
    graph = import_graph(tmp_path)
    assert graph["_peers._link"] == {"_mcp._edge"} and graph["_mcp._edge"] == {"_peers._link"}
    assert layer("_mcp._edge") > layer("_peers._link") > layer("_errors")


def test_below_the_node_layer_nothing_imports_or_names_the_node() -> None:
    """They take what they use as arguments: no import of the node layer, no ``Node`` name, no
    ``node`` parameter, no ``self.node`` and no ``x.node.y`` (a reach into a node). The
    configuration's ``[node]`` table and the hello frame's ``node`` field may be named."""
    below = [name for name in modules_of(SOURCE) if layer(name) < LAYERS.index("_node") and name != "__init__"]
    assert len(below) > 30
    graph = import_graph(SOURCE)
    for name in below:
        assert not any(target.startswith("_node") for target in graph[name]), name
        tree = ast.parse(modules_of(SOURCE)[name].read_text(), name)
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        arguments = {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
        assert "Node" not in names and "node" not in arguments, name
        reached = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and (
            (node.attr == "node" and isinstance(node.value, ast.Name) and node.value.id == "self")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "node"))]
        assert reached == [], name


class NoPeers:
    """A Peers stand-in: no peer registered."""

    def peer_ids(self) -> list[str]:
        return []

    def connected_peers(self) -> list[str]:
        return []

    def peer_config(self, peer_id: str) -> PeerConfig | None:
        return None

    def supervisor(self, peer_id: str) -> PeerSupervisor | None:
        return None


async def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("nothing is sent in this test")


class OneServer:
    """A LocalServers stand-in: server "s" attached, starting until told otherwise, answering calls."""

    def __init__(self) -> None:
        self.up = False

    def ids(self) -> list[str]:
        return ["s"]

    def route_of(self, server_id: str) -> LocalRoute | None:
        return LocalRoute(prefix="p", timeout=5.0) if server_id == "s" else None

    def starting(self) -> list[str]:
        return [] if self.up else ["s"]

    async def call(self, server_id: str, method: str, params: dict[str, Any], *, timeout: float,
                   progress: Any, session: dict[str, Any] | None, trace: tuple[str, ...]) -> dict[str, Any]:
        return {"server": server_id, "method": method, "params": params, "timeout": timeout}


async def test_the_federation_runs_without_a_node_and_hands_its_methods_over(autojump_clock: trio.abc.Clock) -> None:
    """Built from its own arguments; it advertises and calls this node's servers through the
    LocalServers protocol; the node serves its methods by merging its table (replacing same names)."""
    started = False
    local = OneServer()
    federation = Federation("n1", structlog.get_logger("test"), peers=NoPeers(), local=local,
                            table=new_routing_table("n1"), mcp=lambda: MCPConfig(), limits=LinkConfig(),
                            request=_never, notify=_never, observe=lambda *args: None,
                            started=lambda: started, started_at=trio.current_time())
    assert not federation.settled()  # waits for the node's start-up, as given
    started = True
    assert not federation.settled()  # and for the attached server's first start
    local.up = True
    assert federation.settled()
    federation.set_local_catalog("s", ServerCatalog(tools=({"name": "t", "inputSchema": {"type": "object"}},)))
    assert [item["name"] for item in federation.list_items("tools")] == ["p__t"]
    (route, via), = federation.best_routes().values()
    assert (route.origin, route.server, route.prefix, route.timeout, via) == ("n1", "s", "p", 5.0, None)
    result = await federation.execute("tools/call", {"name": "p__t", "arguments": {}})
    assert (result["server"], result["method"], result["params"]["name"]) == ("s", "tools/call", "t")

    table = Handlers()
    table.notifications[ROUTES_METHOD] = _never  # registered before: the federation's replaces it
    table.requests["echo"] = _never
    table.merge(federation.handlers)
    assert table.inline_notifications[ROUTES_METHOD] == federation.handlers.inline_notifications[ROUTES_METHOD]
    assert ROUTES_METHOD not in table.notifications
    assert table.requests[FORWARD_METHOD] == federation.forwarding.on_forward
    assert table.transit[FORWARD_METHOD] == federation.forwarding.transit
    assert table.requests["echo"] is _never


async def test_the_federation_re_signs_its_advertisements_before_they_expire(autojump_clock: trio.abc.Clock) -> None:
    """The refresh task gives this node's advertisements a new version once half their lifetime is gone."""
    wall = [1_800_000_000.0]
    auth = AuthConfig(secrets=(Secret("s" * 64),))
    proofs = RouteProofs("n1", Keyring("n1", auth=lambda: auth, peer=lambda _p: None, nodes=lambda: ()),
                         clock=lambda: wall[0])
    local = OneServer()
    local.up = True
    federation = Federation("n1", structlog.get_logger("test"), peers=NoPeers(), local=local,
                            table=new_routing_table("n1", proofs), mcp=lambda: MCPConfig(), limits=LinkConfig(),
                            request=_never, notify=_never, observe=lambda *args: None,
                            started=lambda: True, started_at=trio.current_time())
    federation.set_local_catalog("s", ServerCatalog(tools=({"name": "t", "inputSchema": {"type": "object"}},)))
    first = federation.table.best[("n1", "s")][0].proof
    assert first is not None and first.expires == int(wall[0] + ROUTE_TTL)
    async with trio.open_nursery() as nursery:
        await nursery.start(federation.refresh)
        wall[0] += ROUTE_TTL / 2
        await trio.sleep(ROUTE_TTL / 8 - 1)
        assert federation.table.best[("n1", "s")][0].proof == first  # not before the refresh's round
        await trio.sleep(2)
        renewed = federation.table.best[("n1", "s")][0].proof
        assert renewed is not None and renewed.version > first.version and renewed.expires > first.expires
        nursery.cancel_scope.cancel()
