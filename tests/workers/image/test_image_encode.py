"""Output encoding: formats, compression, transparent backgrounds, determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workers.image.encode import encode_image


def _picture() -> Image.Image:
    """A white canvas with a red square in the middle."""
    pixels = np.full((32, 32, 3), 255, np.uint8)
    pixels[8:24, 8:24] = (200, 20, 20)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_encoding_is_deterministic_and_decodable(output_format):
    data = encode_image(_picture(), output_format)
    assert data == encode_image(_picture(), output_format)
    assert Image.open(io.BytesIO(data)).size == (32, 32)


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_lower_compression_value_gives_smaller_files(output_format):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(encode_image(noisy, output_format, 20)) < len(encode_image(noisy, output_format, 95))


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_transparent_keys_out_the_border_colour(output_format):
    decoded = Image.open(io.BytesIO(encode_image(_picture(), output_format, is_transparent=True)))
    alpha = np.asarray(decoded.convert("RGBA"))[..., 3]
    assert decoded.mode == "RGBA"
    assert alpha[0, 0] == 0 and alpha[16, 16] == 255
