"""Builds the tiny default dLLM offline: a WordPiece tokenizer with a chat template and a random LLaDA-shaped denoiser.

Random weights: the text it writes is noise. It exists so `diffmesh up`, the tests and the benchmark exercise the
same `from_pretrained` path a real checkpoint (LLaDA, LLaDA2) takes, without a model hub.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from workers.modelcache import ensure_built

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
IMAGE_TOKEN = "<|image|>"  # multimodal tiny models: the placeholder a chat prompt carries per image
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
BUILT_MARKER = ".diffmesh-built"  # written last: a directory without it is incomplete
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"  # trained by workers/dllm/train.py, shipped in the repo


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny dLLM; every field is part of the directory name, so specs never share a folder."""

    arch: Literal["llama", "bert", "copy"] = "llama"  # copy: hand-set weights, see build_copy_model
    attention: Literal["block_causal", "full"] = "block_causal"  # llama only; bert is always full
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    block_size: int = 32  # dllm_block_size written into config.json
    context_length: int = 2048
    head_scale: float = 1.0  # multiplies lm_head: >1 gives peaked ("confident") logits
    copy_offset: int = 8  # copy model: each position predicts the token this many positions back
    image_tokens: int = 0  # > 0: multimodal, an <|image|> placeholder taking this many embedding rows per image
    seed: int = 0

    @property
    def dirname(self) -> str:
        attention = "full" if self.arch == "bert" else self.attention
        arch = f"copy{self.copy_offset}" if self.arch == "copy" else self.arch
        return (
            f"tiny-dllm-{arch}-{attention}-h{self.hidden_size}-l{self.num_layers}-b{self.block_size}"
            f"-ctx{self.context_length}-x{self.head_scale:g}{f'-img{self.image_tokens}' if self.image_tokens else ''}"
            f"-s{self.seed}"
        )


def ensure_tiny_dllm(cache_dir: str | os.PathLike, spec: TinySpec | None = None, **overrides) -> Path:
    """Return the directory of the tiny dLLM under `cache_dir`, building it on first use (idempotent)."""
    spec = spec or TinySpec(**overrides)
    return ensure_built(cache_dir, spec.dirname, lambda staging: build_tiny_dllm(staging, spec))


def build_tiny_dllm(directory: Path, spec: TinySpec) -> None:
    """Write tokenizer and model files of `spec` into `directory` with save_pretrained."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(directory, (IMAGE_TOKEN,) if spec.image_tokens else ())
    torch.manual_seed(spec.seed)
    model = build_copy_model(spec, tokenizer) if spec.arch == "copy" else _build_model(spec, tokenizer)
    if spec.head_scale != 1.0:
        with torch.no_grad():
            _output_head(model).weight.mul_(spec.head_scale)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_tokenizer(directory: Path, extra_special: tuple[str, ...] = (), words: list[str] | None = None):
    """WordPiece tokenizer (BertTokenizer recipe) with a Llama-3-style chat template, saved and reloaded.

    `extra_special` tokens (the image placeholder) are never split. With `words` (the demo model's vocabulary,
    workers/dllm/train.py) the ids run specials, words, characters, pieces, then the extra specials; without, the
    tiny models' order: specials (extra ones included), WORDS, characters, pieces.
    """
    from transformers import AutoTokenizer, BertTokenizer

    with tempfile.TemporaryDirectory() as vocab_dir:
        pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
        specials = SPECIAL_TOKENS + list(extra_special)
        if words is None:
            lines = specials + WORDS + CHARS + pieces
        else:
            lines = SPECIAL_TOKENS + list(words) + CHARS + pieces + list(extra_special)
        Path(vocab_dir, "vocab.txt").write_text("\n".join(lines) + "\n")
        tokenizer = BertTokenizer.from_pretrained(
            vocab_dir,
            additional_special_tokens=specials[5:],
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
    if spec.image_tokens:  # LLaVA's config names: the placeholder id and the embedding rows per image
        dllm_fields |= {"image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), "image_seq_length": spec.image_tokens}
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


def build_copy_model(spec: TinySpec, tokenizer):
    """A one-layer LLaMA whose weights are set by hand: every position predicts the token `copy_offset` back.

    Its confidence means something, unlike random weights': ~1 where the source token is visible and committed,
    ~1/vocab where the source is still masked. That is the property threshold decoding relies on in trained
    dLLMs, so the benchmark can check that parallel commits keep the reference's tokens. The head is a single
    RoPE attention head whose query/key are constant phasors, so its score peaks at relative distance
    `copy_offset` (a sum of cosines); values and output projection copy the token subspace of the residual.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, theta = spec.hidden_size, 400.0  # theta: RoPE frequencies spread over (0.003, 1] rad, all discriminative
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, intermediate_size=8, max_position_embeddings=spec.context_length,
        tie_word_embeddings=False, rope_theta=theta, rms_norm_eps=1e-6, mask_token_id=tokenizer.mask_token_id,
        dllm_attention="block_causal", dllm_block_size=spec.block_size, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    embeddings = _copy_embeddings(len(tokenizer), hidden, tokenizer.mask_token_id, spec.seed)
    token_part = torch.diag(torch.tensor([0.0] + [1.0] * (hidden - 1)))  # everything but the constant dim 0
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # the MLP stays zero: attention alone does the copying
        for norm in (model.model.norm, model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight.copy_(embeddings)
        attention = model.model.layers[0].self_attn
        query, key = _offset_phasors(hidden, theta, spec.copy_offset, amplitude=12.0)
        attention.q_proj.weight[:, 0] = query  # reads the constant dim: the same query at every position
        attention.k_proj.weight[:, 0] = key
        attention.v_proj.weight.copy_(token_part)
        attention.o_proj.weight.copy_(torch.eye(hidden))
        model.lm_head.weight.copy_(embeddings @ token_part)
    return model


def _copy_embeddings(vocab_size: int, hidden: int, mask_id: int, seed: int):
    """Dim 0 is a constant 1 (drives query and key); [MASK] owns dim 1; other tokens are random on dims 2..."""
    import torch

    radius = math.sqrt(hidden - 1)  # every row has RMS 1, so RMSNorm leaves dim 0 at exactly 1
    directions = torch.randn(vocab_size, hidden - 2, generator=torch.Generator().manual_seed(seed))
    embeddings = torch.zeros(vocab_size, hidden)
    embeddings[:, 0] = 1.0
    embeddings[:, 2:] = radius * directions / directions.norm(dim=1, keepdim=True)
    embeddings[mask_id, 2:] = 0.0
    embeddings[mask_id, 1] = radius  # orthogonal to every token: a masked source predicts nothing (uniform)
    return embeddings


def _offset_phasors(head_dim: int, theta: float, offset: int, amplitude: float):
    """Query/key halves (HF rotate_half layout) whose RoPE score is sum_f A^2 cos((i - j - offset) w_f)."""
    import torch

    omega = theta ** (-torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim)
    query = amplitude * torch.exp(-1j * offset * omega)
    key = amplitude * torch.ones_like(query)
    return torch.cat([query.real, query.imag]).float(), torch.cat([key.real, key.imag]).float()
