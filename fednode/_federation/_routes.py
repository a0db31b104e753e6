"""Routes and advertisements as values: parsed from the wire, measured, validated (no state, no I/O).

A *route* is one attached MCP server as a node offers it: its owner (origin), server id, prefix,
path of node ids, catalog (raw definitions), the digest the origin signed and the proof of origin
and path (:mod:`fednode._federation._route_proof`). An *advertisement* is one ``fed/routes``
frame. What a node does with them is :mod:`fednode._federation._routing`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import mcp_types
from pydantic import BaseModel, ValidationError

from .._config._callers import EVERYBODY, CallerRules
from .._config._config import MAX_REQUEST_TIMEOUT
from ._route_proof import Proof, Tombstone

Key = tuple[str, str]
"""A route's identity: (owning node id, server id)."""
Path = tuple[str, ...]

KINDS = ("tools", "prompts", "resources", "resourceTemplates")

MAX_PATH = 32  # longer advertised paths are refused: a sane federation is far smaller
MAX_ROUTES_PER_PEER = 1024  # routes (attached servers) accepted from one peer
# What one peer's routes may add up to: catalog items (tools, prompts, resources, templates) and
# their size as JSON. Routes beyond either are refused (logged), so no peer can make this node hold,
# or rebuild its catalog from, more than this.
MAX_ITEMS_PER_PEER = 20_000
MAX_CATALOG_BYTES_PER_PEER = 32 * 1024 * 1024


@attrs.frozen
class Limits:
    """What the routes learned from one peer may add up to."""

    routes: int = MAX_ROUTES_PER_PEER
    items: int = MAX_ITEMS_PER_PEER
    bytes: int = MAX_CATALOG_BYTES_PER_PEER


Item = dict[str, Any] | str
"""One definition of a catalog (a tool, prompt, resource or template): as parsed, or *packed* (its
JSON text). A route learned from a peer holds its catalog packed (see :func:`packed`)."""


def unpacked(item: Item) -> dict[str, Any]:
    """The definition ``item`` is (parsed anew each time for a packed one: the caller may change it)."""
    if isinstance(item, str):
        definition: dict[str, Any] = json.loads(item)
        return definition
    return item


@attrs.frozen
class Route:
    """One attached server as reachable from here: owner, server id, prefix, path and catalog."""

    origin: str
    server: str
    prefix: str
    path: Path
    digest: str
    catalog: Mapping[str, tuple[Item, ...]] = attrs.field(eq=False, repr=False)
    extensions: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    #: the owning node's deadline for this server's requests (``[[servers]] timeout``), if it set one
    timeout: float | None = attrs.field(default=None, eq=False)
    #: what holding it costs: its fields as JSON, in bytes (set for routes learned from peers; see measured)
    size: int = attrs.field(default=0, eq=False)
    #: the origin's version and expiry, and the attestations of the path (None: none came)
    proof: Proof | None = attrs.field(default=None, eq=False, repr=False)
    #: the peer whose word this route was taken on, unverified (``[[peers]] vouch``); None: verified
    vouched_by: str | None = attrs.field(default=None, eq=False)
    #: the name of each definition by kind, in the catalog's order, kept by :func:`packed` (None: not kept)
    names: Mapping[str, tuple[str | None, ...]] | None = attrs.field(default=None, eq=False, repr=False)
    #: who may use the server, as its owning node says (``[[servers]] callers``; covered by the digest)
    callers: CallerRules = attrs.field(default=EVERYBODY, eq=False)

    @property
    def items(self) -> int:
        return sum(len(v) for v in self.catalog.values())

    @property
    def key(self) -> Key:
        return (self.origin, self.server)

    @property
    def stamp(self) -> str:
        """What tells one advertisement of this route from another: the digest, and the signed version
        (a re-signed advertisement is sent again even when its catalog did not change)."""
        return self.digest if self.proof is None else f"{self.digest}@{self.proof.version}"

    def to_wire(self, path: Path, proof: Proof | None = None) -> dict[str, Any]:
        """As advertised with ``path``, carrying ``proof`` (this node's attestation included) if given."""
        wire: dict[str, Any] = {"origin": self.origin, "server": self.server, "prefix": self.prefix, "path": list(path),
                "digest": self.digest, "catalog": self.unpacked_catalog(),
                "extensions": dict(self.extensions)}
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if not self.callers.everybody:
            wire["callers"] = self.callers.to_wire()
        if proof is not None:
            wire["proof"] = proof.to_wire()
        return wire

    def wire_text(self, path: Path, proof: Proof | None = None) -> str:
        """:meth:`to_wire` as JSON text, made without parsing a packed catalog (its definitions are
        JSON already)."""
        head = compact_json({"origin": self.origin, "server": self.server, "prefix": self.prefix, "path": list(path),
                      "digest": self.digest})
        catalog = ",".join(f"{compact_json(kind)}:[{','.join(packed_item(i) for i in items)}]"
                           for kind, items in self.catalog.items())
        text = f'{head[:-1]},"catalog":{{{catalog}}},"extensions":{compact_json(dict(self.extensions))}'
        if self.timeout is not None:
            text += f',"timeout":{compact_json(self.timeout)}'
        if not self.callers.everybody:
            text += f',"callers":{compact_json(self.callers.to_wire())}'
        if proof is not None:
            text += f',"proof":{compact_json(proof.to_wire())}'
        return text + "}"

    def unpacked_catalog(self) -> dict[str, list[dict[str, Any]]]:
        """The catalog with every definition parsed (new objects for packed ones)."""
        return {k: [unpacked(item) for item in v] for k, v in self.catalog.items()}

    def signed_digest(self) -> str:
        """The digest of this route's catalog, extensions and timeout, as the origin computes it."""
        return catalog_digest({**self.unpacked_catalog(), "extensions": self.extensions, "timeout": self.timeout,
                               "callers": self.callers.to_wire()})


