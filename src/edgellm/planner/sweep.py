"""`edgellm sweep`: the planner's answer as pictures — memory decides.

1. decode tok/s against memory bandwidth, one line per bit width (the devices given are marked);
2. for a target decode speed: the bandwidth, the capacity and the compute (for a TTFT target) a device
   needs, against bits per weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import atomic_output
from .device import load_device
from .estimate import COMPUTE_EFFICIENCY, KV_BYTES, MEMORY_EFFICIENCY, prefill_ops
from .model import load_model

BITS = (2.0, 3.0, 4.0, 5.0, 8.0, 16.0)


def sweep(model_ref: str, devices: list[str], out: Path, target_tps: float, prompt: int, ttft_ms: float, ctx: int) -> dict:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("sweep draws with matplotlib: pip install matplotlib") from None
    devs = [load_device(d) for d in devices]
    out.mkdir(parents=True, exist_ok=True)
    base = load_model(model_ref)
    shape = base.shape
    kv = 2.0 * shape.n_layer * shape.n_head_kv * shape.head_dim * ctx * KV_BYTES["f32"]  # edgellm's default cache

    def bytes_per_token(bits: float) -> float:
        spec = _bpw(base, bits)
        active = sum(spec.tensor_bytes(n, r, c) * shape.active_fraction(n) for n, r, c in shape.weight_tensors()
                     if n != "token_embd.weight" or shape.tied)  # fmt: skip
        return active + kv

    bw = np.geomspace(5, 400, 60)
    data: dict = {"model": shape.name, "ctx": ctx, "memory_efficiency": MEMORY_EFFICIENCY, "lines": {}}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for bits in BITS:
        tps = MEMORY_EFFICIENCY * bw * 1e9 / bytes_per_token(bits)
        data["lines"][f"{bits:g}"] = [round(float(v), 2) for v in tps]
        ax.plot(bw, tps, label=f"{bits:g} bits/weight")
    for d in devs:
        if d.bandwidth_gbps.known:
            ax.axvline(d.bandwidth_gbps.value, color="grey", lw=0.8, ls=":")
            ax.text(d.bandwidth_gbps.value, 0.02, f" {d.name}", rotation=90, fontsize=7, va="bottom", ha="right",
                    transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="peak memory bandwidth (GB/s)", ylabel="decode tokens/s",
           title=f"{shape.name}: decode = bandwidth / bytes per token")  # fmt: skip
    ax.text(0.99, 0.98, f"context {ctx}, {MEMORY_EFFICIENCY:.0%} of peak reached", transform=ax.transAxes,
            ha="right", va="top", fontsize=7)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = out / "decode_vs_bandwidth.png"
    with atomic_output(p1, overwrite=True) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)

    bits = np.linspace(2, 16, 57)
    need_bw = [target_tps * bytes_per_token(b) / MEMORY_EFFICIENCY / 1e9 for b in bits]
    need_cap = [(_weights(base, b) + kv) / 1e9 * 1.1 for b in bits]  # +10 % runtime buffers
    flops = sum(op.flops for op in prefill_ops(base, prompt))
    need_tops = flops / (ttft_ms / 1e3) / COMPUTE_EFFICIENCY / 1e12
    ttfts = np.geomspace(50, 5000, 40)
    data["requirements"] = {"target_tps": target_tps, "bits": [float(b) for b in bits],
                            "bandwidth_gbps": [round(v, 2) for v in need_bw], "capacity_gb": [round(v, 3) for v in need_cap],
                            "prefill_tops": round(need_tops, 3), "prompt": prompt, "ttft_ms": ttft_ms}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].plot(bits, need_bw)
    axes[0].set(xlabel="bits per weight", ylabel="GB/s", title=f"bandwidth for {target_tps:g} tok/s")
    axes[1].plot(bits, need_cap, color="C1")
    axes[1].set(xlabel="bits per weight", ylabel="GB", title=f"capacity (weights + KV at {ctx})")
    for d in devs:
        if d.bandwidth_gbps.known:
            axes[0].axhline(d.bandwidth_gbps.value, color="grey", lw=0.8, ls=":")
            axes[0].text(2, d.bandwidth_gbps.value, d.name, fontsize=7, va="bottom")
        if d.capacity_gb.known:
            axes[1].axhline(d.capacity_gb.value, color="grey", lw=0.8, ls=":")
            axes[1].text(2, d.capacity_gb.value, d.name, fontsize=7, va="bottom")
    axes[2].plot(ttfts, flops / (ttfts / 1e3) / COMPUTE_EFFICIENCY / 1e12, color="C2")
    axes[2].axvline(ttft_ms, color="C2", lw=0.8, ls="--")
    for d in devs:
        tops = max((u.int8_tops.value for u in d.units if u.int8_tops.known), default=None)
        if tops:
            axes[2].axhline(tops, color="grey", lw=0.8, ls=":")
            axes[2].text(50, tops, d.name, fontsize=7, va="bottom")
    axes[2].set(xscale="log", yscale="log", xlabel="time to first token (ms)",
                ylabel=f"peak int8 TOPS (at {COMPUTE_EFFICIENCY:.0%} use)", title=f"compute for a {prompt}-token prompt")  # fmt: skip
    for a in axes:
        a.grid(True, alpha=0.3)
    fig.suptitle(f"{shape.name}: what a device needs")
    fig.tight_layout()
    p2 = out / "requirements.png"
    with atomic_output(p2, overwrite=True) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    data["plots"] = [str(p1), str(p2)]
    return data


def _bpw(spec, bits):
    from .model import typed

    return typed(spec.shape, bpw=bits)


def _weights(spec, bits) -> float:
    return _bpw(spec, bits).weight_bytes
