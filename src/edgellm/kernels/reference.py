"""NumPy reference of the kernels' arithmetic.

The C kernels multiply packed weights by activations rounded to 8-bit blocks (Q8_0 / Q8_1: 32 values and an
fp16 scale; Q8_K: 256 values and a float scale), as llama.cpp does. `quantize_activations` reproduces that
rounding bit for bit, so the NumPy path (`EDGELLM_KERNELS=ref`) computes the same function as the C path
and can serve as its oracle; `ref-f32` keeps float activations, the quality ceiling.
"""

from __future__ import annotations

import numpy as np

from ..formats.quants import GGMLType

# Weight format -> activation block size of its dot type (None: float activations).
_ACT_BLOCK = {
    GGMLType.F32: None, GGMLType.F16: None, GGMLType.BF16: None,
    GGMLType.Q4_0: 32, GGMLType.Q4_1: 32, GGMLType.Q5_0: 32, GGMLType.Q5_1: 32, GGMLType.Q8_0: 32,
    GGMLType.Q2_K: 256, GGMLType.Q3_K: 256, GGMLType.Q4_K: 256, GGMLType.Q5_K: 256, GGMLType.Q6_K: 256,
}  # fmt: skip


def _q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 / Q8_1 rounding (ggml quantize_row_q8_0_ref): d = amax/127 stored as fp16, q = roundf(x/d)."""
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = blocks * inv
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))  # round half away from zero, as roundf
    return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


def _q8_K(x: np.ndarray) -> np.ndarray:
    """Q8_K rounding (ggml quantize_row_q8_K_ref): scale from the largest-magnitude value, round half even."""
    blocks = x.reshape(-1, 256)
    idx = np.argmax(np.abs(blocks), axis=1)
    peak = blocks[np.arange(len(blocks)), idx][:, None]
    safe = np.where(peak == 0, np.float32(1), peak)
    iscale = np.float32(-127) / safe
    q = np.minimum(np.rint(blocks * iscale), np.float32(127))
    d = np.float32(1) / iscale
    return np.where(peak == 0, np.float32(0), q * d).reshape(x.shape)


def quantize_activations(x: np.ndarray, weight_type: int) -> np.ndarray:
    """x (n_tokens, n_in) float32 as the kernel for `weight_type` sees it after activation quantization."""
    block = _ACT_BLOCK.get(GGMLType(weight_type))
    if block is None:
        return x
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _q8_0(x) if block == 32 else _q8_K(x)


def q8_1_sum_correction(x: np.ndarray, raw: np.ndarray, weight_type: int, n_out: int, n_in: int) -> np.ndarray:
    """What Q4_1/Q5_1 kernels add beyond (dequantized W) @ (rounded x): the min term uses the activation
    block's stored sum s = fp16(d * sum(q)) rather than fp16(d) * sum(q). Returns (n_tokens, n_out)."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1, 32)  # (n_tokens, n_blocks, 32)
    d = np.abs(blocks).max(axis=2) / np.float32(127)  # (n_tokens, n_blocks)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = blocks * inv[..., None]
    q_sum = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).sum(axis=2)  # sum of the int8 quants
    stored = (d * q_sum).astype(np.float16).astype(np.float32)
    exact = d.astype(np.float16).astype(np.float32) * q_sum
    type_size = 20 if GGMLType(weight_type) == GGMLType.Q4_1 else 24
    w_blocks = np.asarray(raw).reshape(n_out, n_in // 32, type_size)
    mins = w_blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)  # (n_out, n_blocks)
    return (stored - exact) @ mins.T
