"""A worker's prefill-time curve and queue, learned from first-token times (router.prefill)."""

from __future__ import annotations

import pytest

from router.prefill import PrefillModel, PrefillQueue


def step_seconds(tokens: int) -> float:
    """An engine whose prefill step costs 20 ms + 30 µs per token + attention growing with n²."""
    return 0.02 + 3e-5 * tokens + 4e-10 * tokens * tokens


def test_curve_fits_a_step_cost_a_token_cost_and_a_quadratic_term():
    model = PrefillModel()
    assert model.seconds(1000) == 0  # nothing known yet
    for tokens in (500, 2000, 8000, 30000, 1000, 60000, 4000):
        model.observe(tokens, step_seconds(tokens))
    for tokens in (100, 5000, 85000):  # a linear tokens/s rate is off by 2× at one end or the other
        assert model.seconds(tokens) == pytest.approx(step_seconds(tokens), rel=0.01)
    assert model.seconds(0) == 0  # a fully cached prompt costs nothing


def test_fit_keeps_every_coefficient_non_negative():
    model = PrefillModel()
    for tokens, seconds in ((1000, 0.010), (2000, 0.030), (4000, 0.070), (3000, 0.050)):  # best line crosses below 0
        model.observe(tokens, seconds)
    assert model.coef is not None and min(model.coef) >= 0
    assert model.seconds(1) >= 0 and model.seconds(4000) == pytest.approx(0.07, rel=0.2)


def test_samples_are_whole_engine_steps_of_a_first_come_first_served_worker():
    queue = PrefillQueue()
    routed = {name: (tokens, queue.add(tokens, now=0.0)) for name, tokens in (("a", 1000), ("b", 3000), ("c", 2000))}
    assert queue.pending_s == 0 and not queue.is_known  # no curve yet: the cost counts tokens
    queue.done(*routed["a"], routed_at=0.0, now=0.5)
    queue.done(*routed["b"], routed_at=0.0, now=0.5)  # same step as a: one sample of 4000 tokens in 0.5 s
    queue.done(*routed["c"], routed_at=0.0, now=0.9)  # its step began when a and b's ended: 2000 in 0.4 s
    assert queue.model.weight == 1  # the step of a and b is in; c's waits for the next step to be sure it is whole
    assert queue.tokens_per_s == pytest.approx(8000)
    for now in (1.2, 1.5, 1.8):  # three more one-request steps of 1500 tokens
        seconds = queue.add(1500, now=now - 0.3)
        queue.done(1500, seconds, routed_at=now - 0.3, now=now)
    assert queue.is_known and queue.model.weight == pytest.approx(1 + 0.95 + 0.95**2 + 0.95**3, rel=0.05)


def test_queued_seconds_drain_with_time_and_never_exceed_the_pending_ones():
    queue = PrefillQueue(fixed_rate=1000.0)
    assert queue.is_known and queue.seconds(2500) == 2.5
    first = queue.add(4000, now=0.0)
    assert queue.remaining(0.0) == 4.0 and queue.remaining(1.5) == pytest.approx(2.5) and queue.remaining(9.0) == 0
    second = queue.add(1000, now=2.0)  # 2 s left + 1 s
    assert queue.remaining(2.0) == pytest.approx(3.0)
    queue.done(4000, first, routed_at=0.0, now=2.5)  # the first token came back early: only the second is pending
    assert queue.remaining(2.5) == pytest.approx(1.0)
    queue.done(1000, second, routed_at=2.0, now=None)  # cancelled before its first token
    assert queue.pending_s == 0 and queue.remaining(2.6) == 0


def test_rate_zero_keeps_dynamo_bookkeeping():
    queue = PrefillQueue(fixed_rate=0.0)
    seconds = queue.add(4000, now=0.0)
    queue.done(4000, seconds, routed_at=0.0, now=1.0)
    assert not queue.is_known and queue.seconds(4000) == 0 and queue.model.coef is None
