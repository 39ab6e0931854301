"""Weight stores: where a tensor's packed bytes live.

The model asks a store for tensors by name and never opens files. `MappedStore` serves zero-copy views of a
memory-mapped GGUF; later stores (flash with a budget, sparse FFN rows) keep the same surface.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..formats.gguf import GGUFFile, TensorInfo
from ..formats.quants import dequantize, dequantize_rows


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

