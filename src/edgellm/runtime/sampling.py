"""Token samplers over one row of logits, in llama.cpp's default chain order:
logit bias -> penalties (repetition, frequency, presence) -> top-k -> top-p -> min-p -> temperature -> draw.

Each filter is one function returning masked logits (-inf for removed tokens); `make_sampler` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError


MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1.0 disables
    min_p: float = 0.05  # 0.0 disables
    repeat_penalty: float = 1.0  # 1.0 disables
    repeat_last_n: int = 64  # how many recent tokens the penalties look at
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the recent tokens (OpenAI)
    presence_penalty: float = 0.0  # subtracted once if present in the recent tokens (OpenAI)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); -100 bans, +100 forces
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (all(-100.0 <= b <= 100.0 for _, b in self.logit_bias), "logit_bias values must be in [-100, 100]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"bad sampling setting: {message}")

    @property
    def greedy(self) -> bool:
        """Temperatures this small leave only the most likely token (dividing by them would overflow)."""
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1


def repetition_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """Divide positive logits of recently seen tokens by `penalty`, multiply negative ones (llama.cpp / CTRL)."""
    if penalty == 1.0 or not len(recent):
        return logits
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    out = logits.copy()
    seen = out[ids].astype(np.float64)
    with np.errstate(over="ignore"):
        out[ids] = np.clip(np.where(seen > 0, seen / penalty, seen * penalty), -FLOAT_MAX, FLOAT_MAX)
    return out


FLOAT_MAX = float(np.finfo(np.float32).max) / 4  # penalised logits stay finite whatever the penalty


def frequency_presence_penalty(logits: np.ndarray, recent: Sequence[int], frequency: float,
                               presence: float) -> np.ndarray:
    """Subtract frequency x count + presence x (count > 0) from each recently seen token's logit (OpenAI's
    definition, applied over the same window as the repetition penalty, as llama.cpp does)."""
    if (frequency == 0.0 and presence == 0.0) or not len(recent):
        return logits
    ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    out = logits.copy()
    out[ids] -= np.float32(frequency) * counts + np.float32(presence)
    return out


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the tokens top_k(logits, k) keeps, ties included; the finite ones when k is off."""
    if k <= 0 or k >= logits.size:
        return np.flatnonzero(np.isfinite(logits))
    return np.flatnonzero((logits >= kth_largest(logits, k)) & np.isfinite(logits))


def kth_largest(values: np.ndarray, k: int) -> float:
    """np.partition(values, -k)[-k] for a row without NaN; in C (a heap of k) where it is built: a partition of a
    vocabulary-sized row was a fifth of a batched server step."""
    from ..kernels import _C

    if _C is not None and values.dtype == np.float32 and values.flags.c_contiguous and k <= 4096:
        return _C.kth_largest(values, k)
    return np.partition(values, -k)[-k]


def _probs(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - np.max(logits))
    return z / z.sum()


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    probs = _probs(logits)
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cumulative, p) + 1)
    out = np.full_like(logits, -np.inf)
    keep = order[:n_keep]
    out[keep] = logits[keep]
    return out


def min_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Drop tokens less likely than p times the most likely one."""
    if p <= 0.0:
        return logits
    threshold = np.max(logits) + np.log(p)
    return np.where(logits >= threshold, logits, -np.inf)


class Sampler:
    """Picks the next token from a row of logits given the tokens so far."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.filters: list[Callable[[np.ndarray], np.ndarray]] = [
            lambda x: top_k(x, params.top_k),
            lambda x: top_p(x, params.top_p),
            lambda x: min_p(x, params.min_p),
        ]

    def __call__(self, logits: np.ndarray, history: Sequence[int] = (), allowed: np.ndarray | None = None) -> int:
        """The next token; `allowed` (a boolean mask over the vocabulary, from a grammar) rules out the rest."""
        return self.draw(self.adjust(logits, history, allowed))

    def adjust(self, logits: np.ndarray, history: Sequence[int] = (), allowed: np.ndarray | None = None) -> np.ndarray:
        """The logits the filters draw from: bias, penalties and the grammar's mask applied (their log-softmax is
        what the server reports as logprobs)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.logit_bias:
            logits = logits.copy()
            for token, bias in p.logit_bias:
                if 0 <= token < logits.size:
                    logits[token] += np.float32(bias)
        recent = history[-p.repeat_last_n :] if p.repeat_last_n else ()
        logits = repetition_penalty(logits, recent, p.repeat_penalty)
        logits = frequency_presence_penalty(logits, recent, p.frequency_penalty, p.presence_penalty)
        if allowed is not None:
            logits = np.where(allowed[: logits.size], logits, -np.inf).astype(np.float32)
        return logits

    def draw(self, logits: np.ndarray) -> int:
        """The filters and the draw on the top-k candidates only (a few dozen values instead of the vocabulary,
        as llama.cpp does). The candidates stay in vocabulary order, so the draw maps the random number to the same
        token the whole filtered vocabulary would (the dropped tokens have probability zero)."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        from ..kernels import _C

        if _C is not None and logits.dtype == np.float32 and logits.flags.c_contiguous:  # the same chain in C
            token = _C.sample(logits, p.top_k, p.top_p, p.min_p, p.temperature, self.rng.random())
            if token < 0:
                raise ValueError("no token can be sampled: every logit is -inf or NaN")
            return token
        return self.draw_reference(logits)

    def draw_reference(self, logits: np.ndarray) -> int:
        """`draw` in NumPy: what the C chain must equal."""
        p = self.params
        ids = candidates(logits, p.top_k)
        kept = logits[ids]
        for f in self.filters[1:]:
            kept = f(kept)
        probs = _probs(kept / p.temperature)
        return int(ids[self.rng.choice(probs.size, p=probs)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    return z - np.log(np.exp(z).sum())


def make_sampler(params: SamplingParams | None = None, **overrides) -> Sampler:
    base = params or SamplingParams()
    if overrides:
        base = SamplingParams(**{**base.__dict__, **overrides})
    return Sampler(base)
