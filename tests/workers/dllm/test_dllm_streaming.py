"""Streaming per forward pass, stop strings, max_tokens, UTF-8-safe detokenization, batching, the engine thread,
and the other decoding paths (LLaDA-1 full attention, masked LM, CFG, random remasking, temperature)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from protocol.errors import InvalidRequest
from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.model import SpecialIds


def collect(engine, prompt, sampling, diffusion=None, request_id="r"):
    return list(engine.generate(request_id, prompt, sampling, diffusion or DiffusionOptions()))


def text_of(outs) -> str:
    return "".join(out.text for out in outs)


def tokens_of(outs) -> list[int]:
    return [t for out in outs for t in out.token_ids]


def test_stream_emits_several_chunks_per_forward_and_is_reproducible(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    options = SamplingOptions(max_tokens=32, ignore_eos=True, seed=7)
    outs = collect(engine, prompt_ids, options)
    chunks = [out.text for out in outs if out.text]
    assert len(chunks) >= 3
    assert len(outs) == outs[-1].usage.forward_passes  # one output per forward pass
    assert [out.forward_passes for out in outs] == list(range(1, len(outs) + 1))
    assert text_of(outs) == engine._decode(tokens_of(outs))
    assert text_of(collect(engine, prompt_ids, options)) == text_of(outs)


def test_max_tokens_off_the_block_grid_is_honoured(make_engine, tiny_dir, prompt_ids):
    outs = collect(make_engine(tiny_dir), prompt_ids, SamplingOptions(max_tokens=13, ignore_eos=True))
    assert outs[-1].usage.completion_tokens == 13 == len(tokens_of(outs))
    assert outs[-1].finish_reason == "length"


def test_stop_string_cuts_the_text_and_finishes_with_stop(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    options = SamplingOptions(max_tokens=32, ignore_eos=True, seed=3)
    full = text_of(collect(engine, prompt_ids, options))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    outs = collect(engine, prompt_ids, SamplingOptions(max_tokens=32, ignore_eos=True, seed=3, stop=[stop]))
    assert text_of(outs) == full[: full.index(stop)]
    assert outs[-1].finish_reason == "stop"


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level characters
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {"[MASK]": 256, "[PAD]": 257, "<eos>": 258}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", pad_token="[PAD]", eos_token="<eos>")


def test_incremental_detokenization_never_cuts_a_multibyte_character(stub_engine):
    tokenizer = byte_level_tokenizer()
    target = tokenizer.encode("héllo 日本語 ✓!")  # one token per UTF-8 byte
    assert len(target) > len("héllo 日本語 ✓!")

    def spell(positions):  # position 3+i is the i-th byte, earlier positions more confident: left to right
        logits = torch.zeros(*positions.shape, len(tokenizer))
        index = (positions - 3).clamp(0, len(target) - 1)
        logits.scatter_(-1, torch.tensor(target)[index][..., None], (12.0 - 0.1 * index.float())[..., None])
        return logits

    special = SpecialIds(mask_id=256, pad_id=257, eos_ids=(258,), suppress_ids=(256, 257))
    engine = stub_engine(spell, tokenizer_override=tokenizer, special_override=special)
    outs = collect(engine, [0, 1, 2], SamplingOptions(max_tokens=len(target)))
    assert all("\ufffd" not in out.text for out in outs)
    assert text_of(outs) == "héllo 日本語 ✓!"
    assert any(out.token_ids and not out.text for out in outs)  # a cut character was held back


def test_concurrent_requests_share_one_forward_per_step_and_match_solo_runs(make_engine, tiny_dir, prompt_ids):
    other = prompt_ids[:-3] + [40, 41, 42]
    options = SamplingOptions(max_tokens=16, ignore_eos=True, seed=1)
    solo = make_engine(tiny_dir, max_cache_blocks=0)
    expected = [tokens_of(collect(solo, p, options)) for p in (prompt_ids, other)]
    engine = make_engine(tiny_dir, max_cache_blocks=0)
    outputs: dict[str, list] = {"a": [], "b": []}
    for name, prompt in zip("ab", (prompt_ids, other)):
        engine.submit(name, prompt, options, on_output=outputs[name].append)
    while engine.step():
        pass
    assert [tokens_of(outputs[name]) for name in "ab"] == expected
    assert engine.denoiser.num_forwards == max(outputs[n][-1].usage.forward_passes for n in "ab")


async def test_engine_thread_serves_concurrent_async_streams_and_cancels(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    options = SamplingOptions(max_tokens=16, ignore_eos=True, seed=2)
    expected = tokens_of(collect(make_engine(tiny_dir), prompt_ids, options))
    engine.start()
    try:

        async def stream(cancel_after: int | None):
            outs = []
            async for out in engine.generate_async("x", prompt_ids, options, is_cancelled=lambda: cancel_after is not None and len(outs) >= cancel_after):
                outs.append(out)
            return outs

        full, cancelled = await asyncio.gather(stream(None), stream(2))
    finally:
        engine.stop()
    assert tokens_of(full) == expected
    assert cancelled[-1].finish_reason == "cancelled" and cancelled[-1].usage.forward_passes <= 3


@pytest.mark.parametrize("model", ["full_dir", "bert_dir"])
def test_full_attention_models_run_llada_blocks_without_cache(request, make_engine, prompt_ids, model):
    engine = make_engine(request.getfixturevalue(model))
    assert engine.attention == "full" and not engine.denoiser.supports_cache
    outs = collect(engine, prompt_ids, SamplingOptions(max_tokens=16, ignore_eos=True), DiffusionOptions(steps=4, block_length=8))
    assert outs[-1].usage.forward_passes == 4 and outs[-1].usage.completion_tokens == 16
    with pytest.raises(InvalidRequest) as info:
        engine.submit("u", prompt_ids, SamplingOptions(max_tokens=8), DiffusionOptions(use_cache=True), on_output=print)
    assert info.value.param == "$.nvext.use_cache"


def test_cfg_runs_cond_and_uncond_in_one_forward(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    outs = collect(engine, prompt_ids, SamplingOptions(max_tokens=16, ignore_eos=True), DiffusionOptions(cfg_scale=1.0, steps=4))
    assert outs[-1].usage.forward_passes == engine.denoiser.num_forwards <= 4 + 2  # steps, rounded up per block
    assert outs[-1].usage.completion_tokens == 16


def test_temperature_sampling_follows_the_seed_and_random_remasking_runs(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir, max_cache_blocks=0)

    def sample(seed: int, remasking: str = "low_confidence"):
        options = SamplingOptions(max_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
        return tokens_of(collect(engine, prompt_ids, options, DiffusionOptions(remasking=remasking, steps=8)))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert len(sample(5, "random")) == 16


def test_requests_beyond_max_batch_wait_for_a_free_slot(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir, max_batch=1, max_cache_blocks=0)
    outputs: dict[str, list] = {"a": [], "b": []}
    for name in "ab":
        engine.submit(name, prompt_ids, SamplingOptions(max_tokens=8, ignore_eos=True), on_output=outputs[name].append)
    engine.step()
    assert engine.num_active == 1 and outputs["a"] and not outputs["b"]
    assert engine.load_report()["active_prefill_tokens"] == len(prompt_ids)  # b waits with its whole prompt
    while engine.step():
        pass
    assert outputs["a"][-1].finished and outputs["b"][-1].finished
    assert engine.denoiser.num_forwards == outputs["a"][-1].usage.forward_passes + outputs["b"][-1].usage.forward_passes
