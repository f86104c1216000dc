"""Every bus decoder, fed arbitrary bytes and arbitrary msgpack: it returns its type or raises msgspec.DecodeError.

Nothing else may escape (a TypeError or OverflowError would reach a subscription callback as a bug).
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.errors import decode_body
from protocol import control, events, routing, work
from protocol.errors import InvalidRequest
from protocol.openai import chat_decoder, completion_decoder
from protocol.openai_images import image_decoder

DECODERS = {
    "work": work.work_decoder, "reply": work.reply_decoder, "control": control.control_decoder,
    "kv_dump": control.dump_decoder, "control_ack": control.ack_decoder, "event": events.event_decoder,
    "model_card": events.card_decoder, "route_request": routing.route_request_decoder,
    "route_reply": routing.route_reply_decoder, "router_sync": routing.sync_decoder,
}
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)
# valid-looking messages: a dict whose "type" tag names one of the union's members, other fields random
TAGS = ["generate", "image", "ack", "chunk", "image_output", "final", "error", "cancel", "clear_cache", "dump_kv",
        "kv_events", "load", "heartbeat", "goodbye", "decision", "stored", "removed", "cleared"]
TAGGED = st.builds(lambda tag, rest: {**rest, "type": tag}, st.sampled_from(TAGS),
                   st.dictionaries(st.text(max_size=12), MSGPACK_VALUES, max_size=8))
PAYLOADS = st.binary(max_size=256) | MSGPACK_VALUES.map(msgspec.msgpack.encode) | TAGGED.map(msgspec.msgpack.encode)
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(payload=PAYLOADS)
def test_bus_decoder_returns_its_type_or_raises_decode_error(name, payload):
    decoder = DECODERS[name]
    try:
        decoded = decoder.decode(payload)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return
    assert msgspec.convert(msgspec.to_builtins(decoded), decoder.type) == decoded  # a whole, valid message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6), max_leaves=30)


@pytest.mark.parametrize("decoder", [chat_decoder, completion_decoder, image_decoder], ids=["chat", "completion", "image"])
@FUZZ
@given(body=st.binary(max_size=256) | JSON_VALUES.map(msgspec.json.encode))
def test_http_body_decoding_is_a_request_or_a_400_naming_a_field(decoder, body):
    try:
        decode_body(decoder, body)
    except InvalidRequest as exc:
        assert exc.param is not None and exc.param.startswith("$")


def test_integral_floats_count_as_integers_as_json_schema_says():
    body = b'{"model": "m", "prompt": [1.0, 2], "max_tokens": 3.0}'
    assert decode_body(completion_decoder, body).prompt == [1, 2]
    for bad, param in ((b'{"model": "m", "prompt": [1.5]}', "$.prompt[0]"), (b'{"model": "m", "prompt": "p", "max_tokens": 2.5}',
                                                                                "$.max_tokens")):
        with pytest.raises(InvalidRequest) as info:
            decode_body(completion_decoder, bad)
        assert info.value.param == param
