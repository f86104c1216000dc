"""Engine configuration (one frozen dataclass per process) and per-request parameter resolution with validation.

Pure: no torch. Every invalid request parameter raises protocol.errors.InvalidRequest naming its JSON path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from shell.config import ConfigError
from protocol.errors import InvalidRequest
from protocol.work import DiffusionOptions, SamplingOptions

Attention = Literal["auto", "full", "block_causal"]
Remasking = Literal["low_confidence", "random"]


@dataclass(frozen=True)
class DllmConfig:
    """Everything the dLLM engine needs to load a model and serve it."""

    model: str  # local directory or hub id
    served_model_name: str | None = None  # None = the model directory's name
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    attention: Attention = "auto"  # auto = config.json `dllm_attention`, else full for MLMs, else by model type
    block_size: int | None = None  # tokens per block and per KV-cache block; None = config.json or 32
    mask_format: Literal["auto", "4d", "2d"] = "auto"  # auto: 4-D for transformers classes, 2-D padding for remote code
    default_steps: int | None = None  # None = one token per step (LLaDA's best quality)
    default_threshold: float | None = None  # None = fixed tokens per step
    default_use_cache: bool = True  # block KV cache for block-causal models
    mask_id: int | None = None  # None = config.json `mask_token_id`, else tokenizer.mask_token_id
    eos_ids: tuple[int, ...] | None = None  # None = tokenizer/config EOS plus known end-of-turn tokens
    suppress_ids: tuple[int, ...] = ()  # never generated, in addition to mask and pad
    max_batch: int = 8  # sequences denoised together
    max_queue: int = 32  # sequences waiting for a batch slot
    max_cache_blocks: int = 4096  # cross-request prefix cache budget, in blocks
    max_forward_passes: int | None = None  # per request; None = 2 x generated positions + 8
    max_padding_ratio: float = 2.0  # a batched forward may run at most this many times the real tokens
    seed: int = 0  # seeds requests that carry no seed, in arrival order
    vision_encoder: str | None = None  # served name of the encode model whose embeddings fill the image placeholders
    image_token_id: int | None = None  # None = config.json image_token_id / image_token_index
    num_image_tokens: int | None = None  # placeholders per image; None = config.json image_seq_length / mm_tokens_per_image

    def __post_init__(self) -> None:
        for name in ("eos_ids", "suppress_ids"):  # env vars arrive as "1,2,3"
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, _parse_ids(name, value))
        _require(self.attention in ("auto", "full", "block_causal"), "attention", self.attention)
        _require(self.mask_format in ("auto", "4d", "2d"), "mask_format", self.mask_format)
        _require(self.block_size is None or self.block_size >= 1, "block_size", self.block_size)
        _require(self.default_steps is None or self.default_steps >= 1, "default_steps", self.default_steps)
        _require(
            self.default_threshold is None or 0.0 < self.default_threshold <= 1.0,
            "default_threshold",
            self.default_threshold,
        )
        _require(self.max_batch >= 1, "max_batch", self.max_batch)
        _require(self.max_queue >= 0, "max_queue", self.max_queue)
        _require(self.max_cache_blocks >= 0, "max_cache_blocks", self.max_cache_blocks)
        _require(self.max_forward_passes is None or self.max_forward_passes >= 1, "max_forward_passes", self.max_forward_passes)
        _require(self.max_padding_ratio >= 1.0, "max_padding_ratio", self.max_padding_ratio)
        _require(self.dtype in ("float32", "bfloat16", "float16", "auto"), "dtype", self.dtype)
        _require(self.image_token_id is None or self.image_token_id >= 0, "image_token_id", self.image_token_id)
        _require(self.num_image_tokens is None or self.num_image_tokens >= 1, "num_image_tokens", self.num_image_tokens)


def _require(ok: bool, name: str, value) -> None:
    if not ok:
        raise ConfigError(f"invalid dLLM engine setting {name}={value!r}")


def _parse_ids(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid dLLM engine setting {name}={text!r}: expected comma-separated token ids") from exc


@dataclass(frozen=True)
class RequestParams:
    """One request's resolved generation parameters."""

    max_tokens: int  # completion tokens returned at most
    block_length: int  # tokens per denoising block (and attention group for block-causal models)
    steps: int  # denoising steps over the generated positions
    threshold: float | None  # Fast-dLLM confidence threshold; None = fixed tokens per step
    remasking: Remasking
    cfg_scale: float
    temperature: float
    top_p: float
    seed: int | None
    use_cache: bool  # block KV cache (block-causal models, no CFG)
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    logprobs: int | None = None  # None: none; k: each committed token's log-probability and k alternatives
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model allows; input to resolve_params."""

    attention: Literal["full", "block_causal"]
    block_size: int
    context_length: int
    default_steps: int | None = None
    default_threshold: float | None = None
    default_use_cache: bool = True
    can_cache: bool = True  # block-causal and the model accepts a KV cache


def resolve_params(
    sampling: SamplingOptions, diffusion: DiffusionOptions | None, prompt_len: int, limits: ModelLimits
) -> RequestParams:
    """Merge request options with the model defaults; raise InvalidRequest(param=...) for invalid ones."""
    opts = diffusion or DiffusionOptions()
    _check(sampling.max_tokens >= 1, "$.max_tokens", f"max_tokens must be >= 1, got {sampling.max_tokens}")
    block_length = _block_length(opts, sampling.max_tokens, limits)
    canvas_len = canvas_length(prompt_len, sampling.max_tokens, block_length, limits.attention)
    _check(
        canvas_len <= limits.context_length,
        "$.max_tokens",
        f"prompt ({prompt_len} tokens) plus max_tokens ({sampling.max_tokens}, on a {block_length}-token block grid) "
        f"exceeds the context length {limits.context_length}",
    )
    steps = opts.steps if opts.steps is not None else limits.default_steps
    _check(steps is None or steps >= 1, "$.nvext.steps", f"steps must be >= 1, got {steps}")
    threshold = opts.threshold if opts.threshold is not None else limits.default_threshold
    _check_sampling(sampling, opts, threshold)
    return RequestParams(
        max_tokens=sampling.max_tokens,
        block_length=block_length,
        steps=steps if steps is not None else canvas_len - prompt_len,
        threshold=threshold,
        remasking=opts.remasking,
        cfg_scale=opts.cfg_scale,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        use_cache=_use_cache(opts, limits),
        stop=tuple(sampling.stop),
        stop_token_ids=tuple(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
        logprobs=sampling.logprobs,
        logit_bias=tuple(sorted(sampling.logit_bias.items())),
    )


def _block_length(opts: DiffusionOptions, max_tokens: int, limits: ModelLimits) -> int:
    if opts.block_length is None:
        return limits.block_size
    block_length = opts.block_length
    _check(block_length >= 1, "$.nvext.block_length", f"block_length must be >= 1, got {block_length}")
    _check(
        max_tokens % block_length == 0,
        "$.nvext.block_length",
        f"block_length {block_length} must divide the generation length (max_tokens {max_tokens})",
    )
    return block_length


def _check_sampling(sampling: SamplingOptions, opts: DiffusionOptions, threshold: float | None) -> None:
    _check(
        threshold is None or 0.0 < threshold <= 1.0,
        "$.nvext.threshold",
        f"threshold must be in (0, 1], got {threshold}",
    )
    _check(
        threshold is None or opts.remasking == "low_confidence",
        "$.nvext.remasking",
        "threshold decoding ranks by confidence; it needs remasking=low_confidence",
    )
    _check(opts.cfg_scale >= 0.0, "$.nvext.cfg_scale", f"cfg_scale must be >= 0, got {opts.cfg_scale}")
    _check(
        math.isfinite(sampling.temperature) and sampling.temperature >= 0.0,
        "$.temperature",
        f"temperature must be >= 0, got {sampling.temperature}",
    )
    _check(0.0 < sampling.top_p <= 1.0, "$.top_p", f"top_p must be in (0, 1], got {sampling.top_p}")


def _use_cache(opts: DiffusionOptions, limits: ModelLimits) -> bool:
    cacheable = limits.attention == "block_causal" and limits.can_cache
    if opts.use_cache is None:
        return cacheable and limits.default_use_cache and opts.cfg_scale == 0.0
    if opts.use_cache:
        _check(
            cacheable,
            "$.nvext.use_cache",
            "this model attends over the whole canvas (or takes no KV cache); its KV cannot be cached",
        )
        _check(opts.cfg_scale == 0.0, "$.nvext.use_cache", "cfg_scale > 0 runs without the block KV cache")
    return opts.use_cache


def canvas_length(prompt_len: int, max_tokens: int, block_length: int, attention: str) -> int:
    """Total positions denoised over: prompt + generation, the generation rounded up to whole blocks.

    Full attention: blocks start at the prompt's end (LLaDA). Block-causal: blocks sit on a grid from
    position 0 (LLaDA2 / block diffusion), so the prompt's last partial block shares a block with the answer.
    """
    if attention == "full":
        return prompt_len + math.ceil(max_tokens / block_length) * block_length
    return math.ceil((prompt_len + max_tokens) / block_length) * block_length


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequest(message, param=param)
