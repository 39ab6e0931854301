"""Format registry: bit-exact against gguf-py's reference codecs, hand-computed blocks, and error texts."""

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgellm.errors import FormatError, UnsupportedError
from edgellm.formats import quants as formats
from edgellm.formats.quants import (
    FORMATS,
    GGMLType,
    dequantize,
    dequantize_rows,
    get_format,
)

SUPPORTED = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# edgellm's own formats, registered after ggml's, with ids no ggml type uses
OURS = ["Q4_NL", "Q3_NL", "Q2_NL"]
# gguf 0.19 has reference quantizers for these and none for the k-quants.
GGUF_QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# Byte offsets of each block's f16 fields (d, m/dmin), from ggml-common.h; random bytes there could be NaN/inf.
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}

ALL_FORMATS = [FORMATS[GGMLType[name]] for name in SUPPORTED]
QUANTIZABLE = [FORMATS[GGMLType[name]] for name in GGUF_QUANTIZABLE]
BLOCK_FORMATS = [FORMATS[GGMLType[name]] for name in F16_FIELDS]


def _ids(fmt):
    return fmt.name


def _random_blocks(fmt, n_blocks, rng, scale=None):
    """Random block bytes with finite f16 scale fields (drawn in a sane range, or all set to `scale`)."""
    blocks = rng.integers(0, 256, size=(n_blocks, fmt.type_size), dtype=np.uint8)
    for offset in F16_FIELDS.get(fmt.name, []):
        if scale is None:
            values = rng.uniform(-2, 2, n_blocks) * 2.0 ** rng.integers(-12, 6, n_blocks)
        else:
            values = np.full(n_blocks, scale)
        blocks[:, offset:offset + 2] = values.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks


def _gguf_dequantize(fmt, blocks):
    return gguf.quants.dequantize(blocks, GGMLQuantizationType(fmt.type)).astype(np.float32).reshape(-1)


def _gguf_quantize(fmt, x):
    out = gguf.quants.quantize(x.reshape(-1, 32), GGMLQuantizationType(fmt.type))  # F32/F16 come back as floats
    return np.ascontiguousarray(out).view(np.uint8).reshape(-1, fmt.type_size)


def _assert_same_floats(fmt, ours, ref):
    """Bit-for-bit equality (so -0.0 != 0.0 and NaN payloads count); on a mismatch name the worst block."""
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    differs = ours.view(np.uint32) != ref.view(np.uint32)
    if differs.any():
        per_block = differs.reshape(-1, fmt.block_size).sum(axis=1)
        worst = int(per_block.argmax())
        i = worst * fmt.block_size + int(differs.reshape(-1, fmt.block_size)[worst].argmax())
        pytest.fail(
            f"{fmt.name}: {int(differs.sum())} weights differ; worst block {worst} "
            f"({int(per_block[worst])} weights), first at weight {i}: ours {ours[i]!r}, gguf {ref[i]!r}"
        )


def _assert_same_bytes(fmt, ours, ref):
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    differs = ours != ref
    if differs.any():
        worst = int(differs.sum(axis=1).argmax())
        cols = np.flatnonzero(differs[worst])
        pytest.fail(
            f"{fmt.name}: {int(differs.any(axis=1).sum())} blocks differ; worst block {worst}, "
            f"bytes {cols.tolist()}: ours {ours[worst, cols].tolist()}, gguf {ref[worst, cols].tolist()}"
        )


def _awkward_input(rng, n_random=24):
    """32-weight blocks of random scale, plus the cases quantizers get wrong: zeros, constants, outliers,
    rounding ties, values too small or too large for an f16 scale."""
    random = rng.standard_normal((n_random, 32)) * 10.0 ** rng.uniform(-3, 3, (n_random, 1))
    outlier = np.zeros(32)
    outlier[5] = -1e3
    ties = np.concatenate([[127.0], np.arange(31) - 15.5])  # Q8_0 d = 1: every other value is an exact .5
    special = np.stack([
        np.zeros(32), np.full(32, 3.0), np.full(32, -0.75), outlier, ties,
        np.full(32, 1e-7) * np.arange(32), np.linspace(-1e6, 1e6, 32),
        np.where(np.arange(32) % 2 == 0, 8.0, -8.0),  # signed abs-max tie: the first one wins
    ])
    return np.concatenate([random, special]).astype(np.float32).reshape(-1)


