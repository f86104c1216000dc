"""Incremental detokenization: the per-token shortcut for context-free tokens releases exactly what windows do."""

from __future__ import annotations

import random

import pytest

from workers.mocker.tokenizer import TableDecoder, build_tokenizer
from workers.textstream import TextStream


@pytest.mark.parametrize("stop", [(), (" the",), ("e c", "zz")])
def test_pieces_of_context_free_tokens_release_the_same_text_as_window_decoding(stop):
    tokenizer = build_tokenizer()
    table = TableDecoder(tokenizer)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    rng = random.Random(1)
    words = tokenizer.encode("the cat sat on the mat, héllo 🙂 naïve café", add_special_tokens=False).ids
    for _ in range(300):  # mixes whole-word tokens with byte tokens that cut a multi-byte character
        ids = [rng.choice(words) if rng.random() < 0.7 else rng.randrange(size) for _ in range(rng.randrange(1, 20))]
        plain, fast = TextStream(tokenizer.decode, stop), TextStream(table, stop, piece=table.piece)
        out_plain = [plain.push([i]) for i in ids] + [plain.flush()]
        out_fast = [fast.push([i]) for i in ids] + [fast.flush()]
        assert out_fast == out_plain and fast.stopped == plain.stopped and fast.ids == plain.ids
