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

_KEEP = 0.95  # weight of older samples per new one: the fit follows the last ~20 prefill steps
_SCALE = 1e-4  # tokens -> fit units (keeps n² near 1 for the normal equations)
_SAME_STEP_S = 1e-3  # first tokens this close together came from one engine step
_MIN_SAMPLES = 3.0  # decayed sample weight before the fit is used
_SUBSETS = [s for r in (3, 2, 1) for s in itertools.combinations(range(3), r)]


@dataclass
class PrefillModel:
    """Seconds to prefill n tokens on one worker: a non-negative quadratic fitted by decayed least squares."""

    gram: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])  # Σ w·x·xᵀ, x = (1, n, n²)
    moment: list[float] = field(default_factory=lambda: [0.0] * 3)  # Σ w·x·seconds (n in fit units)
    weight: float = 0.0  # Σ w
    coef: tuple[float, float, float] | None = None  # None until enough samples

    def observe(self, tokens: int, seconds: float) -> None:
        n = tokens * _SCALE
        x = (1.0, n, n * n)
        for i in range(3):
            row = self.gram[i]
            for j in range(3):
                row[j] = row[j] * _KEEP + x[i] * x[j]
            self.moment[i] = self.moment[i] * _KEEP + x[i] * seconds
        self.weight = self.weight * _KEEP + 1.0
        if self.weight >= _MIN_SAMPLES:
            self.coef = self._fit()

    def _fit(self) -> tuple[float, float, float] | None:
        """Least squares with every coefficient >= 0: the best of the fits over subsets of the three terms."""
        best, best_loss = None, math.inf
        for subset in _SUBSETS:  # the full fit comes first and, when it is non-negative, is the best
            a = [[self.gram[i][j] for j in subset] for i in subset]
            b = [self.moment[i] for i in subset]
            c = _solve(a, b)
            if c is None or min(c) < 0:
                continue
            loss = sum(c[i] * (sum(a[i][j] * c[j] for j in range(len(c))) - 2 * b[i]) for i in range(len(c)))
            if loss < best_loss:
                full = [0.0, 0.0, 0.0]
                for i, value in zip(subset, c):
                    full[i] = value
                best, best_loss = (full[0], full[1], full[2]), loss
            if len(subset) == 3:
                break
        return best

    def seconds(self, tokens: int) -> float:
        if tokens <= 0 or self.coef is None:
            return 0.0
        n = tokens * _SCALE
        c0, c1, c2 = self.coef
        return c0 + c1 * n + c2 * n * n


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """x with a·x = b for up to 3 unknowns, by Cramer's rule; None if (nearly) singular."""
    size = len(b)
    if size == 1:
        return [b[0] / a[0][0]] if abs(a[0][0]) > 1e-12 else None
    if size == 2:
        det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
        if abs(det) < 1e-12:
            return None
        return [(b[0] * a[1][1] - a[0][1] * b[1]) / det, (a[0][0] * b[1] - b[0] * a[1][0]) / det]
    det = _det3(a)
    if abs(det) < 1e-12:
        return None
    return [_det3([[b[r] if c == k else a[r][c] for c in range(3)] for r in range(3)]) / det for k in range(3)]


def _det3(m: list[list[float]]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


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
