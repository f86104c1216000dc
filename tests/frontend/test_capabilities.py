"""Requests checked against model cards: a feature the card lacks (or the bus cannot carry) is a 400 naming the field."""

from __future__ import annotations

import msgspec
import pytest

from frontend.capabilities import check_chat, check_completion, check_image, logit_bias_ids
from protocol.errors import InvalidRequest
from protocol.events import ModelCard
from protocol.openai import chat_decoder, completion_decoder
from protocol.openai_images import image_decoder

TEXT = ModelCard(name="m", component="mocker", kinds=["chat", "completions"])
IMAGE = ModelCard(name="img", component="image", kinds=["images"], output_modalities=["image"])


def chat(**fields):
    return chat_decoder.decode(msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}))


def param_of(check, req, card=TEXT) -> str:
    with pytest.raises(InvalidRequest) as info:
        check(req, card)
    assert "does not support" in info.value.message or "needs" in info.value.message or "not a field" in info.value.message
    return info.value.param


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "$.tools"),
    ({"response_format": {"type": "json_object"}}, "$.response_format"),
    ({"presence_penalty": 1.0}, "$.presence_penalty"),
    ({"logit_bias": {"3": 5}}, "$.logit_bias"),
    ({"logprobs": True}, "$.logprobs"),
    ({"stream_options": {"include_usage": True}}, "$.stream_options"),
    ({"modalities": ["text", "audio"]}, "$.modalities"),
    ({"messages": [{"role": "tool", "content": "r", "tool_call_id": "c"}]}, "$.messages[0].role"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "$.messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "$.messages[0].content[0]"),
])
def test_what_the_card_lacks_is_a_400_naming_the_field(body, param):
    assert param_of(check_chat, chat(**body)) == param


def test_values_that_ask_for_nothing_pass_everywhere():
    check_chat(chat(presence_penalty=0, tool_choice="none", response_format={"type": "text"}, store=False,
                    service_tier="auto", reasoning_effort="none", modalities=["text"], logprobs=False), TEXT)


def test_a_card_feature_enables_only_what_the_bus_carries():
    card = msgspec.structs.replace(TEXT, features=["logit_bias", "logprobs", "json_object"])
    check_chat(chat(logit_bias={"3": 5}, logprobs=True, top_logprobs=2), card)
    assert param_of(check_chat, chat(response_format={"type": "json_object"}), card) == "$.response_format"


def test_completion_cross_field_rules():
    def req(**fields):
        return completion_decoder.decode(msgspec.json.encode({"model": "m", "prompt": "p", **fields}))

    card = msgspec.structs.replace(TEXT, features=["logprobs"])
    with pytest.raises(InvalidRequest, match="best_of") as info:
        check_completion(req(best_of=2, n=3), card)
    assert info.value.param == "$.best_of"
    assert param_of(check_completion, req(echo=True, logprobs=1), card) == "$.echo"
    assert param_of(check_completion, req(suffix="tail"), card) == "$.suffix"


def test_image_fields_without_a_feature_name_themselves():
    def req(**fields):
        return image_decoder.decode(msgspec.json.encode({"prompt": "p", **fields}))

    assert param_of(check_image, req(style="vivid"), IMAGE) == "$.style"
    assert param_of(check_image, req(output_format="gif"), IMAGE) == "$.output_format"
    check_image(req(output_format="webp", moderation="low"), IMAGE)


def test_logit_bias_keys_must_be_token_ids_in_the_vocabulary():
    assert logit_bias_ids({"7": -100}, 10) == {7: -100.0}
    for key in ("x", "10"):
        with pytest.raises(InvalidRequest) as info:
            logit_bias_ids({key: 1}, 10)
        assert info.value.param == f"$.logit_bias.{key}"
