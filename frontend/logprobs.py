"""Per-token log-probabilities from the bus (token ids + float32 arrays) in OpenAI's two formats.

Chat: `logprobs.content` entries `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
Completions: parallel arrays `tokens`, `token_logprobs`, `top_logprobs` (dicts of up to k + 1 strings: the top k
and the sampled token) and `text_offset` (characters before each token in the choice's text).
A token's text is what it adds after the token before it (so WordPiece `##s` reads `s`, a word after another
` word`); its bytes are the byte-level BPE bytes where the tokenizer is byte-level, else the text's UTF-8.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer, decoders

from protocol.openai import CompletionLogprobs, TokenLogprob, TopLogprob
from protocol.work import TokenLogprobs, unpack_logprobs

MIN_LOGPROB = -9999.0  # OpenAI's stand-in for "very unlikely" (JSON has no -inf)


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the character a byte-level BPE token uses for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenTexts:
    """Token text and bytes for one choice; remembers the previous token so texts concatenate to the output."""

    def __init__(self, tokenizer: Tokenizer, previous: int | None = None):
        self.tokenizer = tokenizer
        self.previous = previous  # the token before the next one (None: the completion's first, decoded alone)
        self.is_byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)

    def text(self, token: int, previous: int | None) -> str:
        if previous is None:
            return self.tokenizer.decode([token], skip_special_tokens=False)
        before = self.tokenizer.decode([previous], skip_special_tokens=False)
        both = self.tokenizer.decode([previous, token], skip_special_tokens=False)
        return both[len(before):] if both.startswith(before) else self.tokenizer.decode([token], skip_special_tokens=False)

    def bytes(self, token: int, text: str) -> list[int]:
        if self.is_byte_level:
            table = _byte_level_table()
            piece = self.tokenizer.id_to_token(token) or ""
            if all(c in table for c in piece):
                return [table[c] for c in piece]
        return list(text.encode())

    def walk(self, token_ids: np.ndarray, packed: TokenLogprobs):
        """(text, bytes, logprob, [(alt text, alt bytes, alt logprob)]) per token, advancing `previous`."""
        logprobs, top_ids, top_logprobs = unpack_logprobs(packed)
        for i, token in enumerate(token_ids.tolist()):
            prev = self.previous
            text = self.text(token, prev)
            alts = []
            for alt, alt_lp in zip(top_ids[i].tolist(), top_logprobs[i].tolist()):
                alt_text = self.text(alt, prev)
                alts.append((alt_text, self.bytes(alt, alt_text), _finite(alt_lp)))
            self.previous = token
            yield text, self.bytes(token, text), _finite(float(logprobs[i])), alts


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def chat_entries(texts: TokenTexts, token_ids: np.ndarray, packed: TokenLogprobs) -> list[TokenLogprob]:
    return [TokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=[TopLogprob(token=t, logprob=a, bytes=b) for t, b, a in alts])
            for text, raw, lp, alts in texts.walk(token_ids, packed)]


def completion_logprobs(texts: TokenTexts, token_ids: np.ndarray, packed: TokenLogprobs, offset: int) -> tuple[CompletionLogprobs, int]:
    """The arrays for these tokens, `text_offset` counted from `offset`; returns them and the offset after them."""
    out = CompletionLogprobs()
    for text, _, lp, alts in texts.walk(token_ids, packed):
        top = {t: a for t, _, a in alts}
        top.setdefault(text, lp)  # the sampled token is always there (up to k + 1 entries)
        out.tokens.append(text)
        out.token_logprobs.append(lp)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out, offset


def merge_completion(parts: list[CompletionLogprobs]) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for part in parts:
        out.tokens += part.tokens
        out.token_logprobs += part.token_logprobs
        out.top_logprobs += part.top_logprobs
        out.text_offset += part.text_offset
    return out


def mean_logprob(packed: list[TokenLogprobs]) -> float:
    """Mean log-probability per token (best_of's ranking); -inf for an empty answer."""
    values = np.concatenate([unpack_logprobs(p)[0] for p in packed]) if packed else np.zeros(0)
    return float(values.mean()) if values.size else float("-inf")
