"""Log-probabilities of committed tokens (at the step each was unmasked) and logit_bias, on a real tiny model."""

from __future__ import annotations

import math

import pytest

from protocol.errors import InvalidRequest
from protocol.work import DiffusionOptions, SamplingOptions


def run(engine, prompt, **sampling):
    traces = []
    options = SamplingOptions(**{"max_tokens": 16, "ignore_eos": True, "seed": 3} | sampling)
    outs = list(engine.generate("r", prompt, options, DiffusionOptions(), observer=traces.append))
    return outs, traces


def per_token(outs, name):
    return [v for out in outs for v in getattr(out, name)]


def test_logprob_is_the_committed_tokens_probability_at_its_unmasking_step(make_engine, tiny_dir, prompt_ids):
    outs, traces = run(make_engine(tiny_dir), prompt_ids, logprobs=3)
    tokens, logprobs, tops = per_token(outs, "token_ids"), per_token(outs, "logprobs"), per_token(outs, "top_ids")
    assert len(logprobs) == len(tokens) == 16 == len(tops)
    # greedy low-confidence remasking ranks by the committed token's probability: its log is the logprob
    confidence = {p: c for t in traces for p, c in zip(t.positions, t.confidence)}
    first = len(prompt_ids)
    for i, logprob in enumerate(logprobs):
        assert logprob == pytest.approx(math.log(confidence[first + i]), abs=1e-9)
    top_logprobs = per_token(outs, "top_logprobs")
    for token, lp, top, top_lp in zip(tokens, logprobs, tops, top_logprobs):
        assert top[0] == token and top_lp[0] == pytest.approx(lp)  # greedy: the committed token is the argmax
        assert top_lp == sorted(top_lp, reverse=True) and len(set(top)) == 3


def test_no_logprobs_unless_asked(make_engine, tiny_dir, prompt_ids):
    outs, _ = run(make_engine(tiny_dir), prompt_ids)
    assert per_token(outs, "logprobs") == [] and len(per_token(outs, "token_ids")) == 16


def test_logit_bias_forces_and_bans_tokens(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    plain = per_token(run(engine, prompt_ids)[0], "token_ids")
    target = engine.tokenizer.convert_tokens_to_ids("cat")
    forced = per_token(run(engine, prompt_ids, logit_bias={target: 100.0})[0], "token_ids")
    assert forced == [target] * 16
    banned = per_token(run(engine, prompt_ids, logit_bias={plain[0]: -100.0})[0], "token_ids")
    assert plain[0] not in banned and len(banned) == 16


def test_logit_bias_outside_the_vocabulary_names_the_field(make_engine, tiny_dir, prompt_ids):
    engine = make_engine(tiny_dir)
    with pytest.raises(InvalidRequest) as info:
        run(engine, prompt_ids, logit_bias={engine.vocab_size: 1.0})
    assert info.value.param == "$.logit_bias"
