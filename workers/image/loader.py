"""Load a diffusers pipeline (local directory or hub id), find its family, and derive its request limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.errors import InvalidRequest
from workers.image.families import VERIFIED_FAMILIES, Family, family_for_class, read_model_overrides
from workers.image.request import ModelLimits
from workers.image.stepcache import (
    DEFAULT_FIRST_BLOCK_THRESHOLD,
    DEFAULT_TEACACHE_THRESHOLD,
    DEFAULT_UNET_THRESHOLD,
    FirstBlockStepCache,
    TeaStepCache,
    UNetStepCache,
)

log = logging.getLogger("diffmesh.image")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedPipeline:
    pipe: object  # a diffusers DiffusionPipeline
    family: Family
    limits: ModelLimits
    device: torch.device
    denoiser: torch.nn.Module  # pipe.unet or pipe.transformer
    step_caches: dict[str, UNetStepCache | FirstBlockStepCache | TeaStepCache]  # by kind, in the family's order
    call_kwargs: dict  # family + per-model fixed pipeline kwargs
    edit_pipes: dict[str, object]  # img2img / inpaint pipelines sharing the components (AutoPipeline.from_pipe)

    def pipe_for(self, kind: str):
        return self.pipe if kind == "generate" else self.edit_pipes[kind]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def load_pipeline(config) -> LoadedPipeline:
    """Load `config.model` (an EngineConfig) onto its device; raises InvalidRequest for unsupported pipelines."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(config.model)
    family = family_for_class(index.get("_class_name", "?"))
    if family.name not in VERIFIED_FAMILIES:
        log.warning("%s pipelines follow diffusers' code but are not exercised by diffmesh's tests", family.name)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    pipe = DiffusionPipeline.from_pretrained(config.model, dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    _place(pipe, device, config.cpu_offload)
    _upcast_vae_if_needed(pipe)
    overrides = read_model_overrides(Path(config.model)) if Path(config.model).is_dir() else {}
    denoiser = pipe.unet if family.denoiser == "unet" else pipe.transformer
    step_caches = _build_step_caches(family, denoiser, config, overrides)
    edit_pipes = build_edit_pipes(pipe) if family.kind == "image" else {}
    limits = build_limits(pipe, family, denoiser, config, overrides, tuple(step_caches), tuple(edit_pipes))
    call_kwargs = {**family.call_kwargs, **overrides.get("call_kwargs", {})}
    log.info("loaded %s as %s on %s (%s)", config.model, family.name, device, dtype)
    return LoadedPipeline(pipe, family, limits, device, denoiser, step_caches, call_kwargs, edit_pipes)


def build_edit_pipes(pipe) -> dict[str, object]:
    """img2img and inpaint pipelines of the same family, sharing every component (no extra memory)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    pipes = {}
    for kind, auto in (("img2img", AutoPipelineForImage2Image), ("inpaint", AutoPipelineForInpainting)):
        try:
            edit = auto.from_pipe(pipe)
        except ValueError:  # no such pipeline for this family
            continue
        edit.set_progress_bar_config(disable=True)
        pipes[kind] = edit
    return pipes


def _place(pipe, device: torch.device, cpu_offload: bool) -> None:
    if not cpu_offload:
        pipe.to(device)
        return
    if device.type != "cuda":
        raise ValueError("cpu_offload needs a CUDA device (it moves each component to the GPU only while it runs)")
    pipe.enable_model_cpu_offload(device=device)


def _upcast_vae_if_needed(pipe) -> None:
    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16; the pipelines upcast it the same way


def _build_step_caches(family: Family, denoiser, config, overrides: dict) -> dict:
    threshold = config.step_cache_threshold or overrides.get("step_cache_threshold")
    caches: dict = {}
    for kind in family.step_caches:
        if kind == "deepcache":
            caches[kind] = UNetStepCache(denoiser, threshold or DEFAULT_UNET_THRESHOLD, config.step_cache_max_skips)
        elif kind == "first_block":
            caches[kind] = FirstBlockStepCache(denoiser, threshold or DEFAULT_FIRST_BLOCK_THRESHOLD)
        elif kind == "teacache":
            tea_threshold = config.teacache_threshold or overrides.get("teacache_threshold") or DEFAULT_TEACACHE_THRESHOLD
            coefficients = overrides.get("teacache_coefficients") or family.teacache_coefficients
            caches[kind] = TeaStepCache(denoiser, tea_threshold, coefficients)
    if config.step_cache_kind and config.step_cache_kind in caches:  # the worker's choice of default kind first
        caches = {config.step_cache_kind: caches[config.step_cache_kind], **caches}
    return caches


def build_limits(pipe, family: Family, denoiser, config, overrides: dict, step_caches: tuple[str, ...] = (),
                 edit_kinds: tuple[str, ...] = ()) -> ModelLimits:
    """Size bounds, multiples and defaults for one loaded pipeline (config and diffmesh.json override them)."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    vae_factor = int(getattr(pipe, "vae_scale_factor_spatial", vae_factor))
    patch = getattr(denoiser.config, "patch_size", 1) or 1
    patch = 2 if family.is_packed else int(patch[-1] if isinstance(patch, (list, tuple)) else patch)
    multiple = max(family.min_multiple, vae_factor * patch)
    width, height = overrides.get("default_size") or family.default_size or _native_size(pipe, denoiser, vae_factor)
    width, height = _round_to(width, multiple), _round_to(height, multiple)
    max_side = config.max_side or overrides.get("max_side") or 2 * max(width, height)
    min_side = max(multiple, _round_to(min(width, height) // 4, multiple))
    default_steps = config.default_steps or overrides.get("default_steps") or family.default_steps
    if default_steps > config.max_steps:
        raise ValueError(f"default steps {default_steps} exceed max_steps {config.max_steps}")
    guidance = config.default_guidance
    if guidance is None:
        guidance = overrides.get("default_guidance", family.default_guidance)
    return ModelLimits(
        default_width=width, default_height=height, min_side=min_side, max_side=max_side, size_multiple=multiple,
        default_steps=default_steps, max_steps=config.max_steps, default_guidance=float(guidance),
        supports_negative_prompt=family.supports_negative_prompt, supports_step_cache=bool(step_caches),
        step_caches=step_caches, edit_kinds=edit_kinds, **_video_limits(family, config, overrides),
    )


def _video_limits(family: Family, config, overrides: dict) -> dict:
    if family.kind != "video":
        return {}
    frames = int(overrides.get("default_frames") or family.default_frames)
    multiple = family.frame_multiple
    max_frames = config.max_frames or 4 * (frames - 1) + 1
    return {"default_frames": frames, "default_fps": int(overrides.get("default_fps") or family.default_fps),
            "frame_multiple": multiple, "max_frames": max_frames}


def _native_size(pipe, denoiser, vae_factor: int) -> tuple[int, int]:
    sample = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
    if isinstance(sample, (list, tuple)):
        return sample[1] * vae_factor, sample[0] * vae_factor
    return sample * vae_factor, sample * vae_factor


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def decode_latents(loaded: LoadedPipeline, latents: torch.Tensor, width: int, height: int) -> list:
    """PIL images from final or intermediate latents, one VAE call per image (so batching cannot change them)."""
    pipe, vae = loaded.pipe, loaded.pipe.vae
    if loaded.family.is_packed:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    latents = _unscale(vae, latents.to(vae.dtype), loaded.family.uses_shift)
    images = [vae.decode(latents[i : i + 1], return_dict=False)[0] for i in range(latents.shape[0])]
    return pipe.image_processor.postprocess(torch.cat(images), output_type="pil")


def _unscale(vae, latents: torch.Tensor, uses_shift: bool) -> torch.Tensor:
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return latents * std / cfg.scaling_factor + mean
    shift = getattr(cfg, "shift_factor", None) if uses_shift else None
    return latents / cfg.scaling_factor + (shift or 0.0)


def check_model_exists(model: str) -> None:
    """Fail early with a clear message when a local-looking path is missing."""
    if model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        raise InvalidRequest(f"model directory {model!r} does not exist", param="$.model")