def packed(route: Route) -> Route:
    """``route`` with its catalog packed: each definition held as one string of JSON.

    A catalog a peer sends is made of many small objects (a dictionary, strings and nested
    dictionaries per definition), which the allocator keeps its memory for as long as any other
    object allocated among them lives: a large catalog, held a while and dropped, would leave the
    node's memory that much larger. Packed, each definition is one allocation of its own, and
    dropping it gives its memory back; it is parsed where a definition is needed (listing it, a
    tool's input schema, passing the route on).
    """
    names = {kind: tuple(item_name(kind, unpacked(item)) for item in items) for kind, items in route.catalog.items()}
    return attrs.evolve(route, catalog={kind: tuple(packed_item(item) for item in items)
                                        for kind, items in route.catalog.items()}, names=names)


def packed_item(item: Item) -> str:
    """A definition as JSON text (a packed one as it is)."""
    return item if isinstance(item, str) else compact_json(item)


def item_name(kind: str, definition: Mapping[str, Any]) -> str | None:
    """The name a definition of ``kind`` is known by (a URI for resources, a URI template for templates)."""
    key = "uri" if kind == "resources" else "uriTemplate" if kind == "resourceTemplates" else "name"
    value = definition.get(key)
    return value if isinstance(value, str) else None


#: JSON as the peer protocol writes it (compact, UTF-8 as is): packed definitions, routes as text
compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def catalog_digest(catalog: Mapping[str, Any]) -> str:
    """A content hash of a catalog (and its server's extensions, timeout and callers), so unchanged ones are never
    re-sent; the origin signs it, so it covers everything the origin says about its server."""
    hashed = {k: catalog.get(k, ()) for k in (*KINDS, "extensions")}
    for key in ("timeout", "callers"):
        if catalog.get(key) is not None:
            hashed[key] = catalog[key]
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def route_from_wire(item: object) -> Route:
    """A route as a peer advertised it (``fed/routes``), checked for shape.

    Raises:
        ValueError: saying which field is wrong.
    """
    if not isinstance(item, dict):
        raise ValueError("route must be an object")
    origin, server, prefix, path = item.get("origin"), item.get("server"), item.get("prefix"), item.get("path")
    digest, catalog = item.get("digest"), item.get("catalog")
    if not (isinstance(origin, str) and isinstance(server, str) and isinstance(prefix, str)
            and isinstance(digest, str) and isinstance(path, list) and isinstance(catalog, dict)):
        raise ValueError("route fields have the wrong types")
    if not path or len(path) > MAX_PATH or not all(isinstance(p, str) for p in path) or path[0] != origin:
        raise ValueError("route path must start at its origin")
    kinds: dict[str, tuple[dict[str, Any], ...]] = {}
    for kind in KINDS:
        items = catalog.get(kind, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError(f"catalog {kind} must be a list of objects")
        kinds[kind] = tuple(items)
    extensions = item.get("extensions", {})
    if not isinstance(extensions, dict):
        raise ValueError("extensions must be an object")
    timeout = item.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 < timeout <= MAX_REQUEST_TIMEOUT):
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT:g}]")
    callers = item.get("callers")
    if callers is not None and not (isinstance(callers, list) and all(isinstance(c, str) for c in callers)):
        raise ValueError("callers must be a list of strings")
    rules = CallerRules.parse(callers)  # (a ValueError names the bad rule)
    proof = item.get("proof")
    return Route(origin=origin, server=server, prefix=prefix, path=tuple(path), digest=digest, catalog=kinds,
                 extensions=extensions, timeout=None if timeout is None else float(timeout), callers=rules,
                 proof=None if proof is None else Proof.from_wire(proof, len(path)))


