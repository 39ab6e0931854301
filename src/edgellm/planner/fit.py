"""`edgellm fit`: the configurations that reach a decode speed on a device, best quality first.

Candidates: every weight type (llama.cpp's mixes and edgellm's NL formats) times activation sparsity
levels, streaming from storage when the model does not fit the memory budget. Quality is the measured mean
KLD where docs/quantization.md has it for that model (planner/quality.yaml); a type without a measurement
is placed by its bits per weight among the measured ones (log-KLD interpolated in bits, and halved per
extra bit beyond the highest measured). Sparse configurations are not measured: they rank after all dense
ones.
"""

from __future__ import annotations

from importlib import resources

from ..errors import ConfigError
from .device import Device
from .estimate import Scenario, estimate
from .model import load_model

TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "Q4_NL", "Q3_NL", "Q2_NL")
SPARSITY = (0.0, 0.5, 0.8)


def measured_kld(model_name: str) -> dict[str, float]:
    """type -> mean KLD measured for this catalog model (empty when none was measured)."""
    import yaml

    doc = yaml.safe_load((resources.files("edgellm.planner") / "quality.yaml").read_text(encoding="utf-8")) or {}
    return dict((doc.get(model_name) or {}).get("kld", {}))


def fit(model_ref: str, device: Device, sc: Scenario, min_tps: float) -> list[dict]:
    if min_tps <= 0:
        raise ConfigError(f"--min-tps must be positive, got {min_tps}")
    rows = []
    kld = None
    for quant in TYPES:
        spec = load_model(model_ref, quant)
        if kld is None:
            kld = measured_kld(spec.shape.name)
        for sparsity in SPARSITY:
            s = Scenario(**{**sc.__dict__, "sparsity": sparsity})
            e = estimate(spec, device, s)
            if e.decode_tps is None or e.decode_tps < min_tps:
                continue
            known = kld.get(quant)
            rows.append({
                "quant": quant, "bits_per_weight": round(spec.bits_per_weight, 3), "sparsity": sparsity,
                "fits": e.fits, "memory_mb": round(e.memory_mb, 1), "streamed_mb_per_token": round(e.streamed_mb_per_token, 1),
                "decode_tps": round(e.decode_tps, 2), "prefill_tps": None if e.prefill_tps is None else round(e.prefill_tps, 1),
                "kld": known,
                "quality": (f"KLD {known:.4f} (measured)" if known is not None else f"{spec.bits_per_weight:.2f} bpw")
                + (f", sparsity {sparsity:g} not measured" if sparsity else ""),
            })  # fmt: skip
    rank = _quality_rank(kld or {}, {r["quant"]: r["bits_per_weight"] for r in rows})
    rows.sort(key=lambda r: (r["sparsity"], rank[r["quant"]], -r["bits_per_weight"]))
    return rows


def _quality_rank(kld: dict[str, float], bits: dict[str, float]) -> dict[str, float]:
    """type -> a KLD-like number, lower is better: measured, or placed by bits among the measured types."""
    import math

    pts = sorted((bits[t], math.log(max(v, 1e-6))) for t, v in kld.items() if t in bits)
    out = {}
    for t, b in bits.items():
        if t in kld:
            out[t] = kld[t]
        elif not pts:
            out[t] = 2.0 ** -b  # nothing measured: more bits is better
        elif b >= pts[-1][0]:
            out[t] = math.exp(pts[-1][1]) * 0.5 ** (b - pts[-1][0])
        elif b <= pts[0][0]:
            out[t] = math.exp(pts[0][1]) * 2.0 ** (pts[0][0] - b)
        else:
            import numpy as np

            out[t] = math.exp(float(np.interp(b, [p[0] for p in pts], [p[1] for p in pts])))
    return out
