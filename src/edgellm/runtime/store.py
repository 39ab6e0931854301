"""Weight stores: where a tensor's packed bytes live.

The model asks a store for tensors by name and never opens files. `MappedStore` serves zero-copy views of a
memory-mapped GGUF; later stores (flash with a budget, sparse FFN rows) keep the same surface.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import FormatError
from ..formats.gguf import GGUFFile, TensorInfo
from ..quant.formats import dequantize, dequantize_rows


class MappedStore:
    """Tensors of a memory-mapped GGUF file, kept packed; floats exist only one tile at a time."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf
        self.source = str(gguf.path)

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def names(self) -> list[str]:
        return list(self.gguf.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.gguf.tensors[name]
        except KeyError:
            raise FormatError(f"{self.source}: tensor '{name}' is missing") from None

    def raw(self, name: str) -> np.ndarray:
        self.info(name)
        return self.gguf.raw(name)

    def dense(self, name: str) -> np.ndarray:
        """The whole tensor as float32: for small tensors (norms, biases) only."""
        info = self.info(name)
        return dequantize(self.gguf.raw(name), info.type, info.shape)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Selected rows of a 2-D tensor as float32, (len(ids), row_length): embedding lookups."""
        info = self.info(name)
        return dequantize_rows(self.gguf.raw(name), info.type, info.row_length, np.asarray(ids))


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
