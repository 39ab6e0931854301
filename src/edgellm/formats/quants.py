"""Weight-format registry: one entry per GGML block format, with its byte layout and NumPy reference codecs.

The NumPy codecs are the spec the C kernels are tested against: for the standard ggml types they are
gguf-py's `gguf.quants` (bit-exact with ggml-quants.c); edgellm's own NL formats are coded here. They are
vectorised over blocks but make no attempt to be fast, do no matmuls and no k-quant quantization (that needs
a search over scales, not a reference round: the C quantizers do it).
"""

from __future__ import annotations

from enum import IntEnum
from math import prod

import gguf
import numpy as np

from edgellm.errors import FormatError, UnsupportedError

QK_K = 256  # weights per k-quant super-block (ggml's QK_K)


class GGMLType(IntEnum):
    """ggml tensor type ids of the formats we support; the values are ggml's and never change."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30
    Q4_NL = 100  # edgellm's own formats (not in ggml): see Q4_NL below
    Q3_NL = 101
    Q2_NL = 102


class Format:
    """One GGML weight format: block geometry plus reference quantize/dequantize.

    Subclasses set `type`, `block_size`, `type_size` and implement `_dequantize_blocks` (and
    `_quantize_blocks` where a reference quantizer exists); `@_register` turns each into its registry entry.
    """

    __slots__ = ()
    type: GGMLType
    block_size: int  # weights per block
    type_size: int  # bytes per block

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def can_quantize(self) -> bool:
        """Whether this format has a reference quantizer here."""
        return type(self)._quantize_blocks is not Format._quantize_blocks

    def row_bytes(self, n_per_row: int) -> int:
        """Bytes taken by a row of `n_per_row` weights.

        Raises:
            FormatError: the row is not a whole number of blocks (ggml cannot store it).
        """
        if n_per_row % self.block_size != 0:
            raise FormatError(
                f"{self.name}: a row of {n_per_row} weights is not a multiple of the block size "
                f"{self.block_size}; pad the row or pick a format with a smaller block"
            )
        return n_per_row // self.block_size * self.type_size

    def dequantize(self, blocks: np.ndarray) -> np.ndarray:
        """Decode whole blocks to a flat float32 array of n_blocks * block_size weights.

        `blocks` is raw block bytes, usually uint8 of shape (n_blocks, type_size); any contiguous array is
        reinterpreted as bytes, because gguf's reader hands out F32/F16 tensors as float arrays.
        """
        raw = _as_bytes(blocks)
        if raw.size % self.type_size != 0:
            raise FormatError(
                f"{self.name}: {raw.size} bytes is not a whole number of {self.type_size}-byte blocks "
                f"(truncated tensor data?)"
            )
        out = self._dequantize_blocks(raw.reshape(-1, self.type_size))  # (n_blocks, block_size)
        return out.reshape(-1)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Encode float weights (size a multiple of block_size) to uint8 blocks of shape (n_blocks, type_size).

        Raises:
            UnsupportedError: this format has no reference quantizer here.
            FormatError: the number of weights is not a multiple of the block size.
        """
        if not self.can_quantize:
            quantizable = ", ".join(f.name for f in FORMATS.values() if f.can_quantize)
            raise UnsupportedError(
                f"{self.name} has no reference quantizer in edgellm.formats.quants; "
                f"formats with one: {quantizable}"
            )
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if x.size % self.block_size != 0:
            raise FormatError(
                f"{self.name}: cannot quantize {x.size} weights, need a multiple of the block size {self.block_size}"
            )
        out = self._quantize_blocks(x.reshape(-1, self.block_size))  # (n_blocks, type_size)
        return out.astype(np.uint8, copy=False)

    def _dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Format {self.name} block_size={self.block_size} type_size={self.type_size}>"


FORMATS: dict[GGMLType, Format] = {}


def _register(cls: type[Format]) -> Format:
    """Class decorator: add one instance to FORMATS and bind the class's name to it (`Q4_K.dequantize(...)`)."""
    fmt = cls()
    if fmt.type in FORMATS:
        raise RuntimeError(f"format {fmt.name} registered twice")
    FORMATS[fmt.type] = fmt
    return fmt


# --- byte helpers. GGUF is little-endian, so multi-byte fields are read with explicit '<' dtypes. ---

