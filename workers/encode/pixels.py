"""The CLIP/SigLIP image processors' steps, split so that a batch is normalised in one tensor operation.

transformers' Pil processors resize, crop, rescale and normalise one image at a time in Python and numpy. Here the
per-image part (`prepare`: PIL resize with the processor's resample and output-size rule, centre crop) runs on the
request's own thread, next to decoding, and the rest (`to_pixels`: stack, rescale, normalise) once per batch on the
encode thread. `pixel_spec` reads the processor's settings and returns None for anything it does not reproduce
exactly (padding, other size rules), in which case the engine calls the processor itself; a test checks equality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class PixelSpec:
    shortest_edge: int | None  # resize the shorter side to this (aspect kept), or
    size: tuple[int, int] | None  # ... to exactly (height, width)
    resample: int  # PIL resampling filter
    crop: tuple[int, int] | None  # centre crop (height, width) after the resize
    rescale: float | None  # e.g. 1/255
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def pixel_spec(processor) -> PixelSpec | None:
    """The processor's steps if they are the resize/crop/rescale/normalise chain this module reproduces, else None."""
    if type(processor).__name__ not in ("CLIPImageProcessorPil", "SiglipImageProcessorPil") or getattr(processor, "do_pad", False):
        return None
    size = processor.size or {}
    shortest = size.get("shortest_edge") if processor.do_resize else None
    exact = (size["height"], size["width"]) if processor.do_resize and "height" in size and not shortest else None
    if processor.do_resize and not (shortest or exact) or size.get("longest_edge"):
        return None
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    return PixelSpec(
        shortest_edge=shortest, size=exact, resample=int(processor.resample),
        crop=(crop["height"], crop["width"]) if crop else None,
        rescale=float(processor.rescale_factor) if processor.do_rescale else None,
        mean=tuple(processor.image_mean) if processor.do_normalize else None,
        std=tuple(processor.image_std) if processor.do_normalize else None,
    )  # fmt: skip


def prepare(image: Image.Image, spec: PixelSpec) -> np.ndarray | None:
    """The resized and cropped RGB image as uint8 [height, width, 3]; None if the crop would need padding."""
    width, height = image.size
    if spec.shortest_edge:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(spec.shortest_edge * long / short)  # transformers' get_resize_output_image_size
        target = (spec.shortest_edge, new_long) if width <= height else (new_long, spec.shortest_edge)
    elif spec.size:
        target = (spec.size[1], spec.size[0])
    else:
        target = (width, height)
    if target != (width, height):
        image = image.resize(target, resample=spec.resample)
    pixels = np.asarray(image)
    if spec.crop is None:
        return pixels
    crop_h, crop_w = spec.crop
    top, left = (pixels.shape[0] - crop_h) // 2, (pixels.shape[1] - crop_w) // 2
    if top < 0 or left < 0:
        return None
    return pixels[top : top + crop_h, left : left + crop_w]


def to_pixels(batch: list[np.ndarray], spec: PixelSpec) -> torch.Tensor:
    """float32 [batch, 3, height, width]: the processor's pixel_values for the prepared images."""
    pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(torch.float64)
    if spec.rescale is not None:
        pixels = pixels * spec.rescale
    pixels = pixels.to(torch.float32)
    if spec.mean is not None:
        mean = torch.tensor(spec.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(spec.std, dtype=torch.float32)[None, :, None, None]
        pixels = (pixels - mean) / std
    return pixels
