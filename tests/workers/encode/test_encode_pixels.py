"""The batched preprocessing gives the checkpoint's own image processor's pixel_values."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from workers.encode.pixels import pixel_spec, prepare, to_pixels

SIZES = [(320, 240), (240, 320), (64, 64), (97, 301), (65, 64)]


def images() -> list[Image.Image]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in SIZES]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_prepared_batches_equal_the_processor_output(family, clip_dir, siglip_dir, make_encoder):
    engine = make_encoder(clip_dir if family == "clip" else siglip_dir)
    spec = pixel_spec(engine.processor)
    assert spec is not None and (spec.shortest_edge is not None) == (family == "clip")
    ours = to_pixels([prepare(image, spec) for image in images()], spec)
    theirs = engine.processor(images=images(), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_a_crop_larger_than_the_resized_image_is_left_to_the_processor(clip_dir, make_encoder):
    spec = make_encoder(clip_dir).pixels
    wide = Image.new("RGB", (400, 20), (9, 9, 9))  # shortest edge 64: resized to 1280x64, the 64x64 crop fits
    assert prepare(wide, spec).shape == (64, 64, 3)
    assert prepare(wide, spec.__class__(**{**spec.__dict__, "crop": (80, 80)})) is None  # would need padding


def test_processor_path_and_mixed_batches_give_the_same_embeddings(clip_dir, make_encoder):
    fast, slow = make_encoder(clip_dir), make_encoder(clip_dir)
    slow.pixels = None  # every image through transformers' processor
    batch = images()[:3]
    expected = fast.encode(batch)
    mixed = fast.encode_prepared([fast.prepare(batch[0]), batch[1], fast.prepare(batch[2])])
    for reference, got in ((expected, slow.encode(batch)), (expected, mixed)):
        for a, b in zip(reference, got):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
