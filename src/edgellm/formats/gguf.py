"""GGUF read and write.

The reader validates the whole header before anything is used (counts against the file size, string and
array lengths, alignment, dimensions, every tensor inside the data section), then maps the file and hands out
zero-copy NumPy views of the packed tensor bytes. It never dequantizes: that is `formats.quants`' job.
The writer streams a file through a temporary name and an atomic rename.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np
from gguf import GGUFValueType

from ..errors import FormatError, UnsupportedError
from ..files import atomic_output
from .quants import GGMLType, get_format

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4

# Fixed-size scalar value types: struct code and size.
_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
# Smallest encoding of one value of each type, to bound counts by the bytes left.
_MIN_SIZE = {t: struct.calcsize(c) for t, c in _SCALARS.items()} | {
    GGUFValueType.STRING: 8,
    GGUFValueType.ARRAY: 12,
}
# A tensor info is at least: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
_MIN_TENSOR_INFO = 32
# A key/value pair is at least: key length (8) + value type (4) + one byte of value.
_MIN_KV = 13


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor's packed bytes live. `shape` is NumPy order: the last axis is the row (ggml's ne[0])."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def row_length(self) -> int:
        return self.shape[-1]


class _Cursor:
    """Bounds-checked little-endian reads over the header bytes."""

    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(
                f"{what} needs {n} bytes at offset {self.pos}, but the file ends at {len(self.buf)} "
                "(truncated or corrupt file; re-fetch it and check its sha256)"
            )

    def scalar(self, vtype: GGUFValueType, what: str) -> Any:
        code = _SCALARS[vtype]
        size = struct.calcsize(code)
        self.need(size, what)
        (value,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} (declared length {n})")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING}")
        item_type = self.value_type(f"items of {what}")
        count = self.u64(f"length of {what}")
        left = len(self.buf) - self.pos
        if count * _MIN_SIZE[item_type] > left:
            raise self.fail(
                f"{what} declares {count} items of {item_type.name}, more than the {left} bytes left in the file "
                "(corrupt header)"
            )
        if item_type in _NUMPY_SCALARS:
            dtype = np.dtype(_NUMPY_SCALARS[item_type])
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            return arr
        return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(count)]


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    `metadata` maps keys to Python values (numeric arrays as NumPy arrays, string arrays as lists);
    `metadata_types` keeps each key's GGUF type so a rewritten file keeps the types llama.cpp checks.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise FormatError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{self.path}: is a directory, expected a .gguf file") from None
        self.file_size = os.fstat(self._file.fileno()).st_size
        if self.file_size == 0:
            self._file.close()
            raise FormatError(f"{self.path}: file is empty, expected a GGUF model")
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing -------------------------------------------------------------------------------------
    def _parse(self) -> None:
        cur = _Cursor(memoryview(self._mmap), str(self.path))
        if self.file_size < 4 or bytes(cur.buf[:4]) != GGUF_MAGIC:
            head = bytes(cur.buf[:4])
            raise FormatError(f"{self.path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise UnsupportedError(
                f"{self.path}: GGUF version {self.version} is not supported; supported: "
                + ", ".join(map(str, SUPPORTED_VERSIONS))
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key count")
        if n_tensors * _MIN_TENSOR_INFO + n_kv * _MIN_KV > self.file_size:
            raise FormatError(
                f"{self.path}: header declares {n_tensors} tensors and {n_kv} metadata keys, "
                f"which cannot fit in a {self.file_size}-byte file (corrupt header)"
            )
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise FormatError(f"{self.path}: metadata key '{key}' appears twice")
            vtype = cur.value_type(f"metadata '{key}'")
            item_type = None
            if vtype == GGUFValueType.ARRAY:
                start = cur.pos
                item_type = cur.value_type(f"items of metadata '{key}'")
                cur.pos = start
            self.metadata[key] = cur.value(vtype, f"metadata '{key}'")
            self.metadata_types[key] = (vtype, item_type)

        self.alignment = self._alignment()
        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = _align(cur.pos, self.alignment)
        self.tensors: dict[str, TensorInfo] = {}
        for name, ttype, shape, rel_offset in infos:
            if name in self.tensors:
                raise FormatError(f"{self.path}: tensor '{name}' appears twice")
            self.tensors[name] = self._place(name, ttype, shape, rel_offset)

    def _alignment(self) -> int:
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise FormatError(f"{self.path}: general.alignment is {alignment!r}, expected a power of two")
        return alignment

    def _tensor_info(self, cur: _Cursor, i: int) -> tuple[str, int, tuple[int, ...], int]:
        name = cur.string(f"name of tensor #{i}")
        n_dims = cur.u32(f"n_dims of tensor '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise FormatError(f"{self.path}: tensor '{name}' has n_dims={n_dims}, expected 1..{MAX_DIMS}")
        ne = [cur.u64(f"dimension {d} of tensor '{name}'") for d in range(n_dims)]
        n_elements = 1
        for dim in ne:
            n_elements *= dim
        if n_elements <= 0 or n_elements >= 2**62:
            raise FormatError(f"{self.path}: tensor '{name}' has impossible dimensions {ne}")
        ttype = cur.u32(f"type of tensor '{name}'")
        rel_offset = cur.u64(f"offset of tensor '{name}'")
        return name, ttype, tuple(reversed(ne)), rel_offset

    def _place(self, name: str, ttype: int, shape: tuple[int, ...], rel_offset: int) -> TensorInfo:
        try:
            fmt = get_format(ttype)
        except UnsupportedError as e:
            raise UnsupportedError(f"{self.path}: tensor '{name}': {e}") from None
        if shape[-1] % fmt.block_size:
            raise FormatError(
                f"{self.path}: tensor '{name}' rows have {shape[-1]} weights, "
                f"not a multiple of {fmt.name}'s block size {fmt.block_size}"
            )
        if rel_offset % self.alignment:
            raise FormatError(
                f"{self.path}: tensor '{name}' starts at data offset {rel_offset}, "
                f"not a multiple of the alignment {self.alignment}"
            )
        n_rows = int(np.prod(shape[:-1], dtype=np.int64))
        n_bytes = n_rows * fmt.row_bytes(shape[-1])
        start = self.data_offset + rel_offset
        if start + n_bytes > self.file_size:
            raise FormatError(
                f"{self.path}: tensor '{name}' needs bytes {start}..{start + n_bytes}, but the file ends at "
                f"{self.file_size} (truncated download? re-fetch it and check its sha256)"
            )
        return TensorInfo(name, GGMLType(ttype), shape, start, n_bytes)

    # -- access --------------------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """Zero-copy uint8 view of a tensor's packed bytes, shape (rows..., row_bytes)."""
        info = self.tensors[name]
        fmt = get_format(info.type)
        data = np.frombuffer(self._mmap, dtype=np.uint8, count=info.n_bytes, offset=info.offset)
        return data.reshape(*info.shape[:-1], fmt.row_bytes(info.shape[-1]))

    def close(self) -> None:
        mm = getattr(self, "_mmap", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views still alive: the mapping goes when they do
        self._file.close()

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise FormatError(f"{self.path}: metadata 'general.architecture' is missing")
        return arch


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)


