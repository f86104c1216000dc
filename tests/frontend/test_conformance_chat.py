"""Chat completions conformance: every field of the openai package's chat request types, through the official client
against a real mesh, either changes the response as OpenAI documents or is a 400 naming it."""

from __future__ import annotations

import math

import openai
import pytest

from tests.frontend.conformance import all_of, expect_400, invalid, no_effect, refusal, run_case, sse_lines
from tests.frontend.openai_schema import chat_paths

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(ctx, model: str = "mocker", messages=HI, **fields):
    fields.setdefault("max_tokens", 4)
    return ctx.client.chat.completions.create(model=model, messages=messages, **fields)


def content(response) -> str:
    return response.choices[0].message.content


def refused(param: str, **fields):
    return refusal(chat, param, **fields)


def inert(**fields):
    return no_effect(chat, content, **fields)


def with_messages(*messages):
    """A sender whose only field is the message list."""

    def send(ctx, **_):
        return chat(ctx, messages=list(messages))

    return send


async def answer_of(ctx, messages) -> tuple[str, int]:
    response = await chat(ctx, messages=messages)
    return content(response), response.usage.prompt_tokens


# --- what each supported field does ---------------------------------------------------------------------------


async def logprobs_give_one_entry_per_completion_token(ctx):
    for model in ("mocker", "tiny-dllm"):
        response = await chat(ctx, model=model, logprobs=True, max_tokens=8, extra_body={"nvext": {"ignore_eos": True}})
        entries = response.choices[0].logprobs.content
        assert len(entries) == response.usage.completion_tokens == 8
        assert "".join(e.token for e in entries) == content(response)
        assert all(e.logprob <= 0 and e.top_logprobs == [] and bytes(e.bytes).decode() == e.token for e in entries)
    assert (await chat(ctx)).choices[0].logprobs is None


async def top_logprobs_rank_the_alternatives(ctx):
    response = await chat(ctx, logprobs=True, top_logprobs=3)
    for entry in response.choices[0].logprobs.content:
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # temperature 0: the most likely token is the one produced
        assert math.fsum(math.exp(a) for a in alternatives) < 1
    await expect_400(chat(ctx, top_logprobs=2), "$.top_logprobs")


async def n_gives_independent_choices_and_sums_usage(ctx):
    one = await chat(ctx, seed=5)
    many = await chat(ctx, seed=5, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.message.content for c in many.choices}) == 3
    assert many.choices[0].message.content == content(one)  # choice 0 uses the seed itself
    assert many.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert many.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    unseeded = await chat(ctx, n=2)
    assert unseeded.choices[0].message.content != unseeded.choices[1].message.content
    await expect_400(chat(ctx, n=129), "$.n")


async def max_tokens_bounds_the_completion(ctx):
    response = await chat(ctx, max_tokens=3)
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"
    await expect_400(chat(ctx, max_tokens=0), "$.max_tokens")


async def max_completion_tokens_is_max_tokens(ctx):
    response = await ctx.client.chat.completions.create(model="mocker", messages=HI, max_completion_tokens=5)
    assert response.usage.completion_tokens == 5
    await expect_400(chat(ctx, max_tokens=4, max_completion_tokens=5), "$.max_completion_tokens")


async def messages_are_the_prompt(ctx):
    a, b = await answer_of(ctx, HI), await answer_of(ctx, [{"role": "user", "content": "hi there"}])
    assert a[0] != b[0] and b[1] > a[1]
    await expect_400(chat(ctx, messages=[]), "$.messages")


async def seed_makes_sampling_repeatable(ctx):
    a = content(await chat(ctx, seed=1, temperature=1.0))
    b = content(await chat(ctx, seed=1, temperature=1.0))
    c = content(await chat(ctx, seed=2, temperature=1.0))
    assert a == b != c


