"""Edits (/v1/images/edits): the input image and optional mask off the bus, checked and prepared for img2img/inpaint.

OpenAI's mask marks the area to edit with fully transparent pixels; diffusers' inpaint pipelines take a grayscale
mask where white is repainted, so alpha 0 becomes 255. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from protocol.errors import InvalidRequest
from protocol.work import ImageRequest
from shell.upload import decode_upload

DEFAULT_STRENGTH = 0.8  # img2img: re-noise 80% of the way (diffusers' default)
DEFAULT_INPAINT_STRENGTH = 1.0  # inpaint: the masked area starts from noise, the rest is kept


@dataclass(frozen=True)
class EditInput:
    kind: str  # img2img | inpaint
    image: Image.Image  # RGB, the output size
    mask: Image.Image | None  # L, 255 = repaint, the output size
    strength: float
    num_steps: int  # denoiser steps that run: int(steps x strength), what diffusers' img2img loops do


def decode_edit_files(request: ImageRequest, limits) -> tuple[Image.Image, Image.Image | None]:
    """Decode the input image and mask under the upload limits; 400 if the model has no edit pipeline."""
    kind = "inpaint" if request.mask is not None else "img2img"
    if kind not in limits.edit_kinds:
        raise InvalidRequest(f"this model has no {kind} pipeline (edits it takes: {list(limits.edit_kinds) or 'none'})",
                             param="$.mask" if kind == "inpaint" else "$.image")
    if len(request.images) != 1:
        raise InvalidRequest(f"one input image per edit, got {len(request.images)}", param="$.image")
    image = decode_upload(request.images[0], "$.image")
    mask = decode_upload(request.mask, "$.mask") if request.mask is not None else None
    if mask is not None and mask.size != image.size:
        raise InvalidRequest(f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}",
                             param="$.mask")
    return image, mask


def resolve_edit(request: ImageRequest, files, width: int, height: int, steps: int) -> EditInput:
    image, mask = files
    kind = "inpaint" if mask is not None else "img2img"
    strength = request.strength
    if strength is None:
        strength = DEFAULT_INPAINT_STRENGTH if mask is not None else DEFAULT_STRENGTH
    if not 0.0 < strength <= 1.0:
        raise InvalidRequest(f"strength must be in (0, 1], got {strength}", param="$.nvext.strength")
    num_steps = min(int(steps * strength), steps)
    if num_steps < 1:
        raise InvalidRequest(f"strength {strength} x {steps} steps runs no step; raise either", param="$.nvext.strength")
    resized = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    return EditInput(kind, resized, _repaint_mask(mask, width, height) if mask is not None else None, strength, num_steps)


def _repaint_mask(mask: Image.Image, width: int, height: int) -> Image.Image:
    """White where the OpenAI mask is fully transparent (edit here), black elsewhere."""
    if "A" not in mask.getbands():
        if mask.info.get("transparency") is None:
            raise InvalidRequest("mask must have an alpha channel: fully transparent pixels mark where to edit",
                                 param="$.mask")
        mask = mask.convert("RGBA")
    alpha = mask.getchannel("A").resize((width, height), Image.Resampling.NEAREST)
    return alpha.point(lambda a: 255 if a == 0 else 0)
