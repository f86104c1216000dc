"""Validate an ImageRequest against the loaded model's limits and resolve it into a JobSpec (no torch here)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from protocol.errors import InvalidRequest
from protocol.work import ImageRequest
from workers.image.edits import EditInput, decode_edit_files, resolve_edit
from workers.image.families import quality_steps

MAX_IMAGES_PER_REQUEST = 10
MAX_PARTIAL_IMAGES = 3
MAX_SEED = 2**63 - 1
OUTPUT_FORMATS = ("png", "jpeg", "webp")
TRANSPARENT_FORMATS = ("png", "webp")


@dataclass(frozen=True)
class ModelLimits:
    """What one loaded pipeline accepts; sizes in pixels."""

    default_width: int
    default_height: int
    min_side: int
    max_side: int
    size_multiple: int  # VAE factor x patch size (and >= 8 where the pipeline insists)
    default_steps: int
    max_steps: int
    default_guidance: float
    supports_negative_prompt: bool
    supports_step_cache: bool
    step_caches: tuple[str, ...] = ()  # cache kinds this pipeline takes (deepcache | first_block | teacache); [0] = default
    edit_kinds: tuple[str, ...] = ()  # img2img / inpaint pipelines of the same family
    default_frames: int = 0  # video pipelines: frames, frame rate and the frame-count grid (num_frames - 1) % multiple
    default_fps: int = 0
    frame_multiple: int = 1
    max_frames: int = 0


@dataclass(frozen=True)
class JobSpec:
    """One validated request: everything the pipeline call and the encoder need."""

    request_id: str
    prompt: str
    negative_prompt: str  # "" = none (what the pipelines use for unconditional guidance)
    n: int
    width: int
    height: int
    steps: int
    guidance: float
    seeds: tuple[int, ...]  # one per image: seed, seed + 1, ... (mod 2**63)
    output_format: str
    output_compression: int | None
    is_transparent: bool
    response_format: str
    user: str | None
    partial_steps: tuple[int, ...]  # 0-based step indices after which a partial image is decoded
    step_cache: str | None  # cache kind for this request, None = off
    is_streaming: bool = False
    edit: EditInput | None = None  # edits: the input image (and mask), resized to width x height

    @property
    def kind(self) -> str:
        return self.edit.kind if self.edit else "generate"

    def batch_key(self, is_cache_batch_invariant: bool) -> tuple:
        """Jobs with equal keys may share one pipeline call without changing each other's bytes."""
        key = (self.width, self.height, self.steps, self.guidance, self.step_cache, self.kind,
               self.edit.strength if self.edit else None)
        if self.step_cache and not is_cache_batch_invariant:
            key += (self.request_id,)  # a per-batch cache decision would couple requests: run alone
        return key


def resolve_request(request: ImageRequest, limits: ModelLimits, default_step_cache: bool) -> JobSpec:
    """Check every field and fill defaults; raises InvalidRequest naming the offending field."""
    _check_basics(request)
    files = decode_edit_files(request, limits) if request.images else None
    width, height = _resolve_size(request, limits, files[0].size if files else None)
    steps = _resolve_steps(request, limits)
    edit = resolve_edit(request, files, width, height, steps) if files else None
    run_steps = edit.num_steps if edit else steps
    return JobSpec(
        request_id=request.request_id,
        prompt=request.prompt,
        negative_prompt=_resolve_negative(request, limits),
        n=request.n,
        width=width,
        height=height,
        steps=steps,
        guidance=_resolve_guidance(request, limits),
        seeds=image_seeds(request.seed, request.n),
        output_format=request.output_format,
        output_compression=request.output_compression,
        is_transparent=request.background == "transparent",
        response_format=request.response_format,
        user=request.user,
        partial_steps=partial_steps(run_steps, request.partial_images) if request.stream else (),
        step_cache=resolve_step_cache(request.step_cache, limits, default_step_cache),
        is_streaming=request.stream,
        edit=edit,
    )


def resolve_step_cache(asked: bool | str | None, limits: ModelLimits, default: bool | str) -> str | None:
    """The cache kind a request runs with: its own choice (true = the model's default kind), else the worker's."""
    choice = default if asked is None else asked
    if choice is False or not limits.step_caches:
        if asked:
            raise InvalidRequest("this model's pipeline has no step cache", param="$.nvext.step_cache")
        return None
    if choice is True:
        return limits.step_caches[0]
    if choice not in limits.step_caches:
        if asked is None:
            return limits.step_caches[0]  # a worker default naming another family's cache: use this one's
        raise InvalidRequest(f"step_cache {choice!r} does not apply to this model; it takes {list(limits.step_caches)}",
                             param="$.nvext.step_cache")
    return choice


