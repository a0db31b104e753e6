"""The caller's identity across hops: the entry node's signed statement of who is calling.

For each request it forwards, the entry node (where the client is connected) signs a statement
binding the caller (:class:`~fednode._config._callers.Caller`) to that one request: the owning node
and server, the method, a digest of the request's params, when it was made, when it expires (30 s
later at most: it only has to reach the owning node) and a random nonce. It travels in
``fed/forward`` as ``caller``; transit nodes pass it on as it is and cannot change it (nor move it
to another request). The owning node checks it with the entry node's keys
(:class:`~fednode._config._signing.Keyring`: ``[[nodes]]``, ``[[peers]]`` or the shared ``[auth]``
secret) and believes it as far as ``[[peers]] callers`` of the peer it came through allows;
otherwise the caller is only that peer (``node:<peer>``).

What is refused outright (a node or link tampering): a malformed statement, one whose signature does
not verify, one expired or made in the future, one naming this node as the entry node, and one seen
before (a transit node replaying a request). A statement this node has no key to check is not
believed (the caller is ``node:<peer>``) and logged: a gap in the configuration, not an attack.
"""

from __future__ import annotations

import enum
import hashlib
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._config._auth import ReplayCache
from .._config._callers import EVERYBODY, Caller, CallerRules
from .._config._signing import Keyring, SignatureError, SignatureReason, canonical, signatures_from_wire
from .._errors import FORBIDDEN, ForwardError
from ._claims import Entry
from ._local import LocalServers
from ._routes import Key, Route

#: Clock difference between nodes tolerated when checking a statement's times.
CLOCK_LEEWAY = 60.0
#: How long a statement is valid: it only has to reach the owning node (forwards are never queued on
#: the way), and the owning node remembers each one it believed this long (and the leeway) to
#: refuse replays, so this bounds that memory (its peers' rate limits bound how fast it fills).
STATEMENT_TTL = 30
#: The ``_meta`` key left out of the params digest: each hop may name its own span in it.
TRACEPARENT = "traceparent"
_MAX_NONCE = 64


class CallerRefusal(enum.StrEnum):
    """Why a caller statement made a node refuse the request."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FUTURE = "issued_in_future"
    SELF = "names_this_node"
    REPLAY = "replay"


def params_digest(params: Mapping[str, Any]) -> str:
    """The digest of a request's params a statement is bound to (``_meta.traceparent`` left out, and a
    ``_meta`` with nothing else: a hop may add one where there was none)."""
    meta = params.get("_meta")
    if isinstance(meta, Mapping):
        rest = {k: v for k, v in meta.items() if k != TRACEPARENT}
        params = {**params, "_meta": rest} if rest else {k: v for k, v in params.items() if k != "_meta"}
    try:
        text = canonical(params)
    except (TypeError, ValueError):  # not JSON (cannot come off the wire): bound to nothing it could match
        text = repr(params).encode()
    return hashlib.sha256(text).hexdigest()[:32]


def _message(caller: Mapping[str, Any], origin: str, server: str, method: str, digest: str, issued: int,
             expires: int, nonce: str) -> bytes:
    return canonical({"caller": caller, "origin": origin, "server": server, "method": method, "params": digest,
                      "iat": issued, "exp": expires, "nonce": nonce})


class CallerStatements:
    """Signs this node's statements about its clients, and checks and believes peers' statements.

    Args:
        node_id: this node's id.
        keyring: signs and verifies (the keys of the configuration in force).
        trust: the ``[[peers]] callers`` setting of a peer (``any``, ``own`` or ``none``; None: not a peer).
        clock: the wall clock (Unix seconds): times are compared across nodes.
        on_unverified: called with ``(entry node, reason)`` when a statement is not believed for want
            of a key (to log it).
    """

    def __init__(self, node_id: str, keyring: Keyring, *, trust: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time,
                 on_unverified: Callable[[str, str], None] = lambda entry, reason: None) -> None:
        self.node_id = node_id
        self._keyring = keyring
        self._trust = trust
        self._clock = clock
        self._on_unverified = on_unverified
        #: (entry node, nonce) of statements believed, until they expire
        self.seen = ReplayCache(clock)

    def state(self, caller: Caller, *, origin: str, server: str, method: str, params: Mapping[str, Any],
              timeout: float) -> dict[str, Any] | None:
        """This node's signed statement that ``caller`` makes this request (None: no key to sign with)."""
        issued = int(self._clock())
        expires = issued + max(1, min(math.ceil(timeout), STATEMENT_TTL))
        nonce = secrets.token_hex(12)
        wire = caller.to_wire()
        message = _message(wire, origin, server, method, params_digest(params), issued, expires, nonce)
        try:
            signatures = self._keyring.sign(message, to=origin)
        except SignatureError:
            return None
        return {"caller": wire, "iat": issued, "exp": expires, "nonce": nonce,
                "sigs": [signature.to_wire() for signature in signatures]}

    def believe(self, statement: object, *, peer: str, origin: str, server: str, method: str,
                params: Mapping[str, Any]) -> Caller:
        """Who is calling, for a request ``peer`` sent with ``statement`` (see the module docstring).

        Raises:
            ForwardError: ``FORBIDDEN``, with a :class:`CallerRefusal` as ``data.reason``.
        """
        trust = self._trust(peer)
        fallback = Caller.of_node(peer)
        if trust not in ("any", "own") or statement is None:
            return fallback
        try:
            caller, issued, expires, nonce, signatures = _parse(statement)
        except (ValueError, SignatureError) as exc:
            raise _refused(CallerRefusal.MALFORMED, peer, f"malformed caller statement: {exc}") from None
        if trust == "own" and caller.entry != peer:
            return fallback
        if caller.entry == self.node_id:
            raise _refused(CallerRefusal.SELF, peer, f"caller statement names {self.node_id!r}, this node, as "
                                                     f"the entry node")
        now = self._clock()
        if expires < now - CLOCK_LEEWAY:
            raise _refused(CallerRefusal.EXPIRED, peer, "caller statement expired (check the nodes' clocks)")
        if issued > now + CLOCK_LEEWAY or expires - issued > STATEMENT_TTL:
            raise _refused(CallerRefusal.FUTURE, peer, "caller statement issued in the future (check the nodes' "
                                                       "clocks) or valid for too long")
        message = _message(caller.to_wire(), origin, server, method, params_digest(params), issued, expires, nonce)
        try:
            self._keyring.verify(caller.entry, message, signatures)
        except SignatureError as exc:
            if exc.reason == SignatureReason.UNKNOWN_KEY:
                self._on_unverified(caller.entry, str(exc))
                return fallback
            raise _refused(CallerRefusal.BAD_SIGNATURE, peer,
                           f"caller statement of {caller.entry!r} does not verify (changed on the way?)") from None
        if not self.seen.check_and_remember(caller.entry, nonce, expires + CLOCK_LEEWAY):
            raise _refused(CallerRefusal.REPLAY, peer, f"caller statement of {caller.entry!r} already used: "
                                                       f"a request replayed on the way")
        return caller


