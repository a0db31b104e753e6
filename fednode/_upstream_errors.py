"""The errors of an attached MCP server's driver, and how a failed connection is put in words.

The three public ones reach the forwarding layer, which turns them into JSON-RPC errors for the
client; the two private ones only say why a connection attempt failed (``last_error``).
"""

from __future__ import annotations

from typing import Any

from mcp.shared.exceptions import MCPError

from ._errors import FednodeError, leaves


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


class SessionFailed(Exception):
    """A connection could not be set up (a readable reason for ``last_error``)."""


class BadResult(Exception):
    """A result of one of our own requests does not have the shape the spec gives it."""


def describe(exc: BaseException) -> str:
    """A short human-readable reason for ``last_error`` (groups are unwrapped to their first leaf)."""
    leaf = next(leaves(exc))
    if isinstance(leaf, SessionFailed):
        text = str(leaf)
    elif isinstance(leaf, MCPError):
        text = f"the server answered with error {leaf.code}: {leaf.message}"
    else:
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
    return text[:300]
