"""`edgellm calibrate`: measure this machine so the planner can treat it as a device.

Per thread count: memory read bandwidth; for each weight format, the bandwidth edgellm's matrix x vector
kernel reaches on a matrix far larger than the caches (decode) and the FLOP rate of its matrix x matrix
kernel on a prompt-sized batch (prefill). Then the engine itself, on a small synthetic model whose weights
stay in cache, so that what is measured is everything except streaming weights: the fixed cost per layer
of a decode step, the cost of attention per cached position, and the same two for prefill. Once: storage
read bandwidth with O_DIRECT, so the page cache does not flatter it, and the core count.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import kernels
from ..errors import ConfigError
from ..formats.quants import GGMLType, get_format

FORMATS = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "Q4_NL", "Q3_NL", "Q2_NL")
MATVEC_BYTES = 96 << 20  # well past the last-level cache
N_IN = 2048  # row length: a multiple of every block size
PREFILL_TOKENS = 128


def packed_matrix(fmt: GGMLType, n_out: int, n_in: int, seed: int = 0) -> np.ndarray:
    """A valid packed (n_out, n_in) matrix, fast to make: a quantized random tile repeated (rows scaled like
    a layer's, 1/sqrt(n_in), so activations keep their size through a synthetic model)."""
    from ..quant.quantize import quantize_tensor

    rng = np.random.default_rng(seed)
    tile_rows = min(n_out, 64)
    tile = quantize_tensor((rng.standard_normal((tile_rows, n_in)) / np.sqrt(n_in)).astype(np.float32), fmt)
    return np.ascontiguousarray(np.tile(tile, (-(-n_out // tile_rows), 1))[:n_out])


def _best_seconds(fn: Callable[[], object], min_time: float = 0.3, min_runs: int = 3) -> float:
    fn()  # warm-up
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or spent < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def matvec_gbps(fmt: GGMLType, threads: int) -> float:
    f = get_format(fmt)
    n_out = MATVEC_BYTES // f.row_bytes(N_IN)
    w = packed_matrix(fmt, n_out, N_IN)
    x = np.random.default_rng(1).standard_normal((1, N_IN)).astype(np.float32)
    kernels.set_threads(threads)
    return w.nbytes / _best_seconds(lambda: kernels.matmul(x, w, int(fmt), n_out, N_IN)) / 1e9


def matmul_gflops(fmt: GGMLType, threads: int, n_out: int = 2048) -> float:
    w = packed_matrix(fmt, n_out, N_IN)
    x = np.random.default_rng(1).standard_normal((PREFILL_TOKENS, N_IN)).astype(np.float32)
    kernels.set_threads(threads)
    return 2.0 * n_out * N_IN * PREFILL_TOKENS / _best_seconds(lambda: kernels.matmul(x, w, int(fmt), n_out, N_IN)) / 1e9


# the synthetic model: shaped like a small edge model, with weights (107 MB of Q8_0) and a KV cache at depth
# 1024 (34 MB) larger than the caches, as a real model's are
SYN = dict(n_layer=16, d=768, n_head=12, n_head_kv=4, head_dim=64, d_ff=2048, vocab=2048)


def synthetic_weight_bytes() -> int:
    """Bytes of the synthetic model's matrices (Q8_0), head included."""
    L, d, h, hk, hd, ff, v = (SYN[k] for k in ("n_layer", "d", "n_head", "n_head_kv", "head_dim", "d_ff", "vocab"))
    weights = L * (2 * d * h * hd + 2 * d * hk * hd + 3 * d * ff) + v * d
    return weights * 34 // 32


def synthetic_model(path: Path) -> Path:
    """A random llama-architecture GGUF of shape SYN with Q8_0 weights (no tokenizer: the engine needs none)."""
    from ..formats import names
    from ..formats.gguf import TensorData, write_gguf

    L, d, h, hk, hd, ff, v = (SYN[k] for k in ("n_layer", "d", "n_head", "n_head_kv", "head_dim", "d_ff", "vocab"))
    meta = {"general.architecture": "llama", "general.name": "edgellm-calibration", "llama.block_count": L,
            "llama.context_length": 4096, "llama.embedding_length": d, "llama.feed_forward_length": ff,
            "llama.attention.head_count": h, "llama.attention.head_count_kv": hk,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0}  # fmt: skip

    def mat(name, rows, cols):
        return TensorData(name, GGMLType.Q8_0, (rows, cols), packed_matrix(GGMLType.Q8_0, rows, cols).reshape(-1))

    ones = np.ones(d, dtype=np.float32)
    tensors = [mat(names.TOKEN_EMBD, v, d), TensorData(names.OUTPUT_NORM, GGMLType.F32, (d,), ones)]
    for i in range(L):
        tensors += [mat(names.ATTN_Q.format(i=i), h * hd, d), mat(names.ATTN_K.format(i=i), hk * hd, d),
                    mat(names.ATTN_V.format(i=i), hk * hd, d), mat(names.ATTN_OUT.format(i=i), d, h * hd),
                    mat(names.FFN_GATE.format(i=i), ff, d), mat(names.FFN_UP.format(i=i), ff, d),
                    mat(names.FFN_DOWN.format(i=i), d, ff),
                    TensorData(names.ATTN_NORM.format(i=i), GGMLType.F32, (d,), ones),
                    TensorData(names.FFN_NORM.format(i=i), GGMLType.F32, (d,), ones)]  # fmt: skip
    return write_gguf(path, meta, tensors, overwrite=True)


def engine_costs(threads: int, matvec_gbps_q8: float, matmul_gflops_q8: float, depth: int = 1024) -> dict:
    """Per-layer and per-position costs of the engine beyond its matrix products, from the synthetic model:
    decode steps at two depths and prompts of two lengths, each less its matrix products' calibrated time."""
    from ..eval.bench import _generate_seconds, _prompt_seconds
    from ..formats.gguf import GGUFFile
    from ..model.transformer import Transformer
    from ..runtime.store import MappedStore

    kernels.set_threads(threads)
    L, h, hd, d, ff = (SYN[k] for k in ("n_layer", "n_head", "head_dim", "d", "d_ff"))
    layer_weights = 2 * d * h * hd + 2 * d * SYN["n_head_kv"] * hd + 3 * d * ff
    head_weights = SYN["vocab"] * d
    with tempfile.TemporaryDirectory() as tmp:
        g = GGUFFile(synthetic_model(Path(tmp) / "synthetic.gguf"))
        model = Transformer.from_store(g.metadata, MappedStore(g))
        rng = np.random.default_rng(0)
        past = rng.integers(0, SYN["vocab"], size=depth)
        n = 32
        near = min(_generate_seconds(model, n, 1, past[:0])[0] for _ in range(3)) / n
        far = min(_generate_seconds(model, n, 1, past)[0] for _ in range(3)) / n
        p_short, p_long = 64, 1024
        t_short = min(_prompt_seconds(model, rng.integers(0, SYN["vocab"], size=p_short), past[:0], p_short)[0]
                      for _ in range(3))  # fmt: skip
        t_long = min(_prompt_seconds(model, rng.integers(0, SYN["vocab"], size=p_long), past[:0], p_long)[0]
                     for _ in range(3))  # fmt: skip
        del model, g
    q8 = 34 / 32  # bytes per weight
    # decode: step = weights / bw + L * (fixed + heads * positions * per_position), positions ~ n / 2 near
    weights_s = (L * layer_weights + head_weights) * q8 / (matvec_gbps_q8 * 1e9)
    per_pos = max(0.0, (far - near) / (L * h * depth))  # timing noise must not make it negative
    fixed = max(0.0, near - weights_s - L * h * (n / 2) * per_pos) / L
    # prefill of P tokens: matmuls + L * (a * P + b * heads * P^2 / 2): two lengths give a and b
    def rest(t, p):
        return max(0.0, t - 2.0 * L * layer_weights * p / (matmul_gflops_q8 * 1e9)) / L

    a_s, a_l = rest(t_short, p_short), rest(t_long, p_long)
    b = max(0.0, (a_l / p_long - a_s / p_short) / (h * (p_long - p_short) / 2))
    a = max(0.0, a_s / p_short - b * h * p_short / 2)
    scale = 64 / hd  # per-position costs are quoted for a 64-wide head; they scale with the head's width
    return {"decode_layer_us": round(fixed * 1e6, 3), "decode_attention_ns_per_position": round(per_pos * 1e9 * scale, 4),
            "prefill_layer_us_per_token": round(a * 1e6, 4), "prefill_attention_ns_per_position": round(b * 1e9 * scale, 5)}  # fmt: skip


def storage_read_gbps(directory: Path, n_bytes: int = 512 << 20, block: int = 8 << 20) -> tuple[float, str]:
    """Sequential read bandwidth of the filesystem under `directory`, bypassing the page cache with O_DIRECT
    where the filesystem allows it (else after asking the kernel to drop the file's cached pages)."""
    fd, name = tempfile.mkstemp(prefix="edgellm-calibrate-", dir=directory)
    try:
        chunk = np.random.default_rng(0).integers(0, 255, size=block, dtype=np.uint8).tobytes()
        with os.fdopen(fd, "wb") as f:
            for _ in range(n_bytes // block):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        direct = getattr(os, "O_DIRECT", 0)
        try:
            rfd, method = os.open(name, os.O_RDONLY | direct), "O_DIRECT"
            if not direct:
                raise OSError("no O_DIRECT")
            os.readv(rfd, [mmap.mmap(-1, block)])  # some filesystems accept the flag but refuse the reads
            os.lseek(rfd, 0, os.SEEK_SET)
        except OSError:
            if direct:
                with contextlib.suppress(Exception):
                    os.close(rfd)
            rfd = os.open(name, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
                method = "posix_fadvise(DONTNEED): page cache dropped, not bypassed"
            else:
                method = "page cache NOT bypassed (no O_DIRECT here): an upper bound"
        try:
            buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
            t0 = time.perf_counter()
            total = 0
            while (got := os.readv(rfd, [buf])) > 0:
                total += got
            dt = time.perf_counter() - t0
        finally:
            os.close(rfd)
        return total / dt / 1e9, method
    finally:
        os.unlink(name)


def calibrate(
    threads: list[int],
    formats: tuple[str, ...] = FORMATS,
    storage_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    rounds: int = 3,
) -> dict:
    """The host as a device profile (a dict ready for YAML). Every measurement is repeated in `rounds` rounds
    that go over all of them in turn, and the median kept: on a shared machine a neighbour's burst then spoils
    one round of every measurement rather than every round of one (two single-round calibrations of a 2-core
    VM ten minutes apart differed by up to 1.7x)."""
    if kernels._C is None:
        raise ConfigError("calibrating needs the C kernels (reinstall edgellm with a C compiler)")
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    say = progress or (lambda _: None)
    per_threads = {}
    for t in threads:
        seen: dict[str, list[float]] = {}
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}, {t} thread(s): read bandwidth, matrix products of {len(formats)} formats")
            seen.setdefault("read", []).append(kernels.read_bandwidth_gbps(threads=t))
            for name in formats:
                seen.setdefault(f"mv {name}", []).append(matvec_gbps(GGMLType[name], t))
                seen.setdefault(f"mm {name}", []).append(matmul_gflops(GGMLType[name], t))
        median = {k: statistics.median(v) for k, v in seen.items()}
        entry = {"read_gbps": round(median["read"], 2),
                 "matvec_gbps": {n: round(median[f"mv {n}"], 2) for n in formats},
                 "matmul_gflops": {n: round(median[f"mm {n}"], 1) for n in formats}}  # fmt: skip
        q8 = entry["matvec_gbps"].get("Q8_0") or matvec_gbps(GGMLType.Q8_0, t)
        q8_mm = entry["matmul_gflops"].get("Q8_0") or matmul_gflops(GGMLType.Q8_0, t)
        costs = []
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}, {t} thread(s): the engine on a synthetic model")
            costs.append(engine_costs(t, q8, q8_mm))
        entry.update({k: round(statistics.median(c[k] for c in costs), 5) for k in costs[0]})
        per_threads[t] = entry
    say("storage read (O_DIRECT)")
    storage, method = storage_read_gbps(storage_dir or Path(tempfile.gettempdir()))
    cores = os.cpu_count() or 1
    caps = kernels.capabilities()
    return {
        "name": "host",
        "title": f"this machine ({platform.machine()}, {cores} cores, kernels {caps['selected']})",
        "class": "host",
        "cpu": {"cores": {"value": cores, "source": "os.cpu_count()", "tag": "M"}, "description": platform.processor() or platform.machine()},
        "memory": {
            "type": None,
            "bandwidth_gbps": {"value": max(e["read_gbps"] for e in per_threads.values()), "source": "edgellm calibrate", "tag": "M",
                               "note": "measured read bandwidth (not the DRAM peak)"},  # fmt: skip
            "capacity_gb": {"value": round(_memory_gb(), 1), "source": "sysconf", "tag": "M"},
        },
        "storage": {"read_gbps": {"value": round(storage, 3), "source": "edgellm calibrate", "tag": "M", "note": method}},
        "units": [{"name": "cpu", "int8_tops": None, "fp16_tflops": None}],
        "power_w": None,
        "calibration": {
            "kernel_path": caps["selected"],
            "storage_read_gbps": round(storage, 3),
            "storage_method": method,
            "threads": per_threads,
        },
    }


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return float("nan")
