"""The exposed catalog rebuilt incrementally: the same as a full rebuild, whatever changed, and cheaper.

A route update from a peer usually changes a few servers out of many; :class:`Catalog` reuses the
entries of the others (:class:`fednode._federation._claims.ServerClaim`). These tests hold it to the
full rebuild (``incremental=False``) after any sequence of changes: entries, name conflicts, the
kinds reported changed and the memory of withdrawn names.
"""

from __future__ import annotations

from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode._federation._catalog import Catalog
from fednode._federation._routes import Key, Route, packed
from fednode._federation._withdrawn import WithdrawnNames

ME = "node-a"
ORIGINS = (ME, "node-b", "node-c")
PEERS = ("node-b", "node-c")
SERVERS = ("s1", "s2", "s3", "node-b__s1")
PREFIXES = ("s1", "s2", "", "node-b")  # shared prefixes make names collide, a renamed one included
NAMES = ("a", "b", "s1__a")


def catalog_of(tools: list[str], resources: list[str], templates: list[str], prompts: list[str]) -> dict[str, Any]:
    """A server's catalog (duplicate names within one server included)."""
    return {"tools": tuple({"name": n, "inputSchema": {"type": "object"}} for n in tools),
            "prompts": tuple({"name": n} for n in prompts),
            "resources": tuple({"uri": f"file:///{n}", "name": n} for n in resources),
            "resourceTemplates": tuple({"uriTemplate": f"file:///{n}/{{x}}", "name": n} for n in templates)}


names = st.lists(st.sampled_from(NAMES), max_size=3)


@st.composite
def changes(draw: Any) -> tuple[str, Any]:
    """One change to the best routes: a route set (new or re-sent), one gone, or the RTTs measured anew."""
    what = draw(st.sampled_from(("set", "set", "again", "drop", "rtt")))
    origin, server = draw(st.sampled_from(ORIGINS)), draw(st.sampled_from(SERVERS))
    if what == "set":
        via = None if origin == ME else draw(st.sampled_from(PEERS))
        hops = () if via is None or via == origin else (via,)
        catalog = catalog_of(draw(names), draw(names), draw(names), draw(names))
        return what, ((origin, server), Route(origin=origin, server=server, prefix=draw(st.sampled_from(PREFIXES)),
                                              path=(origin, *hops), digest="d", catalog=catalog), via)
    if what == "rtt":
        return what, {peer: draw(st.sampled_from((0.01, 0.02, 0.03))) for peer in PEERS}
    return what, (origin, server)


def state(catalog: Catalog) -> dict[str, Any]:
    """Everything a rebuild decides, comparable between two catalogs."""
    return {
        "entries": {kind: [(name, e.kind, e.exposed, e.name, e.server, e.definition, e.origins)
                           for name, e in entries.items()] for kind, entries in catalog.entries.items()},
        "conflicts": list(catalog.conflicts),
        "conflict_sets": dict(catalog._conflict_sets),
        "templates": [(pattern.pattern, entry.exposed) for pattern, entry in catalog._templates],
        "withdrawn": catalog.withdrawn.snapshot(),
    }


@given(st.lists(changes(), min_size=1, max_size=25))
@settings(max_examples=300, deadline=None)
def test_incremental_rebuilds_equal_full_ones(steps: list[tuple[str, Any]]) -> None:
    incremental = Catalog(ME, structlog.get_logger(), WithdrawnNames(clock=lambda: 5.0, wall_clock=lambda: 1.0))
    full = Catalog(ME, structlog.get_logger(), WithdrawnNames(clock=lambda: 5.0, wall_clock=lambda: 1.0),
                   incremental=False)
    best: dict[Key, tuple[Route, str | None]] = {}
    rtts: dict[str, float] = {}
    for what, detail in steps:
        if what == "set":
            key, route, via = detail
            best[key] = (route, via)
        elif what == "again" and detail in best:
            route, via = best[detail]
            # The same route advertised again: a new catalog object with the same content.
            best[detail] = (Route(origin=route.origin, server=route.server, prefix=route.prefix, path=route.path,
                                  digest=route.digest, catalog=dict(route.catalog)), via)
        elif what == "drop":
            best.pop(detail, None)
        elif what == "rtt":
            rtts = detail
        attached = {server for (origin, server) in best if origin == ME}
        changed = incremental.rebuild(dict(best), dict(rtts), attached)
        assert changed == full.rebuild(dict(best), dict(rtts), attached)
        assert state(incremental) == state(full)


def test_a_rebuild_reuses_the_entries_of_servers_that_did_not_change() -> None:
    """One server more among many: the others' entries are the same objects, and nothing else is built."""
    catalog = Catalog(ME, structlog.get_logger())

    def server(i: int) -> tuple[Key, tuple[Route, str | None]]:
        route = Route(origin="node-b", server=f"s{i}", prefix=f"s{i}", path=("node-b",), digest="d",
                      catalog=catalog_of([f"t{j}" for j in range(20)], [], [], []))
        return ("node-b", f"s{i}"), (route, "node-b")

    best = dict(server(i) for i in range(10))
    assert catalog.rebuild(dict(best), {}, ()) == {"tools"}
    before = dict(catalog.entries["tools"])
    best.update([server(10)])
    assert catalog.rebuild(dict(best), {}, ()) == {"tools"}
    after = catalog.entries["tools"]
    assert len(after) == 11 * 20
    assert all(after[name] is entry for name, entry in before.items())
    # Nothing changed: nothing reported, the same entries again.
    assert catalog.rebuild(dict(best), {}, ()) == set()
    assert all(catalog.entries["tools"][name] is entry for name, entry in after.items())


def test_a_packed_tool_schema_is_parsed_once_per_entry() -> None:
    """Asked for every call of a tool: the same schema object while its entry stands, a new one after."""
    catalog = Catalog(ME, structlog.get_logger())

    def best(description: str) -> dict[Key, tuple[Route, str | None]]:
        tools = ({"name": "t", "description": description,
                  "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}}}},)
        route = packed(Route(origin="node-b", server="s", prefix="s", path=("node-b",), digest=description,
                             catalog={"tools": tools, "prompts": (), "resources": (), "resourceTemplates": ()}))
        return {("node-b", "s"): (route, "node-b")}

    catalog.rebuild(best("one"), {}, ())
    assert isinstance(catalog.entries["tools"]["s__t"].source, str)  # packed
    first = catalog.tool_input_schema("s__t")
    assert first == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert catalog.tool_input_schema("s__t") is first
    catalog.rebuild(best("two"), {}, ())
    again = catalog.tool_input_schema("s__t")
    assert again == first and again is not first
    assert catalog.tool_input_schema("nothing") is None
