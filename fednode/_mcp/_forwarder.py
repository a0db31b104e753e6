"""The bridge between the client-facing edge and the federation: what forwarding a client request means.

Besides finding where a request goes (the federation's job), it adapts between protocol eras: a
legacy client's capabilities travel in each request's envelope, and a 2026-07-28 server's
``input_required`` rounds become questions asked on a legacy client's request stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import trio
from mcp.shared.exceptions import MCPError

from .._config._callers import Caller
from .._errors import DEADLINE_EXCEEDED, INTERNAL_ERROR, EdgeError, RequestError
from .._federation._federation import CLIENT_CAPABILITIES_KEY, Federation
from .._federation._traceparent import trace_of, with_traceparent
from ._edge_call import EdgeCall

#: Rounds of input_required answered for one request before giving up.
MAX_INPUT_ROUNDS = 16


#: A server's notification for a local legacy client session with no request in flight:
#: ``(session key at the edge, method, params)``, sent to the edge's standalone stream.
Notice = tuple[str, str, dict[str, Any]]
NOTICE_BUFFER = 256


class ClientCalls:
    """This node's legacy client sessions' requests in flight: where their servers' messages go.

    A server's notification for a session goes on the stream of the session's latest request in
    flight (where the client listens for sure), else to ``notices`` for the edge to put on the
    session's standalone stream. A server's question is asked on the latest request that can ask.

    Args:
        node_id: this node's id (legacy client sessions are named ``{node_id}/{key}`` across the mesh).
        notices: where notifications for sessions with no request in flight go (see :data:`Notice`).
        request_timeout: gives ``[mcp] request_timeout`` in force (how long a client may take to answer).
    """

    def __init__(self, node_id: str, notices: trio.MemorySendChannel[Notice],
                 request_timeout: Callable[[], float]) -> None:
        self._node_id = node_id
        self._notices = notices
        self._request_timeout = request_timeout
        self._calls: dict[str, list[EdgeCall]] = {}

    @contextlib.contextmanager
    def tracking(self, session_id: str, call: EdgeCall) -> Iterator[None]:
        """While the block runs, ``call`` is the session's latest request in flight."""
        self._calls.setdefault(session_id, []).append(call)
        try:
            yield
        finally:
            calls = self._calls.get(session_id, [])
            if call in calls:
                calls.remove(call)
            if not calls:
                self._calls.pop(session_id, None)

    async def deliver(self, session_id: str, method: str, params: dict[str, Any]) -> None:
        calls = self._calls.get(session_id)
        if calls:  # a request is in flight: its stream is where the client listens for sure
            await calls[-1].notify(method, params)
        elif session_id.startswith(f"{self._node_id}/"):
            await self._notices.send((session_id.split("/", 1)[1], method, params))

    async def ask(self, session_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        calls = self._calls.get(session_id)
        if not calls or not calls[-1].can_ask:
            raise MCPError(INTERNAL_ERROR, f"no request of the client's in flight to ask {method} on")
        with trio.fail_after(self._request_timeout()):
            return await calls[-1].ask(method, params)


class FederationForwarder:
    """Adapts the federation to the edge's Forwarder protocol (errors become EdgeErrors).

    Args:
        federation: the node's federation.
        calls: the legacy client sessions' requests in flight (their servers' messages go there).
        end_session: releases what a client session held across the mesh (its servers' connections).
        node_id: this node's id (legacy client sessions are named ``{node_id}/{key}`` across the mesh).
        request_timeout: gives ``[mcp] request_timeout`` in force (called each time: reloads replace it).
    """

    def __init__(self, federation: Federation, calls: ClientCalls,
                 end_session: Callable[[str, set[tuple[str, str]]], None], node_id: str,
                 request_timeout: Callable[[], float]) -> None:
        self.federation = federation
        self._calls = calls
        self._end_session = end_session
        self._node_id = node_id
        self._request_timeout = request_timeout
        self._levels: dict[str, str] = {}

    def _session_id(self, call: EdgeCall) -> str | None:
        if call.era != "legacy" or call.session_key is None:
            return None
        return f"{self._node_id}/{call.session_key}"

    def session_ended(self, key: str) -> None:
        """The edge's legacy session ``key`` is gone: release what it held across the mesh."""
        session_id = f"{self._node_id}/{key}"
        self._levels.pop(session_id, None)
        used = self.federation.session_used.pop(session_id, set())
        if used:
            self._end_session(session_id, used)

    def list_items(self, kind: str, caller: Caller | None = None) -> list[dict[str, Any]]:
        return self.federation.list_items(kind, caller)

    async def wait_settled(self) -> None:
        await self.federation.wait_settled()

    def tool_input_schema(self, name: str) -> Any:
        return self.federation.tool_input_schema(name)

    async def forward(self, method: str, params: dict[str, Any], call: EdgeCall) -> dict[str, Any]:
        session_id = self._session_id(call)
        if method == "logging/setLevel":
            # Applied to the session's connection at each server it uses, before its next request there.
            level = params.get("level")
            if session_id is not None and isinstance(level, str):
                self._levels[session_id] = level
            return {}
        session: dict[str, Any] | None = None
        if session_id is not None:
            session = {"id": session_id, "capabilities": call.client_capabilities or {},
                       "clientInfo": call.client_info, "logLevel": self._levels.get(session_id)}
            with self._calls.tracking(session_id, call):
                return await self._forward(method, params, call, session)
        return await self._forward(method, params, call, session)

    async def _forward(self, method: str, params: dict[str, Any], call: EdgeCall,
                       session: dict[str, Any] | None) -> dict[str, Any]:
        # One trace for every round of a request that asks its client for input (the client's, or a new one).
        params = with_traceparent(params, trace_of(params))
        meta = params.get("_meta")
        wants_progress = isinstance(meta, dict) and meta.get("progressToken") is not None
        progress = call.report_progress if wants_progress else None
        if call.era == "legacy":
            # A legacy client declared its capabilities once, at initialize; servers of the
            # 2026-07-28 era read them from each request's envelope.
            meta = dict(meta) if isinstance(meta, dict) else {}
            meta.setdefault(CLIENT_CAPABILITIES_KEY, call.client_capabilities or {})
            params = {**params, "_meta": meta}
        try:
            result = await self.federation.execute(method, params, progress=progress, session=session,
                                                   caller=call.caller)
            # A 2026-07-28 server asks for input by returning input_required; a legacy client
            # expects to be asked directly. Ask it on its request's stream and retry, as its SDK would.
            delay = 0.05
            for _ in range(MAX_INPUT_ROUNDS):
                if result.get("resultType") != "input_required" or not call.can_ask:
                    return result
                requests = result.get("inputRequests") or {}
                retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
                if isinstance(requests, dict) and requests:
                    delay = 0.05
                    answers = {}
                    for key, request in requests.items():
                        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                            raise EdgeError(INTERNAL_ERROR, "malformed input request from the server")
                        # The client gets as long to answer as any forwarded request gets.
                        with trio.fail_after(self._request_timeout()):
                            answers[key] = await call.ask(request["method"], request.get("params"))
                    retry["inputResponses"] = answers
                else:
                    await trio.sleep(delay)  # state only: the server is still working
                    delay = min(delay * 2, 0.25)
                if isinstance(result.get("requestState"), str):
                    retry["requestState"] = result["requestState"]
                result = await self.federation.execute(method, retry, progress=progress, session=session,
                                                       caller=call.caller)
            raise EdgeError(INTERNAL_ERROR, f"the server asked for input more than {MAX_INPUT_ROUNDS} times")
        except RequestError as exc:
            raise EdgeError(exc.code, str(exc), exc.data) from None
        except MCPError as exc:  # the client refused an input request
            raise EdgeError(exc.error.code, exc.error.message, exc.error.data) from None
        except trio.TooSlowError:
            raise EdgeError(DEADLINE_EXCEEDED, "the client did not answer the server's question in time") from None