def _as_bytes(data: np.ndarray) -> np.ndarray:
    """Flat uint8 view of `data` (no copy when it is contiguous, e.g. a memory map)."""
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def _unpack(packed: np.ndarray, width: int) -> np.ndarray:
    """Split each byte into 8 // width fields of `width` bits, lowest bits first.

    (..., n_bytes) -> (..., 8 // width, n_bytes): the new axis sits before the byte axis, which is how ggml
    lays out its quants (field k of byte l belongs to weight k * n_bytes + l).
    """
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]  # (8 // width, 1)
    return (packed[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) values < 16 -> (n_blocks, 16) bytes: weight j in the low nibble, weight j + 16 in the high."""
    return (q[:, :16] & np.uint8(0x0F)) | (q[:, 16:] << np.uint8(4))


class _GGUFDecoded(Format):
    """A standard ggml type decoded by gguf-py's reference dequantizer."""

    def _dequantize_blocks(self, blocks):
        out = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(self.type))
        return out.astype(np.float32, copy=False).reshape(len(blocks), self.block_size)


class _GGUFQuantized(_GGUFDecoded):
    """A standard ggml type gguf-py also encodes (ggml's quantize_row_*_ref, bit for bit)."""

    def _quantize_blocks(self, x):
        out = gguf.quants.quantize(np.ascontiguousarray(x), gguf.GGMLQuantizationType(self.type))
        return np.ascontiguousarray(out).view(np.uint8).reshape(len(x), self.type_size)


# --- float formats: a "block" is one weight ---

@_register
class F32(Format):
    # 1 weight in 4 bytes: little-endian IEEE binary32.
    type = GGMLType.F32
    block_size = 1
    type_size = 4

    def _dequantize_blocks(self, blocks):
        return blocks.view("<f4").astype(np.float32)

    def _quantize_blocks(self, x):
        return x.astype("<f4").view(np.uint8)


@_register
class F16(Format):
    # 1 weight in 2 bytes: little-endian IEEE binary16.
    type = GGMLType.F16
    block_size = 1
    type_size = 2

    def _dequantize_blocks(self, blocks):
        return blocks.view("<f2").astype(np.float32)

    def _quantize_blocks(self, x):
        return x.astype("<f2").view(np.uint8)


@_register
class BF16(Format):
    # 1 weight in 2 bytes: the high 16 bits of a binary32.
    type = GGMLType.BF16
    block_size = 1
    type_size = 2

    def _dequantize_blocks(self, blocks):
        return (blocks.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)

    def _quantize_blocks(self, x):
        # ggml_compute_fp32_to_bf16 (ggml-impl.h): NaN keeps its high bits and is forced quiet, everything
        # else rounds to nearest even. uint64 so that the rounding add cannot wrap.
        u = x.view(np.uint32).astype(np.uint64)
        is_nan = (u & 0x7FFFFFFF) > 0x7F800000
        rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        return np.where(is_nan, (u >> 16) | 64, rounded).astype("<u2").view(np.uint8)


# --- 32-weight blocks and k-quants: decoded (and, where it has one, encoded) by gguf-py's NumPy reference,
# which tests/quant/test_formats.py checks against hand-decoded blocks and the C kernels. Layouts as ggml. ---

@_register
class Q8_0(_GGUFQuantized):
    # Q8_0: 32 weights in 34 bytes, w = d * q
    #   byte 0..1   d       f16
    #   byte 2..33  qs[32]  int8 q of weight j
    type = GGMLType.Q8_0
    block_size = 32
    type_size = 34


@_register
class Q4_0(_GGUFQuantized):
    # Q4_0: 32 weights in 18 bytes, w = d * (q - 8)
    #   byte 0..1   d       f16
    #   byte 2..17  qs[16]  4-bit q: weight j in the low nibble of qs[j], weight j + 16 in the high nibble
    type = GGMLType.Q4_0
    block_size = 32
    type_size = 18


@_register
class Q4_1(_GGUFQuantized):
    # Q4_1: 32 weights in 20 bytes, w = d * q + m
    #   byte 0..1   d       f16
    #   byte 2..3   m       f16 block minimum
    #   byte 4..19  qs[16]  4-bit q, nibble order as Q4_0
    type = GGMLType.Q4_1
    block_size = 32
    type_size = 20


