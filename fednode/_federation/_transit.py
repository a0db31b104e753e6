"""The fast path of ``fed/forward``: a request for a server on another node, passed straight on.

The inbound link's reader calls :meth:`TransitPath.transit` and sends the request on through the
link to the next hop itself, without a task of its own (see :class:`fednode._peers._link.Transit`).
The request is checked as any forwarded request is, holds a slot of the onward link's fair shares
until it is over, has its progress notifications relayed back, and gets its audit line when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._config._callers import Caller
from .._errors import DEADLINE_EXCEEDED, INTERNAL_ERROR, NODE_UNREACHABLE, ForwardError
from .._peers._link import Link, RequestContext, Transit
from .._peers._shares import FairShares
from ._audit import AuditEntry, AuditLog, outcome_of
from ._routes import Key
from ._traceparent import with_traceparent

#: ``(params, peer_id) -> (origin, server, method, params, timeout, trace)`` of a checked fed/forward.
Check = Callable[[Any, str], tuple[str, str, str, dict[str, Any], float, list[str]]]


class TransitPath:
    """Passes ``fed/forward`` requests for other nodes' servers on to the next hop, from the link's reader.

    Args:
        node_id: this node's id.
        check: validates a fed/forward from a peer (its fields, loops, this node's policy).
        next_hop: the peer a request for a server goes to next (None: no route).
        link_to: the live link to a peer, if any.
        acquire: takes a slot of the pool of requests sent to a peer, for a party and a server
            (raises ForwardError when its share is used up); returns the pool to release it to.
        relays: progress tokens of the requests passed on -> the link their notifications go back on.
        in_use: whether a progress token is in use by a request of this node's own.
        audit: the node's audit log.
        believed: who is calling, for a well-formed fed/forward from a peer (raises ForwardError
            when the caller statement does not hold).
    """

    def __init__(self, node_id: str, *, check: Check, next_hop: Callable[[str, str], str | None],
                 link_to: Callable[[str], Link | None], acquire: Callable[[str, str, Key], FairShares],
                 relays: dict[str, Link], in_use: Callable[[str], bool], audit: AuditLog,
                 believed: Callable[[Mapping[str, Any], str], Caller]) -> None:
        self.node_id = node_id
        self._check = check
        self._next_hop = next_hop
        self._link_to = link_to
        self._acquire = acquire
        self._relays = relays
        self._in_use = in_use
        self._audit = audit
        self._believed = believed

    def transit(self, params: Any, context: RequestContext, inbound: Link) -> Transit | None:
        """Pass a fed/forward for a server on another node straight on to the next hop (run by the reader).

        Returns None for this node's own servers, and for a request whose progress token this node
        uses already (both are served by a task, see :meth:`Forwarding.on_forward`).

        Raises:
            ForwardError: refused here (malformed, a loop, not offered to the peer, no route, no
                fair share left); the link answers with it at once.
        """
        if isinstance(params, dict) and params.get("origin") == self.node_id:
            return None  # checked once, by on_forward
        # Without an audit log this node records nothing of the request: no entry, and the trace
        # goes on as it came (no span of this node's, so the params are passed on as they are).
        entry = AuditEntry.served(self.node_id, params, Caller.of_node(context.peer_id)) \
            if self._audit.enabled else None
        try:
            return self._pass_on(params, context, inbound, entry)
        except ForwardError as exc:
            # This node declined it: unless no route was left, a refusal, whatever its code.
            if entry is not None:
                self._audit.record(entry, "unreachable" if exc.code == NODE_UNREACHABLE else "refused", exc.code)
            raise

    def _pass_on(self, params: Any, context: RequestContext, inbound: Link,
                 entry: AuditEntry | None) -> Transit | None:
        origin, server, _method, upstream_params, timeout, trace = self._check(params, context.peer_id)
        via = self._next_hop(origin, server)
        onward = self._link_to(via) if via is not None else None
        if via is None or onward is None or not onward.is_up:
            raise ForwardError(NODE_UNREACHABLE, f"Node {origin!r} (server {server!r}) is unreachable")
        token = params.get("progress")
        if isinstance(token, str) and (token in self._relays or self._in_use(token)):
            return None  # a reused token: the task path mints a fresh one
        # The request holds a slot of the link's fair shares until it is over (done), like one of ours.
        party, key = context.peer_id, (origin, server)
        pool = self._acquire(via, party, key)
        if entry is not None:  # checking the caller statement costs a signature check: only when recorded
            entry.caller = self._believed_here(params, party)
        if isinstance(token, str):
            self._relays[token] = inbound

        def done() -> None:
            pool.release(party, key)
            if isinstance(token, str):
                del self._relays[token]
            if entry is not None:
                outcome = outcome_of(transit.code) if transit.outcome == "error" else transit.outcome
                self._audit.record(entry, outcome, transit.code)

        def error(why: str) -> tuple[int, str]:
            if why == "timeout":
                return DEADLINE_EXCEEDED, f"Deadline exceeded waiting for {server!r} on {origin!r}"
            if why.startswith("lost: "):
                return NODE_UNREACHABLE, f"Link to {via!r} lost while forwarding to {origin!r}: {why[6:]}"
            return INTERNAL_ERROR, f"Cannot forward to {origin!r}: {why}"

        onward_params = {**params, "timeout": timeout, "trace": [*trace, self.node_id]}
        if entry is not None:  # the trace goes on with this node's span as the parent
            onward_params["params"] = with_traceparent(upstream_params, entry.trace.child())
        transit = Transit(onward=onward, timeout=timeout, error=error, done=done, params=onward_params)
        return transit

    def _believed_here(self, params: Mapping[str, Any], peer_id: str) -> Caller:
        """Who is calling, for the audit line of a well-formed fed/forward this node passes on.

        A statement that does not hold is the owning node's to refuse: here the caller is then just the peer.
        """
        try:
            return self._believed(params, peer_id)
        except ForwardError:
            return Caller.of_node(peer_id)
