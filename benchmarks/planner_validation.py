"""How far the planner's predictions are from measurements (docs/planner.md).

1. This host: `edgellm calibrate`, then for each configuration (model, format, threads, context) the
   planner's prediction next to `edgellm bench` (pp512, and tg128 from an empty cache or after 1024 tokens).
2. Published edge measurements (../shared/data/edge-devices.md, Table 2): each prediction from the
   device's spec sheet (peak DRAM bandwidth) and the model's shape and bits; the one free number, the
   fraction of peak bandwidth reached, is fitted leave-one-out: the median over the *other* rows, so no
   row is scored with a value fitted to it.

    python benchmarks/planner_validation.py --out OUT [--skip-host] [--threads 1,2]

Prints both tables (markdown) and writes OUT/validation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Table 2 rows used (decode tok/s). quant: a type mix name, or bpw (weights incl. scales) with how it was
# derived, or model_gb when the source publishes the model's size.
PUBLISHED = [
    dict(row=1, device="raspberry-pi-5", model="tinyllama-1.1b", quant="Q8_0", runtime="llama.cpp CPU", ctx=128, tps=9.0),
    dict(row=3, device="raspberry-pi-5", model="llama-3.2-3b", quant="Q4_K_M", runtime="Ollama (llama.cpp) CPU", ctx=256, tps=4.88),
    dict(row=4, device="raspberry-pi-5", model="llama-3.1-8b", quant="Q4_K_M", runtime="Ollama (llama.cpp) CPU", ctx=256, tps=2.17),
    dict(row=5, device="raspberry-pi-5", model="qwen3-30b-a3b", bpw=2.70, runtime="llama.cpp CPU (MoE, Q3_K_S 2.70 bpw)", ctx=512, tps=7.99),
    dict(row=9, device="snapdragon-8-gen-3", model="llama-3.1-8b", bpw=4.125, runtime="ExecuTorch XNNPACK CPU (4-bit g128: 4 + 16/128 bpw)", ctx=256, tps=10.91),
    dict(row=10, device="snapdragon-8-gen-3", model="llama-3.2-1b", model_gb=1.136, runtime="ExecuTorch + KleidiAI CPU (PTE 1,083 MiB)", ctx=128, tps=50.2),
    dict(row=11, device="snapdragon-8-gen-3", model="llama-3.2-3b", bpw=16.0, runtime="ExecuTorch CPU, BF16", ctx=128, tps=7.6),
    dict(row=12, device="snapdragon-8-gen-3", model="llama-2-7b", bpw=4.125, runtime="ExecuTorch XNNPACK CPU (4-bit g128)", ctx=256, tps=11.55),
    dict(row=13, device="snapdragon-8-gen-3", model="llama-2-7b", bpw=4.5, runtime="MLC-LLM OpenCL GPU (q4f16: 4 + 16/32 bpw)", ctx=256, tps=12.5),
    dict(row=15, device="apple-a17-pro", model="llama-2-7b", bpw=3.5, runtime="MLC-LLM Metal (q3f16_1, ~3.5 bpw)", ctx=256, tps=9.0),
    dict(row=7, device="snapdragon-8-gen-2", model="llama-2-7b", bpw=4.5, runtime="Qualcomm QNN NPU (w4a16, some w8a16: ~4.5 bpw)", ctx=1024, tps=9.5),
    dict(row=25, device="snapdragon-8-elite", model="llama-3.2-3b", model_gb=2.4, runtime="Qualcomm Genie NPU (w4a16, ~2.4 GB)", ctx=1024, tps=28.03),
    dict(row=26, device="snapdragon-8-elite", model="llama-3.1-8b", model_gb=4.8, runtime="Qualcomm Genie NPU (w4a16, ~4.8 GB)", ctx=1024, tps=14.14),
    dict(row=33, device="apple-m4", model="llama-3.2-3b", quant="Q4_K_M", runtime="Ollama (llama.cpp Metal)", ctx=256, tps=41.04),
    dict(row=34, device="apple-m4", model="llama-3.1-8b", quant="Q4_K_M", runtime="llama.cpp Metal (tg128)", ctx=128, tps=20.87),
    dict(row=36, device="i9-13900k", model="llama-2-7b", quant="Q4_0", runtime="llama.cpp CPU, 8 threads (tg128)", ctx=128, tps=18.27),
    dict(row=37, device="jetson-orin-nano", model="llama-3.1-8b", bpw=4.5, runtime="MLC GPU (INT4 q4f16)", ctx=256, tps=14.0),
    dict(row=37, device="jetson-orin-nano-super", model="llama-3.2-3b", bpw=4.5, runtime="MLC GPU (INT4 q4f16)", ctx=256, tps=43.07),
    dict(row=38, device="jetson-agx-orin-64gb", model="llama-3.1-8b", bpw=4.125, runtime="TensorRT-LLM GPU (INT4 AWQ g128)", ctx=256, tps=35.9),
    dict(row=41, device="rk3588", model="qwen2.5-1.5b", bpw=8.0, runtime="RKLLM NPU (w8a8)", ctx=192, tps=16.69),
    dict(row=41, device="rk3588", model="tinyllama-1.1b", bpw=8.0, runtime="RKLLM NPU (w8a8)", ctx=192, tps=24.43),
]


def published_table() -> list[dict]:
    from edgellm.planner.device import load_device
    from edgellm.planner.estimate import Scenario, estimate
    from edgellm.planner.model import load_model

    rows = []
    for r in PUBLISHED:
        spec = load_model(r["model"], r.get("quant"), r.get("bpw") or (None if r.get("quant") else None))
        if r.get("model_gb"):  # the source's model size: bits per weight from it
            spec = load_model(r["model"], bpw=8 * r["model_gb"] * 1e9 / spec.shape.n_params)
        dev = load_device(r["device"])
        full = estimate(spec, dev, Scenario(ctx=r["ctx"], prompt=128, memory_efficiency=1.0))  # at 100 % of peak
        rows.append({**r, "bits_per_weight": round(spec.bits_per_weight, 2), "bandwidth_gbps": dev.bandwidth_gbps.value,
                     "tps_at_peak": full.decode_tps, "implied_efficiency": r["tps"] / full.decode_tps})  # fmt: skip
    for i, r in enumerate(rows):
        others = [o["implied_efficiency"] for j, o in enumerate(rows) if j != i]
        eff = statistics.median(others)
        r["efficiency_loo"] = eff
        r["predicted_tps"] = r["tps_at_peak"] * eff
        r["error_pct"] = 100 * (r["predicted_tps"] - r["tps"]) / r["tps"]
    return rows


HOST_CONFIGS = [  # (model, threads, depth)
    ("smollm2-135m", 1, 0), ("smollm2-135m", 2, 0), ("smollm2-135m", 1, 1024), ("smollm2-135m", 2, 1024),
    ("gemma3-270m", 1, 0), ("gemma3-270m", 2, 0), ("gemma3-270m", 1, 1024), ("gemma3-270m", 2, 1024),
]
EXTRA_FORMATS = ["Q8_0", "Q4_K_M", "Q3_NL"]  # SmolLM2 re-quantized: more formats on the same host


def edgellm(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "edgellm.cli.main", *args]
    print("+", " ".join(cmd[3:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=capture, text=True).stdout


def host_table(out: Path, threads: list[int], reps: int) -> list[dict]:
    from edgellm.hub import resolve
    from edgellm.planner.device import load_device
    from edgellm.planner.estimate import Scenario, estimate
    from edgellm.planner.model import load_model

    host = out / "host.yaml"
    if not host.exists():
        edgellm("calibrate", "--out", str(host), "-t", ",".join(map(str, threads)))
    device = load_device(host)
    configs = [(str(resolve(m)), t, d) for m, t, d in HOST_CONFIGS if t in threads]
    for fmt in EXTRA_FORMATS:
        path = out / f"smollm2-{fmt}.gguf"
        if not path.exists():
            edgellm("quantize", "smollm2-135m", str(path), "--type", fmt)
        configs += [(str(path), t, 0) for t in threads]
    rows = []
    for path, t, depth in configs:
        runs = json.loads(edgellm("bench", "-m", path, "-p", "0" if depth else "512", "-n", "128", "-d", str(depth),
                                  "-t", str(t), "-r", str(reps), "--json", capture=True))  # fmt: skip
        spec = load_model(path)
        for run in runs:
            decode = run["test"].startswith("tg")
            # tg128 from depth d: the cache holds d .. d + 128 tokens, d + 64 on average
            sc = Scenario(threads=t, ctx=depth + 64 if decode else 64, prompt=512)
            est = estimate(spec, device, sc)
            pred = est.decode_tps if decode else est.prefill_tps
            rows.append({"model": Path(path).name, "threads": t, "test": run["test"], "measured_tps": run["tps"],
                         "measured_sd": run["tps_sd"], "predicted_tps": pred,
                         "error_pct": 100 * (pred - run["tps"]) / run["tps"], "bottleneck": est.bottleneck})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--skip-host", action="store_true", help="only the published-measurement table")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}

    if not args.skip_host:
        rows = host_table(args.out, [int(t) for t in args.threads.split(",")], args.repetitions)
        result["host"] = rows
        print("| model | threads | test | measured tok/s | predicted tok/s | error |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['threads']} | {r['test']} | {r['measured_tps']:.1f} ± {r['measured_sd']:.1f} | "
                  f"{r['predicted_tps']:.1f} | {r['error_pct']:+.1f} % |")  # fmt: skip
        for kind in ("tg", "pp"):
            errs = [abs(r["error_pct"]) for r in rows if r["test"].startswith(kind)]
            if errs:
                print(f"\n{kind}: median |error| {statistics.median(errs):.1f} % over {len(errs)} rows")
        print()

    rows = published_table()
    result["published"] = rows
    print("| # | device | model | weights | runtime | measured tok/s | predicted tok/s | error | implied % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['device']} | {r['model']} | {r['bits_per_weight']:.2f} bpw | {r['runtime']} | {r['tps']:g} | "
              f"{r['predicted_tps']:.1f} | {r['error_pct']:+.0f} % | {100 * r['implied_efficiency']:.0f} |")  # fmt: skip
    errs = [abs(r["error_pct"]) for r in rows]
    print(f"\npublished: median |error| {statistics.median(errs):.1f} % over {len(rows)} rows, "
          f"{len({r['device'] for r in rows})} devices")  # fmt: skip
    (args.out / "validation.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
