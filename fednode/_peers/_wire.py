"""The peer wire protocol: message types and their JSON codec (sans-I/O).

Every frame is one JSON object in a WebSocket text message, with a ``type`` field naming one of the
message classes below. The first frame each way after the authenticated handshake is a ``hello``
carrying :data:`PROTOCOL_VERSION`. Unknown extra fields are ignored so later versions can add them;
an unknown ``type`` or a field of the wrong type is a :class:`~fednode.ProtocolError`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, TypeAlias, TypeGuard

import attrs
import cattrs

from .._errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, ProtocolError

PROTOCOL_VERSION = 1

_MAX_ID = 2**53  # ids must survive a round trip through any JSON implementation


def _check_id(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{attribute.name} must be between 0 and 2**53")


@attrs.frozen
class Hello:
    """First frame each way: who is speaking and which protocol version it speaks."""

    TYPE: ClassVar[str] = "hello"
    node: str
    version: int = PROTOCOL_VERSION
    software: str = ""


@attrs.frozen
class Request:
    """A call to ``method``; answered by a Response or an Error with the same id.

    ``timeout`` (seconds) tells the receiver how long the caller will wait, so it can give up too.
    """

    TYPE: ClassVar[str] = "request"
    id: int = attrs.field(validator=_check_id)
    method: str
    params: Any = None
    timeout: float | None = None


@attrs.frozen
class Response:
    """The successful result of the request with the same id."""

    TYPE: ClassVar[str] = "response"
    id: int = attrs.field(validator=_check_id)
    result: Any = None


@attrs.frozen
class Error:
    """A failed request (``id`` set) or a protocol error about an unidentifiable frame (``id`` None)."""

    TYPE: ClassVar[str] = "error"
    id: int | None
    code: int
    message: str
    data: Any = None


@attrs.frozen
class Notification:
    """A one-way message; never answered."""

    TYPE: ClassVar[str] = "notification"
    method: str
    params: Any = None


@attrs.frozen
class Cancel:
    """The sender no longer wants the answer to its request ``id``."""

    TYPE: ClassVar[str] = "cancel"
    id: int = attrs.field(validator=_check_id)


@attrs.frozen
class Ping:
    """Heartbeat probe; the receiver answers with a Pong carrying the same seq at once."""

    TYPE: ClassVar[str] = "ping"
    seq: int = attrs.field(validator=_check_id)


@attrs.frozen
class Pong:
    """Heartbeat answer."""

    TYPE: ClassVar[str] = "pong"
    seq: int = attrs.field(validator=_check_id)


Message: TypeAlias = Hello | Request | Response | Error | Notification | Cancel | Ping | Pong
MESSAGE_TYPES: tuple[type[Message], ...] = (Hello, Request, Response, Error, Notification, Cancel, Ping, Pong)
_BY_TYPE: dict[str, type[Message]] = {cls.TYPE: cls for cls in MESSAGE_TYPES}


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


converter = cattrs.Converter()
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(str, _strict_str)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


def _body(message: Message) -> dict[str, Any]:
    # Hand-written for the frames on the hot path (a request/response round trip and heartbeats);
    # cattrs handles the rest. tests/test_wire.py checks both give the same frames.
    match message:
        case Request(id=request_id, method=method, params=params, timeout=timeout):
            return {"type": "request", "id": request_id, "method": method, "params": params, "timeout": timeout}
        case Response(id=request_id, result=result):
            return {"type": "response", "id": request_id, "result": result}
        case Ping(seq=seq):
            return {"type": "ping", "seq": seq}
        case Pong(seq=seq):
            return {"type": "pong", "seq": seq}
    body: dict[str, Any] = converter.unstructure(message)
    body["type"] = message.TYPE
    return body


@attrs.frozen
class RawJSON:
    """A notification's params already encoded as JSON text, put in the frame as they are.

    For large payloads built from parts that are JSON already (a packed catalog's definitions):
    nothing is parsed and encoded again. The text must be one JSON value; nothing checks it.
    """

    text: str


def encode(message: Message) -> str:
    """Serialise a message to the text of one frame.

    Raises:
        ProtocolError: a payload is not JSON-serialisable.
    """
    if isinstance(message, Notification) and isinstance(message.params, RawJSON):
        return f'{{"type":"notification","method":{_dumps(message.method)},"params":{message.params.text}}}'
    try:
        return _dumps(_body(message))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"cannot encode {message.TYPE} frame: {exc}", INTERNAL_ERROR) from None


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _is_id(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_ID


def _fast_structure(body: dict[str, Any]) -> Message | None:
    """Build the hot-path frame types without cattrs; None means "let cattrs decide (and explain)"."""
    kind = body["type"]
    if kind == "response":
        request_id = body.get("id")
        if _is_id(request_id):
            return Response(id=request_id, result=body.get("result"))
    elif kind == "request":
        request_id, method, timeout = body.get("id"), body.get("method"), body.get("timeout")
        if _is_id(request_id) and type(method) is str and (timeout is None or type(timeout) in (int, float)):
            return Request(id=request_id, method=method, params=body.get("params"),
                           timeout=None if timeout is None else float(timeout))
    elif kind in ("ping", "pong"):
        seq = body.get("seq")
        if _is_id(seq):
            return Ping(seq=seq) if kind == "ping" else Pong(seq=seq)
    return None


def decode(frame: str | bytes) -> Message:
    """Parse the text of one frame.

    Raises:
        ProtocolError: for anything that is not a well-formed frame; never any other exception.
    """
    if not isinstance(frame, str):
        raise ProtocolError("binary frames are not part of the protocol", INVALID_REQUEST)
    try:
        body = _loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {str(exc)[:200]}", PARSE_ERROR) from None
    if not isinstance(body, dict):
        raise ProtocolError("frame must be a JSON object", INVALID_REQUEST)
    kind = body.get("type")
    cls = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise ProtocolError(f"unknown frame type {shown!r}", INVALID_REQUEST)
    fast = _fast_structure(body)
    if fast is not None:
        return fast
    return structure(body, cls)


def structure(body: dict[str, Any], cls: type[Message]) -> Message:
    """Build a message from a decoded frame with cattrs (the reference path, with precise errors).

    Raises:
        ProtocolError: a field is missing or of the wrong type.
    """
    try:
        return converter.structure(body, cls)
    except Exception as exc:  # cattrs raises groups and assorted errors: all mean "malformed"
        raise ProtocolError(f"malformed {cls.TYPE} frame: {_structure_problem(exc)}", INVALID_REQUEST) from None


def request_id_of(frame: str | bytes) -> int | None:
    """Best-effort id of a frame that failed to decode, so the error reply can name it."""
    if not isinstance(frame, str) or len(frame) > 1_000_000:
        return None
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if isinstance(body, dict):
        value = body.get("id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ID:
            return value
    return None


def _structure_problem(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        notes = []
        for sub in exc.exceptions:
            where = "; ".join(str(n) for n in getattr(sub, "__notes__", []))
            notes.append(f"{_structure_problem(sub)}" + (f" ({where})" if where else ""))
        return "; ".join(notes)[:300]
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    return str(exc)[:300] or type(exc).__name__
