"""GPTQ-style error compensation (Frantar et al., 2022), for any block format.

Quantizing a block of columns leaves an error E; because the layer's inputs are correlated (H = E[x x^T]),
part of that error can be cancelled by nudging the columns not yet quantized. With U the upper Cholesky
factor of H^-1, the optimal nudge after quantizing columns B is  W[:, rest] -= E U_BB^-1 U_B,rest.
For edgellm's NL formats, whose blocks are a scale byte and one code per weight, the format's quantizer
chooses each block's scale and the codes are then chosen one column at a time, each column's error
compensated in the columns after it, inside the block too (the GPTQ reference's group quantization).
Other formats (k-quants, legacy) quantize a whole block at once with their own quantizer and compensate
from each block to all later ones.
"""

from __future__ import annotations

import numpy as np

from ..formats.quants import NL_SCALE, GGMLType, NLFormat, dequantize, get_format

DAMP = 0.01  # fraction of the mean diagonal added to H, as in the GPTQ reference implementation


def quantize_gptq(
    weights: np.ndarray, type_: GGMLType, hessian: np.ndarray, quantize_block, damp: float = DAMP
) -> np.ndarray:
    """Packed rows of `type_` for `weights` (rows, n) with input second moments `hessian` (n, n).

    `quantize_block(w, importance)` quantizes float columns (rows, b) to packed bytes (rows, b-bytes).
    """
    fmt = get_format(type_)
    w = np.array(weights, dtype=np.float64)
    n = w.shape[1]
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(n)
    u = _upper_cholesky_of_inverse(h)
    step = max(fmt.block_size, 32)
    packed = []
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        block = w[:, c0:c1].astype(np.float32)
        q = quantize_block(block, np.diag(hessian)[c0:c1].astype(np.float32))
        if isinstance(fmt, NLFormat):
            q, scaled = _columnwise(fmt, w[:, c0:c1], q[:, 0], u[c0:c1, c0:c1])
        else:
            err = block - dequantize(q, type_, block.shape)
            # err_scaled @ U[B, B] = err  ->  err_scaled = err @ U[B, B]^-1 (U[B, B] is upper triangular)
            scaled = np.linalg.solve(u[c0:c1, c0:c1].T, err.T.astype(np.float64)).T
        packed.append(q)
        if c1 < n:
            w[:, c1:] -= scaled @ u[c0:c1, c1:]
    return np.concatenate(packed, axis=1)


def _columnwise(fmt: NLFormat, block: np.ndarray, exponents: np.ndarray, u: np.ndarray):
    """Codes for one block of columns (updated in place) at the given scales, column by column; returns the
    packed block and the scaled errors that carry over to later blocks."""
    scale = NL_SCALE[exponents].astype(np.float64)
    codes = np.empty(block.shape, dtype=np.uint8)
    scaled = np.empty_like(block)
    for j in range(block.shape[1]):
        codes[:, j] = fmt.nearest_codes(block[:, j], scale)
        scaled[:, j] = (block[:, j] - scale * fmt.grid[codes[:, j]]) / u[j, j]
        block[:, j + 1:] -= np.outer(scaled[:, j], u[j, j + 1:])
    return fmt.pack(exponents, codes), scaled


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U upper triangular with U^T U = H^-1, raising the damping until H is positive definite."""
    n = len(h)
    extra = 0.0
    for _ in range(8):
        try:
            inv = np.linalg.inv(h + extra * np.eye(n))
            return np.linalg.cholesky(inv).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(h))))
    raise np.linalg.LinAlgError("input second-moment matrix is not positive definite even after damping")


def output_error(weights: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Q) H (W - Q)^T): expected squared error of the layer's output over the calibration inputs."""
    d = (np.asarray(weights, dtype=np.float64) - approx).reshape(-1, hessian.shape[0])
    return float(np.einsum("ri,ij,rj->", d, hessian, d, optimize=True))