def _check_basics(request: ImageRequest) -> None:
    if not request.prompt:
        raise InvalidRequest("prompt must not be empty", param="$.prompt")
    if not 1 <= request.n <= MAX_IMAGES_PER_REQUEST:
        raise InvalidRequest(f"n must be between 1 and {MAX_IMAGES_PER_REQUEST}, got {request.n}", param="$.n")
    if request.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"output_format must be one of {OUTPUT_FORMATS}, got {request.output_format!r}", param="$.output_format")
    _check_compression(request)
    if request.background == "transparent" and request.output_format not in TRANSPARENT_FORMATS:
        raise InvalidRequest("background=transparent needs output_format png or webp", param="$.background")
    if request.response_format not in ("b64_json", "url"):
        raise InvalidRequest(f"response_format must be b64_json or url, got {request.response_format!r}", param="$.response_format")
    if not 0 <= request.partial_images <= MAX_PARTIAL_IMAGES:
        raise InvalidRequest(f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}", param="$.partial_images")
    if request.partial_images and not request.stream:
        raise InvalidRequest("partial_images needs stream=true", param="$.partial_images")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}", param="$.seed")


def _check_compression(request: ImageRequest) -> None:
    compression = request.output_compression
    if compression is None:
        return
    if not 0 <= compression <= 100:
        raise InvalidRequest(f"output_compression must be between 0 and 100, got {compression}", param="$.output_compression")
    if request.output_format == "png":
        raise InvalidRequest("output_compression applies to jpeg and webp only", param="$.output_compression")


def _resolve_size(request: ImageRequest, limits: ModelLimits, edit_size: tuple[int, int] | None = None) -> tuple[int, int]:
    if request.width is None and request.height is None:
        if edit_size is not None:  # size=auto on an edit: the input's size, on the model's grid and within bounds
            return tuple(min(max(s // limits.size_multiple * limits.size_multiple, limits.min_side), limits.max_side)
                         for s in edit_size)  # type: ignore[return-value]
        return limits.default_width, limits.default_height
    width, height = request.width, request.height
    if width is None or height is None:
        raise InvalidRequest("size needs both width and height (WxH) or auto", param="$.size")
    for side in (width, height):
        if not limits.min_side <= side <= limits.max_side:
            raise InvalidRequest(
                f"size {width}x{height} is outside this model's bounds: each side {limits.min_side}..{limits.max_side}",
                param="$.size",
            )
        if side % limits.size_multiple:
            raise InvalidRequest(
                f"size {width}x{height}: each side must be a multiple of {limits.size_multiple} for this model",
                param="$.size",
            )
    return width, height


def _resolve_steps(request: ImageRequest, limits: ModelLimits) -> int:
    steps = request.num_inference_steps
    if steps is None:
        return min(quality_steps(limits.default_steps, request.quality), limits.max_steps)
    if not 1 <= steps <= limits.max_steps:
        raise InvalidRequest(f"num_inference_steps must be between 1 and {limits.max_steps}, got {steps}", param="$.nvext.num_inference_steps")
    quality_steps(limits.default_steps, request.quality)  # still reject an unknown quality
    return steps


def _resolve_guidance(request: ImageRequest, limits: ModelLimits) -> float:
    guidance = request.guidance_scale
    if guidance is None:
        return limits.default_guidance
    if not 0.0 <= guidance <= 100.0:
        raise InvalidRequest(f"guidance_scale must be between 0 and 100, got {guidance}", param="$.nvext.guidance_scale")
    return float(guidance)


def _resolve_negative(request: ImageRequest, limits: ModelLimits) -> str:
    if request.negative_prompt and not limits.supports_negative_prompt:
        raise InvalidRequest("this model's pipeline takes no negative_prompt", param="$.nvext.negative_prompt")
    return request.negative_prompt or ""


def image_seeds(seed: int | None, n: int) -> tuple[int, ...]:
    """Per-image seeds: image i uses seed + i, so image 0 of n=3 equals the n=1 image of the same seed."""
    base = secrets.randbits(63) if seed is None else seed
    return tuple((base + i) % (MAX_SEED + 1) for i in range(n))


def partial_steps(steps: int, num_partials: int) -> tuple[int, ...]:
    """Evenly spaced step indices for partial images, all before the last step (may be fewer than asked)."""
    if num_partials <= 0 or steps < 2:
        return ()
    chosen = {round((k + 1) * steps / (num_partials + 1)) - 1 for k in range(num_partials)}
    return tuple(sorted(i for i in chosen if 0 <= i < steps - 1))
