"""The edge's fast path: the hot MCP requests served straight from ASGI, beside the SDK's app.

``tools/call``, ``prompts/get``, ``resources/read`` and the four list methods are most of what a
node's clients send. Through the SDK's Streamable HTTP stack each costs a Starlette request, the
session's message loop, memory streams between them, four or more tasks and several pydantic
validations (``scripts/bench_mcp.py`` measured about 2 ms of CPU per forwarded call at the entry
node). :class:`FastPath` sits in front of that app and serves those requests itself when they are
plainly well-formed, with the SDK's own rules where a rule is needed (the DNS-rebinding checks,
the 2026-07-28 envelope and header ladder, ``Mcp-Param-*`` checks, request-surface validation);
anything else, including every request a rule refuses, goes on to the SDK unchanged, which answers
it as it always did. So an error's wording and status stay the SDK's, and the fast path only ever
serves requests the SDK would have served.

Answers are shaped as the SDK shapes them: at 2026-07-28 JSON when nothing comes before the
result, and an SSE stream once a notification (progress, or the upstream's log messages) comes
first; in the legacy era an SSE stream with its priming event, each event kept in the SDK's event
store (replayable with ``Last-Event-ID``). A silent request commits to SSE after
:data:`PING_INTERVAL` seconds and pings to keep proxies from timing it out. The client closing the
response cancels the request (in both eras: nothing could deliver the rest of its answer); a legacy
client's ``notifications/cancelled`` for a request served here cancels it. A legacy request's
questions to its client (elicitation, sampling, roots) go out on the request's own stream, as the
SDK sends them, and the client's POSTed answer is taken here.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import trio
from mcp.server.streamable_http import REQUEST_CANCELLED, check_accept_headers
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    find_invalid_x_mcp_header,
    validate_mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import PROTOCOL_VERSION_META_KEY, ErrorData
from mcp_types import methods as mcp_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, is_version_at_least
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import INTERNAL_ERROR, RATE_LIMITED
from .._peers._serving import retry_after
from ._edge_call import CALLER_KEY, EdgeCall, Forwarder
from ._edge_headers import RequestHeaders as _Headers
from ._edge_http import CLIENT_KEY
from ._http_server import Watch

if TYPE_CHECKING:
    from mcp.server.connection import Connection

    from .._config._callers import Caller
    from ._edge_http import ClientLimits

__all__ = ["HOT_METHODS", "PING_INTERVAL", "FastPath"]

#: The methods served here (others always go to the SDK).
HOT_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "tools/list", "prompts/list",
                         "resources/list", "resources/templates/list"})
#: Seconds of silence after which a request's answer commits to SSE and is pinged.
PING_INTERVAL = 15.0
_LISTS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
_CLIENT_STATE = "fednode.edge.fast.client"
_SCHEMAS = 4096  # tools whose schema's Mcp-Param-* reading is kept
_ROUTING = frozenset({b"mcp-protocol-version", b"mcp-method", b"mcp-name"})
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                (b"x-accel-buffering", b"no")]


class _Plan:
    """A request the fast path serves: what it asks and who for."""

    __slots__ = ("caller", "connection", "key", "method", "params", "request_id", "session_id", "transport",
                 "version")

    def __init__(self, method: str, params: dict[str, Any], request_id: str | int, version: str) -> None:
        self.method = method
        self.params = params
        self.request_id = request_id
        self.version = version
        self.caller: Any = None
        self.key: str | None = None
        self.session_id: str | None = None
        self.connection: Connection | None = None
        self.transport: Any = None


class _Asked:
    """A question asked of a legacy client: its answer (a JSON-RPC response) once it comes."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None
        self.done = trio.Event()


