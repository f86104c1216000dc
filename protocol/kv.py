"""Block hashing shared by router and workers, byte-compatible with NVIDIA Dynamo's KV router.

local[i] = XXH3-64(seed 1337) over block i's token ids as u32 little-endian, followed by the sorted
          mm_hashes (u64 LE) of the images whose placeholder offsets overlap the block;
seq[0]   = local[0];  seq[i] = XXH3-64(u64le(seq[i-1]) ‖ u64le(local[i]), seed 1337).
Only full blocks are hashed; a trailing partial block never is.

Speed: the token bytes are cut into blocks by a numpy void view (one `bytes` per block, no Python slicing loop)
and hashed with `map`; the chain is inherently sequential, one 16-byte XXH3 call per block.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import repeat

import msgspec
import numpy as np
import xxhash

XXH3_SEED = 1337
TOKEN_DTYPE = np.dtype("<i4")  # token ids on the bus: int32 little-endian bytes
_U32_LE = np.dtype("<u4")

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


def image_mm_hash(width: int, height: int, rgb: bytes) -> int:
    """mm_hash of a decoded image: XXH3-64 of u32le(width) ‖ u32le(height) ‖ its RGB pixels, row by row.

    The size is part of it so that equal pixel bytes of different shapes (2x8 vs 8x2) stay different images.
    """
    state = xxhash.xxh3_64()
    state.update(struct.pack("<II", width, height))
    state.update(rgb)
    return state.intdigest()


def block_mm_hashes(mm_objects: Iterable[MmObject], block_size: int, num_blocks: int,
                    offset: int = 0) -> dict[int, list[int]]:
    """Map block index -> sorted mm_hashes of the objects overlapping it (full blocks only).

    `offset` is the request position of the first block's first token (a chain continued from there).
    """
    per_block: dict[int, set[int]] = {}
    for obj in mm_objects:
        for start, end in obj.offsets:
            start, end = start - offset, end - offset
            if end <= start or end <= 0:
                continue
            last = min((end - 1) // block_size, num_blocks - 1)
            for block in range(max(start, 0) // block_size, last + 1):
                per_block.setdefault(block, set()).add(obj.mm_hash)
    return {block: sorted(hashes) for block, hashes in per_block.items()}


def _u32_le(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Contiguous u32-LE array of the token ids (a view when they already are 32-bit LE)."""
    arr = np.asarray(tokens)
    if arr.dtype == TOKEN_DTYPE or arr.dtype == _U32_LE:
        return np.ascontiguousarray(arr).view(_U32_LE)
    return np.ascontiguousarray(arr.astype(np.int64, copy=False).astype(_U32_LE))  # wraps like Rust `as u32`


def local_block_hashes(
    tokens: Sequence[int] | np.ndarray, block_size: int, mm_objects: Iterable[MmObject] = (), seed: int = XXH3_SEED,
    offset: int = 0,
) -> list[int]:
    """XXH3-64 of every full block (tokens_hash / LocalBlockHash); `tokens[0]` sits at request position `offset`."""
    if block_size <= 0:
        return []
    num_blocks = len(tokens) // block_size
    if num_blocks == 0:
        return []
    data = _u32_le(tokens[: num_blocks * block_size])
    blocks: list[bytes] = data.view(f"V{block_size * 4}").tolist()  # one bytes object per block
    hashes = list(map(_xxh3, blocks, repeat(seed, num_blocks)))
    for block, mm in block_mm_hashes(mm_objects, block_size, num_blocks, offset).items():
        hashes[block] = _xxh3(blocks[block] + struct.pack(f"<{len(mm)}Q", *mm), seed)
    return hashes


def extend_chain(parent: int | None, local: Iterable[int], seed: int = XXH3_SEED) -> list[int]:
    """Continue a chain from a known parent sequence hash (None starts a new chain)."""
    out: list[int] = []
    append = out.append
    values = iter(local)
    if parent is None:
        parent = next(values, None)
        if parent is None:
            return out
        append(parent)
    for value in values:
        parent = _xxh3(_pack_pair(parent, value), seed)
        append(parent)
    return out


def chain_hashes(local: Iterable[int], seed: int = XXH3_SEED) -> list[int]:
    """Sequence hashes: each block's hash depends on its whole prefix."""
    return extend_chain(None, local, seed)


def sequence_block_hashes(
    tokens: Sequence[int] | np.ndarray, block_size: int, mm_objects: Iterable[MmObject] = ()
) -> tuple[list[int], list[int]]:
    """(local hashes, chained sequence hashes) of the full blocks of a prompt."""
    local = local_block_hashes(tokens, block_size, mm_objects)
    return local, chain_hashes(local)
