"""fednode's exception hierarchy: one root, flat and meaningful leaves."""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator, Sequence
from typing import NoReturn


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


class ProtocolError(FednodeError):
    """A frame on a peer link could not be decoded or broke the protocol's rules.

    Attributes:
        code: the JSON-RPC style error code sent back to the peer.
    """

    def __init__(self, message: str, code: int = -32600) -> None:
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
