"""The column layout and the sparse matrix x vector kernels.

References: the repack against gguf-py's (or our registry's) dequantizer of the packed file bytes; every C path
of el_sparse_matvec against its NumPy twin (ColumnMatrix.matvec); the twin against the float product of the
dequantized matrix with the thresholded input, within the int8 rounding of the activations (amax / 254 per
input, as the dense kernels' budget in tests/kernels). Reads are checked by poisoning what must not be read.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm import kernels
from edgellm.formats.quants import FORMATS, GGMLType
from edgellm.formats import columns as layout
from tests.kernels.test_kernels import random_weights

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")

PATHS = kernels._C.capabilities()["supported"] if kernels._C else []
EXACT = {GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
         GGMLType.Q5_1}  # fmt: skip
TYPES = sorted(layout.KNOWN)
SHAPES = [(64, 1), (192, 3), (320, 7)]  # (outputs, input blocks): one tile, odd tile and block counts


@pytest.fixture(autouse=True)
def restore_path():
    before = kernels.active_path()
    yield
    kernels.use(before)


def matrix(rng, ttype, n_rows, n_blocks):
    n_cols = n_blocks * FORMATS[ttype].block_size if FORMATS[ttype].block_size > 1 else 32 * n_blocks
    raw = random_weights(rng, ttype, n_rows, n_cols)
    dense = FORMATS[ttype].dequantize(raw.reshape(-1)).reshape(n_rows, n_cols).astype(np.float64)
    return raw, dense, layout.from_packed(ttype, raw, n_rows, n_cols)


def c_matvec(cm, x, threshold, threads=1):
    y = np.full(cm.n_rows, np.nan, dtype=np.float32)
    read = kernels._C.sparse_matvec(cm.as_c(), np.ascontiguousarray(x, dtype=np.float32), float(threshold), y, threads)
    return y, read


@pytest.mark.parametrize("ttype", TYPES, ids=lambda t: FORMATS[t].name)
def test_repack_keeps_the_files_weights(ttype):
    rng = np.random.default_rng(int(ttype))
    for n_rows, n_blocks in SHAPES:
        _, dense, cm = matrix(rng, ttype, n_rows, n_blocks)
        got = cm.dense().astype(np.float64)
        if ttype in EXACT:
            np.testing.assert_array_equal(got, dense)
        else:  # sub-block scale products rounded to fp16: a relative 2^-11 of each scale term
            assert np.abs(got - dense).max() <= 2.0**-10 * np.abs(dense).max()


@pytest.mark.parametrize("ttype", TYPES, ids=lambda t: FORMATS[t].name)
def test_twin_is_the_thresholded_product(ttype):
    rng = np.random.default_rng(100 + int(ttype))
    for n_rows, n_blocks in SHAPES:
        _, dense, cm = matrix(rng, ttype, n_rows, n_blocks)
        x = rng.standard_normal(cm.n_cols).astype(np.float32)
        t = float(np.quantile(np.abs(x), 0.4))
        xa = np.where(np.abs(x) >= t, x, 0).astype(np.float64)
        exact = dense @ xa
        group_max = np.repeat(np.abs(xa).reshape(-1, cm.group).max(axis=1), cm.group)
        bound = (np.abs(dense) @ (group_max / 254.0)) * (cm.d is not None) + 1e-5 * (np.abs(dense) @ np.abs(xa)) + 1e-6
        bound += np.abs(dense).max() * 2.0**-10 * np.abs(xa).sum() * (ttype not in EXACT)
        assert np.all(np.abs(cm.matvec(x, t) - exact) <= bound)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", TYPES, ids=lambda t: FORMATS[t].name)
def test_kernels_match_the_twin(path, ttype):
    kernels.use(path)
    rng = np.random.default_rng(200 + int(ttype))
    for n_rows, n_blocks in SHAPES:
        _, _, cm = matrix(rng, ttype, n_rows, n_blocks)
        x = rng.standard_normal(cm.n_cols).astype(np.float32)
        x[rng.random(cm.n_cols) < 0.1] = 0  # exact zeros are never read
        for s in (0.0, 0.4, 0.9, 1.0):
            t = float(np.quantile(np.abs(x), s)) * (1.0001 if s == 1.0 else 1.0)
            want = cm.matvec(x, t)
            scale = np.abs(cm.dense()) @ np.abs(np.where(cm.active(x, t), x, 0)) + 1e-6
            for threads in (1, 2, 3):
                got, read = c_matvec(cm, x, t, threads)
                assert np.all(np.abs(got - want) <= 2e-6 * scale), (path, n_rows, n_blocks, s, threads)
                assert read == cm.bytes_read(cm.active(x, t))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", [GGMLType.F16, GGMLType.F32, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q6_K, GGMLType.Q4_K],
                         ids=lambda t: FORMATS[t].name)  # fmt: skip
def test_inactive_weights_are_never_read(path, ttype):
    """Weights of inactive inputs poisoned: NaN for float kinds, NaN scales for integer kinds' idle groups and
    random bytes in their idle rows. The output stays finite and bit for bit the same; with every input
    active the same poison shows (the check can fail)."""
    kernels.use(path)
    rng = np.random.default_rng(300 + int(ttype))
    _, _, cm = matrix(rng, ttype, 192, 8)
    x = rng.standard_normal(cm.n_cols).astype(np.float32)
    x[: cm.group] = 1e-3  # the first group is idle at t = 0.5
    t = 0.5
    clean, _ = c_matvec(cm, x, t, 2)
    idle = ~cm.active(x, t)
    if cm.d is None:
        cm.q[idle] = np.frombuffer(np.full(cm.q.shape[1] // (2 if cm.kind == layout.F16 else 4), np.nan,
                                           np.float16 if cm.kind == layout.F16 else np.float32).tobytes(), np.uint8)  # fmt: skip
    else:
        cm.q[idle] = rng.integers(0, 256, size=(int(idle.sum()), cm.q.shape[1]), dtype=np.uint8)
        cm.d[0] = np.nan
        if cm.m is not None:
            cm.m[0] = np.nan
    poisoned, _ = c_matvec(cm, x, t, 2)
    assert np.all(np.isfinite(poisoned))
    np.testing.assert_array_equal(poisoned, clean)
    everything, _ = c_matvec(cm, x, 0.0, 2)
    assert not np.all(np.isfinite(everything))


def test_threshold_zero_reads_every_nonzero_input():
    rng = np.random.default_rng(7)
    _, dense, cm = matrix(rng, GGMLType.Q4_1, 128, 4)
    x = rng.standard_normal(cm.n_cols).astype(np.float32)
    y, read = c_matvec(cm, x, 0.0)
    assert read == cm.q.nbytes + cm.d.nbytes + cm.m.nbytes
    np.testing.assert_allclose(y, dense @ x, rtol=0, atol=float(np.abs(dense).sum(axis=1).max() * np.abs(x).max() / 100))


def test_unsupported_shapes_are_refused():
    assert not layout.supported(GGMLType.Q4_1, 96, 64)  # outputs not whole 64-row tiles
    assert not layout.supported(9, 64, 64)  # Q8_1: an activation type
    rng = np.random.default_rng(0)
    cm = matrix(rng, GGMLType.Q4_0, 64, 2)[2]
    bad = (cm.kind, cm.group, cm.n_rows, cm.n_cols, cm.q.ctypes.data, cm.q.nbytes - 1, cm.d.ctypes.data, cm.m.ctypes.data)
    with pytest.raises(ValueError, match="column matrix"):
        kernels._C.sparse_matvec(bad, np.zeros(cm.n_cols, np.float32), 0.0, np.zeros(64, np.float32), 1)
