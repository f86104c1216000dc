"""Simulated engine core in virtual time: continuous batching over a real block cache, Dynamo's timing model.

Pure (no NATS, no asyncio): the worker shell and the replay simulator both drive `MockerScheduler.step()`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash

from protocol.events import KvEventData
from protocol.kv import extend_chain, local_block_hashes
from workers.mocker.distribution import TokenDistribution
from workers.mocker.kvcache import BlockCache


@dataclass(frozen=True)
class MockerConfig:
    block_size: int = 64  # tokens per KV block
    num_blocks: int = 16384  # KV capacity in blocks
    max_num_seqs: int = 256  # sequences decoding at once
    max_batched_tokens: int = 8192  # tokens per step (prompt chunks + one per decoding sequence when chunked)
    chunked_prefill: bool = False  # split long prompts over steps of max_batched_tokens, decodes first (vLLM)
    speedup_ratio: float = 1.0  # simulated time is divided by this; inf = no simulated time
    context_length: int = 32768

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_batched_tokens", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"mocker {name}={getattr(self, name)} must be >= 1")
        if not self.speedup_ratio > 0:
            raise ValueError(f"mocker speedup_ratio={self.speedup_ratio} must be > 0")


def prefill_ms(new_tokens: int) -> float:
    """Dynamo mocker prefill polynomial; a fully cached prompt costs nothing."""
    if new_tokens <= 0:
        return 0.0
    t = float(new_tokens)
    return 4.209989e-07 * t * t + 1.518344e-02 * t + 16.50142


def decode_ms(kv_usage: float) -> float:
    """Dynamo mocker decode step time from the fraction of KV tokens in use."""
    u = kv_usage
    return max(1.0, -25.74 * u * u + 54.01 * u + 5.74)


@dataclass
class MockSequence:
    request_id: str
    prompt_len: int
    seq_hashes: list[int]  # chained hashes of the prompt's full blocks
    local_hashes: list[int]
    max_tokens: int
    token_seed: int = 0  # generated tokens are a pure function of (token_seed, index, temperature, top_p)
    temperature: float = 0.0  # workers/mocker/distribution.py: 0 takes the top rank
    top_p: float = 1.0
    first_index: int = 0  # index of the first token to generate (a continuation after a migration starts later)
    prompt_tokens: np.ndarray | None = None  # kept to cache the blocks it generates; None in replay
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    num_computed: int = 0  # prompt tokens in the KV cache so far (cached + prefilled); chunked prefill only
    prefilled: bool = False


@dataclass
class StepResult:
    duration_ms: float  # simulated time of this step, before the speedup ratio
    tokens: list[tuple[str, int]]  # (request_id, token id) produced at the end of the step
    admitted: list[tuple[str, int]]  # (request_id, cached prompt tokens) prefilled in this step
    finished: list[str]


class MockerScheduler:
    """vLLM-shaped scheduler: admit waiting prompts (prefill) and decode one token per running sequence per step."""

    def __init__(self, config: MockerConfig, alphabet: Sequence[int] = (1,), on_event: Callable[[KvEventData], None] | None = None):
        self.config = config
        self.distribution = TokenDistribution(alphabet)
        self.cache = BlockCache(config.num_blocks, on_event)
        self.waiting: deque[MockSequence] = deque()
        self.running: dict[str, MockSequence] = {}
        self.num_steps = 0

    def add(self, seq: MockSequence) -> None:
        if len(seq.seq_hashes) > self.config.num_blocks:
            raise ValueError(f"prompt needs {len(seq.seq_hashes)} blocks, the cache has {self.config.num_blocks}")
        self.waiting.append(seq)

    def cancel(self, request_id: str) -> bool:
        seq = self.running.pop(request_id, None)
        if seq is not None:
            self.cache.release(seq.seq_hashes)
            return True
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return True
        return False

    @property
    def is_idle(self) -> bool:
        return not self.waiting and not self.running

    def kv_usage(self) -> float:
        active = sum(s.prompt_len + len(s.generated) for s in self.running.values())
        return min(1.0, active / (self.config.num_blocks * self.config.block_size))

    def active_prefill_tokens(self) -> int:
        partial = sum(s.prompt_len - s.num_computed for s in self.running.values() if not s.prefilled)
        return partial + sum(s.prompt_len for s in self.waiting)

    def step(self) -> StepResult | None:
        """Advance one engine iteration; None when there is nothing to do."""
        if self.is_idle:
            return None
        decoding = [s for s in self.running.values() if s.prefilled]
        if self.config.chunked_prefill:
            admitted, new_tokens = self._chunk(self.config.max_batched_tokens - len(decoding))
        else:
            admitted, new_tokens = self._admit()
        duration = prefill_ms(new_tokens)
        if decoding:
            duration += decode_ms(self.kv_usage())
        tokens = [(s.request_id, self._next_token(s)) for s in decoding + admitted]
        for s in admitted:
            s.prefilled = True
        finished = [s.request_id for s in decoding + admitted if len(s.generated) >= s.max_tokens]
        for request_id in finished:
            self._finish(self.running.pop(request_id))
        self.num_steps += 1
        return StepResult(duration, tokens, [(s.request_id, s.cached_tokens) for s in admitted], finished)

    def decode_run(self, until_ms: float) -> StepResult | None:
        """Several decode-only steps in one call (replay speed): the same steps `step()` would run while nothing waits,
        stopping after the first that finishes a sequence or ends at/after `until_ms`. None when a normal step is due."""
        seqs = list(self.running.values())
        if self.waiting or not seqs or not all(s.prefilled for s in seqs):
            return None
        capacity = self.config.num_blocks * self.config.block_size
        active = sum(s.prompt_len + len(s.generated) for s in seqs)
        steps_left = min(s.max_tokens - len(s.generated) for s in seqs)
        duration, steps = 0.0, 0
        while steps < steps_left and (steps == 0 or duration < until_ms):
            duration += decode_ms(min(1.0, (active + steps * len(seqs)) / capacity))
            steps += 1
        tokens = [(s.request_id, self._next_token(s)) for _ in range(steps) for s in seqs]
        finished = [s.request_id for s in seqs if len(s.generated) >= s.max_tokens]
        for request_id in finished:
            self._finish(self.running.pop(request_id))
        self.num_steps += steps
        return StepResult(duration, tokens, [], finished)

    def _admit(self) -> tuple[list[MockSequence], int]:
        admitted: list[MockSequence] = []
        new_tokens = 0
        bs = self.config.block_size
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            uncached = seq.prompt_len - self.cache.match_prefix(seq.seq_hashes) * bs
            if admitted and new_tokens + uncached > self.config.max_batched_tokens:
                break
            if not self.cache.can_fit(seq.seq_hashes):
                break
            self.waiting.popleft()
            seq.cached_tokens = self.cache.acquire(seq.seq_hashes, seq.local_hashes) * bs
            new_tokens += seq.prompt_len - seq.cached_tokens
            self.running[seq.request_id] = seq
            admitted.append(seq)
        return admitted, new_tokens

    def _chunk(self, budget: int) -> tuple[list[MockSequence], int]:
        """Chunked prefill within `budget` tokens: prompts already started continue first, then waiting ones start.

        Returns the sequences whose prefill completes in this step and the prompt tokens the step computes."""
        completed: list[MockSequence] = []
        used = 0
        for seq in [s for s in self.running.values() if not s.prefilled]:
            used += self._advance(seq, budget - used, completed)
        while self.waiting and len(self.running) < self.config.max_num_seqs and used < budget:
            seq = self.waiting[0]
            if not self.cache.can_fit(seq.seq_hashes):
                break
            self.waiting.popleft()
            seq.cached_tokens = seq.num_computed = self.cache.acquire(seq.seq_hashes, seq.local_hashes) * self.config.block_size
            self.running[seq.request_id] = seq
            used += self._advance(seq, budget - used, completed)
        return completed, used

    @staticmethod
    def _advance(seq: MockSequence, room: int, completed: list[MockSequence]) -> int:
        """Prefill up to `room` more tokens of `seq`; returns how many."""
        chunk = min(seq.prompt_len - seq.num_computed, max(room, 0))
        seq.num_computed += chunk
        if seq.num_computed >= seq.prompt_len:
            completed.append(seq)
        return chunk

    def _next_token(self, seq: MockSequence) -> int:
        token = self.distribution.sample(seq.token_seed, seq.first_index + len(seq.generated), seq.temperature, seq.top_p)
        seq.generated.append(token)
        return token

    def _finish(self, seq: MockSequence) -> None:
        """Release the prompt blocks and cache the full blocks the answer completed (multi-turn reuse)."""
        self.cache.release(seq.seq_hashes)
        if seq.prompt_tokens is None:
            return
        bs = self.config.block_size
        whole = np.concatenate([seq.prompt_tokens, np.asarray(seq.generated, dtype=seq.prompt_tokens.dtype)])
        num_prompt_blocks = len(seq.seq_hashes)
        tail = whole[num_prompt_blocks * bs :]
        local = local_block_hashes(tail, bs)
        if not local:
            return
        parent = seq.seq_hashes[-1] if seq.seq_hashes else None
        chained = extend_chain(parent, local)
        if self.cache.can_fit(chained):
            self.cache.acquire(chained, local, parent)
            self.cache.release(chained)


def token_seed(prompt: bytes, seed: int | None) -> int:
    """Deterministic per (prompt, seed): the same request always produces the same tokens."""
    return xxhash.xxh3_64_intdigest(prompt, seed=seed or 0)


def simulated_seconds(duration_ms: float, speedup_ratio: float) -> float:
    return 0.0 if math.isinf(speedup_ratio) else duration_ms / 1000.0 / speedup_ratio
