"""What the frontend's hot path relies on, as counts: one template and tokenizer per model card, streamed events built
from a per-choice template with the same bytes as the objects, long prompts planned off the event loop."""

from __future__ import annotations

import threading

import aiohttp
import jinja2.sandbox
import msgspec
import numpy as np
import pytest

import frontend.preprocess
from frontend.textformat import Formatter
from frontend.textplan import Choice, Plan, Prompt
from protocol.openai import ChatCompletionChunk, ChunkChoice, Completion, CompletionChoice, Delta, json_encoder
from protocol.work import GenerateRequest, SamplingOptions

TEXTS = ["hello", " world", 'quote " and \\ backslash', "héllo 🙂", "line\nbreak\ttab", "\x00\x1f ctl", "", "</script>"]


def _plan(num_choices: int = 1) -> Plan:
    work = GenerateRequest(request_id="r", model="m", token_ids=b"", sampling=SamplingOptions(max_tokens=4))
    choices = [Choice(i, 0, work) for i in range(num_choices)]
    return Plan("cmpl-1", [Prompt(np.zeros(0, np.int32), "")], choices, num_choices, None, False)


@pytest.mark.parametrize("service_tier", [None, "auto"])
def test_chat_stream_events_have_the_bytes_of_the_encoded_chunk(service_tier):
    plan = _plan(2)
    fmt = Formatter("chat", "cmpl-1", "mocker", plan, None, service_tier=service_tier)
    for choice in plan.choices:
        fmt.event(choice, "first")  # carries the role; the plain events after it come from the template
        for text in TEXTS:
            chunk = ChatCompletionChunk(id="cmpl-1", created=fmt.created, model="mocker",
                                        choices=[ChunkChoice(index=choice.index, delta=Delta(content=text))])
            if service_tier:
                chunk.service_tier = "default"
            assert fmt.event(choice, text) == b"data: " + json_encoder.encode(chunk) + b"\n\n"


def test_completion_stream_events_have_the_bytes_of_the_encoded_completion():
    plan = _plan(1)
    fmt = Formatter("completions", "cmpl-1", "mocker", plan, None)
    for text in TEXTS:
        obj = Completion(id="cmpl-1", created=fmt.created, model="mocker",
                         choices=[CompletionChoice(index=0, text=text)])
        assert fmt.event(plan.choices[0], text) == b"data: " + json_encoder.encode(obj) + b"\n\n"
    final = msgspec.json.decode(fmt.event(plan.choices[0], "", finish_reason="length")[6:])
    assert final["choices"][0]["finish_reason"] == "length"  # not a template event


class _Counting:
    """Counts calls into one real function (the call still happens)."""

    def __init__(self, func):
        self.func, self.calls, self.threads = func, 0, []

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.threads.append(threading.get_ident())
        return self.func(*args, **kwargs)

    def method(self):
        """As a plain function, so that it binds `self` when set on a class."""
        return lambda *args, **kwargs: self(*args, **kwargs)


async def _post(session: aiohttp.ClientSession, url: str, path: str, body: dict) -> dict:
    async with session.post(f"{url}{path}", json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_chat_template_and_tokenizer_are_built_once_per_model_card(mesh, monkeypatch):
    compiles = _Counting(jinja2.sandbox.ImmutableSandboxedEnvironment.from_string)
    loads = _Counting(frontend.preprocess.Tokenizer.from_str)
    monkeypatch.setattr(jinja2.sandbox.ImmutableSandboxedEnvironment, "from_string", compiles.method())
    monkeypatch.setattr(frontend.preprocess, "Tokenizer", type("Tokenizer", (), {"from_str": staticmethod(loads)}))
    await mesh.add_mocker()
    await mesh.add_mocker("other")
    await mesh.start_frontend()
    await mesh.wait_models("mocker", 1)
    await mesh.wait_models("other", 1)
    async with aiohttp.ClientSession() as session:
        for i in range(4):
            for model in ("mocker", "other"):
                await _post(session, mesh.url, "/v1/chat/completions",
                            {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2})
                await _post(session, mesh.url, "/v1/completions", {"model": model, "prompt": f"p {i}", "max_tokens": 2})
    assert compiles.calls == 2 and loads.calls == 2  # one per model card, not per request


async def test_long_prompts_are_templated_and_tokenized_off_the_event_loop(mesh, monkeypatch):
    encode = _Counting(frontend.preprocess.Preprocessor.encode)
    monkeypatch.setattr(frontend.preprocess.Preprocessor, "encode", encode.method())
    await mesh.add_mocker()
    await mesh.start_frontend()
    await mesh.wait_models("mocker", 1)
    loop_thread = threading.get_ident()
    long_prompt = "the mesh routes token blocks to the worker that holds them " * 40  # 2.4 KB
    async with aiohttp.ClientSession() as session:
        short = await _post(session, mesh.url, "/v1/chat/completions",
                            {"model": "mocker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        long = await _post(session, mesh.url, "/v1/chat/completions",
                           {"model": "mocker", "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2})
    assert encode.calls == 2 and encode.threads[0] == loop_thread and encode.threads[1] != loop_thread
    assert long["usage"]["prompt_tokens"] > 10 * short["usage"]["prompt_tokens"]  # and it was tokenized in full
