"""Completions conformance: every field of the openai package's completions request types, through the official
client against a real mesh, either changes the response as OpenAI documents or is a 400 naming it."""

from __future__ import annotations

import openai
import pytest

from tests.frontend.conformance import all_of, expect_400, invalid, no_effect, refusal, run_case, sse_lines
from tests.frontend.openai_schema import completion_paths

PROMPT = "the red cat"


def complete(ctx, model: str = "mocker", prompt=PROMPT, **fields):
    fields.setdefault("max_tokens", 4)
    return ctx.client.completions.create(model=model, prompt=prompt, **fields)


def text(response) -> str:
    return response.choices[0].text


def texts(response) -> list[str]:
    return [c.text for c in sorted(response.choices, key=lambda c: c.index)]


def refused(param: str, **fields):
    return refusal(complete, param, **fields)


def inert(**fields):
    return no_effect(complete, text, **fields)


def mocker_ids(ctx, prompt: str) -> list[int]:
    from workers.mocker.tokenizer import build_tokenizer

    return build_tokenizer().encode(prompt, add_special_tokens=False).ids


async def prompt_takes_every_openai_shape(ctx):
    one, two = text(await complete(ctx, prompt="a b")), text(await complete(ctx, prompt="c d"))
    assert one != two
    assert texts(await complete(ctx, prompt=["a b", "c d"])) == [one, two]  # one choice per prompt, in order
    assert text(await complete(ctx, prompt=mocker_ids(ctx, "a b"))) == one  # token ids
    assert texts(await complete(ctx, prompt=[mocker_ids(ctx, "a b"), mocker_ids(ctx, "c d")])) == [one, two]
    await expect_400(complete(ctx, prompt=["a b", [1, 2]]), "$.prompt[1]")
    await expect_400(complete(ctx, prompt=[10**6]), "$.prompt[0]")


async def n_orders_choices_by_prompt_then_sample(ctx):
    response = await complete(ctx, prompt=["a b", "c d"], n=2, seed=4)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    singles = [texts(await complete(ctx, prompt=p, n=2, seed=4)) for p in ("a b", "c d")]
    assert texts(response) == singles[0] + singles[1] and len(set(texts(response))) == 4
    alone = await complete(ctx, prompt="a b")
    assert response.usage.prompt_tokens == 2 * alone.usage.prompt_tokens
    assert response.usage.completion_tokens == 4 * alone.usage.completion_tokens


async def echo_puts_the_prompt_in_front(ctx):
    plain = text(await complete(ctx))
    assert text(await complete(ctx, echo=True)) == PROMPT + plain
    first = [c async for c in await complete(ctx, echo=True, stream=True)][0]
    assert first.choices[0].text == PROMPT
    ids = mocker_ids(ctx, PROMPT)
    assert text(await complete(ctx, prompt=ids, echo=True)) == PROMPT + plain  # token ids echo as their text
    await expect_400(complete(ctx, echo=True, logprobs=1), "$.echo")


async def logprobs_are_arrays_per_token(ctx):
    for model in ("mocker", "tiny-dllm"):
        response = await complete(ctx, model=model, logprobs=2, max_tokens=8, extra_body={"nvext": {"ignore_eos": True}})
        lp = response.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == response.usage.completion_tokens == 8
        assert "".join(lp.tokens) == text(response)
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert 1 <= len(top) <= 3 and top[token] == logprob and logprob <= 0
    assert (await complete(ctx)).choices[0].logprobs is None
    await expect_400(complete(ctx, logprobs=6), "$.logprobs")


async def best_of_returns_the_most_likely_samples(ctx):
    samples = await complete(ctx, n=4, seed=8, logprobs=0)
    means = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in samples.choices]
    best = await complete(ctx, n=2, best_of=4, seed=8)
    ranked = [texts(samples)[i] for i in sorted(range(4), key=lambda i: -means[i])]
    assert texts(best) == ranked[:2] and [c.index for c in best.choices] == [0, 1]
    assert best.choices[0].logprobs is None  # ranked by logprobs, returned only when asked
    assert best.usage.completion_tokens == samples.usage.completion_tokens  # every sample counts
    await expect_400(complete(ctx, n=3, best_of=2), "$.best_of")
    await expect_400(complete(ctx, best_of=2, stream=True), "$.best_of")


