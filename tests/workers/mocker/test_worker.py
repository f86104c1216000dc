"""The mocker on a real bus: tokens ready together travel in one message; its table decoder is the tokenizer's."""

from __future__ import annotations

import random

from frontend.bus import Requester
from protocol import subjects
from protocol.kv import tokens_to_bytes
from protocol.work import Chunk, Final, GenerateRequest, SamplingOptions, work_encoder
from tests.meshkit import nats_client
from workers.mocker.tokenizer import TableDecoder, build_tokenizer


async def test_tokens_ready_together_go_out_as_one_bus_message_with_a_piece_per_token(mesh):
    worker = await mesh.add_mocker()  # no simulated time: the scheduler runs many steps between bus messages
    async with nats_client(mesh.nats_url) as nc:
        requester = Requester(nc, mesh.namespace)
        await requester.start()
        request = GenerateRequest(request_id="r", model="mocker", token_ids=tokens_to_bytes([5, 6, 7]),
                                  sampling=SamplingOptions(max_tokens=48), stream=True)
        subject = subjects.generate_direct(mesh.namespace, "mocker", worker.worker_id)
        stream = await requester.send(subject, "r", work_encoder.encode(request), worker.worker_id, 30)
        replies = [await stream.next()]
        while not isinstance(replies[-1], Final):
            replies.append(await stream.next())
        await requester.stop()
    chunks = [r for r in replies if isinstance(r, Chunk)]
    tokens = [len(c.token_ids) // 4 for c in chunks]
    assert sum(tokens) == replies[-1].usage.completion_tokens == 48
    assert len(chunks) < sum(tokens)  # coalesced: fewer bus messages than tokens
    for chunk, num in zip(chunks, tokens):  # ... and each still has one SSE piece per token
        assert len(chunk.pieces or [chunk.text]) == num and "".join(chunk.pieces or [chunk.text]) == chunk.text


def test_table_decoder_decodes_any_sequence_as_the_tokenizer_does():
    tokenizer = build_tokenizer()
    decode = TableDecoder(tokenizer)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    rng = random.Random(0)
    for _ in range(2000):  # includes byte tokens that cut a UTF-8 character, and special tokens
        ids = [rng.randrange(size) for _ in range(rng.randrange(12))]
        assert decode(ids) == tokenizer.decode(ids)
    assert decode(tokenizer.encode("héllo 🙂 world", add_special_tokens=False).ids) == "héllo 🙂 world"