# --- the registry itself ---

def test_registry_holds_exactly_the_supported_formats_in_order():
    assert [fmt.name for fmt in FORMATS.values()] == SUPPORTED + OURS
    assert all(fmt.type is t for t, fmt in FORMATS.items())


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=_ids)
def test_registry_ids_and_sizes_match_gguf(fmt):
    gguf_type = GGMLQuantizationType[fmt.name]
    assert int(fmt.type) == int(gguf_type)
    assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[gguf_type]


def test_module_names_are_the_registry_entries():
    assert formats.Q4_K is FORMATS[GGMLType.Q4_K]
    assert formats.F32 is get_format(0)


@pytest.mark.parametrize("name, bits", [("F32", 32), ("F16", 16), ("BF16", 16), ("Q8_0", 8.5), ("Q4_0", 4.5),
                                         ("Q2_K", 2.625), ("Q3_K", 3.4375), ("Q4_K", 4.5), ("Q6_K", 6.5625)])
def test_bits_per_weight_is_block_bytes_over_block_weights(name, bits):
    assert get_format(GGMLType[name]).bits_per_weight == bits


def test_we_have_a_quantizer_exactly_where_gguf_has_one():
    for fmt in ALL_FORMATS:
        try:
            gguf.quants.quantize(np.zeros((1, 256), np.float32), GGMLQuantizationType(fmt.type))
            gguf_has_one = True
        except NotImplementedError:
            gguf_has_one = False
        assert fmt.can_quantize == gguf_has_one, fmt.name


# --- dequantize against gguf-py ---

@pytest.mark.parametrize("n_blocks", [1, 7, 64])
@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=_ids)
def test_dequantize_matches_gguf_bit_exact_on_random_blocks(fmt, n_blocks):
    blocks = _random_blocks(fmt, n_blocks, np.random.default_rng(n_blocks))
    out = fmt.dequantize(blocks)
    assert out.shape == (n_blocks * fmt.block_size,)
    _assert_same_floats(fmt, out, _gguf_dequantize(fmt, blocks))


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=_ids)
def test_dequantize_of_all_zero_blocks_is_zero_and_matches_gguf(fmt):
    blocks = np.zeros((3, fmt.type_size), np.uint8)
    out = fmt.dequantize(blocks)
    assert not out.any()
    _assert_same_floats(fmt, out, _gguf_dequantize(fmt, blocks))


@pytest.mark.parametrize("scale", [65504.0, -65504.0, 2.0**-24, 2.0**-14, -0.0], ids=str)
@pytest.mark.parametrize("fmt", BLOCK_FORMATS, ids=_ids)
def test_dequantize_matches_gguf_bit_exact_at_extreme_scales(fmt, scale):
    # f16 max, its negative, smallest subnormal, smallest normal, negative zero
    blocks = _random_blocks(fmt, 5, np.random.default_rng(1), scale=scale)
    _assert_same_floats(fmt, fmt.dequantize(blocks), _gguf_dequantize(fmt, blocks))


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=_ids)
def test_dequantize_rejects_bytes_that_are_not_whole_blocks(fmt):
    if fmt.type_size == 1:
        pytest.skip("every byte count is whole blocks")
    with pytest.raises(FormatError) as excinfo:
        fmt.dequantize(np.zeros(fmt.type_size + 1, np.uint8))
    assert str(excinfo.value) == (
        f"{fmt.name}: {fmt.type_size + 1} bytes is not a whole number of {fmt.type_size}-byte blocks "
        f"(truncated tensor data?)"
    )


def test_dequantize_reinterprets_float16_arrays_as_bytes():
    # gguf's reader hands out F16 tensors as float16 arrays, not bytes.
    weights = np.array([[1.0, -2.5], [0.125, 65504.0]], np.float16)
    assert dequantize(weights, GGMLType.F16, (2, 2)).tolist() == [[1.0, -2.5], [0.125, 65504.0]]