@_register
class Q5_0(_GGUFQuantized):
    # Q5_0: 32 weights in 22 bytes, w = d * (q - 16)
    #   byte 0..1   d       f16
    #   byte 2..5   qh      u32: bit j is bit 4 of weight j
    #   byte 6..21  qs[16]  low 4 bits, nibble order as Q4_0
    type = GGMLType.Q5_0
    block_size = 32
    type_size = 22


@_register
class Q5_1(_GGUFQuantized):
    # Q5_1: 32 weights in 24 bytes, w = d * q + m
    #   byte 0..1   d       f16
    #   byte 2..3   m       f16 block minimum
    #   byte 4..7   qh      u32: bit j is bit 4 of weight j
    #   byte 8..23  qs[16]  low 4 bits, nibble order as Q4_0
    type = GGMLType.Q5_1
    block_size = 32
    type_size = 24


@_register
class Q2_K(_GGUFDecoded):
    # Q2_K: 256 weights in 84 bytes, 16 sub-blocks of 16, w = d * (sc & 0xF) * q - dmin * (sc >> 4)
    #   byte  0..15  scales[16]  sub-block s: scale in the low nibble, min in the high nibble
    #   byte 16..79  qs[64]      2-bit q: weight 128h + 32j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32h + l]
    #   byte 80..81  d           f16 scale of the sub-block scales
    #   byte 82..83  dmin        f16 scale of the sub-block mins
    type = GGMLType.Q2_K
    block_size = QK_K
    type_size = 84


@_register
class Q3_K(_GGUFDecoded):
    # Q3_K: 256 weights in 110 bytes, 16 sub-blocks of 16, w = d * scale * (q - 4), q = low | high << 2
    #   byte   0..31   hmask[32]  bit 2 of q: weight 32b + l is bit b of hmask[l]
    #   byte  32..95   qs[64]     bits 0..1 of q, order as Q2_K
    #   byte  96..107  scales[12] 16 signed 6-bit scales (+32): low 4 bits in nibble s // 8 of byte s % 8,
    #                             high 2 bits at bit 2 * (s // 4) of byte 8 + s % 4
    #   byte 108..109  d          f16
    # "w = d * scale * (low - 4)" when the hmask bit is clear: ggml subtracts 4 only for a 0 bit.
    type = GGMLType.Q3_K
    block_size = QK_K
    type_size = 110


@_register
class Q4_K(_GGUFDecoded):
    # Q4_K: 256 weights in 144 bytes, 8 sub-blocks of 32, w = d * scale * q - dmin * min
    #   byte  0..1    d          f16 scale of the sub-block scales
    #   byte  2..3    dmin       f16 scale of the sub-block mins
    #   byte  4..15   scales[12] 8 6-bit scales + 8 6-bit mins (ggml get_scale_min_k4)
    #   byte 16..143  qs[128]    4-bit q: weight 64h + 32k + l (h < 4, k < 2, l < 32) is nibble k of qs[32h + l]
    type = GGMLType.Q4_K
    block_size = QK_K
    type_size = 144


@_register
class Q5_K(_GGUFDecoded):
    # Q5_K: 256 weights in 176 bytes, 8 sub-blocks of 32, w = d * scale * q - dmin * min
    #   byte  0..1    d          f16
    #   byte  2..3    dmin       f16
    #   byte  4..15   scales[12] as Q4_K
    #   byte 16..47   qh[32]     bit 4 of q: weight 32b + l is bit b of qh[l]
    #   byte 48..175  qs[128]    bits 0..3 of q, order as Q4_K
    type = GGMLType.Q5_K
    block_size = QK_K
    type_size = 176


@_register
class Q6_K(_GGUFDecoded):
    # Q6_K: 256 weights in 210 bytes, 16 sub-blocks of 16, w = d * scale * (q - 32)
    #   byte   0..127  ql[128]    bits 0..3 of q: weight 128h + 64k + m (h, k < 2, m < 64) is nibble k of ql[64h + m]
    #   byte 128..191  qh[64]     bits 4..5 of q: weight 128h + 32j + l (j < 4, l < 32) is bits 2j..2j+1 of qh[32h + l]
    #   byte 192..207  scales[16] int8 scale of sub-block s (weights 16s..16s+15)
    #   byte 208..209  d          f16
    type = GGMLType.Q6_K
    block_size = QK_K
    type_size = 210


