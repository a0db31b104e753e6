"""The wire codec: every message type round-trips; arbitrary input only ever raises ProtocolError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fednode
from fednode._peers import _wire as wire

ids = st.integers(min_value=0, max_value=2**53)
texts = st.text(max_size=40)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
timeouts = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)

messages = st.one_of(
    st.builds(wire.Hello, node=texts, version=st.integers(0, 2**31), software=texts),
    st.builds(wire.Request, id=ids, method=texts, params=json_values, timeout=timeouts),
    st.builds(wire.Response, id=ids, result=json_values),
    st.builds(wire.Error, id=st.none() | ids, code=st.integers(-(2**31), 2**31), message=texts, data=json_values),
    st.builds(wire.Notification, method=texts, params=json_values),
    st.builds(wire.Cancel, id=ids),
    st.builds(wire.Ping, seq=ids),
    st.builds(wire.Pong, seq=ids),
)


class TestRoundTrip:
    """Every wire message type survives encode then decode unchanged."""

    @given(messages)
    def test_round_trip(self, message: wire.Message) -> None:
        assert wire.decode(wire.encode(message)) == message

    @given(messages)
    def test_fast_encoder_matches_cattrs(self, message: wire.Message) -> None:
        reference = {**wire.converter.unstructure(message), "type": message.TYPE}
        assert json.loads(wire.encode(message)) == reference

    def test_every_type_is_covered(self) -> None:
        assert {cls.TYPE for cls in wire.MESSAGE_TYPES} == {
            "hello", "request", "response", "error", "notification", "cancel", "ping", "pong"}

    def test_unknown_fields_are_ignored(self) -> None:
        frame = json.dumps({"type": "ping", "seq": 3, "future": {"x": 1}})
        assert wire.decode(frame) == wire.Ping(seq=3)

    def test_unencodable_payload_is_a_protocol_error(self) -> None:
        with pytest.raises(fednode.ProtocolError, match="cannot encode"):
            wire.encode(wire.Request(id=1, method="m", params={"x": object()}))
        with pytest.raises(fednode.ProtocolError):
            wire.encode(wire.Response(id=1, result=float("nan")))


class TestDecoderRobustness:
    """The decoder raises ProtocolError, and only ProtocolError, for anything that is not a valid frame."""

    @given(st.text(max_size=200) | st.binary(max_size=200))
    def test_arbitrary_text(self, frame: str | bytes) -> None:
        with contextlib.suppress(fednode.ProtocolError):
            wire.decode(frame)

    @given(st.sampled_from([cls.TYPE for cls in wire.MESSAGE_TYPES]),
           st.dictionaries(st.sampled_from(["id", "seq", "method", "params", "result", "code", "message",
                                            "node", "version", "timeout", "data", "software"]),
                           json_values, max_size=6))
    def test_arbitrary_fields(self, kind: str, fields: dict[str, Any]) -> None:
        frame = json.dumps({**fields, "type": kind})
        try:
            message = wire.decode(frame)
        except fednode.ProtocolError:
            return
        # Whatever was accepted re-encodes to an equivalent frame.
        assert wire.decode(wire.encode(message)) == message

    @given(st.sampled_from(["request", "response", "ping", "pong"]),
           st.dictionaries(st.sampled_from(["id", "seq", "method", "params", "result", "timeout"]),
                           json_values | ids, max_size=5))
    def test_fast_decoder_matches_cattrs(self, kind: str, fields: dict[str, Any]) -> None:
        """The hand-written hot path accepts exactly what the cattrs path accepts, with equal results."""
        body = {**fields, "type": kind}
        cls = next(c for c in wire.MESSAGE_TYPES if kind == c.TYPE)
        try:
            reference: wire.Message | None = wire.structure(body, cls)
        except fednode.ProtocolError:
            reference = None
        try:
            fast: wire.Message | None = wire.decode(json.dumps(body))
        except fednode.ProtocolError:
            fast = None
        assert fast == reference

    @pytest.mark.parametrize(("frame", "fragment"), [
        ("[1, 2]", "must be a JSON object"),
        ('{"seq": 1}', "unknown frame type"),
        ('{"type": "ping", "seq": true}', "expected an integer"),
        ('{"type": "ping", "seq": "1"}', "expected an integer"),
        ('{"type": "ping", "seq": -5}', "between 0 and 2**53"),
        ('{"type": "request", "id": 1}', "missing field 'method'"),
        ('{"type": "ping", "seq": NaN}', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ])
    def test_specific_errors(self, frame: str, fragment: str) -> None:
        with pytest.raises(fednode.ProtocolError) as info:
            wire.decode(frame)
        assert fragment in str(info.value)

    def test_request_id_is_recovered_for_the_error_reply(self) -> None:
        assert wire.request_id_of('{"type": "request", "id": 12}') == 12
        assert wire.request_id_of('{"type": "request", "id": true}') is None
        assert wire.request_id_of("garbage") is None


@given(st.text(min_size=1, max_size=20), st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10)))
def test_raw_json_params_make_the_same_frame(method: str, params: dict[str, Any]) -> None:
    raw = wire.encode(wire.Notification(method=method, params=wire.RawJSON(json.dumps(params))))
    assert wire.decode(raw) == wire.decode(wire.encode(wire.Notification(method=method, params=params)))
