"""Every C kernel path against the NumPy reference, on random data of awkward sizes.

Paths: every ISA path this machine supports (generic always). Formats: every registry format.
Error budget: activations are quantized to 8 bits per block (Q8_0/Q8_1: 32 values, Q8_K: 256), so each
product may differ from the exact float64 one by at most sum_i |w_i| * amax(block of x_i) / 254, plus
float rounding (fp16 scales, float accumulation). Float formats multiply float activations directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgellm import kernels
from edgellm.formats.quants import FORMATS, GGMLType

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")

PATHS = kernels._C.capabilities()["supported"] if kernels._C else []
FLOAT_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16}
# byte offsets of the fp16 scale fields in each block (d, and dmin / m where the format has one)
SCALE_OFFSETS = {
    GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0], GGMLType.Q5_1: [0, 2], GGMLType.Q8_0: [0],
    GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108], GGMLType.Q4_K: [0, 2], GGMLType.Q5_K: [0, 2],
    GGMLType.Q6_K: [208],
}  # fmt: skip
# edgellm's NL formats start each block with a one-byte log scale 2^((e - 192) / 8); e = 0 is a zero block
LOG_SCALE_TYPES = {GGMLType.Q4_NL, GGMLType.Q3_NL, GGMLType.Q2_NL}
ACT_BLOCK = {GGMLType.Q2_K: 256, GGMLType.Q3_K: 256, GGMLType.Q4_K: 256, GGMLType.Q5_K: 256, GGMLType.Q6_K: 256}


@pytest.fixture(autouse=True)
def restore_path():
    before = kernels.active_path()
    yield
    kernels.use(before)
    kernels.set_threads(None)


def random_weights(rng, ttype, n_rows, n_cols, scale=0.05):
    """Packed random weights: random quant bits with sane fp16 scales (or random floats)."""
    fmt = FORMATS[ttype]
    if ttype in FLOAT_TYPES:
        values = (rng.standard_normal((n_rows, n_cols)) * scale).astype(np.float32)
        return fmt.quantize(values.reshape(-1)).reshape(n_rows, -1)
    n_blocks = n_rows * n_cols // fmt.block_size
    blocks = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    if ttype in LOG_SCALE_TYPES:  # weights up to 127 * 2^((e - 192) / 8): about `scale` for e near 100
        blocks[:, 0] = rng.integers(88, 104, n_blocks)
        blocks[rng.random(n_blocks) < 0.1, 0] = 0
        return blocks.reshape(n_rows, -1)
    for off in SCALE_OFFSETS[ttype]:
        d = (rng.uniform(0.2, 1.0, n_blocks) * scale / 8).astype(np.float16)
        blocks[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(n_rows, -1)


def reference(raw, ttype, n_rows, n_cols, x):
    w = FORMATS[ttype].dequantize(raw.reshape(-1)).reshape(n_rows, n_cols).astype(np.float64)
    return x.astype(np.float64) @ w.T, w


def budget(w, x, ttype):
    exact_scale = np.abs(x.astype(np.float64)) @ np.abs(w).T  # sum |w_i x_i|
    if ttype in FLOAT_TYPES:
        return 1e-5 * exact_scale + 1e-6
    block = ACT_BLOCK.get(ttype, 32)
    amax = np.abs(x).reshape(x.shape[0], -1, block).max(axis=2)  # (n_tokens, n_blocks)
    act_err = np.repeat(amax / 254.0, block, axis=1)  # per-element worst rounding
    return 1.01 * (act_err @ np.abs(w).T) + 3e-3 * exact_scale + 1e-6


SHAPES = [(1, 1), (3, 7), (17, 18), (33, 3)]  # (rows, blocks per row): single block, tails, odd counts
TOKENS = [1, 2, 5, 9]  # 5 and 9 leave partial tiles of 4


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", list(FORMATS), ids=lambda t: t.name)
def test_matmul_matches_reference_within_budget(path, ttype):
    kernels.use(path)
    assert kernels.has_matmul(ttype), f"no {path} matmul kernel for {ttype.name}"
    rng = np.random.default_rng(int(ttype) * 31 + len(path))
    block = max(FORMATS[ttype].block_size, ACT_BLOCK.get(ttype, 32))
    for (n_rows, n_blocks), n_tokens in zip(SHAPES, TOKENS):
        n_cols = n_blocks * block
        raw = random_weights(rng, ttype, n_rows, n_cols)
        x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
        x[:, :block] *= 30.0  # one loud block: scales differ between blocks
        got = kernels.matmul(x, raw, ttype, n_rows, n_cols)
        ref, w = reference(raw, ttype, n_rows, n_cols, x)
        err = np.abs(got - ref)
        allowed = budget(w, x, ttype)
        worst = np.unravel_index(np.argmax(err / allowed), err.shape)
        assert (err <= allowed).all(), (
            f"{path} {ttype.name} shape {n_rows}x{n_cols} tokens {n_tokens}: error {err[worst]:.3g} "
            f"> budget {allowed[worst]:.3g} at {worst}"
        )


@pytest.mark.parametrize("ttype", list(FORMATS), ids=lambda t: t.name)
def test_all_paths_agree_with_generic(ttype):
    rng = np.random.default_rng(7)
    block = max(FORMATS[ttype].block_size, ACT_BLOCK.get(ttype, 32))
    n_rows, n_cols = 13, 5 * block
    raw = random_weights(rng, ttype, n_rows, n_cols)
    x = rng.standard_normal((6, n_cols)).astype(np.float32)
    kernels.use("generic")
    expected = kernels.matmul(x, raw, ttype, n_rows, n_cols)
    for path in PATHS:
        kernels.use(path)
        np.testing.assert_allclose(kernels.matmul(x, raw, ttype, n_rows, n_cols), expected, rtol=2e-5,
                                   atol=2e-5 * np.abs(expected).max(), err_msg=path)  # fmt: skip


@pytest.mark.parametrize("ttype", [GGMLType.Q8_0, GGMLType.Q4_1, GGMLType.F16], ids=lambda t: t.name)
def test_zero_and_constant_inputs(ttype):
    rng = np.random.default_rng(0)
    raw = random_weights(rng, ttype, 5, 64)
    for path in PATHS:
        kernels.use(path)
        zeros = kernels.matmul(np.zeros((2, 64), np.float32), raw, ttype, 5, 64)
        ref, _ = reference(raw, ttype, 5, 64, np.zeros((2, 64), np.float32))
        np.testing.assert_allclose(zeros, ref, atol=1e-6)
        ones = np.ones((3, 64), np.float32)
        ref, w = reference(raw, ttype, 5, 64, ones)
        np.testing.assert_allclose(kernels.matmul(ones, raw, ttype, 5, 64), ref, rtol=1e-2, atol=1e-3)
    # all-zero weight blocks give exact zeros
    kernels.use(PATHS[-1])
    zero_w = np.zeros_like(raw)
    assert not kernels.matmul(rng.standard_normal((2, 64)).astype(np.float32), zero_w, ttype, 5, 64).any()


@pytest.mark.parametrize("path", PATHS)
def test_thread_counts_give_identical_results(path):
    kernels.use(path)
    rng = np.random.default_rng(1)
    raw = random_weights(rng, GGMLType.Q4_0, 70, 96)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    results = []
    for n in (1, 2, 3, 4):
        kernels.set_threads(n)
        results.append(kernels.matmul(x, raw, GGMLType.Q4_0, 70, 96))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_c_block_sizes_equal_registry():
    for ttype, fmt in FORMATS.items():
        info = kernels._C.type_info(int(ttype))
        assert (info["block_size"], info["type_size"]) == (fmt.block_size, fmt.type_size), ttype.name


@pytest.mark.parametrize("ttype", list(FORMATS), ids=lambda t: t.name)
def test_dequantize_row_is_bit_exact(ttype):
    rng = np.random.default_rng(2)
    block = FORMATS[ttype].block_size
    raw = random_weights(rng, ttype, 1, 3 * max(block, 32))
    k = raw.size * FORMATS[ttype].block_size // FORMATS[ttype].type_size
    for path in PATHS:
        kernels.use(path)
        out = np.empty(k, np.float32)
        kernels._C.dequantize_row(int(ttype), raw, out)
        np.testing.assert_array_equal(out.view(np.uint32), FORMATS[ttype].dequantize(raw).view(np.uint32))


def test_q8_0_activation_quantizer_matches_reference():
    x = np.random.default_rng(3).standard_normal(32 * 7).astype(np.float32)
    x[:32] = 0.0  # all-zero block
    ref = FORMATS[GGMLType.Q8_0].quantize(x)
    for path in PATHS:
        kernels.use(path)
        out = np.empty_like(ref)
        kernels._C.quantize_row(int(GGMLType.Q8_0), x, out)
        q_ours, q_ref = out[:, 2:].view(np.int8).astype(int), ref[:, 2:].view(np.int8).astype(int)
        assert np.abs(q_ours - q_ref).max() <= 1, path  # ISA paths may round exact halves to even
        np.testing.assert_array_equal(out[:, :2], ref[:, :2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", list(FORMATS), ids=lambda t: t.name)
def test_dot_honours_row_and_output_strides(path, ttype):
    """The kernel signature itself: activation rows `by` bytes apart, results `bs` floats apart."""
    kernels.use(path)
    rng = np.random.default_rng(11)
    block = max(FORMATS[ttype].block_size, ACT_BLOCK.get(ttype, 32))
    n = 3 * block
    raw = random_weights(rng, ttype, 1, n)
    x = rng.standard_normal((5, n)).astype(np.float32)
    expected = kernels.matmul(x, raw, ttype, 1, n)[:, 0]
    dot_type = kernels._C.type_info(int(ttype))["dot_type"]
    if dot_type == int(GGMLType.F32):
        rows = np.zeros((5, n + 24), np.float32)  # padded rows
        rows[:, :n] = x
        y, by = rows, rows.shape[1] * 4
    else:
        info = kernels._C.type_info(dot_type)  # Q8_0, Q8_1 or Q8_K
        row_bytes = n // info["block_size"] * info["type_size"]
        y = np.zeros((5, row_bytes + 40), np.uint8)  # padded rows
        for i in range(5):
            kernels._C.quantize_row(dot_type, x[i], y[i, :row_bytes])
        by = y.shape[1]
    for nc in (1, 3, 4, 5):
        got = kernels._C.dot(int(ttype), raw, y, n, nc, by, 3)
        np.testing.assert_allclose(got, expected[:nc], rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=f"nc={nc}")


def test_missing_extension_falls_back_to_numpy_with_one_warning(tiny_llama):
    import subprocess
    import sys

    code = (
        "import sys, warnings, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'edgellm.kernels._C': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from edgellm import kernels\n"
        "    from edgellm.api import LLM\n"
        "    out = LLM(sys.argv[1]).create_completion('the sea', max_tokens=3, temperature=0)\n"
        "print(kernels.capabilities()['selected'], len([x for x in w if 'C kernels are not built' in str(x.message)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tiny_llama)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ref", "1"]


@pytest.mark.parametrize("dot_type,block", [(GGMLType.Q8_0, 32), (9, 32), (15, 256)], ids=["Q8_0", "Q8_1", "Q8_K"])
def test_numpy_activation_rounding_matches_the_c_quantizers(dot_type, block):
    """The NumPy path's activation rounding (kernels.reference) is the C quantizers' to the bit."""
    from edgellm.kernels.reference import quantize_activations

    weight_type = {32: GGMLType.Q4_0 if dot_type == GGMLType.Q8_0 else GGMLType.Q4_1, 256: GGMLType.Q4_K}[block]
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(block * 6) * rng.choice([1e-3, 1.0, 50.0], block * 6)).astype(np.float32)
    x[:block] = 0.0
    x[block : 2 * block] = 0.25  # constant block: exact ties
    expected = quantize_activations(x.reshape(1, -1), weight_type).reshape(-1)
    info = kernels._C.type_info(int(dot_type))
    for path in PATHS:
        kernels.use(path)
        out = np.empty(x.size // block * info["type_size"], np.uint8)
        kernels._C.quantize_row(int(dot_type), x, out)
        blocks = out.reshape(-1, info["type_size"])
        if block == 32:
            d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
            q = blocks[:, 4 if dot_type == 9 else 2 :].view(np.int8).astype(np.float32)
        else:
            d = blocks[:, :4].copy().view(np.float32)
            q = blocks[:, 4 : 4 + 256].view(np.int8).astype(np.float32)
        np.testing.assert_array_equal((q * d).reshape(-1), expected, err_msg=path)


@pytest.mark.parametrize("ttype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q4_K,
                                   GGMLType.Q6_K], ids=lambda t: t.name)  # fmt: skip
def test_numpy_oracle_reproduces_kernel_products(ttype):
    """With the kernels' activation rounding (and Q8_1's stored sums) the NumPy product is the C one up to
    float summation order: far inside the activation-quantization budget."""
    from edgellm.model.layers import linear

    rng = np.random.default_rng(13)
    block = max(FORMATS[ttype].block_size, ACT_BLOCK.get(ttype, 32))
    n_rows, n_cols = 9, 4 * block
    raw = random_weights(rng, ttype, n_rows, n_cols)
    x = (rng.standard_normal((3, n_cols)) * 3).astype(np.float32)

    class Store:  # the one-tensor store `linear` needs
        def info(self, name):
            return type("Info", (), {"type": ttype, "shape": (n_rows, n_cols)})()

        def raw(self, name):
            return raw

    kernels.use("ref")
    oracle = linear(x, Store(), "w")
    kernels.use(PATHS[-1])
    fast = kernels.matmul(x, raw, ttype, n_rows, n_cols)
    scale = np.abs(x) @ np.abs(FORMATS[ttype].dequantize(raw.reshape(-1)).reshape(n_rows, n_cols)).T
    assert (np.abs(oracle - fast) <= 1e-5 * scale + 1e-6).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0])
def test_mix_rows_matches_reference(path, ttype):
    """Attention's P V kernel on every KV cache type: row lengths with vector tails, 1..7 weight rows, padded rows."""
    kernels.use(path)
    rng = np.random.default_rng(12)
    fmt = FORMATS[ttype]
    for n in (32, 64, 96, 256) if ttype == GGMLType.Q8_0 else (8, 20, 64, 72, 100, 256):
        for m in (1, 5, 130):
            values = rng.standard_normal((m, n)).astype(np.float32)
            rows = fmt.quantize(values.reshape(-1)).reshape(m, -1)
            padded = np.zeros((m, rows.shape[1] + 6), np.uint8)  # rows bx bytes apart, not back to back
            padded[:, : rows.shape[1]] = rows.view(np.uint8).reshape(m, -1)
            x = fmt.dequantize(rows.reshape(-1)).reshape(m, n).astype(np.float64)
            for nr in (1, 3, 4, 7):
                p = rng.random((nr, m)).astype(np.float32)
                got = np.array(kernels._C.mix(int(ttype), padded, p, n, nr, m, padded.shape[1])).reshape(nr, n)
                want = p.astype(np.float64) @ x
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"n={n} m={m} nr={nr}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ttype", [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0])
def test_dot_rows_matches_reference(path, ttype):
    """Attention's scores kernel: cache rows against query rows (Q8_0 queries for a Q8_0 cache), key counts
    around the 16-key tiles, row lengths with vector tails, padded rows on both sides."""
    kernels.use(path)
    rng = np.random.default_rng(13)
    fmt = FORMATS[ttype]
    for n in (32, 64, 96, 256) if ttype == GGMLType.Q8_0 else (8, 20, 64, 72, 100, 256):
        for m in (1, 5, 16, 17, 130):
            keys = fmt.quantize(rng.standard_normal((m, n)).astype(np.float32).reshape(-1)).reshape(m, -1)
            x = np.zeros((m, keys.shape[1] + 6), np.uint8)
            x[:, : keys.shape[1]] = keys.view(np.uint8).reshape(m, -1)
            k = fmt.dequantize(keys.reshape(-1)).reshape(m, n).astype(np.float64)
            for nr in (1, 3, 4, 7):
                q = rng.standard_normal((nr, n)).astype(np.float32)
                if ttype == GGMLType.Q8_0:
                    row = n // 32 * 34
                    y = np.zeros((nr, row + 10), np.uint8)
                    for i in range(nr):
                        kernels._C.quantize_row(int(GGMLType.Q8_0), q[i], y[i, :row])
                    q = FORMATS[GGMLType.Q8_0].dequantize(y[:, :row].reshape(-1)).reshape(nr, n)
                else:
                    y = np.zeros((nr, n + 3), np.float32)
                    y[:, :n] = q
                got = np.array(kernels._C.dot_rows(int(ttype), x, y, n, nr, m, x.shape[1], y.strides[0])).reshape(nr, m)
                want = q.astype(np.float64) @ k.T
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"n={n} m={m} nr={nr}")


