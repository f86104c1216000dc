"""Collects per-token log-probabilities until the next reply carries them (shared by every text worker)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.work import TokenLogprobs, pack_logprobs


class LogprobBuffer:
    """Per token: its log-probability and its `num_top` most likely alternatives (ids and log-probabilities)."""

    def __init__(self, num_top: int):
        self.num_top = num_top
        self._logprobs: list[float] = []
        self._top_ids: list[Sequence[int]] = []
        self._top_logprobs: list[Sequence[float]] = []

    def add(self, logprob: float, top_ids: Sequence[int] = (), top_logprobs: Sequence[float] = ()) -> None:
        self._logprobs.append(logprob)
        if self.num_top:
            self._top_ids.append(top_ids)
            self._top_logprobs.append(top_logprobs)

    def take(self) -> TokenLogprobs | None:
        """Everything added since the last take (None when nothing was)."""
        if not self._logprobs:
            return None
        packed = pack_logprobs(self._logprobs, self._top_ids, self._top_logprobs, self.num_top)
        self._logprobs, self._top_ids, self._top_logprobs = [], [], []
        return packed
