"""The mocker's documented token distribution: greedy tokens unchanged, proper logprobs, exact tempered sampling."""

from __future__ import annotations

import math
import struct

import pytest
import xxhash

from workers.mocker.distribution import TokenDistribution, log_normalizer, sample_rank, slope
from workers.mocker.tokenizer import word_token_ids


def test_temperature_zero_takes_rank_zero_which_is_the_mockers_historical_token():
    alphabet = word_token_ids()
    dist = TokenDistribution(alphabet)
    for index in range(50):
        h = xxhash.xxh3_64_intdigest(struct.pack("<QQ", 1234, index))
        assert dist.sample(1234, index) == alphabet[h % len(alphabet)]  # what the scheduler produced before
        assert dist.sample(1234, index, temperature=1.5, top_p=1e-9) == dist.sample(1234, index)  # a 1-token nucleus


def test_logprobs_form_a_distribution_ranked_by_the_documented_slope():
    alphabet = word_token_ids()
    dist = TokenDistribution(alphabet)
    greedy = dist.sample(7, 3)
    logprob, top, top_logprobs = dist.logprobs(7, 3, greedy, num_top=len(alphabet))
    assert top[0] == greedy and logprob == top_logprobs[0]
    assert sorted(top) == sorted(alphabet) and len(alphabet) == 322  # every token once; A as the README says
    assert math.fsum(math.exp(lp) for lp in top_logprobs) == pytest.approx(1.0, abs=1e-9)
    h = xxhash.xxh3_64_intdigest(struct.pack("<QQ", 7, 3))
    s = slope(h)
    assert 0.5 <= s < 2.5
    assert top_logprobs[4] == pytest.approx(-4 * s - log_normalizer(s, len(alphabet)))
    assert dist.logprobs(7, 3, top[4], num_top=0) == (pytest.approx(top_logprobs[4]), [], [])


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (2.0, 0.8)])
def test_tempered_sampling_follows_the_nucleus_cut_geometric_distribution(temperature, top_p):
    size, h = 50, 0x5A5A_1234_0000_0000
    q = math.exp(-slope(h) / temperature)
    weights = [q**r for r in range(size)]
    total = sum(weights)
    keep = next(k for k in range(1, size + 1) if sum(weights[:k]) / total >= top_p - 1e-12)
    expected = [w / sum(weights[:keep]) if r < keep else 0.0 for r, w in enumerate(weights)]
    grid = 20000  # evenly spaced uniforms: the histogram is the CDF's quadrature, no randomness
    counts = [0] * size
    for i in range(grid):
        counts[sample_rank(h, int((i + 0.5) / grid * 2**64), size, temperature, top_p)] += 1
    assert sum(counts[keep:]) == 0  # nothing outside the nucleus
    for r in range(size):
        assert counts[r] / grid == pytest.approx(expected[r], abs=2 / grid)
