"""One request's denoising state: the canvas, its blocks and schedule, its KV, and what it has streamed.

The engine feeds `input_span()` to the model, hands the current block's logits to `apply_logits()`, and
collects newly committed contiguous tokens with `collect()` after every forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from protocol.kv import MmObject
from protocol.work import Usage
from workers.dllm.batch import Row
from workers.dllm.config import RequestParams, canvas_length
from workers.dllm.model import KV, SpecialIds
from workers.dllm.multimodal import MmSegment, row_embeds
from workers.dllm.sampling import StepResult, StepRule, block_steps, denoise_step, num_transfer_tokens, suppress
from workers.textstream import TextStream


@dataclass
class StepOutput:
    """What one forward pass produced for one request; the last one has `finished` set and `usage`."""

    text: str = ""  # newly releasable text (UTF-8 safe, cut before any stop string)
    token_ids: list[int] = field(default_factory=list)  # newly committed contiguous tokens
    forward_passes: int = 0  # cumulative for this request
    finished: bool = False
    finish_reason: str | None = None  # stop | length | cancelled | error
    usage: Usage | None = None
    error: BaseException | None = None
    logprobs: list[float] = field(default_factory=list)  # per token_ids entry, when the request asked for them
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class StepTrace:
    """One denoising step, for observers (tests, debugging): what was committed and how confidently."""

    block_index: int
    step_in_block: int
    positions: list[int]  # absolute canvas positions committed
    tokens: list[int]
    confidence: list[float]
    max_left_confidence: float  # highest confidence among positions left masked (-inf if none)


class Sequence:
    """Mutable per-request state, touched only by the engine thread."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: RequestParams,
        *,
        attention: str,
        special: SpecialIds,
        decode: Callable[[list[int]], str],
        generator: torch.Generator,
        max_forward_passes: int | None,
        mm_objects: list[MmObject] = (),
        mm_segments: list[MmSegment] = (),
    ):
        self.request_id = request_id
        self.mm_objects = list(mm_objects)  # images, as the router hashes them (prefix-cache keys)
        self.mm_segments = list(mm_segments)  # their embeddings at the placeholder positions
        self.params = params
        self.special = special
        self.attention = attention
        self.prompt_len = len(prompt_ids)
        self.generator = generator
        length = canvas_length(self.prompt_len, params.max_tokens, params.block_length, attention)
        self.tokens = torch.full((length,), special.mask_id, dtype=torch.long)
        self.tokens[: self.prompt_len] = torch.tensor(prompt_ids, dtype=torch.long)
        self.masked = torch.zeros(length, dtype=torch.bool)  # explicit: a prompt may contain the mask id itself
        self.masked[self.prompt_len :] = True
        self.blocks = _block_spans(self.prompt_len, length, params.block_length, attention)
        self.total_masked = length - self.prompt_len
        self.block_index = 0
        self.step_in_block = 0
        self.schedule = self._schedule(0)
        self.kv: KV | None = None  # per layer [kv_heads, kv_len, head_dim]: final KV of positions [0, kv_len)
        self.kv_len = 0
        self.block_hashes: list[int] = []  # chained hashes of the blocks whose KV is final (cache grid)
        self.max_forward_passes = max_forward_passes or 2 * self.total_masked + 8
        self.forward_passes = 0
        self.cached_tokens = 0  # prompt tokens served from the cross-request prefix cache
        self.prompt_tokens_computed = 0  # prompt positions run through the model, all forwards together
        self.last_prompt_tokens_computed = 0  # ... in the latest forward
        self.emitted_upto = self.prompt_len  # next canvas position to stream
        self.completion_ids: list[int] = []
        self.stream = TextStream(decode, params.stop)
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(special.eos_ids))
        self.suppress_ids = _suppressed(special, params.ignore_eos, self.tokens.device)
        self.finish_reason: str | None = None
        self.commits = CommitLogprobs(length, params.logprobs) if params.logprobs is not None else None
        self._bias: torch.Tensor | None = None  # dense logit_bias over the vocabulary, built on first use

    # --- what to run -------------------------------------------------------------------------------

    @property
    def uses_cache(self) -> bool:
        return self.params.use_cache and self.attention == "block_causal"

    @property
    def block(self) -> tuple[int, int]:
        return self.blocks[self.block_index]

    def input_span(self) -> tuple[int, int]:
        """Canvas positions fed this step: pending final tokens + the current block (cached), else a prefix."""
        start, end = self.block
        if self.uses_cache:
            return self.kv_len, end
        return 0, (len(self.tokens) if self.attention == "full" else end)

    def num_logits(self) -> int:
        """Logits needed, counted from the end of the input span back to the current block's start."""
        return self.input_span()[1] - self.block[0]

    def attention_grid(self) -> int:
        """Attention group size in positions; 0 = full attention."""
        return self.params.block_length if self.attention == "block_causal" else 0

    def rows(self) -> list[Row]:
        """This step's forward rows: the sequence, plus CFG's unconditional copy (prompt masked)."""
        start, end = self.input_span()
        self.last_prompt_tokens_computed = max(0, min(end, self.prompt_len) - start)
        self.prompt_tokens_computed += self.last_prompt_tokens_computed
        keep = self.block[0] - start if self.uses_cache else 0
        past = self.kv if self.uses_cache else None
        embeds = row_embeds(self.mm_segments, start, end)
        rows = [Row(self.tokens[start:end], start, self.attention_grid(), past, self.num_logits(), keep, embeds)]
        if self.params.cfg_scale > 0:  # unconditional: prompt masked, so no image either
            rows.append(Row(self.uncond_tokens(start, end), start, self.attention_grid(), None, self.num_logits()))
        return rows

    def uncond_tokens(self, start: int, end: int) -> torch.Tensor:
        """CFG's unconditional input: the prompt replaced by masks."""
        tokens = self.tokens[start:end].clone()
        tokens[: max(0, self.prompt_len - start)] = self.special.mask_id
        return tokens

    # --- applying a forward pass -------------------------------------------------------------------

    def absorb_kv(self, new_kv: KV, num_positions: int) -> None:
        """Append the final KV of positions [kv_len, kv_len + num_positions) ([kv_heads, n, head_dim] per layer)."""
        if num_positions <= 0:
            return
        if self.kv is None:
            self.kv = [(k.clone(), v.clone()) for k, v in new_kv]  # no view into a batch tensor
        else:
            self.kv = [(torch.cat([k0, k], dim=1), torch.cat([v0, v], dim=1)) for (k0, v0), (k, v) in zip(self.kv, new_kv)]
        self.kv_len += num_positions

    def apply_logits(self, block_logits: torch.Tensor) -> StepTrace:
        """One denoising step on the current block ([block_length, vocab] logits); advances finished blocks."""
        start, end = self.block
        masked_idx = self.masked[start:end].nonzero().squeeze(-1)
        if masked_idx.numel() == 0:  # nothing left to denoise; the forward-pass cap ends such a sequence
            return StepTrace(self.block_index, self.step_in_block, [], [], [], -math.inf)
        logits = self._biased(block_logits[masked_idx.to(block_logits.device)].clone())
        logits = suppress(logits, self.suppress_ids.to(block_logits.device))
        rule = StepRule(
            num_transfer=self.schedule[min(self.step_in_block, len(self.schedule) - 1)],
            threshold=self.params.threshold,
            remasking=self.params.remasking,
            temperature=self.params.temperature,
            top_p=self.params.top_p,
        )
        result = denoise_step(logits, rule, self.generator)
        trace = self._commit(start, masked_idx, result)
        if self.commits is not None:
            self.commits.record(torch.tensor(trace.positions, dtype=torch.long), logits[result.positions], result.tokens)
        self.step_in_block += 1
        if not bool(self.masked[start:end].any()) and self.block_index + 1 < len(self.blocks):
            self.block_index += 1
            self.step_in_block = 0
            self.schedule = self._schedule(self.block_index)
        return trace

    def _biased(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.params.logit_bias:
            return logits
        if self._bias is None:
            self._bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
            ids, values = zip(*self.params.logit_bias)
            self._bias[list(ids)] = torch.tensor(values, dtype=logits.dtype, device=logits.device)
        return logits + self._bias

    def _commit(self, start: int, masked_idx: torch.Tensor, result: StepResult) -> StepTrace:
        positions = start + masked_idx[result.positions.cpu()]
        self.tokens[positions] = result.tokens.cpu()
        self.masked[positions] = False
        return StepTrace(
            block_index=self.block_index,
            step_in_block=self.step_in_block,
            positions=positions.tolist(),
            tokens=result.tokens.tolist(),
            confidence=result.confidence.tolist(),
            max_left_confidence=result.max_left_confidence,
        )

    def _schedule(self, block_index: int) -> list[int]:
        start, end = self.blocks[block_index]
        num_masked = int(self.masked[start:end].sum())
        steps = block_steps(num_masked, self.params.steps, self.total_masked)
        return num_transfer_tokens(num_masked, steps)

    # --- streaming -----------------------------------------------------------------------------------

    def collect(self) -> StepOutput:
        """Newly committed contiguous tokens as text; decides stop (EOS/EOT, stop ids/strings) and length."""
        first = self.emitted_upto
        new_ids = self._new_contiguous()
        text = self.stream.push(new_ids) if new_ids else ""
        if self.stream.stopped:
            self.finish_reason = "stop"
        elif self.finish_reason is None and self.forward_passes >= self.max_forward_passes:
            self.finish_reason = "length"  # the forward-pass cap: never loop forever on an untrained model
        if self.finish_reason is not None and not self.stream.stopped:
            text += self.stream.flush()
        out = self.output(text, new_ids)
        if self.commits is not None and new_ids:
            out.logprobs, out.top_ids, out.top_logprobs = self.commits.span(first, first + len(new_ids))
        return out

    def _new_contiguous(self) -> list[int]:
        still_masked = self.masked[self.emitted_upto :].nonzero()
        end = self.emitted_upto + int(still_masked[0]) if len(still_masked) else len(self.tokens)
        new_ids: list[int] = []
        for token in self.tokens[self.emitted_upto : end].tolist():
            if token in self.stop_ids:
                self.finish_reason = "stop"
                break
            new_ids.append(token)
            if len(self.completion_ids) + len(new_ids) >= self.params.max_tokens:
                self.finish_reason = "length"
                break
        self.emitted_upto += len(new_ids)
        self.completion_ids.extend(new_ids)
        return new_ids

    def output(self, text: str = "", token_ids: list[int] | None = None) -> StepOutput:
        finished = self.finish_reason is not None
        return StepOutput(
            text=text,
            token_ids=token_ids or [],
            forward_passes=self.forward_passes,
            finished=finished,
            finish_reason=self.finish_reason,
            usage=self.usage() if finished else None,
        )

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_len,
            completion_tokens=len(self.completion_ids),
            cached_tokens=self.cached_tokens,
            forward_passes=self.forward_passes,
        )


