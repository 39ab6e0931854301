"""Importance matrices: the mean squared activation entering each column of each weight matrix.

A weight that multiplies large activations matters more to the output, so the quantizers weight their
error by it. The file is llama.cpp's GGUF imatrix layout (`<weight>.in_sum2` and `<weight>.counts`,
general.type = "imatrix"), so `llama-quantize --imatrix` reads ours and we read its.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FormatError
from ..formats.gguf import GGUFFile, GGUFValueType, TensorData, write_gguf
from ..formats.quants import GGMLType

OUTPUT_ROWS = 64  # tokens per window whose logits are computed (vocabularies reach 262k)


@dataclass
class ImportanceMatrix:
    entries: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # name -> (sum of x^2, count)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    path: Path = Path("imatrix.gguf")
    # Optional full second moments sum(x x^T) for GPTQ, one per distinct input: weights fed the very same
    # activations (attn_q/k/v, ffn_gate/up) share one matrix through `aliases`.
    xtx: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    record_xtx: bool = False
    # measured KLD per unit of layer-output error of each weight (quant/sensitivity.py), for --bpw
    gains: dict[str, float] = field(default_factory=dict)
    _last: tuple[str, np.ndarray] | None = field(default=None, repr=False)

    def add(self, name: str, x: np.ndarray) -> None:
        """Accumulate a batch of inputs (n_tokens, n_in) of weight `name`."""
        x64 = x.reshape(-1, x.shape[-1]).astype(np.float64)
        sums, count = self.entries.get(name, (np.zeros(x.shape[-1]), 0.0))
        self.entries[name] = (sums + np.square(x64).sum(axis=0), count + len(x64))
        if self.record_xtx:
            if self._last is not None and self._last[1] is x:
                self.aliases[name] = self.aliases.get(self._last[0], self._last[0])
            else:
                self.xtx[name] = self.xtx.get(name, 0.0) + _weight_sink(name, x64).T @ x64
            self._last = (name, x)  # holding x keeps its id from being reused by another array

    def hessian(self, name: str, n_per_row: int) -> np.ndarray | None:
        """E[x x^T] of the inputs of `name` (n_per_row square), or None when not recorded."""
        key = self.aliases.get(name, name)
        if key not in self.xtx:
            return None
        h = self.xtx[key]
        if h.shape != (n_per_row, n_per_row):
            raise FormatError(f"{self.path}: second moments of '{name}' are {h.shape}, the tensor's rows have {n_per_row}")
        return h / max(self.entries[key][1], 1.0)

    def importance(self, name: str, n_per_row: int) -> np.ndarray | None:
        """Mean squared activation per column of `name`, or None when the matrix has no entry for it."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        sums, count = entry
        if sums.size != n_per_row:
            raise FormatError(
                f"{self.path}: entry '{name}' has {sums.size} columns but the tensor's rows have {n_per_row} "
                "(an importance matrix of another model?)"
            )
        return (sums / max(count, 1.0)).astype(np.float32)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        metadata = {
            "general.type": "imatrix",
            "imatrix.datasets": list(self.datasets),
            "imatrix.chunk_count": self.chunk_count,
            "imatrix.chunk_size": self.chunk_size,
        }
        types = {
            "imatrix.chunk_count": (GGUFValueType.UINT32, None),
            "imatrix.chunk_size": (GGUFValueType.UINT32, None),
            "imatrix.datasets": (GGUFValueType.ARRAY, GGUFValueType.STRING),
        }
        if self.aliases:
            metadata["edgellm.imatrix.xtx_aliases"] = [f"{a}={c}" for a, c in sorted(self.aliases.items())]
            types["edgellm.imatrix.xtx_aliases"] = (GGUFValueType.ARRAY, GGUFValueType.STRING)
        tensors = []
        for name, m in sorted(self.xtx.items()):  # llama.cpp ignores tensors of other suffixes
            tensors.append(TensorData(f"{name}.in_xtx", GGMLType.F32, m.shape, m.astype(np.float32)))
        for name, g in sorted(self.gains.items()):
            tensors.append(TensorData(f"{name}.gain", GGMLType.F32, (1, 1), np.array([[g]], np.float32)))
        for name, (sums, count) in sorted(self.entries.items()):
            tensors.append(TensorData(f"{name}.in_sum2", GGMLType.F32, (1, sums.size), sums.astype(np.float32)))
            tensors.append(TensorData(f"{name}.counts", GGMLType.F32, (1, 1), np.array([[count]], np.float32)))
        return write_gguf(path, metadata, tensors, metadata_types=types, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImportanceMatrix":
        path = Path(path)
        with GGUFFile(path) as f:
            if f.metadata.get("general.type") != "imatrix":
                raise FormatError(f"{path}: not an importance matrix (general.type is not 'imatrix')")
            sums = {n[: -len(".in_sum2")]: n for n in f.tensors if n.endswith(".in_sum2")}
            entries = {}
            for name, tensor in sums.items():
                counts = f"{name}.counts"
                if counts not in f.tensors:
                    raise FormatError(f"{path}: '{tensor}' has no matching '{counts}'")
                s = f.raw(tensor).view("<f4").astype(np.float64).reshape(-1)
                c = float(f.raw(counts).view("<f4").reshape(-1)[0])
                entries[name] = (s, c)
            xtx = {n[: -len(".in_xtx")]: f.raw(n).view("<f4").reshape(f.tensors[n].shape).astype(np.float64)
                   for n in f.tensors if n.endswith(".in_xtx")}  # fmt: skip
            aliases = dict(a.split("=", 1) for a in f.metadata.get("edgellm.imatrix.xtx_aliases", []))
            gains = {n[: -len(".gain")]: float(f.raw(n).view("<f4").reshape(-1)[0]) for n in f.tensors if n.endswith(".gain")}
            return cls(
                entries,
                list(f.metadata.get("imatrix.datasets", [])),
                int(f.metadata.get("imatrix.chunk_count", 0)),
                int(f.metadata.get("imatrix.chunk_size", 0)),
                path,
                xtx,
                aliases,
                gains=gains,
            )


def _weight_sink(name: str, x: np.ndarray) -> np.ndarray:
    """x with row 0 scaled by the window length, for the inputs of attn_q/k/v (one forward per window, so row 0 is
    its first token).

    That token is the attention sink every later query attends to. It is one token in hundreds, so an
    unweighted x^T x lets GPTQ push the error of q and k into its direction and break the sink (measured: mean
    KLD of SmolLM2 at 4 bits 0.17 -> 0.27). Counting it as much as the rest of the window keeps that direction
    accurate (0.14); other layers gain nothing from it and are left as they are.
    """
    if not any(f".{r}." in name for r in ("attn_q", "attn_k", "attn_v")):
        return x
    xw = x.copy()
    xw[0] *= len(x)
    return xw


def collect(
    model,
    tokens: np.ndarray,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    record_xtx: bool = False,
) -> ImportanceMatrix:
    """Run consecutive n_ctx windows of `tokens` through `model` and record every linear layer's inputs."""
    from ..eval.perplexity import count_windows, window
    from ..model import layers
    from ..runtime.kv_cache import KVCache

    n_chunks = count_windows(len(tokens), n_ctx, n_chunks)
    imatrix = ImportanceMatrix(chunk_size=n_ctx, record_xtx=record_xtx)
    with layers.observe_linear_inputs(imatrix.add):
        for c in range(n_chunks):
            # the last rows' logits also record the output projection's inputs (the tied embedding's)
            model.forward(window(tokens, c, n_ctx, bos_id), KVCache(model.config, n_ctx), slice(-OUTPUT_ROWS, None))
            imatrix.chunk_count += 1
            if on_chunk is not None:
                on_chunk(c + 1, n_chunks)
    imatrix._last = None
    return imatrix
