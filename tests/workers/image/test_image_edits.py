"""/v1/images/edits: img2img and inpaint on the tiny pipelines, and the endpoint through the official openai client."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from protocol.errors import InvalidRequest
from protocol.work import Final
from tests.workers.image.kit import collect, decode, finals, image_request


def png(size=(64, 64), colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def mask_png(size=(64, 64), hole=(16, 16, 48, 48)) -> bytes:
    """Opaque everywhere but a transparent square: OpenAI's 'edit here'."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


async def test_img2img_runs_strength_times_steps_denoiser_calls_at_the_asked_size(sd_engine):
    calls = sd_engine.stats.num_denoiser_calls
    outputs = await collect(sd_engine, image_request(images=[png()], num_inference_steps=10, strength=0.6, n=2,
                                                     width=48, height=32))
    assert sd_engine.stats.num_denoiser_calls - calls == 6  # int(10 x 0.6) steps, one UNet call each (CFG batched)
    assert [decode(o.data).size for o in finals(outputs)] == [(48, 32), (48, 32)]
    assert outputs[-1].usage.forward_passes == 6


async def test_edit_size_auto_is_the_input_size_and_same_seed_gives_same_bytes(sd_engine):
    request = dict(images=[png((48, 32))], num_inference_steps=4)
    first = finals(await collect(sd_engine, image_request(**request)))
    again = finals(await collect(sd_engine, image_request(**request)))
    assert decode(first[0].data).size == (48, 32) and first[0].data == again[0].data


async def test_inpaint_uses_the_mask_and_full_strength(sd_engine):
    calls = sd_engine.stats.num_denoiser_calls
    masked = finals(await collect(sd_engine, image_request(images=[png()], mask=mask_png(), num_inference_steps=5)))
    assert sd_engine.stats.num_denoiser_calls - calls == 5  # inpaint defaults to strength 1: every step runs
    plain = finals(await collect(sd_engine, image_request(images=[png()], num_inference_steps=5, strength=1.0)))
    assert masked[0].data != plain[0].data  # the inpaint pipeline, not img2img, drew it


async def test_flux_edits_through_its_own_img2img_pipeline(flux_engine):
    outputs = await collect(flux_engine, image_request(images=[png()], num_inference_steps=5, strength=0.8))
    assert isinstance(outputs[-1], Final) and outputs[-1].usage.forward_passes == 4
    assert decode(finals(outputs)[0].data).size == (64, 64)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (dict(images=[b"GIF89a not really"]), "$.image"),
        (dict(images=[png()], mask=png()), "$.mask"),  # no alpha channel
        (dict(images=[png()], mask=mask_png((32, 32), (0, 0, 8, 8))), "$.mask"),  # another size
        (dict(images=[png()], strength=0.05, num_inference_steps=4), "$.nvext.strength"),  # no step would run
        (dict(images=[png(), png()]), "$.image"),
    ],
)
async def test_bad_edit_inputs_are_rejected_naming_the_field(sd_engine, fields, param):
    with pytest.raises(InvalidRequest) as info:
        await collect(sd_engine, image_request(**fields))
    assert info.value.param == param


# --- through the mesh with the official client ---------------------------------------------------------------------


async def test_openai_images_edit_with_png_and_mask_returns_the_asked_size(image_mesh):
    _, client = image_mesh
    result = await client.images.edit(model="tiny-sd", image=("in.png", png(), "image/png"),
                                      mask=("mask.png", mask_png(), "image/png"), prompt="a blue square", n=2,
                                      size="48x32", extra_body={"nvext": {"num_inference_steps": 4}, "seed": 3})
    images = [decode(base64.b64decode(item.b64_json)) for item in result.data]
    assert [im.size for im in images] == [(48, 32), (48, 32)] and result.size == "48x32"


async def test_openai_images_edit_takes_a_list_of_one_and_streams_edit_events(image_mesh):
    _, client = image_mesh
    stream = await client.images.edit(model="tiny-sd", image=[("in.png", png(), "image/png")], prompt="a cat",
                                      stream=True, partial_images=1, extra_body={"nvext": {"num_inference_steps": 6}})
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert decode(base64.b64decode(events[-1].b64_json)).size == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(image=("a.gif", b"GIF89a....", "image/gif")), "$.image"),
        (dict(image=("a.png", b"\x89PNG\r\n\x1a\n broken", "image/png")), "$.image"),
        (dict(image=[("a.png", png(), "image/png"), ("b.png", png(), "image/png")]), "$.image[1]"),
        (dict(mask=("m.png", png(), "image/png")), "$.mask"),
        (dict(mask=("m.png", mask_png((32, 32), (0, 0, 8, 8)), "image/png")), "$.mask"),
        (dict(size="50x64"), "$.size"),
        (dict(n=11), "$.n"),
        (dict(extra_body={"nvext": {"strength": 1.5}}), "$.nvext.strength"),
        (dict(extra_body={"nvext": {"num_inference_steps": 21}}), "$.nvext.num_inference_steps"),
    ],
)
async def test_openai_bad_edit_files_and_fields_are_400s_naming_them(image_mesh, kwargs, param):
    _, client = image_mesh
    fields = {"image": ("in.png", png(), "image/png"), **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        await client.images.edit(model="tiny-sd", prompt="x", **fields)
    assert info.value.status_code == 400 and info.value.body["param"] == param


async def test_edit_without_multipart_or_without_image_is_a_400(image_mesh):
    mesh, client = image_mesh
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/images/edits", json={"prompt": "x"}) as response:
            assert response.status == 400 and (await response.json())["error"]["param"] == "$"
        for extra, param in ((("other", b"", "x.bin"), "$.other"), (None, "$.image"), (("colour", "red", None), "$.colour")):
            form = aiohttp.FormData(default_to_multipart=True)
            form.add_field("prompt", "x")
            form.add_field("model", "tiny-sd")
            if extra is not None:  # an unknown file part, nothing, an unknown field
                form.add_field(extra[0], extra[1], filename=extra[2]) if extra[2] else form.add_field(extra[0], extra[1])
            async with session.post(f"{mesh.url}/v1/images/edits", data=form) as response:
                assert response.status == 400 and (await response.json())["error"]["param"] == param


async def test_strength_on_generations_is_a_400(image_mesh):
    _, client = image_mesh
    with pytest.raises(openai.BadRequestError) as info:
        await client.images.generate(model="tiny-sd", prompt="x", extra_body={"nvext": {"strength": 0.5}})
    assert info.value.body["param"] == "$.nvext.strength"
