"""Bridging a 2026-07-28 client to a server that only speaks the legacy era, when the server asks.

A legacy server asks its client for input with a request in the middle of a call; a 2026-07-28
client can only be asked with an ``input_required`` result and answers by retrying the call. So the
owning node parks the upstream call: it keeps running under the server's own scope (so removing the
server ends it; see ``UpstreamServer.start_extra``), the server's question
goes back as ``input_required`` with a sealed, expiring ``requestState`` naming the parked call, and
the retry's ``inputResponses`` answer the waiting question. Tokens are HMAC-sealed with a key that
never leaves the node, so a client can neither forge nor reuse another's.

A legacy server's question does not say which call it belongs to (on stdio nothing does), so a
call whose client could answer one (it declared elicitation, sampling or roots) runs on a
connection of its own, opened on demand if one of the server's slots is free (``[[servers]]
max_connections``, charged to the peer the call arrived through; see :mod:`fednode._mcp._upstream_slots`),
reused and closed after :data:`SOLO_IDLE` seconds unused. Beyond that, calls share the server's
connection, where a question can be matched only while its call is the one in flight.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from typing import Any

import attrs
import trio
from mcp.shared.exceptions import MCPError

from .._errors import (
    DEADLINE_EXCEEDED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    OVERLOADED,
    FednodeError,
    ForwardError,
    ServerUnavailableError,
)
from .._federation._local import TOKEN_PREFIX
from .._peers._shares import LOCAL
from ._sessions import until_idle
from ._upstream import QUESTION_CAPABILITY, UP, ProgressCallback, UpstreamServer
from ._upstream_slots import ConnectionSlots, Slot

QUESTION_KEY = "fednode-question"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
MAX_PARKED = 256
SOLO_IDLE = 300.0  # seconds an unused one stays open


class _Parked:
    def __init__(self, park_id: str, deadline: float, declared: dict[str, Any]) -> None:
        self.id = park_id
        self.deadline = deadline
        self.declared = declared
        self.outcomes_send, self.outcomes = trio.open_memory_channel[tuple[str, Any]](1)
        self.answer: trio.MemorySendChannel[dict[str, Any]] | None = None
        self.scope = trio.CancelScope(deadline=deadline)

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if QUESTION_CAPABILITY.get(method) not in self.declared:
            raise MCPError(METHOD_NOT_FOUND,
                           f"the client did not declare the {QUESTION_CAPABILITY.get(method)} capability")
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self.answer = send
        await self.outcomes_send.send(("question", {"method": method, "params": params}))
        async with receive:
            return await receive.receive()


@attrs.define(eq=False)
class _Solo:
    """An extra connection to a server, used by one call at a time."""

    upstream: UpstreamServer
    slots: ConnectionSlots  # the server's, where this connection's slot is
    slot: Slot
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    busy: bool = True
    last_used: float = 0.0


class Parking:
    """Parked upstream calls of one node.

    Args:
        node_id: this node's id, sealed into each request state (peers route retries by it).

    A parked call and the extra connection it may run on are tasks of the server they call
    (``UpstreamServer.start_extra``): removing the server ends them, and nothing here needs closing.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._key = secrets.token_bytes(32)
        self._parked: dict[str, _Parked] = {}
        self._solos: dict[str, list[_Solo]] = {}

    def solo_connections(self, server: str) -> list[UpstreamServer]:
        """The extra connections open to ``server`` for calls that may be asked questions."""
        return [solo.upstream for solo in self._solos.get(server, [])]

    async def _checkout(self, server: str, shared: UpstreamServer, timeout: float, source: str) -> _Solo | None:
        """A connection to ``server`` for this call alone (None: none free; use the shared one).

        ``source`` (the peer the call came through) is charged with it, within its share.
        """
        solos = self._solos.setdefault(server, [])
        for solo in solos:
            if not solo.busy and solo.upstream.state == UP and solo.slots.move(solo.slot, source):
                solo.busy = True
                return solo
        slot = None if shared.in_process else shared.slots.acquire(source)
        if slot is None:
            return None
        solo = _Solo(shared.extra_connection(), shared.slots, slot)
        solos.append(solo)
        try:
            await shared.start_extra(self._run_solo, server, solo)
        except ServerUnavailableError:  # the server is being removed
            solos.remove(solo)
            shared.slots.release(slot)
            raise
        try:
            await solo.upstream.wait_ready(timeout)
        except trio.TooSlowError:
            solo.scope.cancel()
            return None
        return solo

    def _checkin(self, solo: _Solo) -> None:
        solo.busy = False
        solo.last_used = trio.current_time()

    async def _run_solo(self, server: str, solo: _Solo, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with solo.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(solo.upstream.run)
                    task_status.started()
                    solo.last_used = trio.current_time()
                    # close the connection once no call has used it for a while
                    await until_idle(SOLO_IDLE, lambda: solo.last_used, lambda: solo.busy)
                    nursery.cancel_scope.cancel()
        finally:
            solo.slots.release(solo.slot)  # the connection (and a stdio server's process) is gone by now
            solos = self._solos.get(server)
            if solos is not None and solo in solos:
                solos.remove(solo)

    def _seal(self, server: str, park_id: str, expires: float) -> str:
        body = base64.urlsafe_b64encode(json.dumps(
            {"origin": self.node_id, "server": server, "id": park_id, "exp": expires}).encode()).decode().rstrip("=")
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return f"{TOKEN_PREFIX}{body}.{mac}"

    def _open(self, token: str, server: str) -> _Parked:
        body, _, mac = token[len(TOKEN_PREFIX):].partition(".")
        good = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, good):
            raise ForwardError(INVALID_PARAMS, "invalid requestState")
        fields = json.loads(base64.urlsafe_b64decode(body + "=="))
        parked = self._parked.get(fields.get("id"))
        if parked is None or fields.get("server") != server or trio.current_time() > fields.get("exp", 0):
            raise ForwardError(INVALID_PARAMS, "requestState has expired or is unknown")
        return parked

    async def call(self, server: str, upstream: UpstreamServer, method: str, params: dict[str, Any],
                   timeout: float, progress: ProgressCallback | None, source: str = LOCAL) -> dict[str, Any]:
        """Run (or continue) a call whose server may ask questions; returns a result or input_required.

        ``upstream`` is the server's own driver: the call runs under its scope. ``source`` is the
        peer the call arrived from (:data:`~fednode._peers._shares.LOCAL`: a client of this node).
        """
        state = params.get("requestState")
        if isinstance(state, str) and state.startswith(TOKEN_PREFIX):
            parked = self._open(state, server)
            responses = params.get("inputResponses")
            answer = responses.get(QUESTION_KEY) if isinstance(responses, dict) else None
            if not isinstance(answer, dict) or parked.answer is None:
                raise ForwardError(INVALID_PARAMS, f"inputResponses must answer {QUESTION_KEY!r}")
            sender, parked.answer = parked.answer, None
            sender.send_nowait(answer)
            return await self._next(server, parked)
        if len(self._parked) >= MAX_PARKED:
            raise ForwardError(OVERLOADED, "too many requests waiting for input on this node; retry later")
        meta = params.get("_meta")
        declared = meta.get(CLIENT_CAPABILITIES_KEY) if isinstance(meta, dict) else None
        parked = _Parked(uuid.uuid4().hex, trio.current_time() + timeout,
                         declared if isinstance(declared, dict) else {})
        solo = None
        if any(capability in parked.declared for capability in QUESTION_CAPABILITY.values()):
            solo = await self._checkout(server, upstream, timeout, source)
        self._parked[parked.id] = parked
        upstream_params = {k: v for k, v in params.items() if k not in ("requestState", "inputResponses")}
        try:
            await upstream.start_extra(self._run, parked, solo.upstream if solo else upstream, method,
                                       upstream_params, progress, solo)
        except ServerUnavailableError:  # the server is being removed
            del self._parked[parked.id]
            if solo is not None:
                self._checkin(solo)
            raise
        return await self._next(server, parked)

    async def _run(self, parked: _Parked, upstream: UpstreamServer, method: str, params: dict[str, Any],
                   progress: ProgressCallback | None, solo: _Solo | None = None, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with parked.outcomes_send:  # closed however this ends: see _next
                with parked.scope:
                    try:
                        result = await upstream.call(method, params, timeout=parked.deadline - trio.current_time(),
                                                     on_progress=progress, on_question=parked.ask)
                        outcome: tuple[str, Any] = ("result", result)
                    except FednodeError as exc:
                        outcome = ("error", exc)
                    await parked.outcomes_send.send(outcome)
        finally:
            self._parked.pop(parked.id, None)
            if solo is not None:
                self._checkin(solo)

    async def _next(self, server: str, parked: _Parked) -> dict[str, Any]:
        with trio.move_on_at(parked.deadline) as scope:
            try:
                kind, value = await parked.outcomes.receive()
            except trio.EndOfChannel:
                # The call ended without an outcome: it was cancelled with its server.
                raise ServerUnavailableError(server, "it was removed during the call") from None
        if scope.cancelled_caught:
            parked.scope.cancel()
            raise ForwardError(DEADLINE_EXCEEDED, f"Server {server!r}: deadline exceeded while the server worked or "
                                                  f"waited for input")
        if kind == "result":
            return value  # type: ignore[no-any-return]
        if kind == "error":
            raise value
        return {"resultType": "input_required", "inputRequests": {QUESTION_KEY: value},
                "requestState": self._seal(server, parked.id, parked.deadline)}
