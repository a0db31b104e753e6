"""What the federation needs of the MCP servers attached to this node, as protocols.

The federation advertises this node's own servers and runs requests for them, but the servers
(processes, connections, client sessions, parked calls) belong to the MCP layer above. That layer
hands the federation an object satisfying :class:`LocalServers`; the federation never imports it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import attrs

from .._config._callers import EVERYBODY, CallerRules
from .._peers._shares import LOCAL

#: Awaited with ``(progress, total, message)`` for each progress notification about a request.
ProgressFn = Callable[[float, "float | None", "str | None"], Awaitable[None]]

#: Request states minted by this software for parked calls start with this (see the MCP layer's parking).
TOKEN_PREFIX = "fednode1."

@attrs.frozen
class LocalRoute:
    """How an attached server is advertised: the prefix of its names, its extensions, its timeout, who may use it."""

    prefix: str
    extensions: Mapping[str, Any] = attrs.field(factory=dict)
    timeout: float | None = None
    callers: CallerRules = EVERYBODY


class ServerCatalogLike(Protocol):
    """An attached server's catalog: its definitions as it sent them."""

    @property
    def tools(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def prompts(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def resources(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def resource_templates(self) -> Sequence[Mapping[str, Any]]: ...


class LocalServers(Protocol):
    """The MCP servers attached to this node."""

    def ids(self) -> Collection[str]:
        """The ids of the attached servers."""
        ...

    def route_of(self, server_id: str) -> LocalRoute | None:
        """How ``server_id`` is advertised (None: not attached)."""
        ...

    def starting(self) -> list[str]:
        """The servers still on their first start attempt (the federation has not settled)."""
        ...

    async def call(self, server_id: str, method: str, params: dict[str, Any], *, timeout: float,
                   progress: ProgressFn | None, session: dict[str, Any] | None,
                   trace: tuple[str, ...], source: str = LOCAL) -> dict[str, Any]:
        """Run one request on ``server_id``; return the server's raw result.

        ``source`` is the peer the request came from (:data:`~fednode._peers._shares.LOCAL`: a client of this node):
        any connection opened to the server for it is charged to that peer's share.

        Raises:
            ForwardError: with the code to give the caller (server down, deadline, its own error).
        """
        ...


def token_origin(token: object) -> str | None:
    """The node a fednode request state belongs to (unverified: only routing uses it)."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token[len(TOKEN_PREFIX):].split(".", 1)[0] + "=="))
    except (ValueError, RecursionError):  # deep nesting: RecursionError
        return None
    origin = body.get("origin") if isinstance(body, dict) else None
    return origin if isinstance(origin, str) else None
