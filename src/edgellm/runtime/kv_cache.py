"""Key/value cache: per layer, n_ctx rows of keys and of values, stored as F32, F16 or Q8_0.

A Q8_0 cache keeps each token's keys (and values) as blocks of 32 int8 with one fp16 scale: 8.5 bits per
element instead of 32, the same layout as llama.cpp's `--cache-type-k q8_0`. The C engine reads it with the
Q8_0 dot kernel; the NumPy path dequantizes the rows it attends over.
"""

from __future__ import annotations

import numpy as np

from ..errors import BudgetError, ConfigError
from ..formats.quants import GGMLType, dequantize, get_format
from ..model.config import ModelConfig

CACHE_TYPES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "q8_0": GGMLType.Q8_0}


class CacheSpan:
    """How much of a sequence's cache is filled (positions 0..n_past-1) out of n_ctx: a KVCache's, or that of a
    cache held by pipeline stages (distributed/pipeline.py RemoteCache)."""

    n_ctx: int
    n_past: int

    def reserve(self, n_tokens: int) -> None:
        if self.n_past + n_tokens > self.n_ctx:
            raise BudgetError(
                f"context full: {self.n_past} cached + {n_tokens} new tokens > n_ctx {self.n_ctx}; "
                "use a larger --ctx-size or a shorter prompt"
            )

    def advance(self, n_tokens: int) -> None:
        self.n_past += n_tokens

    def truncate(self, n_past: int) -> None:
        """Forget everything from position n_past on (prefix reuse between prompts)."""
        self.n_past = min(self.n_past, n_past)


class KVCache(CacheSpan):
    """Positions 0..n_past-1 are filled. np.zeros maps pages lazily, so a long n_ctx costs only what is used."""

    def __init__(self, config: ModelConfig, n_ctx: int, dtype: np.dtype | None = None, cache_type: str = "f32",
                 n_layers: int | None = None):
        """`n_layers`: a pipeline stage's share of the layers (default: all of them)."""
        layers = config.n_layers if n_layers is None else n_layers
        if dtype is not None:  # numpy spelling of the float types
            cache_type = "f16" if np.dtype(dtype) == np.float16 else "f32"
        if cache_type.lower() not in CACHE_TYPES:
            raise ConfigError(f"unknown KV cache type '{cache_type}'; choose one of: {', '.join(CACHE_TYPES)}")
        self.type = CACHE_TYPES[cache_type.lower()]
        self.n_ctx = n_ctx
        self._k_width = config.n_head_kv * config.head_dim
        self._v_width = config.n_head_kv * config.head_dim_v
        fmt = get_format(self.type)
        if self.type == GGMLType.Q8_0:
            if config.head_dim % fmt.block_size or config.head_dim_v % fmt.block_size:
                raise ConfigError(f"a Q8_0 KV cache needs heads a multiple of 32 wide; this model's are {config.head_dim}")
            self.k = np.zeros((layers, n_ctx, fmt.row_bytes(self._k_width)), dtype=np.uint8)
            self.v = np.zeros((layers, n_ctx, fmt.row_bytes(self._v_width)), dtype=np.uint8)
        else:
            dt = np.float16 if self.type == GGMLType.F16 else np.float32
            self.k = np.zeros((layers, n_ctx, config.n_head_kv, config.head_dim), dtype=dt)
            self.v = np.zeros((layers, n_ctx, config.n_head_kv, config.head_dim_v), dtype=dt)
        self._head_shape = (config.n_head_kv, config.head_dim), (config.n_head_kv, config.head_dim_v)
        self.n_past = 0

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write this step's keys/values after the cached ones; return every key/value so far (as floats)."""
        end = self.n_past + k.shape[0]
        if self.type != GGMLType.Q8_0:
            self.k[layer, self.n_past : end] = k
            self.v[layer, self.n_past : end] = v
            return self.k[layer, :end], self.v[layer, :end]
        fmt = get_format(GGMLType.Q8_0)
        n = k.shape[0]
        self.k[layer, self.n_past : end] = fmt.quantize(k.reshape(n, -1)).reshape(n, -1)
        self.v[layer, self.n_past : end] = fmt.quantize(v.reshape(n, -1)).reshape(n, -1)
        keys = dequantize(self.k[layer, :end], GGMLType.Q8_0, (end, self._k_width)).reshape(end, *self._head_shape[0])
        values = dequantize(self.v[layer, :end], GGMLType.Q8_0, (end, self._v_width)).reshape(end, *self._head_shape[1])
        return keys, values

    @property
    def n_bytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def cache_for(model, n_ctx: int, cache_type: str = "f32"):
    """A KV cache for one sequence of `model`: a KVCache here, or what a model that keeps its caches elsewhere
    (pipeline stages, distributed/pipeline.py) hands out."""
    if hasattr(model, "new_cache"):
        return model.new_cache(n_ctx, cache_type)
    return KVCache(model.config, n_ctx, cache_type=cache_type)
