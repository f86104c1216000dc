"""The OpenAI surface through the real mesh: official client, streaming, errors, models, metrics."""

from __future__ import annotations


import aiohttp
import openai
import pytest


@pytest.fixture
async def one_mocker(mesh):
    await mesh.start_frontend()
    await mesh.add_mocker()
    await mesh.wait_models("mocker", 1)
    return mesh


def _client(mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)


async def test_official_client_chat_stream_and_completion(one_mocker):
    client = _client(one_mocker)
    chat = await client.chat.completions.create(model="mocker", messages=[{"role": "user", "content": "hi"}], max_tokens=12)
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 12 and chat.usage.prompt_tokens > 0
    assert chat.choices[0].message.content.strip()

    stream = await client.chat.completions.create(model="mocker", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=12, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == chat.choices[0].message.content  # deterministic mocker: same prompt, same answer
    assert finish == "length" and usage.completion_tokens == 12

    completion = await client.completions.create(model="mocker", prompt="once upon a time", max_tokens=5)
    assert completion.usage.completion_tokens == 5 and completion.choices[0].text
    models = await client.models.list()
    assert [m.id for m in models.data] == ["mocker"]
    await client.close()


async def test_stop_string_cuts_the_answer(one_mocker):
    client = _client(one_mocker)
    full = await client.completions.create(model="mocker", prompt="stop test", max_tokens=16)
    text = full.choices[0].text
    words = text.split()
    stop = " " + words[3]
    cut = await client.completions.create(model="mocker", prompt="stop test", max_tokens=16, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    await client.close()


async def test_unknown_model_is_404_in_openai_envelope(one_mocker):
    client = _client(one_mocker)
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "$.model"
    await client.close()
    async with aiohttp.ClientSession() as session, session.get(f"{one_mocker.url}/metrics") as response:
        metrics = await response.text()
    assert 'model="nope"' not in metrics  # unknown names are counted as "unknown", not as new label values
    assert 'model="unknown",request_type="unary",status="404"' in metrics


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "mocker", "messages": []}, "$.messages"),
    ({"model": "mocker", "messages": [{"role": "robot", "content": "x"}]}, "$.messages[0].role"),
    ({"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "$.max_tokens"),
    ({"model": "mocker", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "$.temperature"),
    ({"model": "mocker", "messages": [{"role": "user", "content": "x"}], "nvext": {"steps": 0}}, "$.nvext.steps"),
    ({"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "$.max_tokens"),
    ({"model": "mocker", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "$.messages[0].content[0]"),
])
async def test_invalid_request_is_400_with_field_path(one_mocker, body, param):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{one_mocker.url}/v1/chat/completions", json=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_malformed_json_and_oversize_body(one_mocker):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{one_mocker.url}/v1/chat/completions", data=b"{not json") as response:
            assert response.status == 400
        big = b'{"model": "mocker", "messages": [{"role": "user", "content": "' + b"a" * (17 * 1024 * 1024) + b'"}]}'
        async with session.post(f"{one_mocker.url}/v1/chat/completions", data=big) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_metrics_count_requests_and_health_endpoints(one_mocker):
    client = _client(one_mocker)
    await client.chat.completions.create(model="mocker", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    await client.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{one_mocker.url}/metrics") as response:
            text = await response.text()
        for path, status in (("/live", 200), ("/ready", 200), ("/health", 200)):
            async with session.get(one_mocker.url + path) as response:
                assert response.status == status
        async with session.get(f"{one_mocker.url}/openapi.json") as response:
            spec = await response.json()
    line = 'dynamo_frontend_requests_total{endpoint="chat_completions",model="mocker",request_type="unary",status="200"} 1.0'
    assert line in text
    assert "dynamo_frontend_time_to_first_token_seconds_count" in text
    assert "/v1/chat/completions" in spec["paths"] and "ChatCompletionRequest" in spec["components"]["schemas"]
