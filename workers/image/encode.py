"""Encode PIL images to png/jpeg/webp bytes deterministically (same pixels and options, same bytes)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

DEFAULT_COMPRESSION = 100  # OpenAI's default output_compression; used as the jpeg/webp quality
KEY_NEAR = 12.0  # RGB distance to the background colour at which a pixel is fully transparent
KEY_FAR = 40.0  # ... and from which it is fully opaque (linear ramp in between)


def encode_image(image: Image.Image, output_format: str, compression: int | None = None, is_transparent: bool = False) -> bytes:
    """Bytes of `image` in `output_format`; transparent output (png/webp, checked upstream) keys out the background."""
    image = key_out_background(image) if is_transparent else image.convert("RGB")
    quality = DEFAULT_COMPRESSION if compression is None else compression
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
    elif output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4, exact=True)
    else:
        raise ValueError(f"unsupported output_format {output_format!r}")
    return buffer.getvalue()


def key_out_background(image: Image.Image) -> Image.Image:
    """RGBA image whose pixels close to the border's median colour are transparent (a chroma key, no matting model)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(rgb - background, axis=-1)
    alpha = np.clip((distance - KEY_NEAR) / (KEY_FAR - KEY_NEAR), 0.0, 1.0)
    rgba = np.dstack([rgb, alpha * 255.0]).round().astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA")