# -- writing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorData:
    """A tensor to write: `data` holds the packed bytes (uint8) or float values for F32/F16, or is a function
    that returns them when the writer reaches this tensor (so a whole model is never held in memory)."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]  # NumPy order, last axis is the row
    data: np.ndarray | Callable[[], np.ndarray]

    @property
    def n_bytes(self) -> int:
        n_rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return n_rows * get_format(self.type).row_bytes(self.shape[-1])


def _infer_type(value: Any) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, (int, np.integer)):
        if value < 0:
            return GGUFValueType.INT32 if value >= -(2**31) else GGUFValueType.INT64
        return GGUFValueType.UINT32 if value < 2**32 else GGUFValueType.UINT64
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def _array_item_type(value: Any) -> GGUFValueType:
    if isinstance(value, np.ndarray):
        for vtype, code in _NUMPY_SCALARS.items():
            if np.dtype(code) == value.dtype.newbyteorder("<"):
                return vtype
        if value.dtype == np.bool_:
            return GGUFValueType.BOOL
        raise TypeError(f"cannot store a {value.dtype} array in GGUF metadata")
    if len(value) == 0:
        return GGUFValueType.UINT32
    types = {_infer_type(v) for v in value}
    if types <= {GGUFValueType.UINT32, GGUFValueType.INT32}:
        return GGUFValueType.INT32
    if len(types) != 1:
        raise TypeError(f"GGUF arrays hold one type; got {sorted(t.name for t in types)}")
    return types.pop()


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(value: Any, vtype: GGUFValueType, item_type: GGUFValueType | None = None) -> bytes:
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype], value)
    if vtype == GGUFValueType.STRING:
        return _pack_string(value)
    item_type = item_type or _array_item_type(value)
    head = struct.pack("<IQ", item_type, len(value))
    if item_type in _NUMPY_SCALARS:
        return head + np.asarray(value, dtype=_NUMPY_SCALARS[item_type]).tobytes()
    return head + b"".join(_pack_value(v, item_type) for v in value)


def _tensor_bytes(t: TensorData) -> bytes | memoryview:
    fmt = get_format(t.type)
    data = np.asarray(t.data() if callable(t.data) else t.data)
    if data.dtype != np.uint8:
        if t.type not in (GGMLType.F32, GGMLType.F16):
            raise TypeError(f"tensor '{t.name}': pass packed uint8 bytes for type {fmt.name}")
        dtype = "<f4" if t.type == GGMLType.F32 else "<f2"
        data = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
    if data.size != t.n_bytes:
        raise FormatError(f"tensor '{t.name}': {data.size} bytes given, {fmt.name} {t.shape} needs {t.n_bytes}")
    return np.ascontiguousarray(data).data.cast("B")


def write_gguf(
    path: str | os.PathLike,
    metadata: Mapping[str, Any],
    tensors: Iterable[TensorData],
    *,
    metadata_types: Mapping[str, tuple[GGUFValueType, GGUFValueType | None]] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    overwrite: bool = False,
) -> Path:
    """Write a GGUF v3 file through a temporary file and an atomic rename, streaming: the header is written
    first from the tensors' names, types and shapes, then each tensor's bytes in turn (a `data` function is
    called only then), so memory holds one tensor at a time.

    Metadata types come from `metadata_types` (as `GGUFFile.metadata_types` gives them) or are inferred.
    An existing file is only replaced with `overwrite=True`.
    """
    path = Path(path)
    if path.exists() and not overwrite:  # before any work (atomic_output checks again)
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    tensors = list(tensors)
    types = dict(metadata_types or {})
    meta = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT:
        meta["general.alignment"] = alignment
        types["general.alignment"] = (GGUFValueType.UINT32, None)

    header = bytearray(GGUF_MAGIC)
    header += struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        vtype, item_type = types.get(key, (None, None))
        vtype = vtype or _infer_type(value)
        header += _pack_string(key) + struct.pack("<I", vtype) + _pack_value(value, vtype, item_type)
    offset = 0
    offsets = []
    for t in tensors:
        header += _pack_string(t.name) + struct.pack("<I", len(t.shape))
        header += struct.pack(f"<{len(t.shape)}Q", *reversed(t.shape))
        header += struct.pack("<IQ", t.type, offset)
        offsets.append(offset)
        offset = _align(offset + t.n_bytes, alignment)

    with atomic_output(path, overwrite=overwrite) as f:
        _write_body(f, bytes(header), zip(offsets, tensors), alignment)
    return path


def _write_body(f: BinaryIO, header: bytes, placed: Iterable[tuple[int, TensorData]], alignment: int) -> None:
    f.write(header)
    data_start = _align(len(header), alignment)
    f.write(b"\0" * (data_start - len(header)))
    for offset, t in placed:
        f.write(b"\0" * (data_start + offset - f.tell()))
        f.write(_tensor_bytes(t))


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
