"""Builds a tiny CLIP or SigLIP vision tower with a projector offline (random weights), once, into the model cache.

Saved with save_pretrained next to a Pil image processor and `diffmesh_projector.json` + `.safetensors`, so the
encode worker loads it through the same from_pretrained path as a real vision tower.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workers.modelcache import ensure_built

PROJECTOR_CONFIG = "diffmesh_projector.json"
PROJECTOR_WEIGHTS = "diffmesh_projector.safetensors"


@dataclass(frozen=True)
class TinyEncoderSpec:
    """Shape of a tiny vision encoder; every field is part of the directory name."""

    family: Literal["clip", "siglip"] = "clip"
    image_size: int = 64
    patch_size: int = 16  # (64 / 16)^2 = 16 patch tokens per image
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    out_hidden: int = 64  # projector output: the language model's hidden size
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    seed: int = 0

    @property
    def dirname(self) -> str:
        return (f"tiny-{self.family}-s{self.image_size}-p{self.patch_size}-h{self.hidden_size}-l{self.num_layers}"
                f"-o{self.out_hidden}-{self.projector}-s{self.seed}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def ensure_tiny_encoder(cache_dir: str | os.PathLike, spec: TinyEncoderSpec | None = None, **overrides) -> Path:
    """Return the tiny encoder's directory under `cache_dir`, building it on first use (idempotent, atomic)."""
    spec = spec or TinyEncoderSpec(**overrides)
    return ensure_built(cache_dir, spec.dirname, lambda staging: build_tiny_encoder(staging, spec))


def build_tiny_encoder(directory: Path, spec: TinyEncoderSpec) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(spec.seed)
    tower, processor = _tower_and_processor(spec)
    tower.save_pretrained(directory)
    processor.save_pretrained(directory)
    save_projector(directory, build_projector(spec.projector, spec.hidden_size, spec.out_hidden))


def _tower_and_processor(spec: TinyEncoderSpec):
    shape = dict(image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=spec.hidden_size,
                 intermediate_size=2 * spec.hidden_size, num_hidden_layers=spec.num_layers,
                 num_attention_heads=spec.num_heads)
    size = {"height": spec.image_size, "width": spec.image_size}
    if spec.family == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel
        from transformers.models.siglip import SiglipImageProcessorPil

        return SiglipVisionModel(SiglipVisionConfig(**shape)), SiglipImageProcessorPil(size=size)
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": spec.image_size}, crop_size=size)
    return CLIPVisionModel(CLIPVisionConfig(**shape)), processor


def build_projector(kind: str, in_features: int, out_features: int):
    """LLaVA's projectors: `linear`, or `mlp2x_gelu` (Linear, GELU, Linear)."""
    import torch

    if kind == "linear":
        return torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    if kind == "mlp2x_gelu":
        return torch.nn.Sequential(torch.nn.Linear(in_features, out_features), torch.nn.GELU(),
                                   torch.nn.Linear(out_features, out_features))
    raise ValueError(f"unknown projector {kind!r}; use linear or mlp2x_gelu")


def save_projector(directory: Path, projector, feature_layer: int = -1) -> None:
    from safetensors.torch import save_file

    first, last = projector[0], projector[-1]
    kind = "linear" if len(projector) == 1 else "mlp2x_gelu"
    config = {"projector": kind, "in_features": first.in_features, "out_features": last.out_features,
              "feature_layer": feature_layer}
    (directory / PROJECTOR_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(directory / PROJECTOR_WEIGHTS))
