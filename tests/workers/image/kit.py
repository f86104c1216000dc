"""Helpers shared by the image tests."""

from __future__ import annotations

import io
import itertools

from PIL import Image

from protocol.work import ImageOutput, ImageRequest
from workers.image.engine import ImageEngine

_ids = itertools.count()


def image_request(**fields) -> ImageRequest:
    """An ImageRequest with a fresh id, a fixed prompt and seed, 4 steps unless overridden."""
    defaults = dict(request_id=f"img-{next(_ids)}", model="tiny", prompt="a red cat", seed=7, num_inference_steps=4)
    return ImageRequest(**{**defaults, **fields})


async def collect(engine: ImageEngine, request: ImageRequest, **kwargs) -> list:
    return [out async for out in engine.generate(request, **kwargs)]


def finals(outputs: list) -> list[ImageOutput]:
    """The final (non-partial) images, in order."""
    return [out for out in outputs if isinstance(out, ImageOutput) and out.partial_index is None]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
