"""Incremental detokenization with stop strings, shared by every text worker. Pure: takes a decode function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decoder returns for a cut multi-byte character


class TextStream:
    """Turns a growing list of token ids into UTF-8-safe text deltas, cutting at the first stop string.

    Decodes only a short window (vLLM's prefix/read offsets), so cost per token stays flat.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._held = ""  # decoded text not yet released (may be the start of a stop string)
        self._tail = ""  # last released characters, for stop strings spanning two deltas
        self.stopped = False  # a stop string was found; nothing more is released

    def push(self, new_ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now safe to send."""
        if self.stopped:
            return ""
        self.ids.extend(new_ids)
        self._held += self._decode_delta()
        return self._release(final=False)

    def resume(self, ids: Sequence[int]) -> None:
        """Continue a stream another worker began: `ids` were generated and their released text delivered already."""
        if ids:
            self.push(ids)

    def flush(self) -> str:
        """End of generation: release everything held (up to a stop string)."""
        if self.stopped:
            return ""
        return self._release(final=True)

    def _decode_delta(self) -> str:
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return full[len(prefix) :]

    def _release(self, final: bool) -> str:
        if not self._stop:
            out, self._held = self._held, ""
            return out
        window = self._tail + self._held
        cut = min((i for i in (window.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out = window[len(self._tail) : cut] if cut >= len(self._tail) else ""
            self._held = ""
            return out
        keep = 0 if final else self._partial_stop_len(window)
        out = self._held[: len(self._held) - keep] if keep else self._held
        self._held = self._held[len(out) :]
        self._tail = (self._tail + out)[-self._max_stop :]
        return out

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return min(best, len(self._held))
