"""W3C Trace Context ``traceparent`` values: parsed, minted and carried in a request's ``params._meta``.

One federation-wide trace id follows a client's request across every hop, so each node's audit
line for it shares the id (see :mod:`fednode._federation._audit`). The entry node keeps the
client's trace id when its ``_meta.traceparent`` is valid, else starts a trace; every node that
sends the request on (to a peer or to its attached server) puts its own span id in the parent-id
field. A malformed value from a client or a peer is ignored (a new trace begins): it never fails
a request.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import attrs

#: The key of the traceparent in a request's ``_meta`` (as in the MCP ecosystem's OpenTelemetry conventions).
META_KEY = "traceparent"
_HEX = frozenset("0123456789abcdef")
_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


@attrs.frozen
class TraceParent:
    """A parsed ``traceparent``: ``00-<trace_id>-<parent_id>-<flags>``.

    Attributes:
        trace_id: 32 lowercase hex digits, not all zero.
        parent_id: 16 lowercase hex digits, not all zero: the span of the sender.
        flags: 2 lowercase hex digits (``01``: sampled).
    """

    trace_id: str
    parent_id: str
    flags: str = "01"

    def __str__(self) -> str:
        """The header value (version 00, the only one this node writes)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"

    def child(self) -> TraceParent:
        """The same trace with a new span of this node as the parent (what is sent onward)."""
        return TraceParent(self.trace_id, new_span_id(), self.flags)


def new_trace_id() -> str:
    """A random trace id (32 hex digits, never all zero)."""
    while True:
        value = secrets.token_hex(16)
        if value != "0" * 32:
            return value


def new_span_id() -> str:
    """A random span (parent) id (16 hex digits, never all zero)."""
    while True:
        value = secrets.token_hex(8)
        if value != "0" * 16:
            return value


def new_trace() -> TraceParent:
    """A new trace, with a new span of this node as its parent."""
    return TraceParent(new_trace_id(), new_span_id())


def _hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text) and text != "0" * length


def parse_traceparent(value: object) -> TraceParent | None:
    """Parse a ``traceparent`` value; None when it is not one (anything at all may be given).

    Follows W3C Trace Context level 1: lowercase hex; version ``ff`` is invalid; version ``00`` is
    exactly 55 characters; a later version may append ``-``-separated fields, which are ignored.
    """
    if not isinstance(value, str) or len(value) < _LENGTH or len(value) > 512:
        return None
    version, trace_id, parent_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if not (len(version) == 2 and _HEX.issuperset(version) and version != "ff"):
        return None
    if version == "00" and len(value) != _LENGTH:
        return None
    if len(value) > _LENGTH and value[_LENGTH] != "-":
        return None
    if not (_hex(trace_id, 32) and _hex(parent_id, 16) and len(flags) == 2 and _HEX.issuperset(flags)):
        return None
    return TraceParent(trace_id, parent_id, flags)


def trace_of(params: Mapping[str, Any] | None) -> TraceParent:
    """The trace a request belongs to, from its ``_meta.traceparent``; a new trace when there is none valid."""
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    found = parse_traceparent(meta.get(META_KEY)) if isinstance(meta, Mapping) else None
    return found or new_trace()


def with_traceparent(params: Mapping[str, Any], parent: TraceParent) -> dict[str, Any]:
    """A copy of ``params`` whose ``_meta.traceparent`` is ``parent`` (the rest of ``_meta`` kept)."""
    meta = params.get("_meta")
    return {**params, "_meta": {**(meta if isinstance(meta, Mapping) else {}), META_KEY: str(parent)}}