# --- edgellm's non-linear low-bit formats: 32-weight blocks, so they fit rows k-quants cannot (576, 640, 896) ---

# Levels scaled so the outermost is 127 (kernels/c/generic/nlquants.c). They are the fixed point of Lloyd
# iterations that minimise importance-weighted squared error (importance x measured sensitivity, from the
# calibration text) over blocks of SmolLM2's weights, each block at its best scale; started from a unit
# Gaussian's Lloyd-Max levels (Q3: -127 -79 -45 -14 ...), the inner levels moved toward zero: squared
# error -9 % (Q4), -16 % (Q3), -30 % (Q2) on that measure.
GRID_Q4_NL = np.array([-127, -101, -77, -59, -44, -29, -16, -4, 4, 16, 29, 44, 59, 77, 101, 127], dtype=np.float32)
GRID_Q3_NL = np.array([-127, -72, -35, -9, 9, 35, 72, 127], dtype=np.float32)
GRID_Q2_NL = np.array([-127, -23, 23, 127], dtype=np.float32)
# One-byte logarithmic block scale: e -> 2^((e - 192) / 8), e = 0 -> 0
NL_SCALE = np.array([0.0] + [2.0 ** ((e - 192) / 8) for e in range(1, 256)], dtype=np.float32)


def _pack_low_codes(codes: np.ndarray) -> np.ndarray:
    """(n, 32) codes < 4 -> (n, 8) bytes, the inverse of _nl_low_codes."""
    c = codes.reshape(-1, 4, 8).astype(np.uint8)
    return c[:, 0] | (c[:, 1] << np.uint8(2)) | (c[:, 2] << np.uint8(4)) | (c[:, 3] << np.uint8(6))


def _nl_low_codes(qs: np.ndarray) -> np.ndarray:
    """(n, 8) bytes -> (n, 32) 2-bit codes: code j is bits 2 * (j // 8) of byte j % 8."""
    return _unpack(qs, 2).reshape(-1, 32)


