"""Tiny default pipelines: built once, reused, loaded through from_pretrained with the right class."""

from __future__ import annotations

import json

from workers.image.families import read_model_index
from workers.image.tiny import ensure_tiny_image


def test_ensure_tiny_image_is_idempotent(image_models, sd_dir):
    marker = sd_dir / "diffmesh.json"
    built_at = marker.stat().st_mtime_ns
    assert ensure_tiny_image(image_models, "sd") == sd_dir
    assert marker.stat().st_mtime_ns == built_at  # reused, not rebuilt
    assert json.loads(marker.read_text())["default_size"] == [64, 64]


def test_tiny_pipelines_name_their_classes(sd_dir, flux_dir):
    assert read_model_index(sd_dir)["_class_name"] == "StableDiffusionPipeline"
    assert read_model_index(flux_dir)["_class_name"] == "FluxPipeline"
    assert (flux_dir / "transformer" / "config.json").is_file()