class _Stored:
    """A message kept in the SDK's event store as the JSON it was sent as (the store and the SDK's
    replay read it through ``model_dump_json``, as they read the SDK's own messages)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def model_dump_json(self, **_: Any) -> str:
        return self.text


class _Reply:
    """The answer to one request.

    2026-07-28: JSON if nothing comes before the result, else an SSE stream. Legacy (``stream``
    given: the SDK's event store and the request's stream id): an SSE stream, as the SDK answers, its
    priming event first (2025-11-25 and later), every event kept in the event store under the request's
    stream, so a client can replay them with ``Last-Event-ID``.
    """

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]], *, legacy: bool = False,
                 stream: tuple[Any, str] | None = None, retry: int | None = None) -> None:
        self._send = send
        self._extra = extra_headers
        self._lock = trio.Lock()
        self._legacy = legacy
        self._stream = stream
        self._retry = retry
        self.streaming = False
        self.done = False
        #: the client went away (nothing more can reach it)
        self.gone = False

    async def _put(self, message: Mapping[str, Any] | bytes | None, *, last: bool = False) -> None:
        """Send a message (or raw SSE bytes) on the stream, starting it first if need be: its headers
        and priming event go out in the same write, the priming event stored first."""
        body = b""
        if not self.streaming:
            self.streaming = True
            await self._send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + self._extra})
            if self._stream is not None:
                store, stream_id = self._stream
                priming = f"id: {await store.store_event(stream_id, None)}\r\ndata: \r\n"
                if self._retry is not None:
                    priming += f"retry: {self._retry}\r\n"
                body = (priming + "\r\n").encode()
        if isinstance(message, bytes):
            body += message
        elif message is not None:
            body += await self._sse(message)
        await self._send({"type": "http.response.body", "body": body, "more_body": not last})

    async def _sse(self, message: Mapping[str, Any]) -> bytes:
        text = json.dumps(message, separators=(",", ":"))
        if self._stream is None:
            return f"event: message\r\ndata: {text}\r\n\r\n".encode()
        store, stream_id = self._stream
        event_id = await store.store_event(stream_id, _Stored(text))
        return f"event: message\r\nid: {event_id}\r\ndata: {text}\r\n\r\n".encode()

    async def event(self, message: Mapping[str, Any]) -> None:
        """Put a message (a notification) on the stream, ahead of the answer."""
        async with self._lock:
            if not self.done:
                await self._put(message)

    async def ping(self) -> None:
        async with self._lock:
            if not self.done:
                await self._put(b": ping\r\n\r\n")

    async def finish(self, message: Mapping[str, Any] | None, status: int = 200) -> None:
        """End the answer with ``message`` (None: with nothing more)."""
        async with self._lock:
            if self.done:
                return
            self.done = True
            if self.streaming or self._legacy or message is None:
                await self._put(message, last=True)
                return
            data = json.dumps(message, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                       *self._extra]
            await self._send({"type": "http.response.start", "status": status, "headers": headers})
            await self._send({"type": "http.response.body", "body": data, "more_body": False})


class EdgeParts(Protocol):
    """What the fast path uses of the edge (:class:`~fednode._mcp._edge.MCPEdge`)."""

    @property
    def forwarder(self) -> Forwarder: ...

    @property
    def limits(self) -> ClientLimits | None: ...

    def legacy_connection(self, session_id: str) -> Connection | None: ...

    async def answer_list(self, method: str, params: Mapping[str, Any] | None, version: str,
                          caller: Caller | None) -> dict[str, Any]: ...

    async def answer_forwarded(self, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]: ...


class FastPath:
    """ASGI middleware serving the hot MCP requests at ``path`` itself; everything else goes to ``app``.

    Args:
        app: the SDK's Streamable HTTP app (with its session manager running).
        edge: the edge whose catalog, forwarder, limits and sessions the requests use.
        path: where MCP is served (``/mcp``).
        security: the SDK's DNS-rebinding settings for this app (None: off).
        manager: the SDK's session manager (legacy sessions are looked up in it).
    """

    def __init__(self, app: ASGIApp, edge: EdgeParts, *, path: str, security: TransportSecuritySettings | None,
                 manager: Any) -> None:
        self.app = app
        self.edge = edge
        self.path = path
        self.security = TransportSecurityMiddleware(security)
        self.manager = manager
        #: (session id, request id) of the legacy requests in flight here -> their cancel scopes.
        self._inflight: dict[tuple[str, str | int], trio.CancelScope] = {}
        self._schemas: dict[str, tuple[Any, bool]] = {}
        #: (session id, request id) of the questions asked of legacy clients here -> their answers
        self._asks: dict[tuple[str, str | int], _Asked] = {}
        self._ask_ids = itertools.count(1)
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        chunks: list[Message] = []
        body = await _read_body(receive, chunks)
        if chunks[-1]["type"] == "http.disconnect":
            return  # the client left before its body was whole: no one to answer (nor the SDK to ask)
        plan = None
        if body is not None:
            headers = _Headers(scope["headers"])
            if await self.security.validate_request(SimpleNamespace(headers=headers), is_post=True) is None:  # type: ignore[arg-type]
                plan = await self._plan(scope, headers, body)
        if plan is None:
            await self.app(scope, _replay(chunks, receive), send)
        elif isinstance(plan, _Plan):
            self.served += 1
            await self._serve(plan, receive, send, scope.get("extensions", {}).get("fednode.watch"))
        else:  # a client's answer to a question asked here: taken, as the SDK takes the answers it gets
            session = [(b"mcp-session-id", plan.encode())]
            await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0"),
                                                                                  *session]})
            await send({"type": "http.response.body", "body": b""})

    async def _plan(self, scope: Scope, headers: _Headers, body: bytes) -> _Plan | str | None:
        """What to serve; or the session id of an answer delivered here (to acknowledge); or None to
        leave the request to the SDK."""
        has_json, has_sse = check_accept_headers(SimpleNamespace(headers=headers))  # type: ignore[arg-type]
        if not (has_json and has_sse):
            return None
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(decoded, dict) or decoded.get("jsonrpc") != "2.0":
            return None
        version = headers.get("mcp-protocol-version")
        if "id" not in decoded:
            self._cancel(decoded, headers)
            return None
        if "method" not in decoded:
            return self._answered(decoded, headers)
        method, params, request_id = decoded.get("method"), decoded.get("params", {}), decoded["id"]
        if (not isinstance(method, str) or method not in HOT_METHODS or not isinstance(params, dict)
                or isinstance(request_id, bool) or not isinstance(request_id, str | int)
                or decoded.keys() - {"jsonrpc", "id", "method", "params"}):
            return None
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            plan = self._modern(decoded, headers, scope)
        else:
            plan = self._legacy(decoded, headers, version)
        if plan is None:
            return None
        try:
            mcp_methods.validate_client_request(plan.method, plan.version, plan.params)
        except (ValidationError, KeyError):
            return None
        state = scope.get("state")
        if isinstance(state, dict):
            plan.caller, plan.key = state.get(CALLER_KEY), state.get(CLIENT_KEY)
        return plan

    def _modern(self, decoded: dict[str, Any], headers: _Headers, scope: Scope) -> _Plan | None:
        if find_duplicated_routing_header((name.decode("latin-1"), "") for name, _ in scope["headers"]
                                          if name.lower() in _ROUTING):
            return None
        verdict = classify_inbound_request(decoded, headers=headers.as_dict())
        if isinstance(verdict, InboundLadderRejection):
            return None
        params = decoded.get("params", {})
        if decoded["method"] == "tools/call" and self._param_headers_refused(params, headers):
            return None
        return _Plan(decoded["method"], params, decoded["id"], verdict.protocol_version)

    def _param_headers_refused(self, params: dict[str, Any], headers: _Headers) -> bool:
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            return True  # the SDK answers the malformed request
        if not arguments and not any(key.startswith("mcp-param-") for key, _ in headers.items()):
            return False
        schema = self.edge.forwarder.tool_input_schema(name)
        if schema is None or not self._annotated(name, schema):
            return False  # no Mcp-Param-* header is declared: none can be wrong
        return validate_mcp_param_headers(schema, arguments or {}, headers) is not None  # type: ignore[arg-type]

    def _annotated(self, name: str, schema: Any) -> bool:
        """Whether a tool's input schema declares ``Mcp-Param-*`` headers (the SDK's reading; cached
        per schema object: walking the schema on every call costs more than the rest of the checks)."""
        known = self._schemas.get(name)
        if known is not None and known[0] is schema:
            return known[1]
        annotated = find_invalid_x_mcp_header(schema) is None and bool(x_mcp_header_map(schema))
        if len(self._schemas) >= _SCHEMAS:
            self._schemas.clear()
        self._schemas[name] = (schema, annotated)
        return annotated

    def _legacy(self, decoded: dict[str, Any], headers: _Headers, version: str | None) -> _Plan | None:
        session_id = headers.get("mcp-session-id")
        if session_id is None or version is None:
            return None
        transport = self.manager._server_instances.get(session_id)
        connection = self.edge.legacy_connection(session_id)
        if (transport is None or connection is None or transport.is_terminated
                or getattr(self.manager, "_session_owners", {}).get(session_id) is not None
                or connection.protocol_version != version):
            return None
        idle = getattr(transport, "idle_scope", None)
        if idle is not None and idle.cancel_called:
            return None
        params = decoded.get("params", {})
        meta = params.get("_meta")
        if isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta:
            return None  # the SDK refuses the 2026-07-28 envelope on a legacy session
        plan = _Plan(decoded["method"], params, decoded["id"], version)
        plan.session_id, plan.connection, plan.transport = session_id, connection, transport
        return plan

    def _sdk_takes(self, session_id: str, headers: _Headers) -> bool:
        """Whether the SDK would take a message (an answer, a notification) POSTed to a legacy session:
        a legacy era's version (or none), a live session, no owner's credential to check. One it would
        refuse is its to refuse: nothing of it is acted on here."""
        version, transport = headers.get("mcp-protocol-version"), self.manager._server_instances.get(session_id)
        return not ((version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS) or transport is None
                    or transport.is_terminated
                    or getattr(self.manager, "_session_owners", {}).get(session_id) is not None)

    def _answered(self, decoded: dict[str, Any], headers: _Headers) -> str | None:
        """A legacy client's answer to a request asked on a fast-path request's stream: delivered to it
        (the session id, for the acknowledgement), else None (the SDK's, or nobody's)."""
        session_id, answer_id = headers.get("mcp-session-id"), decoded["id"]
        if session_id is None or not isinstance(answer_id, str):  # every id asked here is a string
            return None
        if not self._sdk_takes(session_id, headers):
            return None
        asked = self._asks.get((session_id, answer_id))
        if asked is None or asked.answer is not None or ("result" in decoded) == ("error" in decoded):
            return None
        asked.answer = decoded
        asked.done.set()
        return session_id

    def _asker(self, plan: _Plan, reply: _Reply) -> Callable[[str, Mapping[str, Any] | None],
                                                             Awaitable[dict[str, Any]]]:
        """How a legacy request served here asks its client something: a request on the request's own
        stream (as the SDK sends one), answered by the client's POST of the response."""
        session_id = plan.session_id
        assert session_id is not None

        async def ask(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
            request_id = f"fednode-{next(self._ask_ids)}"
            key = (session_id, request_id)
            asked = self._asks[key] = _Asked()
            try:
                message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
                if params is not None:
                    message["params"] = dict(params)
                await reply.event(message)
                await asked.done.wait()
            finally:
                del self._asks[key]
            answer = asked.answer or {}
            error = answer.get("error")
            if error is not None:
                error = error if isinstance(error, dict) else {}
                code = error.get("code")
                raise MCPError(code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR,
                               str(error.get("message", "")), error.get("data"))
            result = answer.get("result")
            if not isinstance(result, dict):
                raise MCPError(INTERNAL_ERROR, f"the client's answer to {method} is not an object")
            return result

        return ask

    def _cancel(self, decoded: dict[str, Any], headers: _Headers) -> None:
        """A legacy ``notifications/cancelled`` for a request served here cancels it (the SDK still
        acknowledges the notification, 202, and ignores the id it does not know)."""
        session_id = headers.get("mcp-session-id")
        params = decoded.get("params")
        if (decoded.get("method") != "notifications/cancelled" or session_id is None or not isinstance(params, dict)
                or not self._sdk_takes(session_id, headers)):
            return None
        request_id = params.get("requestId")
        scope = self._inflight.get((session_id, request_id)) if isinstance(request_id, str | int) else None
        if scope is not None:
            scope.cancel()

    async def _serve(self, plan: _Plan, receive: Receive, send: Send, watch: Watch | None) -> None:
        if plan.session_id is None:
            reply = _Reply(send, [])
        else:
            store = getattr(self.manager, "event_store", None)
            primed = store is not None and is_version_at_least(plan.version, "2025-11-25")
            reply = _Reply(send, [(b"mcp-session-id", plan.session_id.encode())], legacy=True,
                           stream=(store, str(plan.request_id)) if primed else None,
                           retry=getattr(self.manager, "retry_interval", None))
        key = (plan.session_id, plan.request_id) if plan.session_id is not None else None
        with _holding(plan.transport), trio.CancelScope() as cancel:
            if key is not None:
                self._inflight[key] = cancel
            try:
                if watch is not None:
                    # The edge's own HTTP server watches the connection anyway: no task of our own.
                    watch.cancel_on_disconnect(cancel)
                    watch.every(PING_INTERVAL, reply.ping)
                    message, status = await self._answer(plan, reply)
                    await reply.finish(message, status)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_watch, receive, cancel, reply)
                        message, status = await self._answer(plan, reply)
                        await reply.finish(message, status)
                        nursery.cancel_scope.cancel()
            finally:
                if key is not None:
                    self._inflight.pop(key, None)
        if cancel.cancelled_caught and not reply.done and not reply.gone and not (watch is not None and watch.gone):
            # Cancelled by the client's notifications/cancelled: the legacy wire ends a request's
            # stream only with an answer for its id, so it gets one (as the SDK answers).
            with trio.move_on_after(5.0):
                await reply.finish({"jsonrpc": "2.0", "id": plan.request_id,
                                    "error": {"code": REQUEST_CANCELLED, "message": "Request cancelled"}})

    async def _answer(self, plan: _Plan, reply: _Reply) -> tuple[dict[str, Any], int]:
        try:
            self._check_rate(plan)
            result = await self._result(plan, reply)
        except MCPError as exc:
            error = exc.error
            status = ERROR_CODE_HTTP_STATUS.get(error.code, 200) if plan.session_id is None else 200
            return {"jsonrpc": "2.0", "id": plan.request_id, "error": _error(error)}, status
        return {"jsonrpc": "2.0", "id": plan.request_id, "result": result}, 200

    def _check_rate(self, plan: _Plan) -> None:
        limits = self.edge.limits
        if limits is not None and plan.key is not None:
            wait = limits.take(plan.key, trio.current_time())
            if wait:
                raise MCPError(RATE_LIMITED, "Rate limit exceeded; retry later", {"retryAfter": retry_after(wait)})

    async def _result(self, plan: _Plan, reply: _Reply) -> dict[str, Any]:
        edge = self.edge
        if plan.method in _LISTS:
            return await edge.answer_list(plan.method, plan.params, plan.version, plan.caller)
        meta = plan.params.get("_meta")
        meta = meta if isinstance(meta, dict) else None
        token = meta.get("progressToken") if meta is not None else None
        client_info, capabilities = _client_of(plan.connection)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            if token is None or isinstance(token, bool):
                return
            params: dict[str, Any] = {"progressToken": token, "progress": value}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            await reply.event({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

        async def notify(method: str, params: Mapping[str, Any] | None) -> None:
            message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
            if params is not None:
                message["params"] = dict(params)
            await reply.event(message)

        call = EdgeCall(method=plan.method, protocol_version=plan.version, meta=meta, session_key=plan.session_id,
                        request_id=plan.request_id, client_info=client_info, client_capabilities=capabilities,
                        progress=progress, caller=plan.caller, notify=notify,
                        ask=self._asker(plan, reply) if plan.session_id is not None else None)
        return await edge.answer_forwarded(dict(plan.params), call)


async def _watch(receive: Receive, cancel: trio.CancelScope, reply: _Reply) -> None:
    """Cancel the request when its client goes away; ping it while it waits in silence."""
    while True:
        with trio.move_on_after(PING_INTERVAL):
            message = await receive()
            if message["type"] == "http.disconnect":
                reply.gone = True
                cancel.cancel()
                return
            continue
        await reply.ping()


class _holding:
    """Holds a legacy session open (its idle countdown suspended) while a request of it is served here,
    as the SDK does for the requests it serves itself."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        idle = getattr(transport, "idle_scope", None)
        self._transport = transport if idle is not None and getattr(transport, "_idle_timeout", None) else None

    def __enter__(self) -> None:
        transport = self._transport
        if transport is not None:
            transport._requests_in_flight += 1
            transport.idle_scope.deadline = math.inf

    def __exit__(self, *exc: object) -> None:
        transport = self._transport
        if transport is not None:
            transport._requests_in_flight -= 1
            if not transport._requests_in_flight:
                transport.idle_scope.deadline = anyio.current_time() + transport._idle_timeout


def _client_of(connection: Connection | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A legacy client's initialize-time identity and capabilities as wire dicts (dumped once per session)."""
    if connection is None:
        return None, None
    known = connection.state.get(_CLIENT_STATE)
    if known is None:
        params = connection.client_params
        known = (None, None) if params is None else (
            params.client_info.model_dump(by_alias=True, mode="json", exclude_none=True),
            params.capabilities.model_dump(by_alias=True, mode="json", exclude_none=True))
        connection.state[_CLIENT_STATE] = known
    return known


def _error(error: ErrorData) -> dict[str, Any]:
    return error.model_dump(by_alias=True, mode="json", exclude_none=True)


async def _read_body(receive: Receive, chunks: list[Message]) -> bytes | None:
    """The request's body (each message kept in ``chunks``); None when it is over the SDK's size limit
    (the SDK then answers as it would) or the client went away (the last message: ``http.disconnect``)."""
    size = 0
    while True:
        message = await receive()
        chunks.append(message)
        if message["type"] != "http.request":
            return None
        size += len(message.get("body", b""))
        if size > DEFAULT_MAX_REQUEST_BODY_SIZE:
            return None
        if not message.get("more_body", False):
            return b"".join(chunk.get("body", b"") for chunk in chunks)


def _replay(chunks: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``chunks`` again, then reads on."""
    pending = list(chunks)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
