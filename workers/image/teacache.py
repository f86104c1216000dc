"""TeaCache (Timestep Embedding Aware Cache, Liu et al., CVPR 2025) for diffusers DiTs, as diffusers-style block hooks.

Before the first transformer block runs, TeaCache measures how much the timestep-modulated input changed since the
previous call of the same branch (cond / uncond, from diffusers' `cache_context`): the relative L1 distance, rescaled
by a per-model polynomial fitted to how much the *output* then changes. It accumulates that estimate and, while the sum
stays below `threshold`, skips every block and adds the residual (last block output minus first block input) of the
last full call. The first and last steps always compute. Unlike First Block Cache, a skipped step runs no block at all.

The indicator is the head block's modulated input where the block exposes it (FLUX: `norm1(hidden, emb=temb)`), else
its timestep embedding (Wan, as TeaCache's Wan2.1 port does), else its hidden-state input. Coefficients: TeaCache's
published fits for FLUX.1-dev and Wan2.1-T2V-1.3B (families.py); others, and the tiny models (their diffmesh.json),
use the identity (no rescaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext, HookRegistry, ModelHook, StateManager

IDENTITY = (1.0, 0.0)
_HEAD_HOOK = "diffmesh_teacache_head"
_BLOCK_HOOK = "diffmesh_teacache_block"


@dataclass
class TeaCacheConfig:
    threshold: float = 0.4  # accumulated rescaled relative L1 below which calls are skipped
    coefficients: tuple[float, ...] = IDENTITY  # polynomial, highest degree first (numpy.poly1d order)
    num_steps: int = 0  # calls per branch in this pipeline call; the last one always computes (0 = unknown)
    is_active: bool = False

    def rescale(self, distance: float) -> float:
        value = 0.0
        for coefficient in self.coefficients:
            value = value * distance + coefficient
        return value


class TeaCacheState(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.previous_indicator: torch.Tensor | None = None
        self.accumulated = 0.0
        self.num_calls = 0
        self.should_compute = True
        self.head_input: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.residual: tuple[torch.Tensor, torch.Tensor | None] | None = None


class _TeaHook(ModelHook):
    def __init__(self, state_manager: StateManager, config: TeaCacheConfig):
        super().__init__()
        self.state_manager = state_manager
        self.config = config

    def initialize_hook(self, module):
        self._metadata = TransformerBlockRegistry.get(type(module))
        return module


class TeaCacheHeadHook(_TeaHook):
    _is_stateful = True

    def new_forward(self, module, *args, **kwargs):
        if not self.config.is_active:
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.state_manager._context is None:
            self.state_manager.set_context(CacheContext(name="inference"))
        state: TeaCacheState = self.state_manager.get_state()
        state.should_compute = self._decide(state, _indicator(module, self._metadata, args, kwargs))
        state.num_calls += 1
        hidden, encoder = _streams(self._metadata, args, kwargs)
        if state.should_compute:
            state.head_input = (hidden, encoder)
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = hidden + state.residual[0]
        if encoder is not None and state.residual[1] is not None:
            encoder = encoder + state.residual[1]
        return _as_output(self._metadata, hidden, encoder)

    @torch.compiler.disable
    def _decide(self, state: TeaCacheState, indicator: torch.Tensor) -> bool:
        previous, state.previous_indicator = state.previous_indicator, indicator.detach()
        is_last = self.config.num_steps and state.num_calls >= self.config.num_steps - 1
        if previous is None or state.residual is None or is_last or previous.shape != indicator.shape:
            state.accumulated = 0.0
            return True
        distance = ((indicator - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        state.accumulated += self.config.rescale(distance)
        if state.accumulated < self.config.threshold:
            return False
        state.accumulated = 0.0
        return True

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class TeaCacheBlockHook(_TeaHook):
    def __init__(self, state_manager: StateManager, config: TeaCacheConfig, is_tail: bool):
        super().__init__(state_manager, config)
        self.is_tail = is_tail

    def new_forward(self, module, *args, **kwargs):
        if not self.config.is_active:
            return self.fn_ref.original_forward(*args, **kwargs)
        state: TeaCacheState = self.state_manager.get_state()
        if not state.should_compute:
            return _as_output(self._metadata, *_streams(self._metadata, args, kwargs))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            hidden, encoder = _output_streams(self._metadata, output)
            head_hidden, head_encoder = state.head_input
            encoder_residual = encoder - head_encoder if encoder is not None and head_encoder is not None else None
            state.residual = (hidden - head_hidden, encoder_residual)
        return output


def _streams(metadata, args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = metadata._get_parameter_from_args_kwargs("hidden_states", args, kwargs)
    encoder = None
    if metadata.return_encoder_hidden_states_index is not None:
        encoder = metadata._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs)
    return hidden, encoder


def _output_streams(metadata, output) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(output, tuple):
        return output, None
    encoder_index = metadata.return_encoder_hidden_states_index
    return output[metadata.return_hidden_states_index], output[encoder_index] if encoder_index is not None else None


def _as_output(metadata, hidden: torch.Tensor, encoder: torch.Tensor | None):
    if metadata.return_encoder_hidden_states_index is None:
        return hidden
    output = [None, None]
    output[metadata.return_hidden_states_index] = hidden
    output[metadata.return_encoder_hidden_states_index] = encoder
    return tuple(output)


def _indicator(module, metadata, args, kwargs) -> torch.Tensor:
    """The timestep-modulated input of the head block (see the module docstring for the fallbacks)."""
    hidden = metadata._get_parameter_from_args_kwargs("hidden_states", args, kwargs)
    try:
        temb = metadata._get_parameter_from_args_kwargs("temb", args, kwargs)
    except (ValueError, IndexError, KeyError):
        temb = None
    norm = getattr(module, "norm1", None)
    if temb is not None and norm is not None and "emb" in norm.forward.__code__.co_varnames:
        out = norm(hidden, emb=temb)
        return out[0] if isinstance(out, tuple) else out
    return temb if temb is not None else hidden


def apply_tea_cache(transformer: torch.nn.Module, config: TeaCacheConfig) -> list[torch.nn.Module]:
    """Register TeaCache hooks on every transformer block of `transformer`; returns the blocks in order."""
    blocks = [block for name, child in transformer.named_children()
              if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList) for block in child]
    if len(blocks) < 2:
        raise ValueError(f"{type(transformer).__name__} needs two transformer blocks or more for TeaCache")
    manager = StateManager(TeaCacheState)
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(TeaCacheHeadHook(manager, config), _HEAD_HOOK)
    for index, block in enumerate(blocks[1:], start=1):
        hook = TeaCacheBlockHook(manager, config, is_tail=index == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return blocks
