"""Registry of supported diffusers text-to-image pipeline families, with their per-family defaults.

A family is found from the `_class_name` in the model directory's `model_index.json`. Defaults (steps, guidance,
size) may be overridden per model by a `diffmesh.json` next to `model_index.json` and per worker by config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from protocol.errors import InvalidRequest

FLUX_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)  # TeaCache's fits
WAN_T2V_1_3B_COEFFICIENTS = (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01)

STEP_CACHES = ("deepcache", "first_block", "teacache")  # UNet adaptive DeepCache; DiT First Block Cache, TeaCache
QUALITY_STEP_FACTORS = {"auto": 1.0, "standard": 1.0, "medium": 1.0, "low": 0.5, "high": 1.5, "hd": 1.5, "xhigh": 2.0, "max": 2.5}
MODEL_OVERRIDES_FILE = "diffmesh.json"


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str  # diffusers class named in model_index.json
    denoiser: Literal["unet", "transformer"]
    default_steps: int
    default_guidance: float
    min_multiple: int = 1  # sizes are multiples of max(min_multiple, vae factor x patch)
    is_packed: bool = False  # latents are 2x2-packed token sequences (FLUX-style)
    uses_shift: bool = False  # decode adds vae.config.shift_factor after unscaling
    supports_negative_prompt: bool = True
    step_caches: tuple[str, ...] = ()  # from STEP_CACHES; the first is what `step_cache: true` picks
    teacache_coefficients: tuple[float, ...] | None = None  # TeaCache's fit for the family's reference checkpoint
    call_kwargs: dict = field(default_factory=dict)  # fixed extra pipeline kwargs
    kind: Literal["image", "video"] = "image"
    default_size: tuple[int, int] | None = None  # (width, height) when the denoiser config has no sample size
    default_frames: int = 0  # video: frames when a request names neither num_frames nor seconds
    default_fps: int = 0
    frame_multiple: int = 1  # video: num_frames - 1 must be a multiple of this (the VAE's temporal factor)


FAMILIES: tuple[Family, ...] = (
    Family("stable-diffusion", "StableDiffusionPipeline", "unet", 30, 7.5, min_multiple=8, step_caches=("deepcache",)),
    Family("stable-diffusion-xl", "StableDiffusionXLPipeline", "unet", 30, 5.0, min_multiple=8,
           step_caches=("deepcache",)),
    Family("stable-diffusion-3", "StableDiffusion3Pipeline", "transformer", 28, 7.0, uses_shift=True),
    Family("flux", "FluxPipeline", "transformer", 28, 3.5, is_packed=True, uses_shift=True,
           supports_negative_prompt=False, step_caches=("first_block", "teacache"),
           teacache_coefficients=FLUX_COEFFICIENTS),
    Family("chroma", "ChromaPipeline", "transformer", 28, 5.0, is_packed=True, uses_shift=True),
    Family("cogview4", "CogView4Pipeline", "transformer", 50, 5.0, step_caches=("first_block",)),
    Family("lumina2", "Lumina2Pipeline", "transformer", 30, 4.0, uses_shift=True),
    Family("sana", "SanaPipeline", "transformer", 20, 4.5, call_kwargs={"use_resolution_binning": False}),
    Family("auraflow", "AuraFlowPipeline", "transformer", 50, 3.5),
    Family("wan", "WanPipeline", "transformer", 50, 5.0, step_caches=("first_block", "teacache"),
           teacache_coefficients=WAN_T2V_1_3B_COEFFICIENTS, kind="video", default_size=(832, 480), default_frames=81,
           default_fps=16,
           frame_multiple=4),
)
VERIFIED_FAMILIES = ("stable-diffusion", "flux", "wan")  # run for real in this repo's tests; the rest follow diffusers' code


def supported_names() -> str:
    return ", ".join(f"{f.name} ({f.pipeline_class})" for f in FAMILIES)


def family_for_class(class_name: str) -> Family:
    """The family of a diffusers pipeline class; raises InvalidRequest naming the supported ones."""
    for family in FAMILIES:
        if family.pipeline_class == class_name:
            return family
    raise InvalidRequest(f"unsupported pipeline {class_name!r}; supported: {supported_names()}", param="$.model")


def read_model_index(model_dir: Path) -> dict:
    path = model_dir / "model_index.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{model_dir} has no model_index.json (not a diffusers pipeline)", param="$.model") from None


def read_model_overrides(model_dir: Path) -> dict:
    """Optional per-model defaults: {"default_size": [w, h], "default_steps", "default_guidance", "call_kwargs",
    "step_cache_threshold", "teacache_threshold", "teacache_coefficients", "default_frames", "default_fps"}."""
    path = model_dir / MODEL_OVERRIDES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def quality_steps(default_steps: int, quality: str) -> int:
    """Steps for an OpenAI `quality` value, as a preset relative to the model's default steps."""
    factor = QUALITY_STEP_FACTORS.get(quality)
    if factor is None:
        raise InvalidRequest(f"quality must be one of {sorted(QUALITY_STEP_FACTORS)}, got {quality!r}", param="$.quality")
    return max(1, round(default_steps * factor))