class NLFormat(Format):
    """A block of 32 weights is NL_SCALE[e] * grid[code]: byte 0 is e, the codes follow."""

    block_size = 32
    grid: np.ndarray

    def _dequantize_blocks(self, blocks):
        return NL_SCALE[blocks[:, :1]] * self.grid[self.codes(blocks[:, 1:])]

    def codes(self, packed: np.ndarray) -> np.ndarray:
        """(n, type_size - 1) code bytes -> (n, 32) codes."""
        raise NotImplementedError

    def pack_codes(self, codes: np.ndarray) -> np.ndarray:
        """(n, 32) codes -> (n, type_size - 1) bytes."""
        raise NotImplementedError

    def pack(self, exponents: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Blocks from their scale bytes (n,) and codes (n, 32)."""
        return np.concatenate([exponents.reshape(-1, 1).astype(np.uint8), self.pack_codes(codes)], axis=1)

    def nearest_codes(self, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Codes of the grid points nearest to x / scale (any shapes that broadcast; scale 0 -> code 0)."""
        mid = (self.grid[1:] + self.grid[:-1]) / 2
        safe = np.where(scale > 0, scale, 1.0)
        return np.searchsorted(mid, x / safe).astype(np.uint8)


@_register
class Q4_NL(NLFormat):
    # Q4_NL (edgellm): 32 weights in 17 bytes (4.25 bits), w = NL_SCALE[e] * GRID_Q4_NL[code]
    #   byte 0      e       log scale
    #   byte 1..16  qs[16]  4-bit codes, nibble order as Q4_0
    type = GGMLType.Q4_NL
    type_size = 17
    grid = GRID_Q4_NL

    def codes(self, packed):
        return _unpack(packed, 4).reshape(-1, 32)

    def pack_codes(self, codes):
        return _pack_nibbles(codes.astype(np.uint8))


@_register
class Q3_NL(NLFormat):
    # Q3_NL (edgellm): 32 weights in 13 bytes (3.25 bits), w = NL_SCALE[e] * GRID_Q3_NL[code]
    #   byte 0      e       log scale
    #   byte 1..4   qh      u32: bit j is bit 2 of code j
    #   byte 5..12  qs[8]   bits 0..1 of code j at bits 2 * (j // 8) of qs[j % 8]
    type = GGMLType.Q3_NL
    type_size = 13
    grid = GRID_Q3_NL

    def codes(self, packed):
        qh = packed[:, 0:4].copy().view("<u4")  # (n, 1)
        high = ((qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)
        return _nl_low_codes(packed[:, 4:12]) | (high << np.uint8(2))

    def pack_codes(self, codes):
        high = (codes.astype(np.uint32) >> np.uint32(2)) << np.arange(32, dtype=np.uint32)
        qh = np.bitwise_or.reduce(high, axis=1).astype("<u4").reshape(-1, 1).view(np.uint8)
        return np.concatenate([qh, _pack_low_codes(codes & np.uint8(3))], axis=1)


@_register
class Q2_NL(NLFormat):
    # Q2_NL (edgellm): 32 weights in 9 bytes (2.25 bits), w = NL_SCALE[e] * GRID_Q2_NL[code]
    #   byte 0      e       log scale
    #   byte 1..8   qs[8]   2-bit codes, order as Q3_NL
    type = GGMLType.Q2_NL
    type_size = 9
    grid = GRID_Q2_NL

    def codes(self, packed):
        return _nl_low_codes(packed)

    def pack_codes(self, codes):
        return _pack_low_codes(codes)


# --- lookups over the registry ---

def get_format(type_id: int) -> Format:
    """The registry entry for a ggml type id (an int, GGMLType or gguf.GGMLQuantizationType).

    Raises:
        UnsupportedError: the type is not one we handle; the message names it and lists the supported ones.
    """
    fmt = FORMATS.get(type_id)  # IntEnum members hash like their int, so any of the three spellings works
    if fmt is not None:
        return fmt
    try:
        ggml_name = gguf.GGMLQuantizationType(int(type_id)).name
    except ValueError:
        ggml_name = "unknown to ggml"
    supported = ", ".join(f.name for f in FORMATS.values())
    raise UnsupportedError(
        f"tensor type {int(type_id)} ({ggml_name}) is not supported; supported: {supported} "
        f"(re-quantize the model to one of these)"
    )


def dequantize(data: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a whole tensor's raw bytes to float32 of `shape` (numpy order: the last dim is the row).

    Raises:
        FormatError: the row length is not a multiple of the block size, or the byte count does not match.
        UnsupportedError: unknown tensor type.
    """
    fmt = get_format(type_id)
    shape = tuple(int(s) for s in shape)
    n_bytes = fmt.row_bytes(shape[-1]) * prod(shape[:-1])
    raw = _as_bytes(data)
    if raw.size != n_bytes:
        raise FormatError(
            f"{fmt.name} tensor of shape {shape} needs {n_bytes} bytes, but {raw.size} were given "
            f"(truncated file or wrong type/shape in the header?)"
        )
    return fmt.dequantize(raw).reshape(shape)


def dequantize_rows(
    data: np.ndarray, type_id: int, n_per_row: int, rows: np.ndarray | slice
) -> np.ndarray:
    """Decode only the selected rows of a tensor (embedding lookups, chunked matmuls).

    Rows that are not selected are never read, so `data` can be a memory map of a large tensor.

    Args:
        data: the tensor's raw bytes, n_rows * row_bytes of them.
        rows: a slice, or integer row indices (any shape; repeats allowed).
    Returns:
        float32 of shape (n_selected_rows, n_per_row), in the order `rows` gives.
    """
    fmt = get_format(type_id)
    row_bytes = fmt.row_bytes(n_per_row)
    raw = _as_bytes(data)
    if raw.size % row_bytes != 0:
        raise FormatError(
            f"{fmt.name} tensor with rows of {n_per_row} weights ({row_bytes} bytes) cannot be {raw.size} bytes long "
            f"(truncated file or wrong row length?)"
        )
    table = raw.reshape(-1, row_bytes)  # (n_rows, row_bytes), still a view: nothing read yet
    picked = table[rows if isinstance(rows, slice) else np.asarray(rows, dtype=np.intp)]
    return fmt.dequantize(picked).reshape(-1, n_per_row)
