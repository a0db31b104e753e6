"""Tool-level export/import globs over real links (in-process nodes): own routes trimmed per peer with
their own signed digest, passed-on routes whole or held back, imports filtered, forwards refused per tool."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_federation import Catalog, eventually, names, tools, topology

import fednode
from fednode._config._export_rules import NameRules
from fednode._errors import UNKNOWN_NAME, ForwardError
from fednode._federation import _name_policy, _routes
from fednode._federation._route_proof import RouteProofs
from fednode._federation._routes import Route, packed, unpacked
from fednode._node._status import node_status

from helpers import keyring

FILES = ("read_a", "read_b", "read_secret", "delete")
EXPORT = ["files.read_*", "!files.read_secret"]


def files(*extra: str) -> Catalog:
    """The "files" server's catalog: four tools (and ``extra``), a prompt and a resource."""
    return Catalog(tools=tools(*FILES, *extra).tools,
                   prompts=({"name": "read_me", "description": "a prompt"}, {"name": "delete_all"}),
                   resources=({"uri": "file:///readme", "name": "readme"},))


def forged(server: str, name: str, origin: str = "node-b", method: str = "tools/call") -> dict[str, Any]:
    """A fed/forward as node-a would send it for ``name`` at ``server``, whatever it was offered."""
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if method == "completion/complete":
        params = {"ref": {"type": "ref/prompt", "name": name}, "argument": {"name": "x", "value": ""}}
    return {"origin": origin, "server": server, "method": method, "params": params, "timeout": 5,
            "trace": ["node-a"]}


