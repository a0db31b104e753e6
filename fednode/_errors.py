"""Every exception fednode defines and every error code it puts on a wire, in one place.

The codes come first: JSON-RPC's own, then fednode's in the server-error range (-32099..-32000). Peer
``error`` frames and MCP clients see the same numbers, so a failure keeps its code across hops. An
attached server's own errors pass through with the server's codes, which are not listed here.

Then the exceptions: one root (:class:`FednodeError`) with flat, meaningful leaves; the exceptions a
module uses only to signal something to itself are at the end. Each boundary maps what it caught to
these (a link to the :class:`PeerError` family, forwarding to :class:`ForwardError`, the client edge
to :class:`EdgeError`), never letting a library's exception escape in their place.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import attrs

# -- JSON-RPC 2.0 -------------------------------------------------------------------------------

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# -- MCP (the codes the SDK and the spec give these meanings) -----------------------------------

#: The SDK's code for a connection that closed under a request.
CONNECTION_CLOSED = -32000
#: A 2026-07-28 request's ``Mcp-Name`` header does not match its params.
HEADER_MISMATCH = -32020
#: The request needs a client capability (or extension) the client did not declare.
MISSING_CAPABILITY = -32021
#: The server speaks none of the protocol versions offered; ``data.supported`` lists its own.
UNSUPPORTED_PROTOCOL_VERSION = -32022

# -- fednode ------------------------------------------------------------------------------------

#: A node refused a request beyond its limits (a link's max_inflight, the sender's fair share of a
#: link's or the node's in-flight requests, one server's half of them, session connections, parked
#: requests); retrying later may succeed.
OVERLOADED = -32004
#: No tool, prompt, resource, task... of that name: the code an MCP server gives an unknown name,
#: so a client cannot tell a federated catalog from a single server's.
UNKNOWN_NAME = INVALID_PARAMS
#: The node owning the server cannot be reached.
NODE_UNREACHABLE = -32050
#: The server is attached to the node that answers, and is down.
SERVER_UNAVAILABLE = -32051
#: The request's deadline passed on the way or while the server worked.
DEADLINE_EXCEEDED = -32052
#: The request came back to a node it had already passed through.
FORWARDING_LOOP = -32053
#: The sender (a peer, a client token, a client address) is over its rate limit; ``data.retryAfter``
#: says in how many seconds a request will be accepted again.
RATE_LIMITED = -32054
#: The tool or prompt is held: its definition changed since this node pinned it, and an operator has
#: not accepted the change yet (``fednode pins accept``); ``data.changed`` names the fields.
DEFINITION_HELD = -32060
#: The caller may not use that server or tool: the owning node's ``[[servers]] callers`` leaves it
#: out (``data`` names the caller, the server and its node).
FORBIDDEN = -32055


class FednodeError(Exception):
    """Root of every error fednode raises on purpose."""


class ConfigError(FednodeError):
    """A configuration file (or object) has one or more problems.

    Attributes:
        source: where the configuration came from (a file path or ``"<config>"``).
        problems: every problem found, each as ``(key_path, message)``.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            path, message = self.problems[0]
            where = f"{self.source}: {path}" if path else self.source
            return f"invalid configuration: {where}: {message}"
        lines = [f"invalid configuration: {self.source}: {len(self.problems)} problems"]
        lines += [f"  - {path or '<top>'}: {message}" for path, message in self.problems]
        return "\n".join(lines)


class BindError(FednodeError):
    """The node cannot listen on its control or data address (in use, not an address of this host, ...).

    Raised by :func:`fednode.open_node` (and :func:`fednode.serve`) before the node starts.

    Attributes:
        role: ``"control"`` or ``"data"``: which of the node's addresses.
        url: that address, as configured.
        errno: the operating system's error number, when there is one (``errno.EADDRINUSE``...).
        reason: the operating system's words for it.
    """

    def __init__(self, role: str, url: str, cause: OSError) -> None:
        self.role = role
        self.url = url
        self.errno: int | None = cause.errno
        self.reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(self._render())

    @property
    def in_use(self) -> bool:
        """Whether another socket holds the address."""
        return self.errno == _errno.EADDRINUSE

    def _render(self) -> str:
        number = f" (errno {self.errno})" if self.errno is not None else ""
        if self.in_use:
            return f"{self.role} address {self.url} is in use{number}"
        return f"cannot listen on {self.role} address {self.url}: {self.reason}{number}"


