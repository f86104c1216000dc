"""POST /v1/images/generations and /v1/images/edits: validate, route (approximate mode), collect or stream images."""

from __future__ import annotations

import base64
import secrets
import time

import numpy as np
from aiohttp import web

from shell.logs import request_id_var
from frontend.capabilities import check_image
from frontend.errors import decode_body, envelope, error_response
from frontend.limits import check_image_limits
from frontend.state import STATE, AppState, Dispatched, new_request_id, raise_if_error, read_body, serve_request
from frontend.text import DONE, SSE_HEADERS
from frontend.uploads import Form, convert_form, file_param, read_form
from protocol.errors import InvalidRequest, MeshError, ModelNotFound
from protocol.openai import json_encoder
from protocol.openai_images import (
    ImageCompletedEvent, ImageData, ImageEditCompletedEvent, ImageEditPartialEvent, ImageEditRequest,
    ImageGenerationRequest, ImageNvExt, ImagePartialEvent, ImagesResponse, ImageUsage, image_decoder,
)
from protocol.routing import RouteRequest
from protocol.work import Final, ImageOutput, ImageRequest
from shell.upload import UploadLimits, decode_upload

FIDELITY_STRENGTH = {"high": 0.5, "low": None}  # input_fidelity -> nvext.strength default (None = the worker's)


async def generations(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "images_generations", _parse_generation)


async def edits(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "images_edits", _parse_edit)


async def _handle(request: web.Request, endpoint: str, parse) -> web.StreamResponse:
    state = request.app[STATE]
    model = "unknown"
    try:
        req, extra = await parse(request, state)
        entry = await state.registry.get(pick_model(state, req.model, "images"))
        model = entry.card.name  # a label only once the model is known: client strings must not grow /metrics
        if "images" not in entry.card.kinds:  # not found for this endpoint, as OpenAI answers
            raise ModelNotFound(f"model {model!r} does not generate images", param="$.model")
        check_image(req, entry.card)
        work = build_image_request(req, model, new_request_id(request_id_var.get() or "img"), **extra)
    except MeshError as exc:
        response = error_response(exc)
        state.metrics.model(model).request_done(endpoint, "unary", str(response.status))
        return response
    return await _serve(request, state, req, work, endpoint)


async def _parse_generation(request: web.Request, state: AppState) -> tuple[ImageGenerationRequest, dict]:
    req = decode_body(image_decoder, await read_body(request, state.config.max_body_bytes))
    check_image_limits(req, state.config.limits)
    if req.nvext and req.nvext.strength is not None:
        raise InvalidRequest("strength applies to /v1/images/edits only", param="$.nvext.strength")
    return req, {}


async def _parse_edit(request: web.Request, state: AppState) -> tuple[ImageEditRequest, dict]:
    form = await read_form(request, state.config.max_body_bytes)
    req = convert_form(form.fields, ImageEditRequest)
    check_image_limits(req, state.config.limits)
    if "markup" in form.files:
        raise InvalidRequest("`markup` needs SVG output, which no diffmesh model writes", param="$.markup")
    unknown = sorted(set(form.files) - {"image", "mask"})
    if unknown:
        raise InvalidRequest(f"unknown file field {unknown[0]!r}", param=f"$.{unknown[0]}")
    images = [_checked_upload(form, "image", i) for i in range(len(form.files.get("image", [])))]
    if not images:
        raise InvalidRequest("image is required: one PNG, JPEG or WEBP file", param="$.image")
    if len(images) > 1:
        raise InvalidRequest(f"this mesh's image models edit one input image per request, got {len(images)}",
                             param="$.image[1]")
    masks = form.files.get("mask", [])
    if len(masks) > 1:
        raise InvalidRequest("mask takes one file", param="$.mask")
    mask = _checked_upload(form, "mask", 0) if masks else None
    if mask is not None:
        _check_mask(decode_upload(mask, "$.mask"), decode_upload(images[0], "$.image"))
    strength = req.nvext.strength if req.nvext and req.nvext.strength is not None else None
    if strength is None and req.input_fidelity:
        strength = FIDELITY_STRENGTH[req.input_fidelity]
    return req, {"images": images, "mask": mask, "strength": strength}


def _checked_upload(form: Form, name: str, index: int) -> bytes:
    data = form.files[name][index]
    decode_upload(data, file_param(form, name, index), UploadLimits())
    return data


def _check_mask(mask, image) -> None:
    if mask.size != image.size:
        raise InvalidRequest(f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                             "they must match", param="$.mask")
    if "A" not in mask.getbands() and mask.info.get("transparency") is None:
        raise InvalidRequest("mask must have an alpha channel: fully transparent pixels mark where to edit",
                             param="$.mask")


def pick_model(state: AppState, model: str | None, kind: str) -> str:
    """The requested model, or the only live model of `kind` ("images", "videos") when none is named."""
    if model:
        return model
    names = [name for name, workers in state.registry.live_models().items()
             if workers[0].component == "image" and kind in (workers[0].kinds or ["images"])]
    if not names:
        raise ModelNotFound(f"no {kind[:-1]} model is served here", param="$.model")
    if len(names) > 1:
        raise InvalidRequest(f"`model` is required when {len(names)} {kind} models are served", param="$.model")
    return names[0]


