"""The dLLM worker adapter: its cards and request mapping, and the whole mesh driven by the official openai client."""

from __future__ import annotations

import argparse

import openai
import pytest

from protocol.errors import InvalidRequest
from protocol.kv import tokens_from_bytes, tokens_to_bytes
from protocol.work import Chunk, DiffusionOptions, Final, GenerateRequest, SamplingOptions
from workers.contract import RequestContext
from workers.dllm.engine import DllmEngine
from workers.dllm.config import DllmConfig
from workers.dllm.worker import DllmWorker, add_arguments, config_from_args


@pytest.fixture
def worker(tiny_dir):
    engine = DllmEngine.from_pretrained(DllmConfig(model=str(tiny_dir), served_model_name="tiny-dllm"))
    yield DllmWorker(engine)
    engine.stop()


def request(prompt, stream=True, **sampling) -> GenerateRequest:
    options = SamplingOptions(**{"max_tokens": 24, "seed": 5, "ignore_eos": True} | sampling)
    return GenerateRequest(request_id="w", model="tiny-dllm", token_ids=tokens_to_bytes(prompt), sampling=options, stream=stream)


async def replies(worker, req):
    return [out async for out in worker.generate(req, RequestContext(req.request_id, "w1", None))]


def test_cards_describe_the_model_for_the_frontend_and_router(worker):
    card = worker.model_card()
    assert card.kinds == ["chat", "completions"] and card.component == "dllm"
    assert card.block_size == 8 and card.context_length == 512
    assert "<|start_header_id|>" in card.chat_template and card.eos_token == "<|endoftext|>"
    assert worker.model_files()["tokenizer.json"].startswith(b"{")
    fields = worker.worker_card()
    assert fields["publishes_kv_events"] and fields["block_size"] == 8 and fields["kv_total_blocks"] > 0
    assert set(worker.load_report()) == {"active_prefill_tokens", "active_decode_blocks", "kv_used_blocks", "kv_total_blocks"}


async def test_streamed_chunks_concatenate_to_the_non_streamed_final(worker, prompt_ids):
    streamed = await replies(worker, request(prompt_ids, stream=True))
    whole = await replies(worker, request(prompt_ids, stream=False))
    chunks = [r for r in streamed if isinstance(r, Chunk)]
    assert len(chunks) >= 2 and isinstance(streamed[-1], Final)
    assert [r for r in whole if isinstance(r, Chunk)] == []
    assert "".join(c.text for c in chunks) + streamed[-1].text == whole[-1].text
    ids = [t for r in streamed for t in tokens_from_bytes(r.token_ids).tolist()]
    assert ids == tokens_from_bytes(whole[-1].token_ids).tolist()
    usage = whole[-1].usage
    assert usage.completion_tokens == 24 and usage.forward_passes > 0 and usage.cached_tokens > 0  # second run hit


async def test_invalid_diffusion_parameter_raises_with_its_path(worker, prompt_ids):
    req = GenerateRequest(request_id="bad", model="tiny-dllm", token_ids=tokens_to_bytes(prompt_ids),
                          sampling=SamplingOptions(max_tokens=24), diffusion=DiffusionOptions(block_length=5))  # fmt: skip
    with pytest.raises(InvalidRequest) as info:
        await replies(worker, req)
    assert info.value.param == "$.nvext.block_length"


def test_cli_flags_map_onto_the_engine_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path), "--threshold", "0.9", "--eos-ids", "7,8", "--max-batch", "4",
                              "--vision-encoder", "enc", "--image-tokens", "4"])
    config = config_from_args(args, env={"DIFFMESH_DLLM_MAX_QUEUE": "3", "DIFFMESH_DLLM_IMAGE_TOKEN_ID": "5"})
    assert (config.default_threshold, config.eos_ids, config.max_batch, config.max_queue) == (0.9, (7, 8), 4, 3)
    assert (config.vision_encoder, config.num_image_tokens, config.image_token_id) == ("enc", 4, 5)


