"""Wire contracts: round trips, tagged unions, compatibility rules, validation paths."""

from __future__ import annotations

import re

import msgspec
import numpy as np
import pytest

from protocol import subjects
from protocol.control import Cancel, control_decoder, control_encoder
from protocol.errors import ERRORS_BY_CODE, InvalidRequest, Overloaded, error_from_code
from protocol.events import Heartbeat, KvEvent, KvEventBatch, KvStored, LoadReport, StoredBlock, WorkerCard, event_decoder, event_encoder
from protocol.kv import tokens_from_bytes, tokens_to_bytes
from protocol.openai import chat_decoder
from protocol.openai_images import image_decoder
from protocol.work import Chunk, Error, Final, GenerateRequest, SamplingOptions, Usage, reply_decoder, work_decoder, work_encoder


def test_generate_request_round_trips_with_token_ids_as_int32_bytes():
    tokens = np.array([1, 2, 3, 2**31 - 1], dtype="<i4")
    request = GenerateRequest(request_id="r1", model="m", token_ids=tokens_to_bytes(tokens),
                              sampling=SamplingOptions(max_tokens=5, stop=["x"]))
    raw = work_encoder.encode(request)
    decoded = work_decoder.decode(raw)
    assert decoded == request
    assert tokens_from_bytes(decoded.token_ids).tolist() == tokens.tolist()
    assert msgspec.msgpack.decode(raw)["token_ids"] == tokens.tobytes()  # bytes on the wire, not an int list


def test_replies_decode_by_tag_and_unknown_fields_are_tolerated():
    for message in (Chunk(request_id="r", seq=1, text="hé"), Final(request_id="r", seq=2, usage=Usage(prompt_tokens=3)),
                    Error(request_id="r", seq=0, code="overloaded", message="busy", retry_after=1.0)):
        assert reply_decoder.decode(work_encoder.encode(message)) == message
    newer = msgspec.msgpack.encode({"type": "chunk", "request_id": "r", "seq": 0, "text": "a", "added_in_v2": [1]})
    assert reply_decoder.decode(newer) == Chunk(request_id="r", seq=0, text="a")


def test_events_and_control_round_trip():
    card = WorkerCard(worker_id="w1", namespace="dm", component="mocker", model="m", capacity=4, block_size=16)
    beat = Heartbeat(card=card, load=LoadReport(worker_id="w1", active_requests=2), last_kv_event_id=7)
    batch = KvEventBatch(worker_id="w1", events=[KvEvent(event_id=8, data=KvStored(parent_hash=None, blocks=[StoredBlock(2**64 - 1, 5)]))])
    for event in (beat, batch):
        assert event_decoder.decode(event_encoder.encode(event)) == event
    assert control_decoder.decode(control_encoder.encode(Cancel(request_id="r"))) == Cancel(request_id="r")


def test_errors_rebuild_from_their_code_with_fields():
    error = error_from_code("invalid_request", "bad", param="$.size")
    assert isinstance(error, InvalidRequest) and isinstance(error, ValueError) and error.param == "$.size"
    assert isinstance(error_from_code("overloaded", "x", retry_after=2.0), Overloaded)
    assert type(error_from_code("something_new", "x")) is ERRORS_BY_CODE["internal_error"]


@pytest.mark.parametrize(("decoder", "body", "path"), [
    (chat_decoder, b'{"model": "m", "messages": [{"role": "user"}], "top_p": 0}', "$.top_p"),
    (chat_decoder, b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "$.messages[0].content"),
    (chat_decoder, b'{"model": "m", "messages": [{"role": "user"}], "stop": ["a","b","c","d","e"]}', "$.stop"),
    (chat_decoder, b'{"model": "m", "messages": [{"role": "user"}], "nvext": {"threshold": 1.5}}', "$.nvext.threshold"),
    (image_decoder, b'{"prompt": "p", "size": "12"}', "$.size"),
    (image_decoder, b'{"prompt": "p", "n": 0}', "$.n"),
    (image_decoder, b'{"prompt": "p", "n": 11}', "$.n"),
    (image_decoder, b'{"prompt": "p", "output_format": "bmp"}', "$.output_format"),
    (image_decoder, b'{"prompt": ""}', "$.prompt"),
])
def test_validation_errors_name_the_field_path(decoder, body, path):
    with pytest.raises(msgspec.ValidationError, match=re.escape(f"at `{path}`") + "$"):
        decoder.decode(body)


def test_subject_tokens_are_checked():
    assert subjects.generate_direct("dm", "mocker", "w-1") == "dm.mocker.generate.w-1"
    with pytest.raises(ValueError, match="worker id"):
        subjects.check_token("a.b", "worker id")