class AuthError(FednodeError):
    """A link token was refused.

    Attributes:
        reason: a short machine-readable reason (one of ``fednode.AuthReason``'s values).
        detail: a human-readable explanation; never contains the token.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SignatureError(FednodeError):
    """A signed statement from another node (a route advertisement) did not verify, or could not be signed.

    Attributes:
        reason: a short machine-readable reason (one of ``fednode._signing.SignatureReason``'s values).
        detail: what was wrong, naming the signer; never a key.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ProtocolError(FednodeError):
    """A frame on a peer link could not be decoded or broke the protocol's rules.

    Attributes:
        code: the JSON-RPC style error code sent back to the peer.
    """

    def __init__(self, message: str, code: int = INVALID_REQUEST) -> None:
        self.code = code
        super().__init__(message)


class MessageTooLargeError(ProtocolError):
    """An outgoing message is larger than the link's maximum message size."""


class PeerError(FednodeError):
    """Something about one peer failed.

    Attributes:
        peer_id: the peer concerned.
    """

    def __init__(self, peer_id: str, message: str) -> None:
        self.peer_id = peer_id
        super().__init__(message)


class UnknownPeerError(PeerError):
    """The peer id is not registered on this node."""


class PeerUnavailableError(PeerError):
    """The peer is registered but has no live link right now."""


class PeerConnectError(PeerError):
    """The first connection attempt to a newly registered peer failed."""


class LinkClosedError(PeerError):
    """The link a request travelled on closed before the answer arrived."""


class RequestTimeoutError(PeerError):
    """A request to a peer got no answer before its deadline."""


class RemoteError(PeerError):
    """The peer answered a request with an error.

    Attributes:
        code: the error code the peer sent.
        data: optional extra data the peer sent.
    """

    def __init__(self, peer_id: str, code: int, message: str, data: object = None) -> None:
        self.code = code
        self.remote_message = message
        self.data = data
        super().__init__(peer_id, f"peer {peer_id!r} answered with error {code}: {message}")


class RequestError(FednodeError):
    """Raised by a request handler to send a specific error back to the caller.

    Attributes:
        code: JSON-RPC style error code.
        data: optional JSON-serialisable detail.
    """

    def __init__(self, code: int, message: str, data: object = None) -> None:
        self.code = code
        self.data = data
        super().__init__(message)


class ForwardError(RequestError):
    """A request could not be executed where it had to go (travels back to the caller unchanged)."""


class StateError(FednodeError):
    """The node's state (``[node] state_dir``, the pins file in it) cannot be used; the node does not start."""


class AuditError(FednodeError):
    """The audit log (``[audit] path``) cannot be opened; the message names the file and why."""


class HandshakeFailed(FednodeError):
    """The link handshake failed; ``str()`` says why in one line."""


class UpstreamError(FednodeError):
    """The server answered a request with a JSON-RPC error; pass it on unchanged.

    Attributes:
        code: the error code the server sent.
        message: the error message the server sent.
        data: the error data the server sent (``None`` if none).
        server_id: the server that answered.
    """

    def __init__(self, code: int, message: str, data: Any = None, *, server_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        self.server_id = server_id
        where = f"server {server_id!r}" if server_id else "server"
        super().__init__(f"{where} answered with error {code}: {message}")


class ServerUnavailableError(FednodeError):
    """The server is not connected right now (starting, restarting, removed), or was lost mid-request.

    Attributes:
        server_id: the server concerned.
    """

    def __init__(self, server_id: str, detail: str = "not connected") -> None:
        self.server_id = server_id
        super().__init__(f"server {server_id!r} is unavailable: {detail}")


class UpstreamTimeoutError(FednodeError):
    """The server did not answer before the request's deadline (the request was cancelled there).

    Attributes:
        server_id: the server concerned.
        method: the request's method.
        timeout: the deadline that passed, in seconds.
    """

    def __init__(self, server_id: str, method: str, timeout: float) -> None:
        self.server_id = server_id
        self.method = method
        self.timeout = timeout
        super().__init__(f"server {server_id!r} did not answer {method} within {timeout:g}s")


@attrs.frozen
class EdgeError(FednodeError):
    """A JSON-RPC error to give the MCP client, raised by a forwarder behind the client edge.

    Attributes:
        code: the JSON-RPC error code.
        message: the error message.
        data: optional JSON-serialisable detail.
    """

    code: int
    message: str
    data: Any = None

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


# -- signals a module raises and catches itself -------------------------------------------------


class InvalidValue(ValueError):
    """One or more problems with a single configuration value (its key path is added by the caller).

    A ``ValueError``, so that cattrs collects it with the others of the same file.
    """

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class SessionFailed(Exception):
    """A connection to an attached server could not be set up (a readable reason for ``last_error``)."""


class BadResult(Exception):
    """A result of one of the node's own requests to a server does not have the shape the spec gives it."""


class NotDelivered(Exception):
    """A forwarded request never left this node (no route, no live link): safe to try another replica."""

    def __init__(self, error: ForwardError) -> None:
        self.error = error
        super().__init__(str(error))


class BodyTooLarge(Exception):
    """An HTTP request body went over the edge server's limit (answered 413)."""


class StatusError(Exception):
    """``fednode status`` failed in a way already worded for the user."""


class FetchError(Exception):
    """A document of an OAuth issuer (JWKS or metadata) could not be fetched or read; says what and where."""


class KeysUnavailable(Exception):
    """The OAuth issuer's keys cannot be had now: a client's token cannot be checked (HTTP 503)."""


class TokenRefused(Exception):
    """A client's OAuth access token is refused.

    Attributes:
        reason: a short label for logs and metrics (``expired``, ``audience``, ``unknown_key``...).
        description: what is wrong, for the client (``error_description``) and the log.
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


# -- exception groups ---------------------------------------------------------------------------


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc`` that are not groups (``exc`` itself when it is not a group).

    Trio and anyio wrap errors in (nested) exception groups; this is what actually went wrong.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def sole_leaf(exc: BaseException) -> BaseException | None:
    """The one exception inside ``exc`` (see :func:`leaves`), or None when it holds several."""
    found = list(leaves(exc))
    return found[0] if len(found) == 1 else None


def reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` again from an ``except`` block without chaining it to what that block handled.

    Used to take an exception back out of the group a nursery wrapped it in: the caller then sees
    the exception as it was raised, with its own ``__context__``, not the group as its context.
    """
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
