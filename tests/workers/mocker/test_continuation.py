"""A migrated request continues on another mocker with the tokens and text a clean run gives (deterministic tokens)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from protocol.kv import tokens_from_bytes, tokens_to_bytes
from protocol.work import Chunk, Final, GenerateRequest, SamplingOptions
from workers.contract import KvEventSink, RequestContext
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine
from workers.textstream import TextStream


@pytest.fixture
async def engine():
    engine = MockerEngine("mocker", MockerConfig(speedup_ratio=float("inf")))
    await engine.start(KvEventSink(asyncio.get_running_loop()))
    yield engine
    await engine.stop()


def _request(engine: MockerEngine, max_tokens: int, stop: list[str] | None = None, **fields) -> GenerateRequest:
    prompt = engine.tokenizer.encode("the continuation test prompt").ids
    return GenerateRequest(request_id="r", model="mocker", token_ids=tokens_to_bytes(prompt),
                           sampling=SamplingOptions(max_tokens=max_tokens, stop=stop or [], seed=7), **fields)


async def _run(engine: MockerEngine, request: GenerateRequest) -> tuple[list[int], str, Final]:
    ids, text = [], []
    async for out in engine.generate(request, RequestContext(request.request_id, "w", None)):
        if isinstance(out, Chunk):
            ids += tokens_from_bytes(out.token_ids).tolist()
            text.append(out.text)
        else:
            return ids, "".join(text) + out.text, out
    raise AssertionError("no Final")


def _continued(request: GenerateRequest, delivered: list[int]) -> GenerateRequest:
    sampling = msgspec.structs.replace(request.sampling, max_tokens=request.sampling.max_tokens - len(delivered))
    return msgspec.structs.replace(request, token_ids=request.token_ids + tokens_to_bytes(delivered),
                                   num_generated=len(delivered), sampling=sampling)


@pytest.mark.parametrize("k", [1, 17, 39])
async def test_continuation_yields_the_remaining_tokens_and_text_of_a_clean_run(engine, k):
    request = _request(engine, 40)
    ids, text, final = await _run(engine, request)
    first_text = engine.tokenizer.decode(ids[:k])
    rest_ids, rest_text, rest_final = await _run(engine, _continued(request, ids[:k]))
    assert rest_ids == ids[k:]
    assert first_text + rest_text == text
    assert rest_final.usage.completion_tokens == 40 - k  # its own work; the frontend adds the delivered ones back
    assert rest_final.usage.prompt_tokens == final.usage.prompt_tokens + k and rest_final.finish_reason == "length"


async def test_continuation_of_a_finished_request_only_sends_the_final(engine):
    request = _request(engine, 12)
    ids, text, _ = await _run(engine, request)
    rest_ids, rest_text, final = await _run(engine, _continued(request, ids))
    assert (rest_ids, rest_text, final.finish_reason, final.usage.completion_tokens) == ([], "", "length", 0)
    assert engine.scheduler.num_steps > 0  # the clean run stepped; the continuation added nothing to the scheduler
    assert engine.scheduler.is_idle


async def test_continuation_keeps_cutting_at_a_stop_string_wherever_the_handover_falls(engine):
    _, text, _ = await _run(engine, _request(engine, 30))
    words = text.split(" ")
    stop = " " + words[5] + " " + words[6]  # spans several tokens
    request = _request(engine, 30, stop=[stop])
    clean_ids, clean_text, clean_final = await _run(engine, request)
    assert clean_text == text[: text.index(stop)] and clean_final.finish_reason == "stop"
    for k in range(len(clean_ids) + 1):
        shown = TextStream(engine.tokenizer.decode, [stop])  # what the client had after k tokens (one push per token)
        seen = "".join(shown.push([i]) for i in clean_ids[:k])
        _, rest_text, rest_final = await _run(engine, _continued(request, clean_ids[:k]))
        assert seen + rest_text == clean_text, k
        assert rest_final.finish_reason == "stop"
