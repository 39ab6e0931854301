"""Transformer building blocks in NumPy float32: the reference the C kernels are checked against.

Weights stay packed in the store; `linear` dequantizes one tile of rows at a time, so no float copy of a
whole matrix (let alone the model) is ever kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from .. import kernels
from ..formats.quants import GGMLType, dequantize_rows
from ..kernels.reference import q8_1_sum_correction, quantize_activations

# Largest float32 weight tile materialised at once by `linear` (bytes).
DEQUANT_TILE_BYTES = 16 << 20
# Queries per attention block, bounding the (heads, queries, keys) score tensor on long prompts.
ATTN_QUERY_BLOCK = 256

# The hooks belong to the thread (context) that set them, so one model's calibration in one thread leaves
# another thread's model alone.
# Called as observer(weight_name, x) with every linear's input while set (importance matrices).
_observer: ContextVar = ContextVar("edgellm_observer", default=None)
# weight name -> magnitude threshold: inputs below it are zeroed before the product (activation sparsity)
_thresholds: ContextVar = ContextVar("edgellm_thresholds", default={})


@contextmanager
def observe_linear_inputs(observer):
    """Within the block, every `linear` call in this thread reports its input activations to `observer(name, x)`."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


@contextmanager
def sparsify_linear_inputs(thresholds: dict[str, float]):
    """Within the block, each `linear` in this thread whose weight has a threshold sees its inputs with every entry
    of smaller magnitude set to zero (TEAL's training-free activation sparsity, on the NumPy path)."""
    token = _thresholds.set(dict(thresholds))
    try:
        yield
    finally:
        _thresholds.reset(token)


def observing() -> bool:
    """Whether a hook (observer or thresholds) is active in this thread: the C engine then steps aside."""
    return _observer.get() is not None or bool(_thresholds.get())


def linear(x: np.ndarray, store, name: str) -> np.ndarray:
    """x @ W.T for a packed W (n_out, n_in): (n_tokens, n_in) -> (n_tokens, n_out).

    Runs the C kernel on the packed blocks when one is active, else the NumPy reference.
    """
    thresholds, observer = _thresholds.get(), _observer.get()
    if name in thresholds:
        x = np.where(np.abs(x) < np.float32(thresholds[name]), np.float32(0), x)
    if observer is not None:
        observer(name, x)
    info = store.info(name)
    return linear_packed(x, store.raw(name), info.type, *info.shape)


def linear_packed(x: np.ndarray, raw: np.ndarray, type_id: int, n_out: int, n_in: int) -> np.ndarray:
    """x @ W.T for W given as packed rows (n_out, row_bytes): a whole matrix or one expert's slab of one."""
    if kernels.has_matmul(type_id):
        return kernels.matmul(x, raw, type_id, n_out, n_in)
    correction = None
    if kernels.emulates_activation_rounding():
        if type_id in (GGMLType.Q4_1, GGMLType.Q5_1):
            correction = q8_1_sum_correction(x, raw, type_id, n_out, n_in)
        x = quantize_activations(x, type_id)
    tile = max(1, DEQUANT_TILE_BYTES // (4 * n_in))
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    for r0 in range(0, n_out, tile):
        r1 = min(n_out, r0 + tile)
        out[:, r0:r1] = x @ dequantize_rows(raw, type_id, n_in, slice(r0, r1)).T  # (n_tokens, r1 - r0)
    if correction is not None:
        out += correction
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (works per head too: x (..., head_dim), weight (head_dim,))."""
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (what Gemma and ggml_gelu use)."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


ACTIVATIONS = {"silu": silu, "gelu": gelu_tanh}


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rope(
    x: np.ndarray,
    positions: np.ndarray,
    base: float,
    n_rot: int,
    neox: bool,
    scale: float = 1.0,
    *,
    factors: np.ndarray | None = None,
    ext_factor: float = 0.0,
    yarn_dims: tuple[float, float] = (0.0, 0.0),
    mscale: float = 1.0,
):
    """Rotary position embedding of the first `n_rot` dims of each head, as ggml_rope_ext computes it.

    x: (n_tokens, n_heads, head_dim). `neox` rotates pairs (i, i + n_rot/2); otherwise adjacent pairs
    (2i, 2i+1), which is what llama.cpp's converter arranges for Llama-family weights. Pair i turns by
    position * base^(-2i/n_rot) / factors[i], times `scale` (linear interpolation); with YaRN (`ext_factor`)
    pairs below the ramp `yarn_dims` keep the original angle and pairs above it take the interpolated one.
    cos and sin are multiplied by `mscale`.
    """
    half = n_rot // 2
    pair = np.arange(half, dtype=np.float64)
    angle = positions.astype(np.float64)[:, None] * (base ** (-2.0 * pair / n_rot))[None, :]  # (n_tokens, half)
    if factors is not None:
        angle /= np.asarray(factors, dtype=np.float64)[None, :half]
    theta = angle * scale
    if ext_factor:
        low, high = yarn_dims
        ramp = 1.0 - np.clip((pair - low) / max(0.001, high - low), 0.0, 1.0)
        mix = ramp * ext_factor
        theta = theta * (1.0 - mix) + angle * mix
    cos = (np.cos(theta) * mscale).astype(np.float32)[:, None, :]  # (n_tokens, 1, half)
    sin = (np.sin(theta) * mscale).astype(np.float32)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_positions: np.ndarray,
    scale: float,
    window: int = 0,
) -> np.ndarray:
    """Causal grouped-query attention of new queries over every cached key.

    q: (n_tokens, n_head, head_dim); k: (n_kv, n_head_kv, head_dim); v: (n_kv, n_head_kv, head_dim_v),
    where key j sits at position j. With `window` > 0 a query at p sees keys at p - window < j <= p.
    Returns (n_tokens, n_head * head_dim_v).
    """
    n_tokens, n_head, head_dim = q.shape
    n_kv, n_head_kv, head_dim_v = v.shape
    group = n_head // n_head_kv
    kt = k.transpose(1, 2, 0)  # (n_head_kv, head_dim, n_kv)
    vt = v.transpose(1, 0, 2)  # (n_head_kv, n_kv, head_dim_v)
    key_pos = np.arange(n_kv)
    out = np.empty((n_tokens, n_head, head_dim_v), dtype=np.float32)
    for t0 in range(0, n_tokens, ATTN_QUERY_BLOCK):
        t1 = min(n_tokens, t0 + ATTN_QUERY_BLOCK)
        qb = q[t0:t1].reshape(t1 - t0, n_head_kv, group, head_dim).transpose(1, 2, 0, 3)  # (kv, g, t, d)
        scores = (qb @ kt[:, None]) * np.float32(scale)  # (n_head_kv, group, t, n_kv)
        qpos = q_positions[t0:t1, None]
        masked = key_pos[None, :] > qpos  # (t, n_kv)
        if window > 0:
            masked |= qpos - key_pos[None, :] >= window
        scores[..., masked] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        ob = scores @ vt[:, None]  # (n_head_kv, group, t, head_dim_v)
        out[t0:t1] = ob.transpose(2, 0, 1, 3).reshape(t1 - t0, n_head, head_dim_v)
    return out.reshape(n_tokens, n_head * head_dim_v)
