"""Images conformance: every field of the openai package's image generation request types, through the official
client against a real mesh with a tiny Stable Diffusion, either works as OpenAI documents or is a 400 naming it."""

from __future__ import annotations

import base64
import hashlib
import io

import aiohttp
import openai
import pytest
from PIL import Image

from tests.frontend.conformance import all_of, invalid, no_effect, refusal, run_case
from tests.frontend.openai_schema import image_paths

FAST = {"nvext": {"num_inference_steps": 2}}  # tiny SD, two steps: the bytes still depend on every field below


def generate(ctx, prompt: str = "a red cat", extra_body: dict | None = None, **fields):
    """Seed 5, 32x32, two steps unless `extra_body` replaces the nvext."""
    fields.setdefault("model", "tiny-sd")
    fields.setdefault("size", "32x32")
    extra = {**(FAST if extra_body is None else extra_body), "seed": 5}
    return ctx.client.images.generate(prompt=prompt, extra_body=extra, **fields)


def first_bytes(response) -> bytes:
    return base64.b64decode(response.data[0].b64_json)


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def refused(param: str, **fields):
    return refusal(generate, param, **fields)


def inert(**fields):
    return no_effect(generate, first_bytes, **fields)


async def background_transparent_keys_out_the_border(ctx):
    transparent = image_of(first_bytes(await generate(ctx, background="transparent")))
    opaque = image_of(first_bytes(await generate(ctx, background="opaque")))
    assert transparent.mode == "RGBA" and opaque.mode == "RGB"
    assert transparent.getchannel("A").getextrema()[0] == 0  # some pixels keyed out
    await invalid(generate, "$.background", background="transparent", output_format="jpeg")(ctx)


async def model_picks_the_image_model(ctx):
    assert first_bytes(await ctx.client.images.generate(prompt="a red cat", size="32x32", extra_body={**FAST, "seed": 5})) \
        == first_bytes(await generate(ctx))  # the only image model when left out
    with pytest.raises(openai.NotFoundError):
        await generate(ctx, model="nope")


async def n_gives_distinct_images(ctx):
    response = await generate(ctx, n=2)
    images = [base64.b64decode(d.b64_json) for d in response.data]
    assert len(images) == 2 and images[0] != images[1] and images[0] == first_bytes(await generate(ctx))
    await invalid(generate, "$.n", n=11)(ctx)


async def output_compression_trades_bytes(ctx):
    small = first_bytes(await generate(ctx, output_format="jpeg", output_compression=5))
    large = first_bytes(await generate(ctx, output_format="jpeg", output_compression=95))
    assert len(small) < len(large)
    await invalid(generate, "$.output_compression", output_compression=50)(ctx)  # png


async def output_format_picks_the_encoding(ctx):
    for fmt, name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        response = await generate(ctx, output_format=fmt)
        assert image_of(first_bytes(response)).format == name and response.output_format == fmt
    for fmt in ("gif", "svg"):
        await refusal(generate, "$.output_format", output_format=fmt)(ctx)


async def partial_images_stream_before_the_final(ctx):
    events = [e async for e in await generate(ctx, stream=True, partial_images=1, extra_body={"nvext": {"num_inference_steps": 3}})]
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    await invalid(generate, "$.partial_images", partial_images=1)(ctx)  # needs stream


async def stream_sends_the_same_image(ctx):
    events = [e async for e in await generate(ctx, stream=True)]
    assert [e.type for e in events] == ["image_generation.completed"]
    assert base64.b64decode(events[0].b64_json) == first_bytes(await generate(ctx))


async def prompt_steers_the_image(ctx):
    assert first_bytes(await generate(ctx, prompt="a blue dog")) != first_bytes(await generate(ctx))


async def quality_presets_steps(ctx):
    low = await generate(ctx, quality="low", extra_body={})
    high = await generate(ctx, quality="high", extra_body={})
    assert first_bytes(low) != first_bytes(high) and high.quality == "high"
    assert first_bytes(await generate(ctx, quality="max", extra_body={})) != first_bytes(high)


async def response_format_url_serves_the_image(ctx):
    response = await generate(ctx, response_format="url")
    async with aiohttp.ClientSession() as session, session.get(response.data[0].url) as got:
        assert got.status == 200 and await got.read() == first_bytes(await generate(ctx))


def owner(user: str | None) -> str:
    return "anon" if not user else "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]


async def user_names_the_owner_of_stored_images(ctx):
    for user in ("alice", None):
        fields = {"user": user} if user else {}
        url = (await generate(ctx, response_format="url", **fields)).data[0].url
        assert f"/v1/files/{owner(user)}/" in url


async def safety_identifier_takes_precedence_over_user(ctx):
    url = (await generate(ctx, response_format="url", user="alice", safety_identifier="s-9")).data[0].url
    assert f"/v1/files/{owner('s-9')}/" in url
    url = (await generate(ctx, response_format="url", user="alice", safety_identifier="")).data[0].url
    assert f"/v1/files/{owner('alice')}/" in url  # empty: user is used


async def size_sets_the_pixels(ctx):
    assert image_of(first_bytes(await generate(ctx, size="48x32"))).size == (48, 32)
    await invalid(generate, "$.size", size="50x32")(ctx)


CASES = {
    "background": background_transparent_keys_out_the_border,
    "complexity": refused("$.complexity", complexity="high"),
    "frame_count": refused("$.frame_count", frame_count=4),
    "frame_duration_ms": refused("$.frame_duration_ms", frame_duration_ms=100),
    "model": model_picks_the_image_model,
    "moderation": all_of(inert(moderation="low"), inert(moderation="auto")),
    "n": n_gives_distinct_images,
    "output_compression": output_compression_trades_bytes,
    "output_format": output_format_picks_the_encoding,
    "partial_images": partial_images_stream_before_the_final,
    "prompt": prompt_steers_the_image,
    "quality": quality_presets_steps,
    "response_format": response_format_url_serves_the_image,
    "safety_identifier": safety_identifier_takes_precedence_over_user,
    "size": size_sets_the_pixels,
    "stream": stream_sends_the_same_image,
    "style": refused("$.style", style="vivid"),
    "svg": refused("$.svg", svg={"model": "author"}),
    "user": user_names_the_owner_of_stored_images,
}


@pytest.mark.parametrize("path", sorted(image_paths()))
async def test_images_field(image_mesh, path):
    await run_case(CASES, path, image_mesh, "image")


def test_no_case_for_a_field_openai_no_longer_has():
    assert set(CASES) <= image_paths()
