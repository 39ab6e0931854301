"""`--bpw`: choose a type per tensor so the file averages a requested bits per weight at least error.

Each quantizable tensor is quantized in every candidate type that fits its rows, the way the file will be,
and its cost measured as the expected squared error of that layer's output (tr(D H D^T) with the importance
matrix's second moments H, after GPTQ; its diagonal alone without them; plain squared weight error without
any), times the tensor's measured
gain (KLD per unit of that error, quant/sensitivity.py) when the importance matrix has one. A Lagrangian
sweep then picks, for a price per bit, the type minimising cost + price * bits in each tensor, and the
price is bisected until the file's bits per weight meet the target; leftover bits go to the upgrades with
the best cost saved per bit.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..formats.quants import GGMLType, dequantize, get_format
from .gptq import output_error, quantize_gptq
from .imatrix import ImportanceMatrix
from .mixes import is_quantizable
from .quantize import Plan, TensorPlan, _copy_type, quantize_tensor
from .source import Source

T = GGMLType
# Candidates, cheapest first. Q4_1/Q5_1 are left out by default: a reference that was itself dequantized
# from Q4_1 sits exactly on their grid, which would make them look free.
DEFAULT_CANDIDATES = (T.Q2_NL, T.Q2_K, T.Q3_NL, T.Q3_K, T.Q4_NL, T.Q4_K, T.Q5_0, T.Q5_K, T.Q6_K, T.Q8_0)


def quantize_and_error(
    weights: np.ndarray,
    type_: GGMLType,
    importance: np.ndarray | None,
    hessian: np.ndarray | None = None,
    threads: int | None = None,
    compensate: bool = True,
) -> tuple[np.ndarray, float]:
    """Packed bytes of `weights` (rows, n) in `type_` and the expected squared error of the layer's output:
    tr(D H D^T) with the input second moments H when known (quantized with GPTQ then, as the file will
    be, unless `compensate` is off), their diagonal (the importance) otherwise."""
    n = weights.shape[-1]
    w = weights.reshape(-1, n)
    if hessian is not None:
        if compensate:
            packed = quantize_gptq(w, type_, hessian, lambda b, imp: quantize_tensor(b, type_, imp, threads))
        else:
            packed = quantize_tensor(w, type_, importance, threads)
        return packed, output_error(w, dequantize(packed, type_, w.shape), hessian)
    packed = quantize_tensor(w, type_, importance, threads)
    diff = dequantize(packed, type_, w.shape) - w
    imp = np.ones(n, dtype=np.float64) if importance is None else importance.astype(np.float64)
    return packed, float(np.einsum("rc,c->", np.square(diff, dtype=np.float64), imp))


def priced_after_gptq(name: str) -> bool:
    """Whether a tensor's candidates are priced by the error GPTQ leaves. Not the token embedding: its
    statistics are those of its use as the (tied) output head, and GPTQ lowers that error but not the
    lookup table's. On SmolLM2 at 3.45 bpw GPTQ took its output error to a quarter, yet the model's KLD only
    from 0.489 to 0.433; priced by the lower error the embedding looked cheap, lost bits, and the 4- and
    5-bpw files came out 35-45 % worse."""
    return name != "token_embd.weight"


def tensor_errors(weights, candidates, importance, hessian=None, threads=None, compensate=True) -> dict[GGMLType, float]:
    """quantize_and_error's error for every candidate type that fits the rows."""
    n = weights.shape[-1]
    return {
        t: quantize_and_error(weights, t, importance, hessian, threads, compensate)[1]
        for t in candidates
        if n % get_format(t).block_size == 0
    }


def plan_bpw(
    source: Source,
    bpw: float,
    imatrix: ImportanceMatrix | None = None,
    candidates=DEFAULT_CANDIDATES,
    threads: int | None = None,
    progress=None,
    fixed: dict[str, GGMLType] | None = None,
) -> Plan:
    """`fixed` tensors get the type given and stay out of the average: `bpw` is then the mean over the rest."""
    fixed = fixed or {}
    entries = list(source.tensors())
    fixed_bits = 0  # tensors copied as they are
    total = 0
    options: list[tuple[str, tuple[int, ...], GGMLType, dict[GGMLType, float]]] = []
    for name, shape, stype in entries:
        if name in fixed:
            continue
        total += int(np.prod(shape, dtype=np.int64))
        if not is_quantizable(name, shape):
            fixed_bits += 8 * int(np.prod(shape[:-1])) * get_format(_copy_type(stype)).row_bytes(shape[-1])
            continue
        imp = imatrix.importance(name, shape[-1]) if imatrix is not None else None
        hessian = imatrix.hessian(name, shape[-1]) if imatrix is not None else None
        errs = tensor_errors(source.weights(name), candidates, imp, hessian, threads, priced_after_gptq(name))
        gain = imatrix.gains.get(name) if imatrix is not None else None
        if gain is not None:  # layer-output error -> KLD, measured (quant/sensitivity.py)
            errs = {t: gain * e for t, e in errs.items()}
        if not errs:
            raise ConfigError(f"tensor '{name}': rows of {shape[-1]} weights fit none of the candidate types")
        options.append((name, shape, stype, errs))
        if progress is not None:
            progress(name)

    def bits(shape, t) -> int:
        return 8 * int(np.prod(shape[:-1])) * get_format(t).row_bytes(shape[-1])

    budget = bpw * total - fixed_bits
    cheapest = sum(min(bits(s, t) for t in e) for _, s, _, e in options)
    dearest = sum(max(bits(s, t) for t in e) for _, s, _, e in options)
    if budget < cheapest or budget > dearest:
        lo, hi = (cheapest + fixed_bits) / total, (dearest + fixed_bits) / total
        raise ConfigError(f"--bpw {bpw} is out of reach for this model: the candidate types give {lo:.3f}..{hi:.3f}")

    def choose(price: float) -> list[GGMLType]:
        return [min(e, key=lambda t: e[t] + price * bits(s, t)) for _, s, _, e in options]

    lo, hi = 0.0, 1.0
    while sum(bits(s, t) for (_, s, _, _), t in zip(options, choose(hi))) > budget:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(bits(s, t) for (_, s, _, _), t in zip(options, choose(mid))) > budget:
            lo = mid
        else:
            hi = mid
    chosen = choose(hi)
    used = sum(bits(s, t) for (_, s, _, _), t in zip(options, chosen))
    # spend what is left on the upgrades that save the most error per bit
    while True:
        best = None
        for i, (_, s, _, e) in enumerate(options):
            cur = chosen[i]
            for t in e:
                extra = bits(s, t) - bits(s, cur)
                if 0 < extra <= budget - used and e[t] < e[cur]:
                    gain = (e[cur] - e[t]) / extra
                    if best is None or gain > best[0]:
                        best = (gain, i, t, extra)
        if best is None:
            break
        _, i, t, extra = best
        chosen[i] = t
        used += extra

    tensors = []
    picked = dict(zip((o[0] for o in options), chosen))
    for name, shape, stype in entries:
        if name in picked or name in fixed:
            tensors.append(TensorPlan(name, shape, stype, picked.get(name) or fixed[name], False))
        else:
            tensors.append(TensorPlan(name, shape, stype, _copy_type(stype), True))
    return Plan(tensors, f"bpw {bpw:.2f}", None)
