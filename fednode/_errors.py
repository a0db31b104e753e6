"""fednode's exception hierarchy: one root, flat and meaningful leaves."""

from __future__ import annotations

from collections.abc import Sequence


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
