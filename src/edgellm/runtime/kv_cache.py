"""Key/value cache: one (n_ctx, n_head_kv, head_dim) array per layer for keys and for values."""

from __future__ import annotations

import numpy as np

from ..errors import BudgetError
from ..model.config import ModelConfig


class KVCache:
    """Positions 0..n_past-1 are filled. np.zeros maps pages lazily, so a long n_ctx costs only what is used."""

    def __init__(self, config: ModelConfig, n_ctx: int, dtype: np.dtype = np.float32):
        self.n_ctx = n_ctx
        shape_k = (config.n_layers, n_ctx, config.n_head_kv, config.head_dim)
        shape_v = (config.n_layers, n_ctx, config.n_head_kv, config.head_dim_v)
        self.k = np.zeros(shape_k, dtype=dtype)
        self.v = np.zeros(shape_v, dtype=dtype)
        self.n_past = 0

    def reserve(self, n_tokens: int) -> None:
        if self.n_past + n_tokens > self.n_ctx:
            raise BudgetError(
                f"context full: {self.n_past} cached + {n_tokens} new tokens > n_ctx {self.n_ctx}; "
                "use a larger --ctx-size or a shorter prompt"
            )

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write this step's keys/values after the cached ones; return every key/value so far."""
        end = self.n_past + k.shape[0]
        self.k[layer, self.n_past : end] = k
        self.v[layer, self.n_past : end] = v
        return self.k[layer, :end], self.v[layer, :end]

    def advance(self, n_tokens: int) -> None:
        self.n_past += n_tokens

    def truncate(self, n_past: int) -> None:
        """Forget everything from position n_past on (prefix reuse between prompts)."""
        self.n_past = min(self.n_past, n_past)

    @property
    def n_bytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
