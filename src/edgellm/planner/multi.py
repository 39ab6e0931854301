"""`plan --accelerators N`: the model over N accelerators like the device, compared pipeline vs tensor
parallel for decode and for prefill (planner/partition.py does the arithmetic)."""

from __future__ import annotations

import math

from .device import Device
from .estimate import ACTIVATION_BYTES, KV_BYTES, Scenario, decode_ops, op_time, prefill_ops, rates_for
from .model import ModelSpec
from .partition import Accelerator, LayerCost, Link, best, pipeline, tensor_parallel

MICRO_BATCH = 128  # prompt tokens per pipeline micro-batch
TOKEN_BYTES = 4  # a sampled token id, sent from the last stage back to the first for the next decode step


def layer_costs(spec: ModelSpec, ops, rates, decode: bool, kv_per_layer: float, fixed_s: float) -> tuple[list[LayerCost], float]:
    """Per layer: resident bytes (weights, KV cache), bytes read, FLOPs, the engine's fixed cost; the head goes
    with the last layer. Also the effective bandwidth these operations see (bytes over the time one
    accelerator takes for them)."""
    s = spec.shape
    resident = [kv_per_layer] * s.n_layer
    for name, rows, cols in s.weight_tensors():
        i = int(name.split(".")[1]) if name.startswith("blk.") else s.n_layer - 1
        resident[i] += spec.tensor_bytes(name, rows, cols)
    read = [0.0] * s.n_layer
    flops = [0.0] * s.n_layer
    seconds = 0.0
    for op in ops:
        i = op.layer if op.layer >= 0 else s.n_layer - 1
        read[i] += op.bytes
        flops[i] += op.flops
        seconds += op_time(op, rates, decode, s.head_dim)[0]
    total = sum(read)
    eff_gbps = total / seconds / 1e9 if seconds and total else (rates.read_gbps or 1.0)
    return [LayerCost(resident[i], read[i], flops[i], fixed_s) for i in range(s.n_layer)], eff_gbps


def plan_multi(spec: ModelSpec, device: Device, sc: Scenario, n: int, link_gbps: float, latency_us: float) -> dict:
    rates = rates_for(device, sc.threads, sc.unit, sc.memory_efficiency)
    cap = device.capacity_gb.value
    if sc.mem_budget_gb:
        cap = sc.mem_budget_gb
    link = Link(link_gbps, latency_us)
    hidden = spec.shape.d_model * ACTIVATION_BYTES
    out: dict = {"accelerators": n, "link_gbps": link_gbps, "link_latency_us": latency_us}

    s = spec.shape
    kv = 2.0 * s.n_head_kv * s.head_dim * (max(sc.ctx, sc.prompt) + 1) * KV_BYTES[sc.cache_type]
    fixed = 0.0 if rates.stream_gbps else rates.engine.get("decode_layer_us", 0.0) * 1e-6  # see stream_rate
    layers, bw = layer_costs(spec, decode_ops(spec, sc.ctx, sc.sparsity, sc.cache_type, sc.head_candidates), rates, True, kv, fixed)
    accs = [Accelerator(f"acc{i}", bw, cap, rates.compute_gflops) for i in range(n)]
    opts = [pipeline(layers, accs, link, hidden, feedback_bytes=TOKEN_BYTES), tensor_parallel(layers, accs, link, hidden)]
    pick = best(opts)
    out["decode"] = {"options": [p.to_dict() for p in opts], "best": pick.strategy}
    out["multi_decode_tps"] = 1.0 / pick.seconds

    if rates.compute_gflops or rates.matmul_gflops:
        fixed = rates.engine.get("prefill_layer_us_per_token", 0.0) * 1e-6 * sc.prompt
        layers, bw = layer_costs(spec, prefill_ops(spec, sc.prompt), rates, False, kv, fixed)
        # prefill time per layer as the single-accelerator model has it: fold compute into an effective rate
        accs = [Accelerator(f"acc{i}", bw, cap, None) for i in range(n)]
        m = max(1, math.ceil(sc.prompt / MICRO_BATCH))
        opts = [pipeline(layers, accs, link, hidden, sc.prompt, micro_batches=m),
                tensor_parallel(layers, accs, link, hidden, sc.prompt)]  # fmt: skip
        pick = best(opts)
        out["prefill"] = {"options": [p.to_dict() for p in opts], "best": pick.strategy}
        out["multi_prefill_tps"] = sc.prompt / pick.seconds
    else:
        out["prefill"] = {"options": [], "best": None}
        out["multi_prefill_tps"] = None
    return out