async def max_tokens_bounds_the_completion(ctx):
    response = await complete(ctx, max_tokens=3)
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"
    await expect_400(complete(ctx, max_tokens=40000), "$.max_tokens")


async def model_picks_the_model(ctx):
    assert (await complete(ctx, model="tiny-dllm")).model == "tiny-dllm"
    with pytest.raises(openai.NotFoundError):
        await complete(ctx, model="nope")


async def seed_and_temperature_steer_sampling(ctx):
    greedy = text(await complete(ctx, max_tokens=12))
    hot = [text(await complete(ctx, max_tokens=12, temperature=1.2, seed=s)) for s in (1, 1, 2)]
    assert hot[0] == hot[1] != hot[2] and greedy not in hot


async def top_p_cuts_to_the_nucleus(ctx):
    greedy = text(await complete(ctx, max_tokens=12, seed=1))
    assert text(await complete(ctx, max_tokens=12, temperature=1.5, top_p=1e-6, seed=1)) == greedy
    assert text(await complete(ctx, max_tokens=12, temperature=1.5, seed=1)) != greedy


async def stop_ends_before_the_string(ctx):
    full = text(await complete(ctx, max_tokens=12))
    stop = " " + full.split()[2]
    cut = await complete(ctx, max_tokens=12, stop=stop)
    assert text(cut) == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


async def stream_sends_the_same_text(ctx):
    whole = await complete(ctx, prompt=["a b", "c d"], max_tokens=6)
    pieces: dict[int, str] = {0: "", 1: ""}
    async for chunk in await complete(ctx, prompt=["a b", "c d"], max_tokens=6, stream=True):
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
    assert [pieces[0], pieces[1]] == texts(whole)


async def include_usage_adds_a_last_usage_chunk(ctx):
    whole = await complete(ctx)
    chunks = [c async for c in await complete(ctx, stream=True, stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    await expect_400(complete(ctx, stream_options={"include_usage": True}), "$.stream_options")


async def include_obfuscation_pads_every_chunk(ctx):
    body = {"model": "mocker", "prompt": PROMPT, "max_tokens": 4, "stream": True, "stream_options": {"include_obfuscation": True}}
    events = await sse_lines(ctx, "/v1/completions", body)
    assert events and all(e["obfuscation"] for e in events)


async def logit_bias_forces_a_token_on_the_dllm(ctx):
    cat = ctx.dllm_tokenizer.convert_tokens_to_ids("cat")
    response = await complete(ctx, model="tiny-dllm", max_tokens=8, logit_bias={str(cat): 100},
                              extra_body={"nvext": {"ignore_eos": True}})
    assert text(response).split() == ["cat"] * 8


CASES = {
    "best_of": best_of_returns_the_most_likely_samples,
    "echo": echo_puts_the_prompt_in_front,
    "frequency_penalty": all_of(inert(frequency_penalty=0), refused("$.frequency_penalty", frequency_penalty=1)),
    "presence_penalty": all_of(inert(presence_penalty=0), refused("$.presence_penalty", presence_penalty=1)),
    "logit_bias": all_of(refused("$.logit_bias", logit_bias={"5": 10}), logit_bias_forces_a_token_on_the_dllm),
    "logprobs": logprobs_are_arrays_per_token,
    "max_tokens": max_tokens_bounds_the_completion,
    "model": model_picks_the_model,
    "n": n_orders_choices_by_prompt_then_sample,
    "prompt": prompt_takes_every_openai_shape,
    "seed": seed_and_temperature_steer_sampling,
    "temperature": all_of(seed_and_temperature_steer_sampling, invalid(complete, "$.temperature", temperature=-1)),
    "top_p": top_p_cuts_to_the_nucleus,
    "stop": stop_ends_before_the_string,
    "stream": stream_sends_the_same_text,
    "stream_options": include_usage_adds_a_last_usage_chunk,
    "stream_options.include_usage": include_usage_adds_a_last_usage_chunk,
    "stream_options.include_obfuscation": include_obfuscation_pads_every_chunk,
    "suffix": refused("$.suffix", suffix=" the end"),
    "user": inert(user="u-1"),
}


@pytest.mark.parametrize("path", sorted(completion_paths()))
async def test_completions_field(text_mesh, path):
    await run_case(CASES, path, text_mesh, "completions")


def test_no_case_for_a_field_openai_no_longer_has():
    assert set(CASES) <= completion_paths()
