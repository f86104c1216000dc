"""Tensors on the bus (protocol.work.TensorData): dtype name, shape and C-order bytes, for every dtype incl. bfloat16."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def tensor_to_bytes(tensor: torch.Tensor) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, bytes) of a CPU copy of `tensor`."""
    name = NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(f"tensors of dtype {tensor.dtype} do not travel on the bus; use {', '.join(DTYPES)}")
    flat = tensor.detach().contiguous().cpu()
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: move the same 2-byte words
        flat = flat.view(torch.int16)
    return name, list(tensor.shape), flat.numpy().tobytes()


def tensor_from_bytes(dtype: str, shape: list[int], data: bytes) -> torch.Tensor:
    """The tensor `tensor_to_bytes` described; ValueError when the bytes and the shape disagree."""
    kind = DTYPES.get(dtype)
    if kind is None:
        raise ValueError(f"unknown tensor dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    expected = kind.itemsize
    for size in shape:
        expected *= size
    if expected != len(data) or any(size < 0 for size in shape):
        raise ValueError(f"{len(data)} bytes do not hold a {dtype} tensor of shape {shape}")
    return torch.frombuffer(bytearray(data), dtype=kind).reshape(shape)
