"""`edgellm fit`: the configurations that reach a decode speed on a device, best quality first, each with the
command that runs it.

Candidates: every weight type (llama.cpp's mixes and edgellm's NL formats) times the sparsity levels measured
for that model in planner/sparsity.yaml (plus dense) times the candidate head (off, and on where measured),
streaming from storage when the model does not fit the memory budget. Only measured levels are listed: the
runtime runs a level only once `edgellm sparsify` calibrated it, and its quality is only known measured. A
setting no faster than a better one of the same weight type is dropped (the column layout of 8-bit containers
can read more than the dense file).

Quality, lower is better: the weight type's mean KLD where docs/quantization.md has it for that model
(planner/quality.yaml; an unmeasured type is placed by its bits per weight among the measured ones, log-KLD
interpolated in bits, halved per extra bit beyond the highest measured) plus the measured KLD of the sparsity
level and of the head (or ln(1 + perplexity increase) where only that was measured). Summing assumes small,
independent perturbations: the combinations, and sparsity on other weight types than the measured file, are
not measured themselves. With no measured type for the model, KLDs of types are not comparable with the
sparsity's: rows then rank by type (more bits first), dense before sparse within a type.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .device import Device
from .estimate import Scenario, estimate
from .model import ALIASES, load_model
from .sparsity import Curve, curve_for

TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "Q4_NL", "Q3_NL", "Q2_NL")
CALIBRATION = "CALIBRATION.txt"  # placeholder in `edgellm sparsify -f`: any text but the evaluation corpus


def measured_kld(model_name: str) -> dict[str, float]:
    """type -> mean KLD measured for this catalog model (empty when none was measured)."""
    import yaml

    doc = yaml.safe_load((resources.files("edgellm.planner") / "quality.yaml").read_text(encoding="utf-8")) or {}
    return dict((doc.get(model_name) or {}).get("kld", {}))


def settings(curve: Curve | None) -> list[tuple[float, int]]:
    """(sparsity, head candidates) the runtime can run for this model: dense, the measured levels, the head."""
    levels = [0.0] + (curve.measured_levels() if curve else [])
    heads = [0] + ([curve.head.candidates] if curve and curve.head and curve.head.measured else [])
    return [(s, k) for s in levels for k in heads]


def fit(model_ref: str, device: Device, sc: Scenario, min_tps: float) -> list[dict]:
    if min_tps <= 0:
        raise ConfigError(f"--min-tps must be positive, got {min_tps}")
    rows = []
    name = load_model(model_ref, TYPES[0]).shape.name
    kld, curve = measured_kld(name), curve_for(name)
    types = TYPES + ((curve.weights,) if curve and curve.weights and curve.weights not in TYPES else ())
    for quant in types:  # the measured file's type too: it runs as shipped
        spec = load_model(model_ref, quant)
        for sparsity, head in settings(curve):
            e = estimate(spec, device, replace(sc, sparsity=sparsity, head_candidates=head))
            if e.decode_tps is None or e.decode_tps < min_tps:
                continue
            streams = e.streamed_mb_per_token > 0
            if streams and (sparsity or head):
                continue  # the runtime does not stream with --sparsity or --head (docs/offload.md)
            model, prepare = _model_file(model_ref, spec.shape.name, quant, curve)
            if sparsity or head:
                prepare.append(_join(["edgellm", "sparsify", "-m", model, "-f", CALIBRATION]
                                     + (["--sparsity", f"{sparsity:g}"] if sparsity else [])
                                     + (["--head", str(head)] if head else [])))  # fmt: skip
            rows.append({
                "quant": quant, "bits_per_weight": round(spec.bits_per_weight, 3), "sparsity": sparsity, "head": head,
                "fits": e.fits, "memory_mb": round(e.memory_mb, 1), "streamed_mb_per_token": round(e.streamed_mb_per_token, 1),
                "weights_read_mb_per_token": round(e.weights_read_mb_per_token, 1),
                "decode_tps": round(e.decode_tps, 2), "prefill_tps": None if e.prefill_tps is None else round(e.prefill_tps, 1),
                "decode_speedup_measured": e.decode_speedup_measured,
                "kld": None, "quality": "",
                "model": model, "prepare": prepare,
                # a budget the user set, or one the weights stream under, goes on the command line
                "command": run_command(model, sparsity, head, e.budget_mb if streams or sc.mem_budget_gb else None,
                                       sc.ctx, sc.cache_type),  # fmt: skip
            })  # fmt: skip
    rank = _quality_rank(kld or {}, {r["quant"]: r["bits_per_weight"] for r in rows})
    for r in rows:
        _score(r, kld or {}, rank, curve)
    # reading less only pays where the layout reads fewer bytes: drop settings no faster than another setting
    # of the same weight type that is at least as good (e.g. sparsity on 8-bit-container NL formats)
    rows = [r for r in rows if not any(o is not r and o["quant"] == r["quant"] and o["_score"] <= r["_score"]
                                       and o["decode_tps"] >= r["decode_tps"] for o in rows)]  # fmt: skip
    if kld:
        rows.sort(key=lambda r: (r["_score"], -r["decode_tps"]))
    else:
        rows.sort(key=lambda r: (rank[r["quant"]], -r["bits_per_weight"], r["_score"], -r["decode_tps"]))
    for r in rows:
        del r["_score"]
    return rows


def _score(r: dict, kld: dict[str, float], rank: dict[str, float], curve: Curve | None) -> None:
    """The row's quality: a summed KLD (`kld` when every part was measured) and a line saying what it is."""
    known = kld.get(r["quant"])
    desc = [f"KLD {known:.4f} (measured)" if known is not None else f"{r['bits_per_weight']:.2f} bpw"]
    score, total = rank[r["quant"]], known
    on = f" on {curve.weights}" if curve and curve.weights and curve.weights != r["quant"] else ""
    for label, q, m in _read_less_quality(r, curve):
        score += q
        total = None if total is None else total + q
        desc.append(f"{label}: {m}{on}")
    note = "" if len(desc) == 1 else (" (KLDs summed; not measured together)" if len(desc) > 2 or on else " (KLDs summed)")
    r["_score"], r["kld"] = score, None if total is None else round(total, 4)
    r["quality"] = " + ".join(desc) + note