class TestOwnRoutes:
    """A route to one of this node's servers is trimmed to each peer's export, with its own proof."""

    async def test_trimmed_per_peer_and_verified_by_the_peer(self) -> None:
        policies = {("node-b", "node-a"): {"export": EXPORT}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")], policies) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                b.federation.set_local_catalog("files", files())
                await eventually(lambda: names(c) == {f"files__{n}" for n in FILES})
                await eventually(lambda: names(a) == {"files__read_a", "files__read_b"})
                assert names(a, "prompts") == {"files__read_me"}  # prompts are matched too
                assert names(a, "resources") == {"file:///readme"}  # resources follow the server
                trimmed = a.federation.learned["node-b"][("node-b", "files")]
                full = c.federation.learned["node-b"][("node-b", "files")]
                # Its own digest, which node-a checked against the catalog and node-b's signature
                # (a route that does not verify is refused, never used).
                assert trimmed.digest != full.digest and trimmed.signed_digest() == trimmed.digest
                assert trimmed.proof is not None and full.proof is not None
                assert trimmed.proof.version == full.proof.version  # one version for every variant
                assert not a.federation.routes_refused
                # A change of the catalog reaches node-a trimmed again.
                b.federation.set_local_catalog("files", files("read_new", "delete_more"))
                await eventually(lambda: "files__read_new" in names(a))
                assert names(a) == {"files__read_a", "files__read_b", "files__read_new"}
                assert not a.federation.routes_refused

    async def test_a_variant_is_hashed_once_per_catalog(self, monkeypatch: pytest.MonkeyPatch) -> None:
        trimmed_hashed: list[Any] = []
        real = _routes.catalog_digest

        def counting(catalog: Any) -> str:
            if {tool["name"] for tool in catalog.get("tools", ())} == {"read_a", "read_b", "read_secret"}:
                trimmed_hashed.append(catalog)
            return real(catalog)

        monkeypatch.setattr(_routes, "catalog_digest", counting)
        policies = {("node-b", "node-a"): {"export": ["files.read_*", "other"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")], policies) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                b.federation.set_local_catalog("files", files())
                await eventually(lambda: names(a) == {"files__read_a", "files__read_b", "files__read_secret"})
                # node-b made its digest once, node-a checked it once
                assert len(trimmed_hashed) == 2
                for index in range(3):  # every change re-advertises: the files variant is not hashed again
                    b.federation.set_local_catalog("other", tools(f"t{index}"))
                    await eventually(lambda: f"other__t{index}" in names(a))  # noqa: B023 - awaited at once
                assert len(trimmed_hashed) == 2


class TestPassedOn:
    """A route learned from another node is passed on whole, or not at all."""

    async def test_trimmed_by_export_is_held_back(self) -> None:
        policies = {("node-b", "node-a"): {"export": ["notes", "files.read_*"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")], policies) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                c.federation.set_local_catalog("files", files())
                c.federation.set_local_catalog("notes", tools("add"))
                await eventually(lambda: "files__delete" in names(b) and "notes__add" in names(a))
                await eventually(lambda: b.federation.names.held_back_status() == {"node-a": ["node-c/files"]})
                # A change c then makes to "notes" reaches a after anything b would have leaked.
                c.federation.set_local_catalog("notes", tools("add", "marker"))
                await eventually(lambda: "notes__marker" in names(a))
                assert names(a) == {"notes__add", "notes__marker"}
                assert b.federation.names.held_back == {
                    ("node-a", "node-c", "files"): "export to 'node-a' leaves out some of its tools or prompts"}
                assert node_status(b)["routes"]["held_back"] == {"node-a": ["node-c/files"]}
                # Nor can a reach it by asking: it is not offered.
                with pytest.raises(fednode.RemoteError) as info:
                    await a.request("node-b", "fed/forward", forged("files", "read_a", origin="node-c"), timeout=30)
                assert info.value.code == UNKNOWN_NAME and "not offered" in info.value.remote_message

    async def test_fully_allowed_is_passed_on(self) -> None:
        policies = {("node-b", "node-a"): {"export": ["files.*", "!files.delete_*"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-b", "node-c")], policies) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                c.federation.set_local_catalog("files", tools("read_a", "read_b"))
                await eventually(lambda: names(a) == {"files__read_a", "files__read_b"})
                assert b.federation.names.held_back_status() == {}
                # It starts to be held back as soon as the export would trim it.
                c.federation.set_local_catalog("files", tools("read_a", "read_b", "delete_all"))
                await eventually(lambda: "files__delete_all" in names(b))
                await eventually(lambda: names(a) == set())
                assert b.federation.names.held_back_status() == {"node-a": ["node-c/files"]}


class TestImport:
    """What a peer's import leaves out is neither shown to this node's clients nor passed on."""

    async def test_filtered_from_the_catalog_and_held_back(self) -> None:
        policies = {("node-a", "node-b"): {"import_": ["files.read_*", "notes"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-a", "node-c")], policies) as nodes:
                a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
                b.federation.set_local_catalog("files", files())
                b.federation.set_local_catalog("notes", tools("add"))
                await eventually(lambda: names(a) == {"files__read_a", "files__read_b", "files__read_secret",
                                                      "notes__add"})
                assert names(a, "prompts") == {"files__read_me"} and names(a, "resources") == {"file:///readme"}
                with pytest.raises(ForwardError) as info:
                    await a.federation.execute("tools/call", {"name": "files__delete", "arguments": {}})
                assert info.value.code == UNKNOWN_NAME
                await eventually(lambda: a.federation.names.held_back_status() == {"node-c": ["node-b/files"]})
                assert a.federation.names.held_back[("node-c", "node-b", "files")] == (
                    "import from 'node-b' leaves out some of its tools or prompts")
                b.federation.set_local_catalog("notes", tools("add", "marker"))
                await eventually(lambda: "notes__marker" in names(c))
                assert names(c) == {"notes__add", "notes__marker"}

    async def test_calls_go_only_to_replicas_whose_import_allows_them(self) -> None:
        """files on node-b (one hop) and node-c (two, through node-d, whose import trims it)."""
        policies = {("node-a", "node-d"): {"import_": ["files.read_*"]}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b"), ("node-a", "node-d"), ("node-d", "node-c")],
                                policies) as nodes:
                a = nodes["node-a"]
                nodes["node-b"].federation.set_local_catalog("files", files())
                nodes["node-c"].federation.set_local_catalog("files", files())
                def origins(name: str) -> tuple[str, ...]:
                    entry = a.federation.entries["tools"].get(name)
                    return () if entry is None else entry.origins

                await eventually(lambda: len(origins("files__read_a")) == 2)
                assert origins("files__read_a") == ("node-b", "node-c")
                assert origins("files__delete") == ("node-b",)  # never through node-d


class TestEnforcement:
    """The exporting node refuses a forward for a tool or prompt its export leaves out, whatever is asked."""

    async def test_forward_for_an_excluded_tool_or_prompt_is_refused(self) -> None:
        policies = {("node-b", "node-a"): {"export": EXPORT}}
        with trio.fail_after(60):
            async with topology([("node-a", "node-b")], policies) as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                b.federation.set_local_catalog("files", files())
                await eventually(lambda: names(a) == {"files__read_a", "files__read_b"})
                for name, method in (("delete", "tools/call"), ("read_secret", "tools/call"),
                                     ("delete_all", "prompts/get"), ("delete_all", "completion/complete")):
                    with pytest.raises(fednode.RemoteError) as info:
                        await a.request("node-b", "fed/forward", forged("files", name, method=method), timeout=30)
                    assert info.value.code == UNKNOWN_NAME
                    assert f"{name!r} of server 'files' on 'node-b' is not offered to 'node-a'" in \
                        info.value.remote_message


def test_variants_change_the_version() -> None:
    """Every variant of an own route has the full one's version; a new set of variants gets a new one."""
    now = [1000.0]
    proofs = RouteProofs("node-b", keyring("node-b"), clock=lambda: now[0])
    first = proofs.local_proof("files", "full", "files", frozenset({"v1"}))
    assert proofs.local_proof("files", "full", "files", frozenset({"v1"})) == first
    narrowed = proofs.local_proof("files", "full", "files", frozenset({"v2"}))
    assert narrowed.version > first.version
    now[0] += proofs.ttl  # re-signed before it expires: a new version, the variants kept
    assert proofs.local_proof("files", "full", "files", frozenset({"v2"})).version > narrowed.version


@given(st.lists(st.sampled_from(["files", "files.read_*", "!files.read_secret", "!files.d*", "files.delete",
                                 "notes", "!notes"]), max_size=4),
       st.lists(st.sampled_from(FILES), unique=True), st.booleans())
def test_trimmed_catalogs_keep_exactly_what_the_rules_let_through(listed: list[str], tools_at: list[str],
                                                                  packed_route: bool) -> None:
    rules = NameRules.parse(listed)
    catalog = files()
    kinds = {"tools": tuple(t for t in catalog.tools if t["name"] in tools_at), "prompts": catalog.prompts,
             "resources": catalog.resources, "resourceTemplates": ()}
    route = Route(origin="node-b", server="files", prefix="files", path=("node-b",), digest="", catalog=kinds)
    route = attrs.evolve(route, digest=route.signed_digest())
    if packed_route:
        route = packed(route)
    policy = _name_policy.NamePolicy("node-b", lambda _peer: None, structlog.get_logger())
    trimmed, variant = policy.trimmed(route, rules), policy.variant(route, rules)
    if not rules.server("files") or all(rules.item("files", kind, str(name)) for kind in ("tools", "prompts")
                                        for name in _name_policy.route_names(route, kind)):
        assert trimmed is None and variant is None  # nothing to trim (or nothing offered at all)
        return
    assert trimmed is not None and variant is not None
    for kind in ("tools", "prompts"):
        expected = [name for name in _name_policy.route_names(route, kind) if rules.item("files", kind, str(name))]
        assert list(_name_policy.route_names(trimmed, kind)) == expected
        assert [unpacked(item)["name"] for item in variant.catalog[kind]] == expected
    assert trimmed.catalog["resources"] == route.catalog["resources"]  # resources follow the server
    assert trimmed.digest == route.digest  # kept: not hashed again
    assert variant.digest == variant.signed_digest() != route.digest and variant.proof is None
    assert policy.variant(route, rules) is variant  # cached
