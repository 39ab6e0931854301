"""An output head that scores only likely tokens: a cheap low-bit copy of the head ranks every token, and the
best `n_candidates` are recomputed exactly with the model's own head.

What the sampler sees: exact logits for the candidates and the cheap copy's logits for every other token, so
the distribution keeps full support (temperature sampling can still pick any token; its probability comes from
the approximation) and greedy decoding differs from dense only when the dense best token is not among the
candidates, or when a non-candidate's approximate logit beats every exact one. Quality is measured as mean KL
divergence and top-token agreement against dense (`edgellm kld`).

The copy is quantized with GPTQ against the second moments of the head's inputs on calibration text (the
final normed hidden states), which is what makes 2 and 3 bits rank well; it lives in a small GGUF side file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FormatError
from ..formats.gguf import GGUFFile, TensorData, write_gguf
from ..formats.quants import GGMLType, dequantize_rows, get_format

DEFAULT_TYPE = GGMLType.Q3_NL
DEFAULT_CANDIDATES = 64


@dataclass
class CandidateHead:
    type: GGMLType
    raw: np.ndarray  # (n_vocab, row_bytes) uint8: the cheap copy of the head
    n_candidates: int
    calibration: str = ""

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def logits(self, h: np.ndarray, exact_rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """NumPy twin of the engine's candidate head: h (n, d) -> logits (n, n_vocab); `exact_rows(h_i, ids)`
        gives the model head's logits of row h_i for token ids."""
        from ..model.layers import linear_packed

        n_vocab = self.raw.shape[0]
        out = linear_packed(h, self.raw, self.type, n_vocab, h.shape[1])
        k = min(self.n_candidates, n_vocab)
        for i in range(len(h)):
            ids = np.argpartition(-out[i], k - 1)[:k]
            out[i, ids] = exact_rows(h[i], ids)
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        meta = {"general.type": "candidate_head", "candidate_head.candidates": int(self.n_candidates),
                "candidate_head.calibration": self.calibration}  # fmt: skip
        fmt = get_format(self.type)
        n_vocab = self.raw.shape[0]
        n_embd = self.raw.shape[1] // fmt.type_size * fmt.block_size
        return write_gguf(path, meta, [TensorData("output_approx", self.type, (n_vocab, n_embd), self.raw)],
                          overwrite=overwrite)  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike, n_vocab: int, n_embd: int) -> "CandidateHead":
        with GGUFFile(path) as g:
            if g.metadata.get("general.type") != "candidate_head" or "output_approx" not in g.tensors:
                raise FormatError(f"{path}: not an edgellm candidate head file (general.type 'candidate_head')")
            info = g.tensors["output_approx"]
            if tuple(info.shape) != (n_vocab, n_embd):
                raise FormatError(f"{path}: head copy is {tuple(info.shape)}, the model's head is {(n_vocab, n_embd)}")
            k = g.metadata.get("candidate_head.candidates")
            if not isinstance(k, int) or k < 1:
                raise FormatError(f"{path}: candidate_head.candidates must be an integer >= 1")
            raw = np.array(g.raw("output_approx")).reshape(n_vocab, -1)
            return cls(GGMLType(int(info.type)), raw, k, str(g.metadata.get("candidate_head.calibration", "")))


def head_inputs(model, tokens: np.ndarray, n_ctx: int, n_chunks: int | None, bos_id: int | None) -> np.ndarray:
    """Second moments E[h h^T] of the head's inputs over calibration windows (NumPy path: its hook sees them)."""
    from ..eval.perplexity import count_windows, window
    from ..model import layers
    from ..runtime.kv_cache import KVCache

    d = model.config.n_embd
    moments = np.zeros((d, d), dtype=np.float64)
    count = 0

    def record(name: str, x: np.ndarray) -> None:
        nonlocal count
        if name == model.output_name:
            x = np.asarray(x, dtype=np.float64).reshape(-1, d)
            moments[:] += x.T @ x
            count += len(x)

    with layers.observe_linear_inputs(record):
        for c in range(count_windows(len(tokens), n_ctx, n_chunks)):
            model.forward(window(tokens, c, n_ctx, bos_id), KVCache(model.config, n_ctx), slice(None))
    return moments / max(count, 1)


def build(model, tokens: np.ndarray, type_: GGMLType = DEFAULT_TYPE, n_candidates: int = DEFAULT_CANDIDATES, *,
          n_ctx: int = 512, n_chunks: int | None = 4, bos_id: int | None = None, name: str = "") -> CandidateHead:  # fmt: skip
    """Quantize the model's head to `type_` with GPTQ against its inputs' second moments on `tokens`."""
    from ..quant.gptq import quantize_gptq
    from ..quant.quantize import quantize_tensor

    hessian = head_inputs(model, tokens, n_ctx, n_chunks, bos_id)
    info = model.store.info(model.output_name)
    n_vocab, n_embd = info.shape
    weights = dequantize_rows(model.store.raw(model.output_name), info.type, n_embd, slice(0, n_vocab))
    packed = quantize_gptq(weights, type_, hessian, lambda w, imp: quantize_tensor(w, type_, imp))
    return CandidateHead(GGMLType(type_), np.ascontiguousarray(packed), int(n_candidates), name)