def _read_less_quality(r: dict, curve: Curve | None) -> list[tuple[str, float, str]]:
    out = []
    if r["sparsity"]:
        lv = curve.level(r["sparsity"])
        out.append((f"sparsity {r['sparsity']:g}", lv.quality, _measure(lv.kld, lv.ppl_increase_pct)))
    if r["head"]:
        h = curve.head
        out.append((f"head {r['head']}", h.quality, _measure(h.kld, h.ppl_increase_pct)))
    return out


def _measure(kld: float | None, ppl: float | None) -> str:
    return f"KLD {kld:.4f} (measured" + (f", ppl +{ppl:.1f} %)" if ppl is not None else ")") if kld is not None \
        else f"ppl +{ppl:.1f} % (measured)"  # fmt: skip


def run_command(model: str, sparsity: float = 0.0, head: int = 0, budget_mb: float | None = None,
                ctx: int | None = None, cache_type: str | None = None) -> str:  # fmt: skip
    """`edgellm run` with this model file and read-less setting; with a memory budget (weights streamed from
    the file) also the context and cache type the budget was split for."""
    argv = ["edgellm", "run", "-m", model] + (["--sparsity", f"{sparsity:g}"] if sparsity else [])
    argv += ["--head", str(head)] if head else []
    if budget_mb is not None:
        argv += ["--mem-budget", f"{int(budget_mb)}M", "-c", str(ctx), "--cache-type", cache_type]
    return _join(argv)


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _model_file(model_ref: str, name: str, quant: str, curve: Curve | None) -> tuple[str, list[str]]:
    """(what `edgellm run -m` takes for this weight type, the commands that make it first). The measured file
    runs by its own name; another type is quantized into a file next to it."""
    if curve and curve.model and curve.weights == quant:
        return curve.model, []
    path = Path(model_ref)
    if path.suffix == ".gguf" or path.name == "config.json" or path.is_dir():
        source, stem = model_ref, (path.stem if path.suffix == ".gguf" else name)
    else:
        source = _runtime_name(name) or (curve.model if curve and curve.model else None) or "HF_MODEL_DIR"
        stem = name
    out = f"{Path(stem).name}-{quant}.gguf"
    return out, [_join(["edgellm", "quantize", source, out, "--type", quant])]


def _runtime_name(name: str) -> str | None:
    """The runtime catalog's name for a planner catalog model (gemma-3-270m -> gemma3-270m), if it ships one."""
    from ..hub import CATALOG

    return next((k for k in CATALOG if ALIASES.get(k, k) == name), None)


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
