"""Activation sparsity thresholds: per layer, a magnitude below which a linear layer's inputs count as zero.

Four input groups per block, as TEAL (arXiv 2408.14690) sparsifies them: the attention input (shared by
Q, K and V), the attention output projection's input, the FFN input (gate and up) and the down projection's
input (the gated activation, as CATS thresholds it). Thresholds live in a small GGUF side file
(`general.type = "sparsity"`), so a calibration is reproducible and travels with the model it was made for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..formats import names
from ..formats.gguf import GGUFFile, TensorData, write_gguf
from ..formats.quants import GGMLType

GROUPS = {
    "attn_in": (names.ATTN_Q, names.ATTN_K, names.ATTN_V),
    "attn_out": (names.ATTN_OUT,),
    "ffn_in": (names.FFN_GATE, names.FFN_UP),
    "ffn_down": (names.FFN_DOWN,),
}


@dataclass
class Thresholds:
    """thresholds[i, g] and the sparsity s[i, g] it gives on the calibration text, for layer i and group g
    (in GROUPS order); `target` is the model-wide sparsity asked for (weighted by the weights each group
    multiplies)."""

    thresholds: np.ndarray  # (n_layers, len(GROUPS)) float32
    sparsity: np.ndarray  # (n_layers, len(GROUPS))
    target: float
    calibration: str = ""

    def by_weight(self) -> dict[str, float]:
        """Weight name -> threshold of its input, for `layers.sparsify_linear_inputs`."""
        out = {}
        for i, row in enumerate(self.thresholds):
            for t, templates in zip(row, GROUPS.values()):
                if t > 0:
                    out |= {template.format(i=i): float(t) for template in templates}
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        meta = {"general.type": "sparsity", "sparsity.target": float(self.target),
                "sparsity.groups": list(GROUPS), "sparsity.calibration": self.calibration}  # fmt: skip
        tensors = [TensorData("thresholds", GGMLType.F32, self.thresholds.shape, self.thresholds.astype(np.float32)),
                   TensorData("sparsity", GGMLType.F32, self.sparsity.shape, self.sparsity.astype(np.float32))]  # fmt: skip
        return write_gguf(path, meta, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, n_layers: int | None = None) -> "Thresholds":
        with GGUFFile(path) as g:
            if g.metadata.get("general.type") != "sparsity" or list(g.metadata.get("sparsity.groups", [])) != list(GROUPS):
                raise FormatError(f"{path}: not an edgellm sparsity file (general.type 'sparsity', groups {list(GROUPS)})")
            arrays = {}
            for name in ("thresholds", "sparsity"):
                if name not in g.tensors or len(g.tensors[name].shape) != 2 or g.tensors[name].shape[1] != len(GROUPS):
                    raise FormatError(f"{path}: tensor '{name}' is missing or not (n_layers, {len(GROUPS)})")
                arrays[name] = g.raw(name).view(np.float32).reshape(g.tensors[name].shape).copy()
            if n_layers is not None and arrays["thresholds"].shape[0] != n_layers:
                raise FormatError(f"{path}: thresholds for {arrays['thresholds'].shape[0]} layers, the model has {n_layers}")
            if not np.all(np.isfinite(arrays["thresholds"])) or (arrays["thresholds"] < 0).any():
                raise FormatError(f"{path}: thresholds must be finite and >= 0")
            return cls(arrays["thresholds"], arrays["sparsity"], float(g.metadata.get("sparsity.target", 0.0)),
                       str(g.metadata.get("sparsity.calibration", "")))  # fmt: skip