def _parse(statement: object) -> tuple[Caller, int, int, str, tuple[Any, ...]]:
    if not isinstance(statement, Mapping):
        raise ValueError("not an object")
    issued, expires, nonce = statement.get("iat"), statement.get("exp"), statement.get("nonce")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 for v in (issued, expires)):
        raise ValueError("iat and exp must be integers")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= _MAX_NONCE:
        raise ValueError(f"nonce must be a string of 16 to {_MAX_NONCE} characters")
    caller = Caller.from_wire(statement.get("caller"))
    assert isinstance(issued, int) and isinstance(expires, int)
    return caller, issued, expires, nonce, signatures_from_wire(statement.get("sigs"))


def _refused(reason: CallerRefusal, peer: str, message: str) -> ForwardError:
    return ForwardError(FORBIDDEN, f"Refused a request from {peer!r}: {message}", {"reason": reason.value})


class CallerPolicy:
    """Who may use which server (``[[servers]] callers``: this node's, and other nodes' as their routes
    say), and who is calling, for the requests this node forwards and serves.

    Args:
        node_id: this node's id.
        local: the servers attached here (their rules).
        best: the best route to a (node, server) (its origin's rules), if any.
        statements: signs and checks caller statements (None: none are made, and every caller
            arriving through a peer is that peer).
    """

    def __init__(self, node_id: str, local: LocalServers, best: Callable[[Key], Route | None],
                 statements: CallerStatements | None) -> None:
        self.node_id = node_id
        self._local = local
        self._best = best
        self.statements = statements

    def rules_of(self, origin: str, server: str) -> CallerRules:
        """Who ``origin`` lets use ``server``: this node's ``[[servers]] callers``, or as its route says."""
        if origin == self.node_id:
            local = self._local.route_of(server)
            return local.callers if local is not None else EVERYBODY
        route = self._best((origin, server))
        return route.callers if route is not None else EVERYBODY

    def usable_by(self, caller: Caller) -> Callable[[Entry], bool]:
        """Whether ``caller`` may use an exposed item: one of its replicas' owning nodes lets it."""
        verdicts: dict[Key, bool] = {}

        def usable(entry: Entry) -> bool:
            for origin in entry.origins:
                key = (origin, entry.server)
                verdict = verdicts.get(key)
                if verdict is None:
                    verdict = verdicts[key] = self.rules_of(origin, entry.server).allows(caller)
                if verdict:
                    return True
            return False

        return usable

    def state(self, caller: Caller, *, origin: str, server: str, method: str, params: Mapping[str, Any],
              timeout: float) -> dict[str, Any] | None:
        """This node's signed statement that ``caller`` makes this request (None: none can be made)."""
        if self.statements is None:
            return None
        return self.statements.state(caller, origin=origin, server=server, method=method, params=params,
                                     timeout=timeout)

    def believed(self, params: Mapping[str, Any], peer_id: str) -> Caller:
        """Who is calling, for a well-formed fed/forward ``peer_id`` sent.

        Raises:
            ForwardError: ``FORBIDDEN``: the statement is forged, replayed, expired or malformed.
        """
        if self.statements is None:
            return Caller.of_node(peer_id)
        return self.statements.believe(params.get("caller"), peer=peer_id, origin=params["origin"],
                                       server=params["server"], method=params["method"], params=params["params"])


def forbidden(caller: Caller, server: str, origin: str) -> ForwardError:
    """The error for a caller ``origin`` does not let use ``server`` (``[[servers]] callers``)."""
    return ForwardError(FORBIDDEN, f"{caller} may not use server {server!r} on {origin!r}: its callers leave "
                                   f"them out", {"caller": caller.to_wire(), "server": server, "node": origin})
