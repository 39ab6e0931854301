"""`edgellm fit`: the configurations that reach a decode speed on a device, best quality first.

Candidates: every weight type (llama.cpp's mixes and edgellm's NL formats) times activation sparsity
levels, streaming from storage when the model does not fit the memory budget. Quality is the measured mean
KLD where docs/quantization.md has it for that model (planner/quality.yaml), else bits per weight; a
sparse configuration's quality is not measured and ranks after the dense one of the same type.
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
    # measured KLD first (lower is better), then more bits, then less sparsity
    rows.sort(key=lambda r: (r["sparsity"] > 0, r["kld"] is None, r["kld"] or 0.0, -r["bits_per_weight"], r["sparsity"]))
    return rows
