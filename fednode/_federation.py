"""The federated catalog, path-vector routing and request forwarding across peer links.

Every node advertises to each peer one *route* per attached MCP server it can reach: the server's
catalog (raw definitions), the prefix its owner chose, and the path of node ids the advertisement
travelled (owner first). A node never accepts a route whose path contains its own id. After the
first full exchange on a link, only differences travel; when a link goes down, every route learned
over it is dropped at once and the change propagates as withdrawals, so convergence never waits
for a periodic re-sync.

Requests (tools/call, prompts/get, resources/read, completion/complete) travel hop by hop as
``fed/forward`` requests to the owning node, which executes them against the attached server.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import mcp_types
import trio
from pydantic import BaseModel, ValidationError

from ._config import MAX_REQUEST_TIMEOUT
from ._errors import (
    FednodeError,
    LinkClosedError,
    PeerError,
    PeerUnavailableError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
    UnknownPeerError,
)
from ._link import Link, RequestContext, Transit
from ._logging import ThrottledLog
from ._parking import token_origin
from ._withdrawn import WithdrawnNames, template_regex

if TYPE_CHECKING:
    from ._node import Node
    from ._upstream import ServerCatalog, UpstreamServer

ROUTES_METHOD = "fed/routes"
FORWARD_METHOD = "fed/forward"
PROGRESS_METHOD = "fed/progress"
_PROGRESS_BUFFER = 64  # progress notifications queued per request before newer ones are dropped

ProgressFn = Callable[[float, "float | None", "str | None"], Awaitable[None]]
KINDS = ("tools", "prompts", "resources", "resourceTemplates")
_CATALOG_FIELDS = {"tools": "tools", "prompts": "prompts", "resources": "resources",
                   "resourceTemplates": "resource_templates"}

# JSON-RPC error codes fednode gives MCP clients (the server-error range); an attached server's own
# errors pass through with their own codes.
UNKNOWN_NAME = -32602
NODE_UNREACHABLE = -32050
SERVER_UNAVAILABLE = -32051
DEADLINE_EXCEEDED = -32052
FORWARDING_LOOP = -32053

MAX_PATH = 32  # longer advertised paths are refused: a sane federation is far smaller
MAX_ROUTES_PER_PEER = 1024  # routes (attached servers) accepted from one peer
# What one peer's routes may add up to: catalog items (tools, prompts, resources, templates) and
# their size as JSON. Routes beyond either are refused (logged), so no peer can make this node hold,
# or rebuild its catalog from, more than this.
MAX_ITEMS_PER_PEER = 20_000
MAX_CATALOG_BYTES_PER_PEER = 32 * 1024 * 1024
MAX_TASKS = 10_000  # tasks remembered for routing tasks/*; the oldest are forgotten first

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
MODERN_ERA = "2026-07-28"
MISSING_CAPABILITY = -32021
# error code -> the outcome label of forwarded-request metrics (any other code: "error")
OVERLOADED = -32004  # as a link refusing requests beyond max_inflight
_OUTCOMES = {UNKNOWN_NAME: "unknown", NODE_UNREACHABLE: "unreachable", SERVER_UNAVAILABLE: "unavailable",
             DEADLINE_EXCEEDED: "deadline", FORWARDING_LOOP: "loop", OVERLOADED: "busy"}


class ForwardError(RequestError):
    """A request could not be executed where it had to go (travels back to the caller unchanged)."""


@attrs.frozen
class Route:
    """One attached server as reachable from here: owner, server id, prefix, path and catalog."""

    origin: str
    server: str
    prefix: str
    path: tuple[str, ...]
    digest: str
    catalog: Mapping[str, tuple[dict[str, Any], ...]] = attrs.field(eq=False, repr=False)
    extensions: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    #: the owning node's deadline for this server's requests (``[[servers]] timeout``), if it set one
    timeout: float | None = attrs.field(default=None, eq=False)
    #: the size of the catalog as JSON (bytes; counted for routes learned from peers)
    size: int = attrs.field(default=0, eq=False)

    @property
    def items(self) -> int:
        return sum(len(v) for v in self.catalog.values())

    @property
    def key(self) -> tuple[str, str]:
        return (self.origin, self.server)

    def to_wire(self, path: tuple[str, ...]) -> dict[str, Any]:
        wire: dict[str, Any] = {"origin": self.origin, "server": self.server, "prefix": self.prefix, "path": list(path),
                "digest": self.digest, "catalog": {k: list(v) for k, v in self.catalog.items()},
                "extensions": dict(self.extensions)}
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        return wire


@attrs.frozen
class Entry:
    """One item a client sees: a tool, prompt, resource or template with its exposed name."""

    kind: str
    exposed: str
    name: str
    server: str
    definition: dict[str, Any] = attrs.field(eq=False, repr=False)
    origins: tuple[str, ...] = ()


def catalog_digest(catalog: Mapping[str, Any]) -> str:
    """A content hash of a catalog (and its server's extensions and timeout), so unchanged ones are never re-sent."""
    hashed = {k: catalog.get(k, ()) for k in (*KINDS, "extensions")}
    if catalog.get("timeout") is not None:
        hashed["timeout"] = catalog["timeout"]
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _route_from_wire(item: object) -> Route:
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
    return Route(origin=origin, server=server, prefix=prefix, path=tuple(path), digest=digest, catalog=kinds,
                 extensions=extensions, timeout=None if timeout is None else float(timeout))


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


def _item_name(kind: str, definition: Mapping[str, Any]) -> str | None:
    key = "uri" if kind == "resources" else "uriTemplate" if kind == "resourceTemplates" else "name"
    value = definition.get(key)
    return value if isinstance(value, str) else None


class Federation:
    """Catalog, routing and forwarding for one node. Created by the node; see :class:`fednode.Node`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.log = node.log
        # for lines a peer can cause at will (what it advertises), and repeated ones
        self._throttled = ThrottledLog(self.log)
        self.upstreams: dict[str, UpstreamServer] = {}
        self.local_catalogs: dict[str, ServerCatalog] = {}
        self._local_kinds: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {}  # validated, by kind
        # server id -> when its exposed names were first claimed (an ever-increasing number): older
        # claims keep their names when another server claims the same ones
        self._claimed: dict[str, int] = {}
        self._claims = itertools.count()
        # peers an advertisement is being sent to -> whether another is due when it is done
        self._advertising: dict[str, bool] = {}
        self._outbound: dict[tuple[str, str], int] = {}  # (origin, server) -> requests sent from here, in flight
        self.learned: dict[str, dict[tuple[str, str], Route]] = {}
        self.advertised: dict[str, dict[tuple[str, str], tuple[tuple[str, ...], str]] | None] = {}
        self._staging: dict[str, dict[tuple[str, str], Route]] = {}
        self._best: dict[tuple[str, str], tuple[Route, str | None]] = {}
        self.extensions: dict[str, Any] = {}
        # task id -> (server, origin) of tasks created through this node (tasks extension), newest last
        self._tasks: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: list[str] = []
        # names that left the catalog because every route to their server went: answered with the
        # unreachable error for a while instead of "unknown" (see _withdrawn)
        self.withdrawn = WithdrawnNames()
        # (server keeping the names, other server) -> the contested names last logged (catalog.conflict)
        self._conflict_sets: dict[tuple[str, str], tuple[str, ...]] = {}
        self.in_flight = 0  # client and peer requests being executed here (passed-on ones: see Link)
        self._templates: list[tuple[re.Pattern[str], Entry]] = []
        self._dirty = trio.Event()
        self._catalog_event = trio.Event()
        # Start-up: set once the federation has settled (or the bound passed); until then clients'
        # lists are held (wait_settled). Pulsed by everything that can settle it.
        self._settled = False
        self._settle_changed = trio.Event()
        self._listeners: list[Callable[[set[str]], None]] = []
        node.register_notification_handler(ROUTES_METHOD, self._on_routes, inline=True)
        node.register_handler(FORWARD_METHOD, self._on_forward)
        node.handlers.transit[FORWARD_METHOD] = self._transit
        node.register_notification_handler(PROGRESS_METHOD, self._on_progress, inline=True)
        from ._parking import Parking
        from ._sessions import Sessions

        self.sessions = Sessions(self)
        self.parking = Parking(node)
        #: per local client session: the (origin, server) pairs its requests went to
        self.session_used: dict[str, set[tuple[str, str]]] = {}
        self._progress_routes: dict[str, trio.MemorySendChannel[tuple[float, float | None, str | None]]] = {}
        #: progress tokens of requests passed on by this node -> the link their notifications go back on
        self._progress_relays: dict[str, Link] = {}

    # -- inputs -----------------------------------------------------------------------------

    def on_catalog_change(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(kinds)`` whenever the exposed catalog changes (kinds that changed)."""
        self._listeners.append(listener)

    def set_local_catalog(self, server_id: str, catalog: ServerCatalog | None) -> None:
        """Record (or with None, forget) the catalog of a server attached to this node.

        Definitions a client could not accept are left out (and logged).
        """
        if catalog is None:
            self.local_catalogs.pop(server_id, None)
            self._local_kinds.pop(server_id, None)
        else:
            self.local_catalogs[server_id] = catalog
            kinds: dict[str, tuple[dict[str, Any], ...]] = {}
            problems: list[str] = []
            for kind, field in _CATALOG_FIELDS.items():
                kinds[kind], found = valid_items(kind, getattr(catalog, field))
                problems += found
            if problems:
                self.log.warning("catalog.invalid_items", server=server_id, dropped=len(problems),
                                 problems=problems[:5])
            self._local_kinds[server_id] = kinds
        self._changed()

    def link_up(self, peer_id: str) -> None:
        """A link to ``peer_id`` came up: send it everything (a full advertisement)."""
        self.advertised[peer_id] = None
        self._dirty.set()
        self.state_changed()

    def state_changed(self) -> None:
        """Something that decides whether the federation has settled changed (see :meth:`wait_settled`)."""
        self._settle_changed.set()
        self._settle_changed = trio.Event()

    def settled(self) -> bool:
        """Whether everything expected at start-up has shown up in the catalog.

        That is: the node has attached its configured servers and each attached server has finished
        its first start attempt (up, or failed), and every peer this node dials (or that is linked
        now) is linked and has sent its first full advertisement. Peers that only dial in are not
        waited for: they may never come.
        """
        return not self._unsettled()

    def _unsettled(self) -> list[str]:
        """What :meth:`settled` is still waiting for (empty: nothing)."""
        from ._upstream import STARTING

        if not self.node.started:
            return ["node start-up"]
        waiting = [f"server {server_id}" for server_id, u in sorted(self.upstreams.items())
                   if u.state == STARTING and u.restarts == 0]
        connected = set(self.node.connected_peers())
        for peer_id in self.node.peer_ids():
            peer = self.node.peer_config(peer_id)
            expected = peer_id in connected or (peer is not None and peer.control is not None)
            if expected and (peer_id not in connected or peer_id not in self.learned):
                waiting.append(f"peer {peer_id}")
        return waiting

    async def wait_settled(self) -> None:
        """Return once the federation has settled (:meth:`settled`), or ``[mcp] first_list_wait``
        after the node started, whichever comes first; at once ever after.

        Clients' lists wait for this, so one asking right after start-up never gets an empty or
        partial catalog (peers still linking, servers still starting) for the federation's.
        """
        if self._settled:
            return
        with trio.move_on_at(self.node.started_at + self.node.config.mcp.first_list_wait) as bound:
            while not self.settled():
                await self._settle_changed.wait()
        if not self._settled and bound.cancelled_caught:
            self.log.warning("catalog.not_settled", waited=self.node.config.mcp.first_list_wait,
                             missing=self._unsettled()[:10])
        self._settled = True

    def link_down(self, peer_id: str) -> None:
        """The link to ``peer_id`` is gone: drop every route learned over it, now."""
        self.advertised.pop(peer_id, None)
        self._staging.pop(peer_id, None)
        if self.learned.pop(peer_id, None):
            self._changed()

    def _on_routes(self, params: Any, context: RequestContext) -> None:
        peer_id = context.peer_id
        peer = self.node.peer_config(peer_id)
        if not isinstance(params, dict) or peer is None:
            return
        try:
            routes = [_route_from_wire(item) for item in params.get("set", [])]
            withdrawn = [tuple(k) for k in params.get("withdraw", []) if isinstance(k, list) and len(k) == 2]
        except (ValueError, TypeError) as exc:
            self._throttled.warning("routes.malformed", key=peer_id, peer=peer_id, error=str(exc))
            return
        # A full advertisement may span several frames ("more": true on all but the last); it is
        # staged and swapped in whole, so clients never see a half-received catalog.
        staging = self._staging.get(peer_id)
        if params.get("full") and staging is None:
            staging = self._staging[peer_id] = {}
        table = staging if staging is not None else dict(self.learned.get(peer_id, {}))
        for key in withdrawn:
            table.pop(key, None)
        items = sum(r.items for r in table.values())
        size = sum(r.size for r in table.values())
        for route in routes:
            old = table.pop(route.key, None)
            if old is not None:
                items, size = items - old.items, size - old.size
            if self.node.id in route.path or route.path[-1] != peer_id or not peer.imports(route.server):
                continue  # a loop, a forged path or not imported: never used
            route = self._checked(peer_id, route)
            # A peer cannot make this node hold unbounded state, whatever it advertises.
            why = None
            if len(table) >= MAX_ROUTES_PER_PEER:
                why = f"more than {MAX_ROUTES_PER_PEER} routes"
            elif items + route.items > MAX_ITEMS_PER_PEER:
                why = f"more than {MAX_ITEMS_PER_PEER} catalog items"
            elif size + route.size > MAX_CATALOG_BYTES_PER_PEER:
                why = f"more than {MAX_CATALOG_BYTES_PER_PEER // (1024 * 1024)} MiB of catalogs"
            if why is not None:
                self._throttled.warning("routes.limit", key=peer_id, peer=peer_id, limit=why, dropped=list(route.key))
                continue
            table[route.key] = route
            items, size = items + route.items, size + route.size
        if staging is not None and params.get("more"):
            return
        self._staging.pop(peer_id, None)
        self.learned[peer_id] = table
        self._changed()

    def _checked(self, peer_id: str, route: Route) -> Route:
        """``route`` with only the definitions a client can accept (the others logged), and its size."""
        kinds: dict[str, tuple[dict[str, Any], ...]] = {}
        problems: list[str] = []
        for kind in KINDS:
            kinds[kind], found = valid_items(kind, route.catalog.get(kind, ()))
            problems += found
        if problems:
            self._throttled.warning("routes.invalid_items", key=peer_id, peer=peer_id, origin=route.origin,
                                    server=route.server, dropped=len(problems), problems=problems[:5])
        size = len(json.dumps(kinds, separators=(",", ":"), ensure_ascii=False, default=str))
        return attrs.evolve(route, catalog=kinds, size=size)

    # -- routing state ----------------------------------------------------------------------

    def _local_routes(self) -> dict[tuple[str, str], Route]:
        routes = {}
        for server_id, kinds in self._local_kinds.items():
            upstream = self.upstreams.get(server_id)
            prefix = upstream.config.exposed_prefix if upstream is not None else server_id
            info = (upstream.server_info if upstream is not None else None) or {}
            capabilities = info.get("capabilities")
            found = capabilities.get("extensions") if isinstance(capabilities, dict) else None
            extensions: dict[str, Any] = found if isinstance(found, dict) else {}
            timeout = upstream.config.timeout if upstream is not None else None
            if timeout is not None:
                timeout = min(timeout, MAX_REQUEST_TIMEOUT)
            routes[(self.node.id, server_id)] = Route(
                origin=self.node.id, server=server_id, prefix=prefix, path=(self.node.id,),
                digest=catalog_digest({**kinds, "extensions": extensions, "timeout": timeout}), catalog=kinds,
                extensions=extensions, timeout=timeout)
        return routes

    def _rtt(self, peer_id: str) -> float:
        supervisor = self.node.supervisor(peer_id)
        link = supervisor.link if supervisor is not None else None
        return link.rtt if link is not None and link.rtt is not None else float("inf")

    def best_routes(self) -> dict[tuple[str, str], tuple[Route, str | None]]:
        """For each (origin, server): the best route and the peer it goes through (None = local)."""
        best: dict[tuple[str, str], tuple[Route, str | None]] = {
            key: (route, None) for key, route in self._local_routes().items()}
        for peer_id, table in self.learned.items():
            for key, route in table.items():
                if key[0] == self.node.id:
                    continue
                current = best.get(key)
                rank = (len(route.path), self._rtt(peer_id), peer_id)
                if current is None or (current[1] is not None and rank < (
                        len(current[0].path), self._rtt(current[1]), current[1])):
                    best[key] = (route, peer_id)
        return best

    def _changed(self) -> None:
        before = {kind: dict(entries) for kind, entries in self.entries.items()}
        self._rebuild_entries()
        self._note_withdrawn(before)
        changed = {kind for kind in KINDS if before[kind].keys() != self.entries[kind].keys() or any(
            before[kind][name].definition != entry.definition or before[kind][name].origins != entry.origins
            for name, entry in self.entries[kind].items() if name in before[kind])}
        extensions: dict[str, Any] = {}
        for route, _via in self._best.values():
            for name, settings in route.extensions.items():
                extensions.setdefault(name, settings)
        if extensions != self.extensions:
            self.extensions = extensions
            changed.add("extensions")
        if changed:
            for listener in self._listeners:
                listener(changed)
            self._catalog_event.set()
            self._catalog_event = trio.Event()
        self._dirty.set()
        self.state_changed()

    def _note_withdrawn(self, before: Mapping[str, Mapping[str, Entry]]) -> None:
        """Remember the names that left the catalog with their server's last route; forget those back.

        A name that left while its server is still routed was removed by the server itself: it is
        unknown now, and not remembered.
        """
        routed = {server for _origin, server in self._best}
        for kind in KINDS:
            now = self.entries[kind]
            for name in now.keys() - before[kind].keys():
                self.withdrawn.forget(kind, name)
            for name in before[kind].keys() - now.keys():
                entry = before[kind][name]
                if entry.server in routed:
                    continue
                local = self.node.id in entry.origins
                if local and entry.server not in self.upstreams:
                    continue  # removed from this node on purpose, not down
                self.withdrawn.remember(kind, name, entry.server, entry.origins, local=local)

    def _withdrawn_error(self, kind: str, name: object) -> ForwardError | None:
        """The unreachable error for a name withdrawn recently (None: not one of those)."""
        if not isinstance(name, str):
            return None
        found = self.withdrawn.for_uri(name) if kind == "resources" else self.withdrawn.get(kind, name)
        if found is None:
            return None
        message, data = found.describe(self.withdrawn.now())
        return ForwardError(SERVER_UNAVAILABLE if found.local else NODE_UNREACHABLE, message, data)

    async def wait_for(self, *names: str, kind: str = "tools", timeout: float = 10.0) -> None:
        """Wait until every exposed name is in this node's catalog of ``kind``.

        Raises:
            trio.TooSlowError: not all of them appeared within ``timeout``.
        """
        with trio.fail_after(timeout):
            while not set(names) <= self.entries[kind].keys():
                await self._catalog_event.wait()

    def _rebuild_entries(self) -> None:
        best = self._best = self.best_routes()
        # Group by server id: the same id on several nodes is one server with replicas.
        by_server: dict[str, list[tuple[Route, str | None]]] = {}
        for route, via in best.values():
            by_server.setdefault(route.server, []).append((route, via))
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        conflicts: list[str] = []
        contested: dict[tuple[str, str], list[str]] = {}  # (keeps the names, the other) -> contested names
        # Who keeps a contested name: a server attached here, then the one that claimed it first
        # (names already given stay put), then the server id. A peer cannot take over a name.
        for server_id in sorted(by_server.keys() - self._claimed.keys()):
            self._claimed[server_id] = next(self._claims)
        for server_id in self._claimed.keys() - by_server.keys():
            del self._claimed[server_id]
        order = sorted(by_server, key=lambda sid: (all(via is not None for _, via in by_server[sid]),
                                                   self._claimed[sid], sid))
        for server_id in order:
            # Nearest first: fewest hops, then the lowest RTT of the first hop (local is 0), then a stable order.
            replicas = sorted(by_server[server_id], key=lambda rv: (
                len(rv[0].path), 0.0 if rv[1] is None else self._rtt(rv[1]), rv[0].origin))
            nearest = replicas[0][0]
            origins = tuple(route.origin for route, _ in replicas)
            for kind in KINDS:
                for definition in nearest.catalog.get(kind, ()):
                    name = _item_name(kind, definition)
                    if name is None:
                        continue
                    exposed = name
                    if kind in ("tools", "prompts") and nearest.prefix:
                        exposed = f"{nearest.prefix}__{name}"
                    if exposed in entries[kind]:
                        other = entries[kind][exposed]
                        contested.setdefault((other.server, server_id), []).append(exposed)
                        if kind in ("resources", "resourceTemplates"):
                            conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                             f"{other.server!r} serves it")
                            continue
                        renamed = f"{nearest.origin}__{exposed}"
                        if renamed in entries[kind]:
                            conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                             f"{renamed!r} is taken too, so the second is not exposed")
                            continue
                        conflicts.append(f"{kind} {exposed!r}: servers {other.server!r} and {server_id!r}; "
                                         f"the second is exposed as {renamed!r}")
                        exposed = renamed
                    shown = dict(definition)
                    if kind in ("tools", "prompts"):
                        shown["name"] = exposed
                    entries[kind][exposed] = Entry(kind=kind, exposed=exposed, name=name, server=server_id,
                                                   definition=shown, origins=origins)
        self._log_conflicts(contested, conflicts)
        self.conflicts = conflicts
        self.entries = entries
        self._templates = [(template_regex(name), entry) for name, entry in entries["resourceTemplates"].items()]

    def _log_conflicts(self, contested: Mapping[tuple[str, str], list[str]], conflicts: list[str]) -> None:
        """One warning per pair of servers claiming the same names, when that set of names is new or changed.

        A catalog update that leaves a pair's contested names as they were logs nothing, so a start-up
        with many overlapping names (or every later update) does not flood the log.
        """
        sets = {pair: tuple(sorted(set(names))) for pair, names in contested.items()}
        for (keeper, other), names in sorted(sets.items()):
            if self._conflict_sets.get((keeper, other)) == names:
                continue
            example = next((c for c in conflicts if f"servers {keeper!r} and {other!r}" in c), "")
            self.log.warning("catalog.conflict", servers=[keeper, other], kept_by=keeper, count=len(names),
                             names=list(names[:20]), example=example)
        self._conflict_sets = sets

    # -- advertising ------------------------------------------------------------------------

    def desired_for(self, peer_id: str) -> dict[tuple[str, str], tuple[Route, tuple[str, ...]]]:
        """What this node should advertise to ``peer_id``: route and the path it carries."""
        result = {}
        for key in self._best:
            path = self._advertised_path(peer_id, key)
            if path is not None:
                result[key] = (self._best[key][0], path)
        return result

    def _advertised_path(self, peer_id: str, key: tuple[str, str]) -> tuple[str, ...] | None:
        """The path this node offers ``peer_id`` for ``key``, or None if policy keeps it from that peer."""
        peer = self.node.peer_config(peer_id)
        best = self._best.get(key)
        if peer is None or best is None:
            return None
        route, via = best
        if peer_id in route.path or not peer.exports(route.server):
            return None
        if via is not None and not (peer.transit and self.node.config.mcp.transit):
            return None
        path = route.path if via is None else (*route.path, self.node.id)
        return path if len(path) <= MAX_PATH else None

    async def advertiser(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send each connected peer what changed, whenever something changed. Runs until cancelled.

        Each peer is sent to by a task of its own, so a slow peer delays only its own updates; a
        change while one is being sent means one more round for that peer when it is done.
        """
        task_status.started()
        async with trio.open_nursery() as senders:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                for peer_id in self.node.connected_peers():
                    if peer_id in self._advertising:
                        self._advertising[peer_id] = True
                    else:
                        self._advertising[peer_id] = False
                        senders.start_soon(self._advertise_to, peer_id)

    async def _advertise_to(self, peer_id: str) -> None:
        try:
            while True:
                await self._advertise(peer_id)
                if not self._advertising.get(peer_id):
                    return
                self._advertising[peer_id] = False
        finally:
            del self._advertising[peer_id]

    async def _advertise(self, peer_id: str) -> None:
        desired = self.desired_for(peer_id)
        previous = self.advertised.get(peer_id)
        wire = {key: route.to_wire(path) for key, (route, path) in desired.items()
                if previous is None or previous.get(key) != (path, route.digest)}
        sizes = {key: len(json.dumps(item, separators=(",", ":"), ensure_ascii=False, default=str))
                 for key, item in wire.items()}
        budget = self._frame_budget()
        for key in [key for key, size in sizes.items() if size > budget]:
            # It cannot be sent: the peer must not keep routing to what it had before (withdrawn
            # below), and it is not recorded as sent, so it goes out once it fits again.
            self._throttled.error("routes.too_large", key=key[1], peer=peer_id, server=key[1], origin=key[0],
                                  size=sizes[key], limit=budget, hint="raise [link] max_message_size on every node")
            del desired[key], wire[key], sizes[key]
        snapshot = {key: (path, route.digest) for key, (route, path) in desired.items()}
        full = previous is None
        withdrawn = [] if previous is None else [list(key) for key in previous if key not in desired]
        if not full and not wire and not withdrawn:
            return
        frames = self._frames(full, [(wire[key], sizes[key]) for key in wire], withdrawn, budget)
        try:
            for frame in frames:
                await self.node.notify(peer_id, ROUTES_METHOD, frame)
        except FednodeError as exc:
            self.advertised.pop(peer_id, None)  # resent in full when the link is back
            self.log.info("routes.not_sent", peer=peer_id, error=str(exc))
            return
        self.advertised[peer_id] = snapshot

    def _frame_budget(self) -> int:
        """The largest route (as JSON) that fits in one advertisement frame."""
        return int(self.node.config.link.max_message_size * 0.9) - 1024

    @staticmethod
    def _frames(full: bool, routes: list[tuple[dict[str, Any], int]], withdrawn: list[list[str]],
                budget: int) -> list[dict[str, Any]]:
        """Pack an advertisement (routes with their JSON sizes) into frames of at most ``budget``."""
        frames: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        size = 0
        for route, length in routes:
            if current and size + length > budget:
                frames.append({"full": full, "set": current, "withdraw": [], "more": True})
                current, size = [], 0
            current.append(route)
            size += length
        frames.append({"full": full, "set": current, "withdraw": withdrawn, "more": False})
        return frames

    # -- looking things up --------------------------------------------------------------------

    def list_items(self, kind: str) -> list[dict[str, Any]]:
        """The exposed definitions of one kind, sorted by exposed name."""
        return [entry.definition for _, entry in sorted(self.entries.get(kind, {}).items())]

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        entry = self.entries["tools"].get(name)
        schema = entry.definition.get("inputSchema") if entry is not None else None
        return schema if isinstance(schema, Mapping) else None

    def resolve(self, method: str, params: Mapping[str, Any]) -> tuple[Entry, dict[str, Any]]:
        """Find the entry a client request is about; returns it and the params to send upstream.

        Raises:
            ForwardError: unknown name or URI (-32602); a name withdrawn recently with its server's
                last route: -32050 (owning node unreachable) or -32051 (server attached here down),
                naming the server, its node and since when.
        """
        upstream_params = dict(params)
        if method in ("tools/call", "prompts/get"):
            kind = "tools" if method == "tools/call" else "prompts"
            name = params.get("name")
            entry = self.entries[kind].get(name) if isinstance(name, str) else None
            if entry is None:
                raise self._withdrawn_error(kind, name) or ForwardError(UNKNOWN_NAME, f"Unknown {kind[:-1]}: {name}")
            upstream_params["name"] = entry.name
            return entry, upstream_params
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            if isinstance(uri, str):
                entry = self.entries["resources"].get(uri) or self._template_for(uri)
                if entry is not None:
                    return entry, upstream_params
            raise self._withdrawn_error("resources", uri) or ForwardError(UNKNOWN_NAME, f"Unknown resource: {uri}",
                                                                          {"uri": uri})
        if method == "completion/complete":
            ref = params.get("ref")
            if isinstance(ref, dict) and ref.get("type") == "ref/prompt":
                entry = self.entries["prompts"].get(ref.get("name", ""))
                if entry is not None:
                    upstream_params["ref"] = {**ref, "name": entry.name}
                    return entry, upstream_params
                if (error := self._withdrawn_error("prompts", ref.get("name"))) is not None:
                    raise error
            if isinstance(ref, dict) and ref.get("type") == "ref/resource":
                uri = ref.get("uri", "")
                entry = self.entries["resourceTemplates"].get(uri) or self.entries["resources"].get(uri)
                if entry is not None:
                    return entry, upstream_params
                error = self._withdrawn_error("resourceTemplates", uri) or self._withdrawn_error("resources", uri)
                if error is not None:
                    raise error
            raise ForwardError(UNKNOWN_NAME, f"Unknown completion reference: {json.dumps(ref)[:200]}")
        raise ForwardError(-32601, f"Method not forwarded: {method}")

    def _template_for(self, uri: str) -> Entry | None:
        for pattern, entry in self._templates:
            if pattern.match(uri):
                return entry
        return None

    # -- forwarding ---------------------------------------------------------------------------

    async def execute(self, method: str, params: dict[str, Any], *, timeout: float | None = None,
                      progress: ProgressFn | None = None, session: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a client request wherever its server is, nearest replica first; return the raw result.

        Args:
            progress: awaited with ``(progress, total, message)`` for each progress notification the
                server sends about this request, all before this method returns.

        Raises:
            ForwardError / RequestError: with the code to give the client.
        """
        return await self._measured("client", method, self._execute(method, params, timeout=timeout,
                                                                    progress=progress, session=session))

    async def _measured(self, source: str, method: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """Await ``work`` counted as in flight, and record its outcome and latency in the node's metrics."""
        started = trio.current_time()
        outcome = "cancelled"
        self.in_flight += 1
        try:
            result = await work
            outcome = "tool_error" if isinstance(result, dict) and result.get("isError") is True else "ok"
            return result
        except RequestError as exc:
            outcome = _OUTCOMES.get(exc.code, "error")
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            self.in_flight -= 1
            self.node.metrics.observe_forward(source, method, outcome, trio.current_time() - started)

    def routes_by_origin(self) -> dict[str, int]:
        """How many attached servers are reachable from here, per owning node (this one included)."""
        return dict(collections.Counter(origin for origin, _server in self._best))

    async def _execute(self, method: str, params: dict[str, Any], *, timeout: float | None,
                       progress: ProgressFn | None, session: dict[str, Any] | None) -> dict[str, Any]:
        if method in TASK_METHODS:
            server, origins, upstream_params = self._resolve_task(params)
        else:
            try:
                entry, upstream_params = self.resolve(method, params)
            except ForwardError as exc:
                if exc.code != UNKNOWN_NAME or self._settled:
                    raise
                # Right after start-up the name may be on its way (as for lists): wait, once.
                await self.wait_settled()
                entry, upstream_params = self.resolve(method, params)
            server, origins = entry.server, entry.origins
            parked_at = token_origin(params.get("requestState"))
            if parked_at in origins:
                origins = (parked_at,)  # a retry answering a parked call goes where the call waits
        if timeout is None:
            # The owning node's [[servers]] timeout when it set one (it knows its slow servers),
            # else this node's [mcp] request_timeout.
            best = self._best.get((origins[0], server)) if origins else None
            route_timeout = best[0].timeout if best is not None else None
            timeout = route_timeout or self.node.config.mcp.request_timeout
        deadline = trio.current_time() + timeout
        last: ForwardError | None = None
        for origin in origins:
            if session is not None:
                self.session_used.setdefault(session["id"], set()).add((origin, server))
            try:
                result = await self._send(origin, server, method, upstream_params, deadline, (), progress, session)
            except _NotDelivered as exc:
                last = exc.error  # fail over to the next replica: this one never saw the request
                continue
            task_id = result.get("taskId")
            if result.get("resultType") == "task" and isinstance(task_id, str):
                # Later tasks/* calls about it must reach the same server instance.
                self._tasks[task_id] = (server, origin)
                while len(self._tasks) > MAX_TASKS:
                    self._tasks.popitem(last=False)
            return result
        assert last is not None
        raise last

    def _resolve_task(self, params: Mapping[str, Any]) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        meta = params.get("_meta")
        capabilities = meta.get(CLIENT_CAPABILITIES_KEY) if isinstance(meta, Mapping) else None
        extensions = capabilities.get("extensions") if isinstance(capabilities, Mapping) else None
        if not isinstance(extensions, Mapping) or TASKS_EXTENSION not in extensions:
            raise ForwardError(MISSING_CAPABILITY, f"tasks methods need the {TASKS_EXTENSION} extension",
                               {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})
        task_id = params.get("taskId")
        where = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if where is None:
            raise ForwardError(UNKNOWN_NAME, f"Unknown task: {task_id}", {"taskId": task_id})
        server, origin = where
        return server, (origin,), dict(params)

    async def _send(self, origin: str, server: str, method: str, params: dict[str, Any], deadline: float,
                    trace: tuple[str, ...], progress: ProgressFn | None,
                    session: dict[str, Any] | None = None) -> dict[str, Any]:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise ForwardError(DEADLINE_EXCEEDED, f"Deadline exceeded before reaching {server!r} on {origin!r}")
        if origin == self.node.id:
            return await self._call_local(server, method, params, remaining, progress, session, trace)
        via = self._next_hop(origin, server)
        if via is None:
            raise _NotDelivered(ForwardError(NODE_UNREACHABLE, f"Node {origin!r} (server {server!r}) is unreachable"))
        # One server's calls may hold at most half of a link's in-flight requests, so a server that
        # hangs (and a client that keeps calling it) cannot make the others on that node unreachable.
        key = (origin, server)
        share = max(1, self.node.config.link.max_inflight // 2)
        if self._outbound.get(key, 0) >= share:
            raise _NotDelivered(ForwardError(OVERLOADED, f"Too many requests in flight to server {server!r} on "
                                                         f"{origin!r} (at most {share}); retry later"))
        self._outbound[key] = self._outbound.get(key, 0) + 1
        try:
            return await self._forward(via, origin, server, method, params, remaining, trace, progress, session)
        finally:
            self._outbound[key] -= 1
            if not self._outbound[key]:
                del self._outbound[key]

    async def _forward(self, via: str, origin: str, server: str, method: str, params: dict[str, Any],
                       remaining: float, trace: tuple[str, ...], progress: ProgressFn | None,
                       session: dict[str, Any] | None) -> dict[str, Any]:
        forward: dict[str, Any] = {"origin": origin, "server": server, "method": method, "params": params,
                                   "timeout": remaining, "trace": [*trace, self.node.id]}
        if session is not None:
            forward["session"] = session
        if progress is None:
            return await self._request(via, origin, server, forward, remaining)
        # Progress comes back as fed/progress notifications naming our token; they are relayed in
        # order, and all of them before the result (the relay drains before the nursery exits).
        token = uuid.uuid4().hex
        forward["progress"] = token
        send, receive = trio.open_memory_channel[tuple[float, float | None, str | None]](_PROGRESS_BUFFER)
        self._progress_routes[token] = send
        async with trio.open_nursery() as relay:
            relay.start_soon(_relay_progress, receive, progress)
            try:
                return await self._request(via, origin, server, forward, remaining)
            finally:
                del self._progress_routes[token]
                send.close()

    def _on_progress(self, params: Any, context: RequestContext) -> None:
        if not isinstance(params, dict):
            return
        token = params.get("token")
        relay = self._progress_relays.get(token)  # type: ignore[arg-type]
        if relay is not None:  # a request passed on by this node: the notification goes back as is
            relay.forward_notification(PROGRESS_METHOD, params)
            return
        route = self._progress_routes.get(token)  # type: ignore[arg-type]
        value, total, message = params.get("progress"), params.get("total"), params.get("message")
        if route is None or not isinstance(value, int | float) or isinstance(value, bool):
            return
        item = (float(value), float(total) if isinstance(total, int | float) else None,
                message if isinstance(message, str) else None)
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            route.send_nowait(item)  # a client that cannot keep up loses progress, never results

    async def _request(self, via: str, origin: str, server: str, forward: dict[str, Any],
                       remaining: float) -> dict[str, Any]:
        try:
            result = await self.node.request(via, FORWARD_METHOD, forward, timeout=remaining)
        except (PeerUnavailableError, UnknownPeerError) as exc:
            raise _NotDelivered(ForwardError(NODE_UNREACHABLE, f"Node {origin!r} is unreachable: {exc}")) from None
        except LinkClosedError as exc:
            raise ForwardError(NODE_UNREACHABLE, f"Link to {via!r} lost while forwarding to {origin!r}: {exc}") \
                from None
        except RequestTimeoutError:
            raise ForwardError(DEADLINE_EXCEEDED, f"Deadline exceeded waiting for {server!r} on {origin!r}") from None
        except RemoteError as exc:
            raise ForwardError(exc.code, exc.remote_message, exc.data) from None
        except PeerError as exc:
            raise ForwardError(NODE_UNREACHABLE, str(exc)) from None
        if not isinstance(result, dict):
            raise ForwardError(-32603, f"Malformed result from {origin!r}")
        return result

    def next_hop(self, origin: str, server: str) -> str | None:
        """The peer a request for ``server`` on ``origin`` goes to next (None: no route)."""
        return self._next_hop(origin, server)

    def _next_hop(self, origin: str, server: str) -> str | None:
        # The table as of the last routing change: recomputing per request would cost O(routes).
        best = self._best.get((origin, server))
        return best[1] if best is not None else None

    async def _call_local(self, server: str, method: str, params: dict[str, Any], timeout: float,
                          progress: ProgressFn | None, session: dict[str, Any] | None = None,
                          trace: tuple[str, ...] = ()) -> dict[str, Any]:
        from ._upstream import ServerUnavailableError, UpstreamError

        upstream = self.upstreams.get(server)
        if upstream is None:
            raise ForwardError(SERVER_UNAVAILABLE, f"Server {server!r} is not attached to node {self.node.id!r}")
        if upstream.config.timeout is not None:
            timeout = min(timeout, upstream.config.timeout)
        try:
            if session is not None:
                # A legacy client session gets its own connection: its log level, subscriptions and
                # the server's messages for it stay its own.
                try:
                    own = await self.sessions.upstream_for(server, session, trace, timeout)
                except trio.TooSlowError:
                    raise ForwardError(DEADLINE_EXCEEDED,
                                       f"Deadline exceeded while server {server!r} opened a session") from None
                if own is not None:
                    upstream = own
                    await self.sessions.apply_level(server, session, upstream)
            meta = params.get("_meta")
            client_era = meta.get(PROTOCOL_VERSION_KEY) if isinstance(meta, dict) else None
            if (session is None and client_era == MODERN_ERA and upstream.era != MODERN_ERA
                    and method in ("tools/call", "prompts/get", "resources/read")):
                # A legacy server may ask this stateless client questions: park the call (see _parking).
                return await self.parking.call(server, upstream, method, params, timeout, progress)
            return await upstream.call(method, params, timeout=timeout, on_progress=progress)
        except UpstreamError as exc:
            raise ForwardError(exc.code, exc.message, exc.data) from None
        except ServerUnavailableError as exc:
            raise ForwardError(SERVER_UNAVAILABLE, f"Server {server!r} is down: {exc}") from None
        except ForwardError:  # already carries the code the client should see (parked calls)
            raise
        except FednodeError as exc:  # the upstream's own timeout, and the like
            code = DEADLINE_EXCEEDED if "timeout" in type(exc).__name__.lower() else SERVER_UNAVAILABLE
            raise ForwardError(code, f"Server {server!r}: {exc}") from None

    def _check_forward(self, params: Any, peer_id: str) -> tuple[str, str, str, dict[str, Any], float, list[str]]:
        """Validate a fed/forward request from ``peer_id``: its fields, loops and this node's policy.

        Returns ``(origin, server, method, params, timeout, trace)``.

        Raises:
            ForwardError: malformed (-32602), a forwarding loop, or a server not offered to the peer.
        """
        if not isinstance(params, dict):
            raise ForwardError(-32602, "fed/forward params must be an object")
        origin, server, method = params.get("origin"), params.get("server"), params.get("method")
        upstream_params, timeout, trace = params.get("params"), params.get("timeout"), params.get("trace", [])
        if not (isinstance(origin, str) and isinstance(server, str) and isinstance(method, str)
                and isinstance(upstream_params, dict) and isinstance(timeout, int | float) and timeout > 0
                and isinstance(trace, list) and len(trace) <= MAX_PATH):
            raise ForwardError(-32602, "malformed fed/forward request")
        if self.node.id in trace:
            raise ForwardError(FORWARDING_LOOP, f"Forwarding loop through {self.node.id!r}")
        # Policy is enforced here, not only by what is advertised: a peer may only reach what this
        # node offers it (export, transit), whatever it asks for.
        if self._advertised_path(peer_id, (origin, server)) is None:
            self.log.warning("forward.refused", peer=peer_id, origin=origin, server=server)
            raise ForwardError(UNKNOWN_NAME, f"Server {server!r} on {origin!r} is not offered to {peer_id!r}")
        session = params.get("session")
        if session is not None and not (isinstance(session, dict) and isinstance(session.get("id"), str)):
            raise ForwardError(-32602, "malformed session in fed/forward")
        # A peer may not hold a request here for longer than this node would allow itself.
        best = self._best.get((origin, server))
        limit = max(self.node.config.mcp.request_timeout * 10, (best[0].timeout or 0.0) if best else 0.0)
        timeout = min(float(timeout), limit)
        return origin, server, method, upstream_params, timeout, trace

    def _transit(self, params: Any, context: RequestContext, inbound: Link) -> Transit | None:
        """Pass a fed/forward for a server on another node straight on to the next hop (run by the reader).

        Returns None for this node's own servers (served by :meth:`_on_forward` in a task).
        """
        if isinstance(params, dict) and params.get("origin") == self.node.id:
            return None  # checked once, by _on_forward
        origin, server, _method, _params, timeout, trace = self._check_forward(params, context.peer_id)
        via = self._next_hop(origin, server)
        supervisor = self.node.supervisor(via) if via is not None else None
        onward = supervisor.link if supervisor is not None else None
        if onward is None or not onward.is_up:
            raise ForwardError(NODE_UNREACHABLE, f"Node {origin!r} (server {server!r}) is unreachable")
        token = params.get("progress")
        done: Callable[[], None] | None = None
        if isinstance(token, str):
            if token in self._progress_relays or token in self._progress_routes:
                return None  # a reused token: the task path mints a fresh one
            self._progress_relays[token] = inbound

            def done() -> None:
                del self._progress_relays[token]

        def error(why: str) -> tuple[int, str]:
            if why == "timeout":
                return DEADLINE_EXCEEDED, f"Deadline exceeded waiting for {server!r} on {origin!r}"
            if why.startswith("lost: "):
                return NODE_UNREACHABLE, f"Link to {via!r} lost while forwarding to {origin!r}: {why[6:]}"
            return -32603, f"Cannot forward to {origin!r}: {why}"

        return Transit(onward=onward, params={**params, "timeout": timeout, "trace": [*trace, self.node.id]},
                       timeout=timeout, error=error, done=done)

    async def _on_forward(self, params: Any, context: RequestContext) -> Any:
        method = params.get("method") if isinstance(params, dict) else None
        return await self._measured("peer", method if isinstance(method, str) else "other",
                                    self._serve_forward(params, context))

    async def _serve_forward(self, params: Any, context: RequestContext) -> Any:
        origin, server, method, upstream_params, timeout, trace = self._check_forward(params, context.peer_id)
        deadline = trio.current_time() + timeout
        token = params.get("progress")
        progress: ProgressFn | None = None
        if isinstance(token, str):
            async def progress(value: float, total: float | None, message: str | None) -> None:
                with contextlib.suppress(FednodeError):
                    await self.node.notify(context.peer_id, PROGRESS_METHOD,
                                           {"token": token, "progress": value, "total": total, "message": message})
        try:
            return await self._send(origin, server, method, upstream_params, deadline, tuple(trace), progress,
                                    params.get("session"))
        except _NotDelivered as exc:
            raise exc.error from None


async def _relay_progress(receive: trio.MemoryReceiveChannel[tuple[float, float | None, str | None]],
                          progress: ProgressFn) -> None:
    async with receive:
        async for value, total, message in receive:
            with contextlib.suppress(Exception):  # the caller's progress sink failing must not fail the call
                await progress(value, total, message)


class _NotDelivered(Exception):
    """The request never left this node (no route, no live link): safe to try another replica."""

    def __init__(self, error: ForwardError) -> None:
        self.error = error
        super().__init__(str(error))
