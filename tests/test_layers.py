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
from fednode._config import LinkConfig, MCPConfig, PeerConfig
from fednode._federation import FORWARD_METHOD, ROUTES_METHOD, Federation
from fednode._link import Handlers
from fednode._supervisor import PeerSupervisor

SOURCE = Path(fednode.__file__).parent


def import_graph(package: Path) -> dict[str, set[str]]:
    """For each module of ``package`` (flat ``*.py``): the sibling modules it imports, wherever in the file."""
    modules = {path.stem: path for path in package.glob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
                graph[name].update(target for target in names if target in modules)
    return graph


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
    (tmp_path / "_a.py").write_text("from ._b import B\n")
    (tmp_path / "_b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._c import C\n")
    (tmp_path / "_c.py").write_text("def f():\n    from . import _a\n")
    (tmp_path / "_d.py").write_text("from ._a import A\n")
    assert circles(import_graph(tmp_path)) == [["_a", "_b", "_c"]]


def test_fednode_has_no_import_circle() -> None:
    assert circles(import_graph(SOURCE)) == []


#: The federation layer, and the MCP layer's parts that the federation builds or the edge calls.
BELOW_THE_NODE = ("_routing", "_catalog", "_withdrawn", "_advertiser", "_forwarding", "_federation", "_forwarder",
                  "_sessions", "_parking")


def test_below_the_node_layer_nothing_imports_or_names_the_node() -> None:
    """They take what they use as arguments: no import of the node module, no ``node`` or ``Node`` name,
    no ``.node`` attribute. The status document and the metrics (node layer) import it no more either."""
    graph = import_graph(SOURCE)
    for name in (*BELOW_THE_NODE, "_metrics", "_status"):
        assert "_node" not in graph[name], name
    for name in BELOW_THE_NODE:
        tree = ast.parse((SOURCE / f"{name}.py").read_text(), name)
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not names & {"Node", "node", "NodeConfig"}, name
        reached = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "node"]
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


async def test_the_federation_runs_without_a_node_and_hands_its_methods_over(autojump_clock: trio.abc.Clock) -> None:
    """Built from its own arguments; the node serves its methods by merging its table (replacing same names)."""
    started = False
    federation = Federation("n1", structlog.get_logger("test"), peers=NoPeers(), mcp=lambda: MCPConfig(),
                            limits=LinkConfig(), request=_never, notify=_never, observe=lambda *args: None,
                            started=lambda: started, started_at=trio.current_time())
    assert not federation.settled()  # waits for the node's start-up, as given
    started = True
    assert federation.settled()

    table = Handlers()
    table.notifications[ROUTES_METHOD] = _never  # registered before: the federation's replaces it
    table.requests["echo"] = _never
    table.merge(federation.handlers)
    assert table.inline_notifications[ROUTES_METHOD] == federation.handlers.inline_notifications[ROUTES_METHOD]
    assert ROUTES_METHOD not in table.notifications
    assert table.requests[FORWARD_METHOD] == federation.forwarding.on_forward
    assert table.transit[FORWARD_METHOD] == federation.forwarding.transit
    assert table.requests["echo"] is _never