@pytest.fixture
async def dllm_mesh(mesh, worker):
    await mesh.start_frontend()
    await mesh.add_worker(worker)
    await mesh.wait_models("tiny-dllm", 1)
    return openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)


CHAT = [{"role": "user", "content": "hello world what is the red cat"}]
NVEXT = {"nvext": {"ignore_eos": True}}


async def test_openai_streamed_chat_equals_the_non_streamed_answer(dllm_mesh):
    client = dllm_mesh
    stream = await client.chat.completions.create(model="tiny-dllm", messages=CHAT, max_tokens=32, seed=11, stream=True, extra_body=NVEXT)
    deltas = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    whole = await client.chat.completions.create(model="tiny-dllm", messages=CHAT, max_tokens=32, seed=11, extra_body=NVEXT)
    assert len(deltas) >= 2
    assert "".join(deltas) == whole.choices[0].message.content
    assert whole.usage.completion_tokens == 32 and whole.choices[0].finish_reason == "length"


async def test_openai_completions_stop_strings_and_max_tokens(dllm_mesh):
    client = dllm_mesh
    full = await client.completions.create(model="tiny-dllm", prompt="the red cat", max_tokens=24, seed=2, extra_body=NVEXT)
    text = full.choices[0].text
    assert full.usage.completion_tokens == 24
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = await client.completions.create(model="tiny-dllm", prompt="the red cat", max_tokens=24, seed=2, stop=[stop], extra_body=NVEXT)
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    short = await client.completions.create(model="tiny-dllm", prompt="the red cat", max_tokens=5, extra_body=NVEXT)
    assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("nvext", "param"), [({"steps": 0}, "steps"), ({"block_length": 5}, "block_length"), ({"threshold": 1.5}, "threshold")])
async def test_openai_invalid_diffusion_parameter_is_a_400(dllm_mesh, nvext, param):
    with pytest.raises(openai.BadRequestError) as info:
        await dllm_mesh.chat.completions.create(model="tiny-dllm", messages=CHAT, max_tokens=16, extra_body={"nvext": nvext})
    assert param in str(info.value)


async def test_a_continuation_generates_only_what_is_left_after_the_delivered_tokens(worker, prompt_ids):
    import msgspec

    clean = await replies(worker, request(prompt_ids, max_tokens=24))
    ids = [t for r in clean for t in tokens_from_bytes(r.token_ids).tolist()]
    delivered = ids[:10]
    sampling = SamplingOptions(max_tokens=14, seed=5, ignore_eos=True)
    resumed = msgspec.structs.replace(request(prompt_ids), token_ids=tokens_to_bytes(prompt_ids + delivered),
                                      num_generated=10, sampling=sampling)
    rest = await replies(worker, resumed)
    usage = rest[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt_ids) + 10, 14)  # its own work only
    done = msgspec.structs.replace(resumed, token_ids=tokens_to_bytes(prompt_ids + ids), num_generated=24,
                                   sampling=SamplingOptions(max_tokens=0))
    finished = await replies(worker, done)  # the last attempt had generated everything; only its Final was lost
    assert len(finished) == 1 and finished[0].finish_reason == "length" and finished[0].usage.forward_passes == 0


def test_a_continuation_keeps_the_steps_per_token_and_drops_a_block_length_that_no_longer_divides():
    from workers.dllm.worker import continued_options

    req = GenerateRequest(request_id="c", model="m", token_ids=tokens_to_bytes([1, 2, 3, 4, 5, 6, 7, 8]), num_generated=5,
                          sampling=SamplingOptions(max_tokens=27), diffusion=DiffusionOptions(steps=32, block_length=8))
    opts = continued_options(req)
    assert (opts.steps, opts.block_length) == (27, None)  # 32 steps for 32 tokens -> 27 for the 27 left
    assert continued_options(GenerateRequest(request_id="c", model="m", token_ids=b"", sampling=SamplingOptions(max_tokens=4),
                                             diffusion=req.diffusion)) is req.diffusion  # not a continuation: as sent
