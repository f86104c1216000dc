"""Known-answer tests of the shared block hash: every expected value is built here from explicit bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import xxhash

from protocol.kv import (
    MmObject, block_mm_hashes, chain_hashes, extend_chain, local_block_hashes, sequence_block_hashes, tokens_from_bytes,
    tokens_to_bytes,
)

SEED = 1337


def xxh3(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data, seed=SEED)


def u32le(tokens) -> bytes:
    return struct.pack(f"<{len(tokens)}I", *[t & 0xFFFFFFFF for t in tokens])


def u64le(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def test_pinned_values_of_the_byte_layout():
    """Literal answers: a change of seed, endianness, width or chain order breaks these."""
    local = local_block_hashes(np.arange(32, dtype=np.int32), 16)
    assert local == [0xD47A8F41C833328A, 0xD43939178ABD00DB]
    assert chain_hashes(local) == [0xD47A8F41C833328A, 0xBF15DFFB16447F38]
    image = MmObject(mm_hash=0xFFFFFFFFFFFFFFFF, offsets=[(20, 24)])
    other = MmObject(mm_hash=7, offsets=[(31, 40)])
    assert local_block_hashes(np.arange(32, dtype=np.int32), 16, [image, other])[1] == 0x4E7148A88392FC34


def test_local_hash_is_xxh3_of_u32_le_tokens_and_partial_block_is_skipped():
    tokens = [5, 150_000, 2**31 - 1, 0] * 10  # 40 tokens: two full blocks of 16 and 8 left over
    expected = [xxh3(u32le(tokens[0:16])), xxh3(u32le(tokens[16:32]))]
    assert local_block_hashes(np.asarray(tokens, dtype=np.int32), 16) == expected
    assert local_block_hashes(tokens, 16) == expected  # a plain list gives the same answer
    assert local_block_hashes(tokens_from_bytes(tokens_to_bytes(tokens)), 16) == expected  # bus bytes, zero-copy view
    assert local_block_hashes(np.asarray(tokens, dtype=np.int64), 16) == expected
    assert local_block_hashes(tokens[:15], 16) == [] and local_block_hashes(tokens, 0) == []


def test_token_ids_wrap_to_u32_like_rust_as_u32():
    tokens = [-1] * 4
    assert local_block_hashes(np.asarray(tokens, dtype=np.int32), 4) == [xxh3(b"\xff" * 16)]
    assert local_block_hashes(np.asarray([2**32 - 1] * 4, dtype=np.int64), 4) == [xxh3(b"\xff" * 16)]


def test_chain_hash_is_xxh3_of_parent_and_local_as_u64_le():
    local = [xxh3(u32le([i] * 4)) for i in range(4)]
    seq = [local[0]]
    for value in local[1:]:
        seq.append(xxh3(u64le(seq[-1], value)))
    assert chain_hashes(local) == seq
    assert extend_chain(seq[1], local[2:]) == seq[2:]  # continuing from a known parent
    assert extend_chain(None, []) == [] and chain_hashes([]) == []
    assert sequence_block_hashes(np.asarray([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, dtype=np.int32), 4) == (local, seq)


def test_image_blocks_append_sorted_mm_hashes_and_leave_other_blocks_alone():
    tokens = list(range(100, 164))  # 4 blocks of 16
    big, small = 0xF000_0000_0000_0001, 0x0000_0000_0000_0002
    objects = [MmObject(mm_hash=big, offsets=[(20, 40)]),  # blocks 1 and 2
               MmObject(mm_hash=small, offsets=[(36, 48)])]  # block 2 only (end exclusive: 48 is block 3's first)
    got = local_block_hashes(np.asarray(tokens, dtype=np.int32), 16, objects)
    assert got[0] == xxh3(u32le(tokens[0:16]))  # text before the image keeps its plain hash (shared prefix)
    assert got[1] == xxh3(u32le(tokens[16:32]) + u64le(big))
    assert got[2] == xxh3(u32le(tokens[32:48]) + u64le(small, big))  # sorted ascending, whatever the input order
    assert got[3] == xxh3(u32le(tokens[48:64]))


def test_same_image_at_same_place_matches_and_a_different_image_does_not():
    tokens = np.arange(48, dtype=np.int32)
    first = local_block_hashes(tokens, 16, [MmObject(mm_hash=11, offsets=[(16, 32)])])
    again = local_block_hashes(tokens, 16, [MmObject(mm_hash=11, offsets=[(16, 32)])])
    other = local_block_hashes(tokens, 16, [MmObject(mm_hash=12, offsets=[(16, 32)])])
    assert first == again
    assert first[0] == other[0] and first[1] != other[1]
    assert chain_hashes(first)[2] != chain_hashes(other)[2]  # the image taints every later sequence hash


def test_image_only_in_the_partial_tail_or_empty_range_changes_nothing():
    tokens = np.arange(40, dtype=np.int32)
    plain = local_block_hashes(tokens, 16)
    assert local_block_hashes(tokens, 16, [MmObject(mm_hash=3, offsets=[(33, 40)])]) == plain
    assert local_block_hashes(tokens, 16, [MmObject(mm_hash=3, offsets=[(5, 5)])]) == plain


@pytest.mark.parametrize(("offsets", "expected"), [
    ([(0, 1)], {0: [9]}),
    ([(15, 17)], {0: [9], 1: [9]}),
    ([(16, 32)], {1: [9]}),
    ([(0, 10), (40, 41)], {0: [9], 2: [9]}),
    ([(60, 200)], {3: [9]}),  # clipped to the full blocks
])
def test_block_mm_hashes_maps_offsets_to_overlapping_blocks(offsets, expected):
    assert block_mm_hashes([MmObject(mm_hash=9, offsets=offsets)], 16, 4) == expected
