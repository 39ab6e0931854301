"""Quantize a model: plan a type per tensor (a named mix or a bits-per-weight budget), then write the GGUF.

Inputs are dequantized to float32 one tensor at a time, so peak memory is about one float tensor plus the
output being built. The quantizers are the C library's (kernels/c/quantize.c), weighted by an importance
matrix when one is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..formats.gguf import GGUFValueType, TensorData, write_gguf
from ..formats.quants import GGMLType, get_format
from .imatrix import ImportanceMatrix
from .mixes import Mix, choose_types
from .source import Source


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_type: GGMLType
    type: GGMLType  # what is written
    copied: bool  # written as it is in the source (norms and other 1-D tensors)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * get_format(self.type).row_bytes(self.shape[-1])


@dataclass(frozen=True)
class Plan:
    tensors: list[TensorPlan]
    label: str  # the mix name, or "bpw 3.00"
    file_type: int | None

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_elements

    def bits_per_weight_where(self, keep: Callable[[str], bool]) -> float:
        chosen = [t for t in self.tensors if keep(t.name)]
        n = sum(t.n_elements for t in chosen)
        return 8 * sum(t.n_bytes for t in chosen) / n if n else float("nan")

    def with_types(self, types: dict[str, GGMLType]) -> "Plan":
        """This plan with some tensors given another type."""
        tensors = [replace(t, type=types[t.name], copied=False) if t.name in types else t for t in self.tensors]
        return replace(self, tensors=tensors)

    def by_type(self) -> dict[str, tuple[int, int, int]]:
        """type name -> (tensors, weights, bytes)"""
        out: dict[str, list[int]] = {}
        for t in self.tensors:
            row = out.setdefault(t.type.name, [0, 0, 0])
            row[0] += 1
            row[1] += t.n_elements
            row[2] += t.n_bytes
        return {k: tuple(v) for k, v in sorted(out.items(), key=lambda kv: -kv[1][2])}


def plan_mix(source: Source, mix: Mix, has_imatrix: bool = False) -> Plan:
    listing = [(name, shape) for name, shape, _ in source.tensors()]
    types = choose_types(listing, mix, source.n_head, source.n_head_kv, has_imatrix)
    tensors = []
    for name, shape, stype in source.tensors():
        t = types[name]
        copied = t is None
        tensors.append(TensorPlan(name, shape, stype, _copy_type(stype) if copied else t, copied))
    return Plan(tensors, mix.name, mix.file_type)


def _copy_type(source_type: GGMLType) -> GGMLType:
    """Non-quantized tensors keep a float source type; quantized 1-D tensors (rare) become F32."""
    return source_type if source_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) else GGMLType.F32


def quantize_tensor(
    weights: np.ndarray, type_: GGMLType, importance: np.ndarray | None = None, threads: int | None = None
) -> np.ndarray:
    """Float32 (rows, n_per_row) -> packed uint8 rows of `type_`, minimising importance-weighted error."""
    from .. import kernels

    w = np.ascontiguousarray(weights, dtype=np.float32)
    n_per_row = w.shape[-1]
    n_rows = w.size // n_per_row
    fmt = get_format(type_)
    if n_per_row % fmt.block_size:
        raise ConfigError(
            f"{fmt.name} needs rows that are a multiple of {fmt.block_size} weights; this tensor's rows have {n_per_row}"
        )
    out = np.empty((n_rows, fmt.row_bytes(n_per_row)), dtype=np.uint8)
    if kernels._C is None:
        if importance is None and fmt.can_quantize:
            return fmt.quantize(w).reshape(out.shape)
        raise ConfigError(f"quantizing to {fmt.name} needs the C kernels (reinstall edgellm with a C compiler)")
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    kernels._C.quantize(int(type_), w.reshape(n_rows, n_per_row), out, n_rows, n_per_row, imp, threads or kernels.threads())
    return out


def quantize_weights(
    weights: np.ndarray, type_: GGMLType, name: str, imatrix: ImportanceMatrix | None, threads: int | None = None
) -> np.ndarray:
    """Quantize one tensor the best way the importance matrix allows: GPTQ when it holds the tensor's input
    second moments, importance-weighted rounding when it holds only their diagonal, plain otherwise."""
    n = weights.shape[-1]
    if imatrix is None or get_format(type_).block_size == 1:
        return quantize_tensor(weights, type_, None, threads)
    hessian = imatrix.hessian(name, n)
    if hessian is None:
        return quantize_tensor(weights, type_, imatrix.importance(name, n), threads)
    from .gptq import quantize_gptq

    return quantize_gptq(weights, type_, hessian, lambda w, imp: quantize_tensor(w, type_, imp, threads))


def write_quantized(
    source: Source,
    plan: Plan,
    output: str | os.PathLike,
    *,
    imatrix: ImportanceMatrix | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    progress: Callable[[TensorPlan], None] | None = None,
) -> Path:
    """Quantize every tensor as `plan` says and write the GGUF (atomically; an existing file only with
    `overwrite`, checked before any tensor is quantized)."""
    metadata, types = source.metadata()
    metadata = dict(metadata)
    types = dict(types)
    metadata.pop("general.file_type", None)
    if plan.file_type is not None:
        metadata["general.file_type"] = plan.file_type
        types["general.file_type"] = (GGUFValueType.UINT32, None)
    if imatrix is not None:
        metadata["quantize.imatrix.file"] = str(imatrix.path.name)
        metadata["quantize.imatrix.dataset"] = ", ".join(imatrix.datasets)
        metadata["quantize.imatrix.entries_count"] = len(imatrix.entries)
        metadata["quantize.imatrix.chunks_count"] = imatrix.chunk_count
        types["quantize.imatrix.entries_count"] = (GGUFValueType.INT32, None)
        types["quantize.imatrix.chunks_count"] = (GGUFValueType.INT32, None)

    def packed(t: TensorPlan) -> np.ndarray:
        """One tensor's bytes, made when the streaming writer reaches it."""
        if t.copied and t.type == t.source_type:
            data = source.raw(t.name)
        else:
            w = source.weights(t.name)
            data = quantize_weights(w.reshape(-1, t.shape[-1]), t.type, t.name, imatrix, threads)
        if progress is not None:
            progress(t)
        return data

    tensors = [TensorData(t.name, t.type, t.shape, partial(packed, t)) for t in plan.tensors]
    return write_gguf(output, metadata, tensors, metadata_types=types, overwrite=overwrite)


def check_quantizable(plan: Plan) -> None:
    """Every quantized tensor's rows must split into whole blocks of its type."""
    for t in plan.tensors:
        if not t.copied:
            fmt = get_format(t.type)
            if t.shape[-1] % fmt.block_size:
                raise ConfigError(
                    f"tensor '{t.name}' has rows of {t.shape[-1]} weights, not a multiple of {fmt.name}'s "
                    f"block of {fmt.block_size}"
                )