_MODELS: dict[str, type[BaseModel]] = {"tools": mcp_types.Tool, "prompts": mcp_types.Prompt,
                                        "resources": mcp_types.Resource,
                                        "resourceTemplates": mcp_types.ResourceTemplate}


def valid_items(kind: str, items: Iterable[Any]) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """The definitions of ``kind`` a client can accept (checked against the SDK's models, kept as
    they are), and why each of the others is not.

    One malformed definition would otherwise make clients' whole ``*/list`` fail.
    """
    model = _MODELS[kind]
    kept: list[dict[str, Any]] = []
    problems: list[str] = []
    for item in items:
        try:
            model.model_validate(item, by_name=False)
        except ValidationError as exc:
            name = item.get("name") or item.get("uri") or item.get("uriTemplate") if isinstance(item, dict) else None
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            message = errors[0]["msg"] if errors else "invalid"
            problems.append(f"{kind} {str(name)[:80]!r}: {where or 'item'}: {message}"[:300])
            continue
        kept.append(item)
    return tuple(kept), problems


def measured(route: Route) -> Route:
    """``route`` with its :attr:`~Route.size`: what holding it costs, as the length of its fields as JSON.

    Everything a peer chose is counted (the catalog, extensions, ids, prefix, digest, path and
    proof), so the per-peer byte limit bounds all of it.
    """
    fields = [route.catalog, route.extensions, route.origin, route.server, route.prefix, route.digest, route.path,
              None if route.proof is None else route.proof.to_wire(), route.callers.to_wire()]
    return attrs.evolve(route, size=len(json.dumps(fields, separators=(",", ":"), ensure_ascii=False, default=str)))


def checked_route(route: Route) -> tuple[Route, list[str]]:
    """``route`` with only the definitions a client can accept and its size; why the others were dropped."""
    kinds: dict[str, tuple[dict[str, Any], ...]] = {}
    problems: list[str] = []
    for kind in KINDS:
        kinds[kind], found = valid_items(kind, route.catalog.get(kind, ()))
        problems += found
    checked = attrs.evolve(route, catalog=kinds)
    # Measured again only if definitions were dropped: otherwise the catalog is the one measured.
    return (measured(checked) if problems or not route.size else checked), problems


@attrs.frozen
class Advertisement:
    """One ``fed/routes`` frame: routes set, routes withdrawn, origins' tombstones (``revoked``, an
    optional field); ``full`` starts a full advertisement, ``more`` says another frame of it follows."""

    routes: tuple[Route, ...] = ()
    withdrawn: tuple[Key, ...] = ()
    full: bool = False
    more: bool = False
    revoked: tuple[Tombstone, ...] = ()

    @classmethod
    def from_wire(cls, params: Mapping[str, Any]) -> Advertisement:
        """Parse a frame.

        Keys to withdraw that are not ``[origin, server]`` pairs are skipped.

        Raises:
            ValueError, TypeError: a malformed route or tombstone, or lists that are not (the whole
                frame is refused).
        """
        revoked = params.get("revoked", [])
        if not isinstance(revoked, list):
            raise ValueError("revoked must be a list of tombstones")
        return cls(routes=tuple(route_from_wire(item) for item in params.get("set", [])),
                   withdrawn=tuple((k[0], k[1]) for k in params.get("withdraw", [])
                                   if isinstance(k, list) and len(k) == 2),
                   full=bool(params.get("full")), more=bool(params.get("more")),
                   revoked=tuple(Tombstone.from_wire(item) for item in revoked))
