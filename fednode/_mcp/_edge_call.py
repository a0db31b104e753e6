"""What the client edge hands the node for each forwarded request, and what it needs from the node.

:class:`EdgeCall` is one request's context (its era, envelope, client session, and the ways back to
the client: progress, notifications, questions); :class:`Forwarder` is the protocol the node
implements for the edge (the federated catalog and a way to execute requests). Neither serves
anything: :class:`~fednode._mcp._edge.MCPEdge` builds an EdgeCall per request and calls the Forwarder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Literal, Protocol

import anyio
from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from .._config._callers import Caller
from .._errors import INTERNAL_ERROR, EdgeError

__all__ = ["FORWARDED_METHODS", "KINDS", "EdgeCall", "Forwarder", "ProgressReporter"]

#: The catalog kinds, as passed to :meth:`Forwarder.list_items` and :meth:`MCPEdge.notify_list_changed`.
KINDS = ("tools", "prompts", "resources", "resourceTemplates")

#: Methods handed to :meth:`Forwarder.forward`.
FORWARDED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete",
                               "tasks/get", "tasks/update", "tasks/cancel",
                               "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


#: Where the HTTP edge leaves the :class:`Caller` it established, in the request scope's ``state``.
CALLER_KEY = "fednode_caller"


def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller | None:
    """The caller the HTTP edge established for this request (None: stdio, or none established)."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    state = scope.get("state") if isinstance(scope, dict) else None
    caller = state.get(CALLER_KEY) if isinstance(state, dict) else None
    return caller if isinstance(caller, Caller) else None


