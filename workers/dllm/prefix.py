"""Glue between a sequence and the cross-request prefix cache: attach a cached prompt prefix, store final blocks."""

from __future__ import annotations

from protocol.kv import extend_chain, local_block_hashes
from workers.dllm.cache import CachedBlock, PrefixCache, concat_blocks
from workers.dllm.sequence import Sequence


def is_cacheable(cache: PrefixCache, seq: Sequence, block_size: int) -> bool:
    """Cross-request reuse needs the block KV cache on the cache's own block grid."""
    return seq.uses_cache and seq.params.block_length == block_size and cache.max_blocks > 0


def attach_prefix(cache: PrefixCache, seq: Sequence, block_size: int) -> None:
    """Start `seq` from the longest cached prefix of its prompt's full blocks (hashes as the router computes them)."""
    if not is_cacheable(cache, seq, block_size):
        return
    num_full = seq.prompt_len // block_size
    local = local_block_hashes(seq.tokens[: num_full * block_size].numpy(), block_size, seq.mm_objects)
    matched = cache.match(extend_chain(None, local))
    if not matched:
        return
    seq.kv = concat_blocks(matched)  # fresh tensors: torch.cat copies
    seq.kv_len = seq.cached_tokens = len(matched) * block_size
    seq.block_hashes = [b.block_hash for b in matched]


def store_final_blocks(cache: PrefixCache, seq: Sequence, old_kv_len: int, block_size: int) -> None:
    """Insert the full blocks whose KV just became final (prompt blocks, finished answer blocks)."""
    if not is_cacheable(cache, seq, block_size) or seq.kv_len <= old_kv_len:
        return
    first, last = len(seq.block_hashes), seq.kv_len // block_size
    local = local_block_hashes(seq.tokens[first * block_size : last * block_size].numpy(), block_size, seq.mm_objects,
                               offset=first * block_size)
    parent = seq.block_hashes[-1] if seq.block_hashes else None
    chain = extend_chain(parent, local)
    blocks = []
    for n, (block_hash, tokens_hash) in enumerate(zip(chain, local)):
        lo = (first + n) * block_size
        kv = tuple((k[:, lo : lo + block_size].clone(), v[:, lo : lo + block_size].clone()) for k, v in seq.kv)
        blocks.append(CachedBlock(block_hash, parent if n == 0 else chain[n - 1], tokens_hash, kv))
    ancestors = list(seq.block_hashes)
    seq.block_hashes.extend(chain)
    cache.insert(ancestors, blocks)
