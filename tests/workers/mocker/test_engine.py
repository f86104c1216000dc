"""The mocker's scheduler: chunked prefill splits prompts over steps of the token budget, decodes first (vLLM)."""

from __future__ import annotations

import pytest

from protocol.kv import chain_hashes, local_block_hashes
from workers.mocker.engine import MockerConfig, MockerScheduler, MockSequence, decode_ms, prefill_ms

BS = 4


def seq(request_id: str, tokens: list[int], max_tokens: int = 3) -> MockSequence:
    local = local_block_hashes(tokens, BS)
    return MockSequence(request_id, len(tokens), chain_hashes(local), local, max_tokens)


def chunked(budget: int = 8) -> MockerScheduler:
    return MockerScheduler(MockerConfig(block_size=BS, num_blocks=64, max_batched_tokens=budget, chunked_prefill=True))


def test_long_prompt_is_prefilled_over_steps_of_the_budget():
    s = chunked(8)
    s.add(seq("a", list(range(20))))
    steps = [s.step() for _ in range(3)]
    assert [r.duration_ms for r in steps] == [prefill_ms(8), prefill_ms(8), prefill_ms(4)]
    assert [r.admitted for r in steps] == [[], [], [("a", 0)]] and steps[2].tokens[0][0] == "a"  # first token at the end


def test_decodes_take_the_budget_first_and_a_started_prompt_goes_before_a_new_one():
    s = chunked(8)
    s.add(seq("d", list(range(100, 104)), max_tokens=10))
    s.step()  # d prefilled (4 tokens) and decoding from now on
    s.add(seq("long", list(range(200, 216))))
    s.add(seq("short", list(range(300, 304))))
    first = s.step()  # 1 decode token leaves 7: long takes them, short stays waiting
    assert first.duration_ms == pytest.approx(prefill_ms(7) + decode_ms(s.kv_usage()), rel=0.05)
    assert s.running["long"].num_computed == 7 and [w.request_id for w in s.waiting] == ["short"]
    second = s.step()  # long 7 more (14 of 16), short still waiting
    third = s.step()  # long's last 2, short's 4
    assert [r.admitted for r in (first, second, third)] == [[], [], [("long", 0), ("short", 0)]]


def test_cached_prefix_is_skipped_and_a_fully_cached_prompt_costs_nothing():
    s = chunked(8)
    prompt = list(range(16))
    s.add(seq("a", prompt, max_tokens=1))
    while s.step().finished != ["a"]:
        pass
    s.add(seq("b", prompt + [99, 98], max_tokens=1))  # 16 cached + 2 new
    result = s.step()
    assert result.admitted == [("b", 16)] and result.duration_ms == prefill_ms(2)
    s.add(seq("c", prompt, max_tokens=1))  # all cached
    assert s.step().duration_ms == 0 and s.is_idle


def test_active_prefill_tokens_count_what_partial_prompts_have_left():
    s = chunked(8)
    s.add(seq("a", list(range(20))))
    s.add(seq("b", list(range(40, 52))))
    assert s.active_prefill_tokens() == 32
    s.step()  # a: 8 of 20
    assert s.active_prefill_tokens() == 12 + 12
