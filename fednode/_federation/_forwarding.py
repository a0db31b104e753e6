"""Forwarding requests across peer links to the node whose attached server serves them.

Requests (tools/call, prompts/get, resources/read, completion/complete) travel hop by hop as
``fed/forward`` requests to the owning node, which executes them against the attached server.
Progress notifications travel back as ``fed/progress``; a node in between passes both on from
its link's reader (a *transit*), without a task of its own.
"""

from __future__ import annotations

import collections
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import trio

from .._config._callers import Caller
from .._errors import (
    DEADLINE_EXCEEDED,
    DEFINITION_HELD,
    FORBIDDEN,
    FORWARDING_LOOP,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MISSING_CAPABILITY,
    NODE_UNREACHABLE,
    OVERLOADED,
    SERVER_UNAVAILABLE,
    UNKNOWN_NAME,
    FednodeError,
    ForwardError,
    LinkClosedError,
    NotDelivered,
    PeerError,
    PeerUnavailableError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
    UnknownPeerError,
)
from .._peers._link import Link, RequestContext
from .._peers._shares import LOCAL, FairShares, Refusal
from ._audit import AuditEntry, AuditLog, item_name, outcome_of
from ._caller_proof import CallerPolicy, CallerStatements, forbidden
from ._catalog import Catalog
from ._local import LocalServers, ProgressFn, token_origin
from ._name_policy import forwarded_item
from ._routes import MAX_PATH, Key, Path
from ._routing import RoutingTable
from ._traceparent import trace_of, with_traceparent
from ._transit import TransitPath

FORWARD_METHOD = "fed/forward"
PROGRESS_METHOD = "fed/progress"
_PROGRESS_BUFFER = 64  # progress notifications queued per request before newer ones are dropped

MAX_TASKS = 10_000  # tasks remembered for routing tasks/*; the oldest are forgotten first

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
MODERN_ERA = "2026-07-28"
# error code -> the outcome label of forwarded-request metrics (any other code: "error")
_OUTCOMES = {UNKNOWN_NAME: "unknown", NODE_UNREACHABLE: "unreachable", SERVER_UNAVAILABLE: "unavailable",
             DEADLINE_EXCEEDED: "deadline", FORWARDING_LOOP: "loop", OVERLOADED: "busy", FORBIDDEN: "forbidden"}


class ForwardShares:
    """The fair shares (see :mod:`fednode._peers._shares`) of forwarded requests: of those sent on each link
    (own and passed on, by next hop; ``max_inflight`` each) and of those run against this node's
    servers (twice ``max_inflight``). Parties: the peers linked now (only they can send requests) and LOCAL.

    Args:
        node_id: this node's id (for messages).
        max_inflight: the links' ``max_inflight``.
        on_refused: records each refusal as ``(pool, reason, party)`` (pool ``link`` or ``node``).
    """

    def __init__(self, node_id: str, max_inflight: int,
                 on_refused: Callable[[str, str, str], None] | None = None) -> None:
        self.node_id = node_id
        self.max_inflight = max_inflight
        self._on_refused = on_refused
        self._peers: frozenset[str] = frozenset()
        self.links: dict[str, FairShares] = {}
        #: requests run against this node's servers
        self.here = FairShares(2 * max_inflight, (LOCAL,))

    def set_peers(self, peer_ids: Collection[str]) -> None:
        """The linked peers changed: each of them (and LOCAL) has a reserve in every pool."""
        self._peers = frozenset(peer_ids)
        self.here.set_parties(self._peers | {LOCAL})
        for via, pool in list(self.links.items()):
            if via not in self._peers and not pool.in_use:
                del self.links[via]
            else:
                pool.set_parties((self._peers - {via}) | {LOCAL})

    def link(self, via: str) -> FairShares:
        """The pool of the requests sent from here on the link to ``via``."""
        pool = self.links.get(via)
        if pool is None:
            pool = self.links[via] = FairShares(self.max_inflight, (self._peers - {via}) | {LOCAL})
        return pool

    def acquire(self, via: str | None, party: str, key: Key) -> FairShares:
        """Take a slot for ``party`` and server ``key`` on the link to ``via`` (None: of this node's pool).

        Returns the pool, to release the slot to.

        Raises:
            ForwardError: -32004, the party's share or the server's half is used up (counted).
        """
        pool = self.here if via is None else self.link(via)
        refusal = pool.acquire(party, key)
        if refusal is None:
            return pool
        if self._on_refused is not None:
            self._on_refused("node" if via is None else "link", refusal.value, party)
        origin, server = key
        if refusal is Refusal.SERVER:
            raise ForwardError(OVERLOADED, f"Too many requests in flight to server {server!r} on "
                                           f"{origin!r} (at most {pool.server_cap}); retry later")
        who = "This node's clients hold" if party == LOCAL else f"Peer {party!r} holds"
        where = f"at {self.node_id!r}" if via is None else f"from {self.node_id!r} to {via!r}"
        raise ForwardError(OVERLOADED, f"{who} their fair share of the requests in flight {where}; retry later")


