"""Router-internal prefix keys: one u64 per block that stands for the whole prefix up to and including it.

key[i] = Σ_{j≤i} local[j]·P^(i-j) mod 2^64, computed as P^i · cumsum(local[j]·P^-j) with numpy (wrapping u64)
instead of a sequential XXH3 chain: ~20 µs instead of ~50 µs for 256 blocks. The keys never leave the routers
(predicted active blocks, approximate-mode entries, replica sync); workers' events keep their own block hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_TABLE_BLOCKS = 1 << 14  # precomputed powers cover prompts up to this many blocks; longer ones compute their own


def _powers(base: int, n: int) -> np.ndarray:
    powers = np.full(n, base, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(powers)  # wraps mod 2^64


_POW = _powers(_P, _TABLE_BLOCKS)  # constant tables, 128 KiB each
_POW_INV = _powers(_P_INV, _TABLE_BLOCKS)


def prefix_keys(local_hashes: Sequence[int]) -> list[int]:
    """Prefix identity of every block: equal keys at position i mean equal local hashes at 0..i (up to collisions)."""
    n = len(local_hashes)
    if n == 0:
        return []
    if n <= _TABLE_BLOCKS:
        pow_, pow_inv = _POW[:n], _POW_INV[:n]
    else:
        pow_, pow_inv = _powers(_P, n), _powers(_P_INV, n)
    values = np.array(local_hashes, dtype=np.uint64)
    np.multiply(values, pow_inv, out=values)  # in place, and the method rather than np.cumsum's Python wrapper
    values.cumsum(out=values)
    return np.multiply(values, pow_, out=values).tolist()


def leading_active(active: dict[int, int] | set[int], keys: Sequence[int]) -> int:
    """How many leading `keys` are in `active`, by binary search: active sets are prefix-closed."""
    if not active or not keys or keys[0] not in active:
        return 0
    low, high = 1, len(keys)  # invariant: keys[:low] are all active
    while low < high:
        mid = (low + high + 1) // 2
        if keys[mid - 1] in active:
            low = mid
        else:
            high = mid - 1
    return low
