"""Batch-invariant CPU compute: a sample's result does not depend on what else shares its batch.

Measured on this CPU build (torch 2.13, MKL, oneDNN, NNPACK), three kernels give per-sample results that change
with the batch size by ~1e-6, enough to flip a few uint8 pixels: oneDNN convolutions (algorithm picked per shape),
NNPACK convolutions (used from batch 16 up), and MKL sgemm for `linear` (gemv at M=1, blocked gemm for M>1).
Inside `batch_invariant()` convolutions take ATen's native path (one im2col + gemm per sample) and `linear` runs as a
`bmm` with one identically shaped gemm per leading index, so batched requests produce the same bytes as solo ones.
Group/layer norm, SDPA and elementwise ops were already invariant at the batch sizes used here.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_flags_lock = threading.Lock()  # the backend flags are process-global


class _InvariantLinear(TorchFunctionMode):
    """Routes F.linear through bmm over the leading dimension (thread-local: only the entering thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return _linear_per_row(*args, **kwargs)
        return func(*args, **kwargs)


def _linear_per_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    lead = x.shape[:-1]
    rows = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1, x.shape[-1])
    out = torch.bmm(rows, weight.t().unsqueeze(0).expand(rows.shape[0], -1, -1))
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])


@contextlib.contextmanager
def batch_invariant(enabled: bool = True):
    """Run the enclosed torch code batch-invariantly (CPU); a no-op when `enabled` is False."""
    if not enabled:
        yield
        return
    with _flags_lock:
        saved = (torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled())
        torch._C._set_mkldnn_enabled(False)
        torch._C._set_nnpack_enabled(False)
    try:
        with _InvariantLinear():
            yield
    finally:
        with _flags_lock:
            torch._C._set_mkldnn_enabled(saved[0])
            torch._C._set_nnpack_enabled(saved[1])
