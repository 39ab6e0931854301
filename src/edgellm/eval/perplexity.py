"""Perplexity computed the way llama.cpp's `llama-perplexity` does it, so the numbers compare directly.

The whole text is tokenized once (BOS only if the vocabulary adds one). Each chunk is a window of n_ctx
tokens evaluated from an empty cache, its first token replaced by BOS when the vocabulary adds one, and only
the second half of the window is scored, so every scored token sees at least n_ctx/2 tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..runtime.kv_cache import KVCache


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    n_chunks: int
    n_ctx: int
    n_scored: int

    def to_dict(self) -> dict:
        return asdict(self)


def token_nll(logits: np.ndarray, targets: np.ndarray, rows_per_step: int = 32) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64, a few rows at a time (vocabularies reach 262k)."""
    out = np.empty(len(targets))
    for r0 in range(0, len(targets), rows_per_step):
        x = logits[r0 : r0 + rows_per_step].astype(np.float64)  # (rows, n_vocab)
        peak = x.max(axis=1)
        lse = peak + np.log(np.exp(x - peak[:, None]).sum(axis=1))
        out[r0 : r0 + len(x)] = lse - x[np.arange(len(x)), targets[r0 : r0 + len(x)]]
    return out


def count_windows(n_tokens: int, n_ctx: int, n_chunks: int | None) -> int:
    """How many n_ctx windows to score (all that fit, or the first n_chunks); clear errors when none can be."""
    if n_ctx < 4:
        raise ConfigError(f"context size {n_ctx} is too small; use at least 4 (512 is usual)")
    available = n_tokens // n_ctx
    if available == 0:
        raise ConfigError(
            f"the text has {n_tokens} tokens, fewer than one window of {n_ctx}; give a longer file or a smaller -c"
        )
    return available if n_chunks is None else min(n_chunks, available)


def window(tokens: np.ndarray, c: int, n_ctx: int, bos_id: int | None) -> np.ndarray:
    """Window c of `tokens`, its first token replaced by BOS when the vocabulary adds one."""
    chunk = np.array(tokens[c * n_ctx : (c + 1) * n_ctx], dtype=np.int64)
    if bos_id is not None:
        chunk[0] = bos_id
    return chunk


def scored_logits(model, chunk: np.ndarray, n_batch: int = 512, cache_type: str = "f32"):
    """Yield (logits, targets) for the scored positions of `chunk` (its second half), a batch at a time."""
    n_ctx = len(chunk)
    first = n_ctx // 2
    cache = KVCache(model.config, n_ctx, cache_type=cache_type)
    for start in range(0, n_ctx, n_batch):
        batch = chunk[start : start + n_batch]
        lo = max(first - start, 0)  # only positions first..n_ctx-2 predict a scored token
        hi = min(len(batch), n_ctx - 1 - start)
        logits = model.forward(batch, cache, slice(lo, hi) if lo < hi else None)  # (hi - lo, n_vocab)
        if lo < hi:
            yield logits, chunk[start + lo + 1 : start + hi + 1]


def chunk_nll(model, chunk: np.ndarray, n_batch: int = 512, cache_type: str = "f32", nll_rows: int = 32) -> np.ndarray:
    """Negative log-likelihood of each token in the second half of `chunk` given what precedes it."""
    return np.concatenate([token_nll(l, t, nll_rows) for l, t in scored_logits(model, chunk, n_batch, cache_type)])


def perplexity(
    model,
    tokens: np.ndarray,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
    cache_type: str = "f32",
    n_batch: int = 512,
    nll_rows: int = 32,
) -> PerplexityResult:
    """Perplexity over consecutive n_ctx windows of `tokens`; `bos_id` replaces each window's first token.

    `on_chunk(done, total, running_ppl)` is called after each window (progress display); `n_batch` tokens go
    through the model at a time and `nll_rows` rows of logits are turned to float64 at a time (memory).
    """
    n_chunks = count_windows(len(tokens), n_ctx, n_chunks)
    nll_sum = nll2_sum = 0.0
    count = 0
    for c in range(n_chunks):
        nll = chunk_nll(model, window(tokens, c, n_ctx, bos_id), n_batch, cache_type, nll_rows)
        nll_sum += float(nll.sum())
        nll2_sum += float(np.square(nll).sum())
        count += len(nll)
        if on_chunk is not None:
            on_chunk(c + 1, n_chunks, math.exp(nll_sum / count))
    mean = nll_sum / count
    variance = max(nll2_sum / count - mean * mean, 0.0)
    ppl = math.exp(mean)
    stderr = math.sqrt(variance / (count - 1)) * ppl if count > 1 else float("nan")
    return PerplexityResult(ppl, stderr, n_chunks, n_ctx, count)
