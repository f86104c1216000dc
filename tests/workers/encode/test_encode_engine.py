"""The vision engine through from_pretrained: patch features through the projector, batched like solo."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from workers.encode.tiny import PROJECTOR_CONFIG


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40 + 7 * i, 30 + 5 * i), (20 * i, 255 - 20 * i, 90)) for i in range(n)]


def test_clip_tower_gives_patch_tokens_projected_to_the_lm_hidden_size(clip_dir, make_encoder):
    engine = make_encoder(clip_dir, served_name="tiny-clip")
    (embedding,) = engine.encode(images(1))
    assert (engine.num_image_tokens, engine.hidden_size) == (16, 64)  # (64/16)^2 patches, CLS dropped
    assert embedding.shape == (16, 64) and embedding.dtype == torch.float32 and embedding.device.type == "cpu"
    assert engine.model_name == "tiny-clip" and engine.num_forwards == 1


def test_a_batch_is_one_forward_and_matches_each_image_alone(clip_dir, make_encoder):
    engine = make_encoder(clip_dir)
    batch = engine.encode(images(8))
    alone = [engine.encode([image])[0] for image in images(8)]
    assert engine.num_forwards == 9 and engine.num_images == 16
    for together, solo in zip(batch, alone):
        torch.testing.assert_close(together, solo, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])  # different images, different embeddings
    assert batch[0].untyped_storage().nbytes() == batch[0].nbytes  # a row owns its storage (the cache counts it)


def test_siglip_tower_keeps_every_patch_token(siglip_dir, make_encoder):
    engine = make_encoder(siglip_dir)
    (embedding,) = engine.encode(images(1))
    assert embedding.shape == (16, 48) and engine.hidden_size == 48


def test_an_earlier_feature_layer_changes_the_features(clip_dir, make_encoder):
    last, earlier = make_encoder(clip_dir), make_encoder(clip_dir, feature_layer=-2)
    assert not torch.allclose(last.encode(images(1))[0], earlier.encode(images(1))[0])


def test_without_a_projector_the_tower_features_are_the_embedding(clip_dir, make_encoder, tmp_path):
    import shutil

    bare = tmp_path / "bare-clip"
    shutil.copytree(clip_dir, bare, ignore=shutil.ignore_patterns("diffmesh_projector*"))
    engine = make_encoder(bare)
    assert not (bare / PROJECTOR_CONFIG).exists()
    assert engine.hidden_size == 64 and engine.encode(images(1))[0].shape == (16, 64)


def test_a_model_that_is_not_a_vision_tower_is_refused(tmp_path, make_encoder):
    from workers.dllm.tiny import ensure_tiny_dllm

    with pytest.raises(ValueError, match="'llama' model; the encode worker takes"):
        make_encoder(ensure_tiny_dllm(tmp_path, block_size=8, context_length=64))
