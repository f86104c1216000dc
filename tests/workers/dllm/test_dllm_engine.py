"""Engine behaviour on real tiny models loaded with from_pretrained: schedules, threshold decoding, block KV
cache exactness, the cross-request prefix cache, cancellation and the forward-pass cap."""

from __future__ import annotations

import math

import numpy as np
import torch

from protocol.events import KvStored
from protocol.kv import sequence_block_hashes
from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.sampling import block_steps, num_transfer_tokens


def run(engine, prompt, max_tokens=32, sampling=None, **diffusion):
    traces = []
    sampling = sampling or SamplingOptions(max_tokens=max_tokens, ignore_eos=True, seed=0)
    outs = list(engine.generate("r", prompt, sampling, DiffusionOptions(**diffusion), observer=traces.append))
    return outs, traces


def tokens_of(outs) -> list[int]:
    return [t for out in outs for t in out.token_ids]


def test_fixed_step_llada_commits_exactly_the_scheduled_number_per_step(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    outs, traces = run(engine, prompt_ids, max_tokens=32, steps=8, use_cache=False)
    seq_blocks = {}
    for trace in traces:
        seq_blocks.setdefault(trace.block_index, []).append(len(trace.positions))
    prompt_len = len(prompt_ids)
    total = math.ceil((prompt_len + 32) / 8) * 8 - prompt_len
    for index, counts in seq_blocks.items():
        start = (prompt_len // 8 + index) * 8
        num_masked = min(start + 8, prompt_len + total) - max(start, prompt_len)
        assert counts == num_transfer_tokens(num_masked, block_steps(num_masked, 8, total))
    assert outs[-1].usage.forward_passes == len(traces)
    assert outs[-1].usage.completion_tokens == 32 and outs[-1].finish_reason == "length"


def test_steps_equal_to_gen_length_commit_one_token_per_forward(make_engine, tiny_dir, prompt_ids):
    outs, traces = run(make_engine(tiny_dir), prompt_ids, max_tokens=16)
    assert {len(t.positions) for t in traces} == {1}
    assert outs[-1].usage.forward_passes == len(traces)


def test_threshold_decoding_commits_at_least_one_and_all_above_threshold(make_engine, peaked_dir, prompt_ids):
    outs, traces = run(make_engine(peaked_dir), prompt_ids, max_tokens=64, threshold=0.9)
    assert all(len(t.positions) >= 1 for t in traces)
    assert all(t.max_left_confidence < 0.9 for t in traces)  # nothing at/above the threshold was left masked
    assert any(len(t.positions) > 1 for t in traces)  # peaked logits: parallel commits happen
    assert outs[-1].usage.forward_passes < 64


def test_cached_and_uncached_block_decoding_agree_at_every_step(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir, max_cache_blocks=0)
    _, cached = run(engine, prompt_ids, max_tokens=40, use_cache=True)
    _, uncached = run(engine, prompt_ids, max_tokens=40, use_cache=False)
    assert len(cached) == len(uncached)
    for a, b in zip(cached, uncached):
        assert (a.block_index, a.positions, a.tokens) == (b.block_index, b.positions, b.tokens)
        assert np.allclose(a.confidence, b.confidence, rtol=1e-4, atol=1e-6)


def test_block_kv_cache_logits_match_a_full_forward(make_engine, tiny_dir):
    engine = make_engine(tiny_dir)
    denoiser, grid = engine.denoiser, 8
    x = torch.randint(10, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    groups = torch.arange(40) // grid
    mask = (groups[None, :] <= groups[:, None])[None, None]
    full, _ = denoiser.forward(x, torch.arange(40)[None], mask, None, 40, False)
    _, prefix = denoiser.forward(x[:, :32], torch.arange(32)[None], mask[..., :32, :32], None, 8, True)
    cached, _ = denoiser.forward(x[:, 32:], torch.arange(32, 40)[None], mask[..., 32:, :], prefix, 8, False)
    assert torch.allclose(cached, full[:, 32:], atol=1e-5)


def test_second_request_sharing_a_prefix_reports_cached_tokens_and_prefills_less(make_engine, tiny_dir, prompt_ids):
    events = []
    engine = make_engine(tiny_dir)
    engine.set_kv_sink(events.append)
    first, _ = run(engine, prompt_ids, max_tokens=16)
    computed_first = engine.num_prompt_tokens_computed
    second, _ = run(engine, prompt_ids, max_tokens=16)
    computed_second = engine.num_prompt_tokens_computed - computed_first
    extended, _ = run(engine, prompt_ids + [30, 31, 32, 33, 34, 35, 36, 37, 38], max_tokens=16)
    full_blocks = len(prompt_ids) // 8 * 8
    assert first[-1].usage.cached_tokens == 0
    assert second[-1].usage.cached_tokens == full_blocks == extended[-1].usage.cached_tokens
    assert computed_second <= computed_first - full_blocks  # the cached blocks were not run again
    # the published hashes are the router's hashes of the prompt
    _, router_hashes = sequence_block_hashes(np.asarray(prompt_ids), 8)
    stored = [b.block_hash for e in events if isinstance(e, KvStored) for b in e.blocks]
    assert stored[: len(router_hashes)] == router_hashes


def test_prefix_cache_hit_is_exact(make_engine, tiny_dir, prompt_ids):
    warm = make_engine(tiny_dir)
    run(warm, prompt_ids, max_tokens=16)
    hit, _ = run(warm, prompt_ids, max_tokens=24)
    cold, _ = run(make_engine(tiny_dir, max_cache_blocks=0), prompt_ids, max_tokens=24)
    assert hit[-1].usage.cached_tokens > 0
    assert tokens_of(hit) == tokens_of(cold)


def test_finished_generated_blocks_serve_a_follow_up_turn(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    outs, _ = run(engine, prompt_ids, max_tokens=32)
    follow_up = prompt_ids + tokens_of(outs) + [5, 6]
    again, _ = run(engine, follow_up, max_tokens=8)
    assert again[-1].usage.cached_tokens > len(prompt_ids) // 8 * 8  # reaches into the generated answer


def test_cancellation_stops_within_one_step_and_frees_the_slot(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    outputs, cancelled = [], []
    engine.submit("c", prompt_ids, SamplingOptions(max_tokens=32), on_output=outputs.append, is_cancelled=lambda: bool(cancelled))
    engine.step()
    engine.step()
    cancelled.append(True)
    forwards = engine.denoiser.num_forwards
    engine.step()
    assert outputs[-1].finished and outputs[-1].finish_reason == "cancelled"
    assert outputs[-1].usage.forward_passes == 2
    assert engine.denoiser.num_forwards == forwards  # no forward ran for a cancelled request
    assert engine.num_active == 0


def test_forward_pass_cap_holds_with_a_model_that_predicts_the_mask(stub_engine):
    def predicts_mask(positions):
        logits = torch.zeros(*positions.shape, 154)
        logits[..., 4] = 50.0  # [MASK] wins everywhere; the engine must never commit it
        return logits

    engine = stub_engine(predicts_mask, max_forward_passes=3)
    outs = list(engine.generate("m", [2, 5, 6], SamplingOptions(max_tokens=32), DiffusionOptions(threshold=0.9)))
    assert outs[-1].usage.forward_passes == 3 and outs[-1].finish_reason == "length"
    uncapped = stub_engine(predicts_mask)
    outs = list(uncapped.generate("m", [2, 5, 6], SamplingOptions(max_tokens=32), DiffusionOptions(threshold=0.9)))
    assert outs[-1].usage.forward_passes <= 32  # >= 1 real token per forward
    assert 4 not in tokens_of(outs)


def test_stops_at_eos_and_reports_usage(stub_engine):
    def eos_at_five(positions):
        logits = torch.zeros(*positions.shape, 154)
        logits[..., 40] = 10.0
        logits[..., 8] = torch.where(positions >= 3 + 5, 20.0, -20.0)  # <|endoftext|> from the 6th answer token
        return logits

    outs = list(stub_engine(eos_at_five).generate("e", [2, 5, 6], SamplingOptions(max_tokens=32), DiffusionOptions(threshold=0.5)))
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].usage.completion_tokens == 5 and tokens_of(outs) == [40] * 5
    assert outs[-1].usage.prompt_tokens == 3


def test_padding_only_masks_for_remote_code_models_disable_the_kv_cache(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir, mask_format="2d")  # what LLaDA-8B's own modeling code takes
    denoiser = engine.denoiser
    assert denoiser.mask_format == "2d" and not denoiser.supports_cache
    mask = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    mask[1, :, :, :2] = False  # row 1 is left-padded by two positions
    assert denoiser._mask(mask).tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert denoiser._mask(torch.ones(1, 1, 3, 3, dtype=torch.bool)) is None
    outs, _ = run(engine, prompt_ids, max_tokens=8)
    assert outs[-1].usage.completion_tokens == 8 and outs[-1].usage.cached_tokens == 0
