"""An output head that scores only likely tokens: a cheap low-bit copy of the head ranks every token, and the
best `n_candidates` are recomputed exactly with the model's own head.

What the sampler sees: exact logits for the candidates and the cheap copy's logits for every other token, so
the distribution keeps full support (temperature sampling can still pick any token; its probability comes from
the approximation) and greedy decoding differs from dense only when the dense best token is not among the
candidates, or when a non-candidate's approximate logit beats every exact one. Quality is measured as mean KL
divergence and top-token agreement against dense (`edgellm kld`).

The default copy is low rank: W ~ A B with B (r x n_embd, float) and A (n_vocab x r, Q8_0), the rank-r
factors of W S^(1/2) (S the second moments of the head's inputs, the final normed hidden states, on
calibration text), so the ranking is best where the inputs actually lie. A's rows are r wide: the first pass
costs r / n_embd of the head's multiply-adds in the cheapest kernel there is, where a 2-3-bit copy of the whole
head (also supported: GPTQ against the same moments) reads fewer bytes than the head but decodes its codes
slower than Q8_0 on the CPUs measured (docs/sparsity.md). It lives in a small GGUF side file.
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

DEFAULT_RANK = 128
DEFAULT_CANDIDATES = 256


@dataclass
class CandidateHead:
    type: GGMLType
    raw: np.ndarray  # (n_vocab, row_bytes) uint8: the cheap copy of the head (n_embd wide, or r after proj)
    n_candidates: int
    calibration: str = ""
    proj: np.ndarray | None = None  # (r, n_embd) float32: the low-rank projection, or None

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes + (0 if self.proj is None else self.proj.nbytes)

    def logits(self, h: np.ndarray, exact_rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """NumPy twin of the engine's candidate head: h (n, d) -> logits (n, n_vocab); `exact_rows(h_i, ids)`
        gives the model head's logits of row h_i for token ids."""
        from ..model.layers import linear_packed

        n_vocab = self.raw.shape[0]
        z = h if self.proj is None else h @ self.proj.T
        out = linear_packed(np.ascontiguousarray(z, dtype=np.float32), self.raw, self.type, n_vocab, z.shape[1])
        k = min(self.n_candidates, n_vocab)
        for i in range(len(h) if k > 0 else 0):
            ids = np.argpartition(-out[i], k - 1)[:k]
            out[i, ids] = exact_rows(h[i], ids)
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        meta = {"general.type": "candidate_head", "candidate_head.candidates": int(self.n_candidates),
                "candidate_head.calibration": self.calibration}  # fmt: skip
        fmt = get_format(self.type)
        n_vocab = self.raw.shape[0]
        width = self.raw.shape[1] // fmt.type_size * fmt.block_size
        tensors = [TensorData("output_approx", self.type, (n_vocab, width), self.raw)]
        if self.proj is not None:
            tensors.append(TensorData("output_proj", GGMLType.F32, self.proj.shape, self.proj.astype(np.float32)))
        return write_gguf(path, meta, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, n_vocab: int, n_embd: int) -> "CandidateHead":
        with GGUFFile(path) as g:
            if g.metadata.get("general.type") != "candidate_head" or "output_approx" not in g.tensors:
                raise FormatError(f"{path}: not an edgellm candidate head file (general.type 'candidate_head')")
            info = g.tensors["output_approx"]
            proj = None
            if "output_proj" in g.tensors:
                p = g.tensors["output_proj"]
                if len(p.shape) != 2 or p.shape[1] != n_embd or int(p.type) != GGMLType.F32:
                    raise FormatError(f"{path}: output_proj must be F32 (r, {n_embd})")
                proj = g.raw("output_proj").view(np.float32).reshape(p.shape).copy()
            width = n_embd if proj is None else proj.shape[0]
            if tuple(info.shape) != (n_vocab, width):
                raise FormatError(f"{path}: head copy is {tuple(info.shape)}, expected {(n_vocab, width)}")
            k = g.metadata.get("candidate_head.candidates")
            if not isinstance(k, int) or k < 1:
                raise FormatError(f"{path}: candidate_head.candidates must be an integer >= 1")
            raw = np.array(g.raw("output_approx")).reshape(n_vocab, -1)
            return cls(GGMLType(int(info.type)), raw, k, str(g.metadata.get("candidate_head.calibration", "")), proj)


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


def build(model, tokens: np.ndarray, rank: int = DEFAULT_RANK, n_candidates: int = DEFAULT_CANDIDATES, *,
          type_: GGMLType | None = None, n_ctx: int = 512, n_chunks: int | None = 4, bos_id: int | None = None,
          name: str = "") -> CandidateHead:  # fmt: skip
    """The cheap head from calibration `tokens`: rank-`rank` factors (A in Q8_0), or with rank 0 the whole head
    quantized to `type_` (default Q3_NL) with GPTQ against its inputs' second moments."""
    from ..quant.gptq import quantize_gptq
    from ..quant.quantize import quantize_tensor

    moments = head_inputs(model, tokens, n_ctx, n_chunks, bos_id)
    info = model.store.info(model.output_name)
    n_vocab, n_embd = info.shape
    weights = dequantize_rows(model.store.raw(model.output_name), info.type, n_embd, slice(0, n_vocab))
    if rank <= 0:
        type_ = GGMLType(type_ or GGMLType.Q3_NL)
        packed = quantize_gptq(weights, type_, moments, lambda w, imp: quantize_tensor(w, type_, imp))
        return CandidateHead(type_, np.ascontiguousarray(packed), int(n_candidates), name)
    if rank % 32 or rank >= n_embd:
        from ..errors import ConfigError

        raise ConfigError(f"head rank must be a multiple of 32 below the model width {n_embd}, got {rank}")
    # W S^(1/2) = U D V^T; A = W S^(1/2) V_r, B = V_r^T S^(-1/2): A B h is W h's best rank-r estimate for h ~ S
    evals, evecs = np.linalg.eigh(moments + 1e-6 * np.trace(moments) / n_embd * np.eye(n_embd))
    root = (evecs * np.sqrt(evals)) @ evecs.T
    inv_root = (evecs / np.sqrt(evals)) @ evecs.T
    ws = weights.astype(np.float64) @ root  # (n_vocab, n_embd)
    _, vecs = np.linalg.eigh(ws.T @ ws)
    v = vecs[:, ::-1][:, :rank]  # top right singular vectors
    a = (ws @ v).astype(np.float32)
    proj = (v.T @ inv_root).astype(np.float32)
    packed = quantize_tensor(a, GGMLType.Q8_0)
    return CandidateHead(GGMLType.Q8_0, np.ascontiguousarray(packed), int(n_candidates), name, proj)
