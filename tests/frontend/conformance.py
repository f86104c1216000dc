"""Building blocks of the conformance cases: each case is `async (ctx) -> None` and asserts what OpenAI documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import openai
import pytest

Case = Callable[[object], Awaitable[None]]


async def run_case(cases: dict[str, Case], path: str, ctx, request: str) -> None:
    """The case of an openai field path; a path with none is an untested field (a new openai release)."""
    case = cases.get(path)
    if case is None:
        pytest.fail(f"openai's {request} request has a field diffmesh does not test: {path!r} (add a case and a rule)")
    await case(ctx)


async def expect_400(call: Awaitable, param: str) -> str:
    """The call is a 400 in the OpenAI envelope naming `param`; returns the message."""
    with pytest.raises(openai.BadRequestError) as info:
        await call
    assert info.value.status_code == 400
    assert info.value.body["param"] == param, info.value.body
    assert info.value.body["type"] == "invalid_request_error"
    return info.value.body["message"]


def all_of(*cases: Case) -> Case:
    async def case(ctx) -> None:
        for one in cases:
            await one(ctx)

    return case


def refusal(send: Callable, param: str, **fields) -> Case:
    """`send(ctx, **fields)` is a 400 naming `param` that says the model does not support it."""

    async def case(ctx) -> None:
        message = await expect_400(send(ctx, **fields), param)
        assert "does not support" in message, message

    return case


def invalid(send: Callable, param: str, **fields) -> Case:
    """`send(ctx, **fields)` is a 400 naming `param` (a bad value)."""

    async def case(ctx) -> None:
        await expect_400(send(ctx, **fields), param)

    return case


def no_effect(send: Callable, answer: Callable, **fields) -> Case:
    """Accepted, and the answer is the same as without the fields (the documented ignore list)."""

    async def case(ctx) -> None:
        assert answer(await send(ctx, **fields)) == answer(await send(ctx))

    return case


async def sse_lines(ctx, path: str, body: dict) -> list[dict]:
    """The raw `data:` payloads of a streamed response (for fields the client does not model)."""
    import json

    events = []
    async with aiohttp.ClientSession() as session, session.post(f"{ctx.mesh.url}{path}", json=body) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                events.append(json.loads(line[6:]))
    return events
