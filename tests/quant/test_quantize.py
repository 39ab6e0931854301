"""Weight quantizers (C, kernels/c/quantize.c) and GPTQ: bit-exactness, round trips, error budgets, weighting."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgellm import kernels
from edgellm.errors import ConfigError
from edgellm.formats.quants import FORMATS, dequantize
from edgellm.formats.quants import GGMLType as T
from edgellm.quant.gptq import output_error, quantize_gptq
from edgellm.quant.quantize import quantize_tensor

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")

LEGACY = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
QUANTIZED = [t for t in FORMATS if FORMATS[t].block_size > 1]
# relative mean squared error of Gaussian weights, a little above what each format reaches (bits: more is less)
BUDGET = {T.Q8_0: 1e-4, T.Q6_K: 1e-3, T.Q5_K: 3e-3, T.Q5_1: 3e-3, T.Q5_0: 3e-3, T.Q4_K: 8e-3, T.Q4_1: 8e-3,
          T.Q4_0: 1e-2, T.Q4_NL: 1e-2, T.Q3_K: 3e-2, T.Q3_NL: 3.5e-2, T.Q2_K: 9e-2, T.Q2_NL: 0.13}  # fmt: skip


def gaussian(rng, rows: int, cols: int) -> np.ndarray:
    """Rows with scales spanning three decades, plus an all-zero and a constant row."""
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)
    x[1] = 0.0
    x[2] = 0.75
    return x


@pytest.mark.parametrize("ttype", LEGACY, ids=lambda t: t.name)
def test_without_importance_matches_ggml_reference_bit_for_bit(ttype):
    x = gaussian(np.random.default_rng(int(ttype)), 37, 96)
    ours = quantize_tensor(x, ttype)
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(ttype)))
    assert np.array_equal(ours.reshape(-1), np.asarray(ref).reshape(-1))


@pytest.mark.parametrize("ttype", QUANTIZED, ids=lambda t: t.name)
def test_round_trip_within_budget(ttype):
    rng = np.random.default_rng(7 + int(ttype))
    cols = max(FORMATS[ttype].block_size, 32) * 3
    x = gaussian(rng, 29, cols)
    for imp in (None, rng.uniform(0.1, 10, cols).astype(np.float32)):
        y = dequantize(quantize_tensor(x, ttype, imp), ttype, x.shape)
        assert np.all(y[1] == 0), "an all-zero row must stay zero"
        rel = np.mean((x - y) ** 2, axis=1) / np.maximum(np.mean(x**2, axis=1), 1e-30)
        assert np.median(rel) < BUDGET[ttype], f"{ttype.name}: median relative MSE {np.median(rel):.4g}"
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("ttype", [T.Q4_0, T.Q3_K, T.Q4_K, T.Q3_NL, T.Q2_NL], ids=lambda t: t.name)
def test_importance_lowers_the_weighted_error(ttype):
    rng = np.random.default_rng(3)
    cols = 256 * 2
    x = gaussian(rng, 64, cols)
    imp = np.exp(rng.normal(0, 1.5, cols)).astype(np.float32)  # a few columns matter much more

    def weighted(packed):
        return float(np.sum(imp * (x - dequantize(packed, ttype, x.shape)) ** 2))

    assert weighted(quantize_tensor(x, ttype, imp)) < 0.95 * weighted(quantize_tensor(x, ttype))


def test_threads_do_not_change_the_result():
    x = gaussian(np.random.default_rng(5), 41, 512)
    for t in (T.Q4_K, T.Q3_NL):
        assert np.array_equal(quantize_tensor(x, t, threads=1), quantize_tensor(x, t, threads=3))


def test_row_not_whole_blocks_is_a_clear_error():
    with pytest.raises(ConfigError, match="multiple of 256"):
        quantize_tensor(np.zeros((2, 576), np.float32), T.Q4_K)


@pytest.mark.parametrize("ttype", [T.Q4_0, T.Q3_NL, T.Q4_K], ids=lambda t: t.name)
def test_gptq_lowers_the_output_error_on_correlated_inputs(ttype):
    rng = np.random.default_rng(11)
    n_in = 4 * max(64, FORMATS[ttype].block_size)  # compensation flows between blocks: several per row
    mix = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    xs = rng.standard_normal((4000, n_in)) @ (np.eye(n_in) + 0.8 * mix)  # correlated activations
    hessian = xs.T @ xs / len(xs)
    w = (rng.standard_normal((48, n_in)) * 0.05).astype(np.float32)
    imp = np.diag(hessian).astype(np.float32)
    plain = dequantize(quantize_tensor(w, ttype, imp), ttype, w.shape)
    packed = quantize_gptq(w, ttype, hessian, lambda b, i: quantize_tensor(b, ttype, i))
    assert packed.shape == (48, FORMATS[ttype].row_bytes(n_in))
    gptq = dequantize(packed, ttype, w.shape)
    assert output_error(w, gptq, hessian) < 0.9 * output_error(w, plain, hessian)
