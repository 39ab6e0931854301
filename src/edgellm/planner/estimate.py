"""The analytic model: time, memory and energy of prefill and decode, operation by operation.

Each operation (a weight matrix product, attention over the KV cache) has FLOPs and bytes. Its time is
max(FLOPs / compute, bytes / bandwidth) on the unit that runs it: a roofline per operation. Decode at batch
1 reads every active weight once per token, so it is bytes over bandwidth almost everywhere; prefill reuses
each weight across the prompt's tokens and becomes compute-bound. Weights that do not fit the memory budget
stream from storage each token (less what activation sparsity skips and a cache hit rate keeps).

Reading less per token (`--sparsity S`, `--head K`, planner/sparsity.py) changes the bytes of the decode
ops only: the seven matrices of every layer shrink to what the column layout reads (the measured fraction
where sparsity.yaml has one), the head to its cheap copy plus K exact rows. Time is the same roofline on
those bytes; no kernel efficiency beyond the bytes is modelled. Where sparsity.yaml holds a measured
decode speed-up, the estimate reports it next to the planner's: on the measured host the sparse kernels may
gain less than the byte ratio (scattered channel rows, per-group activation quantization), and only the
measurement says by how much.

Rates come from one of two places:
- a calibrated host (`edgellm calibrate`): per weight format and thread count, the matrix-vector bandwidth
  and matrix-matrix FLOP rate edgellm's own kernels reached, the rate a whole model's matrices stream at in a
  decode step (stream_rate) and the engine's measured costs per attended position (calibrate.py measures the
  last two on a synthetic model, not on the models scored);
- a spec sheet: peak DRAM bandwidth times MEMORY_EFFICIENCY, a unit's peak int8/fp16 rate times
  COMPUTE_EFFICIENCY. With no published compute peak, prefill is reported as unknown, not guessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import ConfigError
from ..formats.quants import GGMLType, get_format
from .device import Device
from .model import ModelSpec
from .sparsity import ReadLess, covered, head_row_bytes, head_tensor, read_less

# Fraction of peak DRAM bandwidth decode reaches on a spec-sheet device (--memory-efficiency). The published
# decode runs of ../shared/data/edge-devices.md imply 52-88 % (docs/planner.md, scored leave-one-out there).
MEMORY_EFFICIENCY = 0.70
COMPUTE_EFFICIENCY = 0.50  # of a unit's published peak, for prefill matrix products (assumption, E)

# Energy per operation, with sources (override per device under `energy:` in its YAML).
ENERGY = {
    # Horowitz, "Computing's energy problem", ISSCC 2014: DRAM 1.3-2.6 nJ per 64-bit access (45 nm era DDR):
    # 20 pJ/bit at the low end. LPDDR5 is lower; this is an upper bound class.
    "dram_pj_per_bit": 20.0,
    # Samsung UFS 4.0 (survey [S49]): 6.0 MB/s per mA; at an assumed 2.5 V supply (E): 0.42 nJ per byte.
    "flash_nj_per_byte": 2.5e-3 / 6.0e6 * 1e9,
    # Horowitz 2014 (45 nm): 8-bit multiply 0.2 pJ + 8-bit add 0.03 pJ per multiply-accumulate.
    "int8_mac_pj": 0.23,
}
KV_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
ACTIVATION_BYTES = 4  # float32 activations between operations


@dataclass
class Scenario:
    threads: int | None = None
    ctx: int = 512  # tokens in the KV cache when decoding
    prompt: int = 512  # prompt tokens for TTFT / prefill
    cache_type: str = "f32"  # edgellm's default
    sparsity: float = 0.0  # `run --sparsity`: model-wide fraction of the layers' linear-matrix inputs zeroed
    head_candidates: int = 0  # `run --head K`: candidate head with K exact rows (0: the full head)
    mem_budget_gb: float | None = None  # memory the model may use; default: the device's capacity
    cache_hit: float = 0.0  # fraction of streamed weights found in memory anyway
    unit: str | None = None  # cpu, gpu, npu: the unit that runs matrix products on a spec-sheet device
    memory_efficiency: float = MEMORY_EFFICIENCY  # spec-sheet devices: fraction of peak bandwidth reached

    def check(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if isinstance(self.head_candidates, bool) or not isinstance(self.head_candidates, int) or self.head_candidates < 0:
            raise ConfigError(f"--head must be a number of candidates >= 1 (0: the full head), got {self.head_candidates!r}")
        if not 0.0 <= self.cache_hit <= 1.0:
            raise ConfigError(f"cache hit rate must be in [0, 1], got {self.cache_hit}")
        if self.ctx < 1 or self.prompt < 1:
            raise ConfigError("--ctx and --prompt must be at least 1 token")
        if self.cache_type not in KV_BYTES:
            raise ConfigError(f"unknown KV cache type '{self.cache_type}'; one of {', '.join(KV_BYTES)}")
        if not 0.0 < self.memory_efficiency <= 1.0:
            raise ConfigError(f"memory efficiency must be in (0, 1], got {self.memory_efficiency}")
        if self.mem_budget_gb is not None and self.mem_budget_gb <= 0:
            raise ConfigError(f"--mem-budget must be positive, got {self.mem_budget_gb} GB")


@dataclass(frozen=True)
class Op:
    """One operation of a token's (or a prompt's) forward pass."""

    name: str
    kind: str  # "weights" or "attention"
    flops: float
    bytes: float  # read from memory
    fmt: str  # weight format name, "kv" for the cache
    layer: int  # -1: embedding / head
    head_positions: float = 0.0  # attention: (query, cached position) pairs over all heads


@dataclass
class Rates:
    """Effective rates of one compute domain (a host at a thread count, or a device's unit)."""

    read_gbps: float | None  # plain memory reads (KV cache, streamed activations)
    matvec_gbps: dict[str, float] = field(default_factory=dict)  # per format: decode weight streaming
    matmul_gflops: dict[str, float] = field(default_factory=dict)  # per format: prefill
    compute_gflops: float | None = None  # any format, when per-format rates are not measured
    storage_gbps: float | None = None
    source: str = "spec sheet"
    engine: dict[str, float] = field(default_factory=dict)  # calibrated per-layer / per-position costs
    # calibrated hosts: the rate at which a whole model's matrices stream in a decode step (see stream_rate);
    # memory-bound products run at it, compute-bound ones at their own matrix x vector rate
    stream_gbps: float | None = None

    def weight_gbps(self, fmt: str) -> float | None:
        return self.matvec_gbps.get(fmt) or _nearest_rate(self.matvec_gbps, fmt) or self.read_gbps

    def gflops(self, fmt: str) -> float | None:
        return self.matmul_gflops.get(fmt) or _nearest_rate(self.matmul_gflops, fmt) or self.compute_gflops


def _nearest_rate(rates: dict[str, float], fmt: str) -> float | None:
    """A measured rate for a format that was not measured: the one with the closest bits per weight."""
    if not rates:
        return None
    try:
        bits = get_format(GGMLType[fmt]).bits_per_weight
    except KeyError:
        return None
    known = [(abs(get_format(GGMLType[k]).bits_per_weight - bits), v) for k, v in rates.items() if k in GGMLType.__members__]
    return min(known)[1] if known else None


def rates_for(
    device: Device, threads: int | None = None, unit: str | None = None, memory_efficiency: float = MEMORY_EFFICIENCY
) -> Rates:
    """The device's rates: measured where it was calibrated, from its spec sheet otherwise."""
    if device.calibration:
        return _calibrated_rates(device, threads)
    bw = device.bandwidth_gbps.value
    read = bw * memory_efficiency if bw else None
    compute, chosen = None, None
    units = [device.unit(unit)] if unit else device.units
    if unit and units[0] is None:
        raise ConfigError(f"device '{device.name}' has no unit '{unit}'; it has {', '.join(u.name for u in device.units)}")
    for u in units:  # by default the unit with the highest published peak runs the matrix products
        peak = u.int8_tops.value * 1e3 if u.int8_tops.known else (u.fp16_tflops.value * 1e3 if u.fp16_tflops.known else None)
        if peak is not None and peak * COMPUTE_EFFICIENCY > (compute or 0.0):
            compute, chosen = peak * COMPUTE_EFFICIENCY, u.name
    source = f"spec sheet, {memory_efficiency:.0%} of peak bandwidth" + (f", prefill on the {chosen}" if chosen else "")
    return Rates(read_gbps=read, compute_gflops=compute, storage_gbps=device.storage_read_gbps.value, source=source)


def stream_rate(q8_matvec_gbps: float, decode_layer_us: float) -> float:
    """GB/s at which a decode step streams a model's matrices, from the calibration's synthetic model.

    Calibration times one 96 MB Q8_0 matrix (one long stream) and a synthetic Q8_0 model (many matrices of a
    few MB, one after another, with the engine's work between them); the model's step exceeds its bytes at the
    long-stream rate by `decode_layer_us` per layer. That excess is almost all streaming: the engine's own
    per-layer work measured on a cache-resident model is ~15-30 us, and it grows with the layers' bytes (13, 116
    and 137 us per layer at widths 256, 768 and 2048 on one host). So the step's bytes over its whole time is
    the rate a real model's memory-bound products (Q8_0, F16 heads) reach; formats whose kernels are slower than
    that (most 2-5-bit ones) are limited by their own rate instead, and nothing more is charged per layer."""
    from .calibrate import synthetic_weight_bytes, SYN

    syn = synthetic_weight_bytes()
    return syn / (syn / (q8_matvec_gbps * 1e9) + SYN["n_layer"] * decode_layer_us * 1e-6) / 1e9


def _calibrated_rates(device: Device, threads: int | None) -> Rates:
    cal = device.calibration
    by_threads = {int(k): v for k, v in cal["threads"].items()}
    t = threads or max(by_threads)
    if t not in by_threads:
        raise ConfigError(f"{device.path}: calibrated for threads {sorted(by_threads)}, not {t}")
    c = by_threads[t]  # checked complete when the profile was loaded (device.py)
    return Rates(
        read_gbps=c["read_gbps"],
        matvec_gbps=dict(c["matvec_gbps"]),
        matmul_gflops=dict(c["matmul_gflops"]),
        storage_gbps=cal.get("storage_read_gbps"),
        source=f"calibrated ({device.path.name}, {t} threads)",
        engine={k: float(c[k]) for k in ENGINE_KEYS},
        stream_gbps=stream_rate(c["matvec_gbps"]["Q8_0"], float(c["decode_layer_us"])) if "Q8_0" in c["matvec_gbps"] else None,
    )


ENGINE_KEYS = ("decode_layer_us", "decode_attention_ns_per_position", "prefill_layer_us_per_token",
               "prefill_attention_ns_per_position")


def _weight_ops(spec: ModelSpec, tokens: int, rl: ReadLess | None = None) -> list[Op]:
    """The matrix products of `tokens` tokens processed at once. The head computes logits for the last token
    only; a tied embedding is read as the head (its lookup reads one row). One token reads the routed experts'
    share, and with `rl` (decode only: prefill reads dense) the column layout's bytes of the sparse matrices
    and the candidate head's cheap copy plus K exact rows; a prompt reads every weight once."""
    from .sparsity import _column

    s = spec.shape
    ops = []
    head_name = head_tensor(spec)[0]
    for name, rows, cols in s.weight_tensors():
        if name == "token_embd.weight" and not s.tied:
            continue
        head = name == head_name
        op_name, fmt = ("output" if head else name), _fmt(spec, name)
        frac = 1.0 if head else s.active_fraction(name)
        read = spec.tensor_bytes(name, rows, cols) * (frac if tokens == 1 else 1.0)
        flops = 2.0 * rows * cols * frac * (1 if head else tokens)
        if tokens == 1 and rl is not None:
            col = _column(spec, name, rows, cols) if rl.sparsity and covered(name) else None
            if col is not None:  # channel rows of the active inputs, every group's scales
                read, flops = (1.0 - rl.skip) * col[0] + col[1], flops * (1.0 - rl.skip)
            if head and rl.candidates:
                ops.append(Op("output.candidates", "weights", 2.0 * rows * cols, rl.cheap_bytes, rl.cheap_type, -1))
                read, flops = rl.candidates * head_row_bytes(spec), 2.0 * rl.candidates * cols
        ops.append(Op(op_name, "weights", flops, read, fmt, -1 if head else _layer(name)))
    return ops


def decode_ops(spec: ModelSpec, ctx: int, sparsity: float = 0.0, cache_type: str = "f32", head_candidates: int = 0,
               rl: ReadLess | None = None) -> list[Op]:  # fmt: skip
    """Operations of one decode step with `ctx` tokens in the cache, at `--sparsity sparsity --head
    head_candidates` (the measured curve of sparsity.yaml where it has one; `rl` when already worked out)."""
    s = spec.shape
    rl = rl or (read_less(spec, sparsity, head_candidates) if sparsity or head_candidates else None)
    ops = _weight_ops(spec, 1, rl)
    kv = KV_BYTES[cache_type]
    for i in range(s.n_layer):
        n = s.attended(i, ctx)
        ops.append(Op(f"blk.{i}.attention", "attention", 4.0 * s.n_head * s.head_dim * n,
                      2.0 * s.n_head_kv * s.head_dim * n * kv, "kv", i, s.n_head * n))  # fmt: skip
    return ops


def prefill_ops(spec: ModelSpec, prompt: int) -> list[Op]:
    """Operations of a prompt of `prompt` tokens processed at once (weights read once, causal attention)."""
    s = spec.shape
    ops = _weight_ops(spec, prompt)
    for i in range(s.n_layer):
        w = s.attended(i, prompt)  # causal (and windowed) query-key pairs: sum over t of min(t, w)
        pairs = w * (w + 1) / 2 + (prompt - w) * w
        ops.append(Op(f"blk.{i}.attention", "attention", 4.0 * s.n_head * s.head_dim * pairs, 0.0, "kv", i,
                      s.n_head * pairs))  # fmt: skip
    return ops


def _fmt(spec: ModelSpec, name: str) -> str:
    if spec.bits_override is not None:
        return f"{spec.bits_override:g}bpw"
    return spec.types[name].name


def _layer(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def op_time(op: Op, rates: Rates, decode: bool, head_dim: int = 64) -> tuple[float, str]:
    """Seconds and the limit ("memory" or "compute") of one operation."""
    if op.kind == "attention" and rates.engine:  # calibrated: measured cost per attended position
        key = "decode_attention_ns_per_position" if decode else "prefill_attention_ns_per_position"
        t = op.head_positions * rates.engine[key] * 1e-9 * head_dim / 64
        return max(t, op.bytes / (rates.read_gbps * 1e9)), "attention"
    mem_rate = rates.read_gbps if op.kind == "attention" else rates.weight_gbps(op.fmt)
    if decode and rates.matvec_gbps and op.kind == "weights":
        # a calibrated matrix-vector rate already folds the arithmetic in: bytes over it is the time, and no
        # product streams faster than a whole model's matrices do (stream_rate)
        if rates.stream_gbps and rates.stream_gbps < mem_rate:
            return op.bytes / (rates.stream_gbps * 1e9), "memory"
        return op.bytes / (mem_rate * 1e9), "compute"
    t_mem = op.bytes / (mem_rate * 1e9) if mem_rate else 0.0
    flops_rate = rates.compute_gflops if op.kind == "attention" else rates.gflops(op.fmt)
    t_cmp = op.flops / (flops_rate * 1e9) if flops_rate else None
    if t_cmp is None:
        return t_mem, "memory"
    return (t_cmp, "compute") if t_cmp > t_mem else (t_mem, "memory")


@dataclass
class Estimate:
    model: str
    quant: str
    device: str
    rates_source: str
    fits: bool | None  # None: the device's capacity is not published
    memory_mb: float
    weights_mb: float
    kv_cache_mb: float
    budget_mb: float | None
    streamed_mb_per_token: float
    weights_read_mb_per_token: float  # weight bytes a decode step reads (after sparsity and the candidate head)
    decode_tps: float | None
    prefill_tps: float | None
    ttft_ms: float | None
    joules_per_token: float | None
    bottleneck: str
    decode_breakdown_ms: dict[str, float]
    notes: list[str]
    sparsity: float = 0.0
    head_candidates: int = 0
    extra_mb: float = 0.0  # resident next to the weights: column copies of sparse matrices, the cheap head
    bytes_measured: bool | None = None  # None: dense; else whether sparsity.yaml's bytes were used
    decode_speedup_predicted: float | None = None  # over dense, this planner on this device
    decode_speedup_measured: dict | None = None  # from sparsity.yaml: {host, threads, sparsity, head}

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(spec: ModelSpec, device: Device, sc: Scenario) -> Estimate:
    """Predict how `spec` runs on `device` in scenario `sc`."""
    sc.check()
    rates = rates_for(device, sc.threads, sc.unit, sc.memory_efficiency)
    notes: list[str] = []
    hd = spec.shape.head_dim
    if rates.read_gbps is None:
        raise ConfigError(
            f"device '{device.name}' has no published memory bandwidth ({device.path}: memory.bandwidth_gbps is null); "
            "a decode prediction needs it"
        )
    s = spec.shape
    sparse = bool(sc.sparsity or sc.head_candidates)
    rl = read_less(spec, sc.sparsity, sc.head_candidates) if sparse else None
    weights = spec.weight_bytes
    extra = rl.extra_bytes if rl else 0.0  # column copies and cheap head, next to the file's weights
    kv = 2.0 * s.n_layer * s.n_head_kv * s.head_dim * (max(sc.ctx, sc.prompt) + 1) * KV_BYTES[sc.cache_type]
    runtime = 64e6 + ACTIVATION_BYTES * (s.vocab + 8 * s.d_model + 2 * s.d_ff * max(1, s.n_expert_used))
    need = weights + extra + kv + runtime
    budget = sc.mem_budget_gb * 1e9 if sc.mem_budget_gb else (device.capacity_gb.value * 1e9 if device.capacity_gb.known else None)
    if budget is not None and device.capacity_gb.known and budget > device.capacity_gb.value * 1e9:
        raise ConfigError(f"--mem-budget {budget / 1e9:g} GB exceeds {device.name}'s {device.capacity_gb.value:g} GB of memory")
    if budget is None:
        notes.append("memory capacity not published: fit not checked")

    # weights that do not fit stream from storage: the layers' matrices first (sparsity thins what a token
    # reads of them, column copies included), then the head and embedding
    streamed = 0.0
    fits: bool | None = None if budget is None else True
    ops = decode_ops(spec, sc.ctx, sc.sparsity, sc.cache_type, sc.head_candidates, rl)
    if budget is not None and need > budget:
        # edgellm --mem-budget: what its runtime keeps besides resident weights (runtime/offload.py)
        from types import SimpleNamespace

        from ..runtime.offload import streaming_overhead

        dims = SimpleNamespace(n_layers=s.n_layer, n_embd=s.d_model, n_ff=s.d_ff * max(1, s.n_expert_used),
                               n_head=s.n_head, n_head_kv=s.n_head_kv, head_dim=s.head_dim, head_dim_v=s.head_dim,
                               rope_dim=s.head_dim, n_vocab=s.vocab)  # fmt: skip
        resident_room = budget - streaming_overhead(dims, int(kv), sc.ctx, sc.threads or 1, int(budget))
        if resident_room <= 0:
            raise ConfigError(
                f"the KV cache and buffers alone ({(budget - resident_room) / 1e6:.0f} MB) exceed the memory budget "
                f"({budget / 1e6:.0f} MB): lower --ctx/--prompt or raise --mem-budget"
            )
        fits = resident_room >= weights + extra  # with the runtime's leaner budgeted buffers it may still fit
    if fits is False:
        if rates.storage_gbps is None:
            notes.append("model exceeds memory and storage bandwidth is not published: decode not predicted")
        layers = sum(spec.tensor_bytes(n, r, c) for n, r, c in s.weight_tensors() if n.startswith("blk."))
        layers += rl.column_bytes if rl else 0.0
        layers_read = sum(op.bytes for op in ops if op.kind == "weights" and op.layer >= 0)
        rest_read = sum(op.bytes for op in ops if op.kind == "weights") - layers_read
        rest = weights + extra - layers
        if resident_room >= rest:  # all but part of the layers stays
            streamed = (layers - (resident_room - rest)) / layers * layers_read
        else:
            streamed = layers_read + (rest - resident_room) / rest * rest_read
        streamed *= 1.0 - sc.cache_hit

    times: dict[str, float] = {}
    limits: dict[str, float] = {"memory": 0.0, "compute": 0.0, "attention": 0.0}
    for op in ops:
        t, lim = op_time(op, rates, True, hd)
        key = op.kind if op.kind == "attention" else ("head" if op.layer < 0 else op.name.split(".")[2])
        times[key] = times.get(key, 0.0) + t
        limits[lim] += t
    t_dram = sum(times.values())
    t_storage = streamed / (rates.storage_gbps * 1e9) if streamed and rates.storage_gbps else 0.0
    # norms, RoPE, hand-offs: folded into the streaming rate where the host was calibrated (stream_rate)
    layers_s = 0.0 if rates.stream_gbps else s.n_layer * rates.engine.get("decode_layer_us", 0.0) * 1e-6
    step = max(t_dram, t_storage) + layers_s  # streaming overlaps compute (prefetch)
    if layers_s:
        times["per-layer work"] = layers_s
    if streamed and rates.storage_gbps:
        times["storage"] = t_storage
    decode_tps = None if (streamed and rates.storage_gbps is None) else 1.0 / step
    if streamed and rates.storage_gbps is None:
        bottleneck = f"storage read ({streamed / 1e6:.0f} MB/token; the device's storage bandwidth is not published)"
    elif t_storage > t_dram:
        bottleneck = f"storage read ({streamed / 1e6:.0f} MB/token at {rates.storage_gbps:g} GB/s)"
    elif limits["attention"] > max(limits["memory"], limits["compute"]):
        bottleneck = f"attention over the KV cache ({sc.ctx} tokens)"
    elif limits["compute"] > limits["memory"]:
        bottleneck = "compute (decode)"
    else:
        bottleneck = f"memory bandwidth ({rates.read_gbps:.1f} GB/s effective)"

    prefill_tps = ttft = None
    p_ops = prefill_ops(spec, sc.prompt)
    if rates.matmul_gflops or rates.compute_gflops:
        t_pre = sum(op_time(op, rates, False, hd)[0] for op in p_ops)
        t_pre += s.n_layer * sc.prompt * rates.engine.get("prefill_layer_us_per_token", 0.0) * 1e-6
        prefill_tps = sc.prompt / t_pre
        ttft = t_pre * 1e3
    else:
        notes.append("no published compute peak for this device: prefill and TTFT not predicted")

    dram_bytes = sum(op.bytes for op in ops) - streamed
    macs = sum(op.flops for op in ops) / 2
    e = {**ENERGY, **device.energy}
    joules = dram_bytes * 8 * e["dram_pj_per_bit"] * 1e-12 + streamed * e["flash_nj_per_byte"] * 1e-9 + macs * e["int8_mac_pj"] * 1e-12

    weights_read = sum(op.bytes for op in ops if op.kind == "weights")
    predicted = measured = None
    if rl is not None:
        dense = estimate(spec, device, replace(sc, sparsity=0.0, head_candidates=0))
        if decode_tps and dense.decode_tps:
            predicted = decode_tps / dense.decode_tps
        measured = _measured_speedup(rl)
        notes += _read_less_notes(rl, predicted, measured)

    return Estimate(
        model=s.name,
        quant=spec.label,
        device=device.name,
        rates_source=rates.source,
        fits=fits,
        memory_mb=min(need, budget) / 1e6 if budget is not None else need / 1e6,
        weights_mb=weights / 1e6,
        kv_cache_mb=kv / 1e6,
        budget_mb=budget / 1e6 if budget is not None else None,
        streamed_mb_per_token=streamed / 1e6,
        weights_read_mb_per_token=weights_read / 1e6,
        decode_tps=decode_tps,
        prefill_tps=prefill_tps,
        ttft_ms=ttft,
        joules_per_token=joules,
        bottleneck=bottleneck,
        decode_breakdown_ms={k: v * 1e3 for k, v in times.items()},
        notes=notes,
        sparsity=sc.sparsity,
        head_candidates=sc.head_candidates,
        extra_mb=extra / 1e6,
        bytes_measured=None if rl is None else ((rl.skip_measured or not rl.sparsity) and (rl.cheap_measured or not rl.candidates)),
        decode_speedup_predicted=predicted,
        decode_speedup_measured=measured,
    )


def _measured_speedup(rl: ReadLess) -> dict | None:
    """The decode speed-ups sparsity.yaml holds for exactly this setting (each measured on its own)."""
    c = rl.curve
    if c is None:
        return None
    lv = c.level(rl.sparsity) if rl.sparsity else None
    s = lv.decode_speedup if lv else None
    h = c.head.decode_speedup if rl.candidates and c.head and c.head.candidates == rl.candidates else None
    if s is None and h is None:
        return None
    return {"host": c.host, "threads": c.threads, "weights": c.weights, "sparsity": s, "head": h}


def _read_less_notes(rl: ReadLess, predicted: float | None, measured: dict | None) -> list[str]:
    out = []
    if rl.sparsity:
        src = "from measured bytes" if rl.skip_measured else "the column layout's accounting: no measured bytes here"
        out.append(f"sparsity {rl.sparsity:g}: decode skips {rl.skip:.0%} of the layers' matrix weights ({src}); "
                   f"column copies add {rl.column_bytes / 1e6:,.0f} MB")  # fmt: skip
        c = rl.curve
        if c is None or not c.level(rl.sparsity) or not c.level(rl.sparsity).measured:
            out.append(f"sparsity {rl.sparsity:g} has no measured quality for this model (planner/sparsity.yaml): "
                       f"fit does not list it, and `edgellm run` needs `edgellm sparsify --sparsity {rl.sparsity:g}` first")  # fmt: skip
    if rl.candidates:
        src = "measured" if rl.cheap_measured else "its format's size"
        out.append(f"head: {rl.cheap_type} copy ({rl.cheap_bytes / 1e6:,.1f} MB per token, {src}) + {rl.candidates} exact rows")
    if measured:
        parts = [f"x{measured[k]:.2f} with {k}" for k in ("sparsity", "head") if measured[k] is not None]
        pred = f"; the planner's bytes give x{predicted:.2f} here" if predicted else ""
        out.append(f"measured decode speed-up on {measured['host'] or 'the measuring host'} "
                   f"({measured['threads'] or '?'} thread(s), {measured['weights']}): {', '.join(parts)}{pred}")  # fmt: skip
    return out
