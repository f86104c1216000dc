"""GET /v1/models and /v1/models/{id}: every field of openai's Model type, modalities, context, diffusion defaults."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from openai.types import Model


async def raw(mesh, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{mesh.url}{path}") as response:
        return response.status, await response.json()


async def test_retrieve_has_every_openai_model_field_and_diffmesh_details(text_mesh):
    for name in ("mocker", "tiny-dllm"):
        model = await text_mesh.client.models.retrieve(name)
        _, body = await raw(text_mesh.mesh, f"/v1/models/{name}")
        assert set(Model.model_fields) <= set(body)  # a field a new openai release adds fails here
        assert (model.id, model.object, model.owned_by) == (name, "model", "diffmesh") and model.created > 0
        assert body["input_modalities"] == body["output_modalities"] == ["text"] and body["workers"] == 1
        assert body["kinds"] == ["chat", "completions"] and body["context_length"] > 0
    _, dllm = await raw(text_mesh.mesh, "/v1/models/tiny-dllm")
    assert dllm["context_length"] == 512 and set(dllm["features"]) == {"logprobs", "logit_bias"}
    assert dllm["diffusion"] == {"steps": None, "block_length": 8, "threshold": None, "remasking": "low_confidence"}
    _, mocker = await raw(text_mesh.mesh, "/v1/models/mocker")
    assert mocker["diffusion"] is None and mocker["features"] == ["logprobs"] and mocker["context_length"] == 32768


async def test_list_describes_each_model_as_retrieve_does(text_mesh):
    listed = (await raw(text_mesh.mesh, "/v1/models"))[1]["data"]
    assert [m["id"] for m in listed] == ["mocker", "tiny-dllm"]
    for entry in listed:
        assert entry == (await raw(text_mesh.mesh, f"/v1/models/{entry['id']}"))[1]
    assert [m.id for m in (await text_mesh.client.models.list()).data] == ["mocker", "tiny-dllm"]


async def test_unknown_model_is_a_404_in_the_openai_envelope(text_mesh):
    with pytest.raises(openai.NotFoundError) as info:
        await text_mesh.client.models.retrieve("org/missing")  # ids may hold slashes (hub names)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    assert "org/missing" in info.value.body["message"]


async def test_image_model_lists_its_modalities_and_defaults(image_mesh):
    model = await image_mesh.client.models.retrieve("tiny-sd")
    _, body = await raw(image_mesh.mesh, "/v1/models/tiny-sd")
    assert model.id == "tiny-sd" and body["kinds"] == ["images"]
    assert (body["input_modalities"], body["output_modalities"]) == (["text", "image"], ["image"])  # edits take an image
    assert body["context_length"] is None and body["diffusion"] is None and body["defaults"]["size"] == "64x64"