def _shown_to(error: ForwardError, callers: CallerPolicy, caller: Caller) -> ForwardError:
    """``error``, or FORBIDDEN if it says an item is held (:data:`DEFINITION_HELD`) and ``caller`` may not use
    its server anyway: what changed in a tool is told only to those who may call it."""
    data = error.data
    if (error.code == DEFINITION_HELD and isinstance(data, dict)
            and not callers.rules_of(data["origin"], data["server"]).allows(caller)):
        return forbidden(caller, data["server"], data["origin"])
    return error


class Forwarding:
    """Runs client requests wherever their server is, and serves and passes on ``fed/forward``.

    Args:
        node_id: this node's id.
        table: the routing table (next hops, and what each peer is offered).
        catalog: the exposed catalog (which server a name belongs to).
        local: the servers attached to this node (requests for them are run there).
        request: sends a request to a peer and returns its result.
        notify: sends a notification to a peer.
        link_to: the live link to a peer, if any (transits go straight onto it).
        offered_path: the path this node offers a peer for a route (None: policy keeps it from the peer).
        request_timeout: this node's ``[mcp] request_timeout`` now (it can change on reload).
        max_inflight: the links' ``max_inflight``: the size of each link's pool of requests sent
            on it, shared fairly (see :mod:`fednode._peers._shares`); the node's own pool (requests run
            against its servers) is twice that.
        observe: records one forwarded request's outcome and seconds (metrics).
        on_refused: records a request refused for lack of a fair share: ``(pool, reason, party)``
            with pool ``link`` or ``node`` and reason ``share`` or ``server`` (metrics).
        is_settled: whether the catalog has settled after start-up.
        wait_settled: returns once it has (bounded).
        health_changed: called when a peer's forwards failing (or recovering) changed its preference
            in the routing table (the best routes must be recomputed).
        log: the node's logger.
        item_offered: whether a peer's ``export`` lets it call a tool or prompt: ``(peer, server, kind,
            name)``; a fed/forward for one it does not is refused (None: server ids decide alone).
        statements: signs this node's statements of who is calling, and checks peers' (None: none are
            made, and every caller arriving through a peer is that peer).
        audit: the node's audit log (a line per request served or passed on; none if not given).
    """

    def __init__(self, node_id: str, table: RoutingTable, catalog: Catalog, local: LocalServers, *,
                 request: Callable[..., Awaitable[Any]], notify: Callable[[str, str, Any], Awaitable[None]],
                 link_to: Callable[[str], Link | None], offered_path: Callable[[str, Key], Path | None],
                 request_timeout: Callable[[], float], max_inflight: int,
                 observe: Callable[[str, str, str, float], None], is_settled: Callable[[], bool],
                 wait_settled: Callable[[], Awaitable[None]], log: Any,
                 health_changed: Callable[[], None] = lambda: None,
                 on_refused: Callable[[str, str, str], None] | None = None,
                 item_offered: Callable[[str, str, str, str], bool] | None = None,
                 statements: CallerStatements | None = None, audit: AuditLog | None = None) -> None:
        self.node_id = node_id
        self.audit = audit or AuditLog(node_id, log=log)
        self._table = table
        self._catalog = catalog
        self._local = local
        self._peer_request = request
        self._notify = notify
        self._link_to = link_to
        self._offered_path = offered_path
        self._item_offered = item_offered
        self._request_timeout = request_timeout
        self._observe = observe
        self._is_settled = is_settled
        self._wait_settled = wait_settled
        self._health_changed = health_changed
        self._log = log
        #: who may use what, and who is calling
        self.callers = CallerPolicy(node_id, local, lambda key: (table.best.get(key) or (None,))[0], statements)
        self.in_flight = 0  # client and peer requests being executed here (passed-on ones: see Link)
        #: fair shares of the requests sent on each link and of those run here
        self.shares = ForwardShares(node_id, max_inflight, on_refused)
        # task id -> (server, origin) of tasks created through this node (tasks extension), newest last
        self._tasks: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        #: per local client session: the (origin, server) pairs its requests went to
        self.session_used: dict[str, set[Key]] = {}
        self._progress_routes: dict[str, trio.MemorySendChannel[tuple[float, float | None, str | None]]] = {}
        #: progress tokens of requests passed on by this node -> the link their notifications go back on
        self._progress_relays: dict[str, Link] = {}
        #: passes a fed/forward for another node's server straight on (run by the link's reader; see _transit)
        self.transit = TransitPath(node_id, check=self._check_forward, next_hop=self._next_hop, link_to=link_to,
                                   acquire=self.shares.acquire, relays=self._progress_relays,
                                   in_use=self._progress_routes.__contains__, audit=self.audit,
                                   believed=self.callers.believed).transit

    async def execute(self, method: str, params: dict[str, Any], *, timeout: float | None = None,
                      progress: ProgressFn | None = None, session: dict[str, Any] | None = None,
                      caller: Caller | None = None) -> dict[str, Any]:
        """Run a client request wherever its server is, nearest replica first; return the raw result.

        Only replicas whose owning node lets ``caller`` use the server are tried (its
        ``[[servers]] callers``, as advertised with the route).

        Args:
            caller: who is calling (None: an anonymous client of this node).
            progress: awaited with ``(progress, total, message)`` for each progress notification the
                server sends about this request, all before this method returns.

        Raises:
            ForwardError / RequestError: with the code to give the client.
        """
        caller = caller or Caller(entry=self.node_id)
        # The client's trace goes on (a new one if it sent none valid), with this node's span as parent.
        trace = trace_of(params)
        entry = AuditEntry(role="entry", method=method, trace=trace, path=[self.node_id], caller=caller,
                           name=item_name(method, params))
        params = with_traceparent(params, trace.child())
        return await self._measured("client", method, self._execute(
            method, params, timeout=timeout, progress=progress, session=session, caller=caller, audit=entry), entry)

    async def _measured(self, source: str, method: str, work: Awaitable[dict[str, Any]],
                        entry: AuditEntry) -> dict[str, Any]:
        """Await ``work`` counted as in flight, record its outcome and latency in the node's metrics,
        and its audit line."""
        started = trio.current_time()
        outcome, audited, code = "cancelled", "cancelled", None
        self.in_flight += 1
        try:
            result = await work
            outcome = audited = "tool_error" if isinstance(result, dict) and result.get("isError") is True else "ok"
            return result
        except RequestError as exc:
            outcome, audited, code = _OUTCOMES.get(exc.code, "error"), entry.outcome or outcome_of(exc.code), exc.code
            raise
        except Exception:
            outcome, audited, code = "internal", "error", INTERNAL_ERROR
            raise
        finally:
            self.in_flight -= 1
            self._observe(source, method, outcome, trio.current_time() - started)
            self.audit.record(entry, audited, code)

    async def _execute(self, method: str, params: dict[str, Any], *, timeout: float | None,
                       progress: ProgressFn | None, session: dict[str, Any] | None,
                       caller: Caller, audit: AuditEntry) -> dict[str, Any]:
        if method in TASK_METHODS:
            server, origins, upstream_params = self._resolve_task(params)
        else:
            try:
                entry, upstream_params = self._catalog.resolve(method, params)
            except ForwardError as exc:
                if exc.code != UNKNOWN_NAME or self._is_settled():
                    raise _shown_to(exc, self.callers, caller) from None
                # Right after start-up the name may be on its way (as for lists): wait, once.
                await self._wait_settled()
                entry, upstream_params = self._catalog.resolve(method, params)
            server, origins = entry.server, entry.origins
            parked_at = token_origin(params.get("requestState"))
            if parked_at in origins:
                origins = (parked_at,)  # a retry answering a parked call goes where the call waits
            audit.original = item_name(method, upstream_params)
        audit.server = server
        allowed = tuple(origin for origin in origins if self.callers.rules_of(origin, server).allows(caller))
        if origins and not allowed:
            audit.origin = origins[0]
            raise forbidden(caller, server, origins[0])
        origins = allowed
        if timeout is None:
            # The owning node's [[servers]] timeout when it set one (it knows its slow servers),
            # else this node's [mcp] request_timeout.
            best = self._table.best.get((origins[0], server)) if origins else None
            route_timeout = best[0].timeout if best is not None else None
            timeout = route_timeout or self._request_timeout()
        deadline = trio.current_time() + timeout
        last: ForwardError | None = None
        for origin in origins:
            audit.origin = origin
            if session is not None:
                self.session_used.setdefault(session["id"], set()).add((origin, server))
            try:
                result = await self._send(origin, server, method, upstream_params, deadline, (), progress, session,
                                          party=LOCAL, caller=caller)
            except NotDelivered as exc:
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
                    session: dict[str, Any] | None = None, *, party: str, caller: Caller,
                    statement: object = None) -> dict[str, Any]:
        """Run a request at ``origin`` (here, or through the next hop) for ``party`` (LOCAL or a peer).

        ``caller`` is who is calling; ``statement``, the entry node's statement of it when the request
        came from a peer (passed on as it is; this node states its own clients).

        The request holds a slot of the pool it uses (the node's, or the link's to the next hop)
        while it runs: each party and each server get their fair share (see :mod:`fednode._peers._shares`),
        so one peer, or one hanging server, cannot take the room of the others.
        """
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise ForwardError(DEADLINE_EXCEEDED, f"Deadline exceeded before reaching {server!r} on {origin!r}")
        key = (origin, server)
        if origin == self.node_id:
            if not self.callers.rules_of(origin, server).allows(caller):
                self._log.info("forward.forbidden", caller=str(caller), server=server, party=party)
                raise forbidden(caller, server, origin)
            try:
                pool = self.shares.acquire(None, party, key)
            except ForwardError as exc:
                raise NotDelivered(exc) from None
            try:
                return await self._call_local(server, method, params, remaining, progress, session, trace,
                                              party)
            finally:
                pool.release(party, key)
        via = self._next_hop(origin, server)
        if via is None:
            raise NotDelivered(ForwardError(NODE_UNREACHABLE, f"Node {origin!r} (server {server!r}) is unreachable"))
        try:
            pool = self.shares.acquire(via, party, key)
        except ForwardError as exc:
            raise NotDelivered(exc) from None
        try:
            return await self._forward(via, origin, server, method, params, remaining, trace, progress, session,
                                       caller, statement)
        finally:
            pool.release(party, key)

    async def _forward(self, via: str, origin: str, server: str, method: str, params: dict[str, Any],
                       remaining: float, trace: tuple[str, ...], progress: ProgressFn | None,
                       session: dict[str, Any] | None, caller: Caller, statement: object) -> dict[str, Any]:
        forward: dict[str, Any] = {"origin": origin, "server": server, "method": method, "params": params,
                                   "timeout": remaining, "trace": [*trace, self.node_id]}
        if statement is None and caller.entry == self.node_id:
            statement = self.callers.state(caller, origin=origin, server=server, method=method, params=params,
                                           timeout=remaining)
        if statement is not None:
            forward["caller"] = statement
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

    def on_progress(self, params: Any, context: RequestContext) -> None:
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
            result = await self._peer_request(via, FORWARD_METHOD, forward, timeout=remaining)
        except (PeerUnavailableError, UnknownPeerError) as exc:
            raise NotDelivered(ForwardError(NODE_UNREACHABLE, f"Node {origin!r} is unreachable: {exc}")) from None
        except LinkClosedError as exc:
            self._hop_failed(via)
            raise ForwardError(NODE_UNREACHABLE, f"Link to {via!r} lost while forwarding to {origin!r}: {exc}") \
                from None
        except RequestTimeoutError:
            # The peer took the request and never answered: its routes lose preference if it keeps doing so.
            self._hop_failed(via)
            raise ForwardError(DEADLINE_EXCEEDED, f"Deadline exceeded waiting for {server!r} on {origin!r}") from None
        except RemoteError as exc:
            self._hop_answered(via)
            raise ForwardError(exc.code, exc.remote_message, exc.data) from None
        except PeerError as exc:
            raise ForwardError(NODE_UNREACHABLE, str(exc)) from None
        self._hop_answered(via)
        if not isinstance(result, dict):
            raise ForwardError(INTERNAL_ERROR, f"Malformed result from {origin!r}")
        return result

    def _hop_failed(self, via: str) -> None:
        if self._table.forward_failed(via, trio.current_time()):
            self._log.warning("routes.peer_penalized", peer=via, hint="its forwards keep failing; healthy "
                              "routes are preferred for a while")
            self._health_changed()

    def _hop_answered(self, via: str) -> None:
        if self._table.forward_succeeded(via, trio.current_time()):
            self._health_changed()

    def _next_hop(self, origin: str, server: str) -> str | None:
        # The table as of the last routing change: recomputing per request would cost O(routes).
        return self._table.next_hop((origin, server))

    async def _call_local(self, server: str, method: str, params: dict[str, Any], timeout: float,
                          progress: ProgressFn | None, session: dict[str, Any] | None = None,
                          trace: tuple[str, ...] = (), source: str = LOCAL) -> dict[str, Any]:
        # ``source``: the party the request came for (a peer, or LOCAL), charged with any connection
        # opened for it.
        return await self._local.call(server, method, params, timeout=timeout, progress=progress, session=session,
                                      trace=trace, source=source)

    def _check_forward(self, params: Any, peer_id: str) -> tuple[str, str, str, dict[str, Any], float, list[str]]:
        """Validate a fed/forward request from ``peer_id``: its fields, loops and this node's policy.

        Returns ``(origin, server, method, params, timeout, trace)``.

        Raises:
            ForwardError: malformed (-32602), a forwarding loop, or a server, tool or prompt not offered to the peer.
        """
        if not isinstance(params, dict):
            raise ForwardError(INVALID_PARAMS, "fed/forward params must be an object")
        origin, server, method = params.get("origin"), params.get("server"), params.get("method")
        upstream_params, timeout, trace = params.get("params"), params.get("timeout"), params.get("trace", [])
        if not (isinstance(origin, str) and isinstance(server, str) and isinstance(method, str)
                and isinstance(upstream_params, dict) and isinstance(timeout, int | float) and timeout > 0
                and isinstance(trace, list) and len(trace) <= MAX_PATH):
            raise ForwardError(INVALID_PARAMS, "malformed fed/forward request")
        if self.node_id in trace:
            raise ForwardError(FORWARDING_LOOP, f"Forwarding loop through {self.node_id!r}")
        # Policy is enforced here, not only by what is advertised: a peer may only reach what this
        # node offers it (export, transit), whatever it asks for.
        if self._offered_path(peer_id, (origin, server)) is None:
            self._log.warning("forward.refused", peer=peer_id, origin=origin, server=server)
            raise ForwardError(UNKNOWN_NAME, f"Server {server!r} on {origin!r} is not offered to {peer_id!r}")
        item = forwarded_item(method, upstream_params)
        if item is not None and self._item_offered is not None and not self._item_offered(peer_id, server, *item):
            self._log.warning("forward.refused", peer=peer_id, origin=origin, server=server, item=item[1][:128])
            raise ForwardError(UNKNOWN_NAME, f"{item[0][:-1].capitalize()} {item[1][:128]!r} of server {server!r} "
                                             f"on {origin!r} is not offered to {peer_id!r}")
        session = params.get("session")
        if session is not None and not (isinstance(session, dict) and isinstance(session.get("id"), str)):
            raise ForwardError(INVALID_PARAMS, "malformed session in fed/forward")
        # A peer may not hold a request here for longer than this node would allow itself.
        best = self._table.best.get((origin, server))
        limit = max(self._request_timeout() * 10, (best[0].timeout or 0.0) if best else 0.0)
        timeout = min(float(timeout), limit)
        return origin, server, method, upstream_params, timeout, trace

    async def on_forward(self, params: Any, context: RequestContext) -> Any:
        method = params.get("method") if isinstance(params, dict) else None
        # the peer until its statement of the caller is believed (or refused)
        entry = AuditEntry.served(self.node_id, params, Caller.of_node(context.peer_id))
        return await self._measured("peer", method if isinstance(method, str) else "other",
                                    self._serve_forward(params, context, entry), entry)

    async def _serve_forward(self, params: Any, context: RequestContext, entry: AuditEntry) -> Any:
        with entry.refusing():  # by this node's own checks (malformed, a loop, not offered to the peer)
            origin, server, method, upstream_params, timeout, trace = self._check_forward(params, context.peer_id)
        caller = entry.caller = self.callers.believed(params, context.peer_id)
        # The trace goes on to the next hop (or the attached server, which may use it) with this node's span.
        upstream_params = with_traceparent(upstream_params, entry.trace.child())
        deadline = trio.current_time() + timeout
        token = params.get("progress")
        progress: ProgressFn | None = None
        if isinstance(token, str):
            async def progress(value: float, total: float | None, message: str | None) -> None:
                with contextlib.suppress(FednodeError):
                    await self._notify(context.peer_id, PROGRESS_METHOD,
                                           {"token": token, "progress": value, "total": total, "message": message})
        try:
            return await self._send(origin, server, method, upstream_params, deadline, tuple(trace), progress,
                                    params.get("session"), party=context.peer_id, caller=caller,
                                    statement=params.get("caller"))
        except NotDelivered as exc:
            raise exc.error from None


async def _relay_progress(receive: trio.MemoryReceiveChannel[tuple[float, float | None, str | None]],
                          progress: ProgressFn) -> None:
    async with receive:
        async for value, total, message in receive:
            with contextlib.suppress(Exception):  # the caller's progress sink failing must not fail the call
                await progress(value, total, message)

