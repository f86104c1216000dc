"""The model registry on JetStream: a frontend rebuilds tokenizer and template from the card alone."""

from __future__ import annotations

import numpy as np

from shell.registry import fetch_card, fetch_file, publish_model
from frontend.preprocess import Preprocessor
from protocol.openai import ChatMessage
from tests.meshkit import nats_client
from workers.mocker.worker import MockerEngine


async def test_card_and_tokenizer_round_trip_through_jetstream(mesh):
    engine = MockerEngine("card-test")
    async with nats_client(mesh.nats_url) as nc:
        stored = await publish_model(nc, mesh.namespace, engine.model_card(), engine.model_files())
        await publish_model(nc, mesh.namespace, engine.model_card(), engine.model_files())  # a second worker: idempotent
        card = await fetch_card(nc, mesh.namespace, "card-test")
        tokenizer_json = await fetch_file(nc, mesh.namespace, card.tokenizer_object)
        assert await fetch_card(nc, mesh.namespace, "missing") is None
    assert card == stored and card.tokenizer_sha256 == card.tokenizer_object
    pre = Preprocessor(card, tokenizer_json)
    text = pre.render_chat([ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="héllo 🙂")])
    assert text == "<|bos|><|system|>\nbe brief<|end|>\n<|user|>\nhéllo 🙂<|end|>\n<|assistant|>\n"
    expected = engine.tokenizer.encode(text, add_special_tokens=False).ids
    assert pre.chat_tokens([ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="héllo 🙂")]).tolist() == expected
    assert pre.prompt_tokens([5, 6]).dtype == np.int32
