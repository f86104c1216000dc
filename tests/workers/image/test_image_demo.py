"""The trained demo image model `diffmesh up` serves: it draws the shape and the colours a prompt names."""

from __future__ import annotations

import pytest

from tests.workers.image.kit import collect, decode, finals, image_request
from workers.image import shapes
from workers.image.engine import EngineConfig, ImageEngine
from workers.image.storage import StorageConfig
from workers.image.tiny import DEMO_MODEL_DIR
from workers.image.train import train


@pytest.fixture
async def demo_engine(media_dir):
    engine = ImageEngine(EngineConfig(model=str(DEMO_MODEL_DIR), storage=StorageConfig(url=str(media_dir))))
    await engine.start()
    yield engine
    await engine.stop()


@pytest.mark.parametrize(("prompt", "fg", "bg"), [("a red circle on blue", "red", "blue"),
                                                  ("a yellow square on black", "yellow", "black")])
async def test_the_shape_is_in_the_named_colour_on_the_named_background(demo_engine, prompt, fg, bg):
    images = [decode(o.data) for o in finals(await collect(demo_engine, image_request(prompt=prompt, n=2, seed=1,
                                                                                      num_inference_steps=20)))]
    for image in images:
        assert image.size == (64, 64)
        assert shapes.colour_share(image, fg, shapes.centre_disk(9)) >= 0.6  # where the shape is
        assert shapes.colour_share(image, bg, shapes.border(6)) >= 0.6  # around it
        assert shapes.colour_share(image, fg, shapes.border(6)) <= 0.1


def test_the_training_script_writes_a_loadable_pipeline(tmp_path):
    out = train(tmp_path / "demo", vae_steps=1, unet_steps=1, log_every=1)
    assert {"model_index.json", "diffmesh.json", "unet", "vae", "text_encoder", "tokenizer"} <= {p.name for p in out.iterdir()}