class CommitLogprobs:
    """Per canvas position: the log-probability its token had at the step it was unmasked, and the top-k then.

    The distribution is the model's at that step over the still-masked position: after CFG and logit_bias, with
    mask/pad (and EOS under ignore_eos) suppressed, before temperature and top_p.
    """

    def __init__(self, length: int, num_top: int):
        self.num_top = num_top
        self.logprob = torch.zeros(length, dtype=torch.float64)
        self.top_ids = torch.zeros((length, num_top), dtype=torch.long)
        self.top_logprobs = torch.zeros((length, num_top), dtype=torch.float64)

    def record(self, positions: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """`logits` [k, vocab] of the positions committed this step, `tokens` [k] what they got."""
        log_probs = torch.log_softmax(logits.double(), dim=-1).cpu()
        self.logprob[positions] = log_probs.gather(-1, tokens.cpu()[:, None]).squeeze(-1)
        if self.num_top:
            top = torch.topk(log_probs, min(self.num_top, log_probs.shape[-1]), dim=-1)
            self.top_ids[positions, : top.indices.shape[-1]] = top.indices
            self.top_logprobs[positions, : top.values.shape[-1]] = top.values

    def span(self, start: int, end: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
        return self.logprob[start:end].tolist(), self.top_ids[start:end].tolist(), self.top_logprobs[start:end].tolist()


def _block_spans(prompt_len: int, length: int, block_length: int, attention: str) -> list[tuple[int, int]]:
    """Blocks to denoise: from the prompt's end (full attention, LLaDA) or on the grid from 0 (block-causal)."""
    first = prompt_len if attention == "full" else (prompt_len // block_length) * block_length
    return [(start, min(start + block_length, length)) for start in range(first, length, block_length)]


def _suppressed(special: SpecialIds, ignore_eos: bool, device: torch.device) -> torch.Tensor:
    ids = set(special.suppress_ids) | (set(special.eos_ids) if ignore_eos else set())
    return torch.tensor(sorted(ids), dtype=torch.long, device=device)
