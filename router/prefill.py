"""How long a worker takes to prefill, and how much of its routed prefill is still to run, from first-token times.

Pure: the tracker feeds it routing decisions and first tokens with the router's clock. The worker is treated as one
first-come-first-served server: a request's prefill starts when it was routed or when the previous first token came
back, whichever is later. Requests whose first tokens come back together were prefilled in one engine step, so their
tokens and time form one sample. The fitted curve is `c0 + c1·n + c2·n²` seconds for n tokens (every c ≥ 0):
a step's fixed cost, the per-token cost, and attention's growth with long prompts, which a plain tokens/s rate
misses (a 85k-token prompt would look twice as fast as it is).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

_KEEP = 0.95  # weight of older samples per new one: the fit follows the last ~20 prefill steps
_SCALE = 1e-4  # tokens -> fit units (keeps n² near 1 for the normal equations)
_SAME_STEP_S = 1e-3  # first tokens this close together came from one engine step
_MIN_SAMPLES = 3.0  # decayed sample weight before the fit is used
_SUBSETS = [s for r in (3, 2, 1) for s in itertools.combinations(range(3), r)]


@dataclass
class PrefillModel:
    """Seconds to prefill n tokens on one worker: a non-negative quadratic fitted by decayed least squares."""

    gram: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # Σ w·x·xᵀ, x = (1, n, n²) in fit units
    moment: np.ndarray = field(default_factory=lambda: np.zeros(3))  # Σ w·x·seconds
    weight: float = 0.0  # Σ w
    coef: tuple[float, float, float] | None = None  # None until enough samples

    def observe(self, tokens: int, seconds: float) -> None:
        n = tokens * _SCALE
        x = np.array([1.0, n, n * n])
        self.gram = self.gram * _KEEP + np.outer(x, x)
        self.moment = self.moment * _KEEP + x * seconds
        self.weight = self.weight * _KEEP + 1.0
        if self.weight >= _MIN_SAMPLES:
            self.coef = self._fit()

    def _fit(self) -> tuple[float, float, float] | None:
        """Least squares with every coefficient >= 0: the best of the fits over subsets of the three terms."""
        best, best_loss = None, math.inf
        for subset in _SUBSETS:
            idx = list(subset)
            try:
                c = np.linalg.solve(self.gram[np.ix_(idx, idx)], self.moment[idx])
            except np.linalg.LinAlgError:
                continue
            if (c < 0).any():
                continue
            loss = float(c @ self.gram[np.ix_(idx, idx)] @ c - 2 * c @ self.moment[idx])  # + Σ w·y², constant
            if loss < best_loss:
                full = [0.0, 0.0, 0.0]
                for i, value in zip(idx, c):
                    full[i] = float(value)
                best, best_loss = tuple(full), loss
        return best

    def seconds(self, tokens: int) -> float:
        if tokens <= 0 or self.coef is None:
            return 0.0
        n = tokens * _SCALE
        c0, c1, c2 = self.coef
        return c0 + c1 * n + c2 * n * n


@dataclass
class PrefillQueue:
    """A worker's routed prefill that has not produced a first token yet, in seconds of that worker's time.

    `fixed_rate` (tokens/s) replaces the learned curve by n / rate; 0 never drains (Dynamo's bookkeeping: the tokens
    count in full until the first token). `is_known` is False until there is a curve; the cost then counts tokens.
    """

    fixed_rate: float | None = None
    model: PrefillModel = field(default_factory=PrefillModel)
    backlog_s: float = 0.0  # still to run at `at`
    pending_s: float = 0.0  # Σ predicted seconds of the requests routed here without a first token
    at: float = 0.0  # router clock seconds
    last_done: float = -math.inf  # when the previous first token came back
    tokens_per_s: float = 0.0  # mean rate over the samples (0 = unknown)
    _step: tuple[int, float] | None = None  # the latest engine step's (tokens, seconds), folded until it is complete
    _rate_tokens: float = 0.0
    _rate_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.fixed_rate:
            self.tokens_per_s = self.fixed_rate

    @property
    def is_known(self) -> bool:
        if self.fixed_rate is not None:
            return self.fixed_rate > 0
        return self.model.coef is not None

    def seconds(self, tokens: int) -> float:
        """Predicted prefill time of `tokens` on this worker when it starts them."""
        if self.fixed_rate is not None:
            return tokens / self.fixed_rate if self.fixed_rate > 0 and tokens > 0 else 0.0
        return self.model.seconds(tokens)

    def remaining(self, now: float) -> float:
        """Seconds of routed prefill still to run at `now`."""
        return min(self.pending_s, max(0.0, self.backlog_s - (now - self.at)))

    def add(self, tokens: int, now: float) -> float:
        """A request with `tokens` to prefill was routed here; returns its predicted seconds (give them back later)."""
        predicted = self.seconds(tokens)
        self.backlog_s, self.at = self.remaining(now) + predicted, now
        self.pending_s += predicted
        return predicted

    def done(self, tokens: int, predicted_s: float, routed_at: float, now: float | None) -> None:
        """That request's first token came back at `now` (None: it ended without one; learn nothing)."""
        self.pending_s = max(0.0, self.pending_s - predicted_s)
        if now is None:
            self.backlog_s = min(self.backlog_s, self.pending_s)
            return
        if tokens > 0 and self.fixed_rate is None:
            self._learn(tokens, max(0.0, now - max(routed_at, self.last_done)))
        self.last_done = max(self.last_done, now)
        self.backlog_s, self.at = self.remaining(now), now

    def _learn(self, tokens: int, seconds: float) -> None:
        """Samples are whole engine steps, so the latest one waits until a first token shows the next step began."""
        if seconds < _SAME_STEP_S:
            if self._step is not None:  # prefilled in the same step as the previous request
                self._step = (self._step[0] + tokens, self._step[1])
            return
        if self._step is not None:
            self._commit(*self._step)
        self._step = (tokens, seconds)

    def _commit(self, tokens: int, seconds: float) -> None:
        self.model.observe(tokens, seconds)
        self._rate_tokens = self._rate_tokens * _KEEP + tokens
        self._rate_seconds = self._rate_seconds * _KEEP + seconds
        if self._rate_seconds > _SAME_STEP_S:
            self.tokens_per_s = self._rate_tokens / self._rate_seconds
