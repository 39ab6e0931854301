"""Measured sensitivity of each tensor: how much the model's output distribution moves when it alone is quantized.

The layer-output error that `--bpw` compares across tensors is not in one currency: an error in the first
layer's attn_v and one in the last layer's ffn_down of the same size move the next-token distribution very
differently. So each tensor is quantized on its own to a probe type, the mean KL divergence from the
unquantized model is measured on calibration windows, and its gain = KLD / layer-output error is kept. The
allocator then prices a type for a tensor at gain * layer-output error, which is in units of KLD.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..eval.kld import token_stats
from ..eval.perplexity import scored_logits
from ..formats.gguf import TensorInfo
from ..formats.quants import GGMLType, dequantize_rows, get_format
from ..model.transformer import Transformer
from .mixes import is_quantizable
from .quantize import quantize_tensor

PROBE = GGMLType.Q3_NL  # damages every tensor measurably, without leaving the range where KLD grows smoothly


class OverlayStore:
    """A store with some tensors replaced by packed bytes of another type (everything else from `base`)."""

    def __init__(self, base, replaced: dict[str, tuple[GGMLType, np.ndarray]]):
        self.base, self.replaced, self.source = base, replaced, base.source

    def has(self, name: str) -> bool:
        return self.base.has(name)

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        info = self.base.info(name)
        if name in self.replaced:
            t, data = self.replaced[name]
            return replace(info, type=t, n_bytes=data.nbytes)
        return info

    def raw(self, name: str) -> np.ndarray:
        return self.replaced[name][1] if name in self.replaced else self.base.raw(name)

    def dense(self, name: str) -> np.ndarray:
        return self.base.dense(name)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        if name in self.replaced:
            info = self.info(name)
            return dequantize_rows(self.raw(name), info.type, info.shape[-1], np.asarray(ids))
        return self.base.rows(name, ids)


def _logits(model: Transformer, windows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logits, targets) of each window's scored half, as perplexity scores it."""
    out = []
    for w in windows:
        parts = list(scored_logits(model, w))
        out.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    return out


def measure(
    model: Transformer,
    windows: np.ndarray,
    error: Callable[[str, np.ndarray, GGMLType], tuple[np.ndarray, float]],
    on_tensor: Callable[[int, int, str], None] | None = None,
) -> dict[str, float]:
    """Gain (KLD per unit of layer-output error) of every quantizable matrix of `model`.

    `error(name, weights, type)` returns (packed bytes, layer-output error) of quantizing `weights` to `type`.
    Float matrices run as Q8_0 while measuring (several times faster; Q8_0 itself moves KLD by ~0.004, far
    below what the probe does), but the probe quantizes the original floats.
    """
    names = [n for n in model.store.gguf.tensors if is_quantizable(n, model.store.info(n).shape)]
    floats = {n for n in names if get_format(model.store.info(n).type).block_size == 1}
    q8_block = get_format(GGMLType.Q8_0).block_size
    q8 = {n: (GGMLType.Q8_0, quantize_tensor(model.store.dense(n), GGMLType.Q8_0)) for n in floats
          if model.store.info(n).shape[-1] % q8_block == 0}  # fmt: skip
    store = OverlayStore(model.store, q8)
    model = Transformer(model.config, store)
    ref = _logits(model, windows)
    gains: dict[str, float] = {}
    for k, name in enumerate(names):
        info = store.info(name)
        if info.shape[-1] % get_format(PROBE).block_size:
            continue
        packed, err = error(name, store.dense(name), PROBE)
        probe = Transformer(model.config, OverlayStore(store, {name: (PROBE, packed)}))
        kld = np.concatenate([token_stats(r, q, t)[0] for (r, t), (q, _) in zip(ref, _logits(probe, windows))])
        gains[name] = max(float(kld.mean()), 0.0) / err if err > 0 else 0.0  # KL >= 0 but for rounding
        if on_tensor is not None:
            on_tensor(k + 1, len(names), name)
    return gains
