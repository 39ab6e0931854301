"""KL divergence of a model's next-token distributions from a reference's, as llama.cpp's
`llama-perplexity --kl-divergence` computes it: the same windows and scored tokens as perplexity (the second
half of each n_ctx window), KL(P_ref || P_model) per token over the whole vocabulary, its mean and standard
error, the share of tokens where both models' top choice agrees, and both perplexities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .perplexity import count_windows, scored_logits, window


@dataclass(frozen=True)
class KLDResult:
    kld_mean: float
    kld_stderr: float
    same_top_pct: float
    ppl: float
    ppl_ref: float
    n_chunks: int
    n_scored: int

    def to_dict(self) -> dict:
        return asdict(self)


def token_stats(ref_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray, rows: int = 32):
    """Per token: KL(ref || model), model NLL, reference NLL, whether the argmaxes agree (float64 math)."""
    n = len(targets)
    kld, nll, nll_ref, same = np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=bool)
    for r0 in range(0, n, rows):
        a = ref_logits[r0 : r0 + rows].astype(np.float64)
        b = logits[r0 : r0 + rows].astype(np.float64)
        la = a - a.max(axis=1, keepdims=True)
        la -= np.log(np.exp(la).sum(axis=1, keepdims=True))
        lb = b - b.max(axis=1, keepdims=True)
        lb -= np.log(np.exp(lb).sum(axis=1, keepdims=True))
        idx = np.arange(len(a))
        t = targets[r0 : r0 + rows]
        kld[r0 : r0 + len(a)] = (np.exp(la) * (la - lb)).sum(axis=1)
        nll[r0 : r0 + len(a)] = -lb[idx, t]
        nll_ref[r0 : r0 + len(a)] = -la[idx, t]
        same[r0 : r0 + len(a)] = a.argmax(axis=1) == b.argmax(axis=1)
    return kld, nll, nll_ref, same


def kl_divergence(
    ref_model,
    model,
    tokens: np.ndarray,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> KLDResult:
    """Compare `model` with `ref_model` (same vocabulary) over consecutive n_ctx windows of `tokens`."""
    return kl_divergence_many(ref_model, [model], tokens, n_ctx, n_chunks, bos_id, on_chunk)[0]


def kl_divergence_many(
    ref_model,
    models: list,
    tokens: np.ndarray,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int, float], None] | None = None,
) -> list[KLDResult]:
    """kl_divergence for several models against one reference, whose logits are computed once per window."""
    for model in models:
        if ref_model.config.n_vocab != model.config.n_vocab:
            raise ConfigError(
                f"the models have different vocabularies ({ref_model.config.n_vocab} vs {model.config.n_vocab} tokens)"
            )
    n_chunks = count_windows(len(tokens), n_ctx, n_chunks)
    parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in models]
    for c in range(n_chunks):
        chunk = window(tokens, c, n_ctx, bos_id)
        ref = list(scored_logits(ref_model, chunk))
        for model, part in zip(models, parts):
            for (ref_logits, targets), (logits, _) in zip(ref, scored_logits(model, chunk)):
                part.append(token_stats(ref_logits, logits, targets))
        if on_chunk is not None:
            on_chunk(c + 1, n_chunks, float(np.mean(np.concatenate([p[0] for p in parts[0]]))))
    return [_summary(part, n_chunks) for part in parts]


def _summary(part: list[tuple[np.ndarray, ...]], n_chunks: int) -> KLDResult:
    kld, nll, nll_ref, same = (np.concatenate([p[i] for p in part]) for i in range(4))
    n = len(kld)
    return KLDResult(
        kld_mean=float(kld.mean()),
        kld_stderr=float(kld.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        same_top_pct=100.0 * float(same.mean()),
        ppl=math.exp(float(nll.mean())),
        ppl_ref=math.exp(float(nll_ref.mean())),
        n_chunks=n_chunks,
        n_scored=n,
    )
