"""Mooncake trace records -> text prompts that share a prefix exactly where the records' hash_ids do."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TRACE_BLOCK_TOKENS = 512  # each Mooncake hash id stands for one 512-token prompt block
WORDS = """time cache token router block prefix worker mesh image model layer step noise batch queue
stream reply event score load graph node route value water light river stone cloud green blue red white
house school paper story world city field music night morning garden window table chair bread apple
north south east west small large early later quick slow open close first second third""".split()


@dataclass(frozen=True)
class TraceRequest:
    hash_ids: tuple[int, ...]  # prompt block ids; a shared leading run = a shared prompt prefix
    input_length: int  # prompt tokens in the original trace
    output_length: int  # completion tokens in the original trace
    timestamp_ms: int


def load_trace(path: str | Path, max_requests: int | None = None) -> list[TraceRequest]:
    """Parse a Mooncake JSONL trace (first `max_requests` records)."""
    requests = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if max_requests is not None and len(requests) >= max_requests:
                break
            if line.strip():
                record = json.loads(line)
                requests.append(TraceRequest(tuple(record["hash_ids"]), record["input_length"],
                                             record["output_length"], record.get("timestamp", 0)))
    if not requests:
        raise ValueError(f"{path}: no trace records")
    return requests


@lru_cache(maxsize=65536)
def block_words(hash_id: int, num_words: int) -> tuple[str, ...]:
    """The words of block `hash_id`: a fixed pseudo-random sequence seeded by the id (prefixes agree across lengths)."""
    rng = random.Random(hash_id)
    return tuple(rng.choice(WORDS) for _ in range(num_words))


def prompt_for(request: TraceRequest, words_per_block: int, max_blocks: int | None = None) -> str:
    """One word per TRACE_BLOCK_TOKENS / words_per_block trace tokens; the last block is cut to input_length.

    `max_blocks` keeps only the leading blocks of long prompts (prefixes stay shared) to fit a model's context.
    """
    if words_per_block < 1:
        raise ValueError(f"words_per_block={words_per_block} must be >= 1")
    num_blocks = len(request.hash_ids)
    last_tokens = request.input_length - TRACE_BLOCK_TOKENS * (num_blocks - 1)
    if max_blocks is not None and num_blocks > max_blocks:
        num_blocks, last_tokens = max_blocks, TRACE_BLOCK_TOKENS
    last_words = min(words_per_block, max(1, math.ceil(words_per_block * last_tokens / TRACE_BLOCK_TOKENS)))
    words: list[str] = []
    for index, hash_id in enumerate(request.hash_ids[:num_blocks]):
        words.extend(block_words(hash_id, words_per_block if index < num_blocks - 1 else last_words))
    return " ".join(words)


def default_trace_path() -> Path:
    """../shared/data/traces/ next to the repository root (the project's layout)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "mooncake_conversation_trace.jsonl"
