"""Builds the tiny default dLLM offline: a WordPiece tokenizer with a chat template and a random LLaDA-shaped denoiser.

Random weights: the text it writes is noise. It exists so `diffmesh up`, the tests and the benchmark exercise the
same `from_pretrained` path a real checkpoint (LLaDA, LLaDA2) takes, without a model hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SPECIAL_TOKENS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
]
WORDS = (
    "the a an and or of to in on at is are was be it this that with for as by from you i we they he she "
    "user assistant system hello hi world cat dog red blue green big small good day yes no what how why "
    "one two three time people way water sun moon tree book city road light night house music"
).split()
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
BUILT_MARKER = ".diffmesh-built"  # written last: a directory without it is incomplete


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny dLLM; every field is part of the directory name, so specs never share a folder."""

    arch: Literal["llama", "bert"] = "llama"
    attention: Literal["block_causal", "full"] = "block_causal"  # llama only; bert is always full
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    block_size: int = 32  # dllm_block_size written into config.json
    context_length: int = 2048
    head_scale: float = 1.0  # multiplies lm_head: >1 gives peaked ("confident") logits
    seed: int = 0

    @property
    def dirname(self) -> str:
        attention = "full" if self.arch == "bert" else self.attention
        return (
            f"tiny-dllm-{self.arch}-{attention}-h{self.hidden_size}-l{self.num_layers}-b{self.block_size}"
            f"-ctx{self.context_length}-x{self.head_scale:g}-s{self.seed}"
        )


def ensure_tiny_dllm(cache_dir: str | os.PathLike, spec: TinySpec | None = None, **overrides) -> Path:
    """Return the directory of the tiny dLLM under `cache_dir`, building it on first use (idempotent)."""
    spec = spec or TinySpec(**overrides)
    target = Path(cache_dir) / spec.dirname
    if (target / BUILT_MARKER).exists():
        return target
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        build_tiny_dllm(staging, spec)
        (staging / BUILT_MARKER).write_text(spec.dirname + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / BUILT_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_dllm(directory: Path, spec: TinySpec) -> None:
    """Write tokenizer and model files of `spec` into `directory` with save_pretrained."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(directory)
    torch.manual_seed(spec.seed)
    model = _build_model(spec, tokenizer)
    if spec.head_scale != 1.0:
        with torch.no_grad():
            _output_head(model).weight.mul_(spec.head_scale)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_tokenizer(directory: Path):
    """WordPiece tokenizer (BertTokenizer recipe) with a Llama-3-style chat template, saved and reloaded."""
    from transformers import AutoTokenizer, BertTokenizer

    with tempfile.TemporaryDirectory() as vocab_dir:
        pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
        Path(vocab_dir, "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS + CHARS + pieces) + "\n")
        tokenizer = BertTokenizer.from_pretrained(
            vocab_dir,
            additional_special_tokens=SPECIAL_TOKENS[5:],
            eos_token="<|endoftext|>",
            bos_token="[CLS]",
        )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _build_model(spec: TinySpec, tokenizer):
    dllm_fields = {
        "mask_token_id": tokenizer.mask_token_id,
        "dllm_block_size": spec.block_size,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.arch == "bert":
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=2 * spec.hidden_size,
            max_position_embeddings=spec.context_length,
            tie_word_embeddings=False,
            dllm_attention="full",
            **dllm_fields,
        )
        return BertForMaskedLM(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=2 * spec.hidden_size,
        max_position_embeddings=spec.context_length,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        dllm_attention=spec.attention,
        **dllm_fields,
    )
    return LlamaForCausalLM(config)


def _output_head(model):
    return model.get_output_embeddings()