class Forwarder(Protocol):
    """What the edge needs from the node: the federated catalog and a way to execute requests."""

    def list_items(self, kind: str, caller: Caller | None = None) -> list[dict[str, Any]]:
        """The federated definitions of ``kind`` (one of :data:`KINDS`) that ``caller`` may use (None:
        an anonymous client of this node), already renamed to their exposed names, as raw dicts
        returned to clients unchanged."""
        ...

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of the exposed tool ``name``, or None when unknown.

        Synchronous and called for every 2026-07-28 ``tools/call`` (the SDK validates
        ``Mcp-Param-*`` headers with it), so it should be a cache lookup.
        """
        ...

    # Optional: ``async wait_settled() -> None``, awaited before every list is answered (holds the
    # lists clients send right after start-up until the catalog has filled in; bounded).

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        """Execute ``tools/call``, ``prompts/get``, ``resources/read`` or ``completion/complete``
        somewhere in the federation and return the raw result dict.

        ``params`` are the client's raw params, ``_meta`` included. Raise :class:`EdgeError` to
        answer with a JSON-RPC error (e.g. unknown tool -32602, node unreachable -32050); an upstream
        server's own error should be raised as an EdgeError with its code unchanged.
        """
        ...


ProgressReporter = Callable[[float, "float | None", "str | None"], Awaitable[None]]
"""``async (progress, total, message)``: what :meth:`EdgeCall.report_progress` delegates to."""


class EdgeCall:
    """Per-request context handed to :meth:`Forwarder.forward`.

    The edge builds one per forwarded request; tests and other callers of a forwarder may build
    their own from the keyword arguments.

    Attributes:
        method: the MCP method being forwarded.
        protocol_version: the client's protocol version.
        era: ``"modern"`` for 2026-07-28 and later (stateless, per-request envelope), else
            ``"legacy"`` (initialize handshake).
        meta: the request's raw ``_meta`` (empty when absent).
        session_key: identifies the client's session, for per-session upstream state: the
            Streamable HTTP session id (or a key minted per stdio connection) for legacy clients;
            None for the stateless 2026-07-28 era.
        request_id: the client's JSON-RPC request id.
        client_info: a legacy client's ``Implementation`` (from ``initialize``) as a wire dict;
            None for 2026-07-28 requests, which carry it in ``meta``.
        client_capabilities: the capabilities a legacy client declared, as a wire dict; None for
            2026-07-28 requests (see ``meta``).
        caller: who is calling, as the edge established it (None: an anonymous client of this node).
    """

    def __init__(self, *, method: str, protocol_version: str, meta: Mapping[str, Any] | None = None,
                 session_key: str | None = None, request_id: str | int | None = None,
                 client_info: dict[str, Any] | None = None, client_capabilities: dict[str, Any] | None = None,
                 progress: ProgressReporter | None = None,
                 ask: Callable[[str, Mapping[str, Any] | None], Awaitable[dict[str, Any]]] | None = None,
                 caller: Caller | None = None,
                 notify: Callable[[str, Mapping[str, Any] | None], Awaitable[None]] | None = None) -> None:
        self.method = method
        self.protocol_version = protocol_version
        self.era: Literal["legacy", "modern"] = "modern" if protocol_version in MODERN_PROTOCOL_VERSIONS \
            else "legacy"
        self.meta: dict[str, Any] = dict(meta or {})
        self.session_key = session_key
        self.request_id = request_id
        self.client_info = client_info
        self.client_capabilities = client_capabilities
        self.caller = caller
        self._progress = progress
        self._ask = ask
        self._notify = notify

    @classmethod
    def _from_context(cls, ctx: ServerRequestContext[Any, Any], session_key: str | None) -> EdgeCall:
        call = cls._build(ctx, session_key)
        outbound = getattr(ctx.session, "_request_outbound", None)
        if outbound is not None:
            call._notify = partial(outbound.notify, opts=None)
        return call

    async def notify(self, method: str, params: Mapping[str, Any] | None) -> None:
        """Send a notification on this request's stream (best effort)."""
        if self._notify is not None:
            with contextlib.suppress(Exception):
                await self._notify(method, params)

    @classmethod
    def _build(cls, ctx: ServerRequestContext[Any, Any], session_key: str | None) -> EdgeCall:
        raw_meta = (ctx.params or {}).get("_meta")
        # Only a legacy client's initialize-time identity is needed (a 2026-07-28 request carries
        # its own in _meta): dumping the models costs every modern request for nothing.
        legacy = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        client_params = ctx.session.client_params if legacy else None
        capabilities = ctx.session.client_capabilities if legacy else None
        return cls(
            method=ctx.method,
            protocol_version=ctx.protocol_version,
            meta=raw_meta if isinstance(raw_meta, Mapping) else None,
            session_key=session_key,
            request_id=ctx.request_id,
            client_info=_dump(client_params.client_info) if client_params is not None else None,
            client_capabilities=_dump(capabilities) if capabilities is not None else None,
            caller=caller_of(ctx),
            # The SDK sends it against the caller's progress token, on this request's stream.
            progress=ctx.session.report_progress,
            # Server-to-client requests ride this request's own stream (legacy eras only). The
            # request-scoped channel is private in SDK 2.3; it is the one send_request() uses
            # with a related_request_id, minus the typed validation a raw forwarder must skip.
            ask=getattr(ctx.session, "_request_outbound", None) and partial(
                ctx.session._request_outbound.send_raw_request, opts=None),
        )

    @property
    def can_ask(self) -> bool:
        """Whether requests can be sent to this client on this request's stream (legacy eras)."""
        return self._ask is not None and self.era == "legacy"

    async def ask(self, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Send a request (``elicitation/create``, ``sampling/createMessage``, ``roots/list``) to the client.

        Raises:
            EdgeError: the client cannot be asked (modern era, or no back channel).
            MCPError: the client answered with an error.
        """
        if not self.can_ask or self._ask is None:
            raise EdgeError(INTERNAL_ERROR, f"cannot send {method} to this client")
        return await self._ask(method, params)

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Send ``notifications/progress`` for this request to its client.

        A no-op when the client sent no progress token. Best effort: a client that has gone
        away is not an error (the request is being cancelled anyway).
        """
        if self._progress is None:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._progress(progress, total, message)

    def __repr__(self) -> str:
        return (f"EdgeCall(method={self.method!r}, era={self.era!r}, protocol_version={self.protocol_version!r}, "
                f"session_key={self.session_key!r}, request_id={self.request_id!r})")


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)

