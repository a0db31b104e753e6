"""The audit log (``[audit] path``): one JSON line per request a node serves or forwards.

Each node that a client's request passes through writes one line: the entry node (the client is
connected to it), each transit node, and the owning node (its server ran the request). The lines of
one request share a trace id (see :mod:`fednode._federation._traceparent`) and name its method,
server, original name, caller and path; never its arguments, results or any token.

Writing never blocks the Trio loop: :meth:`AuditLog.record` puts a line in a bounded buffer (full:
the line is dropped and counted, with a warning at most once a minute) and a writer task writes the
lines in batches from a worker thread. The file is opened for appending (created 0600) at start-up
and reopened on reload (SIGHUP), so logrotate may move it away.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from .._config._callers import Caller
from .._errors import (
    DEADLINE_EXCEEDED,
    FORBIDDEN,
    FORWARDING_LOOP,
    MISSING_CAPABILITY,
    NODE_UNREACHABLE,
    OVERLOADED,
    RATE_LIMITED,
    SERVER_UNAVAILABLE,
    AuditError,
    ForwardError,
)
from ._routes import MAX_PATH
from ._traceparent import TraceParent, trace_of

#: Lines waiting for the writer at most; more are dropped (and counted) rather than queued.
AUDIT_BUFFER = 4096
_BATCH = 512  # lines written by one call of the worker thread at most
#: Seconds between warnings about dropped lines (each says how many were dropped since the last).
DROP_WARNING_INTERVAL = 60.0
_MAX_TEXT = 512  # longest text kept from a request (a peer may send a method name of a megabyte)

ROLES = ("entry", "transit", "owner")
OUTCOMES = ("ok", "tool_error", "refused", "error", "timeout", "unreachable", "cancelled")
# error code -> outcome (any other code: "error")
_BY_CODE = {DEADLINE_EXCEEDED: "timeout", NODE_UNREACHABLE: "unreachable", SERVER_UNAVAILABLE: "unreachable",
            OVERLOADED: "refused", RATE_LIMITED: "refused", FORWARDING_LOOP: "refused",
            MISSING_CAPABILITY: "refused", FORBIDDEN: "refused"}


#: The client method that lists each kind.
LIST_METHODS = {"tools": "tools/list", "prompts": "prompts/list", "resources": "resources/list",
                "resourceTemplates": "resources/templates/list"}


def outcome_of(code: int | None) -> str:
    """The audit outcome of a request answered with JSON-RPC error ``code``."""
    return _BY_CODE.get(code, "error") if code is not None else "error"


def _text(value: object) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) else None


def item_name(method: str, params: Mapping[str, Any] | None) -> str | None:
    """The name a request is about: a tool's or prompt's name, a resource's URI, a completion's reference."""
    if not isinstance(params, Mapping):
        return None
    if method in ("tools/call", "prompts/get"):
        return _text(params.get("name"))
    if method.startswith("resources/"):
        return _text(params.get("uri"))
    ref = params.get("ref")
    if method == "completion/complete" and isinstance(ref, Mapping):
        return _text(ref.get("name") if ref.get("type") == "ref/prompt" else ref.get("uri"))
    return None


@attrs.define(eq=False)
class AuditEntry:
    """One request as a node sees it, filled in as it goes; written once it is over.

    Attributes:
        role: ``entry``, ``transit`` or ``owner``.
        method: the MCP method.
        trace: the request's trace (its id goes in the line; its :meth:`~TraceParent.child` onward).
        caller: who is calling, as this node believes it.
        path: the node ids the request went through, the entry node first and this node last.
        name: the exposed name (the entry node only).
        original: the name at the server.
        server: the server's id.
        origin: the owning node.
        time: when the request arrived (wall clock).
        started: when the request arrived (Trio clock, for its duration).
        outcome: the outcome whatever the error code says (``refused``: by this node's own checks).
    """

    role: str
    method: str
    trace: TraceParent
    caller: Caller
    path: list[str]
    name: str | None = None
    original: str | None = None
    server: str | None = None
    origin: str | None = None
    time: float = attrs.field(factory=time.time)
    started: float = attrs.field(factory=trio.current_time)
    outcome: str | None = None

    @classmethod
    def served(cls, node_id: str, forward: object, caller: Caller) -> AuditEntry:
        """The entry of a ``fed/forward`` request from a peer (checked or not: only its shape is read).

        The role is ``owner`` when the request is for one of this node's servers, else ``transit``.
        """
        fields: Mapping[str, Any] = forward if isinstance(forward, Mapping) else {}
        params = fields.get("params")
        params = params if isinstance(params, Mapping) else None
        trace = fields.get("trace")
        before = [item[:_MAX_TEXT] for item in trace[:MAX_PATH] if isinstance(item, str)] \
            if isinstance(trace, list) else []
        origin, method = _text(fields.get("origin")), _text(fields.get("method")) or ""
        return cls(role="owner" if origin == node_id else "transit", method=method, trace=trace_of(params),
                   caller=caller, path=[*before, node_id], original=item_name(method, params),
                   server=_text(fields.get("server")), origin=origin)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """A ForwardError raised in the block is this node's refusal, whatever its code."""
        try:
            yield
        except ForwardError:
            self.outcome = "refused"
            raise

    def line(self, node_id: str, outcome: str, code: int | None, now: float) -> dict[str, Any]:
        """The audit line (a JSON object) of this request, over with ``outcome`` at Trio time ``now``."""
        stamp = datetime.datetime.fromtimestamp(self.time, datetime.UTC).isoformat(timespec="milliseconds")
        return {"time": stamp.replace("+00:00", "Z"), "node": node_id, "trace": self.trace.trace_id,
                "role": self.role, "method": self.method, "name": self.name if self.role == "entry" else None,
                "original": self.original, "server": self.server, "origin": self.origin,
                "caller": self.caller.to_wire(), "path": self.path, "outcome": outcome, "code": code,
                "ms": round(max(0.0, now - self.started) * 1000, 3)}


def _open(path: Path) -> int:
    """Open ``path`` for appending (created 0600), or raise AuditError naming it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AuditError(f"cannot open the audit log {str(path)!r}: {exc.strerror or exc}") from None


def _write(fd: int, lines: list[dict[str, Any]]) -> None:
    """Write ``lines`` as JSON lines (in the worker thread: encoding costs the loop nothing)."""
    # ASCII with escapes: a peer's text may hold lone surrogates, which UTF-8 cannot encode.
    data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    view = memoryview(data)
    while view:  # O_APPEND writes of a regular file are whole in practice; loop for the rest anyway
        written = os.write(fd, view)
        view = view[written:]


class AuditLog:
    """The node's audit log: a bounded buffer and a writer task (:meth:`run`), or nothing when unset.

    Args:
        node_id: this node's id (in every line).
        log: the node's logger (warnings about dropped lines, failed writes).
        capacity: lines buffered at most (see :data:`AUDIT_BUFFER`).
        counted: told ``("written" | "dropped", n)`` for the metrics.
    """

    def __init__(self, node_id: str, *, log: Any, capacity: int = AUDIT_BUFFER,
                 counted: Callable[[str, int], None] = lambda outcome, n: None) -> None:
        self.node_id = node_id
        self._log = log
        self._counted = counted
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](capacity)
        self._lock = trio.Lock()  # a batch being written and a reopen never overlap
        self._fd: int | None = None
        self._direct = False  # the writer task is gone (shutting down): lines are written at once
        #: the file lines go to (None: no audit log)
        self.path: Path | None = None
        #: lines written and lines dropped (buffer full, or a write failed) since start
        self.written = 0
        self.dropped = 0
        self._dropped_warned = 0
        self._warned_at: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether lines are being kept (an audit log is configured and open)."""
        return self._fd is not None

    def open(self, path: Path | None) -> None:
        """Open the log at start-up (None: no audit log).

        Raises:
            AuditError: the file cannot be opened (its path is in the message).
        """
        fd = _open(path) if path is not None else None
        self._swap(path, fd)

    async def reopen(self, path: Path | None) -> None:
        """Open ``path`` anew (for logrotate, on SIGHUP; the path may have changed) once no batch is being written.

        Raises:
            AuditError: the file cannot be opened; the one open stays in use.
        """
        async with self._lock:
            fd = await trio.to_thread.run_sync(_open, path) if path is not None else None
            self._swap(path, fd)
        if path is not None:
            self._log.info("audit.opened", path=str(path))

    def _swap(self, path: Path | None, fd: int | None) -> None:
        old, self._fd, self.path = self._fd, fd, path
        if old is not None:
            os.close(old)

    def listed(self, kind: str, caller: Caller) -> None:
        """Record a list of ``kind`` served to ``caller`` here (a list request carries no trace: a new one)."""
        if self.enabled:
            self.record(AuditEntry(role="entry", method=LIST_METHODS[kind], trace=trace_of(None), caller=caller,
                                   path=[self.node_id]), "ok")

    def record(self, entry: AuditEntry, outcome: str, code: int | None = None) -> None:
        """Queue the line of ``entry`` (over with ``outcome``); never blocks. Dropped and counted when full."""
        if self._fd is None:
            return
        line = entry.line(self.node_id, outcome, code, trio.current_time())
        if self._direct:  # shutting down: the loop may wait for the disk now
            self._write_batch([line])
            return
        try:
            self._send.send_nowait(line)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._drop(1, "the buffer is full (the disk is slower than the requests)")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._counted("dropped", count)
        now = trio.current_time()
        if self._warned_at is None or now - self._warned_at >= DROP_WARNING_INTERVAL:
            self._log.warning("audit.dropped", lines=self.dropped - self._dropped_warned, why=why,
                              path=str(self.path))
            self._warned_at, self._dropped_warned = now, self.dropped

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        if self._fd is None:
            return
        try:
            _write(self._fd, batch)
        except OSError as exc:
            self._failed(len(batch), exc)
        else:
            self._wrote(len(batch))

    def _wrote(self, count: int) -> None:
        self.written += count
        self._counted("written", count)

    def _failed(self, count: int, exc: OSError) -> None:
        self._drop(count, f"cannot write: {exc.strerror or exc}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the buffered lines, a batch at a time, from a worker thread, until cancelled.

        Cancellation: a batch being written is finished first (the worker thread is not abandoned,
        so no line is torn); the lines still buffered are then written at once, and so are the lines
        of requests ending after that (the node is shutting down).
        """
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                async with self._lock:
                    if self._fd is not None:
                        fd = self._fd
                        try:
                            await trio.to_thread.run_sync(_write, fd, batch)
                        except OSError as exc:
                            self._failed(len(batch), exc)
                        else:
                            self._wrote(len(batch))
        finally:
            self._direct = True
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now (blocking: for shutdown)."""
        batch = []
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if batch:
            self._write_batch(batch)

    def close(self) -> None:
        """Write what is buffered and close the file (the node has stopped); later lines are not kept."""
        self.flush()
        self._swap(None, None)
