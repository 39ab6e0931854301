"""The column layout for activation sparsity: a matrix stored input channel by input channel.

A decode step multiplies W (n_out x n_in) by one activation vector. Row-major blocks (ggml's layout) mix the
weights of 32 inputs in every block, so a zero input saves no read. Here the weights one input multiplies are
contiguous (its channel row), so an inactive input costs nothing, and a group's scales are read only when one
of its inputs is active:

    w[r, c] = d[g, r] * q[c, r] + m[g, r],   g = c // group

The repack keeps the source format's integers and scales, so the weights are the file's own: exactly for
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the float formats (BF16 widened to F32); the K-quants' and NL formats'
per-sub-block scales (a product of two stored numbers) are rounded to fp16, a relative 2^-11, far below their
quantization step. The container of q follows the source's bits: U4 (Q4_0, Q4_1, Q4_K, Q2_K, Q3_K), U5
(Q5_0, Q5_1, Q5_K), I8 (Q8_0, Q6_K, NL formats), F16, F32. Byte order of a channel row: kernels/c/edgellm.h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from .quants import FORMATS, NL_SCALE, GGMLType, NLFormat

U4, U5, I8, F16, F32 = range(5)  # el_col_kind


def stride(kind: int, n_rows: int) -> int:
    """Bytes of one channel row."""
    return {U4: n_rows // 2, U5: n_rows // 2 + n_rows // 8, I8: n_rows, F16: 2 * n_rows, F32: 4 * n_rows}[kind]


@dataclass
class ColumnMatrix:
    kind: int
    group: int
    n_rows: int
    n_cols: int
    q: np.ndarray  # (n_cols, stride) uint8: channel rows
    d: np.ndarray | None  # (n_cols // group, n_rows) float16
    m: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + sum(a.nbytes for a in (self.d, self.m) if a is not None)

    def values(self) -> np.ndarray:
        """q as numbers, (n_cols, n_rows), in output order."""
        rows, n_tiles = self.q, self.n_rows // TILE
        if self.kind in (U4, U5):
            nib = rows[:, : self.n_rows // 2].reshape(self.n_cols, n_tiles, 32)
            v = np.concatenate([nib & 15, nib >> 4], axis=2).astype(np.int32)  # dot order
            if self.kind == U5:
                bits = np.unpackbits(rows[:, self.n_rows // 2 :], axis=1, bitorder="little")
                v += 16 * bits.reshape(self.n_cols, n_tiles, TILE).astype(np.int32)
            return _from_dot_order(v).astype(np.float32)
        if self.kind == I8:
            return _from_dot_order(rows.view(np.int8).reshape(self.n_cols, n_tiles, TILE)).astype(np.float32)
        return rows.view(np.float16 if self.kind == F16 else np.float32).astype(np.float32)

    def dense(self) -> np.ndarray:
        """W as float32 (n_rows, n_cols): what the kernels multiply."""
        v = self.values()
        if self.d is None:
            return np.ascontiguousarray(v.T)
        g = np.arange(self.n_cols) // self.group
        w = self.d.astype(np.float32)[g] * v
        if self.m is not None:
            w += self.m.astype(np.float32)[g]
        return np.ascontiguousarray(w.T)

    def active(self, x: np.ndarray, threshold: float) -> np.ndarray:
        """Inputs whose weights are read: |x| >= threshold and x != 0 (NaN counts as active, as in a dense product)."""
        return ~(np.abs(x) < threshold) & (x != 0)

    def bytes_read(self, active: np.ndarray) -> int:
        """Bytes a product with these active inputs reads: their channel rows and their groups' scales."""
        groups = active.reshape(-1, self.group).any(axis=1).sum()
        scales = 0 if self.d is None else self.n_rows * 2 * (1 + (self.m is not None))
        return int(active.sum()) * self.q.shape[1] + int(groups) * scales

    def matvec(self, x: np.ndarray, threshold: float) -> np.ndarray:
        """NumPy twin of el_sparse_matvec: per group, the active inputs rounded to int8 with the group's own
        scale (max |x| / 127, as a dense kernel's activation block), their integer dot with q, then scaled."""
        x = np.asarray(x, dtype=np.float32)
        a = self.active(x, threshold)
        xa = np.where(a, x, np.float32(0))
        v = self.values().astype(np.float64)  # (n_cols, n_rows)
        y = np.zeros(self.n_rows, dtype=np.float64)
        for g in range(self.n_cols // self.group):
            cols = slice(g * self.group, (g + 1) * self.group)
            if not a[cols].any():
                continue
            if self.d is None:
                y += xa[cols].astype(np.float64) @ v[cols]
                continue
            amax = np.float32(np.abs(xa[cols]).max())
            s = np.float32(amax / np.float32(127))
            xq = np.trunc(xa[cols] * (np.float32(1) / s if s > 0 else np.float32(0)) + np.copysign(0.5, xa[cols]))
            y += self.d[g].astype(np.float64) * (float(s) * (xq.astype(np.float64) @ v[cols]))
            if self.m is not None:  # the rounded inputs' sum, as the dense kernels' Q8_1 sum
                y += self.m[g].astype(np.float64) * float(s) * float(xq.sum())
        return y.astype(np.float32)

    def as_c(self) -> tuple:
        """The tuple the C binding takes (the arrays must outlive its use)."""
        address = lambda a: 0 if a is None else a.ctypes.data  # noqa: E731
        return (self.kind, self.group, self.n_rows, self.n_cols, self.q.ctypes.data, self.q.nbytes,
                address(self.d), address(self.m))  # fmt: skip


def pack(q: np.ndarray, d: np.ndarray | None, m: np.ndarray | None, kind: int, group: int) -> ColumnMatrix:
    """Column matrix from integers q (n_rows, n_cols) and scales d, m (n_rows, n_cols // group) float32."""
    n_rows, n_cols = q.shape
    if n_rows % TILE or n_cols % group:
        raise UnsupportedError(f"column layout needs outputs in multiples of {TILE} and inputs of {group} "
                               f"(got {n_rows}x{n_cols})")  # fmt: skip
    qt = np.ascontiguousarray(q.T)  # (n_cols, n_rows)
    if kind in (U4, U5):
        u = _to_dot_order(qt.astype(np.uint8).reshape(n_cols, n_rows // TILE, TILE))
        rows = ((u[..., :32] & 15) | ((u[..., 32:] & 15) << 4)).reshape(n_cols, n_rows // 2)
        if kind == U5:
            high = np.packbits((u >> 4) & 1, axis=2, bitorder="little").reshape(n_cols, n_rows // 8)
            rows = np.concatenate([rows, high], axis=1)
    elif kind == I8:
        rows = _to_dot_order(qt.astype(np.int8).reshape(n_cols, n_rows // TILE, TILE)).reshape(n_cols, n_rows).view(np.uint8)
    else:
        rows = qt.astype(np.float16 if kind == F16 else np.float32).view(np.uint8)
    as16 = lambda s: None if s is None else np.ascontiguousarray(s.T.astype(np.float16))  # noqa: E731
    return ColumnMatrix(kind, group, n_rows, n_cols, np.ascontiguousarray(rows), as16(d), as16(m))


# Dot order of a 64-output tile (kernels/c/edgellm.h): position p = 16k + 4a + e holds output 16a + 4k + e.
TILE = 64
_P = np.arange(TILE)
ROW_OF = (_P // 4 % 4) * 16 + _P // 16 * 4 + _P % 4


def _to_dot_order(tiles: np.ndarray) -> np.ndarray:
    return tiles[..., ROW_OF]


def _from_dot_order(tiles: np.ndarray) -> np.ndarray:
    out = np.empty_like(tiles)
    out[..., ROW_OF] = tiles
    return out.reshape(tiles.shape[0], -1)


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)[..., 0]


def _blocks(raw: np.ndarray, n_rows: int, type_size: int) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(n_rows, -1, type_size)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """(..., 16) bytes -> (..., 32): weight j low nibble of byte j, j + 16 high (Q4_0 order)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _bits32(qh: np.ndarray) -> np.ndarray:
    """(..., 4) bytes -> (..., 32) bits, bit j of the little-endian u32."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte scales -> (..., 8) 6-bit scales and mins (ggml get_scale_min_k4)."""
    s = scales.astype(np.uint8)
    sc = np.empty(s.shape[:-1] + (8,), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _parts(type_id: int, raw: np.ndarray, n_rows: int, n_cols: int):
    """(q (n_rows, n_cols) ints, d, m (n_rows, n_cols // group) float32 or None, kind, group) of a packed matrix."""
    t = GGMLType(type_id)
    if t in (GGMLType.F16, GGMLType.F32, GGMLType.BF16):
        w = FORMATS[t].dequantize(raw).reshape(n_rows, n_cols)
        return w, None, None, F16 if t == GGMLType.F16 else F32, 32
    fmt = FORMATS[t]
    b = _blocks(raw, n_rows, fmt.type_size)
    nb = b.shape[1]
    if t == GGMLType.Q8_0:
        return b[..., 2:].view(np.int8).reshape(n_rows, n_cols), _f16(b[..., 0:2]), None, I8, 32
    if t in (GGMLType.Q4_0, GGMLType.Q4_1):
        d = _f16(b[..., 0:2])
        m = -8 * d if t == GGMLType.Q4_0 else _f16(b[..., 2:4])
        q = _nibbles32(b[..., 2:18] if t == GGMLType.Q4_0 else b[..., 4:20])
        return q.reshape(n_rows, n_cols), d, m, U4, 32
    if t in (GGMLType.Q5_0, GGMLType.Q5_1):
        d = _f16(b[..., 0:2])
        o = 2 if t == GGMLType.Q5_0 else 4
        m = -16 * d if t == GGMLType.Q5_0 else _f16(b[..., 2:4])
        q = _nibbles32(b[..., o + 4 : o + 20]) | (_bits32(b[..., o : o + 4]) << 4)
        return q.reshape(n_rows, n_cols), d, m, U5, 32
    if t in (GGMLType.Q4_K, GGMLType.Q5_K):
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = _k_scale_min(b[..., 4:16])
        qs = b[..., 16:144] if t == GGMLType.Q4_K else b[..., 48:176]
        # weight 64h + 32k + l is nibble k of qs[32h + l]
        q = np.stack([qs.reshape(n_rows, nb, 4, 32) & 15, qs.reshape(n_rows, nb, 4, 32) >> 4], axis=3)
        q = q.reshape(n_rows, nb, 256)
        if t == GGMLType.Q5_K:  # weight 32b + l has bit b of qh[l]
            qh = b[..., 16:48]
            q = q | (np.unpackbits(qh[..., None, :], axis=-2, count=8, bitorder="little").reshape(n_rows, nb, 256) << 4)
        return (q.reshape(n_rows, n_cols), (d[..., None] * sc).reshape(n_rows, -1),
                (-dmin[..., None] * mn).reshape(n_rows, -1), U4 if t == GGMLType.Q4_K else U5, 32)  # fmt: skip
    if t == GGMLType.Q6_K:
        ql, qh, sc, d = b[..., 0:128], b[..., 128:192], b[..., 192:208].view(np.int8), _f16(b[..., 208:210])
        low = np.stack([ql.reshape(n_rows, nb, 2, 64) & 15, ql.reshape(n_rows, nb, 2, 64) >> 4], axis=3)  # 128h+64k+m
        high = np.stack([(qh.reshape(n_rows, nb, 2, 32) >> (2 * j)) & 3 for j in range(4)], axis=3)  # 128h+32j+l
        q = low.reshape(n_rows, nb, 256).astype(np.int16) | (high.reshape(n_rows, nb, 256).astype(np.int16) << 4)
        return ((q - 32).reshape(n_rows, n_cols), (d[..., None] * sc.astype(np.float32)).reshape(n_rows, -1), None,
                I8, 16)  # fmt: skip
    if t in (GGMLType.Q2_K, GGMLType.Q3_K):
        qs = b[..., 16:80] if t == GGMLType.Q2_K else b[..., 32:96]
        q = np.stack([(qs.reshape(n_rows, nb, 2, 32) >> (2 * j)) & 3 for j in range(4)], axis=3).reshape(n_rows, nb, 256)
        if t == GGMLType.Q2_K:
            s, d, dmin = b[..., 0:16], _f16(b[..., 80:82]), _f16(b[..., 82:84])
            return (q.reshape(n_rows, n_cols), (d[..., None] * (s & 15)).reshape(n_rows, -1),
                    (-dmin[..., None] * (s >> 4)).reshape(n_rows, -1), U4, 16)  # fmt: skip
        hm = b[..., 0:32]  # weight 32b + l: bit b of hmask[l]
        q = q | (np.unpackbits(hm[..., None, :], axis=-2, count=8, bitorder="little").reshape(n_rows, nb, 256) << 2)
        raw_sc, d = b[..., 96:108], _f16(b[..., 108:110])
        s = np.arange(16)
        scale = ((raw_sc[..., s % 8] >> (4 * (s // 8))) & 15) | (((raw_sc[..., 8 + s % 4] >> (2 * (s // 4))) & 3) << 4)
        d_eff = (d[..., None] * (scale.astype(np.float32) - 32)).reshape(n_rows, -1)
        return q.reshape(n_rows, n_cols), d_eff, -4 * d_eff, U4, 16
    if isinstance(fmt, NLFormat):
        flat = b.reshape(-1, fmt.type_size)
        q = fmt.grid[fmt.codes(flat[:, 1:])].astype(np.int8).reshape(n_rows, n_cols)
        return q, NL_SCALE[flat[:, 0]].reshape(n_rows, nb), None, I8, 32
    raise UnsupportedError(f"no column layout for {fmt.name}")


def from_packed(type_id: int, raw: np.ndarray, n_rows: int, n_cols: int) -> ColumnMatrix:
    """The column layout of a packed ggml/edgellm matrix (rows of blocks, as in a GGUF file)."""
    q, d, m, kind, group = _parts(int(type_id), np.asarray(raw).view(np.uint8), n_rows, n_cols)
    return pack(q, d, m, kind, group)


def supported(type_id: int, n_rows: int, n_cols: int) -> bool:
    """Whether from_packed handles this matrix."""
    try:
        t = GGMLType(int(type_id))
    except ValueError:
        return False
    group = 16 if t in (GGMLType.Q6_K, GGMLType.Q2_K, GGMLType.Q3_K) else 32
    return t in KNOWN and n_rows % TILE == 0 and n_cols % group == 0


KNOWN = {GGMLType.F16, GGMLType.F32, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
         GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_NL, GGMLType.Q3_NL, GGMLType.Q2_NL}  # fmt: skip
