"""Token texts and bytes for logprobs: texts concatenate to the output, bytes are the exact byte-level BPE bytes."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from frontend.logprobs import TokenTexts, completion_logprobs, mean_logprob
from protocol.work import pack_logprobs
from workers.mocker.tokenizer import build_tokenizer


def test_byte_level_tokens_carry_their_exact_bytes_even_inside_a_character():
    tokenizer = build_tokenizer()
    ids = tokenizer.encode("héllo 🙂 world", add_special_tokens=False).ids
    texts = TokenTexts(tokenizer)
    walked = list(texts.walk(np.asarray(ids, dtype="<i4"), pack_logprobs([-0.5] * len(ids))))
    assert b"".join(bytes(raw) for _, raw, _, _ in walked) == "héllo 🙂 world".encode()
    assert any(len(raw) == 1 and raw[0] >= 0x80 for _, raw, _, _ in walked)  # a split multi-byte character


def test_word_piece_texts_read_as_they_join_the_previous_token():
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "cat": 3, "##s": 4}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    texts = TokenTexts(tokenizer, previous=1)  # after the prompt's "hello"
    packed = pack_logprobs([-1.0, -2.0, -3.0], [[2], [3], [4]], [[-1.0], [-2.0], [-3.0]], num_top=1)
    out, offset = completion_logprobs(texts, np.asarray([2, 3, 4], dtype="<i4"), packed, 0)
    assert out.tokens == [" world", " cat", "s"] and "".join(out.tokens) == " world cats"
    assert out.text_offset == [0, 6, 10] and offset == 11
    assert out.top_logprobs == [{" world": -1.0}, {" cat": -2.0}, {"s": -3.0}]


def test_best_of_ranks_by_mean_token_logprob():
    assert mean_logprob([pack_logprobs([-1.0, -3.0]), pack_logprobs([-2.0])]) == -2.0
    assert mean_logprob([]) == float("-inf")
