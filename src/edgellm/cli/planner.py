"""`edgellm devices | calibrate | plan | fit | sweep`: predict how a model runs on a device."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..files import atomic_output
from .common import (
    bounded,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    print_json,
)

_efficiency = bounded(float, 0.0, 1.0, low_open=True, what="a fraction in (0, 1]")


def _size_gb(text: str) -> float:
    """'8GB', '512MB', '6.5G', '4096M' or a plain number of GB."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}
    try:
        gb = float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 8GB or 512MB, got '{text}'") from None
    if not math.isfinite(gb) or gb <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size like 8GB or 512MB, got '{text}'")
    return gb


# --- devices ---

def add_devices_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    parser.add_argument("name", nargs="?", help="device name or profile .yaml (for show)")
    parser.add_argument("--json", action="store_true")


def run_devices(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..planner.device import list_devices, load_device

    if args.action == "show":
        if not args.name:
            raise ConfigError("devices show needs a device name (see 'edgellm devices')")
        d = load_device(args.name)
        if args.json:
            import yaml

            print_json(yaml.safe_load(d.path.read_text(encoding="utf-8")))
            return 0
        print(d.path.read_text(encoding="utf-8"), end="")
        return 0
    devs = list_devices()
    if args.json:
        print_json([_device_row(d) for d in devs])
        return 0
    print(f"| {'device':<24} | {'class':<6} | {'DRAM GB/s':>14} | {'capacity GB':>12} | {'storage GB/s':>12} | accelerators |")
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 16}|{'-' * 14}|{'-' * 14}|{'-' * 14}|")
    for d in devs:
        acc = ", ".join(f"{u.name} {u.int8_tops.value:g} TOPS" for u in d.units if u.int8_tops.known) or "-"
        print(f"| {d.name:<24} | {d.kind:<6} | {_v(d.bandwidth_gbps):>14} | {_v(d.capacity_gb):>12} | "
              f"{_v(d.storage_read_gbps):>12} | {acc} |")  # fmt: skip
    return 0


def _v(fig) -> str:
    return "n/p" if fig.value is None else f"{fig.value:g} ({fig.tag})"


def _device_row(d) -> dict:
    return {"name": d.name, "title": d.title, "class": d.kind, "bandwidth_gbps": d.bandwidth_gbps.value,
            "capacity_gb": d.capacity_gb.value, "storage_read_gbps": d.storage_read_gbps.value,
            "int8_tops": {u.name: u.int8_tops.value for u in d.units if u.int8_tops.known}}  # fmt: skip


# --- calibrate ---

