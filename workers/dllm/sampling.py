"""Pure sampling core of masked diffusion: one denoising step over one block's logits (LLaDA, Fast-dLLM).

No model, no I/O: logits in, (positions, tokens) to commit out. Committed tokens are never re-masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """LLaDA's schedule: spread `num_masked` commits evenly over `steps`, the first `num_masked % steps` get +1."""
    if num_masked <= 0:
        return []
    steps = max(1, min(steps, num_masked))  # never a step that commits nothing
    base, extra = divmod(num_masked, steps)
    return [base + 1 if i < extra else base for i in range(steps)]


def block_steps(num_masked: int, steps: int, total_masked: int) -> int:
    """Steps a block gets: its share of the request's `steps`, rounded up (LLaDA: steps // num_blocks)."""
    if num_masked <= 0:
        return 0
    return max(1, min(num_masked, math.ceil(steps * num_masked / max(1, total_masked))))


@dataclass(frozen=True)
class StepRule:
    """How one step picks which masked positions to commit."""

    num_transfer: int  # fixed-step decoding: commit exactly this many (clamped to the masked count)
    threshold: float | None = None  # Fast-dLLM: commit the top-1 plus every position with confidence >= threshold
    remasking: str = "low_confidence"  # or "random": confidence is uniform noise
    temperature: float = 0.0  # Gumbel noise scale; 0 = argmax
    top_p: float = 1.0


@dataclass(frozen=True)
class StepResult:
    positions: torch.Tensor  # long [k], indices into the block's masked positions' logits rows
    tokens: torch.Tensor  # long [k]
    confidence: torch.Tensor  # float64 [k], the confidence each commit was ranked by
    max_left_confidence: float  # highest confidence among positions left masked (-inf if none)


def denoise_step(logits: torch.Tensor, rule: StepRule, generator: torch.Generator | None) -> StepResult:
    """Pick commits among masked positions; `logits` is [num_masked, vocab], suppressed ids already -inf."""
    logits64 = logits.double()  # float64: low-precision Gumbel noise hurts quality (arXiv:2409.02908)
    if rule.top_p < 1.0:
        logits64 = top_p_filter(logits64, rule.top_p)
    tokens = sample_tokens(logits64, rule.temperature, generator)
    if rule.remasking == "random":
        confidence = torch.rand(tokens.shape, generator=generator, dtype=torch.float64, device=tokens.device)
    else:
        confidence = torch.softmax(logits64, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    if rule.threshold is None:
        positions = select_top_k(confidence, rule.num_transfer)
    else:
        positions = select_above_threshold(confidence, rule.threshold)
    left = confidence.clone()
    left[positions] = -math.inf
    return StepResult(
        positions=positions,
        tokens=tokens[positions],
        confidence=confidence[positions],
        max_left_confidence=float(left.max()),
    )


def sample_tokens(logits64: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """argmax(logits + T * Gumbel), i.e. a draw from softmax(logits / T); LLaDA's exp(l) / (-log u)^T in log space."""
    if temperature <= 0.0:
        return logits64.argmax(dim=-1)
    uniform = torch.rand(logits64.shape, generator=generator, dtype=torch.float64, device=logits64.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits64 + temperature * gumbel).argmax(dim=-1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens per row whose probability mass reaches top_p (the top-1 always stays)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1) - torch.softmax(sorted_logits, dim=-1)
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def select_top_k(confidence: torch.Tensor, k: int) -> torch.Tensor:
    """LLaDA low-confidence remasking: commit the k most confident positions."""
    k = max(1, min(k, confidence.numel()))
    return torch.topk(confidence, k).indices


def select_above_threshold(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM: the most confident position always, plus every position at or above the threshold."""
    best = confidence.argmax()
    above = (confidence >= threshold).nonzero().squeeze(-1)
    if bool((above == best).any()):
        return above
    return torch.cat([best.view(1), above])


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """LLaDA's CFG: uncond + (scale + 1) * (cond - uncond)."""
    return uncond + (scale + 1.0) * (cond - uncond)


def suppress(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Set the logits of `token_ids` to -inf in place (mask, pad, ...): an untrained model may predict [MASK]."""
    if token_ids.numel():
        logits[..., token_ids] = -math.inf
    return logits