def build_image_request(req: ImageGenerationRequest | ImageEditRequest, model: str, request_id: str,
                        **edit) -> ImageRequest:
    """Cross-field checks the schema cannot express, then the bus request (a null field means its default;
    `edit`: the input images, mask and strength of an edit)."""
    output_format, background = req.output_format or "png", req.background or "auto"
    if background == "transparent" and output_format == "jpeg":
        raise InvalidRequest("background=transparent needs output_format png or webp", param="$.background")
    if req.output_compression is not None and output_format == "png":
        raise InvalidRequest("output_compression applies to jpeg and webp only", param="$.output_compression")
    if req.partial_images and not req.stream:
        raise InvalidRequest("partial_images needs stream=true", param="$.partial_images")
    width = height = None
    if req.size and req.size != "auto":
        width, height = (int(v) for v in req.size.split("x"))
    ext = req.nvext or ImageNvExt()
    return ImageRequest(request_id=request_id, model=model, prompt=req.prompt, n=req.n or 1, width=width, height=height,
                        num_inference_steps=ext.num_inference_steps, quality=req.quality or "auto",
                        guidance_scale=ext.guidance_scale, negative_prompt=ext.negative_prompt,
                        seed=_seed(req, ext), output_format=output_format,
                        output_compression=req.output_compression, background=background,
                        response_format=req.response_format or "b64_json", user=req.safety_identifier or req.user,
                        stream=bool(req.stream), partial_images=req.partial_images or 0, step_cache=ext.step_cache,
                        **edit)


def _seed(req: ImageGenerationRequest, ext: ImageNvExt) -> int:
    """The request's seed, or one drawn here (not on the worker), so a request restarted elsewhere draws the same."""
    seed = ext.seed if ext.seed is not None else req.seed
    return secrets.randbits(63) if seed is None else seed


def routing_tokens(work: ImageRequest) -> bytes:
    """Tokenizer-less models route on the prompt's UTF-8 bytes (one byte per routing token)."""
    return np.frombuffer(work.prompt.encode(), dtype=np.uint8).astype("<i4").tobytes()


async def _serve(request: web.Request, state: AppState, req, work: ImageRequest, endpoint: str) -> web.StreamResponse:
    route = RouteRequest(request_id=work.request_id, model=work.model, token_ids=routing_tokens(work),
                         worker_id=req.nvext.worker_id if req.nvext else None)

    async def respond(dispatched: Dispatched) -> web.StreamResponse:
        if work.stream:
            return await _stream(request, dispatched, work)
        return await _collect(state, dispatched, work)

    return await serve_request(state, route, work, endpoint, work.stream, respond)


def _image_data(out: ImageOutput) -> ImageData:
    if out.url:
        return ImageData(url=out.url)
    return ImageData(b64_json=base64.b64encode(out.data).decode())


async def _collect(state: AppState, d: Dispatched, req: ImageRequest) -> web.Response:
    images: dict[int, ImageData] = {}
    sizes = set()
    reply = d.first
    while not isinstance(reply, Final):
        if isinstance(reply, ImageOutput) and reply.partial_index is None:
            images[reply.index] = _image_data(reply)
            sizes.add(f"{reply.width}x{reply.height}")
        reply = raise_if_error(await d.stream.next())
    state.metrics.model(req.model).images.inc(len(images))
    body = ImagesResponse(created=int(time.time()), data=[images[i] for i in sorted(images)], output_format=req.output_format,
                          quality=req.quality, background=req.background, size=sizes.pop() if len(sizes) == 1 else None,
                          usage=ImageUsage(output_tokens=0))
    return web.Response(body=json_encoder.encode(body), content_type="application/json",
                        headers={"x-diffmesh-worker": d.decision.worker_id})


async def _stream(request: web.Request, d: Dispatched, req: ImageRequest) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "x-diffmesh-worker": d.decision.worker_id})
    await response.prepare(request)
    reply = d.first
    sent: set[tuple[int, int | None]] = set()  # (index, partial_index): a restarted request sends them again
    try:
        while not isinstance(reply, Final):
            if isinstance(reply, ImageOutput) and (reply.index, reply.partial_index) not in sent:
                sent.add((reply.index, reply.partial_index))
                await response.write(_event(reply, req))
            reply = raise_if_error(await d.stream.next())
    except MeshError as exc:
        await response.write(b"data: " + envelope(exc) + b"\n\n")
        return response
    await response.write(DONE)
    return response


def _event(out: ImageOutput, req: ImageRequest) -> bytes:
    common = dict(b64_json=base64.b64encode(out.data).decode(), created_at=int(time.time()), output_format=out.output_format,
                  size=f"{out.width}x{out.height}", quality=req.quality, background=req.background)
    is_edit = bool(req.images)
    if out.partial_index is not None:
        event = (ImageEditPartialEvent if is_edit else ImagePartialEvent)(partial_image_index=out.partial_index, **common)
    else:
        event = (ImageEditCompletedEvent if is_edit else ImageCompletedEvent)(usage=ImageUsage(), **common)
    name = type(event).__struct_config__.tag.encode()
    return b"event: " + name + b"\ndata: " + json_encoder.encode(event) + b"\n\n"
