"""Denoiser adapters over transformers models, loading through from_pretrained, and special token ids.

Two shapes: a bidirectional masked LM (AutoModelForMaskedLM, full attention, no KV cache) and a decoder stack
run with explicit 4-D boolean attention masks (full = LLaDA, block-causal = LLaDA2 / block diffusion), whose
KV can be cached when the mask is block-causal.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from workers.dllm.config import DllmConfig

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values): [batch, kv_heads, positions, head_dim]
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<|role_end|>", "<|end_of_text|>")
BLOCK_CAUSAL_MODEL_TYPES = frozenset({"llada2_moe", "sdar"})  # trained with block-causal attention
DEFAULT_BLOCK_SIZE = 32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SpecialIds:
    mask_id: int
    pad_id: int | None
    eos_ids: tuple[int, ...]  # EOS and end-of-turn ids: the answer ends at the first one
    suppress_ids: tuple[int, ...]  # never sampled: mask, pad (unless pad is an EOS), configured extras


class Denoiser:
    """One forward of a masked-diffusion model: logits for the last `num_logits` positions, plus new KV."""

    def __init__(self, model, attention: Literal["full", "block_causal"], context_length: int, mask_format: str = "auto"):
        self.model = model
        self.attention = attention
        self.context_length = context_length
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = next((name for name in ("cache", "past_key_values") if name in params), None)
        self._has_logits_to_keep = "logits_to_keep" in params
        self._has_position_ids = "position_ids" in params
        self.takes_embeds = "inputs_embeds" in params  # images need it: their rows replace placeholder embeddings
        # transformers' own classes take 4-D boolean masks; remote code (LLaDA) expects [batch, keys] padding masks
        native = type(model).__module__.startswith("transformers.")
        self.mask_format = mask_format if mask_format != "auto" else ("4d" if native else "2d")
        self.supports_cache = attention == "block_causal" and self._cache_kwarg is not None and self.mask_format == "4d"
        self.num_forwards = 0  # model calls, all requests together

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # long [batch, T]
        position_ids: torch.Tensor,  # long [batch, T], absolute positions
        attention_mask: torch.Tensor,  # bool [batch, 1, T, K + T], True = attend; K = past length
        past: KV | None,
        num_logits: int,
        keep_kv: bool,
        embeds: list[tuple[int, int, torch.Tensor]] | None = None,  # (row, column, [n, hidden]) image embeddings
    ) -> tuple[torch.Tensor, KV | None]:
        """Run the model; logits are [batch, num_logits, vocab], kv (if keep_kv) covers past + input."""
        self.num_forwards += 1
        kwargs: dict = {"attention_mask": self._mask(attention_mask), **self._inputs(input_ids, embeds)}
        if self._has_position_ids:
            kwargs["position_ids"] = position_ids
        cache = None
        if keep_kv or past:
            cache = self._new_cache(past)
            kwargs[self._cache_kwarg] = cache
            kwargs["use_cache"] = True
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = num_logits
        logits = self.model(**kwargs).logits[:, -num_logits:]
        return logits, (_cache_to_kv(cache) if keep_kv else None)

    def _inputs(self, input_ids: torch.Tensor, embeds) -> dict:
        """`input_ids`, or `inputs_embeds` with the image rows written over the placeholders' token embeddings."""
        if not embeds:
            return {"input_ids": input_ids}
        if not self.takes_embeds:
            raise ValueError(f"{type(self.model).__name__}.forward takes no inputs_embeds; it cannot take images")
        inputs = self.model.get_input_embeddings()(input_ids)
        for row, column, rows in embeds:
            inputs[row, column : column + rows.shape[0]] = rows
        return {"inputs_embeds": inputs}

    def _mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        if self.mask_format == "4d":
            return mask
        keys = mask[:, 0].any(dim=1)  # 2-D: which keys any query may see, i.e. not padding
        return None if bool(keys.all()) else keys.long()

    def _new_cache(self, past: KV | None):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=past or None, config=self.model.config)


def _cache_to_kv(cache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def load_model(config: DllmConfig):
    """Load tokenizer and denoiser through from_pretrained; return (Denoiser, tokenizer, SpecialIds, block_size, ImageSpec
    or None)."""
    from workers.dllm.multimodal import image_spec

    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    remote = config.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=remote)
    model_config = AutoConfig.from_pretrained(config.model, trust_remote_code=remote)
    is_masked_lm = any(arch.endswith("ForMaskedLM") for arch in (model_config.architectures or []))
    model = _load_weights(config, model_config, is_masked_lm).to(config.device).eval()
    attention = detect_attention(model_config, is_masked_lm, config.attention)
    denoiser = Denoiser(model, attention, context_length(model_config, tokenizer), config.mask_format)
    block_size = config.block_size or getattr(model_config, "dllm_block_size", None) or DEFAULT_BLOCK_SIZE
    hidden_size = model.get_input_embeddings().embedding_dim
    images = image_spec(model_config, tokenizer, config, hidden_size) if denoiser.takes_embeds else None
    return denoiser, tokenizer, special_ids(model_config, tokenizer, config), int(block_size), images


def _load_weights(config: DllmConfig, model_config, is_masked_lm: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    kwargs = {"trust_remote_code": config.trust_remote_code}
    if config.dtype != "auto":
        kwargs["dtype"] = DTYPES[config.dtype]
    if is_masked_lm:
        return AutoModelForMaskedLM.from_pretrained(config.model, **kwargs)
    auto_map = getattr(model_config, "auto_map", None) or {}
    if config.trust_remote_code and "AutoModelForCausalLM" not in auto_map and "AutoModel" in auto_map:
        return AutoModel.from_pretrained(config.model, **kwargs)  # LLaDA-8B registers only AutoModel
    return AutoModelForCausalLM.from_pretrained(config.model, **kwargs)


def detect_attention(model_config, is_masked_lm: bool, override: str) -> Literal["full", "block_causal"]:
    """The attention a denoiser was trained with: config override, config.json `dllm_attention`, model type."""
    if override != "auto":
        return override  # type: ignore[return-value]
    if is_masked_lm:
        return "full"
    declared = getattr(model_config, "dllm_attention", None)
    if declared in ("full", "block_causal"):
        return declared
    return "block_causal" if model_config.model_type in BLOCK_CAUSAL_MODEL_TYPES else "full"


def context_length(model_config, tokenizer) -> int:
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return min(int(getattr(tokenizer, "model_max_length", 4096)), 1 << 20)


def special_ids(model_config, tokenizer, config: DllmConfig) -> SpecialIds:
    """Mask, pad, EOS/EOT and suppressed ids: config values first, then the model's and tokenizer's own."""
    mask_id = config.mask_id
    if mask_id is None:
        mask_id = getattr(model_config, "mask_token_id", None)
    if mask_id is None:
        mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"no mask token id in {config.model}; set the engine's mask_id")
    eos_ids = config.eos_ids if config.eos_ids is not None else _default_eos_ids(model_config, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else getattr(model_config, "pad_token_id", None)
    suppress = {int(mask_id), *config.suppress_ids}
    if pad_id is not None and pad_id not in eos_ids:
        suppress.add(int(pad_id))
    return SpecialIds(int(mask_id), pad_id, tuple(sorted(eos_ids)), tuple(sorted(suppress)))


def _default_eos_ids(model_config, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return tuple(sorted(ids))


def tokenizer_json(tokenizer, model_dir: str) -> bytes:
    """The tokenizer.json bytes a frontend needs (from the model directory, else serialised from memory)."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return path.read_bytes()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{model_dir} has no fast tokenizer; the frontend needs tokenizer.json")
    return backend.to_str().encode()
