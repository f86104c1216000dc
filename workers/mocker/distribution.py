"""The mocker's token distribution: a pure function of (token_seed, position), so sampling and logprobs are checkable.

At generated position i, with h = xxh3_64(u64le(token_seed) ‖ u64le(i)) and the mocker's alphabet of A word tokens:
- rank r (0 ≤ r < A) is the token alphabet[(h mod A + r) mod A];
- its logit is -s·r, with the slope s = 0.5 + ((h >> 32) mod 1024) / 512, in [0.5, 2.5);
- so log p(r) = -s·r - log Z,  Z = (1 - e^(-s·A)) / (1 - e^(-s))   (a geometric distribution over ranks).
temperature 0 takes rank 0 (what the mocker always produced). temperature T > 0 draws the rank from softmax(logit / T)
cut to the top_p nucleus (the fewest top ranks whose mass reaches top_p), by inverse CDF with
u = xxh3_64(same bytes, seed 1) / 2^64. Reported logprobs are those of the untempered distribution above.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import xxhash

_pack2 = struct.Struct("<QQ").pack
_xxh3 = xxhash.xxh3_64_intdigest


def slope(h: int) -> float:
    return 0.5 + ((h >> 32) % 1024) / 512.0


def log_normalizer(s: float, size: int) -> float:
    return math.log(-math.expm1(-s * size)) - math.log(-math.expm1(-s))


def sample_rank(h: int, uniform_bits: int, size: int, temperature: float, top_p: float) -> int:
    """Rank drawn from the tempered, nucleus-cut geometric distribution (0 when temperature is 0)."""
    if temperature <= 0.0 or size == 1:
        return 0
    ratio = math.exp(-slope(h) / temperature)  # p(r + 1) / p(r)
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:  # cannot happen for s > 0, but keep the inverse CDF finite
        return min(int(uniform_bits / 2**64 * size), size - 1)
    log_ratio = math.log(ratio)
    tail = ratio**size  # mass beyond the alphabet, relative
    keep = size if top_p >= 1.0 else min(size, max(1, math.ceil(math.log1p(-top_p * (1.0 - tail)) / log_ratio)))
    u = uniform_bits / 2**64
    rank = int(math.log1p(-u * (1.0 - ratio**keep)) / log_ratio)
    return min(max(rank, 0), keep - 1)


class TokenDistribution:
    """Ranks the alphabet at every position; used by the scheduler (sampling) and the worker (logprobs)."""

    def __init__(self, alphabet: Sequence[int]):
        self.alphabet = tuple(alphabet)
        self.size = len(self.alphabet)
        self._position = {token: i for i, token in enumerate(self.alphabet)}

    def sample(self, token_seed: int, index: int, temperature: float = 0.0, top_p: float = 1.0) -> int:
        key = _pack2(token_seed, index)
        h = _xxh3(key)
        rank = 0 if temperature <= 0.0 else sample_rank(h, _xxh3(key, seed=1), self.size, temperature, top_p)
        return self.alphabet[(h % self.size + rank) % self.size]

    def logprobs(self, token_seed: int, index: int, token: int, num_top: int) -> tuple[float, list[int], list[float]]:
        """Log-probability of `token` at `index`, and the `num_top` most likely tokens with theirs."""
        h = _xxh3(_pack2(token_seed, index))
        s, offset = slope(h), h % self.size
        log_z = log_normalizer(s, self.size)
        rank = (self._position[token] - offset) % self.size
        k = min(num_top, self.size)
        top = [self.alphabet[(offset + r) % self.size] for r in range(k)]
        return -s * rank - log_z, top, [-s * r - log_z for r in range(k)]
