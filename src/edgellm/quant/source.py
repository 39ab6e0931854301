"""Where the weights to quantize come from: a GGUF of any supported type, or a Hugging Face model directory.

Both give the same surface: GGUF metadata, the tensor list in GGUF names and NumPy shapes, float32 weights
one tensor at a time, and the raw bytes of tensors copied unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from ..errors import ConfigError, FormatError
from ..formats.gguf import GGUFFile, GGUFValueType
from ..formats.quants import GGMLType, dequantize
from ..model.registry import gguf_config


class Source(Protocol):
    path: Path
    n_head: int
    n_head_kv: int

    def metadata(self) -> tuple[dict[str, Any], dict[str, tuple[GGUFValueType, GGUFValueType | None]]]: ...

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...], GGMLType]]: ...

    def weights(self, name: str) -> np.ndarray: ...

    def raw(self, name: str) -> np.ndarray: ...


class GGUFSource:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        config = gguf_config(self.file)
        self.n_head, self.n_head_kv = config.n_head, config.n_head_kv

    def metadata(self):
        return dict(self.file.metadata), dict(self.file.metadata_types)

    def tensors(self):
        for t in self.file.tensors.values():
            yield t.name, t.shape, t.type

    def weights(self, name: str) -> np.ndarray:
        t = self.file.tensors[name]
        return dequantize(self.file.raw(name), t.type, t.shape)

    def raw(self, name: str) -> np.ndarray:
        return self.file.raw(name)


def open_source(path: str | os.PathLike) -> Source:
    """A GGUF file or a Hugging Face model directory (config.json + *.safetensors)."""
    p = Path(path)
    if p.is_dir():
        from .hf import HFSource

        return HFSource(p)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or directory")
    return GGUFSource(p)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: missing (a Hugging Face model directory needs it)") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None