PACKED_TYPES = [GGMLType.Q4_1, GGMLType.Q8_0]


def packed_paths(ttype) -> list[str]:
    """The paths with kernels over the 16-row interleaved layout for `ttype`."""
    found = []
    for path in PATHS:
        kernels.use(path)
        try:
            kernels.matmul_packed(np.zeros((1, 32), np.float32), random_weights(np.random.default_rng(0), ttype, 16, 32),
                                  ttype, 16, 32)  # fmt: skip
        except ValueError:
            continue
        found.append(path)
    return found


@pytest.mark.parametrize("ttype", PACKED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("threads", [1, 3])
def test_packed_matmul_matches_reference_within_budget(ttype, threads):
    """Rows interleaved 16 at a time: every row of every group in its place, every token tile size (1..8, then
    a chunk over 8), with the same activation rounding as the row-at-a-time kernels."""
    paths = packed_paths(ttype)
    if not paths:
        pytest.skip(f"no path here has packed {ttype.name} kernels")
    kernels.set_threads(threads)
    rng = np.random.default_rng(int(ttype) + threads)
    for path in paths:
        kernels.use(path)
        for n_rows, n_blocks, n_tokens in [(16, 1, 1), (32, 3, 2), (48, 7, 3), (16, 18, 4), (64, 5, 5), (80, 2, 6),
                                           (16, 9, 7), (32, 4, 8), (48, 3, 13), (1552, 2, 1)]:  # fmt: skip
            n_cols = 32 * n_blocks
            raw = random_weights(rng, ttype, n_rows, n_cols)
            x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
            x[:, :32] *= 30.0
            got = kernels.matmul_packed(x, raw, ttype, n_rows, n_cols)
            ref, w = reference(raw, ttype, n_rows, n_cols, x)
            err, allowed = np.abs(got - ref), budget(w, x, ttype)
            worst = np.unravel_index(np.argmax(err / allowed), err.shape)
            assert (err <= allowed).all(), (f"{path} {ttype.name} {n_rows}x{n_cols} tokens {n_tokens}: error "
                                            f"{err[worst]:.3g} > budget {allowed[worst]:.3g} at {worst}")  # fmt: skip
            row_at_a_time = kernels.matmul(x, raw, ttype, n_rows, n_cols)  # the same integers, other sum order
            np.testing.assert_allclose(got, row_at_a_time, rtol=1e-5, atol=1e-5 * np.abs(row_at_a_time).max())


@pytest.mark.parametrize("ttype", PACKED_TYPES, ids=lambda t: t.name)
def test_packed_matmul_refuses_shapes_it_cannot_hold(ttype):
    if not packed_paths(ttype):
        pytest.skip(f"no path here has packed {ttype.name} kernels")
    raw = random_weights(np.random.default_rng(1), ttype, 24, 64)
    with pytest.raises(ValueError, match="no packed kernel"):
        kernels.matmul_packed(np.ones((1, 64), np.float32), raw, ttype, 24, 64)  # 24 rows: not groups of 16
