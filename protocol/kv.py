"""Block hashing shared by router and workers, byte-compatible with NVIDIA Dynamo's KV router.

local[i] = XXH3-64(seed 1337) over block i's token ids as u32 little-endian, followed by the sorted
          mm_hashes (u64 LE) of the images whose placeholder offsets overlap the block;
seq[0]   = local[0];  seq[i] = XXH3-64(u64le(seq[i-1]) ‖ u64le(local[i]), seed 1337).
Only full blocks are hashed; a trailing partial block never is.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
import xxhash

XXH3_SEED = 1337
TOKEN_DTYPE = np.dtype("<i4")  # token ids on the bus: int32 little-endian bytes

_xxh3 = xxhash.xxh3_64_intdigest
_pack_pair = struct.Struct("<QQ").pack


class MmObject(msgspec.Struct, frozen=True, kw_only=True):
    """One image (or other media item) inside a request, as the router and the worker see it."""

    mm_hash: int  # u64, xxh3-64 of the decoded media bytes
    offsets: list[tuple[int, int]]  # [start, end) token positions of its placeholders, whole request


def tokens_from_bytes(data: bytes) -> np.ndarray:
    """Zero-copy int32 view of token ids carried as bytes."""
    return np.frombuffer(data, dtype=TOKEN_DTYPE)


def tokens_to_bytes(tokens: Sequence[int] | np.ndarray) -> bytes:
    return np.asarray(tokens, dtype=TOKEN_DTYPE).tobytes()


def mm_hash_of(data: bytes) -> int:
    """Content hash of decoded media bytes."""
    return _xxh3(data)


def block_mm_hashes(mm_objects: Iterable[MmObject], block_size: int, num_blocks: int) -> dict[int, list[int]]:
    """Map block index -> sorted mm_hashes of the objects overlapping it (full blocks only)."""
    per_block: dict[int, set[int]] = {}
    for obj in mm_objects:
        for start, end in obj.offsets:
            if end <= start:
                continue
            last = min((end - 1) // block_size, num_blocks - 1)
            for block in range(start // block_size, last + 1):
                per_block.setdefault(block, set()).add(obj.mm_hash)
    return {block: sorted(hashes) for block, hashes in per_block.items()}


def local_block_hashes(
    tokens: np.ndarray, block_size: int, mm_objects: Iterable[MmObject] = (), seed: int = XXH3_SEED
) -> list[int]:
    """XXH3-64 of every full block (tokens_hash / LocalBlockHash)."""
    if block_size <= 0:
        return []
    num_blocks = len(tokens) // block_size
    if num_blocks == 0:
        return []
    data = np.ascontiguousarray(tokens[: num_blocks * block_size]).astype("<u4", copy=False).tobytes()
    view = memoryview(data)
    width = block_size * 4
    hashes = [_xxh3(view[i : i + width], seed) for i in range(0, num_blocks * width, width)]
    for block, mm in block_mm_hashes(mm_objects, block_size, num_blocks).items():
        start = block * width
        tail = struct.pack(f"<{len(mm)}Q", *mm)
        hashes[block] = _xxh3(bytes(view[start : start + width]) + tail, seed)
    return hashes


def chain_hashes(local: Sequence[int], seed: int = XXH3_SEED) -> list[int]:
    """Sequence hashes: each block's hash depends on its whole prefix."""
    out: list[int] = []
    parent = None
    for value in local:
        parent = value if parent is None else _xxh3(_pack_pair(parent, value), seed)
        out.append(parent)
    return out


def extend_chain(parent: int | None, local: Sequence[int], seed: int = XXH3_SEED) -> list[int]:
    """Continue a chain from a known parent sequence hash (None starts a new chain)."""
    out: list[int] = []
    for value in local:
        parent = value if parent is None else _xxh3(_pack_pair(parent, value), seed)
        out.append(parent)
    return out


def sequence_block_hashes(
    tokens: np.ndarray, block_size: int, mm_objects: Iterable[MmObject] = ()
) -> tuple[list[int], list[int]]:
    """(local hashes, chained sequence hashes) of the full blocks of a prompt."""
    local = local_block_hashes(tokens, block_size, mm_objects)
    return local, chain_hashes(local)
