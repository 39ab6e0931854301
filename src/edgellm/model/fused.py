"""Fused matrices read in place as the separate matrices the model uses (Phi-3's attn_qkv and ffn_up).

A wrapper over whatever store the model was given: the fused layout is an architecture's business, so it
lives with the model, not with the stores.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..formats.gguf import TensorInfo
from ..formats.quants import dequantize


class RowViews:
    """A store in which some names are row ranges of another tensor: the slices of a fused matrix (Phi-3's
    attn_qkv, its gate and up halves of ffn_up) read in place as the separate matrices the model uses."""

    def __init__(self, base, views: dict[str, tuple[str, int, int]]):
        self.base, self.views, self.source = base, views, base.source

    def has(self, name: str) -> bool:
        return name in self.views or self.base.has(name)

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.base.names(), *self.views]))

    def info(self, name: str) -> TensorInfo:
        if name not in self.views:
            return self.base.info(name)
        source, r0, r1 = self.views[name]
        info = self.base.info(source)
        row_bytes = info.n_bytes // info.shape[0]
        return replace(info, name=name, shape=(r1 - r0, info.shape[1]), offset=info.offset + r0 * row_bytes,
                       n_bytes=(r1 - r0) * row_bytes)  # fmt: skip

    def raw(self, name: str) -> np.ndarray:
        if name not in self.views:
            return self.base.raw(name)
        source, r0, r1 = self.views[name]
        return self.base.raw(source)[r0:r1]

    def dense(self, name: str) -> np.ndarray:
        info = self.info(name)
        return dequantize(self.raw(name), info.type, info.shape)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        return self.base.rows(name, ids)
