"""The pure sampling core: LLaDA's schedule, low-confidence / threshold selection, Gumbel noise, CFG, top-p."""

from __future__ import annotations

import math

import pytest
import torch

from workers.dllm.sampling import (
    StepRule,
    block_steps,
    classifier_free_guidance,
    denoise_step,
    num_transfer_tokens,
    sample_tokens,
    select_above_threshold,
    select_top_k,
    suppress,
    top_p_filter,
)


@pytest.mark.parametrize(("num_masked", "steps", "expected"), [(32, 32, [1] * 32), (32, 8, [4] * 8), (10, 4, [3, 3, 2, 2]), (3, 8, [1, 1, 1])])
def test_schedule_spreads_masked_tokens_evenly_first_steps_take_the_remainder(num_masked, steps, expected):
    assert num_transfer_tokens(num_masked, steps) == expected
    assert sum(num_transfer_tokens(num_masked, steps)) == num_masked


def test_block_steps_is_the_blocks_share_of_the_request_steps():
    assert block_steps(32, 128, 128) == 32  # 4 blocks, steps = gen_length: one token per step
    assert block_steps(32, 32, 128) == 8  # LLaDA steps // num_blocks
    assert block_steps(12, 64, 76) == 11  # a short first block gets its proportional share, rounded up
    assert block_steps(0, 64, 64) == 0


def test_threshold_selection_keeps_top1_and_everything_at_or_above_threshold():
    confidence = torch.tensor([0.2, 0.95, 0.5, 0.9, 0.91], dtype=torch.float64)
    assert sorted(select_above_threshold(confidence, 0.9).tolist()) == [1, 3, 4]
    assert select_above_threshold(torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64), 0.9).tolist() == [1]


def test_top_k_selection_commits_exactly_k_most_confident():
    confidence = torch.tensor([0.2, 0.95, 0.5, 0.9], dtype=torch.float64)
    assert sorted(select_top_k(confidence, 2).tolist()) == [1, 3]
    assert len(select_top_k(confidence, 10)) == 4


def test_zero_temperature_is_argmax_and_gumbel_draws_follow_softmax():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)).repeat(4000, 1)
    assert sample_tokens(logits, 0.0, None).unique().tolist() == [0]
    draws = sample_tokens(logits, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.03)


def test_gumbel_noise_is_float64_and_survives_huge_logits():
    logits = torch.tensor([[900.0, 899.0, -5.0]], dtype=torch.float64)  # exp() would overflow float64
    draws = sample_tokens(logits.repeat(2000, 1), 1.0, torch.Generator().manual_seed(1))
    assert set(draws.tolist()) <= {0, 1} and 0 < int((draws == 1).sum()) < 1000


def test_denoise_step_fixed_commits_exactly_num_transfer_and_reports_what_it_left():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    result = denoise_step(logits, StepRule(num_transfer=5), None)
    assert len(result.positions) == 5
    assert result.max_left_confidence <= float(result.confidence.min())


def test_denoise_step_threshold_commits_all_confident_positions():
    logits = torch.full((6, 10), -10.0)
    logits[[0, 2, 5], 3] = 10.0  # three confident rows; the others are uniform
    result = denoise_step(logits, StepRule(num_transfer=1, threshold=0.9), None)
    assert sorted(result.positions.tolist()) == [0, 2, 5]
    assert result.tokens.tolist() == [3, 3, 3]
    assert result.max_left_confidence < 0.9


def test_random_remasking_uses_the_generator():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    rule = StepRule(num_transfer=4, remasking="random")
    first = denoise_step(logits, rule, torch.Generator().manual_seed(3)).positions.tolist()
    again = denoise_step(logits, rule, torch.Generator().manual_seed(3)).positions.tolist()
    assert first == again and len(first) == 4


def test_cfg_and_suppression_and_top_p():
    cond, uncond = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert classifier_free_guidance(cond, uncond, 1.0).tolist() == [3.0, -1.0]
    logits = suppress(torch.zeros(2, 5), torch.tensor([1, 4]))
    assert torch.isinf(logits[:, [1, 4]]).all() and not torch.isinf(logits[:, [0, 2, 3]]).any()
    filtered = top_p_filter(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)), 0.7)
    assert [math.isinf(v) for v in filtered[0].tolist()] == [False, False, True, True]