# --- quantize against gguf-py ---

@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e6 overflows an f16 scale
@pytest.mark.parametrize("fmt", QUANTIZABLE, ids=_ids)
def test_quantize_matches_gguf_bit_exact(fmt):
    x = _awkward_input(np.random.default_rng(7))
    ours = fmt.quantize(x)
    assert ours.shape == (x.size // fmt.block_size, fmt.type_size)
    _assert_same_bytes(fmt, ours, _gguf_quantize(fmt, x))


def test_bf16_quantize_matches_gguf_on_nan_inf_zero_and_rounding_ties():
    bits = np.array([0x7FC00001, 0x7F800001, 0xFF812345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000000,
                     0x3F808000, 0x3F818000, 0x3F807FFF, 0x00000001, 0x7F7FFFFF], np.uint32)
    x = bits.view(np.float32)
    ref = np.ascontiguousarray(gguf.quants.quantize(x.reshape(1, -1), GGMLQuantizationType.BF16)).view(np.uint8)
    _assert_same_bytes(formats.BF16, formats.BF16.quantize(x), ref.reshape(-1, 2))


@pytest.mark.parametrize("value", [3.0, -0.75, 100.0])
@pytest.mark.parametrize("fmt", QUANTIZABLE, ids=_ids)
def test_quantize_of_constant_input_round_trips_within_f16_precision(fmt, value):
    x = np.full(64, value, np.float32)
    np.testing.assert_allclose(fmt.dequantize(fmt.quantize(x)), x, rtol=2.0**-10, atol=0)


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_quantize_k_quant_raises_unsupported_listing_quantizable_formats(name):
    with pytest.raises(UnsupportedError) as excinfo:
        get_format(GGMLType[name]).quantize(np.zeros(256, np.float32))
    assert str(excinfo.value) == (
        f"{name} has no reference quantizer in edgellm.formats.quants; "
        f"formats with one: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1"
    )


def test_quantize_rejects_length_not_multiple_of_block_size():
    with pytest.raises(FormatError) as excinfo:
        formats.Q8_0.quantize(np.zeros(40, np.float32))
    assert str(excinfo.value) == "Q8_0: cannot quantize 40 weights, need a multiple of the block size 32"


# --- one hand-computed block per format; expected floats derived from ggml-common.h by hand ---

def _f16(value):
    return list(np.float16(value).tobytes())


@pytest.mark.parametrize("name, raw, expected", [
    ("F32", [0x00, 0x00, 0xC0, 0x3F], [1.5]),
    ("F16", [0x00, 0x3C, 0x00, 0xC0], [1.0, -2.0]),
    ("BF16", [0x80, 0x3F, 0xC0, 0xBF], [1.0, -1.5]),
])
def test_float_formats_dequantize_hand_computed_bytes(name, raw, expected):
    assert get_format(GGMLType[name]).dequantize(np.array(raw, np.uint8)).tolist() == expected


def test_q8_0_dequantizes_hand_computed_block():
    q = [-128, -127] + list(range(-15, 15))
    block = np.array(_f16(0.25) + list(np.array(q, np.int8).view(np.uint8)), np.uint8)
    assert formats.Q8_0.dequantize(block).tolist() == [
        -32.0, -31.75, -3.75, -3.5, -3.25, -3.0, -2.75, -2.5, -2.25, -2.0, -1.75, -1.5, -1.25, -1.0, -0.75, -0.5,
        -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5,
    ]


def test_q4_0_dequantizes_hand_computed_block():
    # qs[j] = j | (15 - j) << 4: weight j has q = j, weight j + 16 has q = 15 - j; w = 0.5 * (q - 8)
    block = np.array(_f16(0.5) + [j | (15 - j) << 4 for j in range(16)], np.uint8)
    assert formats.Q4_0.dequantize(block).tolist() == [
        -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5,
        3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
    ]


def test_q4_1_dequantizes_hand_computed_block():
    # same nibbles as the Q4_0 block; w = 0.5 * q - 1
    block = np.array(_f16(0.5) + _f16(-1.0) + [j | (15 - j) << 4 for j in range(16)], np.uint8)
    assert formats.Q4_1.dequantize(block).tolist() == [
        -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5,
        6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0,
    ]


def test_q5_0_dequantizes_hand_computed_block():
    # qh = 0x0000FFFF sets bit 4 of weights 0..15 only: q = j + 16 there, 15 - j after; w = q - 16
    block = np.array(_f16(1.0) + [0xFF, 0xFF, 0x00, 0x00] + [j | (15 - j) << 4 for j in range(16)], np.uint8)
    assert formats.Q5_0.dequantize(block).tolist() == [float(j) for j in range(16)] + [float(-1 - j) for j in range(16)]


def test_q5_1_dequantizes_hand_computed_block():
    # qh = 0xFFFF0000 sets bit 4 of weights 16..31: q = j, then 31 - j; w = 0.5 * q - 8
    block = np.array(_f16(0.5) + _f16(-8.0) + [0x00, 0x00, 0xFF, 0xFF] + [j | (15 - j) << 4 for j in range(16)],
                     np.uint8)
    expected = [0.5 * j - 8 for j in range(16)] + [0.5 * (31 - j) - 8 for j in range(16)]
    assert formats.Q5_1.dequantize(block).tolist() == expected


def _sub_blocks(values, size):
    return np.repeat(np.array(values, np.float32), size)


def test_q2_k_dequantizes_hand_computed_block():
    # scales[s] = s | (15 - s) << 4 (scale s, min 15 - s); every qs byte 0b11100100 gives q = j for the
    # 32 weights at shift 2j, so sub-block s has q = (s % 8) // 2; w = 0.5 * s * q - 0.25 * (15 - s)
    block = np.array([s | (15 - s) << 4 for s in range(16)] + [0xE4] * 64 + _f16(0.5) + _f16(0.25), np.uint8)
    expected = _sub_blocks([-3.75, -3.5, -2.25, -1.5, 1.25, 2.5, 6.75, 8.5,
                            -1.75, -1.5, 3.75, 4.5, 11.25, 12.5, 20.75, 22.5], 16)
    np.testing.assert_array_equal(formats.Q2_K.dequantize(block), expected)


def test_q3_k_dequantizes_hand_computed_block():
    # scales stored 24 + s (so scale s - 8): low nibbles (8 + i) | i << 4 in bytes 0..7, high bits
    # (1, 1, 2, 2) at shifts (0, 2, 4, 6) = 165 in bytes 8..11. qs bytes 0xE4: low bits = j (as Q2_K).
    # hmask bytes 0x55: bit b set for even b, so 32-weight chunk b has q = b % 4 - (4 if b is odd else 0)
    # = [0, -3, 2, -1, 0, -3, 2, -1]; w = 0.5 * (s - 8) * q.
    scales = [8, 25, 42, 59, 76, 93, 110, 127, 165, 165, 165, 165]
    block = np.array([0x55] * 32 + [0xE4] * 64 + scales + _f16(0.5), np.uint8)
    expected = _sub_blocks([0.0, 0.0, 9.0, 7.5, -4.0, -3.0, 1.0, 0.5,
                            0.0, 0.0, -3.0, -4.5, 4.0, 5.0, -3.0, -3.5], 16)
    np.testing.assert_array_equal(formats.Q3_K.dequantize(block), expected)


# Q4_K/Q5_K scales [1, 2, 3, 4, 17, 33, 50, 63] and mins [0, 1, 2, 3, 16, 32, 48, 60], packed as ggml's
# get_scale_min_k4 reads them: bytes 0..3 scale 0..3 | (scale 4..7 >> 4) << 6, bytes 4..7 the same for mins,
# bytes 8..11 (scale 4..7 & 15) | (min 4..7 & 15) << 4.
K4_SCALES = [65, 130, 195, 196, 64, 129, 194, 195, 1, 1, 2, 207]


def test_q4_k_dequantizes_hand_computed_block():
    # qs[32h + l] = (l // 2) | (h + 1) << 4: sub-block 2h has q = l // 2, sub-block 2h + 1 has q = h + 1;
    # w = 1.0 * scale * q - 0.5 * min
    block = np.array(_f16(1.0) + _f16(0.5) + K4_SCALES + [(l // 2) | (h + 1) << 4 for h in range(4) for l in range(32)],
                     np.uint8)
    ramp = np.repeat(np.arange(16, dtype=np.float32), 2)  # l // 2 for l < 32
    expected = np.concatenate([
        1 * ramp - 0.0, np.full(32, 2 * 1 - 0.5),  # sub-blocks 0, 1
        3 * ramp - 1.0, np.full(32, 4 * 2 - 1.5),  # 2, 3
        17 * ramp - 8.0, np.full(32, 33 * 3 - 16.0),  # 4, 5
        50 * ramp - 24.0, np.full(32, 63 * 4 - 30.0),  # 6, 7
    ])
    np.testing.assert_array_equal(formats.Q4_K.dequantize(block), expected)


def test_q5_k_dequantizes_hand_computed_block():
    # qs bytes 0x21: low bits 1 in even sub-blocks, 2 in odd; qh bytes 0xA5 add 16 in sub-blocks 0, 2, 5, 7;
    # q = [17, 2, 17, 2, 1, 18, 1, 18]; w = scale * q - 0.5 * min
    block = np.array(_f16(1.0) + _f16(0.5) + K4_SCALES + [0xA5] * 32 + [0x21] * 128, np.uint8)
    expected = _sub_blocks([17.0, 3.5, 50.0, 6.5, 9.0, 578.0, 26.0, 1104.0], 32)
    np.testing.assert_array_equal(formats.Q5_K.dequantize(block), expected)


def test_q6_k_dequantizes_hand_computed_block():
    # ql bytes 0x21: low 4 bits 1 for the first 64 weights of each half, 2 for the next 64; qh bytes 0xE4:
    # high bits j for 32-weight chunk j of each half; q - 32 = [-31, -15, 2, 18] per chunk;
    # scales s - 8; w = 0.25 * (s - 8) * (q - 32)
    block = np.array([0x21] * 128 + [0xE4] * 64 + list(np.arange(-8, 8, dtype=np.int8).view(np.uint8)) + _f16(0.25),
                     np.uint8)
    expected = _sub_blocks([62.0, 54.25, 22.5, 18.75, -2.0, -1.5, -9.0, -4.5,
                            0.0, -7.75, -7.5, -11.25, 2.0, 2.5, 27.0, 31.5], 16)
    np.testing.assert_array_equal(formats.Q6_K.dequantize(block), expected)


# --- row sizes, lookups and whole tensors ---

def test_row_bytes_of_whole_blocks():
    assert formats.Q4_K.row_bytes(4096) == 16 * 144
    assert formats.Q8_0.row_bytes(576) == 18 * 34
    assert formats.F16.row_bytes(7) == 14


def test_row_bytes_rejects_partial_block_with_message():
    with pytest.raises(FormatError) as excinfo:
        formats.Q4_K.row_bytes(576)
    assert str(excinfo.value) == (
        "Q4_K: a row of 576 weights is not a multiple of the block size 256; "
        "pad the row or pick a format with a smaller block"
    )


def test_get_format_accepts_int_our_enum_and_gguf_enum():
    assert get_format(12) is get_format(GGMLType.Q4_K) is get_format(GGMLQuantizationType.Q4_K) is formats.Q4_K


def test_get_format_names_the_unsupported_type_and_lists_supported_ones():
    with pytest.raises(UnsupportedError) as excinfo:
        get_format(16)
    assert str(excinfo.value) == (
        "tensor type 16 (IQ2_XXS) is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
        "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_NL, Q3_NL, Q2_NL (re-quantize the model to one of these)"
    )


def test_get_format_says_when_ggml_does_not_know_the_type_either():
    expected = r"^tensor type 999 \(unknown to ggml\) is not supported; supported: F32, F16, "
    with pytest.raises(UnsupportedError, match=expected):
        get_format(999)


def test_dequantize_tensor_returns_numpy_shape_in_row_order():
    rng = np.random.default_rng(3)
    data = _random_blocks(formats.Q4_0, 2 * 3 * 2, rng)  # (2, 3) rows of 64 weights
    out = dequantize(data, GGMLType.Q4_0, (2, 3, 64))
    assert out.shape == (2, 3, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(-1), formats.Q4_0.dequantize(data))


def test_dequantize_tensor_rejects_wrong_byte_count_with_message():
    with pytest.raises(FormatError) as excinfo:
        dequantize(np.zeros(100, np.uint8), GGMLType.Q8_0, (3, 32))
    assert str(excinfo.value) == (
        "Q8_0 tensor of shape (3, 32) needs 102 bytes, but 100 were given "
        "(truncated file or wrong type/shape in the header?)"
    )


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=_ids)
def test_dequantize_rows_equals_slicing_full_dequantize(fmt):
    n_rows, n_per_row = 9, 512
    data = _random_blocks(fmt, n_rows * n_per_row // fmt.block_size, np.random.default_rng(5))
    full = dequantize(data, fmt.type, (n_rows, n_per_row))
    rows = np.array([7, 0, 7, 3])  # unordered, repeated
    _assert_same_floats(fmt, dequantize_rows(data, fmt.type, n_per_row, rows).reshape(-1), full[rows].reshape(-1))
    _assert_same_floats(fmt, dequantize_rows(data, fmt.type, n_per_row, slice(2, 8, 3)).reshape(-1),
                        full[2:8:3].reshape(-1))
    assert dequantize_rows(data, fmt.type, n_per_row, [4]).shape == (1, n_per_row)


def test_dequantize_rows_rejects_data_that_is_not_whole_rows():
    with pytest.raises(FormatError) as excinfo:
        dequantize_rows(np.zeros(100, np.uint8), GGMLType.Q8_0, 64, slice(None))
    assert str(excinfo.value) == (
        "Q8_0 tensor with rows of 64 weights (68 bytes) cannot be 100 bytes long (truncated file or wrong row length?)"
    )


# --- edgellm's non-linear formats ---

def test_our_formats_use_ids_and_sizes_no_ggml_type_has():
    ggml_ids = {int(t) for t in GGMLQuantizationType}
    sizes = {name: (get_format(GGMLType[name]).block_size, get_format(GGMLType[name]).type_size) for name in OURS}
    assert sizes == {"Q4_NL": (32, 17), "Q3_NL": (32, 13), "Q2_NL": (32, 9)}
    assert not ggml_ids & {int(GGMLType[name]) for name in OURS}


def test_nl_dequantize_follows_the_documented_layout():
    """Hand-built blocks: w_j = 2^((e - 192) / 8) * grid[code_j], codes packed as each class comment says."""
    codes3 = np.arange(32) % 8
    qs = np.zeros(8, np.uint8)
    for j, c in enumerate(codes3):
        qs[j % 8] |= (c & 3) << (2 * (j // 8))
    qh = np.uint32(sum(int(c >> 2) << j for j, c in enumerate(codes3)))
    block = np.concatenate([[200], np.frombuffer(qh.tobytes(), np.uint8), qs]).astype(np.uint8)
    np.testing.assert_array_equal(formats.Q3_NL.dequantize(block), np.float32(2.0) * formats.GRID_Q3_NL[codes3])
    block2 = np.concatenate([[192], qs]).astype(np.uint8)
    np.testing.assert_array_equal(formats.Q2_NL.dequantize(block2), formats.GRID_Q2_NL[codes3 & 3])
    codes4 = (np.arange(32) * 7) % 16
    packed = (codes4[:16] | (codes4[16:] << 4)).astype(np.uint8)
    block4 = np.concatenate([[0], packed]).astype(np.uint8)
    assert not formats.Q4_NL.dequantize(block4).any(), "e = 0 is an exact zero block"
    block4[0] = 184
    np.testing.assert_array_equal(formats.Q4_NL.dequantize(block4), np.float32(0.5) * formats.GRID_Q4_NL[codes4])
