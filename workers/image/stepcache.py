"""Step caching: reuse denoiser block outputs across steps when the first block's output barely changed.

UNet pipelines (SD, SDXL) get `UNetStepCache`, an adaptive DeepCache: every step runs the shallow path
(conv_in, down_blocks[0], up_blocks[-1], conv_out); the deep blocks run only when the relative L1 change of
down_blocks[0]'s output since the image's last full step reaches `threshold` (or after `max_skips` skips in a row);
otherwise up_blocks[-1] is fed the cached output of up_blocks[-2]. Decisions are per image, so an image in a batch
takes exactly the path it would take alone: the batch skips the deep blocks only when every image skips, and when
some do not, the skipping images still get their cached features. DiT pipelines use diffusers' First Block Cache
(`FirstBlockCacheConfig`) or TeaCache (`TeaStepCache`), whose decisions are per batch; the engine therefore never
merges requests under them.
"""

from __future__ import annotations

import torch

DEFAULT_UNET_THRESHOLD = 0.15
DEFAULT_FIRST_BLOCK_THRESHOLD = 0.08  # ParaAttention's setting for FLUX.1-dev (1.55x, "nearly zero quality loss")
DEFAULT_TEACACHE_THRESHOLD = 0.4  # TeaCache's FLUX setting for ~2x (0.25 ~1.6x); rescaled distances, see teacache.py
DEFAULT_MAX_SKIPS = 2  # at most 2 cached steps in a row (DeepCache's interval 3)


class UNetStepCache:
    """Adaptive DeepCache hooks on a diffusers UNet2DConditionModel; inert until `begin()`."""

    def __init__(self, unet, threshold: float = DEFAULT_UNET_THRESHOLD, max_skips: int = DEFAULT_MAX_SKIPS):
        if len(unet.up_blocks) < 2:
            raise ValueError("UNet step cache needs at least two up blocks")
        self.threshold = threshold
        self.max_skips = max_skips
        self.is_active = False
        self.num_full = 0  # denoiser calls that ran the deep blocks
        self.num_skipped = 0  # denoiser calls that reused them for every image
        deep = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
        self._feed = unet.up_blocks[-2]  # its output is the deep feature up_blocks[-1] consumes
        _wrap(unet.down_blocks[0], self._head_forward)
        for block in (b for b in deep if b is not None):
            _wrap(block, self._deep_forward(block))
        self._reset(0)

    def begin(self, num_images: int, is_active: bool = True, num_steps: int = 0) -> None:
        """Start a pipeline call of `num_images` images (denoiser rows = k x num_images, k = 2 with CFG)."""
        self.is_active = is_active
        self._reset(num_images)

    def end(self) -> None:
        self.is_active = False
        self._reset(0)

    def _reset(self, num_images: int) -> None:
        self._num_images = num_images
        self._prev_head: torch.Tensor | None = None  # head output at each image's last full step
        self._skip_run = [0] * num_images
        self._skip: list[bool] = [False] * num_images
        self._outputs: dict[int, object] = {}
        self._is_skip_step = False

    def _head_forward(self, original, *args, **kwargs):
        out = original(*args, **kwargs)
        if not self.is_active:
            return out
        head = out[0] if isinstance(out, tuple) else out
        self._skip = self._decide(head)
        self._is_skip_step = all(self._skip)
        self._prev_head = head if self._prev_head is None else self._merge(self._prev_head, head)
        self._skip_run = [run + 1 if skip else 0 for run, skip in zip(self._skip_run, self._skip)]
        return out

    def _decide(self, head: torch.Tensor) -> list[bool]:
        if self._prev_head is None:
            return [False] * self._num_images
        decisions = []
        for image in range(self._num_images):
            rows = self._rows(image, head.shape[0])
            change = (head[rows] - self._prev_head[rows]).double().abs().sum()
            scale = self._prev_head[rows].double().abs().sum().clamp_min(1e-12)
            is_small = bool(change / scale < self.threshold)
            decisions.append(is_small and self._skip_run[image] < self.max_skips)
        return decisions

    def _rows(self, image: int, num_rows: int) -> list[int]:
        return list(range(image, num_rows, self._num_images))

    def _merge(self, cached: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Per row: keep `cached` for skipping images, take `fresh` for the others."""
        keep = torch.tensor([self._skip[row % self._num_images] for row in range(fresh.shape[0])])
        return torch.where(keep.view(-1, *[1] * (fresh.dim() - 1)).to(fresh.device), cached, fresh)

    def _deep_forward(self, block):
        def forward(original, *args, **kwargs):
            if not self.is_active:
                return original(*args, **kwargs)
            if self._is_skip_step:
                if block is self._feed:
                    self.num_skipped += 1
                return self._outputs[id(block)]
            out = original(*args, **kwargs)
            if block is self._feed:
                self.num_full += 1
                if any(self._skip):
                    out = self._merge(self._outputs[id(block)], out)
            self._outputs[id(block)] = out
            return out

        return forward


def _wrap(module, hook) -> None:
    original = module.forward

    def forward(*args, **kwargs):
        return hook(original, *args, **kwargs)

    module.forward = forward


class FirstBlockStepCache:
    """diffusers' First Block Cache on a DiT transformer, switched per pipeline call; counts full tail computes."""

    def __init__(self, transformer, threshold: float = DEFAULT_FIRST_BLOCK_THRESHOLD):
        self.transformer = transformer
        self.threshold = threshold
        self.is_active = False
        self.num_tail_runs = 0  # times the last transformer block actually computed
        _tail_leaf(transformer).register_forward_pre_hook(self._count_tail)

    def begin(self, num_images: int, is_active: bool = True, num_steps: int = 0) -> None:
        from diffusers.hooks import FirstBlockCacheConfig

        if is_active and not self.is_active:
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))
        elif not is_active and self.is_active:
            self.transformer.disable_cache()
        self.is_active = is_active
        if is_active:
            self.transformer._reset_stateful_cache()

    def end(self) -> None:
        if self.is_active:
            self.transformer._reset_stateful_cache()

    def _count_tail(self, module, args) -> None:
        self.num_tail_runs += 1


def _tail_leaf(transformer) -> torch.nn.Module:
    """The first parametrised leaf of the last transformer block: it runs only when that block computes."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    blocks = [
        block
        for name, child in transformer.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)
        for block in child
    ]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no transformer block list for First Block Cache")
    leaves = [m for m in blocks[-1].modules() if not list(m.children()) and list(m.parameters(recurse=False))]
    return leaves[0]


class TeaStepCache:
    """TeaCache (workers/image/teacache.py) on a DiT transformer, switched per pipeline call; counts full computes."""

    def __init__(self, transformer, threshold: float = DEFAULT_TEACACHE_THRESHOLD, coefficients=None):
        from workers.image.teacache import IDENTITY, TeaCacheConfig, apply_tea_cache

        self.transformer = transformer
        self.config = TeaCacheConfig(threshold=threshold, coefficients=tuple(coefficients or IDENTITY))
        self.num_tail_runs = 0  # times the last transformer block actually computed
        apply_tea_cache(transformer, self.config)
        _tail_leaf(transformer).register_forward_pre_hook(self._count_tail)

    @property
    def is_active(self) -> bool:
        return self.config.is_active

    def begin(self, num_images: int, is_active: bool = True, num_steps: int = 0) -> None:
        self.config.is_active = is_active
        self.config.num_steps = num_steps
        self.transformer._reset_stateful_cache()

    def end(self) -> None:
        self.config.is_active = False
        self.transformer._reset_stateful_cache()

    def _count_tail(self, module, args) -> None:
        self.num_tail_runs += 1