def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("host.yaml"), help="profile to write (default host.yaml)")
    parser.add_argument("-t", "--threads", default=None, help="thread counts to measure, e.g. 1,2 (default 1..cores)")
    parser.add_argument("--formats", default=None, help="weight formats to measure (default: all common ones)")
    parser.add_argument("--storage-dir", type=Path, default=None, help="where to time storage reads (default: the --out directory)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="measure everything this many times in turn and keep the medians (default 3)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_calibrate(args: argparse.Namespace) -> int:
    import os

    import yaml

    from ..errors import ConfigError
    from ..planner.calibrate import FORMATS, calibrate
    from .bench import _thread_list

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; pass --force to overwrite it")
    threads = _thread_list(args.threads) if args.threads else list(range(1, (os.cpu_count() or 1) + 1))
    formats = tuple(f.strip().upper() for f in args.formats.split(",")) if args.formats else FORMATS
    from ..formats.quants import GGMLType

    bad = [f for f in formats if f not in GGMLType.__members__]
    if bad:
        raise ConfigError(f"unknown weight format '{bad[0]}'; e.g. {', '.join(FORMATS)}")
    storage_dir = args.storage_dir or (args.out.resolve().parent)
    profile = calibrate(threads, formats, storage_dir, lambda m: print(f"calibrate: {m}", file=sys.stderr, flush=True),
                        rounds=args.rounds)  # fmt: skip
    with atomic_output(args.out, overwrite=True, text=True) as f:
        f.write("# written by `edgellm calibrate`: measured on this machine\n"
                + yaml.safe_dump(profile, sort_keys=False, default_flow_style=None, width=120))  # fmt: skip
    c = profile["calibration"]
    for t, e in c["threads"].items():
        print(f"{t} thread(s): read {e['read_gbps']} GB/s; matvec GB/s " +
              ", ".join(f"{k} {v}" for k, v in e["matvec_gbps"].items()))  # fmt: skip
    print(f"storage read {c['storage_read_gbps']} GB/s ({c['storage_method']}); wrote {args.out}")
    return 0


# --- plan ---

def _add_scenario_arguments(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    """The scenario's options; `fit` varies the weights (type, sparsity, head) itself."""
    from ..planner.estimate import MEMORY_EFFICIENCY

    parser.add_argument("-m", "--model", required=True, help="catalog model (e.g. llama-3.2-3b), .gguf file, or config.json")
    parser.add_argument("-d", "--device", required=True, help="device name (see 'edgellm devices') or profile .yaml")
    if weights:
        q = parser.add_mutually_exclusive_group()
        q.add_argument("--quant", help="llama.cpp type mix (Q4_K_M, Q8_0, ...) or edgellm's (Q3_NL, ...)")
        q.add_argument("--bpw", type=positive_float, help="uniform bits per weight, scales included")
        parser.add_argument("--sparsity", type=fraction, default=0.0,
                            help="as `run --sparsity S`: model-wide fraction of the layers' matrix inputs skipped "
                                 "(bytes from planner/sparsity.yaml where measured)")  # fmt: skip
        parser.add_argument("--head", type=positive_int, default=0, metavar="K",
                            help="as `run --head K`: cheap head scores all tokens, K recomputed exactly")  # fmt: skip
    parser.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (calibrated hosts)")
    parser.add_argument("--ctx", type=positive_int, default=512, help="tokens in the KV cache while decoding")
    parser.add_argument("--prompt", type=positive_int, default=512, help="prompt tokens (TTFT, prefill)")
    parser.add_argument("--cache-type", default="f32", choices=["f32", "f16", "q8_0"])
    parser.add_argument("--cache-hit", type=fraction, default=0.0, help="fraction of streamed weights already in memory")
    parser.add_argument("--mem-budget", "--max-mem", dest="mem_budget", type=_size_gb, default=None,
                        help="memory the model may use, e.g. 4GB (default: the device's capacity)")  # fmt: skip
    parser.add_argument("--unit", choices=["cpu", "gpu", "npu"], default=None,
                        help="unit running the matrix products (default: the one with the highest published peak)")  # fmt: skip
    parser.add_argument("--memory-efficiency", type=_efficiency, default=MEMORY_EFFICIENCY,
                        help=f"fraction of peak DRAM bandwidth reached on a spec-sheet device (default {MEMORY_EFFICIENCY})")  # fmt: skip


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    _add_scenario_arguments(parser)
    parser.add_argument("--accelerators", type=positive_int, default=1, help="N accelerators like the device, linked")
    parser.add_argument("--link-gbps", type=positive_float, default=None, help="link bandwidth between accelerators, GB/s")
    parser.add_argument("--link-latency-us", type=non_negative_float, default=2.0, help="link latency per transfer, microseconds")
    parser.add_argument("--json", action="store_true")


def _scenario(args):
    from ..planner.estimate import Scenario

    return Scenario(threads=args.threads, ctx=args.ctx, prompt=args.prompt, cache_type=args.cache_type,
                    sparsity=getattr(args, "sparsity", 0.0), head_candidates=getattr(args, "head", 0) or 0,
                    mem_budget_gb=args.mem_budget, cache_hit=args.cache_hit,
                    unit=args.unit, memory_efficiency=args.memory_efficiency)  # fmt: skip


def run_plan(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..planner.device import load_device
    from ..planner.estimate import estimate
    from ..planner.model import load_model

    if args.accelerators == 1 and args.link_gbps is not None:
        raise ConfigError("--link-gbps describes the link between accelerators: give --accelerators N (N > 1) too")
    spec = load_model(args.model, args.quant, args.bpw)
    device = load_device(args.device)
    sc = _scenario(args)
    est = estimate(spec, device, sc)
    if args.accelerators > 1:
        if args.link_gbps is None:
            raise ConfigError("--accelerators needs --link-gbps (the link's bandwidth between them)")
        from ..planner.multi import plan_multi

        multi = plan_multi(spec, device, sc, args.accelerators, args.link_gbps, args.link_latency_us)
        if args.json:
            print_json({**est.to_dict(), **multi})
            return 0
        _print_estimate(est, spec)
        _print_multi(multi)
        return 0
    if args.json:
        print_json(est.to_dict())
        return 0
    _print_estimate(est, spec)
    return 0


def _yes_no(v) -> str:
    return "unknown (capacity not published)" if v is None else ("yes" if v else "no")


def _fmt(v, unit="", digits=1) -> str:
    return "unknown" if v is None else f"{v:,.{digits}f}{unit}"


def _print_estimate(e, spec) -> None:
    print(f"model     {e.model}: {e.quant}, {e.weights_mb:,.0f} MB of weights ({spec.bits_per_weight:.2f} bits/weight)")
    print(f"device    {e.device} ({e.rates_source})")
    budget = f" of {e.budget_mb:,.0f} MB" if e.budget_mb else ""
    stream = f"; streams {e.streamed_mb_per_token:,.0f} MB/token from storage" if e.streamed_mb_per_token else ""
    copies = f" + {e.extra_mb:,.0f} MB of sparse copies" if e.extra_mb else ""
    print(f"fits      {_yes_no(e.fits)}: needs {e.weights_mb + e.kv_cache_mb:,.0f} MB{copies} + buffers{budget}"
          f" (KV cache {e.kv_cache_mb:,.0f} MB){stream}")  # fmt: skip
    print(f"decode    {_fmt(e.decode_tps, ' tok/s')}   bottleneck: {e.bottleneck}")
    if e.sparsity or e.head_candidates:
        setting = ", ".join(([f"sparsity {e.sparsity:g}"] if e.sparsity else []) + ([f"head {e.head_candidates}"] if e.head_candidates else []))
        speedup = f", x{e.decode_speedup_predicted:.2f} over dense" if e.decode_speedup_predicted else ""
        print(f"reads     {e.weights_read_mb_per_token:,.1f} MB of weights per token ({setting}{speedup})")
    print(f"prefill   {_fmt(e.prefill_tps, ' tok/s')}   TTFT {_fmt(e.ttft_ms, ' ms', 0)}")
    print(f"energy    {_fmt(e.joules_per_token, ' J/token', 3)} (DRAM and flash bytes, int8 MACs)")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(e.decode_breakdown_ms.items(), key=lambda kv: -kv[1]))
    print(f"per token {parts} (ms)")
    for n in e.notes:
        print(f"note      {n}")


def _print_multi(m: dict) -> None:
    for phase in ("decode", "prefill"):
        for p in m[phase]["options"]:
            mark = "*" if p["strategy"] == m[phase]["best"] else " "
            stages = ", ".join(f"{t * 1e3:.2f}" for t in p["stage_seconds"])
            print(f"{mark}{phase:<8} {p['strategy']:<9} {p['seconds'] * 1e3:10.2f} ms  stages [{stages}] ms  "
                  f"link {p['link_seconds'] * 1e3:.3f} ms, {p['link_bytes'] / 1e3:,.1f} kB  "
                  f"fits {'yes' if p['fits'] else 'no'}  bottleneck: {p['bottleneck']}")  # fmt: skip
    print(f"decode {m['multi_decode_tps']:.1f} tok/s ({m['decode']['best']}), "
          f"prefill {_fmt(m['multi_prefill_tps'], ' tok/s')} ({m['prefill']['best']})")  # fmt: skip


# --- fit ---

def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    _add_scenario_arguments(parser, weights=False)
    parser.add_argument("--min-tps", type=positive_float, required=True, help="decode tokens/s required")
    parser.add_argument("--json", action="store_true")


def run_fit(args: argparse.Namespace) -> int:
    from ..planner.device import load_device
    from ..planner.fit import fit

    device = load_device(args.device)
    rows = fit(args.model, device, _scenario(args), args.min_tps)
    if args.json:
        print_json(rows)
        return 0 if rows else 1
    if not rows:
        print(f"no configuration reaches {args.min_tps:g} tok/s on {device.name}")
        return 1
    print(f"| {'type':<10} | {'bpw':>5} | {'sparsity':>8} | {'head':>4} | {'memory MB':>9} | {'streamed MB/tok':>15} | "
          f"{'decode tok/s':>12} | quality | command |")  # fmt: skip
    print(f"|{'-' * 12}|{'-' * 7}|{'-' * 10}|{'-' * 6}|{'-' * 11}|{'-' * 17}|{'-' * 14}|{'-' * 9}|{'-' * 9}|")
    for r in rows:
        print(f"| {r['quant']:<10} | {r['bits_per_weight']:>5.2f} | {r['sparsity']:>8.2f} | {r['head'] or 'full':>4} | "
              f"{r['memory_mb']:>9,.0f} | {r['streamed_mb_per_token']:>15,.0f} | {r['decode_tps']:>12.1f} | "
              f"{r['quality']} | `{r['command']}` |")  # fmt: skip
    _print_prepare(rows)
    return 0


def _print_prepare(rows: list[dict]) -> None:
    """The one-off commands the listed rows need: quantizing, then one `sparsify` per model file."""
    import shlex

    quantize = {p: None for r in rows for p in r["prepare"] if " quantize " in p}
    need: dict[str, tuple[set, set]] = {}
    for r in rows:
        if r["sparsity"] or r["head"]:
            levels, heads = need.setdefault(r["model"], (set(), set()))
            levels |= {r["sparsity"]} if r["sparsity"] else set()
            heads |= {r["head"]} if r["head"] else set()
    if not quantize and not need:
        return
    print("\nfirst, once" + (" (CALIBRATION.txt: any text but the evaluation corpus)" if need else "") + ":")
    for p in quantize:
        print(f"  {p}")
    for model, (levels, heads) in need.items():
        opts = ([f"--sparsity {','.join(f'{v:g}' for v in sorted(levels))}"] if levels else []) + \
            [f"--head {k}" for k in sorted(heads)[:1]]  # fmt: skip
        print(f"  edgellm sparsify -m {shlex.quote(model)} -f CALIBRATION.txt {' '.join(opts)}")


# --- sweep ---

def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="catalog model, .gguf file, or config.json")
    parser.add_argument("-d", "--device", action="append", default=[], help="devices to mark on the plots (repeatable)")
    parser.add_argument("--target-tps", type=positive_float, default=20.0, help="decode speed the requirements plot aims at")
    parser.add_argument("--prompt", type=positive_int, default=512, help="prompt tokens for the prefill requirement")
    parser.add_argument("--ttft-ms", type=positive_float, default=1000.0, help="TTFT target for the compute requirement")
    parser.add_argument("--ctx", type=positive_int, default=2048, help="tokens in the KV cache")
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG plots")
    parser.add_argument("--json", action="store_true", help="also print the plotted numbers")


def run_sweep(args: argparse.Namespace) -> int:
    from ..planner.sweep import sweep

    out = sweep(args.model, args.device, args.out, args.target_tps, args.prompt, args.ttft_ms, args.ctx)
    if args.json:
        print_json(out)
    else:
        for p in out["plots"]:
            print(f"wrote {p}")
    return 0