async def temperature_changes_sampling(ctx):
    greedy = content(await chat(ctx, seed=3, max_tokens=12))
    assert content(await chat(ctx, seed=3, max_tokens=12, temperature=0)) == greedy
    hot = content(await chat(ctx, seed=3, max_tokens=12, temperature=1.5))
    assert hot != greedy and content(await chat(ctx, seed=3, max_tokens=12, temperature=1.5)) == hot
    await expect_400(chat(ctx, temperature=2.5), "$.temperature")


async def top_p_cuts_to_the_nucleus(ctx):
    greedy = content(await chat(ctx, seed=3, max_tokens=12))
    assert content(await chat(ctx, seed=3, max_tokens=12, temperature=1.5, top_p=1e-6)) == greedy  # one-token nucleus
    assert content(await chat(ctx, seed=3, max_tokens=12, temperature=1.5, top_p=1.0)) != greedy
    await expect_400(chat(ctx, top_p=0), "$.top_p")


async def stop_ends_the_answer_before_the_string(ctx):
    full = content(await chat(ctx, max_tokens=12))
    stop = " " + full.split()[3]
    cut = await chat(ctx, max_tokens=12, stop=[stop])
    assert content(cut) == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


async def stream_sends_the_same_answer_in_deltas(ctx):
    whole = await chat(ctx, n=2, seed=9, max_tokens=6)
    pieces: dict[int, list[str]] = {0: [], 1: []}
    async for chunk in await chat(ctx, n=2, seed=9, max_tokens=6, stream=True):
        for choice in chunk.choices:
            pieces[choice.index].append(choice.delta.content or "")
    assert ["".join(pieces[i]) for i in (0, 1)] == [c.message.content for c in whole.choices]


async def stream_options_need_stream(ctx):
    await expect_400(chat(ctx, stream_options={"include_usage": True}), "$.stream_options")


