"""Tiny dLLMs built once per session (saved, then loaded through from_pretrained), plus a fixed-logits denoiser."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from workers.dllm.config import DllmConfig
from workers.dllm.engine import DllmEngine
from workers.dllm.model import SpecialIds
from workers.dllm.tiny import TinySpec, ensure_tiny_dllm

CHAT = [{"role": "user", "content": "hello world what is the red cat"}]


@pytest.fixture(scope="module", autouse=True)
def torch_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dllm-models")


@pytest.fixture(scope="session")
def tiny_dir(model_cache):
    """Random block-causal LLaMA-shaped denoiser (LLaDA2 shape), block size 8."""
    return ensure_tiny_dllm(model_cache, TinySpec(block_size=8, context_length=512))


@pytest.fixture(scope="session")
def peaked_dir(model_cache):
    """Same shape with the output head scaled x300: confident (peaked) logits."""
    return ensure_tiny_dllm(model_cache, TinySpec(block_size=8, context_length=512, head_scale=300.0))


@pytest.fixture(scope="session")
def full_dir(model_cache):
    """LLaDA-1 shape: the decoder runs with full bidirectional attention."""
    return ensure_tiny_dllm(model_cache, TinySpec(attention="full", block_size=8, context_length=512))


@pytest.fixture(scope="session")
def bert_dir(model_cache):
    return ensure_tiny_dllm(model_cache, TinySpec(arch="bert", block_size=8, context_length=512))


@pytest.fixture
def make_engine():
    def make(model_dir, **overrides) -> DllmEngine:
        return DllmEngine.from_pretrained(DllmConfig(model=str(model_dir), **overrides))

    return make


@pytest.fixture(scope="session")
def prompt_ids(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    return list(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


class FixedLogitsDenoiser:
    """A denoiser whose logits are a function of absolute positions only (no cache): for pathological models."""

    def __init__(self, vocab_size: int, logits_at: Callable[[torch.Tensor], torch.Tensor], context_length: int = 512):
        self.model = type("M", (), {"config": type("C", (), {"vocab_size": vocab_size})()})()
        self.attention = "full"
        self.supports_cache = False
        self.context_length = context_length
        self.device = torch.device("cpu")
        self.num_forwards = 0
        self._logits_at = logits_at

    def forward(self, input_ids, position_ids, attention_mask, past, num_logits, keep_kv, embeds=None):
        self.num_forwards += 1
        return self._logits_at(position_ids[:, -num_logits:]), None


@pytest.fixture
def stub_engine(tiny_dir):
    """Engine over a FixedLogitsDenoiser with the tiny tokenizer: make(logits_at, **config)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    special = SpecialIds(mask_id=tokenizer.mask_token_id, pad_id=0, eos_ids=(7, 8), suppress_ids=(0, tokenizer.mask_token_id))

    def make(logits_at, tokenizer_override=None, special_override=None, **config) -> DllmEngine:
        tok = tokenizer_override or tokenizer
        denoiser = FixedLogitsDenoiser(len(tok), logits_at)
        return DllmEngine(denoiser, tok, special_override or special, DllmConfig(model="stub", **config), 8)

    return make