async def include_usage_adds_a_last_usage_chunk(ctx):
    whole = await chat(ctx)
    chunks = [c async for c in await chat(ctx, stream=True, stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert all([c.usage is None async for c in await chat(ctx, stream=True)])


async def include_obfuscation_pads_every_chunk(ctx):
    body = {"model": "mocker", "messages": HI, "max_tokens": 4, "stream": True}
    padded = await sse_lines(ctx, "/v1/chat/completions", {**body, "stream_options": {"include_obfuscation": True}})
    assert all(isinstance(e["obfuscation"], str) and e["obfuscation"] for e in padded)
    assert all("obfuscation" not in e for e in await sse_lines(ctx, "/v1/chat/completions", body))


async def model_picks_the_model(ctx):
    assert (await chat(ctx, model="tiny-dllm")).model == "tiny-dllm"
    with pytest.raises(openai.NotFoundError) as info:
        await chat(ctx, model="nope")
    assert info.value.body["param"] == "$.model"


async def service_tier_default_is_answered(ctx):
    assert (await chat(ctx, service_tier="auto")).service_tier == "default"


async def logit_bias_forces_a_token_on_the_dllm(ctx):
    cat = ctx.dllm_tokenizer.convert_tokens_to_ids("cat")
    response = await chat(ctx, model="tiny-dllm", max_tokens=8, logit_bias={str(cat): 100}, logprobs=True,
                          extra_body={"nvext": {"ignore_eos": True}})
    assert [e.token.strip() for e in response.choices[0].logprobs.content] == ["cat"] * 8


async def name_reaches_the_chat_template(ctx):
    plain = await answer_of(ctx, HI)
    named = await answer_of(ctx, [{"role": "user", "content": "hi", "name": "ada"}])
    assert named[1] > plain[1] and named[0] != plain[0]


def role_renders_differently(role: str):
    async def case(ctx):
        other = "system" if role == "user" else "user"
        tail = [{"role": "user", "content": "go"}]
        assert (await answer_of(ctx, [{"role": role, "content": "hi"}, *tail]))[0] != \
            (await answer_of(ctx, [{"role": other, "content": "hi"}, *tail]))[0]

    return case


def content_is_the_text(role: str):
    async def case(ctx):
        tail = [{"role": "user", "content": "go"}] if role != "user" else []
        as_string = await answer_of(ctx, [{"role": role, "content": "hi you"}, *tail])
        as_parts = await answer_of(ctx, [{"role": role, "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]}, *tail])
        other = await answer_of(ctx, [{"role": role, "content": "bye"}, *tail])
        assert as_string == as_parts and other[0] != as_string[0]

    return case


async def text_parts_join_into_the_message(ctx):
    assert await answer_of(ctx, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == await answer_of(ctx, HI)


async def cache_breakpoints_change_nothing(ctx):
    part = {"type": "text", "text": "hi", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"}}
    assert await answer_of(ctx, [{"role": "user", "content": [part]}]) == await answer_of(ctx, HI)


ASSISTANT = {"role": "assistant", "content": "ok"}
PART_REFUSED = {
    "image_url": {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    "input_audio": {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    "file": {"type": "file", "file": {"file_id": "f1"}},
}


def part_refused(kind: str):
    if kind == "refusal":  # an assistant content part
        return refusal(with_messages({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, *HI),
                       "$.messages[0].content[0]")
    return refusal(with_messages({"role": "user", "content": [PART_REFUSED[kind]]}), "$.messages[0].content[0]")


def message_cases() -> dict:
    cases = {}
    for role in ("system", "developer", "user", "assistant"):
        cases[f"messages[{role}].role"] = role_renders_differently(role)
        cases[f"messages[{role}].content"] = content_is_the_text(role)
        cases[f"messages[{role}].name"] = name_reaches_the_chat_template
    for role, message in (("tool", {"role": "tool", "content": "42", "tool_call_id": "c1"}),
                          ("function", {"role": "function", "content": "42", "name": "f"})):
        for field in message:
            cases[f"messages[{role}].{field}"] = refusal(with_messages(ASSISTANT, message), "$.messages[1].role")
    cases["messages[tool].tool_call_id"] = all_of(cases["messages[tool].tool_call_id"], invalid(
        with_messages({"role": "user", "content": "x", "tool_call_id": "c1"}), "$.messages[0].tool_call_id"))
    for field, value in (("audio", {"id": "a1"}), ("function_call", {"name": "f", "arguments": "{}"}), ("refusal", "no"),
                         ("tool_calls", [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}])):
        cases[f"messages[assistant].{field}"] = refusal(with_messages({**ASSISTANT, field: value}, *HI), f"$.messages[0].{field}")
    for kind in ("image_url", "input_audio", "file", "refusal"):
        cases[f"messages[].content[{kind}]"] = part_refused(kind)
        for field in {"image_url": ("image_url", "prompt_cache_breakpoint"), "input_audio": ("input_audio", "prompt_cache_breakpoint"),
                      "file": ("file", "prompt_cache_breakpoint"), "refusal": ("refusal",)}[kind]:
            cases[f"messages[].content[{kind}].{field}"] = part_refused(kind)
    cases["messages[].content[text]"] = text_parts_join_into_the_message
    cases["messages[].content[text].text"] = content_is_the_text("user")
    cases["messages[].content[text].prompt_cache_breakpoint"] = cache_breakpoints_change_nothing
    return cases


CASES = {
    "audio": refused("$.audio", audio={"voice": "alloy", "format": "wav"}),
    "frequency_penalty": all_of(inert(frequency_penalty=0), refused("$.frequency_penalty", frequency_penalty=0.5)),
    "presence_penalty": all_of(inert(presence_penalty=0), refused("$.presence_penalty", presence_penalty=-1)),
    "function_call": all_of(inert(function_call="none"), refused("$.function_call", function_call={"name": "f"})),
    "functions": refused("$.functions", functions=[{"name": "f", "parameters": {}}]),
    "logit_bias": all_of(refused("$.logit_bias", logit_bias={"5": 10}), logit_bias_forces_a_token_on_the_dllm),
    "logprobs": logprobs_give_one_entry_per_completion_token,
    "top_logprobs": top_logprobs_rank_the_alternatives,
    "max_completion_tokens": max_completion_tokens_is_max_tokens,
    "max_tokens": max_tokens_bounds_the_completion,
    "messages": messages_are_the_prompt,
    "metadata": all_of(inert(metadata={"team": "a"}), invalid(chat, "$.metadata", metadata={str(i): "v" for i in range(17)})),
    "modalities": all_of(inert(modalities=["text"]), refused("$.modalities", modalities=["text", "audio"])),
    "model": model_picks_the_model,
    "moderation": refused("$.moderation", moderation={"model": "omni-moderation-latest"}),
    "n": n_gives_independent_choices_and_sums_usage,
    "parallel_tool_calls": refused("$.parallel_tool_calls", parallel_tool_calls=True),
    "prediction": refused("$.prediction", prediction={"type": "content", "content": "x"}),
    "prompt_cache_key": inert(prompt_cache_key="k1"),
    "prompt_cache_options": all_of(inert(prompt_cache_options={"mode": "implicit", "ttl": "30m"}),
                                   invalid(chat, "$.prompt_cache_options.mode", prompt_cache_options={"mode": "sometimes"})),
    "prompt_cache_retention": all_of(inert(prompt_cache_retention="in_memory"),
                                     refused("$.prompt_cache_retention", prompt_cache_retention="24h")),
    "reasoning_effort": all_of(inert(reasoning_effort="none"), refused("$.reasoning_effort", reasoning_effort="high")),
    "response_format": inert(response_format={"type": "text"}),
    "response_format[text]": inert(response_format={"type": "text"}),
    "response_format[json_object]": refused("$.response_format", response_format={"type": "json_object"}),
    "response_format[json_schema]": refused("$.response_format", response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
    "response_format[json_schema].json_schema": refused("$.response_format", response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
    "safety_identifier": all_of(inert(safety_identifier="u-1"), invalid(chat, "$.safety_identifier", safety_identifier="x" * 129)),
    "seed": seed_makes_sampling_repeatable,
    "service_tier": all_of(service_tier_default_is_answered, refused("$.service_tier", service_tier="flex")),
    "stop": stop_ends_the_answer_before_the_string,
    "store": all_of(inert(store=False), refused("$.store", store=True)),
    "stream": stream_sends_the_same_answer_in_deltas,
    "stream_options": all_of(stream_options_need_stream, include_usage_adds_a_last_usage_chunk),
    "stream_options.include_usage": include_usage_adds_a_last_usage_chunk,
    "stream_options.include_obfuscation": include_obfuscation_pads_every_chunk,
    "temperature": temperature_changes_sampling,
    "tool_choice": all_of(inert(tool_choice="none"), refused("$.tool_choice", tool_choice="auto")),
    "tools": refused("$.tools", tools=[TOOL]),
    "top_p": top_p_cuts_to_the_nucleus,
    "user": inert(user="u-1"),
    "verbosity": all_of(inert(verbosity="medium"), refused("$.verbosity", verbosity="low")),
    "web_search_options": refused("$.web_search_options", web_search_options={}),
    **message_cases(),
}


@pytest.mark.parametrize("path", sorted(chat_paths()))
async def test_chat_field(text_mesh, path):
    await run_case(CASES, path, text_mesh, "chat")


def test_no_case_for_a_field_openai_no_longer_has():
    assert set(CASES) <= chat_paths()


async def test_unknown_fields_are_a_400_naming_them(text_mesh):
    await expect_400(chat(text_mesh, extra_body={"frobnicate": 1}), "$.frobnicate")
    await expect_400(chat(text_mesh, messages=[{"role": "user", "content": "x", "mood": "happy"}]), "$.messages[0].mood")
    await expect_400(chat(text_mesh, stream=True, stream_options={"include_usage": True, "colour": 1}), "$.stream_options.colour")
